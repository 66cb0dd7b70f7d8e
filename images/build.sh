#!/usr/bin/env bash
# Builds the rig image: a Debian 12 root made by mmdebstrap (package mirrors only), rigd and
# its units installed, and a GPT disk assembled without mounting anything:
#   1  ESP        FAT32  systemd-boot (EFI/BOOT/BOOTX64.EFI), the kernel and its initrd
#   2  RIGCONFIG  FAT    rig.conf (the commented template until images/configure.sh fills it)
#   3  root       ext4   filled by mkfs.ext4 -d; grown over the whole disk on first boot
#
#   images/build.sh [--rigd PATH] [--with-nvidia] [--out DIR]
#
# --rigd     the rigd binary to install (default: cargo build --release, then that binary)
# --with-nvidia  add the NVIDIA driver from Debian non-free (real rigs; builds its kernel
#            module with DKMS, which takes a while)
# --out      where rig.img, its package manifest and the unpacked root go (default images/out)
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
while [ $# -gt 0 ]; do
  case "$1" in
    --rigd) rigd="$2"; shift 2 ;;
    --with-nvidia) nvidia=1; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
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

# What the root holds. systemd-boot-efi: the boot loader; libtss2-*: the TPM key backend;
# systemd-resolved/-timesyncd: names and time for a box on DHCP.
packages=(
  systemd systemd-sysv systemd-resolved systemd-timesyncd udev dbus kmod
  linux-image-amd64 systemd-boot-efi ca-certificates
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
install -D -m 0644 "$repo/systemd/50-root.repart.conf" "$root/usr/lib/repart.d/50-root.conf"
install -D -m 0644 "$repo/systemd/fstab" "$root/etc/fstab"
install -D -m 0644 "$repo/systemd/80-wired.network" "$root/etc/systemd/network/80-wired.network"
install -d -m 0755 "$root/etc/rig-config"
echo rig > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trig\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
# First boot: an empty machine-id makes systemd generate one (ConditionFirstBoot).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
systemd-sysusers --root="$root" >/dev/null
systemctl --root="$root" enable rigd.service systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service 2>/dev/null
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

# ESP: systemd-boot, the kernel, its initrd, one loader entry.
kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)"
initrd="$root/boot/initrd.img-${kernel##*/vmlinuz-}"
esp_mib=$(( ( $(stat -c %s "$kernel") + $(stat -c %s "$initrd") ) / mib + 48 ))
[ "$esp_mib" -ge 64 ] || esp_mib=64
mkdir -p "$work/esp"
cp "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$work/esp/BOOTX64.EFI"
cp "$kernel" "$work/esp/vmlinuz"
cp "$initrd" "$work/esp/initrd.img"
printf 'timeout 0\ndefault rig.conf\neditor no\n' > "$work/esp/loader.conf"
cat > "$work/esp/rig.conf" <<'EOF'
title   rig
linux   /vmlinuz
initrd  /initrd.img
options root=LABEL=rigroot ro rootwait console=tty0 console=ttyS0,115200
EOF
mtime "$work"/esp/*
rm -f "$work/esp.img"
mkfs.vfat -F 32 -n RIGESP --invariant -C "$work/esp.img" $((esp_mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.img" ::EFI ::EFI/BOOT ::loader ::loader/entries
mcopy -m -i "$work/esp.img" "$work/esp/BOOTX64.EFI" ::EFI/BOOT/BOOTX64.EFI
mcopy -m -i "$work/esp.img" "$work/esp/vmlinuz" "$work/esp/initrd.img" ::
mcopy -m -i "$work/esp.img" "$work/esp/loader.conf" ::loader/loader.conf
mcopy -m -i "$work/esp.img" "$work/esp/rig.conf" ::loader/entries/rig.conf

# RIGCONFIG: the commented rig.conf template.
cfg_mib=8
cp "$here/rig.conf.template" "$work/rig.conf"
mtime "$work/rig.conf"
rm -f "$work/config.img"
mkfs.vfat -n RIGCONFIG --invariant -C "$work/config.img" $((cfg_mib * 1024)) >/dev/null
mcopy -m -i "$work/config.img" "$work/rig.conf" ::rig.conf

# Root: a quarter free.
used_mib=$(( $(du -sx --block-size=1M "$root" | cut -f1) ))
root_mib=$(( used_mib * 5 / 4 + 64 ))

# GPT: fixed identifiers, partitions at 1 MiB boundaries.
img="$out/rig.img"
total_mib=$(( 1 + esp_mib + cfg_mib + root_mib + 1 ))
rm -f "$img"
truncate -s "${total_mib}M" "$img"
sfdisk --quiet --no-reread --no-tell-kernel "$img" <<EOF
label: gpt
label-id: $(uuid disk)
unit: sectors
first-lba: 2048

start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$(uuid esp), name="esp"
size=$((cfg_mib * 2048)), type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=$(uuid config), name="rigconfig"
size=$((root_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$(uuid root), name="root"
EOF
dd if="$work/esp.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/config.img" of="$img" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
rm "$work/esp.img" "$work/config.img"

# The root file system, made in place at its partition's offset and filled from the directory.
root_at=$(( (1 + esp_mib + cfg_mib) * mib ))
E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" mkfs.ext4 -q -F -L rigroot -U "$(uuid rootfs)" \
  -E "offset=$root_at,nodiscard,hash_seed=$(uuid hashseed),root_owner=0:0" -d "$root" \
  "$img" "${root_mib}M"
# mkfs.ext4 -d (1.47.0) copies each file's ctime and atime, which are when this script wrote
# and read it; set both to the build time on every inode.
(cd "$root" && find . -xdev -printf '%P\n') \
  | awk -v t="$SOURCE_DATE_EPOCH" '{ gsub(/"/, "\\\"");
      print "sif \"/" $0 "\" ctime @" t; print "sif \"/" $0 "\" atime @" t }' > "$work/ctime.cmds"
E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" debugfs -w -f "$work/ctime.cmds" \
  "$img?offset=$root_at" > "$work/ctime.log" 2>&1
if grep -v '^debugfs' "$work/ctime.log" | grep -q .; then
  cat "$work/ctime.log" >&2
  exit 1
fi

rm -rf "$work"
t2=$(date +%s)

echo "build.sh: $img: $(du -h --apparent-size "$img" | cut -f1) (root ${used_mib} MiB used)," \
  "mmdebstrap $((t1 - t0)) s, assembly $((t2 - t1)) s, sha256 $(sha256sum "$img" | cut -c1-16)"
