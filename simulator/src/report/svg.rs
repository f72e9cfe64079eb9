//! A tiny SVG plotter: line charts (linear or log x) and grouped bar charts, enough for TTFT CDFs,
//! timelines and per-engine load. Self-contained SVG 1.1, no fonts or scripts beyond `sans-serif`.

use std::fmt::Write;

const W: f64 = 820.0;
const H: f64 = 460.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One named line.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
#[derive(Clone, Debug, Default)]
pub struct LinePlot {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Logarithmic x axis (non-positive x values are dropped).
    pub log_x: bool,
    /// Fix the y range (else from the data, starting at 0).
    pub y_range: Option<(f64, f64)>,
    /// Draw steps (a CDF) instead of straight segments.
    pub steps: bool,
}

/// "Nice" tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{:.2}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').into()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>
"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        esc(title),
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 14.0,
        esc(x_label),
        TOP + (H - TOP - BOTTOM) / 2.0,
        esc(y_label),
    );
}

fn legend(out: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 20.0;
        let x = W - RIGHT + 16.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 2.0,
            PALETTE[i % PALETTE.len()],
            x + 20.0,
            y + 4.0,
            esc(name)
        );
    }
}

fn y_axis(out: &mut String, y0: f64, y1: f64, py: &dyn Fn(f64) -> f64) {
    for t in ticks(y0, y1, 6) {
        let y = py(t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(t)
        );
    }
}

impl LinePlot {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let keep =
            |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!self.log_x || x > 0.0);
        let pts = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().copied().filter(keep))
        };
        let tx = |x: f64| if self.log_x { x.log10() } else { x };
        let (mut x0, mut x1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| {
            (a.min(tx(x)), b.max(tx(x)))
        });
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if self.log_x {
            (x0, x1) = (x0.floor(), x1.ceil());
        }
        let (y0, y1) = self.y_range.unwrap_or_else(|| {
            let m = pts().map(|(_, y)| y).fold(0.0f64, f64::max);
            (0.0, if m > 0.0 { m * 1.05 } else { 1.0 })
        });
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let px = |x: f64| LEFT + (tx(x) - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP + ph - (y - y0) / (y1 - y0).max(1e-12) * ph;
        let mut out = String::new();
        frame(&mut out, &self.title, &self.x_label, &self.y_label);
        y_axis(&mut out, y0, y1, &py);
        let xt: Vec<f64> = if self.log_x {
            (x0 as i32..=x1 as i32).map(|e| 10f64.powi(e)).collect()
        } else {
            ticks(x0, x1, 8)
        };
        for t in xt {
            let x = px(t);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#e5e5e5"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                fmt_num(t)
            );
        }
        let _ = writeln!(
            out,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        for (i, s) in self.series.iter().enumerate() {
            let mut d = String::new();
            let mut prev: Option<f64> = None;
            for (x, y) in s.points.iter().copied().filter(keep) {
                let (sx, sy) = (px(x), py(y.clamp(y0, y1)));
                match (prev, self.steps) {
                    (None, _) => {
                        let _ = write!(d, "M{sx:.1},{sy:.1}");
                    }
                    (Some(_), true) => {
                        let _ = write!(d, "H{sx:.1}V{sy:.1}");
                    }
                    (Some(_), false) => {
                        let _ = write!(d, "L{sx:.1},{sy:.1}");
                    }
                }
                prev = Some(sy);
            }
            let _ = writeln!(
                out,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.8"/>"#,
                PALETTE[i % PALETTE.len()]
            );
        }
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        legend(&mut out, &names);
        out.push_str("</svg>\n");
        out
    }
}

/// A grouped bar chart: one group per category, one bar per series.
#[derive(Clone, Debug, Default)]
pub struct BarChart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Category labels.
    pub categories: Vec<String>,
    /// (name, one value per category).
    pub series: Vec<(String, Vec<f64>)>,
}

impl BarChart {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let max = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let y1 = if max > 0.0 { max * 1.05 } else { 1.0 };
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let py = |y: f64| TOP + ph - y / y1 * ph;
        let mut out = String::new();
        frame(&mut out, &self.title, &self.x_label, &self.y_label);
        y_axis(&mut out, 0.0, y1, &py);
        let groups = self.categories.len().max(1) as f64;
        let gw = pw / groups;
        let bw = gw * 0.8 / self.series.len().max(1) as f64;
        for (g, label) in self.categories.iter().enumerate() {
            let gx = LEFT + g as f64 * gw;
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                gx + gw / 2.0,
                TOP + ph + 16.0,
                esc(label)
            );
            for (i, (_, values)) in self.series.iter().enumerate() {
                let v = values.get(g).copied().unwrap_or(0.0).max(0.0);
                let _ = writeln!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                    gx + gw * 0.1 + i as f64 * bw,
                    py(v),
                    bw.max(0.5),
                    (TOP + ph - py(v)).max(0.0),
                    PALETTE[i % PALETTE.len()]
                );
            }
        }
        let _ = writeln!(
            out,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let names: Vec<&str> = self.series.iter().map(|(n, _)| n.as_str()).collect();
        legend(&mut out, &names);
        out.push_str("</svg>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 0.93, 6);
        assert!(t.first() == Some(&0.0) && *t.last().unwrap() <= 0.93 + 1e-9);
    }

    #[test]
    fn renders_well_formed_svg() {
        let p = LinePlot {
            title: "a < b".into(),
            series: vec![Series {
                name: "x".into(),
                points: vec![(0.01, 0.1), (1.0, 0.5), (30.0, 1.0)],
            }],
            log_x: true,
            steps: true,
            ..Default::default()
        };
        let s = p.render();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n") && s.contains("a &lt; b"));
        assert!(s.contains("<path d=\"M"));
        let b = BarChart {
            categories: vec!["0".into(), "1".into()],
            series: vec![("p".into(), vec![1.0, 2.0])],
            ..Default::default()
        }
        .render();
        // background, two bars, the frame, one legend swatch
        assert_eq!(b.matches("<rect").count(), 5);
    }
}
