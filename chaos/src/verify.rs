//! After the fault phase: every service back, every order final, then the
//! checks: the invariants ([`e2e::invariants`]), `/metrics` against the
//! database, the order queue drained and every hostile message on the
//! dead-letter queue with a reason, a clean exit on SIGTERM, plain log files.
//!
//! Invariant: a check that fails is recorded as a violation, never stops the
//! others; only a failure to run the checks at all is an error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::invariants::{self, Expected};
use schema::testing::Tally;

use crate::Run;
use crate::fleet::{CONSUMER, PRODUCER};
use crate::schedule::DUPLICATES;

impl Run {
    /// Brings every service back, waits until every order is final, then
    /// checks the invariants. Returns the end-to-end latencies (ms) of all orders.
    pub async fn settle_and_verify(&mut self, accepted: u64) -> anyhow::Result<Vec<i64>> {
        for member in &mut self.fleet.members {
            if !member.running() {
                self.violations.push(format!("{} was found dead after the fault phase", member.name));
                member.start().await?;
            }
        }
        for member in &self.fleet.members {
            member.wait_ready(Duration::from_secs(60)).await?;
        }
        let settled = |t: &Tally| t.processed + t.failed == t.orders && t.unpublished == 0;
        self.wait_tally("every order final and every row published", Duration::from_secs(180), settled).await;
        self.check_metrics_agree().await;
        let expected = Expected::AtLeast((accepted + self.canaries) as i64);
        let (store, probe) = (self.fleet.store.as_ref(), self.fleet.probe.as_ref());
        self.violations.extend(invariants::check(store, probe, expected).await?);
        self.check_queues().await?;
        for member in &mut self.fleet.members {
            match member.end_with("TERM", Duration::from_secs(20)).await {
                Ok(status) if status.success() => {}
                Ok(status) => self.violations.push(format!("{} exited with {status} at the end", member.name)),
                Err(error) => self.violations.push(format!("{error:#}")),
            }
        }
        for member in &self.fleet.members {
            if member.log_has_ansi() {
                self.violations.push(format!("{}'s log file holds ANSI colour codes", member.name));
            }
        }
        let orders = self.fleet.store.recent_orders(u32::MAX).await?;
        Ok(orders.iter().filter_map(|o| o.processed_at.map(|p| (p - o.created_at).num_milliseconds())).collect())
    }

    /// Waits until the database's figures are `done`, observing meanwhile; a
    /// timeout is a violation.
    async fn wait_tally(&mut self, what: &str, timeout: Duration, done: impl Fn(&Tally) -> bool) {
        let waited = e2e::wait_until(what, timeout, async || match self.fleet.probe.tally().await {
            Ok(t) if done(&t) => Some(()),
            _ => {
                self.observe_for(Duration::from_millis(200)).await;
                None
            }
        });
        if let Err(error) = waited.await {
            self.violations.push(format!("{error:#}"));
        }
    }

    /// `/metrics` agrees with the database: the relays' gauges match the
    /// outbox, and 20 more orders move every service's counter by exactly 20.
    async fn check_metrics_agree(&mut self) {
        let relays: Vec<usize> = (0..self.fleet.members.len()).filter(|i| ![PRODUCER, CONSUMER].contains(i)).collect();
        let before = self.counters().await;
        let orders_before = self.fleet.probe.tally().await.map(|t| t.orders).unwrap_or_default();
        for n in 0..20 {
            let body = serde_json::json!({"customer_name": format!("Audit {n}"), "product_id": "P600", "quantity": 1});
            let sent = self.http.post(format!("{}/api/orders", self.fleet.producer_url)).json(&body).send().await;
            if !sent.is_ok_and(|r| r.status().as_u16() == 201) {
                self.violations.push("a quiet pipeline refused an order".into());
            }
        }
        let target = orders_before + 20;
        let audited = |t: &Tally| t.orders == target && t.processed == target && t.unpublished == 0;
        self.wait_tally("the 20 audit orders", Duration::from_secs(60), audited).await;
        let sum = |values: &[Option<f64>]| relays.iter().map(|i| values[*i].unwrap_or(f64::NAN)).sum::<f64>();
        let mut seen = String::new();
        let agreed = e2e::wait_until("/metrics to agree", Duration::from_secs(10), async || {
            let after = self.counters().await;
            let mut gauges_ok = true;
            for &i in &relays {
                let relay = &self.fleet.members[i];
                let pending = relay.metric("orderflow_relay_outbox_pending").await;
                let parked = relay.metric("orderflow_relay_outbox_parked").await;
                gauges_ok &= pending == Some(0.0) && parked == Some(0.0);
            }
            let delta = |i: usize| after[i].zip(before[i]).map(|(a, b)| a - b);
            let relay_delta = sum(&after) - sum(&before);
            let agree = delta(PRODUCER) == Some(20.0) && delta(CONSUMER) == Some(20.0) && relay_delta == 20.0;
            seen = format!(
                "producer +{:?}, relays +{relay_delta}, consumer +{:?}, relay gauges zero: {gauges_ok}",
                delta(PRODUCER),
                delta(CONSUMER)
            );
            (agree && gauges_ok).then_some(())
        });
        if agreed.await.is_err() {
            self.violations.push(format!("/metrics disagrees with the database for 20 orders: {seen}"));
        }
    }

    /// Each service's counter of the orders it handled: placed, published, processed.
    async fn counters(&self) -> Vec<Option<f64>> {
        let mut values = Vec::new();
        for (i, member) in self.fleet.members.iter().enumerate() {
            let series = match i {
                PRODUCER => "orderflow_producer_orders_placed_total",
                CONSUMER => r#"orderflow_consumer_messages_total{outcome="processed"}"#,
                _ => "orderflow_relay_published_total",
            };
            values.push(member.metric(series).await);
        }
        values
    }

    /// The order queue is drained, and every hostile message is on the
    /// dead-letter queue with a reason.
    async fn check_queues(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let left = || deadline.saturating_duration_since(Instant::now());
        let sent = e2e::wait_until("the dead letters sent", left(), async || {
            match self.fleet.store.unsent_dead_letters(1).await {
                Ok(unsent) if !unsent.is_empty() => {
                    self.observe_for(Duration::from_millis(200)).await;
                    None
                }
                outcome => Some(outcome),
            }
        });
        match sent.await {
            Ok(outcome) => {
                outcome?;
            }
            Err(_) => self.violations.push("dead letters still unsent 30 s after the run".into()),
        }
        // Idle: its processed and duplicate counts stop moving (or the time is up; the checks go on).
        let mut last = None;
        let idle = e2e::wait_until("the consumer idle", left(), async || {
            let now = self.fleet.members[CONSUMER].metric(DUPLICATES).await;
            if now.is_some() && now == last {
                return Some(());
            }
            last = now;
            self.observe_for(Duration::from_secs(1)).await;
            None
        });
        let _ = idle.await;
        let status = self.fleet.members[CONSUMER].end_with("TERM", Duration::from_secs(20)).await?;
        if !status.success() {
            self.violations.push(format!("consumer exited with {status} before the queue check"));
        }
        let url = self.fleet.broker.url();
        let left = e2e::read_queue(&url, &self.fleet.queue, Duration::from_secs(2)).await?;
        if !left.is_empty() {
            self.violations.push(format!("{} messages left on the order queue", left.len()));
        }
        let letters = e2e::read_queue(&url, &format!("{}.DLQ", self.fleet.queue), Duration::from_secs(3)).await?;
        let reasons: HashMap<String, String> = letters
            .iter()
            .filter_map(|f| {
                Some((f.get("original-chaos-id")?.to_string(), f.get("dlq-reason").unwrap_or("").to_string()))
            })
            .collect();
        for (id, kind) in &self.hostile {
            match reasons.get(id) {
                Some(reason) if !reason.is_empty() => {}
                Some(_) => self.violations.push(format!("the dead letter of a {kind} message has no reason")),
                None => self.violations.push(format!("a {kind} message ({id}) never reached the dead-letter queue")),
            }
        }
        self.fleet.members[CONSUMER].start().await?;
        self.fleet.members[CONSUMER].wait_ready(Duration::from_secs(60)).await
    }
}
