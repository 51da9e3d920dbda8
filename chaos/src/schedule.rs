//! The fault phase: faults one after another while the load runs, each
//! followed by a canary order that times the recovery.
//!
//! Invariant: every kind of fault comes once in each shuffled round, and a
//! fault after which no fresh order is processed within
//! [`RECOVERY_DEADLINE`] is a violation.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;

use crate::Run;
use crate::faults::{self, Fault};
use crate::fleet::CONSUMER;

/// Longest wait for the pipeline to carry a fresh order after a fault.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);

/// The consumer's counter of duplicates absorbed, tracked across its restarts.
pub const DUPLICATES: &str = r#"orderflow_consumer_messages_total{outcome="duplicate"}"#;

/// One injected fault and what it cost.
pub struct FaultRecord {
    pub fault: Fault,
    /// From injection until a fresh order was processed end to end.
    pub recovered_in: Option<Duration>,
}

impl Run {
    /// Faults one after another until the load's time is up: every kind once
    /// in a shuffled round, then more rounds while time remains.
    pub async fn inject_faults(&mut self) {
        let started = Instant::now();
        let mut round = Vec::new();
        while started.elapsed() + Duration::from_secs(5) < self.args.duration {
            if round.is_empty() {
                round = Fault::all(self.fleet.members.len());
                round.shuffle(&mut self.rng);
            }
            let fault = round.pop().expect("refilled above");
            let pause = Duration::from_millis(self.rng.random_range(500..2_500));
            self.observe_for(pause).await;
            let label = fault.label(&self.fleet.names());
            println!("  {:>5.1} s  {label}", started.elapsed().as_secs_f64());
            let at = Instant::now();
            if let Err(error) = self.inject(fault).await {
                self.violations.push(format!("{label}: {error:#}"));
            }
            let recovered_in = self.canary(at).await;
            if recovered_in.is_none() {
                self.violations.push(format!("no fresh order processed within {RECOVERY_DEADLINE:?} after {label}"));
            }
            self.faults.push(FaultRecord { fault, recovered_in });
        }
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        let down = Duration::from_millis(self.rng.random_range(200..1_500));
        match fault {
            Fault::Kill(i) => {
                self.fleet.members[i].end_with("KILL", Duration::from_secs(10)).await?;
                tokio::time::sleep(down).await;
                self.fleet.members[i].start().await?;
            }
            Fault::Term(i) => {
                let status = self.fleet.members[i].end_with("TERM", Duration::from_secs(20)).await?;
                tokio::time::sleep(down).await;
                self.fleet.members[i].start().await?;
                anyhow::ensure!(status.success(), "exited with {status} after SIGTERM (a drain must exit 0)");
            }
            Fault::BrokerKill => {
                self.fleet.broker.kill().await;
                tokio::time::sleep(down).await;
                self.fleet.broker.start_again();
            }
            Fault::DatabaseLock => {
                faults::hold_write_lock(&*self.fleet.probe).await?;
            }
            Fault::Hostile => {
                let recent = self.fleet.store.recent_orders(2).await?;
                let order = recent.first().map_or(1, |o| o.order_id.0);
                // The spoofed outbox id is the previous order's, which must still be processed.
                let other = match recent.get(1) {
                    Some(o) => self.fleet.probe.outbox_ids(o.order_id).await?.first().copied(),
                    None => None,
                };
                let (url, queue) = (self.fleet.broker.url(), &self.fleet.queue);
                let sent = faults::send_hostile(&url, queue, order, other.unwrap_or_default()).await?;
                self.hostile.extend(sent);
            }
        }
        Ok(())
    }

    /// Places one order (retrying while the producer is down) and waits until
    /// it is final; returns the time since `since`.
    async fn canary(&mut self, since: Instant) -> Option<Duration> {
        let deadline = since + RECOVERY_DEADLINE;
        let left = || deadline.saturating_duration_since(Instant::now());
        let url = format!("{}/api/orders", self.fleet.producer_url);
        let body = serde_json::json!({"customer_name": "Canary", "product_id": "P500", "quantity": 1});
        let key = format!("canary-{}", uuid::Uuid::new_v4().simple());
        let placed = e2e::wait_until("the canary accepted", left(), async || {
            let answer = self.http.post(&url).header("Idempotency-Key", &key).json(&body).send().await;
            if let Ok(response) = answer
                && response.status().is_success()
                && let Ok(order) = response.json::<serde_json::Value>().await
            {
                return Some(order["order_id"].as_i64());
            }
            self.observe_for(Duration::from_millis(100)).await;
            None
        });
        let order = schema::OrderId(placed.await.ok()??);
        self.canaries += 1;
        let processed = e2e::wait_until("the canary final", left(), async || {
            if let Ok(o) = self.fleet.store.order(order).await
                && o.status.is_final()
            {
                return Some(since.elapsed());
            }
            self.observe_for(Duration::from_millis(100)).await;
            None
        });
        processed.await.ok()
    }

    /// Waits `pause`, scraping the consumer's duplicate counter meanwhile.
    pub async fn observe_for(&mut self, pause: Duration) {
        let until = Instant::now() + pause;
        loop {
            self.fleet.members[CONSUMER].track(DUPLICATES).await;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        }
    }
}
