//! SQLite's busy handler, ours instead of the built-in one.
//!
//! The built-in handler (`busy_timeout`) sleeps 1, 2, 5, 10, 15, 20, 25, 50,
//! 100 ms between tries, so a writer that finds the lock taken by another
//! process for a fraction of a millisecond often waits tens of milliseconds:
//! with the producer, the relays and the consumer writing to one file, that was
//! most of the pipeline's end-to-end latency under `synchronous = FULL`.
//! This one retries after 100 µs at first, backs off to 1 ms after 20 ms and to
//! 10 ms after half a second, and gives up at the store's busy timeout.
//!
//! Invariant: the timeout is per call: [`with_timeout`] sets it on the worker
//! thread that runs the call (a busy handler is a plain function, so it lives
//! in a thread-local), and the handler measures from its first try.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static TIMEOUT: Cell<Duration> = const { Cell::new(Duration::from_secs(10)) };
    static SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `timeout` as the busy timeout of this thread's SQLite calls.
pub(super) fn with_timeout<T>(timeout: Duration, f: impl FnOnce() -> T) -> T {
    TIMEOUT.with(|t| t.set(timeout));
    f()
}

/// The handler: `true` to try again, `false` to give up with SQLITE_BUSY.
pub(super) fn on_busy(attempt: i32) -> bool {
    let now = Instant::now();
    let since = match SINCE.with(Cell::get) {
        Some(since) if attempt > 0 => since,
        _ => {
            SINCE.with(|s| s.set(Some(now)));
            now
        }
    };
    let waited = now - since;
    if waited >= TIMEOUT.with(Cell::get) {
        return false;
    }
    std::thread::sleep(pause(waited));
    true
}

/// The pause before the next try, after `waited` of waiting.
fn pause(waited: Duration) -> Duration {
    match waited.as_millis() {
        0..20 => Duration::from_micros(100),
        20..500 => Duration::from_millis(1),
        _ => Duration::from_millis(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_at_the_timeout_measured_from_the_first_try() {
        let started = Instant::now();
        let tries = with_timeout(Duration::from_millis(30), || (0..).take_while(|n| on_busy(*n)).count());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(30) && took < Duration::from_secs(1), "{took:?}");
        assert!(tries > 1, "{tries} tries");
        // A new wait starts its own clock.
        assert!(with_timeout(Duration::from_millis(30), || on_busy(0)));
    }

    #[test]
    fn short_pauses_first_then_longer() {
        let at = |ms| pause(Duration::from_millis(ms));
        assert_eq!((at(0), at(19)), (Duration::from_micros(100), Duration::from_micros(100)));
        assert_eq!((at(20), at(499)), (Duration::from_millis(1), Duration::from_millis(1)));
        assert_eq!(at(500), Duration::from_millis(10));
    }
}
