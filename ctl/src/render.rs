//! The producer's answers as tables and sentences for people.
//!
//! Invariant: text drawn from data (reasons, broker errors, names) is printed
//! with its control characters escaped, so a hostile message can never move
//! the cursor or recolour an operator's terminal.

use crate::answers::{
    DeadLetter, Group, Parked, Purged, RelayAction, Replayed, Requeued, Retried, RetriedOrder, State, Stored,
};

/// Text as it is, its control characters escaped.
pub(crate) fn clean(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

/// A cell that may be empty: `-` for none.
fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |v| clean(&v.to_string()))
}

/// Rows under headers, each column as wide as its widest cell; `(none)` for no rows.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return "(none)\n".into();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let padded: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i == last { c } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `status`: services in words, backlog, relays, reconciliation.
pub(crate) fn status(s: &State) -> String {
    let services: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|v| {
            let ready = if v.ready { "ready" } else { "NOT READY" };
            vec![clean(&v.name), ready.to_string(), clean(&v.words)]
        })
        .collect();
    let relays: Vec<Vec<String>> = s
        .relays
        .iter()
        .map(|r| {
            let (id, paused) = match &r.status {
                None => ("-".to_string(), "unreachable".to_string()),
                Some(status) => (or_dash(status.relay_id.as_deref()), or_dash(status.paused)),
            };
            vec![r.index.to_string(), clean(&r.url), id, paused]
        })
        .collect();
    let services = table(&["SERVICE", "READY", "STATE"], services);
    let relays = table(&["RELAY", "ADMIN PORT", "ID", "PAUSED"], relays);
    match &s.stored {
        Stored::Read { outbox: o, reconciliation: r, .. } => format!(
            "{services}\noutbox: {} pending, oldest {:.1} s, {} parked\n\n{relays}\nreconciliation: {} pending without an outbox row, {} published and not processed after {} s\n",
            o.pending,
            o.oldest_pending_seconds,
            o.parked,
            r.pending_without_outbox,
            r.published_not_processed,
            s.stale_after_seconds,
        ),
        Stored::Unreachable { database_error } => {
            format!("{services}\ndatabase: cannot be reached ({})\n\n{relays}", clean(database_error))
        }
    }
}

/// `parked`.
pub(crate) fn parked(list: &[Parked]) -> String {
    let rows = list
        .iter()
        .map(|p| {
            let error = or_dash(p.last_error.as_deref());
            vec![p.outbox_id.to_string(), p.order_id.to_string(), p.attempts.to_string(), clean(&p.dead_at), error]
        })
        .collect();
    table(&["OUTBOX ROW", "ORDER", "ATTEMPTS", "PARKED AT", "BROKER ERROR"], rows)
}

/// `dead-letters`.
pub(crate) fn dead_letters(list: &[DeadLetter]) -> String {
    let rows = list
        .iter()
        .map(|d| {
            vec![
                clean(&d.created_at),
                clean(&d.dead_letter_id),
                or_dash(d.order_id),
                or_dash(d.sent_at.as_deref()),
                or_dash(d.replayed_at.as_deref()),
                clean(&d.reason),
            ]
        })
        .collect();
    table(&["WRITTEN", "ID", "ORDER", "REACHED .DLQ", "REPLAYED", "REASON"], rows)
}

/// `groups`.
pub(crate) fn groups(list: &[Group]) -> String {
    let rows = list
        .iter()
        .map(|g| {
            let (failed, letters) = (g.failed_orders.to_string(), g.dead_letters.to_string());
            vec![failed, letters, clean(&g.newest_at), clean(&g.fingerprint), clean(&g.example)]
        })
        .collect();
    table(&["FAILED", "DEAD LETTERS", "NEWEST", "FINGERPRINT (--group)", "NEWEST REASON"], rows)
}

/// `pause`, `resume`, `drain`: the relay's own answer.
pub(crate) fn relay(answer: &RelayAction) -> String {
    let state = if answer.paused { "paused" } else { "running" };
    let released = answer.leases_released.map_or_else(String::new, |n| format!(", {n} leases released"));
    format!("done: relay {state}{released} (by {})\n", clean(&answer.requested_by))
}

/// `requeue`.
pub(crate) fn requeued(answer: &Requeued) -> String {
    let ids: Vec<String> = answer.requeued.iter().map(ToString::to_string).collect();
    format!("requeued {} (by {})\n", ids.join(", "), clean(&answer.requested_by))
}

/// `retry`, one order or a group.
pub(crate) fn retried(answer: &Retried) -> String {
    let list: &[RetriedOrder] = match answer {
        Retried::Group { retried } => retried,
        Retried::One(one) => std::slice::from_ref(one),
    };
    let rows = list.iter().map(|r| vec![r.order_id.to_string(), r.outbox_id.to_string()]).collect();
    table(&["ORDER", "NEW OUTBOX ROW"], rows)
}

/// `replay`, one letter or a group.
pub(crate) fn replayed(answer: &Replayed) -> String {
    let rows = answer
        .replayed
        .iter()
        .map(|r| vec![clean(&r.dead_letter_id), r.order_id.to_string(), r.outbox_id.to_string()])
        .collect();
    let done = table(&["DEAD LETTER", "ORDER", "NEW OUTBOX ROW"], rows);
    let skipped: Vec<Vec<String>> =
        answer.skipped.iter().map(|s| vec![clean(&s.dead_letter_id), clean(&s.reason)]).collect();
    match skipped.is_empty() {
        true => done,
        false => format!("{done}\nskipped:\n{}", table(&["DEAD LETTER", "WHY"], skipped)),
    }
}

/// `purge`.
pub(crate) fn purged(answer: &Purged) -> String {
    format!("purged {} dead letters sent to the .DLQ more than {} s ago\n", answer.purged, answer.older_than_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::parse;

    fn read<T: serde::de::DeserializeOwned>(json: &str) -> T {
        parse::<T>(json.as_bytes()).unwrap().1
    }

    #[test]
    fn tables_line_up_and_escape_what_data_could_use_against_a_terminal() {
        let list: Vec<DeadLetter> = read(
            r#"[
            { "dead_letter_id": "ID:1", "order_id": 7, "created_at": "t1", "sent_at": null, "replayed_at": null,
              "reason": "evil \u001b[2J reason" },
            { "dead_letter_id": "ID:22", "order_id": null, "created_at": "t2", "sent_at": "t3", "replayed_at": "t4",
              "reason": "ok" }
        ]"#,
        );
        let text = dead_letters(&list);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("evil \\u{1b}[2J reason"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "WRITTEN  ID     ORDER  REACHED .DLQ  REPLAYED  REASON");
        assert_eq!(lines[2], "t2       ID:22  -      t3            t4        ok");
        assert_eq!(groups(&[]), "(none)\n");
    }

    #[test]
    fn one_retry_and_a_group_retry_read_alike() {
        let id = "00000000-0000-0000-0000-000000000009";
        let one = retried(&read(&format!(r#"{{ "order_id": 5, "outbox_id": "{id}", "requested_by": "ann" }}"#)));
        let group = retried(&read(&format!(
            r#"{{ "retried": [{{ "order_id": 5, "outbox_id": "{id}" }}], "requested_by": "ann" }}"#
        )));
        assert_eq!(one, group);
        let replay =
            replayed(&read(r#"{ "replayed": [], "skipped": [{ "dead_letter_id": "ID:9", "reason": "no order" }] }"#));
        assert!(replay.starts_with("(none)\n\nskipped:\n") && replay.ends_with("ID:9         no order\n"), "{replay}");
    }

    #[test]
    fn a_relay_action_says_what_the_relay_did() {
        let drained = relay(&read(r#"{ "paused": true, "leases_released": 3, "requested_by": "ann" }"#));
        assert_eq!(drained, "done: relay paused, 3 leases released (by ann)\n");
        assert_eq!(relay(&read(r#"{ "paused": false, "requested_by": "ann" }"#)), "done: relay running (by ann)\n");
    }
}
