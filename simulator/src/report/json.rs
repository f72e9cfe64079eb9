//! Machine-readable results: summaries, timelines and TTFT CDFs of every policy of a run.

use serde::Serialize;

use super::{Summary, ttft_cdf};
use crate::des::RunResult;
use crate::metrics::Sample;

/// What `results.json` holds.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// The trace's name.
    pub trace: &'a str,
    /// Requests in the trace.
    pub requests: usize,
    /// The run's settings, as given on the command line.
    pub settings: serde_json::Value,
    /// Per-policy summaries.
    pub summaries: &'a [Summary],
    /// Per-policy details.
    pub policies: Vec<PolicyDetail<'a>>,
}

/// A policy's timeline and TTFT CDF.
#[derive(Debug, Serialize)]
pub struct PolicyDetail<'a> {
    /// Policy name.
    pub policy: &'a str,
    /// TTFT CDF as (seconds, fraction).
    pub ttft_cdf: Vec<(f64, f64)>,
    /// Timeline samples.
    pub timeline: &'a [Sample],
}

/// Builds the report.
pub fn report<'a>(
    trace: &'a str,
    settings: serde_json::Value,
    runs: &'a [RunResult],
    summaries: &'a [Summary],
) -> Report<'a> {
    Report {
        trace,
        requests: runs.first().map_or(0, |r| r.records.len()),
        settings,
        summaries,
        policies: runs
            .iter()
            .map(|r| PolicyDetail {
                policy: &r.policy,
                ttft_cdf: ttft_cdf(r, 400),
                timeline: &r.timeline,
            })
            .collect(),
    }
}
