#!/usr/bin/env bash
# Makes sure the Python given can make a virtual environment: Debian's own Pythons leave venv's
# pip bootstrap (ensurepip) to a package of its own (python3.X-venv), which a fresh machine may
# lack.
set -euo pipefail

python="${1:-python3}"
if "$python" -c 'import ensurepip' >/dev/null 2>&1; then
  exit 0
fi
package=$("$python" -c 'import sys; print(f"python3.{sys.version_info.minor}-venv")')
if [ "$(id -u)" -ne 0 ]; then
  echo "$python cannot make a virtual environment; as root run: apt-get update && apt-get install -y $package" >&2
  exit 1
fi
echo "Installing $package from Debian's packages..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "$package" >/dev/null
