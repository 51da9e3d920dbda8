#!/usr/bin/env bash
# Runs a private ActiveMQ Classic instance (Debian's `activemq` package) as a
# plain process: its own folder, its own STOMP port, its own heap.
#
#   scripts/activemq.sh install            # apt-get install activemq if missing
#   scripts/activemq.sh start DIR PORT [PID] # start (if not running), wait until it listens and
#                                           # write its port to DIR/broker.port; PORT 0 lets the
#                                           # kernel choose a free one (nothing can take it first);
#                                           # with PID, stop the broker when that process ends
#   scripts/activemq.sh stop DIR           # stop it and wait for the process to end
#
# A master/slave pair on a shared store: start two instances with the same
# ACTIVEMQ_KAHADB=PATH; the second waits for the store's lock (and does not
# listen until it has it), so start it with ACTIVEMQ_WAIT_FOR_PORT=0.
set -euo pipefail

ACTIVEMQ_HOME=/usr/share/activemq

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install() {
    # XStream and Jettison (recommended by libactivemq-java, named here so
    # that a machine without recommends gets them too) turn the statistics
    # plugin's map messages into JSON for STOMP clients (jms-map-json).
    if [ ! -f "$ACTIVEMQ_HOME/bin/activemq.jar" ] || [ ! -f /usr/share/java/xstream.jar ] \
        || [ ! -f /usr/share/java/jettison.jar ]; then
        echo "installing ActiveMQ from the OS packages..." >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq activemq libxstream-java \
            libjettison-java >/dev/null
    fi
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The port in the broker's own "Listening for connections at: stomp://HOST:PORT"
# line (empty until it has bound): unlike a connect, which any process on the
# port would answer, this names the port the broker itself holds.
logged_port() {
    sed -n 's|.*Listening for connections at: stomp://[^:/]*:\([0-9][0-9]*\).*|\1|p' "$1/broker.log" 2>/dev/null \
        | tail -n 1
}

start() {
    local dir port
    dir=$(realpath -m "$1")
    port=$2
    install
    mkdir -p "$dir/conf" "$dir/data" "$dir/tmp"
    local kahadb=${ACTIVEMQ_KAHADB:-$dir/data/kahadb}
    if [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
        local running=$port
        [ "$port" != 0 ] || running=$(cat "$dir/broker.port" 2>/dev/null || echo 0)
        [ "$running" != 0 ] && port_open "$running" && return 0
    fi
    rm -f "$dir/broker.port"
    # Absolute paths everywhere; memory limit well below the heap so a large
    # backlog pages to disk instead of exhausting the JVM.
    cat >"$dir/conf/activemq.xml" <<XML
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
                           http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="orderflow" useJmx="false"
          dataDirectory="$dir/data" schedulePeriodForDestinationPurge="0">
    <plugins>
      <!-- Queue depth and counters on request: a message to
           ActiveMQ.Statistics.Destination.<queue> with a reply-to. -->
      <statisticsBrokerPlugin/>
    </plugins>
    <persistenceAdapter>
      <kahaDB directory="$kahadb" concurrentStoreAndDispatchQueues="false">
        <locker><shared-file-locker lockAcquireSleepInterval="500"/></locker>
      </kahaDB>
    </persistenceAdapter>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="128 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="8 gb"/></storeUsage>
        <tempUsage><tempUsage limit="2 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:$port?transport.closeAsync=false"/>
    </transportConnectors>
  </broker>
</beans>
XML
    nohup java -Xms128M -Xmx384M -XX:+UseSerialGC \
        -Dactivemq.home="$ACTIVEMQ_HOME" -Dactivemq.base="$dir" -Dactivemq.conf="$dir/conf" \
        -Dactivemq.data="$dir/data" -Djava.io.tmpdir="$dir/tmp" \
        -Dactivemq.classpath="/usr/share/java/slf4j-simple.jar:/usr/share/java/xstream.jar:/usr/share/java/jettison.jar" \
        -jar "$ACTIVEMQ_HOME/bin/activemq.jar" start "xbean:file:$dir/conf/activemq.xml" \
        >"$dir/broker.log" 2>&1 </dev/null &
    echo $! >"$dir/broker.pid"
    if [ -n "${3:-}" ]; then
        # Watchdog: a test run that dies must not leave its broker behind.
        setsid nohup "$0" watch "$dir" "$3" >/dev/null 2>&1 </dev/null &
    fi
    if [ "${ACTIVEMQ_WAIT_FOR_PORT:-1}" = 0 ]; then
        # A standby listens only once it holds the store's lock, on the port it was given.
        echo "$port" >"$dir/broker.port"
        return 0
    fi
    local bound
    for _ in $(seq 1 600); do
        bound=$(logged_port "$dir")
        if [ -n "$bound" ]; then
            echo "$bound" >"$dir/broker.port"
            return 0
        fi
        # A broker whose start failed (its port taken, say) keeps its JVM running: stop it.
        if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null \
            || grep -q "Failed to execute start task" "$dir/broker.log"; then
            echo "ActiveMQ failed to start; its log without stack frames:" >&2
            grep -v '^[[:space:]]*at ' "$dir/broker.log" | tail -n 20 >&2
            stop "$dir"
            return 1
        fi
        sleep 0.1
    done
    echo "ActiveMQ did not listen within 60 s; its log:" >&2
    tail -n 40 "$dir/broker.log" >&2
    stop "$dir"
    return 1
}

stop() {
    local dir pid
    dir=$(realpath -m "$1")
    [ -f "$dir/broker.pid" ] || return 0
    pid=$(cat "$dir/broker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/broker.pid"; return 0; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/broker.pid"
}

watch() {
    while kill -0 "$2" 2>/dev/null; do sleep 1; done
    stop "$1"
}

case "${1:-}" in
    install) install ;;
    start) start "$2" "$3" "${4:-}" ;;
    watch) watch "$2" "$3" ;;
    stop) stop "$2" ;;
    *) echo "usage: $0 install | start DIR PORT [WATCH_PID] | stop DIR" >&2; exit 2 ;;
esac
