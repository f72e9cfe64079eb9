//! One form's figures: the picker's CPU and memory readings at a window's two ends, the decision
//! latency the client saw, the picker's own scheduling histogram and tokenize outcomes, and how
//! often the chosen pod held the shared prompt.

use kvpick_benches::extproc_client::percentile;
use tokio::time::Instant;

use crate::Form;
use crate::epp::{self, Epp};
use crate::requests::Outcome;

/// Readings at a window's two ends.
pub struct Snapshot {
    /// When.
    pub at: Instant,
    /// The picker's CPU seconds so far.
    pub cpu: f64,
    /// Its `/metrics` page.
    pub page: String,
}

/// The picker's readings now.
pub async fn snapshot(epp: &Epp) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        at: Instant::now(),
        cpu: epp.cpu_seconds()?,
        page: epp.metrics().await?,
    })
}

/// Prints one form's figures; returns how many requests went to a pod holding the shared prompt.
pub fn report(
    form: Form,
    outcomes: &[anyhow::Result<Outcome>],
    before: &Snapshot,
    after: &Snapshot,
    idle: f64,
    shared: usize,
) -> usize {
    let ok: Vec<&Outcome> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    let warm = |o: &&&Outcome| o.cached as usize * 10 >= shared * 9;
    let hits = ok.iter().filter(warm).count();
    let in_window: Vec<&&Outcome> = (ok.iter())
        .filter(|o| o.issued >= before.at && o.issued < after.at)
        .collect();
    let wall = (after.at - before.at).as_secs_f64();
    let cpu = after.cpu - before.cpu;
    let n = in_window.len().max(1) as f64;
    let mut lat: Vec<f64> = in_window.iter().map(|o| o.latency.as_secs_f64()).collect();
    lat.sort_by(f64::total_cmp);
    let sched = epp::delta(
        &epp::histogram(&after.page, "kvpick_scheduling_duration_seconds"),
        &epp::histogram(&before.page, "kvpick_scheduling_duration_seconds"),
    );
    let within_5ms = (sched.iter().find(|b| (b.0 - 0.005).abs() < 1e-9))
        .zip(sched.last())
        .map_or(f64::NAN, |(a, t)| a.1 / t.1.max(1.0));
    let tok = |o: &str| {
        let label = format!("outcome=\"{o}\"");
        epp::counter(&after.page, "kvpick_tokenize_total", &label)
            - epp::counter(&before.page, "kvpick_tokenize_total", &label)
    };
    let pods: std::collections::HashSet<usize> = ok.iter().map(|o| o.pod).collect();
    let ms = |v: f64| v * 1e3;
    println!("== form {form:?}");
    println!(
        "requests: {} sent, {} served; window {:.1} s: {} requests, {:.1} req/s",
        outcomes.len(),
        ok.len(),
        wall,
        in_window.len(),
        in_window.len() as f64 / wall
    );
    println!(
        "picker CPU: {:.3} cores ({:.3} above idle), {:.0} µs per request (/proc/PID/stat)",
        cpu / wall,
        cpu / wall - idle,
        cpu / n * 1e6
    );
    println!(
        "decision seen by client: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(f64::NAN))
    );
    println!(
        "picker scheduling (parse + tokenize + pick; histogram bounds): p50 ≤ {:.2} ms  p99 ≤ {:.2} ms  {:.1}% within 5 ms",
        ms(epp::bucket_quantile(&sched, 0.5)),
        ms(epp::bucket_quantile(&sched, 0.99)),
        within_5ms * 100.0
    );
    println!(
        "tokenized in the window: {} ok, {} timeout, {} other outcomes",
        tok("ok"),
        tok("timeout"),
        epp::counter(&after.page, "kvpick_tokenize_total", "")
            - epp::counter(&before.page, "kvpick_tokenize_total", "")
            - tok("ok")
            - tok("timeout")
    );
    println!(
        "shared prompt found: {hits} of {} requests went to a pod holding ≥90% of it; {} pods used",
        ok.len(),
        pods.len()
    );
    hits
}
