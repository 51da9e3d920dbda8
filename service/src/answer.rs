//! How an operator route answers a store error: what the operator can do
//! about it, as an HTTP status and a message.
//!
//! Invariant: the cause of an unexpected failure (500) is logged here and
//! never shown; every other answer shows the error with its chain.

use axum::http::StatusCode;
use error_reporter::Report;
use schema::StoreError;

/// The status and message an operator route answers `error` with.
pub fn operator_answer(error: &StoreError) -> (StatusCode, String) {
    match error {
        StoreError::NotFound => (StatusCode::NOT_FOUND, "not found".into()),
        StoreError::Conflict(cause) => (StatusCode::CONFLICT, Report::new(cause).to_string()),
        StoreError::Invalid(cause) => (StatusCode::UNPROCESSABLE_ENTITY, Report::new(cause).to_string()),
        StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, Report::new(error).to_string()),
        StoreError::Other(_) => {
            tracing::error!(error = %Report::new(error), "operator request failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        }
    }
}
