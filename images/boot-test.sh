#!/usr/bin/env bash
# Boot test of the rig image (part of ./test.sh):
#   1. builds the image (the mmdebstrap root comes from the cache after the first run) with
#      the rigd binary given (default: the debug build of this checkout);
#   2. `systemd-analyze verify` of the units and `systemd-analyze security rigd.service`
#      (must score <= 2.0), both against the image's root;
#   3. writes rig.conf into the image's RIGCONFIG partition with configure.sh, reads it back
#      from that FAT partition (mtools) and boots the image's root with
#      `systemd-nspawn --boot`, a sim GPU and a mosquitto on 127.0.0.1, then checks:
#      rigd READY and on the broker; units from a coordinator run by the sandboxed workers;
#      `systemctl stop` during work drains and exits 0; a hung supervisor loop (test hook)
#      killed by the watchdog and restarted; rig.conf gone -> failed, no restart;
#   4. boots again with a broken rig.conf on the partition: the rig boots, rigd is failed with
#      the reason in `systemctl status` and the journal, and is not restarted.
#
#   images/boot-test.sh [--rigd PATH]      (coordinator: $RIGD_COORDINATOR or beside rigd)
#
# The kernel here has no vfat, so the FAT partition's rig.conf reaches the container as a
# read-only bind mount at /etc/rig-config (owner 850, mode 0400, as the vfat mount makes it);
# the real mount is exercised by images/qemu-boot.sh. Other limits of this machine (a
# container without systemd as PID 1): /run is not a tmpfs (nspawn gets its own, in a private
# mount namespace); no machined (--register=no; commands reach the container through nsenter);
# no BPF device control, so DeviceAllow= is not enforced inside the container; and
# systemd-remount-fs fails there (fstab's root entry), so the container's state is "degraded".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
bin="${CARGO_TARGET_DIR:-$repo/target}/debug"
rigd="$bin/rigd"
[ "${1:-}" = "--rigd" ] && rigd="$2"
coordinator="${RIGD_COORDINATOR:-$bin/coordinator}"

skip() { echo "boot-test: SKIPPED: $*"; exit 0; }
[ "$(id -u)" -eq 0 ] || skip "needs root (mmdebstrap, systemd-nspawn)"
for tool in systemd-nspawn nsenter unshare mosquitto mosquitto_sub; do
  command -v "$tool" >/dev/null || { echo "boot-test: $tool is missing" >&2; exit 1; }
done
unshare -m true 2>/dev/null || skip "cannot make a mount namespace here (no CAP_SYS_ADMIN)"

t_start=$(date +%s.%N)
# A fixed build time keeps the cached mmdebstrap root valid from one commit to the next.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1767225600}"
work="$(mktemp -d)"
nspawn_pid=""
broker_pid=""
coordinator_pid=""
cleanup() {
  [ -n "$nspawn_pid" ] && kill "$nspawn_pid" 2>/dev/null && wait "$nspawn_pid" 2>/dev/null
  [ -n "$coordinator_pid" ] && kill "$coordinator_pid" 2>/dev/null
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

out="$work/image"
"$here/bundle.sh" --new-key "$work/update-key" > /dev/null
"$here/build.sh" --rigd "$rigd" --keyring "$work/update-key/cert.pem" --out "$out" 2>&1 | tail -1
root="$out/root"

echo "== systemd-analyze verify (units in the image's root)"
systemd-analyze verify --man=no --root="$root" rigd.service rigd-trial@failed.service \
  rigd-trial.timer rigd-reboot.path rigd-reboot.service rauc.service
echo "== systemd-analyze security rigd.service"
security="$(systemd-analyze security --offline=yes --root="$root" --threshold=20 rigd.service 2>&1)"
score="$(sed -n 's/.*Overall exposure level for rigd.service: \([0-9.]*\).*/\1/p' <<< "$security")"
grep '✗' <<< "$security" || true
echo "rigd.service exposure: $score (must be <= 2.0)"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || { echo "$security"; exit 1; }

fail() {
  echo "boot-test: FAILED: $*" >&2
  if [ -n "${pid1:-}" ]; then
    in_rig systemctl status rigd --no-pager -l >&2 || true
    in_rig journalctl -b --no-pager -n 60 >&2 || true
  fi
  tail -40 "$work/console.log" >&2 || true
  exit 1
}
elapsed() { awk -v now="$(date +%s.%N)" -v t="$1" 'BEGIN { printf "%.1f", now - t }'; }
in_rig() { nsenter -t "$pid1" -m -u -i -n -p -- "$@"; }
prop() { in_rig systemctl show rigd -p "$1" --value; }
# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what="$1" secs="$2" deadline=$(( $(date +%s) + $2 ))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "no $what within $secs s"
    sleep 0.2
  done
}
is_prop() { [ "$(prop "$1")" = "$2" ]; }

# A broker on a free loopback port.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
broker_pid=$!

# rig.conf from the image's RIGCONFIG partition, the way the rig sees it.
rig_config() {
  local offset
  offset=$(sfdisk --dump "$1" | sed -n 's/.*start= *\([0-9]*\),.*name="rigconfig".*/\1/p')
  rm -rf "$work/rig-config"
  mkdir -p "$work/rig-config"
  MTOOLS_SKIP_CHECK=1 mcopy -i "$1@@$((offset * 512))" ::rig.conf "$work/rig-config/rig.conf"
  chown -R 850:850 "$work/rig-config"
  chmod 0700 "$work/rig-config"
  chmod 0400 "$work/rig-config/rig.conf"
}

# The rigdata partition (/var/lib/rigd) stands in as a folder bound there, rigd's own.
mkdir -p "$work/rigdata"
chown 850:850 "$work/rigdata"
chmod 0700 "$work/rigdata"

# boot: starts the image's root in a container (writes go to a tmpfs overlay, but for
# /var/lib/rigd).
boot() {
  local name="rigtest-$$-$1"
  : > "$work/console.log"
  # nspawn wants a tmpfs below /run/systemd/nspawn; /run here is not one, so it gets a
  # private one in its own mount namespace.
  unshare -m --propagation private sh -c 'mkdir -p /run/systemd/nspawn &&
    mount -t tmpfs tmpfs /run/systemd/nspawn &&
    exec systemd-nspawn -q -D "$0" -M "$1" --volatile=overlay --boot --register=no \
      --keep-unit --console=passive --bind-ro="$2":/etc/rig-config --bind="$3":/var/lib/rigd' \
    "$root" "$name" "$work/rig-config" "$work/rigdata" < /dev/null > "$work/console.log" 2>&1 &
  # unshare and sh exec: this pid becomes systemd-nspawn, its child the container's init.
  nspawn_pid=$!
  t_boot=$(date +%s.%N)
  pid1=""
  local deadline=$(( $(date +%s) + 20 ))
  until [ -n "$pid1" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the container did not start"
    sleep 0.1
    [ "$(cat "/proc/$nspawn_pid/comm" 2>/dev/null)" = systemd-nspawn ] || continue
    pid1=$(pgrep -P "$nspawn_pid" || true)
  done
  # basic.target does not wait for rigd (multi-user.target does, for its READY).
  wait_for "basic.target" 60 in_rig systemctl is-active basic.target
}

poweroff() {
  in_rig systemctl poweroff || true
  wait "$nspawn_pid" || true
  nspawn_pid=""
  pid1=""
}

image="$out/rig.img"
"$here/configure.sh" "$image" --rig-id nspawn-rig --broker "127.0.0.1:$port" \
  --set 'key="file:receipt-key"' --set allow_software_key=true --set 'gpu="sim"'
rig_config "$image"

echo "== boot with rig.conf from the RIGCONFIG partition"
boot good
wait_for "rigd READY" 30 is_prop ActiveState active
echo "rigd READY $(elapsed "$t_boot") s after the container started; status: $(prop StatusText)"
mosquitto_sub -p "$port" -h 127.0.0.1 -t 'rigd/v1/rig/nspawn-rig/status' -C 1 -W 20 > /dev/null \
  || fail "no retained status from the rig on the broker"
echo "rig status retained on the broker"

echo "== work inside the sandbox, then systemctl stop (SIGTERM) during work: drains, exits 0"
"$coordinator" --broker "127.0.0.1:$port" --db "$work/ledger.db" --job gemm --units 1000 \
  > "$work/coordinator.log" 2>&1 &
coordinator_pid=$!
working() { prop StatusText | grep -q '^working: .* receipts journaled to seq [1-9]'; }
wait_for "receipts from units run by the sandboxed workers" 60 working
echo "status: $(prop StatusText)"
in_rig systemctl stop rigd
[ "$(prop ExecMainStatus)" = 0 ] && [ "$(prop Result)" = success ] \
  || fail "rigd did not stop cleanly: status $(prop ExecMainStatus), result $(prop Result)"
journal="$(in_rig journalctl -u rigd --no-pager -o cat)"
grep -q 'stopping: draining in-flight units' <<< "$journal" || fail "no drain in the journal"
grep -q 'rigd stopped' <<< "$journal" || fail "no 'rigd stopped' in the journal"
grep -q 'drain timed out' <<< "$journal" && fail "the drain timed out"
echo "stopped during work: drained, exit status 0, result success"
kill "$coordinator_pid"
coordinator_pid=""

echo "== watchdog: a hung supervisor loop is killed and restarted"
in_rig mkdir -p /run/systemd/system/rigd.service.d
printf '[Service]\nWatchdogSec=3s\nRestartSec=1s\nEnvironment=RIGD_TEST_HANG_FILE=/run/rigd-hang\n' \
  | in_rig sh -c 'cat > /run/systemd/system/rigd.service.d/50-test.conf'
in_rig systemctl daemon-reload
in_rig systemctl restart rigd
wait_for "rigd READY with the hang hook" 30 is_prop ActiveState active
before=$(prop NRestarts)
in_rig touch /run/rigd-hang
wait_for "watchdog restart" 20 is_prop NRestarts $((before + 1))
journal="$(in_rig journalctl -u rigd --no-pager -o cat)"
grep -q 'Watchdog timeout' <<< "$journal" || fail "no watchdog timeout in the journal"
in_rig rm /run/rigd-hang
wait_for "rigd READY after the watchdog restart" 30 is_prop ActiveState active
echo "watchdog killed the hung rigd ($(grep -m1 'Watchdog timeout' <<< "$journal")) and it came back READY"
in_rig rm /run/systemd/system/rigd.service.d/50-test.conf
in_rig systemctl daemon-reload

in_rig systemctl stop rigd

echo "== rig.conf missing: failed with the reason, no restart"
rm "$work/rig-config/rig.conf"
in_rig systemctl reset-failed rigd
in_rig systemctl start rigd && fail "rigd started without rig.conf"
# A unit that would restart sits in "activating (auto-restart)"; "failed" is final.
wait_for "rigd failed" 30 is_prop ActiveState failed
[ "$(prop ActiveState)" = failed ] && [ "$(prop ExecMainStatus)" = 2 ] && [ "$(prop NRestarts)" = 0 ] \
  || fail "expected failed, exit 2, no restart: $(prop ActiveState) $(prop ExecMainStatus) $(prop NRestarts)"
echo "status: $(prop StatusText)"
poweroff

echo "== boot with a broken rig.conf on the partition"
"$here/configure.sh" "$image" --set 'sim_gpu=2'
rig_config "$image"
boot broken
wait_for "rigd failed" 30 is_prop ActiveState failed
wait_for "multi-user.target" 30 in_rig systemctl is-active multi-user.target
[ "$(prop ExecMainStatus)" = 2 ] && [ "$(prop NRestarts)" = 0 ] \
  || fail "expected exit 2 and no restart: $(prop ExecMainStatus) $(prop NRestarts)"
status="$(in_rig systemctl status rigd --no-pager -l || true)"
grep -q 'rig.conf refused: .*unknown field `sim_gpu`' <<< "$status" || fail "the reason is not in systemctl status"
journal="$(in_rig journalctl -u rigd --no-pager -o cat)"
grep -q 'unknown field `sim_gpu`' <<< "$journal" || fail "the reason is not in the journal"
echo "rig booted ($(in_rig systemctl is-system-running || true)); rigd failed, not restarted; status: $(prop StatusText | cut -c1-90)..."
poweroff

echo "boot-test: passed in $(elapsed "$t_start") s"
