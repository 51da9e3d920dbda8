//! The admin door: who may use an admin port's mutating routes.
//!
//! Invariant: with `ADMIN_TOKEN` set, a mutating route answers 401 unless the
//! request carries `Authorization: Bearer <token>` (compared in constant time);
//! without one, the admin port must be bound to loopback (checked at start-up),
//! a request must be addressed to a loopback name (`Host` 127.0.0.1, [::1] or
//! localhost, so a DNS-rebinding page that reaches the port under its own name
//! is refused) and a request a browser sent from another origin is refused, both
//! with 403, so a web page cannot drive the relay. Read-only routes stay open.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// The shared secret of the mutating admin routes, if any.
#[derive(Clone, Default)]
pub struct AdminToken(Option<Arc<str>>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "AdminToken(set)" } else { "AdminToken(none)" })
    }
}

impl AdminToken {
    /// `ADMIN_TOKEN`'s value; empty means none.
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(str::trim).filter(|t| !t.is_empty()).map(Arc::from))
    }

    /// True when a token is configured.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The `Authorization` header value a client sends, when a token is set.
    pub fn bearer(&self) -> Option<String> {
        self.0.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Refuses to expose an admin port beyond loopback without a token.
    pub(crate) fn check_bind(&self, admin_addr: SocketAddr) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.is_set() || admin_addr.ip().is_loopback(),
            "ADMIN_ADDR {admin_addr} is reachable from other machines but ADMIN_TOKEN is not set: set ADMIN_TOKEN \
             (operators then send `Authorization: Bearer <token>`) or bind the admin port to 127.0.0.1"
        );
        Ok(())
    }

    fn admits(&self, request: &Request) -> Result<(), (StatusCode, &'static str)> {
        match &self.0 {
            Some(token) => {
                let given = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                match bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                    true => Ok(()),
                    false => {
                        Err((StatusCode::UNAUTHORIZED, "this admin action needs `Authorization: Bearer <ADMIN_TOKEN>`"))
                    }
                }
            }
            None => {
                let headers = request.headers();
                let host = headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .or_else(|| request.uri().authority().map(|a| a.as_str()))
                    .filter(|host| is_loopback_host(host))
                    .ok_or((
                        StatusCode::FORBIDDEN,
                        "without ADMIN_TOKEN, admin actions answer only requests addressed to 127.0.0.1, [::1] or \
                         localhost",
                    ))?;
                match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
                    Some(origin) if origin != format!("http://{host}") => {
                        Err((StatusCode::FORBIDDEN, "cross-origin admin actions need ADMIN_TOKEN"))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// True for `127.0.0.1`, `[::1]` and `localhost`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    ["127.0.0.1", "[::1]", "localhost"].iter().any(|loopback| name.eq_ignore_ascii_case(loopback))
}

/// Middleware for mutating admin routes (`route_layer` it with the token as state).
pub async fn require_admin(State(token): State<AdminToken>, request: Request, next: Next) -> Response {
    match token.admits(&request) {
        Ok(()) => next.run(request).await,
        Err((status, message)) => {
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
            (status, challenge, axum::Json(serde_json::json!({ "error": message }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::post("/relay/pause").header("host", "127.0.0.1:9101");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn a_token_is_required_once_set() {
        let token = AdminToken::new(Some("s3cret"));
        assert!(token.admits(&request(&[("authorization", "Bearer s3cret")])).is_ok());
        for wrong in [&[][..], &[("authorization", "Bearer s3cre")], &[("authorization", "s3cret")]] {
            assert_eq!(token.admits(&request(wrong)).unwrap_err().0, StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn without_a_token_only_same_origin_or_non_browser_requests_pass() {
        let none = AdminToken::new(Some("  "));
        assert!(!none.is_set());
        assert!(none.admits(&request(&[])).is_ok(), "curl sends no Origin");
        assert!(none.admits(&request(&[("origin", "http://127.0.0.1:9101")])).is_ok());
        let csrf = none.admits(&request(&[("origin", "https://evil.example")])).unwrap_err();
        assert_eq!(csrf.0, StatusCode::FORBIDDEN);
    }

    #[test]
    fn without_a_token_only_loopback_names_pass() {
        let none = AdminToken::new(None);
        let host = |host: &str| {
            let mut r = request(&[]);
            r.headers_mut().insert("host", host.parse().unwrap());
            none.admits(&r).map_err(|e| e.0)
        };
        for ok in ["127.0.0.1:9101", "localhost:8080", "LOCALHOST", "[::1]:9101", "[::1]", "127.0.0.1"] {
            assert_eq!(host(ok), Ok(()), "{ok}");
        }
        for rebound in ["evil.example:9101", "127.0.0.1.evil.example", "localhost.evil:80", "10.0.0.1:9101", ""] {
            assert_eq!(host(rebound), Err(StatusCode::FORBIDDEN), "{rebound}");
        }
        let mut rebinding = request(&[("origin", "http://evil.example:9101")]);
        rebinding.headers_mut().insert("host", "evil.example:9101".parse().unwrap());
        assert_eq!(none.admits(&rebinding).unwrap_err().0, StatusCode::FORBIDDEN);
        let mut with_token = rebinding;
        with_token.headers_mut().insert("authorization", "Bearer t".parse().unwrap());
        assert!(AdminToken::new(Some("t")).admits(&with_token).is_ok(), "a token is the door once set");
    }

    #[test]
    fn a_public_bind_needs_a_token() {
        let public: SocketAddr = "0.0.0.0:9101".parse().unwrap();
        let error = AdminToken::new(None).check_bind(public).unwrap_err().to_string();
        assert!(error.contains("ADMIN_TOKEN is not set"), "{error}");
        assert!(AdminToken::new(Some("t")).check_bind(public).is_ok());
        assert!(AdminToken::new(None).check_bind("127.0.0.1:9101".parse().unwrap()).is_ok());
        assert!(AdminToken::new(None).check_bind("[::1]:9101".parse().unwrap()).is_ok());
    }
}
