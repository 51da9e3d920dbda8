//! `orderflowctl` binary: see `orderflowctl --help` (its exit codes are listed there).

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    ctl::main().await
}
