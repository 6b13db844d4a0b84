#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ (cargo-afl, on stable Rust): builds the
# targets in fuzz/ and runs each for SECONDS (default 180), then prints each
# target's executions per second, corpus size and crashes. Not part of the
# test suite; a crash found here becomes a test in tests/fuzz_regressions.rs.
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
# Targets: decode_event, encode_line, parse_config (all by default).
# Findings stay in fuzz/out/TARGET/default/{crashes,hangs,queue}.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=${1:-180}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(decode_event encode_line parse_config)
fi

if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --locked
fi
# AFL++ itself, built once by cargo-afl (needs gcc, make and llvm-config).
if ! built=$(cargo afl config --build 2>&1); then
    grep -q "already built" <<<"$built" || { echo "$built" >&2; exit 1; }
fi

cargo afl build --release --bins
mkdir -p out

for target in "${targets[@]}"; do
    echo "fuzz.sh: $target for ${seconds}s" >&2
    # -V: stop after this many seconds. No UI; no CPU-governor or core-pattern tuning required.
    AFL_NO_UI=1 AFL_AUTORESUME=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        AFL_SUPPRESS_CPUID=1 cargo afl fuzz -V "$seconds" -i "seeds/$target" -o "out/$target" \
        "target/release/$target" >"out-$target.log" 2>&1 || {
        echo "fuzz.sh: $target: afl-fuzz failed, see fuzz/out-$target.log" >&2
        tail -20 "out-$target.log" >&2
        exit 1
    }
done

for target in "${targets[@]}"; do
    stats="out/$target/default/fuzzer_stats"
    printf '%-14s' "$target"
    awk -F' *: *' '$1 ~ /^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|run_time)$/ { printf " %s=%s", $1, $2 }' "$stats"
    echo
    for crash in "out/$target/default/crashes"/id:*; do
        if [[ -e $crash ]]; then echo "  crash: fuzz/$crash"; fi
    done
done
