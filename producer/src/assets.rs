//! The pages' static files and the headers every answer carries.
//!
//! Invariant: pages run no inline script or style, so the content security
//! policy allows only this origin's files; request bodies stop at
//! [`MAX_BODY_BYTES`] (413).

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Largest request body read (an order is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /static/{name}`: the stylesheet and the pages' scripts, built into the binary.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.css" => (include_str!("../static/app.css"), "text/css; charset=utf-8"),
        "orders.js" => (include_str!("../static/orders.js"), "text/javascript; charset=utf-8"),
        "order.js" => (include_str!("../static/order.js"), "text/javascript; charset=utf-8"),
        "ops.js" => (include_str!("../static/ops.js"), "text/javascript; charset=utf-8"),
        // The ops page's charts, and uPlot (vendored from npm, MIT: see static/uPlot.LICENSE).
        "charts.js" => (include_str!("../static/charts.js"), "text/javascript; charset=utf-8"),
        "charts.css" => (include_str!("../static/charts.css"), "text/css; charset=utf-8"),
        "uPlot.iife.min.js" => (include_str!("../static/uPlot.iife.min.js"), "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (include_str!("../static/uPlot.min.css"), "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// Adds the security headers every answer carries.
pub(crate) fn add_security_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers
        .insert(header::HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
}
