#!/bin/sh
# Recompiles coordinator/settlement/contracts with the pinned solc-js and OpenZeppelin
# Contracts (solc/package-lock.json) and compares the ABI and bytecode with the committed
# artifacts/, which the Rust bindings and tests are built from. After a deliberate change to a
# contract: node coordinator/settlement/solc/build.mjs (writes artifacts/), then commit both.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
npm ci --prefix "$here/solc" --no-audit --no-fund --silent
exec node "$here/solc/build.mjs" --check
