#!/usr/bin/env bash
# Same-run A/B of the warm rows: two folders of release binaries (each with its own
# kube-authd-bench, so each side writes the configuration its binaries read), in ABBA order,
# each run a fresh `suite` with one scenario. Prints one line per run; compare the per-round
# ratios (new / old) and their median.
#
#   bench/ab.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS] [DURATION]      (default 4 rounds of 6s)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bench/ab.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS] [DURATION]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-4} duration=${4:-6s}
out=$(mktemp -d)
run() { # dir label scenario round
  local f="$out/$2-${3//\//_}-$4"
  "$1/kube-authd-bench" suite --bin-dir "$1" --only "$3" --duration "$duration" --warmup 2s \
    --rounds 0 --cold-tokens 2000 --out "$f.md" > /dev/null 2> "$f.err"
  printf '%-4s round %d %s\n' "$2" "$4" "$(grep -F "| $3 " "$f.md" | head -1 | cut -d'|' -f2,4)"
}
for r in $(seq 1 "$rounds"); do
  for sc in aio-local/warm/h1 split-redis/warm/h1; do
    if (( r % 2 )); then run "$old" old "$sc" "$r"; run "$new" new "$sc" "$r"
    else run "$new" new "$sc" "$r"; run "$old" old "$sc" "$r"; fi
  done
done
echo "reports in $out"
