#!/usr/bin/env bash
# Coverage-guided fuzzing of every wire decoder with AFL++ on the stable toolchain:
#   protocol/fuzz/run.sh [SECONDS]      (default 60)
# Builds fuzz-frames with rustc's sancov instrumentation linked against Debian afl++'s
# afl-compiler-rt.o (forkserver and coverage map), in release with debug assertions and
# overflow checks on, runs afl-fuzz for SECONDS from the seed frames, prints executions,
# executions per second, paths found and crashes, and fails if there is any crash (the
# crashing inputs stay in the output directory it prints).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
rt=/usr/lib/afl/afl-compiler-rt.o
if ! command -v afl-fuzz >/dev/null || [ ! -f "$rt" ]; then
  echo "afl++ is not installed (Debian package afl++)" >&2
  exit 2
fi
target="${CARGO_TARGET_DIR:-$HOME/.cache/rigd-target}/afl"
RUSTFLAGS="-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 \
  -C llvm-args=-sanitizer-coverage-trace-pc-guard -C llvm-args=-sanitizer-coverage-prune-blocks=0 \
  -C debug-assertions -C overflow-checks -C codegen-units=1 -C link-arg=$rt" \
  CARGO_TARGET_DIR="$target" cargo build --release --locked -p rigd-protocol-fuzz --bin fuzz-frames
bin="$target/release/fuzz-frames"
work="$(mktemp -d)"
mkdir "$work/seeds"
"$bin" --seeds "$work/seeds"
# No tuning of this machine: afl-fuzz is told to accept its CPU, core-dump and affinity
# settings as they are.
AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
  AFL_NO_UI=1 AFL_QUIET=1 \
  afl-fuzz -V "$seconds" -i "$work/seeds" -o "$work/out" -- "$bin" >"$work/afl.log" 2>&1 || {
  tail -20 "$work/afl.log" >&2
  exit 1
}
stats="$work/out/default/fuzzer_stats"
get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
echo "afl-fuzz $seconds s: execs_done $(get execs_done), execs_per_sec $(get execs_per_sec), corpus_count $(get corpus_count), saved_crashes $(get saved_crashes), saved_hangs $(get saved_hangs) (output in $work/out)"
[ "$(get saved_crashes)" = 0 ]
