#!/usr/bin/env bash
# The load harness: builds release and runs the scenarios of queuewatch-load
# (src/bin/queuewatch-load/, one module per scenario), printing a report that names the machine and
# gives each figure with the command that reproduces it. The report is also
# written to target/load-report.txt.
#
# Usage: bash scripts/load.sh [SCENARIO...]
#   replay memory e2e latency drain office-day (the default: all of them), the diagnostic
#   e2e-hourly-gauges (e2e with gauges every hour instead of every 10 s), and flood (not in
#   the default: it lasts 30 min; one office flooding at its rate limit with copies, malformed
#   and over-rate messages, its memory and journal sampled, then SIGKILL and the restart's
#   recovery timed; light on CPU), and peer (not in the default: it installs Node-RED with npm
#   into target/peer-node-red; the same backlog caught up by queuewatch and by a Node-RED flow,
#   side by side, at 60k and 400k events).
#   office-day measures this build's replay of a simulated week at offices with hours;
#   QUEUEWATCH_BEFORE=path/to/queuewatch adds the same measurement of another build.
# The daemon's, Mosquitto's and InfluxDB's logs of each run are kept in
# target/load-logs/SCENARIO/, the progress of each in target/load-SCENARIO.log.
#
# Each scenario runs alone as `target/release/queuewatch-load SCENARIO
# [options]` (see --help). Those that need servers start Mosquitto and
# InfluxDB 1.x on free ports of 127.0.0.1 in a temporary folder and remove
# them when they end, also on failure or interruption; each run is further
# bounded by `timeout`. Needs the Debian packages mosquitto and influxdb
# (scripts/test.sh installs them).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if (($# > 0)); then
    scenarios=("$@")
else
    scenarios=(replay memory e2e latency drain e2e-hourly-gauges office-day)
fi

cargo build --release --bin queuewatch --bin queuewatch-load

load=target/release/queuewatch-load
report=target/load-report.txt
: >"$report"
# The servers' and the daemon's logs of each scenario, kept for inspection.
logs=target/load-logs
rm -rf "$logs"

say() {
    printf '%s\n' "$*" | tee -a "$report"
}

# Pins single-threaded measurements to one core when taskset is available.
pin=()
if command -v taskset >/dev/null; then
    pin=(taskset -c 0)
fi

say "# queuewatch load report"
say "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)')"
say "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) memory, Linux $(uname -r)"
say "toolchain: $(rustc --version)"
# `mosquitto -h` prints its version and exits 3.
say "servers: $( (mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto); "$mosquitto_bin" -h 2>/dev/null || true) | head -1); $(influxd version 2>/dev/null || echo 'influxd: not found')"
say "Every figure below follows the command that printed it; run that command from the repository root to reproduce it."

failed=()
run() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "load average before $name: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
    say "\$ $(printf '%q ' "$@")"
    local status=0
    timeout --kill-after=30 "$limit" "$@" 2> >(tee -a "target/load-$name.log" >&2) | tee -a "$report" || status=$?
    if ((status != 0)); then
        say "($name failed with exit status $status; its progress log is target/load-$name.log)"
        failed+=("$name")
    fi
}

for scenario in "${scenarios[@]}"; do
    : >"target/load-$scenario.log"
    case $scenario in
        replay) run replay 900 "${pin[@]}" "$load" replay --events 1000000 --offices 50 ;;
        memory) run memory 300 "$load" memory --tickets 1000000 --offices 1000 --idle-seconds 5 --keep-logs "$logs/memory" ;;
        e2e) run e2e 1200 "$load" e2e --events 500000 --offices 50 --keep-logs "$logs/e2e" ;;
        latency) run latency 300 "$load" latency --rate 5000 --seconds 60 --poll-ms 50 --keep-logs "$logs/latency" ;;
        drain) run drain 1200 "$load" drain --events 500000 --offices 40 --keep-logs "$logs/drain" ;;
        e2e-hourly-gauges)
            run e2e-hourly-gauges 1200 "$load" e2e --events 500000 --offices 50 \
                --set 'tracking.snapshot_interval="1h"' --keep-logs "$logs/e2e-hourly-gauges"
            ;;
        flood) run flood 2700 "$load" flood --duration 30m --keep-logs "$logs/flood" ;;
        peer)
            run peer 1200 "$load" peer --events 62368 --offices 40
            run peer 1800 "$load" peer --events 413368 --offices 40
            ;;
        office-day)
            run office-day 600 "$load" office-day --offices 12 --days 7 --seed 19
            # The same week replayed by another build, for a before/after comparison:
            # QUEUEWATCH_BEFORE=path/to/older/queuewatch bash scripts/load.sh office-day
            if [[ -n ${QUEUEWATCH_BEFORE:-} ]]; then
                run office-day 600 "$load" office-day --offices 12 --days 7 --seed 19 --queuewatch "$QUEUEWATCH_BEFORE"
            fi
            ;;
        *)
            echo "unknown scenario: $scenario (replay, memory, e2e, latency, drain, e2e-hourly-gauges, office-day, flood, peer)" >&2
            exit 2
            ;;
    esac
done

say ""
if ((${#failed[@]} > 0)); then
    say "failed: ${failed[*]}"
    say "report: $report"
    exit 1
fi
say "report: $report"
