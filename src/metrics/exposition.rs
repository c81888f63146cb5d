//! The Prometheus text exposition format, version 0.0.4: `# HELP` and
//! `# TYPE` lines per family, then one `name{label="value"} number` line
//! per sample.

use std::fmt::Write;

/// The `Content-Type` of a scrape reply in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric family is, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when berthd restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into cumulative buckets, with sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: integers are written exactly, floats the way
/// Prometheus parses them (`+Inf`, `-Inf`, `NaN`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count or a size.
    Int(u64),
    /// Seconds, ratios.
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            // Rust's shortest round-trip form: `0.0005`, `2.5`, `1`.
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Cumulative bucket counts of a histogram at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds (`le`) and the observations at or below each, in
    /// increasing order, without the `+Inf` bucket.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation (the `+Inf` bucket and `_count`).
    pub count: u64,
    /// Sum of the observations.
    pub sum: f64,
}

/// A scrape reply being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts family `name`: its `# HELP` and `# TYPE` lines. Its samples
    /// must follow before the next family starts.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.as_str()
        );
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// The lines of one histogram: a `_bucket` per bound and `+Inf`,
    /// then `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (le, count) in &h.buckets {
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&Value::Float(*le).to_string()));
            let _ = writeln!(self.out, " {count}");
        }
        let _ = write!(self.out, "{name}_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count);
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", Value::Float(h.sum));
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count);
    }

    /// The reply's text.
    pub fn finish(self) -> String {
        self.out
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (key, value)) in all.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{key}=\"{}\"", escape_label(value));
        }
        self.out.push('}');
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

/// A help text with `\` and newlines escaped (quotes stay as they are).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples() {
        let mut e = Exposition::new();
        e.family("berth_images", "Images on the node.", Kind::Gauge);
        e.sample("berth_images", &[], Value::Int(3));
        e.family("berth_pods", "Pods by state.", Kind::Gauge);
        e.sample("berth_pods", &[("state", "ready")], Value::Int(2));
        e.sample("berth_pods", &[("state", "notready")], Value::Int(0));
        assert_eq!(
            e.finish(),
            "# HELP berth_images Images on the node.\n\
             # TYPE berth_images gauge\n\
             berth_images 3\n\
             # HELP berth_pods Pods by state.\n\
             # TYPE berth_pods gauge\n\
             berth_pods{state=\"ready\"} 2\n\
             berth_pods{state=\"notready\"} 0\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.family("m", "a \\ b\nc \"q\"", Kind::Counter);
        e.sample("m", &[("a", "x\"y\\z\nw"), ("b", "plain")], Value::Int(1));
        assert_eq!(
            e.finish(),
            "# HELP m a \\\\ b\\nc \"q\"\n# TYPE m counter\nm{a=\"x\\\"y\\\\z\\nw\",b=\"plain\"} 1\n"
        );
    }

    #[test]
    fn float_values_are_written_as_prometheus_parses_them() {
        let text = |v| Value::Float(v).to_string();
        assert_eq!(text(0.0005), "0.0005");
        assert_eq!(text(1.0), "1");
        assert_eq!(text(2.5), "2.5");
        assert_eq!(text(f64::INFINITY), "+Inf");
        assert_eq!(text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(text(f64::NAN), "NaN");
        assert_eq!(Value::Int(u64::MAX).to_string(), "18446744073709551615");
    }

    #[test]
    fn histogram_lines() {
        let mut e = Exposition::new();
        e.family("d_seconds", "Latency.", Kind::Histogram);
        e.histogram(
            "d_seconds",
            &[("method", "Version")],
            &HistogramSnapshot {
                buckets: vec![(0.001, 1), (0.5, 3)],
                count: 4,
                sum: 2.25,
            },
        );
        assert_eq!(
            e.finish(),
            "# HELP d_seconds Latency.\n\
             # TYPE d_seconds histogram\n\
             d_seconds_bucket{method=\"Version\",le=\"0.001\"} 1\n\
             d_seconds_bucket{method=\"Version\",le=\"0.5\"} 3\n\
             d_seconds_bucket{method=\"Version\",le=\"+Inf\"} 4\n\
             d_seconds_sum{method=\"Version\"} 2.25\n\
             d_seconds_count{method=\"Version\"} 4\n"
        );
    }

    #[test]
    fn a_histogram_without_labels_has_only_le() {
        let mut e = Exposition::new();
        e.histogram(
            "h",
            &[],
            &HistogramSnapshot {
                buckets: vec![(1.0, 0)],
                count: 0,
                sum: 0.0,
            },
        );
        assert_eq!(
            e.finish(),
            "h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"
        );
    }
}
