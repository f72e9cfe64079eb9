//! What a search writes: the winning picker config (for `kvpick-epp --config`), the same as a
//! Kubernetes ConfigMap (the one the manifests mount), a markdown table and an SVG landscape;
//! [`Files::write`] writes them all.

use std::fmt::Write;
use std::path::Path;

use super::{Search, Space, TuneResult};
use crate::error::SimError;
use crate::report::svg::{LinePlot, Series};

/// What [`Files::write`] needs besides the result.
#[derive(Clone, Copy, Debug)]
pub struct Files<'a> {
    /// The picker config's `index.blockSize` (the engines' block size).
    pub block_size: u32,
    /// The ConfigMap's name.
    pub configmap_name: &'a str,
    /// The ConfigMap's namespace, if any.
    pub namespace: Option<&'a str>,
    /// Rows in `summary.md`.
    pub top: usize,
}

impl Files<'_> {
    /// Writes `picker.yaml`, `configmap.yaml`, `tune.json`, `summary.md` and `landscape.svg`
    /// into `dir` (created if missing).
    pub fn write(&self, dir: &Path, r: &TuneResult, search: Search) -> Result<(), SimError> {
        std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
        let best = r
            .best()
            .ok_or_else(|| SimError::InvalidConfig("no point evaluated".into()))?;
        let header = format!(
            "Tuned by kvpick-sim tune: {} = {:.4} mean over {} seeds (current config {:.4}, {:+.1}%).\n\
             Use: kvpick-epp --config picker.yaml, or kubectl apply -f configmap.yaml",
            r.objective.label(),
            best.mean,
            r.seeds.len(),
            r.baseline.mean,
            r.gain() * 100.0
        );
        let picker = picker_yaml(&r.space, &best.weights, self.block_size, &header);
        // What is written is what was evaluated: the same text parses to the same config.
        kvpick_scheduler::EndpointPickerConfig::parse(&picker)?;
        let write = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|e| SimError::io(&path, e))
        };
        let json = serde_json::to_string_pretty(r)
            .map_err(|e| SimError::InvalidConfig(format!("tune.json: {e}")))?;
        write("picker.yaml", &picker)?;
        write(
            "configmap.yaml",
            &configmap_yaml(&picker, self.configmap_name, self.namespace),
        )?;
        write("tune.json", &json)?;
        write("summary.md", &markdown(r, self.top))?;
        write("landscape.svg", &landscape(r, search))
    }
}

/// A picker config YAML for `weights` over `space`, keyed at `block_size`; scorers at weight 0
/// are left out. `header` is prepended as comment lines.
pub fn picker_yaml(space: &Space, weights: &[f64], block_size: u32, header: &str) -> String {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    let used: Vec<(&str, f64)> = (space.params.iter())
        .zip(weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(p, w)| (p.scorer.as_str(), *w))
        .collect();
    let _ = writeln!(
        out,
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n\
         index:\n  blockSize: {block_size}\nplugins:"
    );
    for (s, _) in &used {
        let _ = writeln!(out, "- type: {s}");
    }
    let _ = writeln!(
        out,
        "- type: {}\nschedulingProfiles:\n- name: default\n  plugins:",
        space.picker
    );
    for (s, w) in &used {
        let _ = writeln!(out, "  - pluginRef: {s}\n    weight: {w}");
    }
    let _ = writeln!(out, "  - pluginRef: {}", space.picker);
    out
}

/// `picker` as the ConfigMap kvpick-epp's Deployment mounts (`kvpick-epp-config`, key
/// `config.yaml`, see `manifests/base`).
pub fn configmap_yaml(picker: &str, name: &str, namespace: Option<&str>) -> String {
    let mut out = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n");
    if let Some(ns) = namespace {
        let _ = writeln!(out, "  namespace: {ns}");
    }
    out.push_str("  labels:\n    app.kubernetes.io/name: kvpick-epp\ndata:\n  config.yaml: |\n");
    for line in picker.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// The best points as a markdown table, with the current config first.
pub fn markdown(r: &TuneResult, top: usize) -> String {
    let mut out = String::from("| config |");
    for p in &r.space.params {
        let _ = write!(out, " {} |", p.scorer);
    }
    let _ = writeln!(
        out,
        " {} mean ± sd (min–max) over {} seeds | gain vs current | wins |",
        r.objective.label(),
        r.seeds.len()
    );
    out.push_str("|---|");
    for _ in &r.space.params {
        out.push_str("---:|");
    }
    out.push_str("---:|---:|---:|\n");
    let stats = |p: &super::PointResult| {
        let (lo, hi) = p
            .scores
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), s| {
                (a.min(*s), b.max(*s))
            });
        format!("{:.4} ± {:.4} ({:.4}–{:.4})", p.mean, p.std, lo, hi)
    };
    let _ = write!(out, "| current |");
    for _ in &r.space.params {
        out.push_str(" |");
    }
    let _ = writeln!(out, " {} | | |", stats(&r.baseline));
    for (i, p) in r.points.iter().take(top).enumerate() {
        let _ = write!(out, "| #{} |", i + 1);
        for w in &p.weights {
            let _ = write!(out, " {w} |");
        }
        let _ = writeln!(
            out,
            " {} | {:+.1}% | {}/{} |",
            stats(p),
            r.objective.gain(p.mean, r.baseline.mean) * 100.0,
            p.wins,
            r.seeds.len()
        );
    }
    out
}

/// The landscape: for each weight, the best mean objective among points at that value (grid) or
/// in that eighth of the range (random), against the value; the current config as a flat line.
pub fn landscape(r: &TuneResult, search: Search) -> String {
    let o = r.objective;
    let mut series = Vec::new();
    let mut xmax: f64 = 0.0;
    for (d, p) in r.space.params.iter().enumerate() {
        let bins = match search {
            Search::Grid { levels } => levels.max(2),
            Search::Random { .. } => 8,
        };
        let mut best: Vec<Option<f64>> = vec![None; bins];
        for pt in &r.points {
            let f = if p.hi > p.lo {
                (pt.weights[d] - p.lo) / (p.hi - p.lo)
            } else {
                0.0
            };
            let b = ((f * (bins - 1) as f64).round() as usize).min(bins - 1);
            if best[b].is_none_or(|v| o.better(pt.mean, v)) {
                best[b] = Some(pt.mean);
            }
        }
        let points: Vec<(f64, f64)> = (best.iter().enumerate())
            .filter_map(|(b, v)| Some((p.lo + (p.hi - p.lo) * b as f64 / (bins - 1) as f64, (*v)?)))
            .collect();
        xmax = xmax.max(p.hi);
        series.push(Series {
            name: p.scorer.clone(),
            points,
        });
    }
    series.push(Series {
        name: "current config".into(),
        points: vec![(0.0, r.baseline.mean), (xmax, r.baseline.mean)],
    });
    LinePlot {
        title: format!(
            "Tuning landscape: best {} per weight value ({} points × {} seeds)",
            o.label(),
            r.points.len(),
            r.seeds.len()
        ),
        x_label: "scorer weight".into(),
        y_label: o.label(),
        series,
        log_x: false,
        y_range: None,
        steps: false,
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvpick_scheduler::EndpointPickerConfig;

    #[test]
    fn written_yaml_parses_as_written() {
        let space = Space::parse(super::super::DEFAULT_SPACE, "weighted-random-picker").unwrap();
        let y = picker_yaml(&space, &[2.5, 0.0, 1.0], 32, "tuned by kvpick-sim\nseed 1");
        let c = EndpointPickerConfig::parse(&y).unwrap();
        assert_eq!(c.index.block_size.get(), 32);
        let w: Vec<(&str, f64)> = c
            .profile
            .scorers
            .iter()
            .map(|s| (s.name.as_str(), s.weight))
            .collect();
        assert_eq!(
            w,
            [("precise-prefix-cache-scorer", 2.5), ("queue-scorer", 1.0)]
        );
        assert_eq!(c.profile.picker.name, "weighted-random-picker");
        let cm = configmap_yaml(&y, "kvpick-epp-config", Some("llm"));
        let v: serde_json::Value = serde_saphyr::from_str(&cm).unwrap();
        assert_eq!(v["metadata"]["namespace"], "llm");
        let inner = v["data"]["config.yaml"].as_str().unwrap();
        assert_eq!(inner, y);
    }
}
