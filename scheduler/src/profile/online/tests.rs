use super::*;
use crate::profile::StepTimeModel;
use crate::profile::fit::tests::{TRUTH, synthetic};

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
    let mut now = Timestamp::from_millis(1000);
    let mut cum = [[0.0f64; COUNTERS.len()]; 2];
    for (pod, values) in cum.iter().enumerate() {
        c.observe(&format!("pod{pod}"), now, &values.map(Some));
    }
    for truth in truths {
        for (k, w) in synthetic(truth, noise, true).iter().enumerate() {
            let pod = k % 2;
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
    let Some(Outcome::Accepted {
        profile,
        fitted_us,
        start_us,
    }) = c.refit(now)
    else {
        panic!("not accepted: {:?}", c.refit(now + Duration::from_secs(60)));
    };
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
