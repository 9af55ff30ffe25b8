#!/usr/bin/env bash
# Debian packages the tests need: dicom3tools (dciodvfy validates the DICOM SR/SEG we produce).
# Installs only what is missing; needs root (CI runs as root) or prints what to install.
set -euo pipefail
missing=()
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
