//! `producer` binary: the order form and JSON API. All logic lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = producer::Config::parse();
    let telemetry = observability::init_tracing("producer", config.log_json);
    let shutdown = observability::shutdown_on_signals();
    let app = match producer::App::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "producer failed to start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match app.run(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "producer stopped with an error");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
