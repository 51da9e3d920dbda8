//! The error every store method returns, phrased as what the caller can do.
//!
//! Invariant: a variant's `Display` names only its class; the database's own
//! error is its source, kept whole ([`Cause`]).

use std::fmt;
use std::sync::Arc;

/// What went wrong in the store, phrased as what the caller can do about it.
///
/// Each variant's `Display` names only the class; the database's own error is
/// its [`source`](std::error::Error::source). Show it to people through
/// `error_reporter::Report` (`database unavailable: sqlite pool: timed out ...`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A unique key already exists, or the row is not in the state the call needs.
    #[error("conflict")]
    Conflict(#[source] Cause),
    /// Transient: the database is unreachable, busy, or chose us as a deadlock victim. Retry.
    #[error("database unavailable")]
    Unavailable(#[source] Cause),
    /// Permanent: the data breaks a rule of the database (a text too long, a
    /// value out of range, a constraint). The same call fails the same way again.
    #[error("rejected by the database")]
    Invalid(#[source] Cause),
    /// Anything else; retrying will not help.
    #[error("database error")]
    Other(#[source] Cause),
}

impl StoreError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The error beneath a [`StoreError`], whole with its own sources; shared, so
/// that the error stays `Clone` (a group commit answers every order with it).
#[derive(Clone)]
pub struct Cause(Arc<anyhow::Error>);

impl Cause {
    /// Keeps `error` (a driver error, or an `anyhow` chain with context).
    pub fn new(error: impl Into<anyhow::Error>) -> Self {
        Self(Arc::new(error.into()))
    }

    /// A cause that is only a message.
    pub fn msg(message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        Self::new(anyhow::Error::msg(message))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
