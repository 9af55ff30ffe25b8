#!/usr/bin/env bash
# Debian packages the tests need: dicom3tools (dciodvfy validates the DICOM SR/SEG we produce),
# orthanc + orthanc-dicomweb (a real PACS pushing over STOW-RS, and the ingest benchmark's peer) and
# iproute2 (the network namespace Orthanc runs in), dcmtk (storescu and echoscu, real DIMSE senders). Installs only what is missing; needs root (CI runs
# as root) or prints what to install. The Orthanc service is not started: tests run their own.
set -euo pipefail
missing=()
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 || missing+=(orthanc-dicomweb)
command -v ip >/dev/null || missing+=(iproute2)
command -v storescu >/dev/null && command -v echoscu >/dev/null || missing+=(dcmtk)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: packages must not start services (Orthanc's would bind to every interface).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
