//! The policy comparison as a plain-text table for the terminal (and Markdown, for BENCHMARKS.md).

use std::fmt::Write;

use super::Summary;

fn columns() -> [&'static str; 13] {
    [
        "policy",
        "done",
        "unfit",
        "TTFT p50 s",
        "TTFT p90 s",
        "TTFT p99 s",
        "ITL p50 ms",
        "TPOT p90 ms",
        "E2E p90 s",
        "queue p90 s",
        "out tok/s",
        "in tok/s",
        "hit %",
    ]
}

fn extra() -> [&'static str; 2] {
    ["imbalance", "preempt"]
}

/// Shown only when some run had flow control refuse requests.
const REJECTED: &str = "rejected";

/// Shown only when some run shed requests: all of them, and those shed for their objectives.
const SHED: [&str; 2] = ["shed", "shed slo"];

/// Shown only when the trace gives objectives: completed requests that met them.
const SLO_MET: &str = "SLO met %";

/// Shown only when some policy predicts latency: median |predicted − simulated| TTFT.
const PREDICTION: &str = "pred err p50 s";

/// Shown only when some policy disaggregated: the share of routed requests it prefilled on a
/// prefill engine.
const PD: &str = "P/D %";

/// Which optional columns a table has.
#[derive(Clone, Copy)]
struct Optional {
    rejected: bool,
    shed: bool,
    slo: bool,
    prediction: bool,
    pd: bool,
}

fn optional(summaries: &[Summary]) -> Optional {
    Optional {
        rejected: summaries.iter().any(|s| s.rejected > 0),
        shed: summaries.iter().any(|s| s.shed > 0),
        slo: summaries.iter().any(|s| s.slo_met.is_some()),
        prediction: summaries.iter().any(|s| s.prediction_error.is_some()),
        pd: summaries.iter().any(|s| s.disaggregated > 0),
    }
}

fn row(s: &Summary, opt: Optional) -> Vec<String> {
    let mut cells = vec![
        s.policy.clone(),
        s.completed.to_string(),
        s.unfit.to_string(),
        format!("{:.3}", s.ttft.p50),
        format!("{:.3}", s.ttft.p90),
        format!("{:.3}", s.ttft.p99),
        format!("{:.1}", s.itl.p50 * 1e3),
        format!("{:.1}", s.tpot.p90 * 1e3),
        format!("{:.2}", s.e2e.p90),
        format!("{:.3}", s.queue.p90),
        format!("{:.0}", s.output_tok_s),
        format!("{:.0}", s.input_tok_s),
        format!("{:.1}", s.hit_rate * 100.0),
        format!("{:.2}", s.imbalance),
        s.preemptions.to_string(),
    ];
    if opt.rejected {
        cells.push(s.rejected.to_string());
    }
    if opt.shed {
        cells.push(s.shed.to_string());
        cells.push(s.shed_slo.to_string());
    }
    if opt.slo {
        cells.push(
            s.slo_met
                .map_or_else(|| "-".to_owned(), |f| format!("{:.1}", f * 100.0)),
        );
    }
    if opt.prediction {
        cells.push(
            s.prediction_error
                .map_or_else(|| "-".to_owned(), |q| format!("{:.3}", q.p50)),
        );
    }
    if opt.pd {
        let routed = s.requests - s.unfit - s.rejected - s.shed;
        cells.push(format!(
            "{:.1}",
            s.disaggregated as f64 * 100.0 / routed.max(1) as f64
        ));
    }
    cells
}

fn headers(opt: Optional) -> Vec<&'static str> {
    columns()
        .into_iter()
        .chain(extra())
        .chain(opt.rejected.then_some(REJECTED))
        .chain(opt.shed.then_some(SHED).into_iter().flatten())
        .chain(opt.slo.then_some(SLO_MET))
        .chain(opt.prediction.then_some(PREDICTION))
        .chain(opt.pd.then_some(PD))
        .collect()
}

/// An aligned text table, one row per policy.
pub fn render(summaries: &[Summary]) -> String {
    let opt = optional(summaries);
    let headers = headers(opt);
    let rows: Vec<Vec<String>> = summaries.iter().map(|s| row(s, opt)).collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(out, "{c:<w$}");
            } else {
                let _ = write!(out, "  {c:>w$}");
            }
        }
        out.push('\n');
    };
    line(headers.clone(), &mut out);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(rule.iter().map(String::as_str).collect(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The same table in Markdown.
pub fn markdown(summaries: &[Summary]) -> String {
    let opt = optional(summaries);
    let headers = headers(opt);
    let mut out = format!("| {} |\n", headers.join(" | "));
    out += &format!(
        "|{}\n",
        headers
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for s in summaries {
        out += &format!("| {} |\n", row(s, opt).join(" | "));
    }
    out
}
