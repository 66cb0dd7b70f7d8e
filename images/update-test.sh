#!/usr/bin/env bash
# The update path on this machine, with the real RAUC (part of ./test.sh): a RAUC service on a
# private D-Bus, configured by the image's images/rauc/system.conf with its two root slots on
# files (loop-mounted ext4) and rig-boot as its boot backend on an ESP folder. Checks:
#   1. slot A booted and primary, B empty;
#   2. a bundle signed by another key, a truncated bundle and a bundle for another machine are
#      refused, and neither slot B nor the ESP changed (byte for byte);
#   3. a good bundle: slot B holds its root, the ESP its kernel and initrd, B's entry counts 3
#      tries and sorts first (B is primary), A's entry sorts second;
#   4. the tries systemd-boot takes off (it renames the entry before each boot): B stays
#      primary while it has tries, then is bad and A is primary again, by itself;
#   5. installed again and marked good (`rauc status mark-good`, as rigd does once READY): the
#      counter is gone, B is good and primary;
#   6. rig-trial's question (on-trial) follows the booted slot's counter.
# What this machine lacks: device-mapper, so the install runs a plain bundle here (the image
# takes verity bundles only: the rig's install of one runs under QEMU, images/qemu-update.sh);
# `rauc info` checks the verity bundle bundle.sh makes. systemd-boot's own renames run there
# too.
#
#   images/update-test.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

skip() { echo "update-test: SKIPPED: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root (loop mounts of the slots)"
for tool in rauc dbus-run-session mksquashfs mkfs.ext4 debugfs openssl; do
  command -v "$tool" >/dev/null || { echo "update-test: $tool is missing" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'umount -q "$work"/mnt/* 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/mnt"
if ! mount -o loop,ro "$(truncate -s 4M "$work/probe" && mkfs.ext4 -q "$work/probe" && echo "$work/probe")" "$work/mnt" 2>/dev/null; then
  skip "cannot loop-mount a file here"
fi
umount "$work/mnt"

fail() { echo "update-test: FAILED: $*" >&2; tail -20 "$work/service.log" >&2 || true; exit 1; }
t_start=$(date +%s.%N)

# Two versions of a root: a kernel, an initrd and /etc/rigd-image each.
for v in 1.0.0 2.0.0; do
  r="$work/root-$v"
  mkdir -p "$r/boot" "$r/etc"
  printf 'RIGD_IMAGE_VERSION=%s\n' "$v" > "$r/etc/rigd-image"
  head -c 300000 /dev/urandom > "$r/boot/vmlinuz-6.1.0-$v"
  head -c 200000 /dev/urandom > "$r/boot/initrd.img-6.1.0-$v"
  truncate -s 24M "$work/root-$v.ext4"
  mkfs.ext4 -q -L rigroot -d "$r" "$work/root-$v.ext4"
done
devices="$work/dev"
mkdir -p "$devices"
cp "$work/root-1.0.0.ext4" "$devices/root-a"
truncate -s 48M "$devices/root-a"
truncate -s 48M "$devices/root-b"

# The ESP as build.sh leaves it: slot A's kernel and its entry.
esp="$work/esp"
mkdir -p "$esp/loader/entries" "$esp/a"
debugfs -R "dump /boot/vmlinuz-6.1.0-1.0.0 $esp/a/vmlinuz" "$devices/root-a" 2>/dev/null
debugfs -R "dump /boot/initrd.img-6.1.0-1.0.0 $esp/a/initrd.img" "$devices/root-a" 2>/dev/null
"$here/rauc/rig-boot" entry A rig-1 > "$esp/loader/entries/rig-a.conf"
echo "rauc.slot=A" > "$work/cmdline"

# The fleet's update key, another key, and the bundles.
"$here/bundle.sh" --new-key "$work/key" > /dev/null
"$here/bundle.sh" --new-key "$work/other-key" > /dev/null
bundle() { "$here/bundle.sh" --root "$work/root-2.0.0.ext4" --cert "$work/key/cert.pem" --key "$work/key/key.pem" "$@"; }
bundle --format plain --out "$work/good.raucb"
bundle --format verity --out "$work/verity.raucb"
bundle --format plain --compatible other-machine --out "$work/other-machine.raucb"
"$here/bundle.sh" --root "$work/root-2.0.0.ext4" --cert "$work/other-key/cert.pem" \
  --key "$work/other-key/key.pem" --format plain --out "$work/other-key.raucb" > /dev/null
head -c $(( $(stat -c %s "$work/good.raucb") - 4096 )) "$work/good.raucb" > "$work/truncated.raucb"

# The image's system.conf with the slots on files and plain bundles allowed.
sed -e "s|/dev/disk/by-partlabel/|$devices/|" -e '/^bundle-formats=/d' \
  -e "s|^path=/etc/rauc/keyring.pem|path=$work/key/cert.pem|" \
  -e "s|^bootloader-custom-backend=.*|bootloader-custom-backend=$here/rauc/rig-boot|" \
  "$here/rauc/system.conf" > "$work/system.conf"

echo "== rauc info of the verity bundle bundle.sh made"
info="$(rauc info --keyring="$work/key/cert.pem" --output-format=json "$work/verity.raucb" 2>/dev/null)" \
  || fail "rauc info refused the verity bundle"
grep -q '"compatible":"rigd-rig-x86_64","version":"2.0.0"' <<< "$info" || fail "verity bundle: $info"
rauc info --keyring="$work/other-key/cert.pem" "$work/verity.raucb" > /dev/null 2>&1 \
  && fail "rauc info took the bundle with another keyring"
echo "verity bundle: signature verified, compatible and version as made; another keyring refuses it"

# Everything that talks to the service runs inside one private bus session.
cat > "$work/session.sh" <<'SESSION'
set -euo pipefail
export DBUS_STARTER_BUS_TYPE=session
rauc service --override-boot-slot=A --conf="$WORK/system.conf" --mount="$WORK/mnt" \
  > "$WORK/service.log" 2>&1 &
service=$!
trap 'kill $service 2>/dev/null || true' EXIT
fail() { echo "update-test: FAILED: $*" >&2; tail -20 "$WORK/service.log" >&2; exit 1; }
for _ in $(seq 1 100); do
  (rauc status) > /dev/null 2>&1 && break
  sleep 0.1
done
boot() { "$HERE/rauc/rig-boot" "$@"; }
entries() { (cd "$ESP/loader/entries" && ls) | tr '\n' ' '; }
primary() { rauc status --output-format=json | sed -n 's/.*"boot_primary":"\([^"]*\)".*/\1/p'; }
fingerprint() { sha256sum "$DEVICES/root-b" | cut -c1-16; (cd "$ESP" && find . -type f -exec sha256sum {} + | sort) | sha256sum | cut -c1-16; }

echo "== 1. slot A booted and primary"
status="$(rauc status --output-format=json)"
grep -q '"booted":"A","boot_primary":"rootfs.0"' <<< "$status" || fail "status: $status"
echo "booted A, primary rootfs.0 (A); entries: $(entries)"

echo "== 2. bundles refused before anything is written"
before="$(fingerprint)"
for b in other-key truncated other-machine; do
  out="$(rauc install "$WORK/$b.raucb" 2>&1)" && fail "$b.raucb installed"
  reason="$(grep -m1 'LastError' <<< "$out" | sed 's/^LastError: //')"
  case "$b" in
    other-key) grep -qi 'signature' <<< "$reason" || fail "$b: $reason" ;;
    truncated) grep -qiE 'signature|size|bundle' <<< "$reason" || fail "$b: $reason" ;;
    other-machine) grep -qi 'compatible' <<< "$reason" || fail "$b: $reason" ;;
  esac
  [ "$(fingerprint)" = "$before" ] || fail "$b.raucb changed slot B or the ESP"
  echo "$b.raucb refused: $reason"
done
echo "slot B and the ESP byte for byte as before"

echo "== 3. a good bundle"
t0=$(date +%s.%N)
rauc install "$WORK/good.raucb" > "$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; fail "install"; }
echo "installed in $(awk -v now="$(date +%s.%N)" -v t="$t0" 'BEGIN { printf "%.2f", now - t }') s"
[ "$(debugfs -R 'cat /etc/rigd-image' "$DEVICES/root-b" 2>/dev/null)" = "RIGD_IMAGE_VERSION=2.0.0" ] \
  || fail "slot B does not hold version 2.0.0"
cmp -s "$ESP/b/vmlinuz" "$WORK/root-2.0.0/boot/vmlinuz-6.1.0-2.0.0" || fail "B's kernel is not on the ESP"
cmp -s "$ESP/b/initrd.img" "$WORK/root-2.0.0/boot/initrd.img-6.1.0-2.0.0" || fail "B's initrd is not on the ESP"
[ "$(entries)" = "rig-a.conf rig-b+3.conf " ] || fail "entries after install: $(entries)"
grep -q '^sort-key rig-1' "$ESP/loader/entries/rig-b+3.conf" || fail "B does not sort first"
grep -q '^sort-key rig-2' "$ESP/loader/entries/rig-a.conf" || fail "A does not sort second"
grep -q '^options  root=PARTLABEL=root-b rauc.slot=B ' "$ESP/loader/entries/rig-b+3.conf" || fail "B's command line"
[ "$(primary)" = rootfs.1 ] || fail "primary after install: $(primary)"
echo "slot B: version 2.0.0; ESP: b/vmlinuz, b/initrd.img; entries: $(entries); primary $(primary) (B)"

echo "== 4. three failed boots of B"
cd "$ESP/loader/entries"
for try in "rig-b+3.conf rig-b+2-1.conf" "rig-b+2-1.conf rig-b+1-2.conf" "rig-b+1-2.conf rig-b+0-3.conf"; do
  set -- $try
  [ "$(boot get-primary)" = B ] || fail "before the try that makes $2, primary is $(boot get-primary)"
  mv "$1" "$2"
done
cd - > /dev/null
[ "$(boot get-primary)" = A ] || fail "B out of tries, primary is $(boot get-primary)"
[ "$(boot get-state B)" = bad ] || fail "B out of tries is $(boot get-state B)"
[ "$(primary)" = rootfs.0 ] || fail "RAUC's primary with B out of tries: $(primary)"
echo "entries: $(entries); B bad, A primary again"

echo "== 5. installed again, then marked good"
rauc install "$WORK/good.raucb" > "$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; fail "second install"; }
[ "$(entries)" = "rig-a.conf rig-b+3.conf " ] || fail "entries after the second install: $(entries)"
echo "rauc.slot=B" > "$WORK/cmdline"
boot on-trial || fail "B with tries is not on trial"
rauc status mark-good rootfs.1 > /dev/null 2>&1 || fail "mark-good"
[ "$(entries)" = "rig-a.conf rig-b.conf " ] || fail "entries after mark-good: $(entries)"
[ "$(boot get-state B)" = good ] && [ "$(primary)" = rootfs.1 ] || fail "B after mark-good: $(boot get-state B), primary $(primary)"
echo "entries: $(entries); B good and primary"

echo "== 6. on-trial follows the booted slot"
boot on-trial && fail "B marked good is still on trial"
echo "rauc.slot=A" > "$WORK/cmdline"
boot on-trial && fail "A (never counted) is on trial"
echo "on-trial: no for B marked good, no for A"
SESSION
WORK="$work" HERE="$here" ESP="$esp" DEVICES="$devices" RIG_BOOT_ESP="$esp" \
  RIG_BOOT_DEVICES="$devices" RIG_BOOT_CMDLINE="$work/cmdline" \
  timeout 300 dbus-run-session -- bash "$work/session.sh" 2> >(grep -v 'Failed to set fd limit' >&2) \
  || fail "see above"
echo "update-test: passed in $(awk -v now="$(date +%s.%N)" -v t="$t_start" 'BEGIN { printf "%.1f", now - t }') s"
