#!/usr/bin/env bash
# Writes the state folder `tests/upgrade.rs` starts on: what a released
# queuewatch leaves in `storage.data_dir` when it is killed mid-day. Run it
# with the binary of the release whose formats the next release must read:
#
#   QUEUEWATCH=path/to/released/queuewatch bash tests/data/state-v1/make.sh
#
# The folder holds, for office `kantor-a` (service `ktp`, no opening hours):
# - a snapshot with ticket Q-1 waiting (issued 08:00:00);
# - the journal after it: Q-3 issued at 08:08:20;
# - the spool: the points of Q-2 (issued 08:01:00, served 08:02:00-08:06:40)
#   and the gauge rows, unsent because no InfluxDB answered.
# Needs mosquitto and mosquitto_pub. Event times are fixed (2026-12-07 WIB):
# a resumed daemon's office clock continues from the newest event, whatever
# the wall clock says.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
queuewatch=${QUEUEWATCH:?set QUEUEWATCH to the released binary}
work=$(mktemp -d)
trap 'kill $broker_pid $daemon_pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
sleep 1
sed -e "s|@MQTT@|mqtt://127.0.0.1:$port|" -e "s|@DATA@|$work/data|" "$here/config.toml.in" >"$work/config.toml"
QUEUEWATCH_LOG=info "$queuewatch" run --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
sleep 2

publish() {
    mosquitto_pub -p "$port" -q 1 -t queue/kantor-a/events -m "$1"
}
ts() { date -d "2026-12-07T$1+07:00" +%s%3N; }
publish "{\"type\":\"issued\",\"ts\":$(ts 08:00:00),\"ticket\":\"Q-1\",\"service\":\"ktp\",\"id\":\"i1\"}"
publish "{\"type\":\"issued\",\"ts\":$(ts 08:01:00),\"ticket\":\"Q-2\",\"service\":\"ktp\",\"id\":\"i2\"}"
publish "{\"type\":\"called\",\"ts\":$(ts 08:02:00),\"ticket\":\"Q-2\",\"counter\":\"c1\",\"id\":\"c2\"}"
publish "{\"type\":\"started\",\"ts\":$(ts 08:02:30),\"ticket\":\"Q-2\",\"counter\":\"c1\",\"id\":\"s2\"}"
publish "{\"type\":\"finished\",\"ts\":$(ts 08:06:40),\"ticket\":\"Q-2\",\"counter\":\"c1\",\"id\":\"f2\"}"
# checkpoint_interval is 1 s: a snapshot after these, then one more event in the journal only.
sleep 4
kill -STOP "$daemon_pid"
publish "{\"type\":\"issued\",\"ts\":$(ts 08:08:20),\"ticket\":\"Q-3\",\"service\":\"ktp\",\"id\":\"i3\"}"
kill -CONT "$daemon_pid"
for _ in $(seq 50); do
    grep -aq 'Q-3' "$work"/data/state/journal-*.qwj 2>/dev/null && break
    sleep 0.1
done
kill -KILL "$daemon_pid"
wait "$daemon_pid" 2>/dev/null || true

rm -rf "$here/data"
cp -a "$work/data" "$here/data"
rm -f "$here/data/lock" "$here/data/spool/lock"
"$queuewatch" --version >"$here/VERSION"
ls -lR "$here/data"
