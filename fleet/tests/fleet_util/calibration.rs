//! Shared by the calibration tests: the pods' known step time, their load, and `kvpick-sim`
//! itself run as a process.

use std::time::Duration;

use kvpick_fleet::load::{ApiKind, LoadConfig};
use kvpick_sim::engine::{Profile, StepTimeModel};

use super::MODEL;

/// The step time the pods run, which calibration must recover.
pub const TRUTH: StepTimeModel = StepTimeModel {
    overhead_us: 4000.0,
    per_prefill_token_us: 30.0,
    per_decode_seq_us: 800.0,
    per_context_token_us: 0.0,
    per_attention_pair_us: 0.0,
};

/// The pods' profile: `tiny` with 2048 blocks and the true step time.
pub fn truth() -> Profile {
    let mut p = Profile::named("tiny").unwrap();
    p.kv_blocks = 2048;
    p.step_time = TRUTH;
    p
}

/// Streamed completions of token ids against `base_url`, at most `max_concurrency` at once.
pub fn load_config(base_url: String, max_concurrency: usize) -> LoadConfig {
    LoadConfig {
        base_url,
        model: MODEL.into(),
        api: ApiKind::Completions,
        text: false,
        stream: true,
        max_concurrency,
        timeout: Duration::from_secs(60),
        max_output_tokens: None,
    }
}

/// Runs this package's `kvpick-sim` with `args` (off the runtime's threads) to its end.
pub async fn kvpick_sim(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `kvpick-sim calibrate` from the Prometheus at `prometheus` over the last `window` (`12.5s`):
/// 3-second windows, the `tiny` profile's batch limits, windows with at least 10 inter-token gaps,
/// results in `out`; `extra` flags follow.
pub async fn calibrate(
    prometheus: &str,
    window: &str,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = [
        "calibrate",
        "--prometheus",
        prometheus,
        "--window",
        window,
        "--resolution",
        "3s",
        "--profile",
        "tiny",
        "--min-gaps",
        "10",
        "--out",
        &out.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    kvpick_sim(args).await
}
