//! The bench's report over all rounds: the median and spread of each figure
//! and ratio, the history round beside the empty database, and the sizing
//! table (`sizing`) from the medians.
//!
//! Invariant: a figure whose spread is over ±10 points (ratios) or ±10 %
//! (rates) is printed as "not a result".

use serde::Serialize;

use crate::rounds::Round;
use crate::{Args, sizing};

/// The table's name of the headline ratio.
const HTTP_RATIO: &str = "  HTTP max / raw send + consume (target >= 65 %)";

/// Median and spread of one figure over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Half the range: in points for ratios (×100), in % of the median for the rest.
    pub plus_minus: f64,
    /// False when the spread is over ±10 (points or %): such a figure is not a result.
    pub steady: bool,
}

impl Spread {
    pub(crate) fn of(values: &[f64], ratio: bool) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        let (min, max) = (v.first().copied().unwrap_or(0.0), v.last().copied().unwrap_or(0.0));
        let half = (max - min) / 2.0;
        let plus_minus = if ratio { half * 100.0 } else { 100.0 * half / median.max(f64::MIN_POSITIVE) };
        Self { median, min, max, plus_minus, steady: plus_minus <= 10.0 }
    }
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub messages: usize,
    pub batch: usize,
    pub sqlite_options: String,
    pub busy_loop: bool,
    pub rounds: Vec<Round>,
    pub figures: Vec<(String, Spread)>,
    /// The round on a database with history, if run.
    pub history: Option<Round>,
}

impl Report {
    /// Medians and spreads of every figure and ratio.
    pub fn new(args: &Args, machine: String, rounds: Vec<Round>, history: Option<Round>) -> Self {
        let col = |f: fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
        let rate = |name: &str, f: fn(&Round) -> f64| (name.to_string(), Spread::of(&col(f), false));
        let ratio = |name: &str, f: fn(&Round) -> f64| (name.to_string(), Spread::of(&col(f), true));
        let figures = vec![
            rate("raw broker: transactional batch send, msg/s", |r| r.raw_send),
            rate("raw broker: client-individual consume, msg/s", |r| r.raw_consume),
            rate("raw broker: send + consume together, msg/s", |r| r.raw_both),
            rate("relay: drain outbox -> broker, msg/s", |r| r.relay),
            ratio("  relay / raw send", |r| r.relay / r.raw_send),
            rate("consumer: drain queue -> processed, msg/s", |r| r.consumer),
            ratio("  consumer / raw consume", |r| r.consumer / r.raw_consume),
            rate("relay + consumer: outbox -> processed, msg/s", |r| r.relay_and_consumer),
            ratio("  relay + consumer / raw send + consume", |r| r.relay_and_consumer / r.raw_both),
            rate("HTTP pipeline max, orders/s (all processed)", |r| r.http_max),
            ratio(HTTP_RATIO, |r| r.http_max / r.raw_both),
            rate("steady at half of HTTP max: orders/s", |r| r.half[0]),
            rate("  end-to-end p50, ms", |r| r.half[1]),
            rate("  end-to-end p99, ms (target <= 25)", |r| r.half[2]),
            rate("  end-to-end p99.9, ms", |r| r.half[3]),
            rate("steady 2,000/s: end-to-end p50, ms", |r| r.steady_p50_ms),
            rate("steady 2,000/s: end-to-end p99, ms", |r| r.steady_p99_ms),
            rate("CPU us per order (HTTP max): producer", |r| r.cpu_us_per_order[0]),
            rate("CPU us per order (HTTP max): relay", |r| r.cpu_us_per_order[1]),
            rate("CPU us per order (HTTP max): consumer", |r| r.cpu_us_per_order[2]),
            rate("CPU us per order (HTTP max): broker", |r| r.cpu_us_per_order[3]),
            rate("peak RSS MB: producer (target <= 64)", |r| r.peak_rss_mb[0]),
            rate("peak RSS MB: relay (target <= 64)", |r| r.peak_rss_mb[1]),
            rate("peak RSS MB: consumer (target <= 64)", |r| r.peak_rss_mb[2]),
        ];
        Self {
            machine,
            messages: args.messages,
            batch: args.batch,
            sqlite_options: match args.sqlite_options.as_str() {
                "" => "default (synchronous=FULL)".into(),
                options => options.into(),
            },
            busy_loop: args.busy_loop,
            rounds,
            figures,
            history,
        }
    }

    /// The median of the figure whose name starts with `name` (up to its unit).
    fn median(&self, name: &str) -> f64 {
        let key = name.rsplit_once(", ").map_or(name, |(k, _)| k);
        self.figures.iter().find(|(n, _)| n.starts_with(key)).map_or(0.0, |(_, s)| s.median)
    }

    /// Each service's CPU per order and what one instance did alone, for the sizing table.
    fn sizing(&self) -> [sizing::Service; 4] {
        let cpu = |service: &str| self.median(&format!("CPU us per order (HTTP max): {service}"));
        let service = |name, one_instance| sizing::Service { name, us_per_order: cpu(name), one_instance };
        [
            service("producer", Some((self.median("HTTP pipeline max, orders/s"), "HTTP max, whole pipeline"))),
            service("relay", Some((self.median("relay: drain outbox -> broker, msg/s"), "drain, alone"))),
            service("consumer", Some((self.median("consumer: drain queue -> processed, msg/s"), "drain, alone"))),
            service("broker", None),
        ]
    }

    /// The table: median, range and spread of each figure.
    pub fn print(&self) {
        println!(
            "\norderflow bench: {} rounds, {} messages per phase, batch {}, SQLite {}, on {}{}",
            self.rounds.len(),
            self.messages,
            self.batch,
            self.sqlite_options,
            self.machine,
            if self.busy_loop { ", with one busy-looping process beside it" } else { "" }
        );
        println!("{:<52} {:>10} {:>21} {:>9}", "figure", "median", "min - max", "spread");
        for (name, s) in &self.figures {
            let is_ratio = name.trim_start().contains(" / ");
            let (median, range, spread) = match is_ratio {
                true => (
                    format!("{:.0} %", s.median * 100.0),
                    format!("{:.0} - {:.0} %", s.min * 100.0, s.max * 100.0),
                    format!("±{:.1} pt", s.plus_minus),
                ),
                false => (
                    format!("{:.1}", s.median),
                    format!("{:.1} - {:.1}", s.min, s.max),
                    format!("±{:.1} %", s.plus_minus),
                ),
            };
            let flag = if s.steady { "" } else { "  spread over ±10: not a result" };
            println!("{name:<52} {median:>10} {range:>21} {spread:>9}{flag}");
        }
        let final_min = self.rounds.iter().map(|r| r.steady_final).fold(1.0, f64::min);
        println!("(steady 2,000/s: at least {:.2} % of orders final in every round)", final_min * 100.0);
        println!();
        for line in sizing::lines(&self.sizing()) {
            println!("{line}");
        }
        let Some(h) = &self.history else { return };
        println!(
            "\non a history of {} processed orders (database {:.0} MB; retention purging {:.0} rows/s during the steady phase):",
            h.history, h.database_mb, h.purged_per_s
        );
        println!("{:<44} {:>12} {:>12} {:>9} {:>16}  target", "figure", "empty", "history", "change", "change vs raw");
        // A ratio to the raw ceiling measured minutes apart in the same round
        // does not move with the machine's speed; the plain change does.
        let rows = [
            ("relay: drain outbox -> broker, msg/s", h.relay, Some(("  relay / raw send", h.raw_send))),
            (
                "consumer: drain queue -> processed, msg/s",
                h.consumer,
                Some(("  consumer / raw consume", h.raw_consume)),
            ),
            ("HTTP pipeline max, orders/s", h.http_max, Some((HTTP_RATIO, h.raw_both))),
            ("steady 2,000/s: end-to-end p99, ms", h.steady_p99_ms, None),
        ];
        for (name, on_history, ratio) in rows {
            let empty = self.median(name);
            let change = 100.0 * (on_history - empty) / empty.max(f64::MIN_POSITIVE);
            let (vs_raw, target) = match ratio {
                Some((ratio_name, raw)) => {
                    let empty_ratio = self.median(ratio_name);
                    let history_ratio = on_history / raw.max(f64::MIN_POSITIVE);
                    let vs = 100.0 * (history_ratio - empty_ratio) / empty_ratio.max(f64::MIN_POSITIVE);
                    (format!("{vs:+.0}%"), "within 10 %")
                }
                None => (String::new(), "at most 2x (purging)"),
            };
            println!("{name:<44} {empty:>12.1} {on_history:>12.1} {change:>+8.0}% {vs_raw:>16}  {target}");
        }
        let raw_change = 100.0 * (h.raw_both - self.median("raw broker: send + consume"))
            / self.median("raw broker: send + consume");
        println!("(the raw send + consume ceiling in the same round moved {raw_change:+.0} %)");
    }
}

/// CPU model and core count, for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |v| v.trim_start_matches([' ', '\t', ':']));
    format!("{model}, {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()))
}
