#!/usr/bin/env bash
# Fails, naming each one, when processes a test run started are still running.
#
#   scripts/leftovers.sh RUN_ID [SECONDS]   # exit 0: none left; 1: listed on stderr
#
# A process is the run's when its environment holds ORDERFLOW_TEST_RUN=RUN_ID
# (scripts/test.sh exports it, so everything the run starts inherits it), or
# when it descends from such a process, or shares a process group with one
# (the caller's own group aside): Chromium's zygote starts its children with
# an environment of its own.
# Only a browser, chromedriver, the broker's JVM, our binaries and Prometheus
# count: the run's own shells, and tools meant to outlive it (a compiler
# cache's server), do not. Nothing else on the machine is looked at, so a
# developer's own browser or JVM is never named.
#
# Waits up to SECONDS (default 30) for them to end first: a test's broker is
# stopped by its watchdog up to a second after the test process ended, and
# its JVM may take 15 s to exit.
set -euo pipefail

run_id=${1:?usage: scripts/leftovers.sh RUN_ID [SECONDS]}
seconds=${2:-30}
names='^(chrom.*|java|producer|relay|consumer|loadtest|bench|chaos|prometheus|orderflowctl)$'

# The run's processes that count, one PID a line. A zombie is left out: it
# has ended, only its exit status waits for a parent to read it.
leftovers() {
    local dir pid stat state ppid pgid name own_group
    local -A parent=() group=() marked=() marked_groups=()
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        { stat=$(<"$dir/stat"); } 2>/dev/null || continue
        # The name, in parentheses, may hold spaces: the fields after it are state, ppid, pgrp.
        read -r state ppid pgid _ <<<"${stat##*) }"
        [ "$state" != Z ] || continue
        parent[$pid]=$ppid
        group[$pid]=$pgid
        if grep -qzxF "ORDERFLOW_TEST_RUN=$run_id" "$dir/environ" 2>/dev/null; then marked[$pid]=1; fi
    done
    own_group=${group[$$]:-}
    for pid in "${!marked[@]}"; do
        [ "${group[$pid]}" = "$own_group" ] || marked_groups[${group[$pid]}]=1
    done
    for pid in "${!parent[@]}"; do
        { name=$(<"/proc/$pid/comm"); } 2>/dev/null || continue
        [[ "$name" =~ $names ]] || continue
        if [ -n "${marked_groups[${group[$pid]}]:-}" ]; then echo "$pid"; continue; fi
        # Marked itself, or a descendant of a marked process that is still there.
        ppid=$pid
        while [ -n "$ppid" ] && [ "$ppid" != 0 ]; do
            if [ -n "${marked[$ppid]:-}" ]; then echo "$pid"; break; fi
            ppid=${parent[$ppid]:-}
        done
    done | sort -n
}

deadline=$((SECONDS + seconds))
left=$(leftovers)
while [ -n "$left" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.5
    left=$(leftovers)
done
if [ -z "$left" ]; then
    echo "processes left behind: none"
    exit 0
fi
{
    echo "processes left behind: the test run started these and they still run ${seconds} s after it ended:"
    for pid in $left; do
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-300) || cmdline="(ended)"
        echo "  PID $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo '?')): $cmdline"
    done
    echo "stop them with: kill $(echo $left)"
} >&2
exit 1
