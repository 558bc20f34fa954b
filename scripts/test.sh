#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the end-to-end tests, which start the real
# binaries and their own private redis-server / slapd / PostgreSQL processes.
#
# System packages the tests need are checked first; as root they are installed with
# apt-get, otherwise the script says what to install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package providing it
declare -A need=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [python3]=python3
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# The benchmark smoke test runs the seed's Flask app from a venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing test dependencies: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing test dependencies; install them first: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

cargo build --workspace --bins --locked
cargo test --workspace --locked
