//! The producer's JSON answers as tables and sentences for people.
//!
//! Invariant: text drawn from data (reasons, broker errors, names) is printed
//! with its control characters escaped, so a hostile message can never move
//! the cursor or recolour an operator's terminal.

use serde_json::Value;

/// A cell: a string as it is, anything else as JSON, `-` for null; control characters escaped.
fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
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

fn rows(list: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter().map(|item| fields.iter().map(|f| cell(&item[*f])).collect()).collect()
}

/// `status`: services in words, backlog, relays, reconciliation.
pub(crate) fn status(s: &Value) -> String {
    let services: Vec<Vec<String>> = s["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let ready = if v["ready"] == true { "ready" } else { "NOT READY" };
            vec![cell(&v["name"]), ready.to_string(), cell(&v["words"])]
        })
        .collect();
    let relays: Vec<Vec<String>> = s["relays"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let paused = match &r["status"]["paused"] {
                Value::Null => "unreachable".to_string(),
                p => cell(p),
            };
            vec![cell(&r["index"]), cell(&r["url"]), cell(&r["status"]["relay_id"]), paused]
        })
        .collect();
    let o = &s["outbox"];
    let r = &s["reconciliation"];
    format!(
        "{}\noutbox: {} pending, oldest {:.1} s, {} parked\n\n{}\nreconciliation: {} pending without an outbox row, {} published and not processed after {} s\n",
        table(&["SERVICE", "READY", "STATE"], services),
        cell(&o["pending"]),
        o["oldest_pending_seconds"].as_f64().unwrap_or(0.0),
        cell(&o["parked"]),
        table(&["RELAY", "ADMIN PORT", "ID", "PAUSED"], relays),
        cell(&r["pending_without_outbox"]),
        cell(&r["published_not_processed"]),
        cell(&s["stale_after_seconds"]),
    )
}

/// `parked`.
pub(crate) fn parked(list: &Value) -> String {
    let fields = ["outbox_id", "order_id", "attempts", "dead_at", "last_error"];
    table(&["OUTBOX ROW", "ORDER", "ATTEMPTS", "PARKED AT", "BROKER ERROR"], rows(list, &fields))
}

/// `dead-letters`.
pub(crate) fn dead_letters(list: &Value) -> String {
    let fields = ["created_at", "dead_letter_id", "order_id", "sent_at", "replayed_at", "reason"];
    table(&["WRITTEN", "ID", "ORDER", "REACHED .DLQ", "REPLAYED", "REASON"], rows(list, &fields))
}

/// `groups`.
pub(crate) fn groups(list: &Value) -> String {
    let fields = ["failed_orders", "dead_letters", "newest_at", "fingerprint", "example"];
    table(&["FAILED", "DEAD LETTERS", "NEWEST", "FINGERPRINT (--group)", "NEWEST REASON"], rows(list, &fields))
}

/// `pause`, `resume`, `drain`: the relay's own answer.
pub(crate) fn relay(answer: &Value) -> String {
    format!("done: {}\n", cell(answer))
}

/// `requeue`.
pub(crate) fn requeued(answer: &Value) -> String {
    let ids: Vec<String> =
        answer["requeued"].as_array().map(Vec::as_slice).unwrap_or_default().iter().map(cell).collect();
    format!("requeued {} (by {})\n", ids.join(", "), cell(&answer["requested_by"]))
}

/// `retry`, one order or a group.
pub(crate) fn retried(answer: &Value) -> String {
    let list = match &answer["retried"] {
        Value::Null => Value::Array(vec![answer.clone()]),
        list => list.clone(),
    };
    table(&["ORDER", "NEW OUTBOX ROW"], rows(&list, &["order_id", "outbox_id"]))
}

/// `replay`, one letter or a group.
pub(crate) fn replayed(answer: &Value) -> String {
    let done = table(
        &["DEAD LETTER", "ORDER", "NEW OUTBOX ROW"],
        rows(&answer["replayed"], &["dead_letter_id", "order_id", "outbox_id"]),
    );
    let skipped = rows(&answer["skipped"], &["dead_letter_id", "reason"]);
    match skipped.is_empty() {
        true => done,
        false => format!("{done}\nskipped:\n{}", table(&["DEAD LETTER", "WHY"], skipped)),
    }
}

/// `purge`.
pub(crate) fn purged(answer: &Value) -> String {
    format!(
        "purged {} dead letters sent to the .DLQ more than {} s ago\n",
        cell(&answer["purged"]),
        cell(&answer["older_than_seconds"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_line_up_and_escape_what_data_could_use_against_a_terminal() {
        let list = json!([
            { "dead_letter_id": "ID:1", "order_id": 7, "created_at": "t1", "sent_at": null, "replayed_at": null,
              "reason": "evil \u{1b}[2J reason" },
            { "dead_letter_id": "ID:22", "order_id": null, "created_at": "t2", "sent_at": "t3", "replayed_at": "t4",
              "reason": "ok" },
        ]);
        let text = dead_letters(&list);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("evil \\u{1b}[2J reason"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "WRITTEN  ID     ORDER  REACHED .DLQ  REPLAYED  REASON");
        assert_eq!(lines[2], "t2       ID:22  -      t3            t4        ok");
        assert_eq!(groups(&json!([])), "(none)\n");
    }

    #[test]
    fn one_retry_and_a_group_retry_read_alike() {
        let one = retried(&json!({ "order_id": 5, "outbox_id": "x", "requested_by": "ann" }));
        let group = retried(&json!({ "retried": [{ "order_id": 5, "outbox_id": "x" }], "requested_by": "ann" }));
        assert_eq!(one, group);
        let replay =
            replayed(&json!({ "replayed": [], "skipped": [{ "dead_letter_id": "ID:9", "reason": "no order" }] }));
        assert!(replay.starts_with("(none)\n\nskipped:\n") && replay.ends_with("ID:9         no order\n"), "{replay}");
    }
}
