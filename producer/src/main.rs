//! `producer` binary: the order form and JSON API. All logic lives in the library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service::<producer::App>().await
}
