#!/usr/bin/env bash
# Boots the whole rig image as a PC would: QEMU with UEFI firmware (OVMF), systemd-boot from
# the ESP, the kernel, the root partition, rig.conf from the RIGCONFIG partition (a sim GPU
# and a mosquitto on this machine, reached at 10.0.2.2). Prints the time from power-on to rigd
# READY (systemd's "Started rigd.service" on the serial console), checks that the rig's status
# reached the broker and that the first boot grew the root partition over a larger disk.
# Without KVM (as here) QEMU emulates the CPU (TCG): slow, but the same boot.
#
#   images/qemu-boot.sh [IMAGE] [--timeout SECONDS]      (default images/out/rig.img, 600 s)
#
# Needs qemu-system-x86, ovmf, mosquitto, mosquitto-clients, mtools, fdisk, e2fsprogs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
image="$here/out/rig.img"
timeout=600
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout="$2"; shift 2 ;;
    *) image="$1"; shift ;;
  esac
done
[ -f "$image" ] || { echo "qemu-boot: $image not found: build it with images/build.sh" >&2; exit 2; }
ovmf=/usr/share/ovmf/OVMF.fd
[ -f "$ovmf" ] || { echo "qemu-boot: $ovmf missing: apt-get install ovmf" >&2; exit 2; }

work="$(mktemp -d)"
qemu_pid=""
broker_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
broker_pid=$!

# A copy of the image on a disk 1 GiB larger than the image, as on a bigger stick.
disk="$work/disk.img"
cp --sparse=always "$image" "$disk"
truncate -s +1G "$disk"
root_before=$(sfdisk --dump "$disk" | sed -n 's/.*size= *\([0-9]*\),.*name="root".*/\1/p')
"$here/configure.sh" "$disk" --rig-id qemu-rig --broker "10.0.2.2:$port" \
  --set 'key="file:receipt-key"' --set allow_software_key=true --set 'gpu="sim"'

accel=tcg
[ -w /dev/kvm ] && accel=kvm
t0=$(date +%s.%N)
qemu-system-x86_64 -machine q35,accel=$accel -m 1024 -smp 2 -bios "$ovmf" \
  -drive file="$disk",format=raw,if=virtio \
  -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
  -display none -serial file:"$work/serial.log" -monitor none &
qemu_pid=$!

deadline=$(( $(date +%s) + timeout ))
until grep -q 'Started.*rigd.service' "$work/serial.log" 2>/dev/null; do
  if grep -q 'Failed to start.*rigd.service' "$work/serial.log" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
    tail -60 "$work/serial.log" | tr -d '\r'
    echo "qemu-boot: FAILED: rigd did not get READY" >&2
    exit 1
  fi
  sleep 0.5
done
ready=$(awk -v now="$(date +%s.%N)" -v t="$t0" 'BEGIN { printf "%.1f", now - t }')
echo "qemu-boot: rigd READY $ready s after power-on ($accel)"
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'rigd/v1/rig/qemu-rig/status' -C 1 -W 60 > /dev/null \
  || { echo "qemu-boot: FAILED: no status from the rig on the broker" >&2; exit 1; }
echo "qemu-boot: the rig's status reached the broker"
grep -a -E 'systemd-repart|growfs|RIGCONFIG|rig-config' "$work/serial.log" | tr -d '\r' | sed 's/^/  /' || true
in_ready="$(grep -a -o 'rigd.*Status.*' "$work/serial.log" | head -1 || true)"
[ -n "$in_ready" ] && echo "  $in_ready"
kill "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=""

root_after=$(sfdisk --dump "$disk" | sed -n 's/.*size= *\([0-9]*\),.*name="root".*/\1/p')
start=$(sfdisk --dump "$disk" | sed -n 's/.*start= *\([0-9]*\),.*name="root".*/\1/p')
blocks=$(dumpe2fs -h "$disk?offset=$((start * 512))" 2>/dev/null | sed -n 's/^Block count: *//p')
block_size=$(dumpe2fs -h "$disk?offset=$((start * 512))" 2>/dev/null | sed -n 's/^Block size: *//p')
echo "qemu-boot: root partition $((root_before / 2048)) MiB -> $((root_after / 2048)) MiB," \
  "file system $((blocks * block_size / 1048576)) MiB"
[ "$root_after" -gt "$root_before" ] || { echo "qemu-boot: FAILED: the root partition did not grow" >&2; exit 1; }
