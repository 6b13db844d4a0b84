#!/usr/bin/env bash
# The test command: installs the servers the integration tests start
# (Mosquitto, InfluxDB 1.x, VictoriaMetrics) when they are missing, checks the
# production build (no default features: no demo, simulator or load harness),
# then runs every test. Usage: bash scripts/test.sh [extra arguments for the test runner]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
[[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null || missing+=(mosquitto)
[[ -x /usr/bin/influxd ]] || command -v influxd >/dev/null || missing+=(influxdb)
[[ -x /usr/bin/victoria-metrics ]] || command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)

if ((${#missing[@]} > 0)); then
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        mosquitto influxdb victoria-metrics
    # The packages may start their services on the default ports; the tests
    # start their own servers on free ports and need none of these.
    for service in mosquitto influxdb victoria-metrics; do
        "${sudo[@]}" service "$service" stop >/dev/null 2>&1 || true
    done
fi

# The production build (deploy/README.md) must stay clean, and must link none
# of the crates only the demo, the simulator and the load harness need, nor
# OpenSSL or aws-lc (TLS is rustls on ring).
cargo clippy --workspace --no-default-features --all-targets -- -D warnings
leaked=$(cargo tree -p queuewatch --no-default-features -e normal --prefix none |
    grep -E '^(rumqttd|rand|rand_[a-z]+|queuewatch-servers|openssl|openssl-sys|native-tls|aws-lc-rs|aws-lc-sys) ' |
    sort -u || true)
if [[ -n $leaked ]]; then
    echo "scripts/test.sh: the production build (--no-default-features) depends on:" >&2
    echo "$leaked" >&2
    exit 1
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-targets "$@"
else
    cargo test --workspace --all-targets "$@"
fi
