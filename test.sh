#!/usr/bin/env bash
# The whole test suite. Installs the Debian packages the tests need when they are missing
# (mosquitto: the integration tests start their own broker on a free loopback port), then
# checks formatting and lints, checks the committed PTX against its CUDA sources (NVRTC and
# ptxas from pinned PyPI wheels, no GPU needed), checks the receipt test vectors with
# implementations we did not write (eth-account, cryptography), builds every binary and runs
# every test.
set -euo pipefail
cd "$(dirname "$0")"

need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
sh kernels/check_ptx.sh
sh protocol/tests/check_vectors.sh
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
