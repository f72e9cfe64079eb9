use super::*;
use crate::profile::StepTimeModel;
use crate::profile::fit::tests::{TRUTH, synthetic, synthetic_decoding};

fn profile(step_time: StepTimeModel) -> EngineProfile {
    EngineProfile {
        name: "start".into(),
        step_time,
        max_num_batched_tokens: 512,
        ..EngineProfile::named("tiny").unwrap()
    }
}

fn scaled(m: &StepTimeModel, k: f64) -> StepTimeModel {
    StepTimeModel {
        overhead_us: m.overhead_us * k,
        per_prefill_token_us: m.per_prefill_token_us * k,
        per_decode_seq_us: m.per_decode_seq_us * k,
        per_context_token_us: m.per_context_token_us * k,
        per_attention_pair_us: 0.0,
    }
}

fn config() -> OnlineConfig {
    OnlineConfig {
        resolution: Duration::from_millis(1),
        window: Duration::from_secs(1_000_000),
        ..OnlineConfig::default()
    }
}

/// Feeds the windows of engines following `truths` in turn (one after the other in time), as
/// cumulative scrapes of two pods; returns the time of the last scrape.
fn feed(c: &mut Calibrator, truths: &[StepTimeModel], noise: f64) -> Timestamp {
    let windows: Vec<Vec<Window>> = (truths.iter()).map(|t| synthetic(t, noise, true)).collect();
    feed_windows(c, &windows, 2)
}

/// Feeds each set of windows in turn, as cumulative scrapes of `pods` pods taking the windows in
/// turn (with one pod, the calibrator's windows are exactly these).
fn feed_windows(c: &mut Calibrator, sets: &[Vec<Window>], pods: usize) -> Timestamp {
    let mut now = Timestamp::from_millis(1000);
    let mut cum = vec![[0.0f64; COUNTERS.len()]; pods];
    for (pod, values) in cum.iter().enumerate() {
        c.observe(&format!("pod{pod}"), now, &values.map(Some));
    }
    for windows in sets {
        for (k, w) in windows.iter().enumerate() {
            let pod = k % pods;
            for (v, d) in cum[pod].iter_mut().zip(w.delta) {
                *v += d;
            }
            now = now + Duration::from_secs_f64(w.secs);
            c.observe(&format!("pod{pod}"), now, &cum[pod].map(Some));
        }
    }
    now
}

#[test]
fn a_wrong_start_is_refitted_close_to_the_truth() {
    let mut c = Calibrator::new(profile(scaled(&TRUTH, 3.0)), config());
    let now = feed(&mut c, &[TRUTH], 0.02);
    assert_eq!(c.windows(), 60);
    let outcome = c.refit(now);
    let Some(Outcome::Accepted {
        profile,
        fitted_us,
        start_us,
        kept,
    }) = outcome.clone()
    else {
        panic!("not accepted: {outcome:?}");
    };
    assert!(kept.is_empty(), "every coefficient identified: {kept:?}");
    assert_eq!(outcome.unwrap().label(), "accepted");
    assert!(fitted_us < start_us / 3.0, "{fitted_us} vs {start_us}");
    let m = profile.step_time;
    // The context cost folds into the per-sequence cost (as calibrate's default fit does).
    assert!((m.per_prefill_token_us / 40.0 - 1.0).abs() < 0.15, "{m:?}");
    assert!((m.overhead_us / 5000.0 - 1.0).abs() < 0.15, "{m:?}");
    assert_eq!(c.current(), &profile);
    assert_eq!(
        (profile.kv_blocks, profile.max_num_batched_tokens),
        (256, 512)
    );
    // Not again before the interval.
    assert_eq!(c.refit(now + Duration::from_secs(1)), None);
    assert!(c.refit(now + Duration::from_secs(31)).is_some());
}

#[test]
fn implausible_fits_are_rejected_and_the_start_kept() {
    let start = profile(scaled(&TRUTH, 30.0));
    let mut c = Calibrator::new(start.clone(), config());
    let now = feed(&mut c, &[TRUTH], 0.02);
    let Some(Outcome::Rejected(r)) = c.refit(now) else {
        panic!("accepted a fit 30× off the start");
    };
    assert_eq!(r.label(), "implausible", "{r:?}");
    assert_eq!(c.current(), &start);
}

#[test]
fn a_fit_worse_than_the_start_on_the_latest_windows_is_refused() {
    // The engine ran at twice the cost, then at the start's own cost: the fit (mostly the
    // older windows) predicts the held-out newest third worse than the start does.
    let start = profile(TRUTH);
    let mut c = Calibrator::new(start.clone(), config());
    let now = feed(&mut c, &[scaled(&TRUTH, 2.0), TRUTH], 0.0);
    // 120 windows: the fit sees 60 at ×2 and 20 at ×1, the check the last 40 at ×1.
    let Some(Outcome::Rejected(r)) = c.refit(now) else {
        panic!("accepted");
    };
    let Rejection::WorseThanStart {
        fitted_us,
        start_us,
    } = r
    else {
        panic!("{r:?}");
    };
    assert!(fitted_us > start_us, "{fitted_us} vs {start_us}");
    assert_eq!(c.current(), &start);
}

#[test]
fn scrapes_without_the_counters_too_few_windows_and_bounds() {
    let mut c = Calibrator::new(profile(TRUTH), config());
    let t = |s| Timestamp::from_millis(s * 1000);
    // Not a page with the fit's counters: ignored.
    c.observe("a", t(1), &[None; COUNTERS.len()]);
    c.observe("a", t(5), &[None; COUNTERS.len()]);
    assert_eq!(c.windows(), 0);
    assert_eq!(c.refit(t(100)), None, "nothing to fit");
    // Windows are cut at the resolution and bounded in number and age.
    let mut c = Calibrator::new(
        profile(TRUTH),
        OnlineConfig {
            resolution: Duration::from_secs(3),
            window: Duration::from_secs(60),
            max_windows: 10,
            max_engines: 1,
            ..OnlineConfig::default()
        },
    );
    for s in 0..200u64 {
        let mut v = [Some(0.0); COUNTERS.len()];
        v[Counter::Steps as usize] = Some(s as f64 * 10.0);
        c.observe("a", t(s), &v);
        c.observe("b", t(s), &v);
    }
    assert_eq!(c.windows(), 10, "bounded; pod b beyond max_engines ignored");
    c.forget("a");
    let mut c2 = c.clone();
    c2.observe("a", t(500), &[Some(1.0); COUNTERS.len()]);
    assert_eq!(c2.windows(), 10, "a forgotten pod starts over");
}

#[test]
fn a_coefficient_the_windows_cannot_identify_keeps_its_value_and_the_rest_is_fitted() {
    // Every window decodes about 3 sequences per step (3.0 to 3.1), its gaps ± 20% (a loaded
    // machine's timing): the fit cannot tell the per-sequence cost from the overhead. It puts it
    // within noise of 0, beyond ×10 below the start's, which alone used to reject the whole fit.
    // The prefill cost is well determined, and is what a start ×3 off gets wrong most.
    let windows = synthetic_decoding(&TRUTH, 0.2, false, 3.0..3.1);
    let full = fit::fit_step_time(&windows[..40], 10.0, 512, false).unwrap();
    let start = profile(scaled(&TRUTH, 3.0));
    let s = start.step_time;
    let start_decode = s.per_decode_seq_us + s.per_context_token_us * 1100.0;
    assert!(
        full.t_values[2] < 2.0,
        "identified after all: {:?}",
        full.t_values
    );
    assert!(
        full.model.per_decode_seq_us < start_decode / 10.0,
        "{:?}",
        full.model
    );
    let mut c = Calibrator::new(start.clone(), config());
    let now = feed_windows(&mut c, &[windows], 1);
    let outcome = c.refit(now).unwrap();
    assert_eq!(outcome.label(), "accepted_partial", "{outcome:?}");
    let Outcome::Accepted {
        profile,
        fitted_us,
        start_us,
        kept,
    } = outcome
    else {
        unreachable!()
    };
    let names: Vec<&str> = kept.iter().map(|k| k.coefficient.name()).collect();
    assert_eq!(names, ["per_decode_seq"], "{kept:?}");
    let m = profile.step_time;
    // Kept as in use (with its context cost), the others fitted.
    assert_eq!(
        (m.per_decode_seq_us, m.per_context_token_us),
        (s.per_decode_seq_us, s.per_context_token_us)
    );
    assert!((m.per_prefill_token_us / 40.0 - 1.0).abs() < 0.1, "{m:?}");
    assert!(m.overhead_us < s.overhead_us, "{m:?}");
    assert!(fitted_us < start_us / 2.0, "{fitted_us} vs {start_us}");
    assert_eq!(c.current(), &profile);
}
