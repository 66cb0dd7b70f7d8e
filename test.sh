#!/usr/bin/env bash
# The whole test suite. Installs the Debian packages the build and the tests need when they
# are missing (the tests start their own broker, TPM and token on loopback) and the
# dashboard test's browser driver from npm, then checks formatting and lints, checks the
# committed PTX against its CUDA sources (NVRTC and ptxas from pinned PyPI wheels, no GPU
# needed), checks the receipt test vectors with implementations we did not write
# (eth-account, cryptography), checks the committed settlement contract artifacts against
# their Solidity sources (pinned solc-js from npm), builds every binary, runs every test, fuzzes the wire
# decoders for 20 s, installs an update with the real RAUC and boots the rig image.
set -euo pipefail
cd "$(dirname "$0")"

# mosquitto: the broker the integration tests start; libtss2-dev, pkg-config: building the
# TPM backend; swtpm, swtpm-tools: the TPM its tests start; softhsm2: the PKCS#11 token its
# tests use; the rig image's boot test: mmdebstrap, mtools, dosfstools, fdisk (building the
# image), systemd-container (systemd-nspawn), mosquitto-clients (reading the rig's status);
# afl++: the coverage-guided fuzzer of the wire decoders; prometheus: the server that scrapes
# the fleet exporter in its test; chromium: the browser the owners' dashboard test drives;
# postgresql: the server the tests of the PostgreSQL ledger start (as their own, on loopback);
# rauc, squashfs-tools: the updater and its bundles (images/update-test.sh).
need=()
for pkg in mosquitto libtss2-dev pkg-config swtpm swtpm-tools softhsm2 \
  mmdebstrap mtools dosfstools fdisk systemd-container mosquitto-clients afl++ prometheus \
  chromium postgresql rauc squashfs-tools; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# playwright-core (pinned in its package-lock.json): drives that browser.
npm ci --prefix coordinator/dashboard/e2e --no-audit --no-fund --silent

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
sh kernels/check_ptx.sh
sh protocol/tests/check_vectors.sh
sh coordinator/settlement/check_artifacts.sh
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# A short coverage-guided run over every wire decoder (longer runs: BENCHMARKS.md).
bash protocol/fuzz/run.sh 20
# Update bundles installed, refused and rolled back by RAUC with the image's configuration
# and boot backend (images/update-test.sh).
bash images/update-test.sh
# The rig image built from this rigd and booted with systemd-nspawn (images/boot-test.sh).
bash images/boot-test.sh
