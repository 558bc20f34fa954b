#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time, on a copy of its
# seed corpus (fuzz/corpus/<target>, kept small and reviewed: new inputs land in
# fuzz/target/corpus/<target>, not in git). Prints the executions each target ran; exits
# non-zero on the first crash, leaving the input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#   FUZZ_DEV=1 scripts/fuzz.sh 20                         (CI's short pass)
#
# Needs the nightly toolchain; installs cargo-fuzz when it is missing. FUZZ_SANITIZER picks
# the sanitizer (default none: the code under test is safe Rust, where the findings are
# panics, and without ASan the targets build faster and run about twice as many inputs).
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
# FUZZ_DEV=1 builds the targets without optimisation: a few minutes instead of a quarter of
# an hour from scratch, for CI's short pass (fewer executions per second, same checks).
profile=()
[ "${FUZZ_DEV:-0}" = 1 ] && profile=(--dev)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build "${profile[@]}" --sanitizer "$sanitizer"

summary=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    mkdir -p "$work"
    cp -n "fuzz/corpus/$t"/* "$work"/ 2>/dev/null || true
    log="fuzz/target/fuzz-$t.log"
    echo "fuzz: $t for ${seconds}s" >&2
    if ! cargo +nightly fuzz run "${profile[@]}" --sanitizer "$sanitizer" "$t" "$work" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz: $t FAILED; input in fuzz/artifacts/$t/, log in $log" >&2
        exit 1
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    summary+=("$t: ${execs:-?} executions in ${seconds}s, no crash")
done
printf 'fuzz: %s\n' "${summary[@]}"
