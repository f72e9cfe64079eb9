//! Measuring a server that runs in the benchmark's own process: exact samples of one of its
//! `metrics` histograms, and the CPU time of its threads.

use std::sync::Arc;

use parking_lot::Mutex;

/// Samples of one histogram, kept in full so that percentiles are exact.
#[derive(Debug, Default)]
pub struct Samples(Mutex<Vec<f64>>);

impl Samples {
    /// Drops the samples so far.
    pub fn clear(&self) {
        self.0.lock().clear();
    }

    /// Takes the samples so far.
    pub fn take(&self) -> Vec<f64> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().push(value);
    }
}

/// A `metrics` recorder that keeps one histogram's samples and drops every other metric.
#[derive(Debug)]
pub struct Probe {
    name: &'static str,
    samples: Arc<Samples>,
}

impl Probe {
    /// Records histogram `name` into `samples`.
    pub fn new(name: &'static str, samples: Arc<Samples>) -> Self {
        Self { name, samples }
    }
}

impl metrics::Recorder for Probe {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        if key.name() == self.name {
            metrics::Histogram::from_arc(self.samples.clone())
        } else {
            metrics::Histogram::noop()
        }
    }
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`
/// (from `/proc/self/task/*/stat`, in clock ticks of 1/100 s).
pub fn thread_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        ticks += fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        ticks += fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ticks as f64 / 100.0
}
