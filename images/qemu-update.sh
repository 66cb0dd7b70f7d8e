#!/usr/bin/env bash
# Over-the-air updates of the real rig image, under QEMU with UEFI firmware (OVMF): real
# reboots, systemd-boot's boot counting, RAUC installing verity bundles. On this machine: a
# mosquitto, a coordinator with a long job, an HTTPS server for the bundles (a CA of its own,
# the certificate for 10.0.2.2, which the rig reaches it at) and rigctl as the operator.
#   1. A to B: `rigctl update` to 2.0.0; the rig drains, fetches, installs into slot B,
#      reboots and marks B good: READY on B, same identity (the coordinator's pinned key),
#      the receipts of before and after the update credited with no seq missing.
#   3. Refused before anything is written: a bundle signed by another key, a truncated one,
#      one for another machine (verity bundles, checked by rauc info on the rig).
#   2. A bundle whose rigd cannot start (2.0.1, /bin/false as rigd) into slot A: rigd fails,
#      rig-trial reboots, the boot counter runs out, the rig is back on B by itself, and
#      rigctl reports the failed update with its reason.
#   4. Power cut during an install (QEMU killed while RAUC writes): the rig boots its old
#      slot and works.
# Prints the figures of BENCHMARKS.md: bundle size, download and install, command to READY
# on the new slot, time to roll back.
#
#   images/qemu-update.sh [--rigd PATH] [--keep DIR] [--power-cut-only]
#
# --rigd: the rigd of versions 1.0.0 and 2.0.0 (default: the release build; rigctl and the
# coordinator are taken from beside it). QEMU emulates the CPU (TCG) unless
# RIGD_QEMU_ACCEL=kvm. --power-cut-only: step 4 alone, from 1.0.0 on slot A (the update to
# 2.0.0 into slot B cut), then the ledger and identity checks; about 45 minutes instead of 90. Needs root (images/build.sh), qemu-system-x86, ovmf, rauc,
# squashfs-tools, mosquitto, mosquitto-clients, python3, openssl; about 10 GB of disk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
rigd="$bin/rigd"
keep=""
only_cut=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rigd) rigd="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    --power-cut-only) only_cut=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "qemu-update: unknown argument $1" >&2; exit 2 ;;
  esac
done
rigctl="$(dirname "$rigd")/rigctl"
coordinator="$(dirname "$rigd")/coordinator"
for f in "$rigd" "$rigctl" "$coordinator"; do
  [ -x "$f" ] || { echo "qemu-update: $f missing: cargo build --release --workspace --bins" >&2; exit 2; }
done
ovmf=/usr/share/ovmf/OVMF.fd
[ -f "$ovmf" ] || { echo "qemu-update: $ovmf missing: apt-get install ovmf" >&2; exit 2; }

if [ -n "$keep" ]; then work="$keep"; mkdir -p "$work"; else work="$(mktemp -d)"; fi
pids=()
qemu_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
say() { echo "qemu-update: $*"; }
fail() { say "FAILED: $*" >&2; tail -40 "$work/serial.log" 2>/dev/null | tr -d '\r' >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v now="$(now)" -v t="$1" 'BEGIN { printf "%.1f", now - t }'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Keys: the fleet's update key (in the image's keyring), another one, and the bundle
# server's CA and certificate.
"$here/bundle.sh" --new-key "$work/update-key" > /dev/null
"$here/bundle.sh" --new-key "$work/other-key" > /dev/null
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out fleet-ca.pem -days 30 -subj "/CN=fleet CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
    -out server.csr -subj "/CN=bundles" 2>/dev/null
  printf 'subjectAltName=IP:10.0.2.2,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA fleet-ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 30 -extfile server.ext 2>/dev/null
)

# Images: 1.0.0 (flashed), 2.0.0 (the update), 2.0.1 (rigd cannot start: /bin/false).
www="$work/www"
mkdir -p "$www"
build() {
  local version="$1" rigd_bin="$2"
  "$here/build.sh" --rigd "$rigd_bin" --version "$version" \
    --keyring "$work/update-key/cert.pem" --out "$work/v$version" 2>&1 | tail -1
  rm -rf "$work/v$version/root"
}
build 1.0.0 "$rigd"
build 2.0.0 "$rigd"
rm -f "$work/v2.0.0/rig.img"
sign() { "$here/bundle.sh" --cert "$work/update-key/cert.pem" --key "$work/update-key/key.pem" "$@"; }
sign --root "$work/v2.0.0/root.ext4" --out "$www/rig-2.0.0.raucb"
if [ -z "$only_cut" ]; then
  cp /bin/false "$work/broken-rigd"
  build 2.0.1 "$work/broken-rigd"
  rm -f "$work/v2.0.1/rig.img"
  sign --root "$work/v2.0.1/root.ext4" --out "$www/rig-2.0.1.raucb"
  sign --root "$work/v1.0.0/root.ext4" --out "$www/rig-1.0.0.raucb"
  sign --root "$work/v2.0.0/root.ext4" --compatible other-machine --out "$www/other-machine.raucb" > /dev/null
  "$here/bundle.sh" --cert "$work/other-key/cert.pem" --key "$work/other-key/key.pem" \
    --root "$work/v2.0.0/root.ext4" --out "$www/other-key.raucb" > /dev/null
  head -c $(( $(stat -c %s "$www/rig-2.0.0.raucb") / 2 )) "$www/rig-2.0.0.raucb" > "$www/truncated.raucb"
fi
bundle_size=$(du -h --apparent-size "$www/rig-2.0.0.raucb" | cut -f1)

# This machine's side: broker, coordinator, bundle server, operator key.
port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
pids+=($!)
"$coordinator" --broker "127.0.0.1:$port" --db "$work/ledger.db" --job gemm --units 1000000 \
  > "$work/coordinator.log" 2>&1 &
pids+=($!)
https=$(free_port)
python3 -c '
import functools, http.server, ssl, sys
port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()' "$https" "$www" "$work/server.pem" "$work/server.key" > "$work/https.log" 2>&1 &
pids+=($!)
operator=$("$rigctl" operator keygen "$work/operator.key" 2>/dev/null)
ctl() { "$rigctl" --broker "127.0.0.1:$port" "$@"; }

# The rig's disk: image 1.0.0 on a stick 1 GiB larger, configured.
disk="$work/disk.img"
cp --sparse=always "$work/v1.0.0/rig.img" "$disk"
rm -f "$work/v1.0.0/rig.img"
truncate -s +1G "$disk"
"$here/configure.sh" "$disk" --rig-id qemu-rig --broker "10.0.2.2:$port" \
  --set 'key="file:receipt-key"' --set allow_software_key=true --set 'gpu="sim"' \
  --set "operator_keys=[\"$operator\"]" --set 'update.ca="/etc/rig-config/fleet-ca.pem"'
config_at=$(sfdisk --dump "$disk" | sed -n 's/.*start= *\([0-9]*\),.*name="rigconfig".*/\1/p')
MTOOLS_SKIP_CHECK=1 mcopy -i "$disk@@$((config_at * 512))" "$work/fleet-ca.pem" ::fleet-ca.pem

accel="${RIGD_QEMU_ACCEL:-tcg}"
power_on() {
  qemu-system-x86_64 -machine q35,accel="$accel" -m 1024 -smp 2 -bios "$ovmf" \
    -drive file="$disk",format=raw,if=virtio \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
    -display none -serial file:"$work/serial.log" &
  qemu_pid=$!
}
# json_field FIELD ROWS RIGCTL-ARGS...: FIELD of the rig's row in rigctl's JSON report, where
# ROWS is the path to the list of rows ("" for a list at the top); empty when absent.
json_field() {
  local field="$1" rows="$2"
  shift 2
  ctl --json "$@" 2>/dev/null | python3 -c "
import json, sys
doc = json.load(sys.stdin)
rows = doc['$rows'] if '$rows' else doc
rows = [r for r in rows or [] if r.get('rig', 'qemu-rig') == 'qemu-rig'] or [{}]
v = rows[0].get('$field')
print('' if v is None else v)" 2>/dev/null || true
}
image_row() { json_field "$1" "" update-status qemu-rig; }
status_field() { json_field "$1" rigs status; }
earnings_field() { json_field "$1" rigs earnings qemu-rig; }
# wait_image VERSION SLOT SECONDS: until the rig reports that image and slot, idle.
wait_image() {
  local deadline=$(( $(date +%s) + $3 ))
  until [ "$(image_row version)/$(image_row slot)/$(image_row state)" = "$1/$2/idle" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "not on $1 in slot $2 within $3 s (now $(image_row version)/$(image_row slot)/$(image_row state))"
    sleep 2
  done
}
# update BUNDLE VERSION: rigctl update; its report in $work/update.json, progress with times.
update() {
  ctl --json update qemu-rig --bundle "https://10.0.2.2:$https/$1" --version "$2" \
    --file "$www/$1" --operator-key "$work/operator.key" \
    --timeout-ms 1800000 --confirm-timeout-ms 1800000 > "$work/update.json" \
    2> >(while IFS= read -r line; do echo "$(now) $line"; done > "$work/update.progress") || true
}
outcome() { python3 -c "import json; r = json.load(open('$work/update.json'))[0]; print(r['$1'] if r.get('$1') is not None else '')"; }

t0=$(now)
power_on
wait_image 1.0.0 A 900
say "booted image 1.0.0 on slot A in $(since "$t0") s"
deadline=$(( $(date +%s) + 300 ))
until [ "$(status_field journaled)" -gt 0 ] 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "no receipts journaled"
  sleep 2
done
seq_before=$(status_field journaled)

# Steps 1, 3 and 2 leave the rig on 2.0.0 in slot B; the power cut interrupts the next update.
if [ -z "$only_cut" ]; then
  say "== 1. update 1.0.0 -> 2.0.0 (bundle $bundle_size)"
  t_cmd=$(now)
  update rig-2.0.0.raucb 2.0.0
  [ "$(outcome outcome)" = updated ] || fail "update to 2.0.0: $(cat "$work/update.json")"
  installed_at=$(grep -m1 ': completed: installed' "$work/update.progress" | cut -d' ' -f1)
  accepted_at=$(grep -m1 ': accepted: ' "$work/update.progress" | cut -d' ' -f1)
  install_s=$(awk -v a="$installed_at" -v b="$accepted_at" 'BEGIN { printf "%.1f", a - b }')
  ready_s=$(since "$t_cmd")
  wait_image 2.0.0 B 60
  say "drain, download and install ${install_s} s; command to READY on slot B, marked good: ${ready_s} s"
  say "rigctl: $(outcome detail)"

  say "== 3. refused bundles"
  for b in other-key.raucb truncated.raucb other-machine.raucb; do
    update "$b" 2.0.0
    [ "$(outcome outcome)" = failed ] || fail "$b was not refused: $(cat "$work/update.json")"
    say "$b: $(outcome detail)"
  done
  wait_image 2.0.0 B 60

  say "== 2. a bundle whose rigd cannot start (2.0.1 into slot A)"
  t_bad=$(now)
  update rig-2.0.1.raucb 2.0.1
  [ "$(outcome outcome)" = failed ] || fail "the broken update did not fail: $(cat "$work/update.json")"
  rollback_s=$(since "$t_bad")
  wait_image 2.0.0 B 120
  say "rolled back in ${rollback_s} s (command to the report from slot B): $(outcome detail)"
  running=2.0.0 slot=B cut_bundle=rig-1.0.0.raucb cut_version=1.0.0
else
  running=1.0.0 slot=A cut_bundle=rig-2.0.0.raucb cut_version=2.0.0
fi

say "== 4. power cut while RAUC writes the other slot ($cut_version)"
update "$cut_bundle" "$cut_version" &
updater=$!
# Drain and download take about 15 minutes under TCG.
deadline=$(( $(date +%s) + 2400 ))
until [ "$(image_row state)" = installing ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the install never started"
  sleep 0.5
done
kill -9 "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
kill "$updater" 2>/dev/null || true
wait "$updater" 2>/dev/null || true
say "power cut during the install"
t_on=$(now)
power_on
wait_image "$running" "$slot" 900
seq_cut=$(status_field journaled)
deadline=$(( $(date +%s) + 300 ))
until [ "$(status_field journaled)" -gt "$seq_cut" ] 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "no work after the power cut"
  sleep 2
done
say "back on slot $slot with $running $(since "$t_on") s after power-on, working (journaled $seq_cut -> $(status_field journaled))"

say "== receipts of before and after, credited"
# The rig works on while the ledger is read: drained, its journal stops where the check reads it.
ctl drain qemu-rig --operator-key "$work/operator.key" > /dev/null || fail "the rig did not drain"
deadline=$(( $(date +%s) + 600 ))
until [ "$(status_field unacked)" = 0 ] && [ "$(earnings_field last_seq)" = "$(status_field journaled)" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "ledger last seq $(earnings_field last_seq), rig journaled $(status_field journaled)"
  sleep 2
done
[ "$(earnings_field missing_seqs)" = 0 ] || fail "seqs missing in the ledger: $(earnings_field missing_seqs)"
say "journal from seq $seq_before (before the first update) to $(status_field journaled): all in the ledger, none missing"
grep -q 'rig key pinned on first sight' "$work/coordinator.log" || fail "the coordinator never pinned the rig's key"
grep -qE 'rig announced a different key|rig rekeyed|announced a key the registry' "$work/coordinator.log" \
  && fail "the coordinator saw the rig's key change"
say "the coordinator pinned the rig's key once and never saw it change (identity kept)"

[ -n "$only_cut" ] || say "figures: bundle $bundle_size; drain+download+install ${install_s} s; command to READY on B ${ready_s} s; rollback ${rollback_s} s ($accel)"
