//! What the kernel says about this process: CPU time per thread (so that rates measure our cost
//! and not the machine's load) and resident memory. Also included by `benches/peers` (its own
//! workspace), by path.

/// Nanoseconds the thread of `path` (a `/proc/.../schedstat` file) has spent on a CPU.
pub fn schedstat(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Nanoseconds this thread has spent on a CPU.
pub fn thread_ns() -> u64 {
    schedstat("/proc/thread-self/schedstat")
}

/// Resident set size of the process.
pub fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
