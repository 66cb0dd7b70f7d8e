#!/usr/bin/env bash
# Builds the rig image: a Debian 12 root made by mmdebstrap (package mirrors only), rigd, its
# units and RAUC installed, and a GPT disk assembled without mounting anything:
#   1  esp        FAT32  systemd-boot (EFI/BOOT/BOOTX64.EFI); each slot's kernel and initrd
#                        (a/, b/) and loader entry, with boot counting (images/rauc/rig-boot)
#   2  rigconfig  FAT    rig.conf (the commented template until images/configure.sh fills it)
#   3  root-a     ext4   root slot A: the root file system made by mkfs.ext4 -d
#   4  root-b     ext4   root slot B: empty until the first update (RAUC writes it)
#   5  rigdata    ext4   /var/lib/rigd (journal, identity, nonces): no update touches it;
#                        grown over the whole disk on first boot
# Beside rig.img: root.ext4, the root file system alone, which images/bundle.sh signs into an
# update bundle.
#
#   images/build.sh [--rigd PATH] [--with-nvidia] [--version V] [--slot-mib N] [--keyring PEM] [--out DIR]
#
# --rigd     the rigd binary to install (default: cargo build --release, then that binary)
# --with-nvidia  add the NVIDIA driver from Debian non-free (real rigs; builds its kernel
#            module with DKMS, which takes a while)
# --version  the image's version, in /etc/rigd-image (default: rigd's package version)
# --slot-mib size of each root slot (default 2048): every later update's root must fit it
# --keyring  the certificate(s) RAUC accepts update bundles from (/etc/rauc/keyring.pem);
#            default images/out/update-key/cert.pem, made by images/bundle.sh --new-key
# --out      where rig.img, root.ext4, the package manifest and the unpacked root go
#            (default images/out)
#
# The same package set and SOURCE_DATE_EPOCH (default: the last commit's time) give the same
# image, byte for byte. The mmdebstrap root is cached under $HOME/.cache/rigd-image, keyed by
# a hash of the package list and the options that made it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

rigd=""
nvidia=0
out="$here/out"
version=""
slot_mib=2048
keyring="$here/out/update-key/cert.pem"
while [ $# -gt 0 ]; do
  case "$1" in
    --rigd) rigd="$2"; shift 2 ;;
    --with-nvidia) nvidia=1; shift ;;
    --version) version="$2"; shift 2 ;;
    --slot-mib) slot_mib="$2"; shift 2 ;;
    --keyring) keyring="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

for tool in mmdebstrap mkfs.ext4 mkfs.vfat mcopy sfdisk; do
  command -v "$tool" >/dev/null || {
    echo "build.sh: $tool is missing: apt-get install mmdebstrap e2fsprogs dosfstools mtools fdisk" >&2
    exit 2
  }
done
[ "$(id -u)" -eq 0 ] || { echo "build.sh: run as root (the root's files must keep their owners)" >&2; exit 2; }

export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}"
export TZ=UTC LC_ALL=C.UTF-8
mirror="${RIGD_IMAGE_MIRROR:-http://deb.debian.org/debian}"
security="${RIGD_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

if [ -z "$rigd" ]; then
  cargo build --release --locked -p rigd --bin rigd --manifest-path "$repo/Cargo.toml"
  rigd="${CARGO_TARGET_DIR:-$repo/target}/release/rigd"
fi
[ -x "$rigd" ] || { echo "build.sh: $rigd is not an executable" >&2; exit 2; }
[ -s "$keyring" ] || { echo "build.sh: no update keyring at $keyring: make one with images/bundle.sh --new-key DIR, or pass --keyring" >&2; exit 2; }
[ -n "$version" ] || version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)"

# What the root holds. systemd-boot-efi: the boot loader; libtss2-*: the TPM key backend;
# systemd-resolved/-timesyncd: names and time for a box on DHCP; rauc: the updater (its
# service, D-Bus policy and boot backend come from images/rauc/); dosfstools: fsck of the ESP.
packages=(
  systemd systemd-sysv systemd-resolved systemd-timesyncd udev dbus kmod
  linux-image-amd64 systemd-boot-efi ca-certificates rauc dosfstools
  libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-sys1 libtss2-tctildr0 libtss2-tcti-device0
)
components="main"
if [ "$nvidia" -eq 1 ]; then
  packages+=(linux-headers-amd64 nvidia-driver firmware-misc-nonfree)
  components="main contrib non-free non-free-firmware"
fi

mmdebstrap_args=(
  --variant=minbase --mode=root --format=tar
  --components="$components"
  --include="$(IFS=,; echo "${packages[*]}")"
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  bookworm
)
sources=(
  "deb $mirror bookworm $components"
  "deb $mirror bookworm-updates $components"
  "deb $security bookworm-security $components"
)
key="$(printf '%s\n' "${mmdebstrap_args[@]}" "${sources[@]}" "$SOURCE_DATE_EPOCH" | sha256sum | cut -c1-16)"
cache="${RIGD_IMAGE_CACHE:-$HOME/.cache/rigd-image}"
tarball="$cache/root-$key.tar"
mkdir -p "$cache" "$out"
t0=$(date +%s)
if [ ! -s "$tarball" ]; then
  echo "build.sh: mmdebstrap (not cached: $tarball)"
  mmdebstrap "${mmdebstrap_args[@]}" "$tarball.part" "${sources[@]}"
  mv "$tarball.part" "$tarball"
fi
# Roots nobody built from for a week go.
touch "$tarball"
find "$cache" -maxdepth 1 -name 'root-*.tar' -mtime +7 -delete
t1=$(date +%s)

root="$out/root"
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" --numeric-owner -xf "$tarball"

# rigd and its units.
install -D -m 0755 "$rigd" "$root/usr/bin/rigd"
strip --strip-debug "$root/usr/bin/rigd"
install -D -m 0644 "$repo/systemd/rigd.service" "$root/usr/lib/systemd/system/rigd.service"
install -D -m 0644 "$repo/systemd/rigd.sysusers" "$root/usr/lib/sysusers.d/rigd.conf"
install -D -m 0644 "$repo/systemd/rigd.tmpfiles" "$root/usr/lib/tmpfiles.d/rigd.conf"
install -D -m 0644 "$repo/systemd/50-data.repart.conf" "$root/usr/lib/repart.d/50-data.conf"
install -D -m 0644 "$repo/systemd/fstab" "$root/etc/fstab"
for unit in rigd-trial@.service rigd-trial.timer rigd-reboot.path rigd-reboot.service; do
  install -D -m 0644 "$repo/systemd/$unit" "$root/usr/lib/systemd/system/$unit"
done
# The updater: RAUC's configuration, the fleet's update keyring, its service and D-Bus files,
# the boot backend and the trial check.
install -D -m 0644 "$here/rauc/system.conf" "$root/etc/rauc/system.conf"
install -D -m 0644 "$keyring" "$root/etc/rauc/keyring.pem"
install -D -m 0644 "$here/rauc/rauc.service" "$root/usr/lib/systemd/system/rauc.service"
install -D -m 0644 "$here/rauc/de.pengutronix.rauc.service" \
  "$root/usr/share/dbus-1/system-services/de.pengutronix.rauc.service"
install -D -m 0644 "$here/rauc/de.pengutronix.rauc.conf" \
  "$root/usr/share/dbus-1/system.d/de.pengutronix.rauc.conf"
install -D -m 0755 "$here/rauc/rig-boot" "$root/usr/lib/rigd/rig-boot"
install -D -m 0755 "$here/rauc/rig-trial" "$root/usr/lib/rigd/rig-trial"
printf 'RIGD_IMAGE_VERSION=%s\n' "$version" > "$root/etc/rigd-image"
install -d -m 0755 "$root/efi"
install -D -m 0644 "$repo/systemd/80-wired.network" "$root/etc/systemd/network/80-wired.network"
install -d -m 0755 "$root/etc/rig-config"
echo rig > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trig\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
# First boot: an empty machine-id makes systemd generate one (ConditionFirstBoot).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
systemd-sysusers --root="$root" >/dev/null
systemctl --root="$root" enable rigd.service systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service rigd-trial.timer rigd-reboot.path 2>/dev/null
# rigd marks a slot good (through RAUC and rig-boot), not the end of the boot.
systemctl --root="$root" mask systemd-bless-boot.service 2>/dev/null
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
# Nobody logs in: root stays locked; the serial console shows boot and rigd's state.
rm -rf "$root/var/cache/apt/"* "$root/var/lib/apt/lists/"* "$root/var/log/"*.log
# Files written here carry the build's time, not the clock's.
find "$root" -xdev -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
chroot "$root" dpkg-query -W -f '${Package}\t${Version}\n' > "$out/packages.txt"

# Deterministic identifiers from SOURCE_DATE_EPOCH.
uuid() { printf '%s-%s' "$SOURCE_DATE_EPOCH" "$1" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/'; }
mib=$((1024 * 1024))
mtime() { touch -h -d "@$SOURCE_DATE_EPOCH" "$@"; }

work="$out/parts"
rm -rf "$work"
mkdir -p "$work"

# ESP: systemd-boot, slot A's kernel and initrd under a/, its loader entry (no counter: the
# first slot is good), room for slot B's kernel and initrd beside them.
kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)"
initrd="$root/boot/initrd.img-${kernel##*/vmlinuz-}"
esp_mib=$(( 2 * ( $(stat -c %s "$kernel") + $(stat -c %s "$initrd") ) / mib + 64 ))
[ "$esp_mib" -ge 128 ] || esp_mib=128
mkdir -p "$work/esp"
cp "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$work/esp/BOOTX64.EFI"
cp "$kernel" "$work/esp/vmlinuz"
cp "$initrd" "$work/esp/initrd.img"
# No `default`: systemd-boot boots the entry that sorts first (rig-boot keeps the order).
printf 'timeout 0\neditor no\n' > "$work/esp/loader.conf"
"$here/rauc/rig-boot" entry A rig-1 > "$work/esp/rig-a.conf"
mtime "$work"/esp/*
rm -f "$work/esp.img"
mkfs.vfat -F 32 -n RIGESP --invariant -C "$work/esp.img" $((esp_mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.img" ::EFI ::EFI/BOOT ::loader ::loader/entries ::a ::b
mcopy -m -i "$work/esp.img" "$work/esp/BOOTX64.EFI" ::EFI/BOOT/BOOTX64.EFI
mcopy -m -i "$work/esp.img" "$work/esp/vmlinuz" "$work/esp/initrd.img" ::a/
mcopy -m -i "$work/esp.img" "$work/esp/loader.conf" ::loader/loader.conf
mcopy -m -i "$work/esp.img" "$work/esp/rig-a.conf" ::loader/entries/rig-a.conf

# RIGCONFIG: the commented rig.conf template.
cfg_mib=8
cp "$here/rig.conf.template" "$work/rig.conf"
mtime "$work/rig.conf"
rm -f "$work/config.img"
mkfs.vfat -n RIGCONFIG --invariant -C "$work/config.img" $((cfg_mib * 1024)) >/dev/null
mcopy -m -i "$work/config.img" "$work/rig.conf" ::rig.conf

# The root file system alone (root.ext4, a quarter free): slot A's content and the image of
# an update bundle. RAUC grows it over slot B's partition when it installs it.
used_mib=$(( $(du -sx --block-size=1M "$root" | cut -f1) ))
root_mib=$(( used_mib * 5 / 4 + 64 ))
[ "$root_mib" -le "$slot_mib" ] || { echo "build.sh: the root needs $root_mib MiB, a slot has $slot_mib (--slot-mib)" >&2; exit 1; }
rootfs="$out/root.ext4"
rm -f "$rootfs"
truncate -s "${root_mib}M" "$rootfs"
E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" mkfs.ext4 -q -F -L rigroot -U "$(uuid "rootfs-$version")" \
  -E "nodiscard,hash_seed=$(uuid hashseed),root_owner=0:0" -d "$root" "$rootfs"
# mkfs.ext4 -d (1.47.0) copies each file's ctime and atime, which are when this script wrote
# and read it; set both to the build time on every inode.
(cd "$root" && find . -xdev -printf '%P\n') \
  | awk -v t="$SOURCE_DATE_EPOCH" '{ gsub(/"/, "\\\"");
      print "sif \"/" $0 "\" ctime @" t; print "sif \"/" $0 "\" atime @" t }' > "$work/ctime.cmds"
E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" debugfs -w -f "$work/ctime.cmds" "$rootfs" > "$work/ctime.log" 2>&1
if grep -v '^debugfs' "$work/ctime.log" | grep -q .; then
  cat "$work/ctime.log" >&2
  exit 1
fi

# rigdata: /var/lib/rigd, rigd's own (uid 850), grown over the disk on first boot.
data_mib=64
mkdir -p "$work/data"
rm -f "$work/data.img"
truncate -s "${data_mib}M" "$work/data.img"
E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" mkfs.ext4 -q -F -L rigdata -U "$(uuid data)" \
  -E "nodiscard,hash_seed=$(uuid datahash),root_owner=850:850" -d "$work/data" \
  "$work/data.img"

# GPT: fixed identifiers, partitions at 1 MiB boundaries.
img="$out/rig.img"
total_mib=$(( 1 + esp_mib + cfg_mib + 2 * slot_mib + data_mib + 1 ))
rm -f "$img"
truncate -s "${total_mib}M" "$img"
sfdisk --quiet --no-reread --no-tell-kernel "$img" <<EOF
label: gpt
label-id: $(uuid disk)
unit: sectors
first-lba: 2048

start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$(uuid esp), name="esp"
size=$((cfg_mib * 2048)), type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=$(uuid config), name="rigconfig"
size=$((slot_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$(uuid root-a), name="root-a"
size=$((slot_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$(uuid root-b), name="root-b"
size=$((data_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$(uuid data), name="rigdata"
EOF
at=1
for part in "$work/esp.img:$esp_mib" "$work/config.img:$cfg_mib" "$rootfs:$slot_mib" ":$slot_mib" "$work/data.img:$data_mib"; do
  file="${part%:*}"
  [ -n "$file" ] && dd if="$file" of="$img" bs=1M seek="$at" conv=notrunc,sparse status=none
  at=$(( at + ${part##*:} ))
done
rm "$work/esp.img" "$work/config.img" "$work/data.img"

rm -rf "$work"
t2=$(date +%s)

echo "build.sh: $img: $(du -h --apparent-size "$img" | cut -f1) (version $version, root ${used_mib} MiB used, slots ${slot_mib} MiB)," \
  "mmdebstrap $((t1 - t0)) s, assembly $((t2 - t1)) s, sha256 $(sha256sum "$img" | cut -c1-16)"
