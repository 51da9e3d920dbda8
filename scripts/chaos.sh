#!/usr/bin/env bash
# The chaos run: the whole pipeline (producer, two relays, consumer, a private
# ActiveMQ) under steady load while services, the broker and the database are
# killed, stopped, locked and fed hostile messages; then the invariants and a
# report. Loopback only, bounded in time. Extra arguments go to the chaos
# binary (`--duration 10m`, `--rate 300`, `--seed N`; see `--help`).
# CHAOS_PROFILE=debug uses the debug build (what the test command does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/activemq.sh install
if [ "${CHAOS_PROFILE:-release}" = debug ]; then
    cargo build --quiet -p producer -p relay -p consumer -p chaos
    exec target/debug/chaos "$@"
fi
cargo build --release --quiet -p producer -p relay -p consumer -p chaos
exec target/release/chaos "$@"
