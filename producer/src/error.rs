//! The JSON API's one error type.
//!
//! Invariant: 4xx answers say what to fix; a 5xx logs its cause and never shows it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use error_reporter::Report;
use schema::StoreError;

use crate::validation::FieldError;

/// Everything an API handler can answer besides success.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request could not be read (malformed JSON, bad header).
    BadRequest(String),
    /// 422: the request was read but its fields are invalid.
    Invalid(Vec<FieldError>),
    /// 404.
    NotFound,
    /// 413: the body is larger than the limit.
    TooLarge(String),
    /// 422: the `Idempotency-Key` was used before for a different order.
    KeyReused(String),
    /// 409: the request collides with data that exists (a duplicate key).
    Conflict(String),
    /// 422 without field detail: the database refused the data as it stands
    /// (retrying the same request fails the same way).
    Rejected(String),
    /// 503: the database is unavailable; the client may retry.
    Unavailable(String),
    /// 500: a bug or an unexpected failure; logged, not shown.
    Internal(String),
}

/// The body of every error answer of the JSON API.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Each invalid field (422 for invalid fields only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

fn body(error: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody { error: error.into(), errors: None })
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let cause = Report::new(&e).to_string();
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Unavailable(_) => ApiError::Unavailable(cause),
            StoreError::Conflict(_) => {
                tracing::warn!(error = %cause, "duplicate key");
                ApiError::Conflict("the request conflicts with an existing order".into())
            }
            StoreError::Invalid(_) => {
                tracing::warn!(error = %cause, "rejected by the database");
                ApiError::Rejected("the order was refused by the database: a value is out of range".into())
            }
            StoreError::Other(_) => ApiError::Internal(cause),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge(format!("the request body is larger than {} bytes", crate::assets::MAX_BODY_BYTES))
            }
            _ => ApiError::BadRequest(format!("the request body could not be read: {rejection}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, body(message)).into_response(),
            ApiError::Invalid(errors) => {
                let answer = ErrorBody { error: "invalid order".into(), errors: Some(errors) };
                (StatusCode::UNPROCESSABLE_ENTITY, Json(answer)).into_response()
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, body("not found")).into_response(),
            ApiError::TooLarge(message) => (StatusCode::PAYLOAD_TOO_LARGE, body(message)).into_response(),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, body(message)).into_response(),
            ApiError::Rejected(message) | ApiError::KeyReused(message) => {
                (StatusCode::UNPROCESSABLE_ENTITY, body(message)).into_response()
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                let mut response =
                    (StatusCode::SERVICE_UNAVAILABLE, body("temporarily unavailable, retry shortly")).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, body("internal error")).into_response()
            }
        }
    }
}
