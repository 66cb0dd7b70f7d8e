#!/usr/bin/env bash
# Writes rig.conf into the RIGCONFIG partition of a rig image file (or of a flashed stick,
# /dev/sdX) without mounting it: mtools reads and writes the FAT file system in place. Lines of
# the template are filled in where they stand (comments stay); keys the file lacks are added.
#
#   images/configure.sh IMAGE [--rig-id ID] [--broker HOST:PORT] [--claim CODE]
#                             [--set KEY=TOML_VALUE]... [--print]
#
# --set writes any other rig.conf key as TOML (strings quoted: --set 'gpu="sim"'), a key of a
# table as a dotted key (--set 'update.ca="/etc/rig-config/fleet-ca.pem"').
# --print shows the resulting rig.conf. Preparing many sticks: copy the image, configure each.
set -euo pipefail
export MTOOLS_SKIP_CHECK=1 LC_ALL=C

die() { echo "configure.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: configure.sh IMAGE [--rig-id ID] [--broker HOST:PORT] [--claim CODE] [--set KEY=VALUE]... [--print]"
image="$1"
shift
[ -e "$image" ] || die "$image does not exist"

# TOML basic string: printable characters, no quote or backslash (nothing here needs them).
quoted() {
  case "$2" in
    *[![:print:]]* | *'"'* | *'\'* | '') die "$1: '$2' must be non-empty printable text without quotes or backslashes" ;;
  esac
  printf '"%s"' "$2"
}

edits=()
print=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rig-id)
      [[ "${2:-}" =~ ^[A-Za-z0-9._-]+$ ]] || die "--rig-id: letters, digits, '.', '_', '-' only"
      edits+=("rig_id=$(quoted --rig-id "$2")"); shift 2 ;;
    --broker)
      [[ "${2:-}" =~ ^[^:[:space:]]+:[0-9]+$ ]] || die "--broker: expected HOST:PORT"
      edits+=("broker=$(quoted --broker "$2")"); shift 2 ;;
    --claim) edits+=("claim=$(quoted --claim "${2:-}")"); shift 2 ;;
    --set)
      [[ "${2:-}" =~ ^[a-z_]+(\.[a-z_]+)*=[^[:cntrl:]]+$ ]] || die "--set: expected KEY=VALUE, e.g. allow_software_key=true"
      edits+=("$2"); shift 2 ;;
    --print) print=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done

# The partition whose FAT label is RIGCONFIG.
offset=""
while read -r start; do
  if mlabel -s -i "$image@@$((start * 512))" :: 2>/dev/null | grep -q 'RIGCONFIG *$'; then
    offset=$((start * 512))
    break
  fi
done < <(sfdisk --dump "$image" 2>/dev/null | sed -n 's/.*start= *\([0-9]*\),.*/\1/p')
[ -n "$offset" ] || die "$image has no FAT partition labelled RIGCONFIG (is it a rig image?)"
fat="$image@@$offset"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
conf="$work/rig.conf"
mtype -i "$fat" ::rig.conf > "$conf" 2>/dev/null || : > "$conf"
# FAT editors on other systems may add carriage returns.
sed -i 's/\r$//' "$conf"

for edit in "${edits[@]}"; do
  key="${edit%%=*}"
  value="${edit#*=}"
  # The first line setting the key, commented out or not, becomes `key = value`; later
  # uncommented ones go. Without such a line, it is added at the end.
  awk -v key="$key" -v pattern="${key//./\\.}" -v value="$value" '
    $0 ~ "^[#[:space:]]*" pattern "[[:space:]]*=" {
      if (!done) { print key " = " value; done = 1; next }
      if ($0 !~ /^[[:space:]]*#/) next
    }
    { print }
    END { if (!done) print key " = " value }
  ' "$conf" > "$conf.new"
  mv "$conf.new" "$conf"
done

if [ ${#edits[@]} -gt 0 ]; then
  mcopy -o -i "$fat" "$conf" ::rig.conf
fi
if [ "$print" -eq 1 ]; then
  cat "$conf"
fi
