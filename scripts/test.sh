#!/usr/bin/env bash
# The test command: installs the servers the integration tests start
# (Mosquitto, InfluxDB 1.x, VictoriaMetrics) when they are missing, checks the
# production build (no default features: no demo, simulator or load harness),
# then runs every test. Usage: bash scripts/test.sh [extra arguments for the test runner]
#
# InfluxDB 3 Core is in no package registry. Its tests (tests/influxdb3.rs, the
# test binary `influxdb3`) run whenever its build is found: the file named by
# QUEUEWATCH_INFLUXDB3 (the `influxdb3` binary or a .xz of it), else
# ../shared/influxdb3/influxdb3.xz next to the repository (which is what the
# tests themselves look for). Without it they are left out, and the last line
# says that they did not run: they are not counted as passed. With
# QUEUEWATCH_REQUIRE_INFLUXDB3=1 (as .ci/run sets it), a missing build is a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

influxdb3=${QUEUEWATCH_INFLUXDB3:-$(cd .. && pwd)/shared/influxdb3/influxdb3.xz}
if [[ ! -f $influxdb3 ]]; then
    if [[ ${QUEUEWATCH_REQUIRE_INFLUXDB3:-} == 1 ]]; then
        echo "scripts/test.sh: FAILED: no InfluxDB 3 Core build at $influxdb3, and QUEUEWATCH_REQUIRE_INFLUXDB3=1" >&2
        exit 1
    fi
    influxdb3=
fi

missing=()
[[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null || missing+=(mosquitto)
[[ -x /usr/bin/influxd ]] || command -v influxd >/dev/null || missing+=(influxdb)
[[ -x /usr/bin/victoria-metrics ]] || command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
if [[ -n $influxdb3 ]]; then
    # The build links Debian's Python 3.11 (its processing engine), and comes xz-compressed.
    dpkg-query -W -f='${Status}' libpython3.11 2>/dev/null | grep -q 'ok installed' || missing+=(libpython3.11)
    command -v xz >/dev/null || missing+=(xz-utils)
fi

if ((${#missing[@]} > 0)); then
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
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

# The MQTT client is the vendored, patched rumqttc (vendor/rumqttc/PATCH.md:
# queued acknowledgements leave in one write), in the production build as in
# the tests: a [patch] that stops applying (a version bump) would fall back to
# crates.io's copy without a word.
vendored="rumqttc v* ($(pwd -P)/vendor/rumqttc)"
for features in --no-default-features --all-features; do
    rumqttc=$(cargo tree -p queuewatch "$features" -e normal -i rumqttc --prefix none --depth 0 2>&1) || true
    # shellcheck disable=SC2053 # $vendored is a pattern
    if [[ $rumqttc != $vendored ]]; then
        echo "scripts/test.sh: the build ($features) does not use the vendored rumqttc in vendor/rumqttc:" >&2
        echo "$rumqttc" >&2
        exit 1
    fi
done

if [[ -n $influxdb3 ]]; then
    echo "scripts/test.sh: InfluxDB 3 Core build found ($influxdb3): its tests run" >&2
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --all-targets "$@"
    else
        cargo test --workspace --all-targets "$@"
    fi
else
    if cargo nextest --version >/dev/null 2>&1; then
        # A profile whose default filter leaves the test binary out (.config/nextest.toml);
        # filters given as arguments narrow it further.
        cargo nextest run --workspace --all-targets --profile without-influxdb3 "$@"
    else
        targets=()
        for test_file in tests/*.rs; do
            name=$(basename "$test_file" .rs)
            [[ $name == influxdb3 ]] || targets+=(--test "$name")
        done
        cargo test --workspace --lib --bins --examples --benches "${targets[@]}" "$@"
    fi
    echo "scripts/test.sh: the InfluxDB 3 Core tests (tests/influxdb3.rs) did NOT run and are not counted:" \
        "no build at ${QUEUEWATCH_INFLUXDB3:-../shared/influxdb3/influxdb3.xz} (set QUEUEWATCH_INFLUXDB3)" >&2
fi
