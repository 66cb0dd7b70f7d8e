#!/usr/bin/env bash
# Makes a signed RAUC update bundle of a rig image's root file system, or the key to sign them.
#
#   images/bundle.sh --new-key DIR
#       a fleet update key: DIR/key.pem (P-256) and DIR/cert.pem (self-signed, 10 years). The
#       certificate goes into every image as /etc/rauc/keyring.pem (images/build.sh --keyring);
#       keep the key off the rigs (RAUC also signs with a PKCS#11 URL as --key).
#   images/bundle.sh [--root FILE] [--version V] [--cert PEM] [--key PEM|URL]
#                    [--compatible C] [--format verity|plain] [--out FILE]
#       FILE (default images/out/root.ext4, made by images/build.sh) as the rootfs image of a
#       bundle for V (default: the version build.sh put in that root), compatible C (default
#       rigd-rig-x86_64, the image's /etc/rauc/system.conf), signed with --cert/--key (default
#       images/out/update-key/), written to --out (default images/out/rig-V.raucb). The rig
#       accepts verity bundles only; plain is for machines without device-mapper (the host
#       test of images/update-test.sh).
#
# Needs rauc, squashfs-tools, openssl, e2fsprogs (debugfs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
die() { echo "bundle.sh: $*" >&2; exit 2; }

if [ "${1:-}" = "--new-key" ]; then
  dir="${2:?--new-key DIR}"
  mkdir -p "$dir"
  [ -e "$dir/key.pem" ] && die "$dir/key.pem exists: not overwriting an update key"
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 3650 -subj "/O=rigd fleet/CN=rig update key" 2>/dev/null)
  chmod 0644 "$dir/cert.pem"
  echo "bundle.sh: update key $dir/key.pem, certificate $dir/cert.pem"
  exit 0
fi

root="$here/out/root.ext4"
version=""
cert="$here/out/update-key/cert.pem"
key="$here/out/update-key/key.pem"
compatible="rigd-rig-x86_64"
format="verity"
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --cert) cert="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --compatible) compatible="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for tool in rauc mksquashfs debugfs; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install rauc squashfs-tools e2fsprogs"
done
[ -s "$root" ] || die "no root file system at $root: build one with images/build.sh"
[ -s "$cert" ] || die "no certificate at $cert (images/bundle.sh --new-key DIR)"
case "$format" in verity|plain) ;; *) die "--format is verity or plain, not $format" ;; esac
if [ -z "$version" ]; then
  version="$(debugfs -R 'cat /etc/rigd-image' "$root" 2>/dev/null | sed -n 's/^RIGD_IMAGE_VERSION=//p')"
  [ -n "$version" ] || die "$root has no /etc/rigd-image: pass --version"
fi
[ -n "$out" ] || out="$(dirname "$root")/rig-$version.raucb"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/content"
ln "$root" "$work/content/root.ext4" 2>/dev/null || cp --sparse=always "$root" "$work/content/root.ext4"
cat > "$work/content/manifest.raucm" <<MANIFEST
[update]
compatible=$compatible
version=$version
description=rig image $version

[bundle]
format=$format

[image.rootfs]
filename=root.ext4
MANIFEST
rm -f "$out"
t0=$(date +%s.%N)
rauc bundle --cert="$cert" --key="$key" "$work/content" "$out" > "$work/rauc.log" 2>&1 \
  || { cat "$work/rauc.log" >&2; die "rauc bundle failed"; }
echo "bundle.sh: $out: version $version, $format, $(du -h --apparent-size "$out" | cut -f1)" \
  "(root $(du -h --apparent-size "$root" | cut -f1)), made in" \
  "$(awk -v now="$(date +%s.%N)" -v t="$t0" 'BEGIN { printf "%.1f", now - t }') s"
