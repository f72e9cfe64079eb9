//! The loop "scrape production → calibrate → route with it", end to end with real processes:
//! a live fleet of 2 pods runs a known step-time profile behind the real kvpick-epp binary and a
//! real Envoy; a real Prometheus (Debian's `prometheus`) scrapes the pods while load runs;
//! `kvpick-sim calibrate` (the binary) fits a profile from Prometheus alone; kvpick-epp is started
//! again with that file as is (`--engine-profile profile.yaml`) and the same load runs. Its own
//! prediction-error histogram (`kvpick_ttft_prediction_error_seconds`, |predicted − observed|
//! time to first byte) must then be small against the TTFT the clients saw, and well below the
//! error of a deliberately wrong profile (every step cost ×3) on the same load.
//!
//! Needs `prometheus` and `envoy` on PATH (`.ci/setup`); fails loudly without them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use std::path::Path;
use std::time::Duration;

use fleet_util::MODEL;
use fleet_util::calibration::{self, TRUTH, truth};
use kvpick_fleet::FleetConfig;
use kvpick_fleet::demo::Tools;
use kvpick_fleet::demo::stack::Stack;
use kvpick_fleet::load::{self, LoadConfig};
use kvpick_sim::engine::StepTimeModel;
use kvpick_sim::trace::Trace;
use tokio_util::sync::CancellationToken;

/// Requests/s (whole pool), prompt length range, output length range, seconds: long prompts
/// (prefill dominates their TTFT, so a profile's error shows over the few milliseconds of
/// step-boundary waits and proxy hops), longer ones, then a decoding phase for the per-sequence
/// cost.
const PHASES: [fleet_util::Phase; 3] = [
    (4.0, (1000, 2000), (16, 32), 10.0),
    (2.0, (2000, 3000), (16, 32), 10.0),
    (4.0, (96, 192), (96, 160), 8.0),
];

/// Poisson arrivals per phase, a 64-token prefix shared by 4 groups.
pub fn trace(seed: u64) -> Trace {
    fleet_util::phased_trace(&format!("route{seed}"), "route", seed, &PHASES)
}

/// A histogram's cumulative buckets `(le, count)` from a Prometheus text page.
pub fn histogram(page: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    page.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// Bucket counts of `after` minus those of `before` (same buckets).
pub fn minus(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let b = before.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, n - b)
        })
        .collect()
}

/// Quantile `q` of cumulative buckets, linear inside the bucket; `None` when empty.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(le, cum) in buckets {
        if cum >= target {
            if !le.is_finite() {
                return Some(lo);
            }
            let inside = (cum - below).max(f64::MIN_POSITIVE);
            return Some(lo + (le - lo) * (target - below) / inside);
        }
        (lo, below) = (le, cum);
    }
    Some(lo)
}

/// Median of the values.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What one pass measured.
struct Pass {
    /// Median |predicted − observed| TTFT, from kvpick-epp's histogram, s.
    error_p50: f64,
    /// Median TTFT the clients saw, s.
    ttft_p50: f64,
    /// Requests the histogram counted.
    counted: f64,
}

/// Runs `trace` through a fresh stack whose kvpick-epp gets `epp_args`; with `prometheus`,
/// a Prometheus scrapes the pods meanwhile and is returned, still running.
async fn pass(
    tools: &Tools,
    dir: &Path,
    epp_args: &[String],
    trace: &Trace,
    prometheus: bool,
) -> (Pass, Option<(kvpick_fleet::demo::procs::Child, String)>) {
    let mut cfg = FleetConfig::new(truth(), MODEL);
    cfg.pods = 2;
    let cancel = CancellationToken::new();
    let mut stack = Stack::start_with(cfg, true, tools, epp_args, dir, &cancel)
        .await
        .unwrap();
    let prom = if prometheus {
        let targets: Vec<String> = (stack.fleet.servers().iter())
            .map(|s| s.address.to_string())
            .collect();
        let p = fleet_util::start_prometheus(&targets, dir).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Some(p)
    } else {
        None
    };
    let load_cfg = calibration::load_config(format!("http://{}", stack.gateway), 128);
    let records = load::run(trace, &load_cfg, &cancel).await.unwrap();
    stack.check_alive().unwrap();
    assert!(
        records.iter().all(|r| r.outcome.error.is_none()),
        "a request failed"
    );
    let page = stack.epp_metrics_text().await.unwrap();
    let errors = histogram(&page, "kvpick_ttft_prediction_error_seconds");
    let ttft: Vec<f64> = records.iter().filter_map(|r| r.outcome.ttft_s).collect();
    let result = Pass {
        error_p50: quantile(&errors, 0.5).expect("prediction errors recorded"),
        ttft_p50: median(ttft),
        counted: errors.last().map_or(0.0, |b| b.1),
    };
    if prometheus {
        // Let Prometheus scrape the last counters.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    stack.stop().await;
    (result, prom)
}

/// The wrong profile: every step cost three times the truth's.
fn wrong_profile(dir: &Path) -> std::path::PathBuf {
    let mut p = truth();
    p.name = "wrong".into();
    p.step_time = StepTimeModel {
        overhead_us: TRUTH.overhead_us * 3.0,
        per_prefill_token_us: TRUTH.per_prefill_token_us * 3.0,
        per_decode_seq_us: TRUTH.per_decode_seq_us * 3.0,
        ..TRUTH
    };
    let path = dir.join("wrong.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&p).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrated_profile_file_makes_kvpick_epp_predict_the_fleet() {
    let tools = Tools::find(None, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let load = trace(1);
    let wrong = wrong_profile(dir.path());
    // The profile as given, not refined online (the next test does that).
    let profile_arg = |p: &Path| {
        vec![
            "--engine-profile".to_owned(),
            p.display().to_string(),
            "--online-calibration".into(),
            "false".into(),
        ]
    };

    // 1. The wrong profile, while Prometheus watches the pods.
    let started = tokio::time::Instant::now();
    let (before, prom) = pass(
        &tools,
        &dir.path().join("wrong"),
        &profile_arg(&wrong),
        &load,
        true,
    )
    .await;
    let (prom, prom_url) = prom.unwrap();

    // 2. calibrate, as a process, from Prometheus alone.
    let window = started.elapsed().as_secs_f64() + 1.0;
    let out = dir.path().join("cal");
    let window = format!("{window:.0}s");
    let result =
        calibration::calibrate(&prom_url, &window, &out, &["--check-policy", "none"]).await;
    prom.stop();
    let stdout = String::from_utf8_lossy(&result.stdout).to_string();
    assert!(
        result.status.success(),
        "calibrate failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    println!("{stdout}");
    let calibrated = out.join("profile.yaml");

    // 3. kvpick-epp with the file as calibrate wrote it, same load on a fresh fleet.
    let (after, _) = pass(
        &tools,
        &dir.path().join("calibrated"),
        &profile_arg(&calibrated),
        &load,
        false,
    )
    .await;
    println!(
        "prediction error p50: wrong profile {:.1} ms, calibrated {:.1} ms; client TTFT p50 {:.1} / {:.1} ms; {} / {} requests counted",
        before.error_p50 * 1e3,
        after.error_p50 * 1e3,
        before.ttft_p50 * 1e3,
        after.ttft_p50 * 1e3,
        before.counted,
        after.counted
    );
    let sent = load.requests.len() as f64;
    assert!(before.counted >= sent * 0.9 && after.counted >= sent * 0.9);
    assert!(
        after.error_p50 < before.error_p50 * 0.5,
        "calibrated {:.4} s vs wrong {:.4} s",
        after.error_p50,
        before.error_p50
    );
    assert!(
        after.error_p50 < after.ttft_p50 * 0.35,
        "calibrated error p50 {:.4} s vs TTFT p50 {:.4} s",
        after.error_p50,
        after.ttft_p50
    );
}

/// The value of the gauge or counter `name` whose labels contain `labels`, from a text page.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_calibration_shrinks_the_prediction_error_of_a_wrong_profile() {
    let tools = Tools::find(None, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = wrong_profile(dir.path());
    let args: Vec<String> = [
        "--engine-profile",
        &wrong.display().to_string(),
        "--online-calibration",
        "true",
        "--calibration-interval",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cfg = FleetConfig::new(truth(), MODEL);
    cfg.pods = 2;
    let cancel = CancellationToken::new();
    let mut stack = Stack::start_with(cfg, true, &tools, &args, dir.path(), &cancel)
        .await
        .unwrap();
    let load_cfg = calibration::load_config(format!("http://{}", stack.gateway), 128);
    const ERR: &str = "kvpick_ttft_prediction_error_seconds";
    let start_page = stack.epp_metrics_text().await.unwrap();
    let prefill = |page: &str| {
        sample(
            page,
            "kvpick_engine_profile_microseconds",
            "coefficient=\"per_prefill_token\"",
        )
    };
    // Fits installed: whole, or with coefficients the windows did not identify kept as they were
    // (under load the per-sequence cost often is not).
    let accepted = |page: &str| {
        ["outcome=\"accepted\"", "outcome=\"accepted_partial\""]
            .iter()
            .filter_map(|label| sample(page, "kvpick_engine_profile_fits_total", label))
            .sum::<f64>()
    };
    // The first pass runs on the wrong profile while the pods' counters accumulate. A fit may be
    // accepted during it (sooner on a quiet machine, which has more windows by then), so its
    // baseline is the error histogram as last seen before the first accepted fit: errors the
    // wrong profile made, and no others. Then, until a fit is accepted (refits every 5 s; up to
    // three more passes if the windows do not determine one yet), and a last pass measured on it.
    async fn run(stack: &mut Stack, cfg: &LoadConfig, seed: u64) -> String {
        let records = load::run(&trace(seed), cfg, &CancellationToken::new())
            .await
            .unwrap();
        assert!(records.iter().all(|r| r.outcome.error.is_none()));
        stack.check_alive().unwrap();
        stack.epp_metrics_text().await.unwrap()
    }
    let done = CancellationToken::new();
    let watch = async {
        let mut before_fit = None;
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let page = stack.epp_metrics_text().await.unwrap();
            if accepted(&page) >= 1.0 {
                break;
            }
            before_fit = Some(page);
        }
        before_fit
    };
    let first_load = async {
        let records = load::run(&trace(1), &load_cfg, &CancellationToken::new())
            .await
            .unwrap();
        done.cancel();
        records
    };
    let (before_fit, records) = tokio::join!(watch, first_load);
    assert!(records.iter().all(|r| r.outcome.error.is_none()));
    stack.check_alive().unwrap();
    let baseline = before_fit.expect("a metrics page before the first accepted fit");
    let mut seed = 2;
    let mut page = stack.epp_metrics_text().await.unwrap();
    loop {
        for _ in 0..12 {
            if accepted(&page) >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            page = stack.epp_metrics_text().await.unwrap();
        }
        if accepted(&page) >= 1.0 || seed > 4 {
            break;
        }
        page = run(&mut stack, &load_cfg, seed).await;
        seed += 1;
    }
    let last_page = run(&mut stack, &load_cfg, seed).await;
    stack.stop().await;
    let first = minus(&histogram(&baseline, ERR), &histogram(&start_page, ERR));
    let last = minus(&histogram(&last_page, ERR), &histogram(&page, ERR));
    let counted = |b: &[(f64, f64)]| b.last().map_or(0.0, |x| x.1);
    assert!(
        counted(&first) >= 10.0,
        "only {} requests predicted before the first fit",
        counted(&first)
    );
    let (e1, e2) = (
        quantile(&first, 0.5).unwrap(),
        quantile(&last, 0.5).unwrap(),
    );
    let accepted = accepted(&last_page);
    println!(
        "online calibration: error p50 before any fit {:.1} ms ({} requests), pass {seed} (after a fit) {:.1} ms; per_prefill_token {:?} → {:?} µs; {accepted} fits accepted",
        e1 * 1e3,
        counted(&first),
        e2 * 1e3,
        prefill(&start_page),
        prefill(&last_page)
    );
    assert_eq!(
        prefill(&start_page),
        Some(TRUTH.per_prefill_token_us * 3.0),
        "the configured profile, before any fit"
    );
    let log = std::fs::read_to_string(dir.path().join("kvpick-epp.log")).unwrap_or_default();
    let calibration_log: Vec<&str> = log.lines().filter(|l| l.contains("calibration")).collect();
    assert!(
        accepted >= 1.0,
        "no fit accepted; kvpick-epp's log says:\n{}",
        calibration_log.join("\n")
    );
    let fitted = prefill(&last_page).unwrap();
    assert!(
        (fitted / TRUTH.per_prefill_token_us - 1.0).abs() < 0.3,
        "fitted per_prefill_token {fitted} µs vs truth {}",
        TRUTH.per_prefill_token_us
    );
    assert!(
        e2 < e1 * 0.6,
        "error p50 {e2:.4} s after vs {e1:.4} s before"
    );
}
