use super::COUNTERS;
use super::*;
use crate::splitmix::SplitMix64;

/// Uniform in `r`.
fn random_range(rng: &mut SplitMix64, r: std::ops::Range<f64>) -> f64 {
    r.start + (r.end - r.start) * rng.unit()
}

/// 60 windows of one engine following `truth`, decoding 1 to 40 sequences per step; their gaps
/// off by up to ± `noise` (relative); prompts of 200 to 3,000 tokens with `vary_prompts`, else
/// 1,000.
pub(crate) fn synthetic(truth: &StepTimeModel, noise: f64, vary_prompts: bool) -> Vec<Window> {
    synthetic_decoding(truth, noise, vary_prompts, 1.0..40.0)
}

/// [`synthetic`], decoding `decode` sequences per step on average.
pub(crate) fn synthetic_decoding(
    truth: &StepTimeModel,
    noise: f64,
    vary_prompts: bool,
    decode: std::ops::Range<f64>,
) -> Vec<Window> {
    let mut rng = SplitMix64(7);
    (0..60)
        .map(|k| {
            let steps: f64 = random_range(&mut rng, 200.0..400.0);
            let decode: f64 = random_range(&mut rng, decode.clone());
            let prefill: f64 = random_range(&mut rng, 0.0..300.0);
            let len_in = if vary_prompts {
                random_range(&mut rng, 200.0..3000.0)
            } else {
                1000.0
            };
            let len_out = 200.0;
            let ctx = decode * (len_in + len_out / 2.0);
            let step = truth.overhead_us
                + truth.per_prefill_token_us * prefill
                + truth.per_decode_seq_us * decode
                + truth.per_context_token_us * ctx;
            // What a decoding sequence sees: its own batch, one more than the mean.
            let seen = step
                + truth.per_decode_seq_us
                + truth.per_context_token_us * (len_in + len_out / 2.0);
            let gaps = decode * steps;
            let mut delta = [0.0; COUNTERS.len()];
            let mut set = |c: Counter, v: f64| delta[c as usize] = v;
            set(Counter::Steps, steps);
            set(Counter::Generated, gaps + 10.0);
            set(Counter::StepTokens, prefill * steps + gaps + 10.0);
            set(Counter::ItlCount, gaps);
            let err = 1.0 + noise * random_range(&mut rng, -1.0..1.0);
            set(Counter::ItlSum, gaps * seen * err / 1e6);
            set(Counter::PromptLenCount, 10.0);
            set(Counter::PromptLenSum, 10.0 * len_in);
            set(Counter::OutputLenCount, 10.0);
            set(Counter::OutputLenSum, 10.0 * len_out);
            // 30 requests started: their prefill time, from TTFT minus queue time.
            let per_request = prefill * steps / 30.0;
            let chunks = (per_request / 512.0).ceil().max(1.0);
            let prefill_us = chunks * truth.overhead_us
                + truth.per_prefill_token_us * per_request
                + chunks * (truth.per_decode_seq_us * decode + truth.per_context_token_us * ctx);
            set(Counter::TtftCount, 30.0);
            set(Counter::TtftSum, 30.0 * (prefill_us / 1e6 + 0.5));
            set(Counter::QueueCount, 30.0);
            set(Counter::QueueSum, 30.0 * 0.5);
            Window {
                engine: "pod=a".into(),
                end: k as f64,
                secs: steps * seen / 1e6, // busy throughout
                delta,
            }
        })
        .collect()
}

pub(crate) const TRUTH: StepTimeModel = StepTimeModel {
    overhead_us: 5000.0,
    per_prefill_token_us: 40.0,
    per_decode_seq_us: 150.0,
    per_context_token_us: 0.02,
    per_attention_pair_us: 0.0,
};

#[test]
fn recovers_exact_coefficients() {
    let f = fit_step_time(&synthetic(&TRUTH, 0.0, true), 1.0, 512, true).unwrap();
    let m = f.model;
    assert!((m.overhead_us - 5000.0).abs() < 1e-3, "{m:?}");
    assert!((m.per_prefill_token_us - 40.0).abs() < 1e-6, "{m:?}");
    assert!((m.per_decode_seq_us - 150.0).abs() < 1e-6, "{m:?}");
    assert!((m.per_context_token_us - 0.02).abs() < 1e-9, "{m:?}");
    assert!(f.r2 > 0.999_999 && f.dropped.is_empty(), "{f:?}");
    let folded = fit_step_time(&synthetic(&TRUTH, 0.0, true), 1.0, 512, false).unwrap();
    assert_eq!(folded.model.per_context_token_us, 0.0);
    assert!(folded.model.per_decode_seq_us > 150.0, "{folded:?}");
}

#[test]
fn noisy_windows_stay_close_and_report_fit() {
    let f = fit_step_time(&synthetic(&TRUTH, 0.05, true), 1.0, 512, true).unwrap();
    let m = f.model;
    assert!((m.overhead_us / 5000.0 - 1.0).abs() < 0.1, "{m:?}");
    assert!((m.per_prefill_token_us / 40.0 - 1.0).abs() < 0.1, "{m:?}");
    assert!((m.per_decode_seq_us / 150.0 - 1.0).abs() < 0.15, "{m:?}");
    assert!(f.r2 > 0.8 && f.r2 < 1.0 && f.rmse_us > 0.0, "{f:?}");
    assert_eq!(f.residuals.len(), 120);
}

#[test]
fn constant_prompts_fold_context_into_decode() {
    let f = fit_step_time(&synthetic(&TRUTH, 0.0, false), 1.0, 512, true).unwrap();
    let m = f.model;
    assert_eq!(m.per_context_token_us, 0.0);
    // 150 µs + 0.02 µs × (1000 + 100) context tokens.
    assert!((m.per_decode_seq_us - 172.0).abs() < 1e-6, "{m:?}");
    assert!(f.dropped[0].contains("per_context_token"), "{f:?}");
}

#[test]
fn negative_costs_are_dropped_and_idle_data_refused() {
    let truth = StepTimeModel {
        per_prefill_token_us: 0.0,
        ..TRUTH
    };
    let mut w = synthetic(&truth, 0.0, true);
    // Pull the prefill cost below zero with a few skewed windows.
    for x in w.iter_mut().take(5) {
        x.delta[Counter::ItlSum as usize] *= 0.5;
    }
    let f = fit_step_time(&w, 1.0, 512, true).unwrap();
    assert!(f.model.per_prefill_token_us >= 0.0);
    assert!(f.model.per_decode_seq_us >= 0.0 && f.model.overhead_us >= 0.0);
    let idle: Vec<Window> = w.into_iter().take(1).collect();
    assert!(fit_step_time(&idle, 1.0, 512, true).is_err());
}

#[test]
fn t_values_say_what_the_windows_identify() {
    let f = fit_step_time(&synthetic(&TRUTH, 0.05, false), 1.0, 512, false).unwrap();
    assert!(f.t_values[..3].iter().all(|&t| t > 10.0), "{f:?}");
    assert_eq!(f.t_values[3], 0.0, "the context cost is not fitted");
    // Every window decodes 3.0 to 3.1 sequences per step, its gaps ± 20%: the per-sequence cost
    // and the overhead trade off, and noise decides; the prefill cost is still pinned.
    let flat = fit_step_time(
        &synthetic_decoding(&TRUTH, 0.2, false, 3.0..3.1),
        1.0,
        512,
        false,
    )
    .unwrap();
    assert!(flat.t_values[2] < 2.0, "{flat:?}");
    assert!(flat.t_values[1] > 10.0, "{flat:?}");
}
