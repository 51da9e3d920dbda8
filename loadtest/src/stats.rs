//! Load-test statistics: latency histograms, counts, and the summary.
//!
//! Invariant: latencies are recorded in microseconds in HDR histograms (3
//! significant digits), so percentiles are exact to 0.1 % at any rate.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histograms hold: one hour, in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;

/// A fresh latency histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// Records a latency, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS).clamp(1, MAX_MICROS);
    h.record(micros).expect("clamped into range");
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Percentiles {
    /// Latencies recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Reads the percentiles of `h` (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Everything a run counted.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Requests sent.
    pub sent: u64,
    /// 201 (created) and 200 (idempotent replay) answers.
    pub accepted: u64,
    /// Everything else, by kind (`http_422`, `http_503`, `connect`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// HTTP latency; in open-loop measured from the intended send time.
    pub http: Histogram<u64>,
    /// `created_at → processed_at` of the orders that became final.
    pub end_to_end: Histogram<u64>,
    /// Accepted orders that became `processed` or `failed` before the wait ended.
    pub finished: u64,
    /// Of those, `failed`.
    pub failed: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sent: 0,
            accepted: 0,
            errors: BTreeMap::new(),
            http: histogram(),
            end_to_end: histogram(),
            finished: 0,
            failed: 0,
        }
    }
}

impl Tally {
    /// Counts one error of `kind`.
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    /// Folds another worker's tally into this one.
    pub fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.http.add(&other.http).expect("same bounds");
        self.end_to_end.add(&other.end_to_end).expect("same bounds");
        self.finished += other.finished;
        self.failed += other.failed;
    }
}

/// The run's result, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// How requests were paced, in words (`open-loop, 500 requests/s`).
    pub mode: String,
    /// Seconds spent sending.
    pub duration_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// 201 (created) and 200 (idempotent replay) answers.
    pub accepted: u64,
    /// Everything else, by kind (`http_503`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Requests sent per second.
    pub requests_per_s: f64,
    /// Orders accepted per second.
    pub accepted_per_s: f64,
    /// HTTP latency; in open loop from each request's intended send time.
    pub http_latency: Percentiles,
    /// `created_at → processed_at` of the orders that became final.
    pub end_to_end_latency: Percentiles,
    /// Accepted orders that became `processed` or `failed` before the wait ended.
    pub finished: u64,
    /// Of those, `failed`.
    pub failed: u64,
    /// finished / accepted (1.0 when nothing was accepted).
    pub completion_rate: f64,
    /// Seconds from the first request until every accepted order was final,
    /// when that happened within the wait.
    pub all_final_after_s: Option<f64>,
    /// accepted / all_final_after_s: the rate sustained with every order processed.
    pub sustained_per_s: Option<f64>,
}

impl Summary {
    /// Summarises a tally of a run that sent for `elapsed`; `all_final_after`
    /// is when every accepted order was seen final, if it was.
    pub fn new(mode: &str, tally: &Tally, elapsed: Duration, all_final_after: Option<Duration>) -> Self {
        let secs = elapsed.as_secs_f64().max(f64::EPSILON);
        Self {
            mode: mode.to_string(),
            duration_s: (secs * 1000.0).round() / 1000.0,
            sent: tally.sent,
            accepted: tally.accepted,
            errors: tally.errors.clone(),
            requests_per_s: (tally.sent as f64 / secs).round(),
            accepted_per_s: (tally.accepted as f64 / secs).round(),
            http_latency: Percentiles::of(&tally.http),
            end_to_end_latency: Percentiles::of(&tally.end_to_end),
            finished: tally.finished,
            failed: tally.failed,
            completion_rate: if tally.accepted == 0 { 1.0 } else { tally.finished as f64 / tally.accepted as f64 },
            all_final_after_s: all_final_after.map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0),
            sustained_per_s: all_final_after
                .map(|d| (tally.accepted as f64 / d.as_secs_f64().max(f64::EPSILON)).round()),
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let p = |x: &Percentiles| {
            format!(
                "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
                x.p50_ms, x.p90_ms, x.p99_ms, x.max_ms, x.count
            )
        };
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        format!(
            "mode: {}\nduration: {:.1} s\nrequests: {} sent, {} accepted ({:.0}/s sent, {:.0}/s accepted)\nerrors: {}\nhttp latency: {}\nend-to-end (created_at -> processed_at): {}\ncompletion: {} of {} accepted orders final ({:.2} %), {} failed{}\n",
            self.mode,
            self.duration_s,
            self.sent,
            self.accepted,
            self.requests_per_s,
            self.accepted_per_s,
            errors,
            p(&self.http_latency),
            p(&self.end_to_end_latency),
            self.finished,
            self.accepted,
            self.completion_rate * 100.0,
            self.failed,
            match (self.all_final_after_s, self.sustained_per_s) {
                (Some(t), Some(r)) => format!("; all final after {t:.1} s: {r:.0} orders/s sustained end to end"),
                _ => String::new(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut h = histogram();
        for ms in 1..=100 {
            record(&mut h, Duration::from_millis(ms));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p90_ms - 90.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut h = histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(10_000));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn merged_tallies_add_up_and_rates_use_the_elapsed_time() {
        let mut a = Tally { sent: 10, accepted: 8, finished: 6, failed: 1, ..Tally::default() };
        a.error("http_422");
        let mut b = Tally { sent: 10, accepted: 10, finished: 10, ..Tally::default() };
        b.error("http_422");
        b.error("timeout");
        record(&mut b.http, Duration::from_millis(3));
        a.merge(&b);
        let s = Summary::new("closed-loop", &a, Duration::from_secs(2), Some(Duration::from_secs(3)));
        assert_eq!((s.sent, s.accepted, s.finished, s.failed), (20, 18, 16, 1));
        assert_eq!(s.errors.get("http_422"), Some(&2));
        assert_eq!(s.errors.get("timeout"), Some(&1));
        assert_eq!(s.requests_per_s, 10.0);
        assert_eq!(s.accepted_per_s, 9.0);
        assert!((s.completion_rate - 16.0 / 18.0).abs() < 1e-9);
        assert_eq!(s.http_latency.count, 1);
        assert_eq!(s.sustained_per_s, Some(6.0), "18 accepted, all final after 3 s");
    }

    #[test]
    fn completion_is_full_when_nothing_was_accepted() {
        assert_eq!(Summary::new("open-loop", &Tally::default(), Duration::from_secs(1), None).completion_rate, 1.0);
    }
}
