//! The arithmetic of the ops page's live charts: a bounded ring of points,
//! rates from counter increases, quantiles from histogram bucket increases.
//!
//! Invariant: the ring never holds more than its capacity, oldest first; a
//! figure that cannot be known (a service unreachable, no order processed in
//! the interval, the first sample) is `None`, drawn as a gap, never as a zero.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;

/// One point of every chart.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Point {
    /// When it was sampled, in Unix seconds (the charts' x axis).
    pub at: f64,
    pub placed_per_second: Option<f64>,
    pub processed_per_second: Option<f64>,
    pub backlog: Option<f64>,
    pub oldest_age_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// The last `capacity` points, oldest first.
#[derive(Debug)]
pub(crate) struct Ring {
    points: VecDeque<Point>,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { points: VecDeque::with_capacity(capacity), capacity }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `point`, dropping the oldest once full.
    pub fn push(&mut self, point: Point) {
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    /// The points as columns, the shape the page's charting library draws.
    pub fn columns(&self) -> Columns {
        let column = |f: fn(&Point) -> Option<f64>| self.points.iter().map(f).collect();
        Columns {
            t: self.points.iter().map(|p| p.at).collect(),
            placed_per_second: column(|p| p.placed_per_second),
            processed_per_second: column(|p| p.processed_per_second),
            backlog: column(|p| p.backlog),
            oldest_age_seconds: column(|p| p.oldest_age_seconds),
            p50_seconds: column(|p| p.p50_seconds),
            p99_seconds: column(|p| p.p99_seconds),
        }
    }
}

/// Every series of the ring, one array each, aligned on `t` (`null` is a gap).
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Columns {
    pub t: Vec<f64>,
    pub placed_per_second: Vec<Option<f64>>,
    pub processed_per_second: Vec<Option<f64>>,
    pub backlog: Vec<Option<f64>>,
    pub oldest_age_seconds: Vec<Option<f64>>,
    pub p50_seconds: Vec<Option<f64>>,
    pub p99_seconds: Vec<Option<f64>>,
}

/// One histogram bucket: how many observations were at most `le` (cumulative).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    pub le: f64,
    pub count: f64,
}

/// What the charts read from one consumer's `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConsumerReading {
    /// `orderflow_consumer_messages_total{outcome="processed"}`.
    pub processed: f64,
    /// `orderflow_consumer_end_to_end_seconds`, by upper bound, the last `+Inf`.
    pub end_to_end: Vec<Bucket>,
}

/// Everything read at one sample.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub taken: Instant,
    pub at: f64,
    /// This producer's `orderflow_producer_orders_placed_total`.
    pub placed: f64,
    /// Outbox rows waiting, and the age of the oldest in seconds; `None` when the database did not answer.
    pub backlog: Option<(f64, f64)>,
    /// The consumers that answered, by admin URL.
    pub consumers: HashMap<String, ConsumerReading>,
}

/// The point between two samples: rates and latency quantiles over the
/// interval, from the sources read both times; the backlog as it is now.
pub(crate) fn point_between(before: Option<&Snapshot>, now: &Snapshot) -> Point {
    let mut point = Point {
        at: now.at,
        backlog: now.backlog.map(|(rows, _)| rows),
        oldest_age_seconds: now.backlog.map(|(_, age)| age),
        ..Point::default()
    };
    let Some(before) = before else { return point };
    let seconds = now.taken.saturating_duration_since(before.taken).as_secs_f64();
    if seconds <= 0.0 {
        return point;
    }
    point.placed_per_second = Some(counter_increase(before.placed, now.placed) / seconds);
    let (mut processed, mut latency, mut seen) = (0.0, Vec::new(), false);
    for (url, reading) in &now.consumers {
        let Some(earlier) = before.consumers.get(url) else { continue };
        seen = true;
        processed += counter_increase(earlier.processed, reading.processed);
        add_buckets(&mut latency, &bucket_increase(&earlier.end_to_end, &reading.end_to_end));
    }
    if seen {
        point.processed_per_second = Some(processed / seconds);
        point.p50_seconds = quantile(0.5, &latency);
        point.p99_seconds = quantile(0.99, &latency);
    }
    point
}

/// How much a counter grew from `before` to `now`. A counter that went down
/// was reset (its service restarted) and counts from zero again, so it grew
/// by `now`, as Prometheus' `rate` reads it.
pub(crate) fn counter_increase(before: f64, now: f64) -> f64 {
    match now < before {
        true => now,
        false => now - before,
    }
}

/// The observations made between two readings of one histogram: bucket by
/// bucket, or all of `now` when a bucket went down (a reset) or the bounds changed.
pub(crate) fn bucket_increase(before: &[Bucket], now: &[Bucket]) -> Vec<Bucket> {
    let same_bounds = before.len() == now.len() && before.iter().zip(now).all(|(b, n)| b.le == n.le);
    if !same_bounds || before.iter().zip(now).any(|(b, n)| n.count < b.count) {
        return now.to_vec();
    }
    before.iter().zip(now).map(|(b, n)| Bucket { le: n.le, count: n.count - b.count }).collect()
}

/// Adds `more` to `sum` bucket by bucket; a histogram with other bounds
/// (a consumer of another version) is left out rather than mixed in wrongly.
fn add_buckets(sum: &mut Vec<Bucket>, more: &[Bucket]) {
    if sum.is_empty() {
        sum.extend_from_slice(more);
    } else if sum.len() == more.len() && sum.iter().zip(more).all(|(s, m)| s.le == m.le) {
        sum.iter_mut().zip(more).for_each(|(s, m)| s.count += m.count);
    }
}

/// The `q` quantile of the observations in cumulative `buckets` (the last
/// bound `+Inf`), interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does: a rank in the `+Inf` bucket answers the highest
/// finite bound. `None` with no observations.
pub(crate) fn quantile(q: f64, buckets: &[Bucket]) -> Option<f64> {
    let last = buckets.last()?;
    if last.le != f64::INFINITY || last.count <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * last.count;
    let i = buckets.iter().position(|b| b.count >= rank)?;
    if i == buckets.len() - 1 {
        return buckets.len().checked_sub(2).map(|j| buckets[j].le);
    }
    let (start, below) = match i {
        0 if buckets[0].le <= 0.0 => return Some(buckets[0].le),
        0 => (0.0, 0.0),
        _ => (buckets[i - 1].le, buckets[i - 1].count),
    };
    let inside = buckets[i].count - below;
    match inside > 0.0 {
        true => Some(start + (buckets[i].le - start) * (rank - below) / inside),
        false => Some(start),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn buckets(counts: &[(f64, f64)]) -> Vec<Bucket> {
        counts.iter().map(|&(le, count)| Bucket { le, count }).collect()
    }

    fn consumer(processed: f64, end_to_end: &[(f64, f64)]) -> ConsumerReading {
        ConsumerReading { processed, end_to_end: buckets(end_to_end) }
    }

    fn snapshot(taken: Instant, placed: f64, consumers: &[(&str, ConsumerReading)]) -> Snapshot {
        Snapshot {
            taken,
            at: 1_700_000_000.0,
            placed,
            backlog: Some((3.0, 1.5)),
            consumers: consumers.iter().map(|(url, r)| (url.to_string(), r.clone())).collect(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_points_oldest_first_and_never_grows_past_its_capacity() {
        let mut ring = Ring::new(3);
        for at in 0..5 {
            ring.push(Point { at: f64::from(at), backlog: Some(f64::from(at)), ..Point::default() });
        }
        let columns = ring.columns();
        assert_eq!(columns.t, [2.0, 3.0, 4.0]);
        assert_eq!(columns.backlog, [Some(2.0), Some(3.0), Some(4.0)]);
        assert_eq!(columns.p99_seconds, [None, None, None]);
        assert_eq!(Ring::new(0).capacity, 1, "a ring always holds the latest point");
    }

    #[test]
    fn a_counter_that_goes_down_was_reset_and_counts_from_zero() {
        assert_eq!(counter_increase(10.0, 25.0), 15.0);
        assert_eq!(counter_increase(25.0, 25.0), 0.0);
        assert_eq!(counter_increase(1000.0, 4.0), 4.0);
    }

    #[test]
    fn histogram_increases_are_per_bucket_and_a_reset_starts_again() {
        let before = buckets(&[(0.1, 2.0), (1.0, 5.0), (f64::INFINITY, 6.0)]);
        let now = buckets(&[(0.1, 4.0), (1.0, 9.0), (f64::INFINITY, 10.0)]);
        assert_eq!(bucket_increase(&before, &now), buckets(&[(0.1, 2.0), (1.0, 4.0), (f64::INFINITY, 4.0)]));
        let restarted = buckets(&[(0.1, 1.0), (1.0, 1.0), (f64::INFINITY, 1.0)]);
        assert_eq!(bucket_increase(&before, &restarted), restarted);
        let other_bounds = buckets(&[(0.5, 1.0), (f64::INFINITY, 1.0)]);
        assert_eq!(bucket_increase(&before, &other_bounds), other_bounds);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket_like_histogram_quantile() {
        // 10 observations: 4 up to 0.1 s, 4 more up to 0.5 s, 2 more up to 1 s.
        let h = buckets(&[(0.1, 4.0), (0.5, 8.0), (1.0, 10.0), (f64::INFINITY, 10.0)]);
        let near = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(near(quantile(0.5, &h), 0.1 + 0.4 * (1.0 / 4.0)), "{:?}", quantile(0.5, &h));
        assert!(near(quantile(0.2, &h), 0.05), "the first bucket starts at zero");
        assert!(near(quantile(0.99, &h), 0.5 + 0.5 * (1.9 / 2.0)));
        // A rank beyond the last finite bound answers that bound, as Prometheus does.
        let slow = buckets(&[(0.1, 1.0), (1.0, 1.0), (f64::INFINITY, 5.0)]);
        assert_eq!(quantile(0.99, &slow), Some(1.0));
        assert_eq!(quantile(0.5, &buckets(&[(0.1, 0.0), (f64::INFINITY, 0.0)])), None, "no observations: a gap");
        assert_eq!(quantile(0.5, &[]), None);
        assert_eq!(quantile(0.5, &buckets(&[(0.1, 3.0)])), None, "no +Inf bucket: not a histogram");
    }

    #[test]
    fn a_point_has_rates_over_the_interval_from_the_consumers_read_both_times() {
        let t0 = Instant::now();
        let h0 = [(0.01, 0.0), (0.1, 0.0), (f64::INFINITY, 0.0)];
        let before = snapshot(t0, 100.0, &[("a", consumer(50.0, &h0)), ("b", consumer(7.0, &h0))]);
        let now = snapshot(
            t0 + Duration::from_secs(5),
            150.0,
            &[
                ("a", consumer(90.0, &[(0.01, 20.0), (0.1, 40.0), (f64::INFINITY, 40.0)])),
                // Restarted since: its 5 count from zero.
                ("b", consumer(5.0, &[(0.01, 5.0), (0.1, 5.0), (f64::INFINITY, 5.0)])),
                // New: nothing to compare with yet.
                ("c", consumer(1000.0, &[(0.01, 0.0), (0.1, 0.0), (f64::INFINITY, 1000.0)])),
            ],
        );
        let point = point_between(Some(&before), &now);
        assert_eq!(point.placed_per_second, Some(10.0));
        assert_eq!(point.processed_per_second, Some(9.0));
        assert_eq!((point.backlog, point.oldest_age_seconds), (Some(3.0), Some(1.5)));
        // 45 observations: 25 up to 10 ms, 20 between 10 and 100 ms.
        assert!((point.p50_seconds.unwrap() - 0.01 * 22.5 / 25.0).abs() < 1e-9, "{point:?}");
        assert!((point.p99_seconds.unwrap() - (0.01 + 0.09 * (44.55 - 25.0) / 20.0)).abs() < 1e-9, "{point:?}");
    }

    #[test]
    fn what_cannot_be_known_is_a_gap_not_a_zero() {
        let t0 = Instant::now();
        let idle = [(0.01, 3.0), (f64::INFINITY, 3.0)];
        let first = snapshot(t0, 0.0, &[("a", consumer(3.0, &idle))]);
        let point = point_between(None, &first);
        assert_eq!((point.placed_per_second, point.processed_per_second), (None, None), "first sample");
        assert_eq!(point.backlog, Some(3.0));

        let mut unreachable = snapshot(t0 + Duration::from_secs(5), 0.0, &[]);
        unreachable.backlog = None;
        let point = point_between(Some(&first), &unreachable);
        assert_eq!(point.placed_per_second, Some(0.0), "this producer always knows its own count");
        assert_eq!((point.processed_per_second, point.p50_seconds, point.backlog), (None, None, None));

        let quiet = snapshot(t0 + Duration::from_secs(5), 0.0, &[("a", consumer(3.0, &idle))]);
        let point = point_between(Some(&first), &quiet);
        assert_eq!(point.processed_per_second, Some(0.0), "reachable and idle: a true zero");
        assert_eq!((point.p50_seconds, point.p99_seconds), (None, None), "no order processed: no latency");
    }
}
