#!/usr/bin/env bash
# Runs the whole system on the embedded default: a SQLite file and a private
# ActiveMQ (installed from the OS packages if missing), all under .orderflow/.
# Prints where to open it; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
scripts/activemq.sh install

data=${ORDERFLOW_DATA:-$PWD/.orderflow}
broker_port=${BROKER_PORT:-61613}
mkdir -p "$data/logs"
export DATABASE_URL=${DATABASE_URL:-sqlite://$data/orderflow.db}
export BROKER_URL=${BROKER_URL:-tcp://127.0.0.1:$broker_port}
http_addr=${HTTP_ADDR:-127.0.0.1:8080}

echo "building (release)..."
cargo build --release --quiet -p producer -p relay -p consumer

pids=()
stop_all() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -z "${KEEP_BROKER:-}" ]; then scripts/activemq.sh stop "$data/activemq"; fi
    echo "stopped. Data stays in $data"
    exit 0
}
trap stop_all INT TERM EXIT

echo "starting ActiveMQ on 127.0.0.1:$broker_port (log: $data/activemq/broker.log)..."
scripts/activemq.sh start "$data/activemq" "$broker_port"

ADMIN_ADDR=${RELAY_ADMIN_ADDR:-127.0.0.1:9101} target/release/relay >"$data/logs/relay.log" 2>&1 &
pids+=($!)
ADMIN_ADDR=${CONSUMER_ADMIN_ADDR:-127.0.0.1:9102} target/release/consumer >"$data/logs/consumer.log" 2>&1 &
pids+=($!)
HTTP_ADDR=$http_addr ADMIN_ADDR=${PRODUCER_ADMIN_ADDR:-127.0.0.1:9100} \
    OPS_RELAYS="http://${RELAY_ADMIN_ADDR:-127.0.0.1:9101}" OPS_CONSUMERS="http://${CONSUMER_ADMIN_ADDR:-127.0.0.1:9102}" \
    target/release/producer >"$data/logs/producer.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${http_addr%:*}/${http_addr##*:}") 2>/dev/null; then break; fi
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "a service failed to start; logs in $data/logs:" >&2; tail -n 5 "$data"/logs/*.log >&2; exit 1; }
    done
    sleep 0.1
done

cat <<MSG

orderflow is running.
  Open http://$http_addr/ to place orders and watch their status; operators: http://$http_addr/ops
  JSON API: POST http://$http_addr/api/orders   GET http://$http_addr/api/orders/{id}
  Admin: producer ${PRODUCER_ADMIN_ADDR:-127.0.0.1:9100}, relay ${RELAY_ADMIN_ADDR:-127.0.0.1:9101}, consumer ${CONSUMER_ADMIN_ADDR:-127.0.0.1:9102} (/metrics /healthz /readyz)
  Logs: $data/logs/   Database: $DATABASE_URL   Broker: $BROKER_URL
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}" || true
echo "a service exited; see $data/logs" >&2
exit 1
