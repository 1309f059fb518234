//! Counters and histograms in the Prometheus text exposition format (version 0.0.4).
//!
//! No registry and no dependency: each component owns its metrics as plain atomics (lock-free
//! on the request path) and renders them into a [`Text`] when `/metrics` is asked for. Names
//! and label values are fixed by the code, so nothing a client sends can create a series.

#![warn(missing_docs)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds for latencies, in seconds: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A distribution of durations over fixed buckets (cumulative only when rendered).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the overflow bucket (`+Inf`).
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram with these bucket bounds, in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one duration into its bucket.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Labels of one series: `(name, value)` pairs, names fixed by the code.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A `/metrics` page being written.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    /// An empty page.
    pub fn new() -> Self {
        Text(String::new())
    }

    /// `# HELP` and `# TYPE` of a family; write once before its series.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// Writes one sample line.
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.0.push_str(name);
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// Writes a counter's value as one sample.
    pub fn counter(&mut self, name: &str, labels: Labels<'_>, c: &Counter) {
        self.sample(name, labels, c.get() as f64);
    }

    /// Writes a histogram: its cumulative buckets, sum and count.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &Histogram) {
        let mut cumulative = 0u64;
        for (i, bucket) in h.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match h.bounds.get(i) {
                Some(b) => number(*b),
                None => "+Inf".to_owned(),
            };
            let _ = write!(self.0, "{name}_bucket");
            write_labels(&mut self.0, labels, Some(&le));
            let _ = writeln!(self.0, " {cumulative}");
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = write!(self.0, "{name}_sum");
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", number(sum));
        let _ = write!(self.0, "{name}_count");
        write_labels(&mut self.0, labels, None);
        // The count of the buckets, so the page is consistent even while requests land.
        let _ = writeln!(self.0, " {cumulative}");
    }

    /// The page.
    pub fn finish(self) -> String {
        self.0
    }
}

/// The content type of the page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn write_labels(out: &mut String, labels: Labels<'_>, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push('}');
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let c = Counter::new();
        c.add(3);
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let mut t = Text::new();
        t.family("x_total", "counter", "Things.");
        t.counter("x_total", &[("outcome", "exe\"cuted")], &c);
        t.family("lat_seconds", "histogram", "Latency.");
        t.histogram("lat_seconds", &[("op", "claim")], &h);
        let page = t.finish();
        assert!(page.contains("# TYPE x_total counter\n"));
        assert!(
            page.contains("x_total{outcome=\"exe\\\"cuted\"} 3\n"),
            "{page}"
        );
        assert!(
            page.contains("lat_seconds_bucket{op=\"claim\",le=\"0.01\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("lat_seconds_bucket{op=\"claim\",le=\"0.1\"} 3\n"),
            "{page}"
        );
        assert!(
            page.contains("lat_seconds_bucket{op=\"claim\",le=\"+Inf\"} 4\n"),
            "{page}"
        );
        assert!(
            page.contains("lat_seconds_count{op=\"claim\"} 4\n"),
            "{page}"
        );
        assert!(
            page.contains("lat_seconds_sum{op=\"claim\"} 3.105\n"),
            "{page}"
        );
    }

    #[test]
    fn a_boundary_value_lands_in_its_bucket() {
        let h = Histogram::new(&[0.001]);
        h.observe(Duration::from_millis(1));
        let mut t = Text::new();
        t.histogram("h", &[], &h);
        assert!(t.finish().contains("h_bucket{le=\"0.001\"} 1\n"));
    }
}
