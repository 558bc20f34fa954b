#!/usr/bin/env bash
# The whole benchmark in one command: release builds, then every scenario and baseline
# side by side; the report goes to bench/RESULTS.md. Extra arguments go to
# `kube-authd-bench suite` (e.g. --duration 20s, --only warm, --smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --locked
exec target/release/kube-authd-bench suite "$@"
