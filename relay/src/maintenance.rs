//! Scheduled maintenance: retention of published outbox rows and old inbox
//! rows, and the reconciliation sweep that reports stuck orders and sends
//! them again (self-healing: a lost commit, a purged queue, a broker that lost
//! its store all end with the order processed).
//!
//! Invariants: deletes go in small batches (never one huge DELETE); a job
//! never overlaps itself (the scheduler would start a second run of a slow
//! job, so each job holds a guard and a run that finds it taken is skipped);
//! several relays may run the jobs at once (batched deletes skip locked rows,
//! repairs run in one transaction each and skip orders another sweep holds).

use std::sync::Arc;
use std::time::Duration;

use error_reporter::Report;
use schema::{OutboxAdmin, Reconciliation, StoreError};
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::metrics::Metrics;

/// Settings of the maintenance jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Cron expression (6 fields, UTC) of the retention job; empty disables it.
    pub retention_cron: String,
    /// Published outbox rows older than this are deleted.
    pub outbox_retention: Duration,
    /// Inbox rows older than this are deleted (a redelivery after that is still
    /// caught by the order's status guard).
    pub inbox_retention: Duration,
    /// Rows per delete statement.
    pub purge_batch: u32,
    /// Pause after each full delete batch.
    pub purge_pause: Duration,
    /// Cron expression of the reconciliation sweep; empty disables it.
    pub reconcile_cron: String,
    /// An order `published` this long ago (its last publication) and still not
    /// processed is reported, and repaired when `repair_as` is set.
    pub stale_published_after: Duration,
    /// Who the audit names for repairs; `None` only reports.
    pub repair_as: Option<String>,
}

/// Most orders one sweep repairs (the next sweep takes the rest).
const REPAIRS_PER_SWEEP: u32 = 1_000;

/// Upper bound on delete batches per run, so one run always ends.
const MAX_BATCHES_PER_RUN: usize = 10_000;

/// Rows one retention run deleted, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Outbox rows published more than `OUTBOX_RETENTION_SECS` ago.
    pub outbox: u64,
    /// Inbox rows recorded more than `INBOX_RETENTION_SECS` ago.
    pub inbox: u64,
    /// Dead letters sent to the DLQ more than `OUTBOX_RETENTION_SECS` ago
    /// (unsent and undeliverable ones stay).
    pub dead_letters: u64,
}

/// One retention run: deletes old rows batch by batch until none is left.
pub async fn retention_once(
    store: &dyn OutboxAdmin,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Purged, StoreError> {
    let batch = settings.purge_batch;
    Ok(Purged {
        outbox: purge(settings, metrics, "outbox", || store.purge_published(settings.outbox_retention, batch)).await?,
        inbox: purge(settings, metrics, "inbox", || store.purge_inbox(settings.inbox_retention, batch)).await?,
        dead_letters: purge(settings, metrics, "dead_letters", || {
            store.purge_dead_letters(settings.outbox_retention, batch)
        })
        .await?,
    })
}

/// Runs one table's delete until a batch comes back short.
async fn purge<F, Fut>(settings: &Settings, metrics: &Metrics, table: &str, mut delete: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_RUN {
        let n = delete().await?;
        total += n;
        metrics.purged.with_label_values(&[table]).inc_by(n);
        if n < u64::from(settings.purge_batch) {
            break;
        }
        tokio::time::sleep(settings.purge_pause).await;
    }
    Ok(total)
}

/// One reconciliation sweep: sends stuck orders again when repairs are on,
/// then sets the gauges and warns about what is still stuck. Returns the
/// findings and how many orders were repaired.
pub async fn reconcile_once(
    store: &dyn OutboxAdmin,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<(Reconciliation, usize), StoreError> {
    let mut repaired = 0;
    if let Some(requested_by) = &settings.repair_as {
        let sent = store.repair_stuck(settings.stale_published_after, REPAIRS_PER_SWEEP, requested_by).await?;
        metrics.repaired.inc_by(sent.len() as u64);
        if !sent.is_empty() {
            let first: Vec<i64> = sent.iter().take(10).map(|(order, _)| order.0).collect();
            tracing::warn!(
                count = sent.len(),
                first_orders = ?first,
                after_s = settings.stale_published_after.as_secs(),
                "orders published but never processed: sending them again (audited as repair)"
            );
        }
        repaired = sent.len();
    }
    let found = store.reconcile(settings.stale_published_after).await?;
    metrics.pending_without_outbox.set(found.pending_without_outbox);
    metrics.published_not_processed.set(found.published_not_processed);
    if found.pending_without_outbox > 0 {
        tracing::warn!(
            count = found.pending_without_outbox,
            "orders pending without an outbox row: they will never be published"
        );
    }
    if found.published_not_processed > 0 {
        tracing::warn!(
            count = found.published_not_processed,
            after_s = settings.stale_published_after.as_secs(),
            "orders published but not processed"
        );
    }
    Ok((found, repaired))
}

/// Starts the scheduler with the enabled jobs.
pub async fn start(store: Arc<dyn OutboxAdmin>, settings: Settings, metrics: Metrics) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    if !settings.retention_cron.trim().is_empty() {
        let (store, s, m) = (store.clone(), settings.clone(), metrics.clone());
        let guard = Arc::new(tokio::sync::Mutex::new(()));
        scheduler
            .add(Job::new_async(settings.retention_cron.as_str(), move |_, _| {
                let (store, s, m, guard) = (store.clone(), s.clone(), m.clone(), guard.clone());
                Box::pin(async move {
                    let Ok(_running) = guard.try_lock() else {
                        m.job_runs.with_label_values(&["retention", "skipped"]).inc();
                        tracing::info!("retention still running from the last tick; skipped");
                        return;
                    };
                    match retention_once(store.as_ref(), &s, &m).await {
                        Ok(Purged { outbox, inbox, dead_letters }) => {
                            m.job_runs.with_label_values(&["retention", "ok"]).inc();
                            tracing::info!(outbox, inbox, dead_letters, "retention deleted old rows");
                        }
                        Err(error) => {
                            m.job_runs.with_label_values(&["retention", "error"]).inc();
                            tracing::warn!(error = %Report::new(&error), "retention failed; next tick tries again");
                        }
                    }
                })
            })?)
            .await?;
    }
    if !settings.reconcile_cron.trim().is_empty() {
        let (store, s, m) = (store.clone(), settings.clone(), metrics.clone());
        let guard = Arc::new(tokio::sync::Mutex::new(()));
        scheduler
            .add(Job::new_async(settings.reconcile_cron.as_str(), move |_, _| {
                let (store, s, m, guard) = (store.clone(), s.clone(), m.clone(), guard.clone());
                Box::pin(async move {
                    let Ok(_running) = guard.try_lock() else {
                        m.job_runs.with_label_values(&["reconcile", "skipped"]).inc();
                        return;
                    };
                    let outcome = match reconcile_once(store.as_ref(), &s, &m).await {
                        Ok(_) => "ok",
                        Err(error) => {
                            tracing::warn!(error = %Report::new(&error), "reconciliation failed; next tick tries again");
                            "error"
                        }
                    };
                    m.job_runs.with_label_values(&["reconcile", outcome]).inc();
                })
            })?)
            .await?;
    }
    scheduler.start().await?;
    Ok(scheduler)
}
