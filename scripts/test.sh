#!/usr/bin/env bash
# The full test suite on a fresh Debian/Ubuntu machine: installs what the tests
# need (ActiveMQ, Chromium + chromedriver, Prometheus + promtool), starts one private broker for the
# whole run, checks formatting and lints, builds once, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
[ -f /usr/share/activemq/bin/activemq.jar ] || need+=(activemq)
# The broker's statistics plugin answers STOMP clients in JSON through these two.
[ -f /usr/share/java/xstream.jar ] || need+=(libxstream-java)
[ -f /usr/share/java/jettison.jar ] || need+=(libjettison-java)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} from the OS packages..."
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== dependencies: RustSec advisories (offline snapshot), licences, bans and sources"
command -v cargo-audit >/dev/null 2>&1 || { echo "installing cargo-audit..."; cargo install cargo-audit --version '^0.22' --locked --quiet; }
command -v cargo-deny >/dev/null 2>&1 || { echo "installing cargo-deny..."; cargo install cargo-deny --version 0.20.2 --locked --quiet; }
advisory_db=${ADVISORY_DB:-}
for candidate in "$(cd .. && pwd)/shared/advisory-db" /work/shared/advisory-db; do
    if [ -z "$advisory_db" ] && [ -d "$candidate" ]; then advisory_db=$candidate; fi
done
if [ -n "$advisory_db" ] && [ -d "$advisory_db" ]; then
    cargo audit --db "$advisory_db" --no-fetch
else
    echo "WARNING: no RustSec snapshot in ../shared/advisory-db (set ADVISORY_DB): advisories NOT checked" >&2
fi
# Licences, bans (no wildcard versions; duplicate versions are warnings, not
# shown here: `cargo deny check bans` lists them) and sources (crates.io only).
cargo deny -L error check bans licenses sources 2>&1 | tail -n 20

echo "== docker-compose.yml and its Prometheus configuration"
# docker-compose v1 validates the file without a Docker engine; its PyYAML
# pin needs Cython < 3 to build on current Pythons.
compose_venv=target/tools/compose
if [ ! -x "$compose_venv/bin/docker-compose" ]; then
    echo "installing docker-compose (PyPI) into $compose_venv..."
    python3 -m venv "$compose_venv"
    "$compose_venv/bin/pip" install -q "cython<3" wheel
    "$compose_venv/bin/pip" install -q --no-build-isolation "pyyaml==5.4.1"
    "$compose_venv/bin/pip" install -q "docker-compose==1.29.2"
fi
ADMIN_TOKEN=compose-check "$compose_venv/bin/docker-compose" config -q
# No default admin token: without one, compose refuses to start.
if env -u ADMIN_TOKEN "$compose_venv/bin/docker-compose" config -q 2>/dev/null; then
    echo "docker-compose.yml starts without ADMIN_TOKEN: a well-known default would be no door" >&2
    exit 1
fi
promtool check config observability/prometheus/prometheus.docker.yml >/dev/null

echo "== schemathesis (PyPI), for the OpenAPI fuzzing test"
schemathesis_venv=target/tools/schemathesis
if [ ! -x "$schemathesis_venv/bin/schemathesis" ]; then
    echo "installing schemathesis into $schemathesis_venv..."
    python3 -m venv "$schemathesis_venv"
    "$schemathesis_venv/bin/pip" install -q "schemathesis==4.32.5"
fi
export SCHEMATHESIS="$PWD/$schemathesis_venv/bin/schemathesis"

echo "== build"
cargo build --workspace --all-targets --quiet

# Every process from here on carries this run's mark in its environment, so
# that the end can tell what this run left running from anything else.
export ORDERFLOW_TEST_RUN="test-$$-$(date +%s%N)"
broker_dir=$(mktemp -d -t orderflow-test-broker-XXXXXX)
# On every exit: stop the broker, then fail if anything the run started still
# runs (a browser, a broker, a service), naming each with its PID.
cleanup() {
    local status=$?
    scripts/activemq.sh stop "$broker_dir" || status=1
    rm -rf "$broker_dir"
    scripts/leftovers.sh "$ORDERFLOW_TEST_RUN" || status=1
    exit "$status"
}
trap cleanup EXIT
echo "== starting ActiveMQ"
# Port 0: the broker binds a port of the kernel's choosing, which no other process can take first.
scripts/activemq.sh start "$broker_dir" 0 $$
broker_port=$(cat "$broker_dir/broker.port")
echo "   on 127.0.0.1:$broker_port"
export TEST_BROKER_URL="tcp://127.0.0.1:$broker_port"

# One SQL Server for everything: the end-to-end tests' database also runs the contract suite.
case "${TEST_DATABASE_URL:-}" in
    mssql://* | sqlserver://* | server=* | Server=* | SERVER=*) export TEST_MSSQL_URL="${TEST_MSSQL_URL:-$TEST_DATABASE_URL}" ;;
esac

echo "== tests"
log="$broker_dir/test.log"
status=0
cargo test --workspace --all-targets --no-fail-fast -- --color never 2>&1 | tee "$log" || status=$?

echo "== chaos (60 s of faults under load; the report says what was checked)"
chaos_status=0
CHAOS_PROFILE=debug scripts/chaos.sh --duration 60s || chaos_status=$?

for shot in target/screenshots/*.png; do if [ -f "$shot" ]; then echo "browser screenshot: $PWD/$shot"; fi; done
awk '/^test result:/ { p += $4; f += $6; n += $8 } END { printf "tests: %d passed, %d failed, %d not run (ignored, reason beside each in the log)\n", p, f, n }' "$log"
mssql_ok=$(grep -c '^test contract::mssql::.* ok$' "$log" || true)
mssql_failed=$(grep -c '^test contract::mssql::.* FAILED$' "$log" || true)
if [ -n "${TEST_MSSQL_URL:-}" ]; then
    echo "SQL Server contract: $mssql_ok passed, $mssql_failed failed"
else
    echo "SQL Server contract: NOT RUN (TEST_MSSQL_URL is not set)"
fi
if [ "$chaos_status" -eq 0 ]; then echo "chaos: passed"; else echo "chaos: FAILED (see the report above)"; status=1; fi
exit "$status"
