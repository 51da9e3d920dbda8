//! `consumer` binary: prices and finalises orders from the queue. All logic lives in the library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service::<consumer::App>().await
}
