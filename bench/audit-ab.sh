#!/usr/bin/env bash
# Same-run A/B of the warm rows with the audit log off and on: one folder of release
# binaries, alternating (ABBA) fresh `suite` runs of one scenario, the "on" runs with an
# `[audit]` table appended to authd's configuration (a file in a temp dir). Prints one line
# per run; compare the per-round ratios (on / off) and their median.
#
#   bench/audit-ab.sh BIN_DIR [ROUNDS] [DURATION]      (default 4 rounds of 6s)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bench/audit-ab.sh BIN_DIR [ROUNDS] [DURATION]" >&2; exit 2; }
bins=$1 rounds=${2:-4} duration=${3:-6s}
out=$(mktemp -d)
printf '[audit]\npath = "%s/audit.log"\n' "$out" > "$out/audit.toml"
run() { # label scenario round [extra args]
  local f="$out/$1-${2//\//_}-$3"
  "$bins/kube-authd-bench" suite --bin-dir "$bins" --only "$2" --duration "$duration" \
    --warmup 2s --rounds 0 --cold-tokens 2000 --out "$f.md" "${@:4}" > /dev/null 2> "$f.err"
  printf '%-4s round %d %s\n' "$1" "$3" "$(grep -F "| $2 " "$f.md" | head -1 | cut -d'|' -f2,4)"
}
for r in $(seq 1 "$rounds"); do
  for sc in aio-local/warm/h1 split-redis/warm/h1; do
    if (( r % 2 )); then run off "$sc" "$r"; run on "$sc" "$r" --authd-toml "$out/audit.toml"
    else run on "$sc" "$r" --authd-toml "$out/audit.toml"; run off "$sc" "$r"; fi
  done
done
echo "audit log lines written: $(wc -l < "$out/audit.log" 2>/dev/null || echo 0); reports in $out"
