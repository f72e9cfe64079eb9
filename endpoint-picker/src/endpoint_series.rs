//! Per-endpoint metric series that go away with their endpoint.
//!
//! The Prometheus exporter can drop a series only when it has been idle for a while, which would
//! also drop live endpoints' quiet counters. So [`EndpointSeries`] sits in front of it as the
//! global recorder: every series with an `endpoint` label (a metric that has one must have it on
//! every series) is kept here, everything else goes on to the exporter. At each render, series
//! of endpoints no longer in the pool are deleted, so endpoint churn cannot grow the registry or
//! the page, and the page shows only live endpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;

/// The label that makes a series per-endpoint.
pub const ENDPOINT_LABEL: &str = "endpoint";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Default)]
struct Store {
    series: HashMap<Key, (Kind, Arc<AtomicU64>)>,
    help: HashMap<String, String>,
}

/// The per-endpoint series' registry; cheap to clone, shared by the recorder and the renderer.
#[derive(Clone, Debug, Default)]
pub struct Series {
    store: Arc<Mutex<Store>>,
}

impl Series {
    fn register(&self, key: &Key, kind: Kind) -> Arc<AtomicU64> {
        let mut store = self.store.lock();
        let entry = store
            .series
            .entry(key.clone())
            .or_insert_with(|| (kind, Arc::new(AtomicU64::new(0))));
        Arc::clone(&entry.1)
    }

    /// Deletes the series of endpoints not in `live`, then renders the rest in Prometheus text
    /// format. Handles still held for a deleted series write to nothing.
    pub fn render(&self, live: &HashSet<String>) -> String {
        let mut store = self.store.lock();
        store
            .series
            .retain(|key, _| endpoint(key).is_none_or(|e| live.contains(e)));
        render(&store)
    }

    /// Renders every series held.
    pub fn render_all(&self) -> String {
        render(&self.store.lock())
    }

    /// Series held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.store.lock().series.len()
    }

    /// Whether none is held.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn render(store: &Store) -> String {
    let mut families: BTreeMap<&str, Vec<(&Key, Kind, f64)>> = BTreeMap::new();
    for (key, (kind, cell)) in &store.series {
        let raw = cell.load(Ordering::Relaxed);
        let value = match kind {
            Kind::Counter => raw as f64,
            Kind::Gauge => f64::from_bits(raw),
        };
        families
            .entry(key.name())
            .or_default()
            .push((key, *kind, value));
    }
    let mut out = String::new();
    for (name, mut series) in families {
        series.sort_by_key(|s| labels(s.0));
        if let Some(help) = store.help.get(name) {
            let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
        }
        let kind = if series.first().is_some_and(|s| s.1 == Kind::Counter) {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (key, _, value) in series {
            let _ = writeln!(out, "{name}{{{}}} {value}", labels(key));
        }
        out.push('\n');
    }
    out
}

fn endpoint(key: &Key) -> Option<&str> {
    key.labels()
        .find(|l| l.key() == ENDPOINT_LABEL)
        .map(|l| l.value())
}

fn labels(key: &Key) -> String {
    key.labels()
        .map(|l| format!("{}=\"{}\"", l.key(), escape(l.value(), true)))
        .collect::<Vec<_>>()
        .join(",")
}

fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// The global recorder: per-endpoint series into [`Series`], the rest into `inner`.
#[derive(Debug)]
pub struct EndpointSeries<R> {
    inner: R,
    series: Series,
}

impl<R> EndpointSeries<R> {
    /// Wraps `inner`; `series` is where per-endpoint series are kept and rendered from.
    pub fn new(inner: R, series: Series) -> Self {
        Self { inner, series }
    }

    fn describe(&self, key: &KeyName, description: &SharedString) {
        self.series
            .store
            .lock()
            .help
            .insert(key.as_str().to_owned(), description.to_string());
    }
}

impl<R: Recorder> Recorder for EndpointSeries<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, &description);
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match endpoint(key) {
            Some(_) => Counter::from_arc(self.series.register(key, Kind::Counter)),
            None => self.inner.register_counter(key, metadata),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match endpoint(key) {
            Some(_) => Gauge::from_arc(self.series.register(key, Kind::Gauge)),
            None => self.inner.register_gauge(key, metadata),
        }
    }

    /// No per-endpoint histograms exist; they would go to the exporter unfiltered.
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Label, NoopRecorder};

    fn key(name: &'static str, endpoint: &str) -> Key {
        Key::from_parts(
            name,
            vec![
                Label::new(ENDPOINT_LABEL, endpoint.to_owned()),
                Label::new("op", "stored"),
            ],
        )
    }

    #[test]
    fn series_of_departed_endpoints_are_deleted_at_render() {
        let series = Series::default();
        let r = EndpointSeries::new(NoopRecorder, series.clone());
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        r.describe_counter("picks".into(), None, "Picks \"per\" endpoint".into());
        r.register_counter(&key("picks", "10.0.0.1:8000"), &meta)
            .increment(3);
        r.register_counter(&key("picks", "10.0.0.2:8000"), &meta)
            .increment(1);
        r.register_gauge(&key("depth", "10.0.0.2:8000"), &meta)
            .set(2.5);
        // Not per-endpoint: not held here.
        r.register_counter(&Key::from_name("requests"), &meta)
            .increment(1);
        assert_eq!(series.len(), 3);
        let live = HashSet::from(["10.0.0.2:8000".to_owned()]);
        let page = series.render(&live);
        assert_eq!(series.len(), 2, "{page}");
        assert!(!page.contains("10.0.0.1"), "{page}");
        assert!(
            page.contains("# HELP picks Picks \"per\" endpoint\n# TYPE picks counter\n"),
            "{page}"
        );
        assert!(page.contains("picks{endpoint=\"10.0.0.2:8000\",op=\"stored\"} 1\n"));
        assert!(
            page.contains(
                "# TYPE depth gauge\ndepth{endpoint=\"10.0.0.2:8000\",op=\"stored\"} 2.5\n"
            )
        );
        // A departed endpoint that comes back starts afresh.
        r.register_counter(&key("picks", "10.0.0.1:8000"), &meta)
            .increment(1);
        assert!(series.render(&HashSet::new()).is_empty());
        assert!(series.is_empty());
    }
}
