#!/usr/bin/env bash
# The whole benchmark in one command: release builds, then every scenario and baseline
# side by side; the report goes to bench/RESULTS.md. Extra arguments go to
# `kube-authd-bench suite` (e.g. --duration 20s, --only warm, --smoke).
#
# The binaries are wherever cargo puts them: CARGO_TARGET_DIR (or build.target-dir in a
# cargo config) is honoured, as cargo itself reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --locked
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n $target_dir ]] || { echo "bench/run.sh: cargo metadata gave no target_directory" >&2; exit 1; }
exec "$target_dir/release/kube-authd-bench" suite "$@"
