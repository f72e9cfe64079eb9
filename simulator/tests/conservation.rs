//! Conservation over random small traces and pools: every request completes with all its output
//! tokens or is reported unfit; engine bookkeeping holds after every step (no block freed twice,
//! reference counts equal holders, KV usage within capacity); and the precise index, fed only by
//! the engines' KV events, ends holding exactly the blocks each engine caches. P/D pools too: a
//! disaggregated request is prefilled on a prefill engine and decoded on a decode engine, and
//! still completes whole.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use kvpick_sim::SimTime;
use kvpick_sim::des::{PdSetup, SimConfig, run};
use kvpick_sim::engine::{Profile, StepTimeModel};
use kvpick_sim::policy::PolicySpec;
use kvpick_sim::trace::{PromptSpec, Segment, Trace, TraceRequest};
use kvpick_sim::transfer::KvTransfer;
use proptest::prelude::*;

fn request() -> impl Strategy<Value = (u64, Vec<(u64, u32)>, u32)> {
    (
        0u64..400_000,
        prop::collection::vec((0u64..6, 1u32..120), 1..4),
        1u32..50,
    )
}

fn policy() -> impl Strategy<Value = PolicySpec> {
    prop_oneof![
        Just(PolicySpec::Random),
        Just(PolicySpec::RoundRobin),
        Just(PolicySpec::LeastLoaded),
        Just(PolicySpec::ApproxPrefix),
        Just(PolicySpec::PrecisePrefix),
    ]
}

/// llm-d's P/D config: disaggregate every request, or when 8 tokens are uncached on the decode
/// pick; the prefill profile by cached prefix and queue, the decode one by cached prefix.
fn pd_policy(always: bool, block_size: u32) -> PolicySpec {
    let (name, decider) = if always {
        ("always-disagg-pd-decider", "")
    } else {
        (
            "prefix-based-pd-decider",
            "\n  parameters: {nonCachedTokens: 8}",
        )
    };
    PolicySpec::Inline {
        name: format!("pd-{name}"),
        yaml: Arc::from(format!(
            "apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
index: {{blockSize: {block_size}}}
plugins:
- type: prefill-filter
- type: decode-filter
- type: precise-prefix-cache-scorer
- type: queue-scorer
- type: {name}{decider}
- type: disagg-profile-handler
  parameters: {{deciders: {{prefill: {name}}}}}
schedulingProfiles:
- name: decode
  plugins: [{{pluginRef: decode-filter}}, {{pluginRef: precise-prefix-cache-scorer}}]
- name: prefill
  plugins: [{{pluginRef: prefill-filter}}, {{pluginRef: precise-prefix-cache-scorer}}, {{pluginRef: queue-scorer}}]
"
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_request_completes_or_is_unfit(
        reqs in prop::collection::vec(request(), 1..30),
        engines in 1usize..4,
        kv_blocks in 4u32..48,
        block_size in prop_oneof![Just(4u32), Just(16)],
        batch in 4u32..200,
        seqs in 1u32..6,
        latency_us in prop_oneof![Just(0u64), 1u64..5_000],
        metrics_us in prop_oneof![Just(0u64), 1u64..100_000],
        policy in policy(),
        pd in 0usize..3,
        seed in 0u64..1000,
    ) {
        // P/D (every request, or when 8 tokens are uncached on the decode pick) with half the
        // engines prefilling, when there are two or more.
        let (policy, prefill_engines) = match pd {
            1 | 2 if engines >= 2 => (pd_policy(pd == 1, block_size), engines / 2),
            _ => (policy, 0),
        };
        let mut t = 0u64;
        let requests = reqs
            .iter()
            .enumerate()
            .map(|(i, (gap, segs, out))| {
                t += gap;
                TraceRequest {
                    arrival: SimTime(t),
                    prompt: PromptSpec::Segments(segs.iter().map(|&(id, len)| Segment { id, len }).collect()),
                    output_tokens: *out,
                    output_id: i as u64,
                    model: None,
                    lora: (i % 5 == 4).then(|| Arc::from("adapter")),
                    session: None,
                    objective: Default::default(),
                }
            })
            .collect();
        let trace = Trace { name: "prop".into(), requests, prefix_block_tokens: None };
        let profile = Profile {
            name: "prop".into(),
            kv_blocks,
            block_size,
            max_num_batched_tokens: batch,
            max_num_seqs: seqs,
            max_model_len: 300,
            step_time: StepTimeModel {
                overhead_us: 1000.0,
                per_prefill_token_us: 10.0,
                per_decode_seq_us: 5.0,
                per_context_token_us: 0.1,
                per_attention_pair_us: 0.01,
            },
            frontend_us: 0.0,
        };
        let cfg = SimConfig {
            model: Arc::from("m"),
            metrics_interval_us: metrics_us,
            kv_event_latency_us: latency_us,
            sample_interval_us: 50_000,
            seed,
            check_invariants: true,
            pd: PdSetup { prefill_engines, transfer: KvTransfer::default() },
            ..common::sim_config(engines, profile.clone())
        };
        let r = run(&trace, &policy, &cfg, None).unwrap();
        prop_assert_eq!(r.violation, None);
        for (req, rec) in trace.requests.iter().zip(&r.records) {
            let total = req.input_tokens() + req.output_tokens;
            let fits = total <= profile.max_model_len
                && total.div_ceil(block_size) <= kv_blocks;
            prop_assert_eq!(rec.unfit, !fits);
            if fits {
                prop_assert!(rec.finished.is_some(), "request never finished: {:?}", rec);
                prop_assert_eq!(rec.output_tokens, req.output_tokens);
                prop_assert!(rec.first_token >= rec.admitted && rec.admitted >= Some(req.arrival));
                prop_assert!(rec.cached_tokens < req.input_tokens());
                // Decoded on a decode engine, prefilled (when disaggregated) on a prefill one;
                // the always-decider disaggregates every request.
                if prefill_engines > 0 {
                    prop_assert!(rec.engine as usize >= prefill_engines, "{:?}", rec);
                    prop_assert!(rec.prefill_engine.is_none_or(|p| (p as usize) < prefill_engines));
                    prop_assert!(pd != 1 || rec.prefill_engine.is_some(), "{:?}", rec);
                }
            }
        }
        if let Some(entries) = &r.index_entries {
            prop_assert_eq!(entries, &r.engine_cached_blocks);
        }
    }
}
