//! The report at the end of a run: the faults and the worst recovery of each
//! kind, the orders, the duplicates absorbed, the latency over all orders,
//! and the invariants, each violation on its own line.
//!
//! Invariant: it only reads; whether the run passed is decided by the
//! violations recorded before it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Run;
use crate::fleet::CONSUMER;
use crate::schedule::RECOVERY_DEADLINE;

impl Run {
    /// Prints the report; `latency` holds every order's end-to-end time (ms).
    pub async fn report(&self, load: &loadtest::stats::Summary, mut latency: Vec<i64>) -> anyhow::Result<()> {
        let names = self.fleet.names();
        let mut by_kind: BTreeMap<String, (u32, Duration)> = BTreeMap::new();
        for record in &self.faults {
            let entry = by_kind.entry(record.fault.label(&names)).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(record.recovered_in.unwrap_or(RECOVERY_DEADLINE));
        }
        println!(
            "\nfaults ({} in all)                      count   worst time to a fresh order processed",
            self.faults.len()
        );
        for (label, (count, worst)) in &by_kind {
            println!("  {label:<36} {count:>5}   {:.1} s", worst.as_secs_f64());
        }
        let t = self.fleet.probe.tally().await?;
        let errors: Vec<String> = load.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "\norders: {} accepted by the load ({} sent; refused while a service was down: {}), {} canaries, {} in the database, {} processed, {} failed",
            load.accepted,
            load.sent,
            if errors.is_empty() { "none".into() } else { errors.join(", ") },
            self.canaries,
            t.orders,
            t.processed,
            t.failed
        );
        println!(
            "duplicates absorbed by the consumer: at least {} (counted from scrapes; a killed consumer's last ones are lost)",
            self.fleet.members[CONSUMER].tracked_total()
        );
        println!("hostile messages: {} injected, each checked on the dead-letter queue", self.hostile.len());
        latency.sort_unstable();
        let at = |q: f64| latency.get(((latency.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
        println!(
            "end-to-end latency over all orders (faults included): p50 {} ms, p99 {} ms, worst {} ms",
            at(0.5),
            at(0.99),
            latency.last().copied().unwrap_or(0)
        );
        println!("\ninvariants:");
        if self.violations.is_empty() {
            println!(
                "  ok: every accepted order processed once at the right price, every row published and applied once, the counters"
            );
            println!(
                "      agree, queue drained, every hostile message dead-lettered with a reason, /metrics agrees with the database,"
            );
            println!("      every SIGTERM exited 0, no ANSI colour codes in the log files");
        }
        for violation in &self.violations {
            println!("  FAIL: {violation}");
        }
        Ok(())
    }
}
