//! Several policies over one trace, on worker threads: each run is independent and deterministic.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{RunResult, SimConfig, run};
use crate::error::SimError;
use crate::policy::PolicySpec;
use crate::trace::Trace;

/// Runs every policy over the same trace, up to `threads` at a time; results in `policies` order.
pub fn run_many(
    trace: &Trace,
    policies: &[PolicySpec],
    cfg: &SimConfig,
    threads: usize,
    progress: Option<&AtomicU64>,
) -> Vec<Result<RunResult, SimError>> {
    let next = AtomicU64::new(0);
    let mut slots: Vec<Option<Result<RunResult, SimError>>> =
        policies.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, policies.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(p) = policies.get(i) else { break };
                        done.push((i, run(trace, p, cfg, progress)));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(done) => {
                    for (i, r) in done {
                        slots[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(SimError::InvalidConfig("policy run lost".into()))))
        .collect()
}
