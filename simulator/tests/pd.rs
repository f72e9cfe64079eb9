//! Prefill/decode disaggregation with the shipped llm-d configs, on 4 engines `h100-tp2-qwen3-32b`
//! (2 prefill, 2 decode for the P/D configs): 60 requests 150 ms apart, alternately 4,000 and
//! 500 unique prompt tokens, 150 output tokens each.
//!
//! `pd-disaggregated` prefills every request on a prefill engine and decodes it on a decode
//! engine, which computes one prompt token per request; each TTFT covers the KV transfer; and
//! decode steps no longer wait behind 0.4 s prefills, so TPOT p90 falls below the aggregated
//! `precise-prefix`'s on the same 4 engines. `pd-decided` (`nonCachedTokens: 2048`)
//! disaggregates exactly the 4,000-token prompts.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

use kvpick_sim::SimTime;
use kvpick_sim::des::{PdSetup, SimConfig};
use kvpick_sim::engine::Profile;
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::{PromptSpec, Segment, Trace, TraceRequest};
use kvpick_sim::transfer::KvTransfer;

const LONG: u32 = 4_000;
const SHORT: u32 = 500;

fn trace() -> Trace {
    let requests = (0..60u64)
        .map(|i| TraceRequest {
            arrival: SimTime(i * 150_000),
            prompt: PromptSpec::Segments(vec![Segment {
                id: 1_000 + i,
                len: if i % 2 == 0 { LONG } else { SHORT },
            }]),
            output_tokens: 150,
            output_id: i,
            model: None,
            lora: None,
            session: None,
            objective: Default::default(),
        })
        .collect();
    Trace {
        name: "pd".into(),
        requests,
        prefix_block_tokens: None,
    }
}

fn config(name: &str) -> PolicySpec {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    PolicySpec::Config(path)
}

#[test]
fn disaggregation_moves_prefill_off_the_decode_engines() {
    let trace = trace();
    let transfer = KvTransfer::default();
    let cfg = SimConfig {
        check_invariants: true,
        pd: PdSetup {
            prefill_engines: 2,
            transfer,
        },
        ..common::sim_config(4, Profile::named("h100-tp2-qwen3-32b").unwrap())
    };
    let policies = [
        PolicySpec::PrecisePrefix,
        config("pd-disaggregated.yaml"),
        config("pd-decided.yaml"),
    ];
    let (runs, s) = common::compare(&trace, &policies, &cfg);
    for (run, x) in runs.iter().zip(&s) {
        assert_eq!(x.completed, x.requests, "{}", x.policy);
        assert_eq!(run.violation, None, "{}", x.policy);
    }
    let (agg, disagg, decided) = (&runs[0], &runs[1], &runs[2]);
    assert!(agg.records.iter().all(|r| r.prefill_engine.is_none()));

    for (req, r) in trace.requests.iter().zip(&disagg.records) {
        assert!(r.prefill_engine.is_some_and(|p| p < 2), "{r:?}");
        assert!(r.engine >= 2, "{r:?}");
        let ttft = r.first_token.unwrap().micros() - r.arrival.micros();
        let moved = transfer.time_us(req.input_tokens(), 16);
        assert!(
            ttft > moved,
            "TTFT {ttft} µs without the {moved} µs transfer"
        );
    }
    // The decode engines computed the last prompt token of each request and the outputs.
    let decode_prompt: u64 = disagg.engines[2..].iter().map(|e| e.prefill_tokens).sum();
    let preempted: u64 = disagg.engines.iter().map(|e| e.preemptions).sum();
    assert_eq!((decode_prompt, preempted), (trace.requests.len() as u64, 0));
    assert!(
        s[1].tpot.p90 < s[0].tpot.p90,
        "TPOT p90 disaggregated {} vs aggregated {}",
        s[1].tpot.p90,
        s[0].tpot.p90
    );

    for (req, r) in trace.requests.iter().zip(&decided.records) {
        let long = req.input_tokens() == LONG;
        assert_eq!(r.prefill_engine.is_some(), long, "{r:?}");
        assert!(r.engine >= 2, "decided: decoded on a decode engine: {r:?}");
    }
}
