//! The relay step and its loop: lease a batch, publish, confirm or retry.
//!
//! Invariants: a row is marked published only after its RECEIPT; a broker
//! outage never counts an attempt or parks a row; a broker ERROR for a row
//! counts one attempt and parks it at the cap, so one bad row never blocks others;
//! a batch is sent and answered within two thirds of its lease, counted from
//! its claim's start or the last renewal that reached every row in hand (a
//! renewal that ran beside a claim does not reach that claim's rows), or is
//! given back unsent; it is handed to be marked as soon as its answers are in
//! (marks go in claim order, at most one waiting); while batches are in hand
//! their leases are renewed every third of a lease, so no other relay can
//! claim one while the broker holds it unmarked; leases are given back only
//! when none of the relay's batches is on the wire or waiting for its mark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use error_reporter::Report;
use schema::{FailedAttempt, FailureOutcome, OutboxId, OutboxRow, OutboxStore, StoreError};
use service::Backoff;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::publisher::{Outcome, Publisher};
use crate::retry::retry_after;

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows leased.
    pub claimed: usize,
    /// Rows confirmed and marked published.
    pub published: usize,
    /// Rows the broker rejected (attempt counted).
    pub rejected: usize,
    /// Of those, rows parked at the attempt cap.
    pub parked: usize,
    /// Rows whose outcome is unknown (broker unreachable or silent).
    pub unknown: usize,
}

/// Why a step could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed; retry later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker is unreachable or stopped answering; retry later.
    #[error("broker unavailable: {0}")]
    BrokerUnavailable(String),
    /// The claim took two thirds of the lease, and no renewal reached its
    /// rows before the lease ran out: sent now, the batch could reach the
    /// broker after another relay had claimed it again, so it was given back.
    #[error("the claim took {0:?}, and no renewal reached its rows within their lease; they were given back unsent")]
    LeaseSpent(Duration),
}

/// Operator controls shared by the loop and the admin routes.
#[derive(Default)]
pub struct Control {
    paused: AtomicBool,
    /// Held for the whole of each step: taking it proves no batch is in flight.
    step: tokio::sync::Mutex<()>,
    /// Unix milliseconds of the loop's last turn (its heartbeat).
    beat_ms: AtomicU64,
    /// When the last renewal that succeeded began, or the claim it ran
    /// beside began if that was earlier: every lease this relay holds runs at
    /// least a lease from then. `None` outside a streak.
    renewed: std::sync::Mutex<Option<Instant>>,
    /// When the claim now running began: its rows may be committed after a
    /// renewal has read the outbox, so that renewal does not cover them.
    claiming: std::sync::Mutex<Option<Instant>>,
}

/// Marks a claim as running until dropped (see [`Control::claiming`]).
struct Claiming<'a>(&'a Control);

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        *self.0.claiming.lock().expect("claim lock") = None;
    }
}

impl Control {
    /// True while claiming is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Seconds since the loop last turned.
    pub fn heartbeat_age(&self) -> Duration {
        let beat = self.beat_ms.load(Ordering::Relaxed);
        Duration::from_millis(unix_ms().saturating_sub(beat))
    }

    fn beat(&self) {
        self.beat_ms.store(unix_ms(), Ordering::Relaxed);
    }

    fn renewed_at(&self) -> Option<Instant> {
        *self.renewed.lock().expect("renewal lock")
    }

    fn set_renewed(&self, at: Option<Instant>) {
        *self.renewed.lock().expect("renewal lock") = at;
    }

    /// After a renewal that reached every row in hand claimed before
    /// `covered`, ending now: every row in hand was still leased when it ran
    /// only if it ended within a lease of the last base (or of `floor`, the
    /// claim's start, outside a streak), so only then does the base move on.
    fn advance_renewed(&self, covered: Instant, floor: Instant, lease: Duration) {
        let mut renewed = self.renewed.lock().expect("renewal lock");
        let base = renewed.unwrap_or(floor);
        if Instant::now() < base + lease {
            *renewed = Some(covered.max(base));
        }
    }

    /// Notes a claim beginning now; it ends when the guard is dropped. A relay
    /// runs one claim at a time.
    fn claiming(&self) -> Claiming<'_> {
        *self.claiming.lock().expect("claim lock") = Some(Instant::now());
        Claiming(self)
    }

    fn claiming_since(&self) -> Option<Instant> {
        *self.claiming.lock().expect("claim lock")
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long one step may wait on the broker: well inside the lease, so the
/// rows are marked (or given back) before another relay may claim them.
pub fn publish_budget(lease: Duration) -> Duration {
    lease * 2 / 3
}

/// Everything the relay step needs.
pub struct Relay {
    /// The outbox.
    pub store: Arc<dyn OutboxStore>,
    /// The broker side.
    pub publisher: Arc<dyn Publisher>,
    /// This relay's name on the leases it takes (`RELAY_ID`).
    pub owner: String,
    /// Rows claimed per step at most.
    pub batch_size: u32,
    /// How long a claimed row stays this relay's.
    pub lease: Duration,
    /// Rejections before a row is parked.
    pub max_attempts: i32,
    /// The relay's metrics.
    pub metrics: Metrics,
    /// Pause, drain and the step lock the operator routes share.
    pub control: Control,
}

impl Relay {
    /// One step: lease a batch, publish it, record every row's outcome. A
    /// batch not sent, or whose outcome is unknown, is given back at once.
    pub async fn relay_once(&self) -> Result<BatchReport, RelayError> {
        let claimed_at = Instant::now();
        let rows = self.claim().await?;
        if rows.is_empty() {
            return Ok(BatchReport::default());
        }
        let report = self.publish(rows, claimed_at).await;
        self.metrics.leases_held.set(0);
        if report.is_err() {
            self.store.release_leases(&self.owner).await?;
        }
        report
    }

    /// Until when a batch claimed at `claimed_at` may still be sent and
    /// answered: two thirds of a lease from its claim's start, or from the
    /// start of the last renewal that succeeded, whichever is later.
    fn send_deadline(&self, claimed_at: Instant) -> Instant {
        let from = self.control.renewed_at().map_or(claimed_at, |renewed| renewed.max(claimed_at));
        from + publish_budget(self.lease)
    }

    /// Sends a claimed batch and records its outcomes at once, so it is marked
    /// as soon as its receipts are in; a batch whose claim took so long that
    /// its lease may lapse before the broker answers is given back unsent.
    async fn publish(&self, rows: Vec<OutboxRow>, claimed_at: Instant) -> Result<BatchReport, RelayError> {
        let sent = self.send_in_lease(rows, claimed_at).await?;
        self.record(sent).await
    }

    /// Sends a claimed batch unless its lease may lapse before the broker
    /// answers. A claim that took two thirds of the lease (a first call on a
    /// connection, a wait on locks) is renewed at once; when even that renewal
    /// cannot vouch for its rows, nothing is sent, and the caller gives the
    /// leases back once no batch of this relay is in flight.
    async fn send_in_lease(&self, rows: Vec<OutboxRow>, claimed_at: Instant) -> Result<Sent, RelayError> {
        if Instant::now() >= self.send_deadline(claimed_at) {
            let renewed = self.renew(claimed_at).await;
            if let Err(error) = &renewed {
                tracing::warn!(error = %Report::new(error), "renewing the leases of a slow claim failed");
            }
            if renewed.is_err() || Instant::now() >= self.send_deadline(claimed_at) {
                return Err(RelayError::LeaseSpent(claimed_at.elapsed()));
            }
        }
        Ok(self.send(rows, claimed_at).await)
    }

    /// Renews every lease this relay holds, and moves the base its batches'
    /// budgets count from when the renewal reached them all in time (see
    /// [`Control::advance_renewed`]); `floor` is the claim in hand's start.
    async fn renew(&self, floor: Instant) -> Result<(), StoreError> {
        let started = Instant::now();
        // A claim running now may commit after this renewal has read the
        // outbox (on SQL Server it may wait seconds on locks): its rows
        // count from their own claim's start, not from this renewal.
        let claiming = self.control.claiming_since();
        let renewed = self.store.renew_leases(&self.owner, self.lease).await?;
        let covered = claiming.map_or(started, |since| since.min(started));
        self.control.advance_renewed(covered, floor, self.lease);
        tracing::debug!(renewed, took = ?started.elapsed(), "leases renewed");
        Ok(())
    }

    async fn claim(&self) -> Result<Vec<OutboxRow>, StoreError> {
        let _claiming = self.control.claiming();
        self.store.claim_batch(&self.owner, self.batch_size, self.lease).await
    }

    /// Publishes a claimed batch, within the budget, each message with its span.
    async fn send(&self, mut rows: Vec<OutboxRow>, claimed_at: Instant) -> Sent {
        self.metrics.batch_size.observe(rows.len() as f64);
        self.metrics.leases_held.set(rows.len() as i64);
        // One span per message, child of the request that placed the order; the
        // message then carries this span as its parent (or, when spans are not
        // exported, the context stored with the order).
        let spans: Vec<tracing::Span> = rows
            .iter_mut()
            .map(|row| {
                let span = tracing::debug_span!(
                    "outbox.publish",
                    otel.kind = "producer",
                    order_id = row.order_id.0,
                    outbox_id = %row.outbox_id,
                    trace_id = tracing::field::Empty
                );
                observability::continue_trace(&span, row.traceparent.as_deref(), row.tracestate.as_deref());
                if let Some((traceparent, tracestate)) = observability::trace_headers(&span) {
                    row.traceparent = Some(traceparent);
                    row.tracestate = tracestate;
                }
                span
            })
            .collect();
        // The budget runs from the claim's start, as the lease does, and
        // moves on with each renewal that succeeds meanwhile.
        let outcomes = {
            let publish = self.publisher.publish(&rows);
            tokio::pin!(publish);
            loop {
                let deadline = self.send_deadline(claimed_at);
                tokio::select! {
                    outcomes = &mut publish => break outcomes,
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        if self.send_deadline(claimed_at) > Instant::now() {
                            continue;
                        }
                        // Past the budget the lease may lapse and another relay send the
                        // same rows: give up on this connection, count nothing, retry.
                        self.publisher.close().await;
                        let waited = claimed_at.elapsed();
                        let reason = format!("no broker answer {waited:?} after the claim, with the lease unrenewed");
                        break vec![Outcome::Unknown(reason); rows.len()];
                    }
                }
            }
        };
        Sent { rows, outcomes, _spans: spans, claimed_at }
    }

    /// Records a sent batch's outcomes: marks the confirmed rows, counts an
    /// attempt for each rejected one; when an outcome is unknown, reports the
    /// broker unavailable (the caller gives the leases back once no other
    /// batch of this relay is in flight: another may be on the wire now).
    async fn record(&self, sent: Sent) -> Result<BatchReport, RelayError> {
        let Sent { rows, outcomes, claimed_at, .. } = sent;
        let mut report = BatchReport { claimed: rows.len(), ..BatchReport::default() };
        let now = Utc::now();
        let mut confirmed: Vec<OutboxId> = Vec::with_capacity(rows.len());
        let mut rejected = Vec::new();
        let mut unknown_reason = None;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Confirmed => {
                    confirmed.push(row.outbox_id);
                    let dwell = (now - row.created_at).to_std().unwrap_or_default();
                    self.metrics.dwell_seconds.observe(dwell.as_secs_f64());
                }
                Outcome::Rejected(reason) => {
                    report.rejected += 1;
                    self.metrics.publish_errors.with_label_values(&["rejected"]).inc();
                    tracing::warn!(
                        outbox_id = %row.outbox_id,
                        order_id = row.order_id.0,
                        trace_id = row.traceparent.as_deref().and_then(observability::trace_id_of),
                        %reason,
                        "broker rejected message"
                    );
                    rejected.push((row, reason));
                }
                // A passing condition of the broker: back off as for an outage.
                Outcome::Refused(reason) | Outcome::Unknown(reason) => {
                    report.unknown += 1;
                    unknown_reason.get_or_insert(reason);
                }
            }
        }
        // Confirmed rows first: a failure recording a rejection must never
        // leave a row the broker holds unmarked.
        let marked = self.mark_published(&confirmed).await;
        for (row, reason) in rejected {
            let failure = FailedAttempt {
                owner: &self.owner,
                outbox_id: row.outbox_id,
                error: &reason,
                retry_in: retry_after(row.attempts),
                max_attempts: self.max_attempts,
            };
            match self.store.record_failure(&failure).await? {
                FailureOutcome::Parked => {
                    report.parked += 1;
                    self.metrics.parked.inc();
                    tracing::error!(outbox_id = %row.outbox_id, order_id = row.order_id.0, "outbox row parked");
                }
                FailureOutcome::LeaseLost => {
                    tracing::warn!(outbox_id = %row.outbox_id, "lease lapsed before the rejection was recorded");
                }
                FailureOutcome::Retrying => {}
            }
        }
        marked?;
        report.published = confirmed.len();
        self.metrics.published.inc_by(confirmed.len() as u64);
        self.metrics.batch_seconds.observe(claimed_at.elapsed().as_secs_f64());
        if let Some(reason) = unknown_reason {
            self.metrics.publish_errors.with_label_values(&["unknown"]).inc_by(report.unknown as u64);
            return Err(RelayError::BrokerUnavailable(reason));
        }
        Ok(report)
    }

    /// Marks confirmed rows, retrying briefly: the receipts are in hand, and
    /// failing here would only cause duplicates after the lease expires.
    async fn mark_published(&self, ids: &[OutboxId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut tries = 0;
        loop {
            match self.store.mark_published(ids).await {
                Ok(_) => return Ok(()),
                Err(error) if error.is_transient() && tries < 8 => {
                    tries += 1;
                    tracing::warn!(error = %Report::new(&error), "marking published failed, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Stops claiming; already-leased rows are still finished.
    pub fn pause(&self) {
        self.control.paused.store(true, Ordering::SeqCst);
        self.metrics.paused.set(1);
    }

    /// Claims again.
    pub fn resume(&self) {
        self.control.paused.store(false, Ordering::SeqCst);
        self.metrics.paused.set(0);
    }

    /// Pauses, waits for the batch in flight to be confirmed and marked, then
    /// gives back every lease this relay holds, so a rolling restart publishes
    /// nothing twice. Returns the number of leases released.
    pub async fn drain(&self) -> Result<u64, StoreError> {
        self.pause();
        let _no_batch_in_flight = self.control.step.lock().await;
        let released = self.store.release_leases(&self.owner).await?;
        self.metrics.leases_held.set(0);
        Ok(released)
    }

    /// Runs steps until `shutdown`; never stops a batch half-way.
    pub async fn run(&self, poll_min: Duration, poll_max: Duration, shutdown: CancellationToken) {
        let mut idle = poll_min;
        let mut failures = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        while !shutdown.is_cancelled() {
            self.control.beat();
            let step = self.control.step.lock().await;
            if self.control.is_paused() {
                drop(step);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(poll_max) => {}
                }
                continue;
            }
            let result = self.stream(&shutdown).await;
            self.metrics.leases_held.set(0);
            drop(step);
            let pause = match result {
                Ok(claimed) if claimed > 0 => {
                    failures.reset();
                    idle = poll_min;
                    continue;
                }
                Ok(_) => {
                    let pause = idle;
                    idle = (idle * 2).min(poll_max);
                    pause
                }
                Err(error) => {
                    let kind = match &error {
                        RelayError::Store(_) | RelayError::LeaseSpent(_) => "database",
                        RelayError::BrokerUnavailable(_) => "broker",
                    };
                    self.metrics.publish_errors.with_label_values(&[kind]).inc();
                    let delay = failures.next_delay();
                    tracing::warn!(error = %Report::new(&error), retry_in_ms = delay.as_millis() as u64, "relay step failed");
                    delay
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Steps while there is work, pipelined in three: while one batch is sent,
    /// the next is claimed and the one before is marked. A batch goes to the
    /// recorder the moment its answers are in, so neither a slow claim nor the
    /// next send delays its mark (a late mark would eat its lease); the next
    /// batch is sent only after that, so the queue gets them in claim order.
    /// Stops claiming when paused or shut down, and returns (rows claimed) only
    /// when every sent batch is recorded; a batch claimed but not sent when the
    /// streak ended is given back after that, never before a mark.
    async fn stream(&self, shutdown: &CancellationToken) -> Result<usize, RelayError> {
        // One recorded, one waiting at most: the sender runs one batch ahead.
        let (handoff, mut sent) = tokio::sync::mpsc::channel::<Sent>(1);
        // After a failure the recorder takes no new batch, but still records
        // the one waiting: its rows may be on the queue and must be marked.
        let recorder = async move {
            let mut recorded = Ok::<_, RelayError>(());
            while let Some(batch) = sent.recv().await {
                if let (Err(error), true) = (self.record(batch).await, recorded.is_ok()) {
                    sent.close();
                    recorded = Err(error);
                }
            }
            recorded
        };
        // The leases of the batches in hand are renewed every third of a lease
        // while the streak lasts, so a slow mark (or a slow claim before the
        // send) never lets one lapse into another relay's claim. The renewer is
        // told to stop, never dropped mid-call.
        let done = CancellationToken::new();
        let work = async {
            let ended = tokio::join!(self.send_while_claiming(shutdown, handoff), recorder);
            done.cancel();
            ended
        };
        // Vacuously true at the start: every row in hand is claimed after it.
        self.control.set_renewed(Some(Instant::now()));
        let ((streak, recorded), ()) = tokio::join!(work, self.renew_while(&done));
        self.control.set_renewed(None);
        // Nothing is in flight now: what was claimed and not sent, or sent
        // with an unknown outcome, goes back (out again after the reconnect
        // rather than after the lease; the consumer absorbs any duplicate).
        let give_back = streak.unsent || streak.ended.is_err() || recorded.is_err();
        let released = if give_back { self.store.release_leases(&self.owner).await.map(drop) } else { Ok(()) };
        streak.ended?;
        recorded?;
        released?;
        Ok(streak.claimed)
    }

    /// Renews this relay's leases every third of a lease until `done`; a
    /// failed renewal is only logged (the next one, or the mark, may yet come
    /// in time, and the consumer absorbs a duplicate if none does).
    async fn renew_while(&self, done: &CancellationToken) {
        let every = (self.lease / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.renew(Instant::now()).await {
                tracing::warn!(error = %Report::new(&error), "renewing the leases in hand failed");
            }
        }
    }

    /// The sending half of [`Relay::stream`]: sends each batch while claiming
    /// the next and hands it to the recorder. When the recorder has stopped
    /// (it failed), records the batch in hand itself, so that what the broker
    /// confirmed is marked, and ends the streak.
    async fn send_while_claiming(
        &self,
        shutdown: &CancellationToken,
        handoff: tokio::sync::mpsc::Sender<Sent>,
    ) -> Streak {
        let mut claimed_at = Instant::now();
        let mut rows = match self.claim().await {
            Ok(rows) => rows,
            Err(error) => return Streak { claimed: 0, ended: Err(error.into()), unsent: false },
        };
        let mut claimed = 0;
        while !rows.is_empty() {
            claimed += rows.len();
            self.control.beat();
            let more = !shutdown.is_cancelled() && !self.control.is_paused();
            let send = async {
                let batch = self.send_in_lease(rows, claimed_at).await?;
                match handoff.send(batch).await {
                    Ok(()) => Ok(()),
                    Err(tokio::sync::mpsc::error::SendError(batch)) => self.record(batch).await.map(drop),
                }
            };
            let next = async {
                let at = Instant::now();
                let rows = if more { self.claim().await? } else { Vec::new() };
                Ok::<_, StoreError>((rows, at))
            };
            match tokio::join!(send, next) {
                (Ok(()), Ok(next)) if !handoff.is_closed() => (rows, claimed_at) = next,
                (sent, next) => {
                    let unsent = next.as_ref().is_ok_and(|(next, _)| !next.is_empty());
                    let ended = sent.and(next.map(drop).map_err(RelayError::from));
                    return Streak { claimed, ended, unsent };
                }
            }
        }
        Streak { claimed, ended: Ok(()), unsent: false }
    }
}

/// How a streak of batches ended.
struct Streak {
    /// Rows claimed.
    claimed: usize,
    /// The sending side's error, if it stopped on one.
    ended: Result<(), RelayError>,
    /// A batch was claimed and not sent: its leases must be given back.
    unsent: bool,
}

/// A batch sent to the broker, its outcomes not yet recorded.
struct Sent {
    rows: Vec<OutboxRow>,
    outcomes: Vec<Outcome>,
    /// The messages' spans, ended when the batch is recorded.
    _spans: Vec<tracing::Span>,
    claimed_at: Instant,
}
