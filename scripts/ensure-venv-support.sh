#!/usr/bin/env bash
# Makes sure the Python given can make a virtual environment: Debian's own Python leaves venv's
# pip bootstrap (ensurepip) to the python3-venv package, so a fresh machine may lack it.
set -euo pipefail

python="${1:-python3}"
if "$python" -c 'import ensurepip' >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "$python cannot make a virtual environment; as root run: apt-get update && apt-get install -y python3-venv" >&2
  exit 1
fi
echo "Installing python3-venv from Debian's packages..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq python3-venv >/dev/null
