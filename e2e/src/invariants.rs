//! What must hold at the end of any run, written once for the end-to-end
//! tests and the chaos run: every order placed is processed exactly once at
//! the right price, every outbox row is published and applied once, and the
//! per-status counters agree with the rows.
//!
//! Invariant: [`violations`] is a pure function of the database's figures, and
//! says every broken rule with its numbers; an empty list means all hold.

use schema::OrderCounts;
use schema::testing::{Probe, Tally};

/// How many orders the run expects in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this many (a test that placed them all itself).
    Exactly(i64),
    /// At least this many: a load whose timed-out requests may have been placed all the same.
    AtLeast(i64),
}

/// Every invariant that `tally` and `counts` break, as sentences with their numbers.
pub fn violations(expected: Expected, t: &Tally, counts: &OrderCounts) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            found.push(what);
        }
    };
    match expected {
        Expected::Exactly(n) => check(t.orders == n, format!("{} orders in the database, {n} were placed", t.orders)),
        Expected::AtLeast(n) => check(t.orders >= n, format!("{} orders in the database, {n} were accepted", t.orders)),
    }
    check(t.processed == t.orders, format!("{} of {} orders processed ({} failed)", t.processed, t.orders, t.failed));
    check(t.outbox == t.orders, format!("{} outbox rows for {} orders", t.outbox, t.orders));
    check(t.unpublished == 0 && t.parked == 0, format!("{} rows unpublished, {} parked", t.unpublished, t.parked));
    check(t.inbox == t.orders, format!("{} inbox rows for {} orders", t.inbox, t.orders));
    check(
        t.inbox_from_outbox == t.orders,
        format!("{} outbox messages applied for {} orders", t.inbox_from_outbox, t.orders),
    );
    check(t.mispriced == 0, format!("{} orders mispriced", t.mispriced));
    let pending = t.orders - t.processed - t.failed - t.published;
    let counted = (counts.pending, counts.published, counts.processed, counts.failed);
    check(
        counted == (pending, t.published, t.processed, t.failed),
        format!(
            "the counters say {counted:?} (pending, published, processed, failed), the rows {:?}",
            (pending, t.published, t.processed, t.failed)
        ),
    );
    found
}

/// Reads the figures from `store` and `probe` and checks them.
pub async fn check(store: &dyn schema::Store, probe: &dyn Probe, expected: Expected) -> anyhow::Result<Vec<String>> {
    let tally = probe.tally().await?;
    let counts = store.order_counts().await?;
    Ok(violations(expected, &tally, &counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(n: i64) -> (Tally, OrderCounts) {
        let tally = Tally {
            orders: n,
            processed: n,
            outbox: n,
            published_rows: n,
            inbox: n,
            inbox_from_outbox: n,
            ..Tally::default()
        };
        (tally, OrderCounts { processed: n, ..OrderCounts::default() })
    }

    #[test]
    fn a_settled_run_breaks_nothing() {
        let (t, counts) = settled(5);
        assert!(violations(Expected::Exactly(5), &t, &counts).is_empty());
        assert!(violations(Expected::AtLeast(3), &t, &counts).is_empty());
    }

    #[test]
    fn an_order_lost_or_doubled_is_named_with_its_numbers() {
        let (t, counts) = settled(5);
        assert_eq!(violations(Expected::Exactly(6), &t, &counts), ["5 orders in the database, 6 were placed"]);
        let doubled = Tally { inbox: 6, ..t };
        assert_eq!(violations(Expected::AtLeast(5), &doubled, &counts), ["6 inbox rows for 5 orders"]);
    }

    #[test]
    fn an_unprocessed_order_breaks_the_rule_and_the_counters_must_say_so() {
        let (t, _) = settled(5);
        let stuck = Tally { processed: 4, published: 1, ..t };
        let counts = OrderCounts { processed: 4, published: 1, ..OrderCounts::default() };
        assert_eq!(violations(Expected::Exactly(5), &stuck, &counts), ["4 of 5 orders processed (0 failed)"]);
        let wrong = OrderCounts { processed: 5, ..OrderCounts::default() };
        assert_eq!(violations(Expected::Exactly(5), &stuck, &wrong).len(), 2);
    }
}
