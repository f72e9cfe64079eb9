//! Workload generators: shared-prefix groups and multi-turn chat sessions.
//!
//! [`SharedPrefix::llm_d_benchmark`] regenerates the workload of llm-d's precise prefix-cache
//! benchmark (inference-perf `shared_prefix`: 150 groups × 6,000-token system prompt, 5 users per
//! group × 1,200-token question, 1,000 output tokens with `ignore_eos`, Poisson arrivals over a rate
//! ladder from 3 to 60 QPS after a 15 QPS warm-up). Like inference-perf, the 750 prompts are
//! shuffled once and then sent round-robin in that order, so each (group, user) prompt repeats
//! exactly every 750 requests.

use std::sync::Arc;

use kvpick_scheduler::duration;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{PromptSpec, Segment, Trace, TraceRequest, tokens};
use crate::clock::SimTime;
use crate::error::SimError;

/// One step of an arrival-rate ladder.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct RateStage {
    /// Requests (or sessions) per second.
    pub rate: f64,
    /// How long the stage lasts, in seconds.
    pub duration_s: f64,
}

/// llm-d's benchmark ladder: 15 QPS × 50 s warm-up, then 3 → 60 QPS (inference-perf stages).
pub const LLM_D_STAGES: [(f64, f64); 17] = [
    (15.0, 50.0),
    (3.0, 20.0),
    (10.0, 20.0),
    (15.0, 20.0),
    (20.0, 38.0),
    (22.0, 34.0),
    (25.0, 30.0),
    (30.0, 25.0),
    (35.0, 21.0),
    (40.0, 38.0),
    (43.0, 36.0),
    (46.0, 33.0),
    (49.0, 30.0),
    (52.0, 29.0),
    (55.0, 27.0),
    (57.0, 26.0),
    (60.0, 25.0),
];

/// What a stage ladder looks like, for `--help` and error messages.
pub const STAGES_EXPECTED: &str = "RATE:DURATION[,RATE:DURATION...] (requests per second, and a duration with its unit, \
     e.g. 4:10s,8:1m30s) or llm-d";

/// Parses `RATE:DURATION[,RATE:DURATION...]`, or `llm-d` for llm-d's benchmark ladder. Each
/// `DURATION` is kvpick's one duration syntax ([`kvpick_scheduler::duration`]): a bare number is
/// refused.
pub fn parse_stages(spec: &str) -> Result<Vec<RateStage>, SimError> {
    if spec == "llm-d" {
        return Ok(LLM_D_STAGES
            .iter()
            .map(|&(rate, duration_s)| RateStage { rate, duration_s })
            .collect());
    }
    let bad = |why: String| {
        SimError::InvalidConfig(format!(
            "stages {spec:?}: {why}; expected {STAGES_EXPECTED}"
        ))
    };
    spec.split(',')
        .map(|s| {
            let (r, d) = s
                .split_once(':')
                .ok_or_else(|| bad(format!("stage {s:?} lacks \":\"")))?;
            let rate = r
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| bad(format!("rate {r:?} is not a number above 0")))?;
            let duration = duration::parse(d).map_err(|e| bad(e.to_string()))?;
            if duration.is_zero() {
                return Err(bad(format!("duration {d:?} is not more than zero")));
            }
            Ok(RateStage {
                rate,
                duration_s: duration.as_secs_f64(),
            })
        })
        .collect()
}

/// How arrivals are spaced within a stage.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrivals {
    /// Exponential gaps (inference-perf's `poisson`).
    Poisson,
    /// Equal gaps.
    Constant,
}

/// Arrival times over `stages`, scaled by `rate_scale`.
pub(crate) fn arrival_times(
    stages: &[RateStage],
    arrivals: Arrivals,
    rate_scale: f64,
    rng: &mut SmallRng,
) -> Vec<f64> {
    let mut out = Vec::new();
    let mut start = 0.0;
    for s in stages {
        let rate = s.rate * rate_scale;
        let end = start + s.duration_s;
        let mut t = start;
        loop {
            t += match arrivals {
                Arrivals::Poisson => -(1.0 - rng.random::<f64>()).ln() / rate,
                Arrivals::Constant => 1.0 / rate,
            };
            if t >= end {
                break;
            }
            out.push(t);
        }
        start = end;
    }
    out
}

/// Shared-prefix groups: every request is one group's system prompt followed by one user's question.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedPrefix {
    /// Number of groups (distinct system prompts).
    pub groups: u32,
    /// Users (distinct questions) per group.
    pub users_per_group: u32,
    /// System prompt tokens.
    pub system_len: u32,
    /// Question tokens.
    pub question_len: u32,
    /// Output tokens per request.
    pub output_len: u32,
    /// The arrival-rate ladder.
    pub stages: Vec<RateStage>,
    /// Multiplies every stage's rate (shrinks a benchmark for a quick run, or stresses it).
    pub rate_scale: f64,
    /// Arrival spacing.
    pub arrivals: Arrivals,
    /// Seed of arrivals and prompt order.
    pub seed: u64,
}

impl SharedPrefix {
    /// llm-d's precise-scheduling benchmark workload (see the module docs).
    pub fn llm_d_benchmark(seed: u64) -> Self {
        Self {
            groups: 150,
            users_per_group: 5,
            system_len: 6000,
            question_len: 1200,
            output_len: 1000,
            stages: parse_stages("llm-d").unwrap_or_default(),
            rate_scale: 1.0,
            arrivals: Arrivals::Poisson,
            seed,
        }
    }

    /// Generates the trace.
    pub fn generate(&self) -> Result<Trace, SimError> {
        if self.groups == 0 || self.users_per_group == 0 || self.system_len + self.question_len == 0
        {
            return Err(SimError::InvalidConfig(
                "shared-prefix needs groups, users and a non-empty prompt".into(),
            ));
        }
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let mut prompts: Vec<(u32, u32)> = (0..self.groups)
            .flat_map(|g| (0..self.users_per_group).map(move |u| (g, u)))
            .collect();
        prompts.shuffle(&mut rng);
        let times = arrival_times(&self.stages, self.arrivals, self.rate_scale, &mut rng);
        let requests = times
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let (g, u) = prompts[i % prompts.len()];
                let mut segments = Vec::with_capacity(2);
                if self.system_len > 0 {
                    segments.push(Segment {
                        id: tokens::content_id("shared-prefix/system", &[self.seed, g as u64]),
                        len: self.system_len,
                    });
                }
                if self.question_len > 0 {
                    segments.push(Segment {
                        id: tokens::content_id(
                            "shared-prefix/question",
                            &[self.seed, g as u64, u as u64],
                        ),
                        len: self.question_len,
                    });
                }
                TraceRequest {
                    arrival: SimTime::from_secs_f64(t),
                    prompt: PromptSpec::Segments(segments),
                    output_tokens: self.output_len.max(1),
                    output_id: tokens::content_id("shared-prefix/output", &[self.seed, i as u64]),
                    model: None,
                    lora: None,
                    session: Some(Arc::from(format!("g{g}u{u}"))),
                    objective: Default::default(),
                }
            })
            .collect();
        Ok(Trace {
            name: format!(
                "shared-prefix({}x{}+{}x{}, out {})",
                self.groups,
                self.system_len,
                self.users_per_group,
                self.question_len,
                self.output_len
            ),
            requests,
            prefix_block_tokens: None,
        })
    }
}

/// Multi-turn chat: sessions start over the rate ladder; turn k's prompt is the system prompt and
/// every earlier user message and answer, then the new user message; its output is the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Chat {
    /// Distinct system prompts; session i uses prompt i mod this.
    pub system_prompts: u32,
    /// System prompt tokens.
    pub system_len: u32,
    /// Turns per session.
    pub turns: u32,
    /// Tokens per user message.
    pub user_len: u32,
    /// Tokens per answer.
    pub answer_len: u32,
    /// Mean seconds between one turn's arrival and the next (exponential).
    pub think_time_s: f64,
    /// Session-start rate ladder.
    pub stages: Vec<RateStage>,
    /// Session arrival spacing.
    pub arrivals: Arrivals,
    /// Seed.
    pub seed: u64,
}

impl Chat {
    /// Generates the trace (open loop: turn times do not wait for answers).
    pub fn generate(&self) -> Result<Trace, SimError> {
        if self.system_prompts == 0 || self.turns == 0 || self.user_len == 0 {
            return Err(SimError::InvalidConfig(
                "chat needs system prompts, turns and user messages".into(),
            ));
        }
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let starts = arrival_times(&self.stages, self.arrivals, 1.0, &mut rng);
        let mut requests = Vec::new();
        for (s, &start) in starts.iter().enumerate() {
            let s = s as u64;
            let sys = (s % self.system_prompts as u64, self.system_len);
            let mut history = vec![Segment {
                id: tokens::content_id("chat/system", &[self.seed, sys.0]),
                len: sys.1,
            }];
            history.retain(|seg| seg.len > 0);
            let mut t = start;
            let session: Arc<str> = Arc::from(format!("s{s}"));
            for k in 0..self.turns as u64 {
                history.push(Segment {
                    id: tokens::content_id("chat/user", &[self.seed, s, k]),
                    len: self.user_len,
                });
                let answer = tokens::content_id("chat/answer", &[self.seed, s, k]);
                requests.push(TraceRequest {
                    arrival: SimTime::from_secs_f64(t),
                    prompt: PromptSpec::Segments(history.clone()),
                    output_tokens: self.answer_len.max(1),
                    output_id: answer,
                    model: None,
                    lora: None,
                    session: Some(session.clone()),
                    objective: Default::default(),
                });
                history.push(Segment {
                    id: answer,
                    len: self.answer_len.max(1),
                });
                t += -(1.0 - rng.random::<f64>()).ln() * self.think_time_s;
            }
        }
        let mut trace = Trace {
            name: format!(
                "chat({} turns, sys {}, user {}, answer {})",
                self.turns, self.system_len, self.user_len, self.answer_len
            ),
            requests,
            prefix_block_tokens: None,
        };
        trace.sort();
        Ok(trace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_durations_need_their_unit() {
        let stage = |rate, duration_s| RateStage { rate, duration_s };
        assert_eq!(
            parse_stages("4:10s, 8:1m30s").unwrap(),
            vec![stage(4.0, 10.0), stage(8.0, 90.0)]
        );
        assert_eq!(parse_stages("0.5:500ms").unwrap(), vec![stage(0.5, 0.5)]);
        let e = parse_stages("4:10").unwrap_err().to_string();
        assert!(
            e.contains("\"10\"") && e.contains("unit") && e.contains("4:10s"),
            "{e}"
        );
        for bad in [
            "", "4", "0:10s", "-1:10s", "x:10s", "4:0s", "4:-1s", "4:10s,",
        ] {
            assert!(parse_stages(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn llm_d_workload_shape() {
        let t = SharedPrefix::llm_d_benchmark(1).generate().unwrap();
        // Σ rate × duration over the ladder is 17,084 expected arrivals.
        let n = t.requests.len() as f64;
        assert!((n - 17_084.0).abs() < 4.0 * 17_084f64.sqrt(), "{n}");
        assert!(
            t.requests
                .iter()
                .all(|r| r.input_tokens() == 7200 && r.output_tokens == 1000)
        );
        // Every prompt repeats exactly every 750 requests.
        assert_eq!(t.requests[3].prompt, t.requests[753].prompt);
        assert_ne!(t.requests[3].prompt, t.requests[4].prompt);
        assert!(t.span().secs() < 502.0);
    }

    #[test]
    fn chat_turns_extend_history_with_answers() {
        let c = Chat {
            system_prompts: 2,
            system_len: 100,
            turns: 3,
            user_len: 10,
            answer_len: 20,
            think_time_s: 5.0,
            stages: parse_stages("1:10s").unwrap(),
            arrivals: Arrivals::Constant,
            seed: 3,
        };
        let t = c.generate().unwrap();
        let s0: Vec<_> = t
            .requests
            .iter()
            .filter(|r| r.session.as_deref() == Some("s0"))
            .collect();
        assert_eq!(s0.len(), 3);
        assert_eq!(s0[2].input_tokens(), 100 + 3 * 10 + 2 * 20);
        let PromptSpec::Segments(seg) = &s0[1].prompt else {
            panic!()
        };
        assert_eq!(
            seg[2].id, s0[0].output_id,
            "the answer is the next turn's history"
        );
        assert!(parse_stages("3:0s").is_err() && parse_stages("x").is_err());
    }
}
