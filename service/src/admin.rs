//! A service's admin port, bound at start-up in one call: the bind checked
//! against the door, the listener, the bounds it is served within, and the
//! registry its `/metrics` serves.
//!
//! Invariant: an admin port reachable from other machines is never bound
//! without `ADMIN_TOKEN`; the token is read once, here, for the admin routes
//! and the producer's ops actions alike.

use std::net::SocketAddr;

use anyhow::Context;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::{AdminToken, HttpLimits, ServiceArgs};

/// The bound admin port, ready for [`crate::Supervisor::serve_admin`].
pub struct AdminPort {
    pub(crate) listener: TcpListener,
    /// The bounds of its connections, as of every HTTP port of the service.
    pub(crate) limits: HttpLimits,
    /// The registry `/metrics` serves; the service registers its metrics in it.
    pub registry: Registry,
    /// The door of the mutating admin routes (and of the producer's ops actions).
    pub token: AdminToken,
}

impl AdminPort {
    /// Refuses a public `addr` without a token, binds it, and builds the
    /// registry of `service` (see [`observability::new_registry`]).
    pub async fn bind(
        service: &str,
        args: &ServiceArgs,
        addr: SocketAddr,
        db_round_trips: fn() -> u64,
    ) -> anyhow::Result<AdminPort> {
        let token = AdminToken::new(args.admin_token.as_deref());
        token.check_bind(addr)?;
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding admin address {addr}"))?;
        let registry = observability::new_registry(service, db_round_trips);
        Ok(AdminPort { listener, limits: args.http_limits(), registry, token })
    }

    /// The bound address (tests bind port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }
}
