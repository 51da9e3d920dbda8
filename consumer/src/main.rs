//! `consumer` binary: prices and finalises orders from the queue. All logic lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = consumer::Config::parse();
    let telemetry = observability::init_tracing("consumer", config.log_json);
    let shutdown = observability::shutdown_on_signals();
    let app = match consumer::App::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "consumer failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match app.run(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "consumer stopped with an error");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
