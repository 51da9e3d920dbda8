//! `consumer` binary: prices and finalises orders from the queue. All logic lives in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service::<consumer::App>().await
}
