//! The ops page's incident tools: failure groups (`GET /ops/groups`), a group
//! retried or replayed in one action, a dead letter replayed, and sent dead
//! letters purged.
//!
//! Invariant: like every ops action, each names who acts (`X-Requested-By`),
//! passes the admin door and is written to `outbox_audit` (`retry`, `replay`,
//! `purge-dead-letters`). Input is checked before the store is asked: a
//! malformed id, group or age answers 400, one that names nothing 404, never 500.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use schema::incidents::FINGERPRINT_UNITS;
use schema::limits::{DEAD_LETTER_ID_UNITS, utf16_len};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ops::{Ops, OpsError, acting};

/// Rows a purge deletes per statement, as retention does (small batches).
const PURGE_BATCH: u32 = 500;
/// The oldest age a purge takes: ten years (the SQL Server backend counts seconds in an INT).
const MAX_AGE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `GET /ops/groups`, and the actions behind the admin door.
pub(crate) fn router(ops: Ops) -> Router {
    let actions = Router::new()
        .route("/ops/replay", post(replay))
        .route("/ops/groups/retry", post(retry_group))
        .route("/ops/groups/replay", post(replay_group))
        .route("/ops/dead-letters/purge", post(purge))
        .route_layer(axum::middleware::from_fn_with_state(ops.token.clone(), service::require_admin));
    Router::new().route("/ops/groups", get(groups)).merge(actions).with_state(ops)
}

#[derive(Deserialize)]
struct Params {
    dead_letter_id: Option<String>,
    fingerprint: Option<String>,
    older_than: Option<String>,
}

/// `GET /ops/groups`: failed orders and open dead letters by the fingerprint of their reason, newest first.
async fn groups(State(ops): State<Ops>) -> Result<Json<Value>, OpsError> {
    Ok(Json(json!({ "groups": ops.store.failure_groups().await? })))
}

/// A text parameter: present, not empty, at most `units` UTF-16 units, no control characters.
fn text(raw: Option<String>, name: &str, units: usize) -> Result<String, OpsError> {
    let value = raw.ok_or_else(|| OpsError::BadRequest(format!("{name} is required")))?;
    if value.is_empty() || utf16_len(&value) > units || value.chars().any(char::is_control) {
        return Err(OpsError::BadRequest(format!(
            "{name} must be 1-{units} characters, none of them control characters"
        )));
    }
    Ok(value)
}

/// An age: `90` (seconds), or with a unit, `15m`, `12h`, `7d` (up to ten years).
fn age(raw: Option<String>) -> Result<Duration, OpsError> {
    let raw = raw.ok_or_else(|| OpsError::BadRequest("older_than is required, e.g. 7d".into()))?;
    let trimmed = raw.trim();
    let parsed = match trimmed.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(trimmed),
    };
    match parsed {
        Ok(age) if age <= MAX_AGE => Ok(age),
        _ => Err(OpsError::BadRequest(format!("{raw:?} is no age: say 3600, 90m, 12h or 7d (at most ten years)"))),
    }
}

/// `POST /ops/replay?dead_letter_id=ID`: the order the letter names is sent again.
async fn replay(State(ops): State<Ops>, headers: HeaderMap, Query(q): Query<Params>) -> Result<Json<Value>, OpsError> {
    let who = acting(&ops, &headers)?;
    let id = text(q.dead_letter_id, "dead_letter_id", DEAD_LETTER_ID_UNITS)?;
    let replayed = ops.store.replay_dead_letter(&id, &who).await?;
    tracing::warn!(requested_by = %who, dead_letter_id = %id, order_id = replayed.order_id.0, "dead letter replayed");
    Ok(Json(json!({ "replayed": [replayed], "skipped": [], "requested_by": who })))
}

/// `POST /ops/groups/retry?fingerprint=F`: every failed order of the group.
async fn retry_group(
    State(ops): State<Ops>,
    headers: HeaderMap,
    Query(q): Query<Params>,
) -> Result<Json<Value>, OpsError> {
    let (who, key) = (acting(&ops, &headers)?, text(q.fingerprint, "fingerprint", FINGERPRINT_UNITS)?);
    let retried = ops.store.retry_group(&key, &who).await?;
    if retried.is_empty() {
        return Err(OpsError::NotFound("no failed order in that group".into()));
    }
    tracing::warn!(requested_by = %who, fingerprint = %key, orders = retried.len(), "failure group retried");
    let retried: Vec<Value> = retried.iter().map(|(o, x)| json!({ "order_id": o, "outbox_id": x })).collect();
    Ok(Json(json!({ "retried": retried, "requested_by": who })))
}

/// `POST /ops/groups/replay?fingerprint=F`: every open dead letter of the group.
async fn replay_group(
    State(ops): State<Ops>,
    headers: HeaderMap,
    Query(q): Query<Params>,
) -> Result<Json<Value>, OpsError> {
    let (who, key) = (acting(&ops, &headers)?, text(q.fingerprint, "fingerprint", FINGERPRINT_UNITS)?);
    let report = ops.store.replay_group(&key, &who).await?;
    if report.replayed.is_empty() && report.skipped.is_empty() {
        return Err(OpsError::NotFound("no open dead letter in that group".into()));
    }
    tracing::warn!(requested_by = %who, fingerprint = %key, letters = report.replayed.len(), "failure group replayed");
    Ok(Json(json!({ "replayed": report.replayed, "skipped": report.skipped, "requested_by": who })))
}

/// `POST /ops/dead-letters/purge?older_than=7d`: deletes the dead letters sent
/// to the `.DLQ` longer ago than that (unsent and set-aside ones stay). The
/// audit entry is written first, so a purge is never unrecorded.
async fn purge(State(ops): State<Ops>, headers: HeaderMap, Query(q): Query<Params>) -> Result<Json<Value>, OpsError> {
    let who = acting(&ops, &headers)?;
    let older_than = age(q.older_than)?;
    ops.store.record_action(schema::AuditAction::PurgeDeadLetters, &who).await?;
    let mut purged = 0;
    loop {
        let n = ops.store.purge_dead_letters(older_than, PURGE_BATCH).await?;
        purged += n;
        if n < u64::from(PURGE_BATCH) {
            break;
        }
    }
    tracing::warn!(requested_by = %who, purged, older_than_secs = older_than.as_secs(), "dead letters purged");
    Ok(Json(json!({ "purged": purged, "older_than_seconds": older_than.as_secs(), "requested_by": who })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_seconds_or_humane_and_bounded() {
        let ok = |s: &str| age(Some(s.into())).ok();
        assert_eq!(ok("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(ok("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(ok(" 90m "), Some(Duration::from_secs(5400)));
        assert_eq!(ok("0"), Some(Duration::ZERO));
        for bad in ["", "-5", "seven days", "1e9", "11y", "99999999999999999999"] {
            assert!(ok(bad).is_none(), "{bad:?} is refused");
        }
        assert!(age(None).is_err());
    }

    #[test]
    fn ids_and_groups_are_bounded_text() {
        assert_eq!(text(Some("ID:a-1:1".into()), "id", 200).ok().as_deref(), Some("ID:a-1:1"));
        assert!(text(Some(String::new()), "id", 200).is_err());
        assert!(text(Some("x".repeat(201)), "id", 200).is_err());
        assert!(text(Some("a\nb".into()), "id", 200).is_err());
        assert!(text(None, "id", 200).is_err());
    }
}
