//! SQL Server: outbox ids that ascend in SQL Server's own `uniqueidentifier` order.
//!
//! `outbox.outbox_id` and `inbox.outbox_id` are clustered primary keys, and
//! SQL Server does not compare a `uniqueidentifier` byte by byte: it takes
//! bytes 10-15 of the id as written (`xxxxxxxx-xxxx-xxxx-xxxx-XXXXXXXXXXXX`)
//! first, then 8-9, 7-6, 5-4 and 3-0 last ("Comparing GUID and uniqueidentifier
//! Values", learn.microsoft.com/dotnet/framework/data/adonet/sql/comparing-guid-and-uniqueidentifier-values;
//! `SqlGuid.CompareTo` implements the same order over .NET's byte layout). A
//! UUIDv7 keeps its clock in bytes 0-5 and random bits in 10-15 (the uuid
//! crate puts there the low bits of a counter it reseeds at random every
//! millisecond), so under that order each new row lands on a random page of
//! the clustered index.
//!
//! Invariant: ids made by one process ascend strictly in SQL Server's order,
//! each later than the one before, even when the clock steps back. They are
//! RFC 9562 version-8 ids (custom layout); SQLite keeps UUIDv7
//! (`OutboxId::new`), whose bytes ascend in the order SQLite compares them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::{Builder, Uuid};

use crate::OutboxId;

/// Bits of the per-millisecond counter: the 16 bits of bytes 8-9 less the
/// two variant bits.
const COUNTER_BITS: u32 = 14;

/// The last id's (Unix milliseconds << COUNTER_BITS | counter), shared by the
/// whole process so that every pool and task draws from one sequence.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A new outbox id that sorts after every id this process made before it,
/// in SQL Server's `uniqueidentifier` order: a 48-bit Unix millisecond
/// timestamp in bytes 10-15 (big-endian), a 14-bit counter for ids of the
/// same millisecond in bytes 8-9 (under the variant bits), the version in the
/// high nibble of byte 6, and random bits everywhere else.
pub(super) fn outbox_id() -> OutboxId {
    OutboxId(layout(next(&LAST, unix_ms()), Uuid::new_v4().into_bytes()))
}

fn unix_ms() -> u64 {
    // A clock before 1970 reads as 0: `next` still goes on ascending.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Moves `last` to `max(now_ms << COUNTER_BITS, last + 1)` and returns it: the
/// counter runs within a millisecond, carries into the timestamp when it
/// overflows, and keeps counting while the clock is behind the last id.
fn next(last: &AtomicU64, now_ms: u64) -> u64 {
    let floor = now_ms << COUNTER_BITS;
    let mut seen = last.load(Ordering::Relaxed);
    loop {
        let state = floor.max(seen + 1);
        match last.compare_exchange_weak(seen, state, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return state,
            Err(current) => seen = current,
        }
    }
}

/// Lays `state` (timestamp and counter) over `random`, in the bytes SQL
/// Server compares first.
fn layout(state: u64, random: [u8; 16]) -> Uuid {
    let mut bytes = random;
    let millis = (state >> COUNTER_BITS).to_be_bytes();
    bytes[10..16].copy_from_slice(&millis[2..8]);
    let counter = (state & ((1 << COUNTER_BITS) - 1)) as u16;
    bytes[8..10].copy_from_slice(&counter.to_be_bytes());
    // Sets the version (8) in byte 6 and the variant (10) in the top bits of
    // byte 8, which the counter leaves free.
    Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    /// SQL Server's documented comparison order for `uniqueidentifier`, by
    /// byte of the id as written (`d0 d1 d2 d3 - d4 d5 - d6 d7 - d8 d9 -
    /// d10 … d15`), most significant first: d10 to d15, then d8, d9, then d7,
    /// d6, then d5, d4, then d3, d2, d1, d0. This is `SqlGuid.CompareTo`'s
    /// order (bytes 10, 11, 12, 13, 14, 15, 8, 9, 6, 7, 4, 5, 0, 1, 2, 3 of
    /// .NET's `Guid.ToByteArray`, which stores the first three groups
    /// little-endian), and the one "Comparing GUID and uniqueidentifier Values"
    /// shows sorting.
    fn sql_server_cmp(a: &Uuid, b: &Uuid) -> Ordering {
        const ORDER: [usize; 16] = [10, 11, 12, 13, 14, 15, 8, 9, 7, 6, 5, 4, 3, 2, 1, 0];
        let (a, b) = (a.as_bytes(), b.as_bytes());
        ORDER.iter().map(|&i| a[i].cmp(&b[i])).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    }

    fn ascend_strictly(ids: &[Uuid]) -> bool {
        ids.windows(2).all(|w| sql_server_cmp(&w[0], &w[1]) == Ordering::Less)
    }

    fn uuid(text: &str) -> Uuid {
        Uuid::parse_str(text).unwrap()
    }

    #[test]
    fn the_comparator_orders_ids_as_sql_server_documents() {
        // Each id has one byte set, and each is greater than the ones above
        // it: d0 is the least significant byte, d10 the most.
        let ladder = [
            "01000000-0000-0000-0000-000000000000", // d0
            "00010000-0000-0000-0000-000000000000", // d1
            "00000100-0000-0000-0000-000000000000", // d2
            "00000001-0000-0000-0000-000000000000", // d3
            "00000000-0100-0000-0000-000000000000", // d4
            "00000000-0001-0000-0000-000000000000", // d5
            "00000000-0000-0100-0000-000000000000", // d6
            "00000000-0000-0001-0000-000000000000", // d7
            "00000000-0000-0000-0001-000000000000", // d9
            "00000000-0000-0000-0100-000000000000", // d8
            "00000000-0000-0000-0000-000000000001", // d15
            "00000000-0000-0000-0000-000000000100", // d14
            "00000000-0000-0000-0000-000000010000", // d13
            "00000000-0000-0000-0000-000001000000", // d12
            "00000000-0000-0000-0000-000100000000", // d11
            "00000000-0000-0000-0000-010000000000", // d10
        ]
        .map(uuid);
        assert!(ascend_strictly(&ladder));
        // Bytes 10-15 outweigh all the others together.
        let low = uuid("ffffffff-ffff-ffff-ffff-000000000000");
        assert_eq!(sql_server_cmp(&low, &uuid("00000000-0000-0000-0000-000000000001")), Ordering::Less);
        // The documented example: sorted as SqlGuid, the last group decides.
        let mut sorted = [
            "3aaaaaaa-bbbb-cccc-dddd-2eeeeeeeeeee",
            "2aaaaaaa-bbbb-cccc-dddd-1eeeeeeeeeee",
            "1aaaaaaa-bbbb-cccc-dddd-3eeeeeeeeeee",
        ]
        .map(uuid);
        sorted.sort_by(sql_server_cmp);
        let expected = [
            "2aaaaaaa-bbbb-cccc-dddd-1eeeeeeeeeee",
            "3aaaaaaa-bbbb-cccc-dddd-2eeeeeeeeeee",
            "1aaaaaaa-bbbb-cccc-dddd-3eeeeeeeeeee",
        ]
        .map(uuid);
        assert_eq!(sorted, expected);
    }

    #[test]
    fn ids_made_in_sequence_ascend_in_sql_server_order() {
        let ids: Vec<Uuid> = (0..100_000).map(|_| outbox_id().0).collect();
        assert!(ascend_strictly(&ids));
        let millis = |id: &Uuid| id.as_bytes()[10..16].to_vec();
        let shared = ids.windows(2).filter(|w| millis(&w[0]) == millis(&w[1])).count();
        let crossed = ids.len() - 1 - shared;
        assert!(shared > 0 && crossed > 0, "many share a millisecond ({shared}), some cross one ({crossed})");
    }

    #[test]
    fn ids_ascend_across_milliseconds_counter_overflow_and_a_clock_that_steps_back() {
        let last = AtomicU64::new(0);
        let t = 1_750_000_000_000;
        let mut states = vec![next(&last, t), next(&last, t), next(&last, t + 1), next(&last, t + 5)];
        // The counter runs out within one millisecond and carries on.
        states.extend((0..(1 << COUNTER_BITS) + 10).map(|_| next(&last, t + 5)));
        // The clock steps back a second, then catches up.
        states.extend([next(&last, t - 1_000), next(&last, t - 999), next(&last, t + 10), next(&last, t + 10)]);
        let ids: Vec<Uuid> = states.iter().map(|&s| layout(s, Uuid::new_v4().into_bytes())).collect();
        assert!(ascend_strictly(&ids));
        assert_eq!(&ids[0].as_bytes()[10..16], &t.to_be_bytes()[2..8], "the timestamp, big-endian, in d10..d15");
        assert_eq!(&ids[1].as_bytes()[8..10], &[0x80, 0x01], "the variant over the counter in d8, d9");
    }

    #[test]
    fn uuid_v7_ids_made_in_sequence_do_not_ascend_in_sql_server_order() {
        // Within one millisecond the uuid crate's counter ascends in bytes
        // 10-11 too; it is reseeded at random in each new one. Over 64
        // milliseconds v7 ids ascend in SQL Server's order by chance about
        // once in 2^64 runs.
        let millis = |id: &Uuid| id.as_bytes()[..6].to_vec();
        let mut ids = vec![OutboxId::new().0];
        let mut crossed = 0;
        while crossed < 64 {
            let id = OutboxId::new().0;
            crossed += usize::from(millis(&id) != millis(&ids[ids.len() - 1]));
            ids.push(id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "they ascend byte by byte, as SQLite compares");
        assert!(!ascend_strictly(&ids));
    }

    #[test]
    fn ids_are_rfc_9562_version_8() {
        for _ in 0..1_000 {
            let id = outbox_id().0;
            assert_eq!(id.get_version_num(), 8);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
    }
}
