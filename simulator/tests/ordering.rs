//! Policy ordering on the regenerated llm-d shared-prefix workload, 8 engines: precise prefix beats
//! approximate prefix, which beats random and round-robin, on TTFT p90 and on prefix hit rate.
//!
//! The CI version is the llm-d workload shrunk ×10 in every token length (and the engines' KV with
//! it, keeping llm-d's 73% resident-to-capacity ratio) so it runs in seconds in debug builds; set
//! `KVPICK_SIM_FULL=1` to run the full-size workload (release build recommended).
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use kvpick_sim::engine::Profile;
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::generate::SharedPrefix;

#[test]
fn precise_beats_approx_beats_random_and_round_robin() {
    let full = std::env::var_os("KVPICK_SIM_FULL").is_some();
    let mut w = SharedPrefix::llm_d_benchmark(7);
    let mut profile = Profile::named("h100-tp2-qwen3-32b").unwrap();
    if !full {
        // ×10 shorter prompts and outputs, ×10 smaller KV; per-token costs ×10 so that steps
        // cost what the full-size ones do, and the same arrival ladder.
        w.system_len /= 10;
        w.question_len /= 10;
        w.output_len /= 10;
        profile.kv_blocks /= 10;
        profile.max_num_batched_tokens /= 10;
        profile.step_time.per_prefill_token_us *= 10.0;
        profile.step_time.per_context_token_us *= 10.0;
        profile.step_time.per_attention_pair_us *= 100.0;
        profile.step_time.per_decode_seq_us *= 10.0;
        profile.step_time.overhead_us *= 10.0;
    }
    let trace = w.generate().unwrap();
    let cfg = common::sim_config(8, profile);
    let policies = [
        PolicySpec::PrecisePrefix,
        PolicySpec::ApproxPrefix,
        PolicySpec::Random,
        PolicySpec::RoundRobin,
    ];
    let (_, s) = common::compare(&trace, &policies, &cfg);
    let (precise, approx, random, rr) = (&s[0], &s[1], &s[2], &s[3]);
    for x in &s {
        assert_eq!(x.completed + x.unfit, x.requests, "{}", x.policy);
    }
    assert!(
        precise.ttft.p90 < approx.ttft.p90,
        "TTFT p90 precise vs approx"
    );
    assert!(
        approx.ttft.p90 < random.ttft.p90.min(rr.ttft.p90),
        "TTFT p90 approx vs baselines"
    );
    assert!(
        precise.hit_rate > approx.hit_rate,
        "hit rate precise vs approx"
    );
    assert!(
        approx.hit_rate > random.hit_rate.max(rr.hit_rate),
        "hit rate approx vs baselines"
    );
}
