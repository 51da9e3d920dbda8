//! `producer` binary: the order form and JSON API. All logic lives in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service::<producer::App>().await
}
