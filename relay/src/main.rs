//! `relay` binary: drains the outbox to ActiveMQ. All logic lives in the library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service::<relay::App>().await
}
