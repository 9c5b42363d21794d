#!/bin/sh
# Installs the Debian packages Meridian needs to build, test and run its
# local federation, and only those that are missing. Idempotent: a second run
# installs nothing and prints nothing but its summary line.
#
# Usage: deploy/install-deps.sh [--with-slurm]
#   --with-slurm  also the packages of the one-node test Slurm (slurmctld,
#                 slurmd, slurmrestd, munge)
set -eu

pkgs="make gcc clang pkg-config curl ca-certificates procps iproute2
libnng-dev libjansson-dev libsodium-dev libcurl4-openssl-dev libssl-dev
etcd-server etcd-client"
for arg in "$@"; do
	case "$arg" in
	--with-slurm) pkgs="$pkgs slurmctld slurmd slurmrestd slurm-client munge" ;;
	-h | --help)
		sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "install-deps: unknown option '$arg' (try --help)" >&2
		exit 2
		;;
	esac
done

missing=""
for p in $pkgs; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*" installed") ;;
	*) missing="$missing $p" ;;
	esac
done

if [ -z "$missing" ]; then
	echo "install-deps: all packages present"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages:$missing; run this script as root" >&2
	exit 1
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# One update per run, and only when something must be installed: the lists
# may be stale or absent on a fresh machine.
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "install-deps: installed$missing"
