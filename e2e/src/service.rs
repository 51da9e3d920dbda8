//! Each service in its own tokio runtime, so a test can stop it gracefully
//! (cancel and wait) or kill it abruptly (drop every task mid-flight, like `kill -9`).

use std::net::SocketAddr;

use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running service.
pub struct Service {
    runtime: Option<Runtime>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The producer's public address.
    pub http_addr: Option<SocketAddr>,
    /// The admin port (`/metrics`, `/healthz`, `/readyz`).
    pub admin_addr: SocketAddr,
}

impl Service {
    /// Builds the app inside a fresh runtime and starts running it.
    pub async fn start<A, F>(build: F) -> anyhow::Result<Service>
    where
        A: ::service::Service + 'static,
        F: Future<Output = anyhow::Result<A>> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (tx, rx) = oneshot::channel();
        let task = runtime.spawn(async move {
            let app = build.await?;
            let _ = tx.send(app.listening());
            app.run(token).await
        });
        let listening = match rx.await {
            Ok(listening) => listening,
            Err(_) => {
                let error = task
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r.err().ok_or_else(|| anyhow::anyhow!("service ended")));
                runtime.shutdown_background();
                return Err(error.unwrap_or_else(|e| e));
            }
        };
        let address = |name| listening.iter().find(|(what, _)| *what == name).map(|(_, addr)| *addr);
        let admin_addr = address("admin").expect("every service binds an admin port");
        Ok(Service { runtime: Some(runtime), shutdown, task: Some(task), http_addr: address("http"), admin_addr })
    }

    /// Graceful stop (as on SIGTERM): returns the service's own result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let result = match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        };
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        result
    }

    /// Abrupt stop: every task is dropped wherever it is, sockets close, nothing is flushed or released.
    pub fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// `POST` to an admin route as an operator holding the stack's
    /// [`crate::stack::TEST_ADMIN_TOKEN`]; returns status and JSON body.
    pub async fn admin_post(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        self.admin_post_as(path_and_query, Some(crate::stack::TEST_ADMIN_TOKEN)).await
    }

    /// `POST` to an admin route with this bearer token (or none).
    pub async fn admin_post_as(&self, path_and_query: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new().post(format!("http://{}{path_and_query}", self.admin_addr));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("admin port answers");
        (response.status().as_u16(), response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `GET` an admin route; returns status and JSON body.
    pub async fn admin_get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let response =
            reqwest::get(format!("http://{}{path_and_query}", self.admin_addr)).await.expect("admin port answers");
        (response.status().as_u16(), response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// One sample of the service's metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        crate::metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .expect("metrics endpoint answers")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
