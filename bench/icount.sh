#!/usr/bin/env bash
# Instructions per warm review, split mode against the split ceiling, counted by callgrind:
# a figure that does not move with the machine's load, unlike reviews/s.
#
#   bench/icount.sh            # both; needs valgrind (apt-get install valgrind)
#   bench/icount.sh split 8    # one side, 8 s of load
#   ICOUNT_KEEP=/tmp/cg bench/icount.sh split   # and keep the callgrind profiles
#   ICOUNT_BIN=/tmp/old bench/icount.sh split    # servers from elsewhere (an A/B); the
#                                                set-up and load from ICOUNT_BENCH
#
# Fixed background work (timers, health checks, cache housekeeping) is spread over the
# reviews of the run, so a loaded machine (fewer reviews) reads a little higher: compare
# two builds in alternating runs of the same session, not against a figure from another day.
#
# The servers run under callgrind; the load generator (not measured) sends the 100 hot
# tokens over 16 keep-alive connections. Counters are zeroed after a warm-up and dumped
# after the measured run; the 16 TLS handshakes (and the per-connection client-certificate
# check of the route) are subtracted. valgrind runs the portable
# SHA-256 (no SHA-NI), which inflates authd's fingerprint by ≈ 9k instructions.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "icount.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# The release binaries are wherever cargo puts them (CARGO_TARGET_DIR honoured).
T=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
B=${ICOUNT_BIN:-$T/release}
# The set-up (certificates, tokens, configuration) and the load come from this build's
# load generator, whatever binaries are measured.
G=${ICOUNT_BENCH:-$T/release/kube-authd-bench}
[ -x $B/authd ] && [ -x $B/authd-edge ] && [ -x $G ] ||
  { echo "icount.sh: build first: cargo build --release --workspace --bins" >&2; exit 1; }
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
# Certificates, tokens and an authd configuration, as the suite makes them.
$G suite --only split-local/warm/h1 --duration 1s --warmup 0s \
  --cold-tokens 1000 --rounds 0 --keep --out "$W/r.md" 2> "$W/suite.err" >/dev/null
D=$(sed -n 's/^bench: kept //p' "$W/suite.err")
head -100 "$D/tokens.csv" | cut -d, -f1 | sed 's/$/,true/' > "$W/hot.txt"

VG="valgrind --tool=callgrind --dump-instr=no --callgrind-out-file=$W/cg.%p"
wait_line() {
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && { grep -o "$3=[^ ]*" "$1" | head -1 | cut -d= -f2-; return; }
    sleep 0.1
  done
  echo "icount.sh: no '$2' in $1" >&2; exit 1
}
total() { grep -h "^summary:\|^totals:" $(ls "$W"/cg.$1.* | sort | tail -1) | head -1 | awk '{print $2}'; }
handshakes() {
  callgrind_annotate --inclusive=yes --auto=no --threshold=100 $(ls "$W"/cg.$1.* | sort | tail -1) 2>/dev/null |
    grep -E "MidHandshake<IS> as core::future::future::Future>::poll \[" | head -1 | awk '{gsub(",","",$1); print $1}'
}

# The route's client-certificate check (the chain against the cluster's CA) runs once per
# connection, like the handshake; kube-apiserver keeps its connections for hours, so it is
# connection set-up, not per-review work, and is subtracted the same way.
route_checks() {
  callgrind_annotate --inclusive=yes --auto=no --threshold=100 $(ls "$W"/cg.$1.* | sort | tail -1) 2>/dev/null |
    grep -E "authd_edge::conn::Peer::refusal \[" | head -1 | awk '{gsub(",","",$1); print $1}' || true
}

measure() {
  local mode=$1 secs=$2 back front url
  if [ "$mode" = split ]; then
    RUST_LOG=warn $VG $B/authd serve --config "$D/s00/authd.toml" > "$W/a.out" 2> "$W/a.err" & back=$!
    local grpc; grpc=$(wait_line "$W/a.out" "authd ready" grpc)
    printf 'listen = "127.0.0.1:0"\nshutdown_grace = "1s"\n[tls]\ncert = "%s/edge.crt"\nkey = "%s/edge.key"\nclient_ca = "%s/cluster-default-ca.crt"\n[authd]\nendpoint = "http://%s"\n' \
      "$D" "$D" "$D" "$grpc" > "$W/edge.toml"
    RUST_LOG=warn $VG $B/authd-edge serve --config "$W/edge.toml" > "$W/e.out" 2> "$W/e.err" & front=$!
    url=$(wait_line "$W/e.out" "authd-edge ready" https)/authenticate
  else
    $VG $B/kube-authd-bench fixed-authd > "$W/a.out" 2> "$W/a.err" & back=$!
    local grpc; grpc=$(wait_line "$W/a.out" "ready" grpc)
    $VG $B/kube-authd-bench fixed-https --cert "$D/edge.crt" --key "$D/edge.key" --authd "http://$grpc" \
      > "$W/e.out" 2> "$W/e.err" & front=$!
    url=$(wait_line "$W/e.out" "ready" https)/authenticate
  fi
  # kube-apiserver's client certificate, which the edge requires (the ceiling ignores it).
  cat "$D/apiserver-default.crt" "$D/apiserver-default.key" > "$W/identity.pem"
  run() { $G run --url "$url" --ca "$D/ca.crt" --identity "$W/identity.pem" --tokens "$W/hot.txt" --connections 16 --warmup 0s --duration "$1"; }
  # Warm-up long enough for the 16 TLS handshakes (client certificates verified under
  # valgrind take seconds) and the first lookup of every hot token.
  run 15s > /dev/null 2>&1
  callgrind_control -z $back > /dev/null 2>&1; callgrind_control -z $front > /dev/null 2>&1
  run "${secs}s" > "$W/run.out" 2>&1
  callgrind_control -d $back > /dev/null 2>&1; callgrind_control -d $front > /dev/null 2>&1
  sleep 1
  kill $back $front; wait $back $front 2>/dev/null || true
  local ok hs rc b f
  ok=$(grep -o "ok [0-9]*" "$W/run.out" | cut -d' ' -f2)
  hs=$(handshakes $front); rc=$(route_checks $front); b=$(total $back)
  f=$(( $(total $front) - ${hs:-0} - ${rc:-0} ))
  printf '%-8s reviews %6d  back %7d  front %7d  total %7d instructions per review\n' \
    "$mode" "$ok" $((b / ok)) $((f / ok)) $(((b + f) / ok))
  # ICOUNT_KEEP=DIR keeps the profiles, for callgrind_annotate.
  [ -n "${ICOUNT_KEEP:-}" ] && mkdir -p "$ICOUNT_KEEP" && cp "$W"/cg.* "$ICOUNT_KEEP"/
  rm -f "$W"/cg.*
}

secs=${2:-6}
case "${1:-both}" in
  split|ceiling) measure "$1" "$secs" ;;
  both) measure ceiling "$secs"; measure split "$secs" ;;
  *) echo "usage: bench/icount.sh [split|ceiling|both] [seconds]" >&2; exit 2 ;;
esac
rm -rf "$D"
