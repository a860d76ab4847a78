#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are on this machine.
# devreg runs its own cluster with them; it never touches a system-wide cluster.
set -euo pipefail

if command -v pg_ctl >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL's server binaries are missing; as root run: apt-get update && apt-get install -y postgresql" >&2
  exit 1
fi
echo "Installing PostgreSQL from Debian's packages..."
export DEBIAN_FRONTEND=noninteractive
# Debian's packages would create and start a system-wide cluster (port 5432, started at every
# boot) that devreg never uses: not while these packages are installed.
no_main_cluster=/etc/postgresql-common/createcluster.d/devreg-install.conf
mkdir -p "$(dirname "$no_main_cluster")"
echo "create_main_cluster = false" > "$no_main_cluster"
trap 'rm -f "$no_main_cluster"' EXIT
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
