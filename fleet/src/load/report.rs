//! What a load run measured: per request ([`Record`]), per run ([`LoadSummary`]), as an aligned
//! table with one column per run (the demo's side-by-side comparison), JSON and a TTFT plot.

use serde::Serialize;

use super::client::Outcome;
use kvpick_sim::report::Quantiles;
use kvpick_sim::report::svg::{LinePlot, Series};

/// One request of a load run.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Its index in the trace.
    pub index: usize,
    /// When the trace wanted it sent, s after the start.
    pub due_s: f64,
    /// When it was sent, s after the start.
    pub sent_s: f64,
    /// Held back by the concurrency cap (due while every slot was taken).
    pub delayed: bool,
    /// Prompt tokens in the trace.
    pub input_tokens: u32,
    /// What the client measured.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A run's summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSummary {
    /// Name of the run.
    pub label: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests that completed.
    pub ok: usize,
    /// Requests that failed (HTTP error, in-stream error, timeout).
    pub failed: usize,
    /// Requests held back by the concurrency cap.
    pub delayed: usize,
    /// Time to first token, s.
    pub ttft: Quantiles,
    /// Gaps between streamed chunks, s.
    pub itl: Quantiles,
    /// End-to-end latency, s.
    pub e2e: Quantiles,
    /// Completed requests per second over the run.
    pub requests_per_s: f64,
    /// Generated tokens per second over the run (from `usage`).
    pub output_tok_s: f64,
    /// Σ prompt tokens (from `usage`) of completed requests.
    pub prompt_tokens: u64,
    /// Σ `prompt_tokens_details.cached_tokens`.
    pub cached_tokens: u64,
    /// `cached_tokens / prompt_tokens`, as the client saw it.
    pub client_hit_rate: f64,
    /// The servers' own `prefix_cache_hits / prefix_cache_queries`, when known.
    pub server_hit_rate: Option<f64>,
    /// First send to last response, s.
    pub duration_s: f64,
    /// A few distinct failure messages.
    pub errors: Vec<String>,
}

/// Summarizes `records` under `label`.
pub fn summarize(label: &str, records: &[Record]) -> LoadSummary {
    let mut s = LoadSummary {
        label: label.into(),
        requests: records.len(),
        ..LoadSummary::default()
    };
    let (mut ttft, mut itl, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
    let mut output = 0u64;
    let (mut first, mut last) = (f64::INFINITY, 0.0f64);
    for r in records {
        let o = &r.outcome;
        s.delayed += r.delayed as usize;
        first = first.min(r.sent_s);
        if let Some(e) = &o.error {
            s.failed += 1;
            if s.errors.len() < 5 && !s.errors.contains(e) {
                s.errors.push(e.clone());
            }
            continue;
        }
        s.ok += 1;
        ttft.extend(o.ttft_s);
        itl.extend_from_slice(&o.gaps_s);
        if let Some(t) = o.e2e_s {
            e2e.push(t);
            last = last.max(r.sent_s + t);
        }
        output += o.completion_tokens.unwrap_or(o.chunks as u64);
        s.prompt_tokens += o.prompt_tokens.unwrap_or(0);
        s.cached_tokens += o.cached_tokens;
    }
    s.duration_s = if last > first { last - first } else { 0.0 };
    let span = s.duration_s.max(1e-9);
    s.requests_per_s = s.ok as f64 / span;
    s.output_tok_s = output as f64 / span;
    s.client_hit_rate = if s.prompt_tokens == 0 {
        0.0
    } else {
        s.cached_tokens as f64 / s.prompt_tokens as f64
    };
    s.ttft = Quantiles::of(&mut ttft);
    s.itl = Quantiles::of(&mut itl);
    s.e2e = Quantiles::of(&mut e2e);
    s
}

fn ms(v: f64) -> String {
    format!("{:.1} ms", v * 1000.0)
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// An aligned table, one column per run.
pub fn table(runs: &[LoadSummary]) -> String {
    type Row = (&'static str, fn(&LoadSummary) -> String);
    let rows: [Row; 15] = [
        ("requests ok / sent", |s| {
            format!("{} / {}", s.ok, s.requests)
        }),
        ("TTFT p50", |s| ms(s.ttft.p50)),
        ("TTFT p90", |s| ms(s.ttft.p90)),
        ("TTFT p99", |s| ms(s.ttft.p99)),
        ("ITL p50", |s| ms(s.itl.p50)),
        ("ITL p90", |s| ms(s.itl.p90)),
        ("E2E p50", |s| ms(s.e2e.p50)),
        ("E2E p90", |s| ms(s.e2e.p90)),
        ("throughput (req/s)", |s| format!("{:.2}", s.requests_per_s)),
        ("output tokens/s", |s| format!("{:.1}", s.output_tok_s)),
        ("prefix hit (client)", |s| pct(s.client_hit_rate)),
        ("prefix hit (fleet)", |s| {
            s.server_hit_rate.map_or("-".into(), pct)
        }),
        ("cached / prompt tok", |s| {
            format!("{} / {}", s.cached_tokens, s.prompt_tokens)
        }),
        ("delayed by cap", |s| s.delayed.to_string()),
        ("failed", |s| s.failed.to_string()),
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, f)| runs.iter().map(f).collect())
        .collect();
    let w0 = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..runs.len())
        .map(|i| {
            let body = cells.iter().map(|c| c[i].len()).max().unwrap_or(0);
            body.max(runs[i].label.len())
        })
        .collect();
    let mut out = format!("{:w0$}", "");
    for (r, w) in runs.iter().zip(&widths) {
        out += &format!("  {:>w$}", r.label);
    }
    out.push('\n');
    for ((name, _), row) in rows.iter().zip(&cells) {
        out += &format!("{name:w0$}");
        for (c, w) in row.iter().zip(&widths) {
            out += &format!("  {c:>w$}");
        }
        out.push('\n');
    }
    out
}

/// TTFT CDFs of several runs as an SVG document.
pub fn ttft_plot(runs: &[(String, &[Record])]) -> String {
    let series = runs
        .iter()
        .map(|(name, records)| {
            let mut v: Vec<f64> = records
                .iter()
                .filter(|r| r.outcome.error.is_none())
                .filter_map(|r| r.outcome.ttft_s)
                .collect();
            v.sort_by(f64::total_cmp);
            let n = v.len().max(1) as f64;
            Series {
                name: name.clone(),
                points: v
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (*t, (i + 1) as f64 / n))
                    .collect(),
            }
        })
        .collect();
    LinePlot {
        title: "Time to first token at the client (CDF)".into(),
        x_label: "TTFT (s, log scale)".into(),
        y_label: "fraction of requests".into(),
        series,
        log_x: true,
        y_range: Some((0.0, 1.0)),
        steps: true,
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_rates() {
        let ok = |i, ttft, cached| Record {
            index: i,
            due_s: i as f64,
            sent_s: i as f64,
            delayed: false,
            input_tokens: 100,
            outcome: Outcome {
                status: 200,
                ttft_s: Some(ttft),
                e2e_s: Some(1.0),
                prompt_tokens: Some(100),
                completion_tokens: Some(10),
                cached_tokens: cached,
                ..Outcome::default()
            },
        };
        let mut bad = ok(2, 0.0, 0);
        bad.outcome.error = Some("HTTP 500".into());
        let s = summarize("x", &[ok(0, 0.1, 0), ok(1, 0.3, 80), bad]);
        assert_eq!(
            (s.ok, s.failed, s.prompt_tokens, s.cached_tokens),
            (2, 1, 200, 80)
        );
        assert!((s.client_hit_rate - 0.4).abs() < 1e-9);
        assert!((s.duration_s - 2.0).abs() < 1e-9 && (s.output_tok_s - 10.0).abs() < 1e-9);
        assert_eq!(s.ttft.p90, 0.3);
        let t = table(&[
            s.clone(),
            LoadSummary {
                label: "yy".into(),
                ..s
            },
        ]);
        assert!(
            t.contains("TTFT p90") && t.contains("40.0%") && t.lines().count() == 16,
            "{t}"
        );
    }
}
