#!/usr/bin/env bash
# Boots the whole rig image as a PC would: QEMU with UEFI firmware (OVMF), systemd-boot from
# the ESP, the kernel, the root partition, rig.conf from the RIGCONFIG partition (a sim GPU
# and a mosquitto on this machine, reached at 10.0.2.2). Prints the time from power-on to rigd
# READY, checks that the rig's status
# reached the broker, and that the first boot grew the rigdata partition (/var/lib/rigd) over a
# larger disk; the boot's milestones come from the rig's own journal, read back from slot A
# afterwards.
# QEMU emulates the CPU (TCG) unless RIGD_QEMU_ACCEL=kvm: slow, but the same boot, and KVM
# inside a virtual machine often fails.
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
part() { sfdisk --dump "$disk" 2>/dev/null | sed -n "s/.*$1= *\\([0-9]*\\),.*name=\"$2\".*/\\1/p"; }
data_before=$(part size rigdata)
"$here/configure.sh" "$disk" --rig-id qemu-rig --broker "10.0.2.2:$port" \
  --set 'key="file:receipt-key"' --set allow_software_key=true --set 'gpu="sim"'

accel="${RIGD_QEMU_ACCEL:-tcg}"
t0=$(date +%s.%N)
qemu-system-x86_64 -machine q35,accel="$accel" -m 1024 -smp 2 -bios "$ovmf" \
  -drive file="$disk",format=raw,if=virtio \
  -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
  -display none -serial file:"$work/serial.log" \
  -qmp unix:"$work/qmp.sock",server=on,wait=off &
qemu_pid=$!

# rigd publishes its retained status as it gets READY: the first one is the marker (the
# serial console stops showing systemd's status lines once the serial getty starts).
if ! mosquitto_sub -h 127.0.0.1 -p "$port" -t 'rigd/v1/rig/qemu-rig/status' -C 1 -W "$timeout" > /dev/null; then
  tail -60 "$work/serial.log" | tr -d '\r'
  echo "qemu-boot: FAILED: no status from rigd within $timeout s" >&2
  exit 1
fi
ready=$(awk -v now="$(date +%s.%N)" -v t="$t0" 'BEGIN { printf "%.1f", now - t }')
echo "qemu-boot: rigd READY and on the broker $ready s after power-on ($accel)"

# A clean power-off (ACPI), so that the journal is on the disk to read back.
python3 - "$work/qmp.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    f.readline()
PY
for _ in $(seq 1 600); do
  kill -0 "$qemu_pid" 2>/dev/null || break
  sleep 0.5
done
kill "$qemu_pid" 2>/dev/null || true
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=""

rootfs="$disk?offset=$(( $(part start root-a) * 512 ))"
debugfs -R "rdump /var/log/journal $work" "$rootfs" 2>/dev/null
echo "qemu-boot: from the rig's journal (seconds since the kernel started):"
journalctl -D "$(ls -d "$work"/journal/*/ | head -1)" -o short-monotonic --no-pager 2>/dev/null \
  | grep -E 'Started rigd.service|Mounted etc-rig|Mounted var-lib-rigd|Mounted efi|systemd-repart\[.*rigdata|Finished systemd-growfs|Startup finished' \
  | sed 's/^/  /'
data_after=$(part size rigdata)
datafs="$disk?offset=$(( $(part start rigdata) * 512 ))"
blocks=$(dumpe2fs -h "$datafs" 2>/dev/null | sed -n 's/^Block count: *//p')
block_size=$(dumpe2fs -h "$datafs" 2>/dev/null | sed -n 's/^Block size: *//p')
echo "qemu-boot: rigdata partition $((data_before / 2048)) MiB -> $((data_after / 2048)) MiB," \
  "file system $((blocks * block_size / 1048576)) MiB"
[ "$data_after" -gt "$data_before" ] || { echo "qemu-boot: FAILED: the rigdata partition did not grow" >&2; exit 1; }
debugfs -R "ls -l /" "$datafs" 2>/dev/null | grep -q ' journal.db$' \
  || { echo "qemu-boot: FAILED: rigd's journal.db is not on the rigdata partition" >&2; exit 1; }
echo "qemu-boot: rigd's journal.db is on the rigdata partition"
