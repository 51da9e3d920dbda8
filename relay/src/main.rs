//! `relay` binary: drains the outbox to ActiveMQ. All logic lives in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service::<relay::App>().await
}
