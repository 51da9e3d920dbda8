#!/usr/bin/env bash
# Builds the services in release mode and runs the benchmark: raw broker
# ceiling, relay drain, consumer drain, with peak RSS and CPU per service.
# Extra arguments go to the bench binary (see `target/release/bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/activemq.sh install
cargo build --release --quiet -p producer -p relay -p consumer -p bench
exec target/release/bench "$@"
