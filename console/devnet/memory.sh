#!/usr/bin/env bash
# The demo's memory over a long run: console/devnet/memory.sh [MINUTES] (default 30).
# Builds rigd-devnet in release, runs it with a loss target it never reaches, samples the
# RSS of the demo process (its card workers not counted) every 30 s and prints one line per
# sample: seconds, RSS in MiB, training step. Figures in BENCHMARKS.md ("Devnet memory").
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes="${1:-30}"
target="${CARGO_TARGET_DIR:-$HOME/.cache/rigd-target}"
CARGO_TARGET_DIR="$target" cargo build --release --locked -p rigd-devnet
log="$(mktemp)"
"$target/release/rigd-devnet" --steps 100000 --loss-target 0 >"$log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
start=$(date +%s)
echo "seconds  rss_mib  step"
while [ $(( $(date +%s) - start )) -le $(( minutes * 60 )) ]; do
  kill -0 "$pid" 2>/dev/null || { echo "rigd-devnet stopped:" >&2; tail -5 "$log" >&2; exit 1; }
  rss=$(ps -o rss= -p "$pid")
  step=$(tail -1 "$log" | awk '$1 == "step" { print $2 }')
  awk -v t=$(( $(date +%s) - start )) -v r="$rss" -v s="${step:--}" \
    'BEGIN { printf "%7d  %7.1f  %s\n", t, r / 1024, s }'
  sleep 30
done
