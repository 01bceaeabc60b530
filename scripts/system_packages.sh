#!/usr/bin/env bash
# Install the Debian packages the test suite drives (the browser for the console's tests).
# Idempotent: a machine that has them already installs nothing.
set -euo pipefail
need=()
for pkg in chromium chromium-driver; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "system packages: missing ${need[*]} (run as root, or install them; tests that need them will skip)" >&2
    exit 0
  fi
  echo "system packages: installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "system packages: ${need[*]:-all present}"
