//! A progress line on stderr, drawn only when stderr is a terminal (binary only).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Draws `done / total` every 200 ms until `stop` is set.
fn draw(label: &str, done: &AtomicU64, total: u64, stop: &AtomicBool) {
    let mut err = std::io::stderr();
    if !err.is_terminal() || total == 0 {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let d = done.load(Ordering::Relaxed).min(total);
        let width = 40;
        let filled = (d * width / total) as usize;
        let _ = write!(
            err,
            "\r{label} [{}{}] {d}/{total} arrivals ({:.0}%)",
            "#".repeat(filled),
            " ".repeat(width as usize - filled),
            d as f64 * 100.0 / total as f64
        );
        let _ = err.flush();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = write!(err, "\r{}\r", " ".repeat(100));
    let _ = err.flush();
}

/// Runs `work`, handing it the counter of arrivals done, while a progress line shows
/// `done / total`.
pub fn around<T>(label: &str, total: u64, work: impl FnOnce(&AtomicU64) -> T) -> T {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let bar = s.spawn(|| draw(label, &done, total, &stop));
        let r = work(&done);
        stop.store(true, Ordering::Relaxed);
        let _ = bar.join();
        r
    })
}
