#!/bin/bash
# Starts a real one-node Slurm (munged, slurmctld, slurmd, slurmrestd) for
# Meridian's tests and demo, everything inside one state dir, and installs
# Debian's packages first when they are missing. Stop it with slurm-down.sh.
#
# Usage: deploy/slurm-up.sh [--state DIR] [--gpus N] [--gpu-model M]
#                           [--partition P] [--timeout SECS] [--no-install]
#   --state DIR     where configs, keys, spool, logs, pid files and sockets
#                   go (created if missing; default: a new temp dir)
#   --gpus N        GPUs on the node (default 4; 0 for none)
#   --gpu-model M   their GRES type, e.g. a100, h100 (default a100)
#   --partition P   the partition's name (default meridian)
#   --timeout SECS  how long to wait for the node and slurmrestd (default 90)
#   --no-install    fail (exit 3) instead of installing missing packages
#
# On success it prints, on stdout and only there, lines to eval:
#   SLURM_CONF='...'  SLURMRESTD_SOCKET='...'  SLURM_PARTITION='...'  ...
#   export SLURM_CONF ...
# Exit: 0 up; 1 failed to start (log tails on stderr, what was started is
# stopped again); 2 usage; 3 cannot run here (not root, packages missing and
# not installable) - tests report that as skipped.
set -eu
umask 022

top=$(cd "$(dirname "$0")/.." && pwd)
tmpl="$top/deploy/slurm"
state=""
gpus=4
model=a100
partition=meridian
node=meridian-node
timeout=90
install=1

say() { echo "slurm-up: $*" >&2; }
die() {
	say "$2"
	exit "$1"
}
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
	case "$1" in
	--state) state=${2:?--state needs a dir}; shift 2 ;;
	--gpus) gpus=${2:?--gpus needs a number}; shift 2 ;;
	--gpu-model) model=${2:?--gpu-model needs a name}; shift 2 ;;
	--partition) partition=${2:?--partition needs a name}; shift 2 ;;
	--timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
	--no-install) install=0; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die 2 "unknown option '$1'" ;;
	esac
done

# Values end up in slurm.conf and in single-quoted shell lines: keep them to
# characters that are safe in both.
case "$gpus" in '' | *[!0-9]*) die 2 "--gpus must be a number" ;; esac
[ "$gpus" -le 64 ] || die 2 "--gpus must be at most 64"
case "$model" in '' | *[!A-Za-z0-9_-]*) die 2 "--gpu-model: letters, digits, _ and - only" ;; esac
case "$partition" in '' | *[!A-Za-z0-9_-]*) die 2 "--partition: letters, digits, _ and - only" ;; esac
case "$timeout" in '' | *[!0-9]*) die 2 "--timeout must be a number of seconds" ;; esac

[ "$(id -u)" -eq 0 ] || die 3 "must run as root (slurmd, munged and the switch to an unprivileged slurmrestd need it)"

# ---------------------------------------------------------------- packages
need_pkgs() {
	local missing="" p st
	for p in slurmctld slurmd slurmrestd slurm-client munge curl iproute2; do
		st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		case "$st" in *" installed") ;; *) missing="$missing $p" ;; esac
	done
	echo "$missing"
}
missing=$(need_pkgs)
if [ -n "$missing" ]; then
	[ "$install" -eq 1 ] || die 3 "missing packages:$missing (and --no-install)"
	say "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	# Try the lists we have first (no network needed when they are fresh);
	# update once and retry when that fails.
	# shellcheck disable=SC2086
	if ! apt-get install -y -qq --no-install-recommends $missing >&2; then
		apt-get update -qq >&2 || die 3 "apt-get update failed; cannot install$missing"
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing >&2 ||
			die 3 "apt-get install failed; cannot install$missing"
	fi
	missing=$(need_pkgs)
	[ -z "$missing" ] || die 3 "still missing after install:$missing"
fi
for b in slurmctld slurmd slurmrestd sinfo sbatch scontrol munged curl ss runuser; do
	command -v "$b" >/dev/null || die 3 "'$b' not found on PATH"
done
rest_user=nobody
rest_group=$(id -gn "$rest_user" 2>/dev/null) || die 3 "no user '$rest_user' for slurmrestd"

# ---------------------------------------------------------------- state dir
if [ -z "$state" ]; then
	state=$(mktemp -d /tmp/meridian-slurm.XXXXXX)
fi
mkdir -p "$state"
state=$(cd "$state" && pwd -P)
case "$state" in *[!A-Za-z0-9._/-]*) die 2 "state dir '$state': letters, digits, . _ - / only (it goes into slurm.conf)" ;; esac
conf="$state/etc/slurm.conf"
sock="$state/rest/slurmrestd.socket"

alive() { # alive PIDFILE NEEDLE: the pid in the file runs with NEEDLE in argv
	local pid
	[ -s "$1" ] || return 1
	pid=$(cat "$1" 2>/dev/null) || return 1
	case "$pid" in '' | *[!0-9]*) return 1 ;; esac
	[ -r "/proc/$pid/cmdline" ] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}

emit() { # the lines the caller evals
	local versions
	versions=$(cat "$state/run/openapi-versions" 2>/dev/null || true)
	cat <<EOF
SLURM_STATE_DIR='$state'
SLURM_CONF='$conf'
SLURMRESTD_SOCKET='$sock'
SLURMRESTD_USER='$rest_user'
SLURMRESTD_OPENAPI='$versions'
SLURM_PARTITION='$(cat "$state/run/partition")'
SLURM_NODE='$node'
SLURM_CPUS='$(cat "$state/run/cpus")'
SLURM_MEMORY_MB='$(cat "$state/run/memory_mb")'
SLURM_GPU_MODEL='$(cat "$state/run/gpu_model")'
SLURM_GPUS='$(cat "$state/run/gpus")'
SLURM_JOB_DIR='$state/jobs'
export SLURM_STATE_DIR SLURM_CONF SLURMRESTD_SOCKET SLURMRESTD_USER SLURMRESTD_OPENAPI SLURM_PARTITION SLURM_NODE SLURM_CPUS SLURM_MEMORY_MB SLURM_GPU_MODEL SLURM_GPUS SLURM_JOB_DIR
EOF
}

# A second `up` on a running cluster only prints its settings again.
if alive "$state/run/slurmctld.pid" "$state" && alive "$state/run/slurmd.pid" "$state" &&
	alive "$state/run/slurmrestd.pid" "$state"; then
	say "already running in $state"
	emit
	exit 0
fi
old_munge=$(cat "$state/run/munge-dir" 2>/dev/null || echo "$state/munge")
for f in "$state/run/slurmctld.pid" "$state/run/slurmd.pid" \
	"$state/run/slurmrestd.pid" "$old_munge/munged.pid"; do
	if alive "$f" "$state" || alive "$f" "$old_munge"; then
		die 1 "$state is partly running ($f); run deploy/slurm-down.sh --state $state first"
	fi
done

: >"$state/.meridian-slurm" # marks the dir as ours for slurm-down --purge
chmod 755 "$state"
mkdir -p "$state/etc" "$state/spool/ctld" "$state/spool/d" "$state/log" \
	"$state/run" "$state/dev" "$state/rest" "$state/jobs"
chmod 755 "$state/etc" "$state/log" "$state/run"
chmod 700 "$state/spool/ctld" "$state/spool/d"
# Job output from slurmrestd jobs is written as nobody, sbatch jobs as root.
chmod 1777 "$state/jobs"
# slurmrestd binds its socket after dropping to nobody, so nobody owns the
# dir; 0700 keeps every other non-root user off the API (root gets through).
chown "$rest_user:$rest_group" "$state/rest"
chmod 700 "$state/rest"

# Everything that must be started as "nobody" must be able to reach it.
if ! runuser -u "$rest_user" -- test -x "$state/etc"; then
	die 1 "$state is not reachable by '$rest_user' (a parent dir lacks o+x); pick a state dir under /tmp"
fi

echo "$partition" >"$state/run/partition"
echo "$model" >"$state/run/gpu_model"
echo "$gpus" >"$state/run/gpus"

cleanup_on_error() {
	local rc=$?
	[ "$rc" -eq 0 ] && return 0
	say "failed (exit $rc); log tails follow, then stopping what was started"
	for l in "$(cat "$state/run/munge-dir" 2>/dev/null)/munged.log" \
		"$state/log/munged.err" "$state/log/slurmctld.log" \
		"$state/log/slurmd.log" "$state/log/slurmrestd.log"; do
		[ -s "$l" ] || continue
		echo "----- $l" >&2
		tail -n 15 "$l" >&2
	done
	"$top/deploy/slurm-down.sh" --state "$state" >&2 || true
	exit "$rc"
}
trap cleanup_on_error EXIT

# ---------------------------------------------------------------- machine
# Real CPU count (respecting affinity, as in a container) and 90% of memory:
# a node configured with more than it has is drained as "Low RealMemory".
cpus=$(nproc)
mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
memory_mb=$((mem_kb * 9 / 10 / 1024))
[ "$memory_mb" -ge 256 ] || die 1 "only ${memory_mb} MB of memory to offer"
def_mem=$((memory_mb / cpus))
[ "$def_mem" -le 1024 ] || def_mem=1024
echo "$cpus" >"$state/run/cpus"
echo "$memory_mb" >"$state/run/memory_mb"

# ---------------------------------------------------------------- GPUs
rm -f "$state"/dev/gpu*
i=0
dev_kind=char
while [ "$i" -lt "$gpus" ]; do
	if [ "$dev_kind" = char ] && ! mknod -m 0666 "$state/dev/gpu$i" c 1 3 2>/dev/null; then
		dev_kind="file"
		rm -f "$state"/dev/gpu*
		i=0
		continue
	fi
	[ "$dev_kind" = char ] || : >"$state/dev/gpu$i"
	i=$((i + 1))
done
if [ "$gpus" -gt 0 ]; then
	node_gres="Gres=gpu:$model:$gpus"
	gres_line="NodeName=$node Name=gpu Type=$model File=$state/dev/gpu[0-$((gpus - 1))]"
	[ "$dev_kind" = char ] || say "mknod not allowed: GPU files are plain files (no CUDA_VISIBLE_DEVICES in jobs)"
else
	node_gres=""
	gres_line="# no GPUs (--gpus 0)"
fi

# ---------------------------------------------------------------- loopback
# slurmctld and slurmd bind INADDR_ANY unless CommunicationParameters has
# NoCtldInAddrAny/NoInAddrAny, and then they bind the address the *host
# name* resolves to. Run them in their own UTS namespace whose host name is
# "localhost", so that address is 127.0.0.1 on any machine. Where that is
# not possible, keep the parameters only if the host name already resolves
# to loopback (otherwise slurmd would bind an address NodeAddr does not use).
if unshare --uts true 2>/dev/null; then
	loopback=uts
	comm_params="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
else
	loopback=none
	comm_params="# CommunicationParameters: host name not loopback, daemons bind all addresses"
	case "$(getent ahostsv4 "$(hostname)" | awk 'NR == 1 { print $1 }')" in
	127.*)
		loopback=hostname
		comm_params="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
		;;
	*) say "warning: cannot make slurmctld/slurmd bind loopback only (no unshare, host name not loopback)" ;;
	esac
fi
run_daemon() { # runs a Slurm daemon, in the "localhost" UTS namespace if we can
	if [ "$loopback" = uts ]; then
		SLURM_CONF="$conf" unshare --uts /bin/sh -c 'hostname localhost && exec "$@"' sh "$@"
	else
		SLURM_CONF="$conf" "$@"
	fi
}

# ---------------------------------------------------------------- munge
# munged refuses a socket dir that is not traversable by all, and a key, log,
# pid or seed file under a dir that others may write without the sticky bit
# (a parent like /tmp/x with mode 0777). Use the state dir when it qualifies
# (no clash with a system munged on /run/munge), else a private dir under
# /run holding a copy of the key. run/munge-dir tells slurm-down which.
mkdir -p "$state/munge"
chmod 755 "$state/munge"
key="$state/munge/munge.key"
if [ ! -s "$key" ]; then
	if command -v mungekey >/dev/null; then
		mungekey --create --keyfile="$key" >&2
	else
		dd if=/dev/urandom of="$key" bs=1024 count=1 2>/dev/null
	fi
fi
chmod 400 "$key"
start_munged() { # start_munged DIR: key, socket, pid, log and seed in DIR
	rm -f "$1/munge.socket" "$1/munge.socket.lock"
	echo "$1" >"$state/run/munge-dir"
	munged --key-file="$1/munge.key" --socket="$1/munge.socket" \
		--pid-file="$1/munged.pid" --log-file="$1/munged.log" \
		--seed-file="$1/munged.seed" </dev/null >/dev/null 2>"$state/log/munged.err"
}
munge_dir="$state/munge"
if ! start_munged "$munge_dir"; then
	why=$(tail -n 1 "$state/log/munged.err" 2>/dev/null)
	munge_dir=$(mktemp -d /run/meridian-munge.XXXXXX)
	chmod 755 "$munge_dir"
	cp "$key" "$munge_dir/munge.key"
	chmod 400 "$munge_dir/munge.key"
	say "munged refused $state/munge ($why); using $munge_dir"
	start_munged "$munge_dir" ||
		die 1 "munged did not start: $(tail -n 1 "$state/log/munged.err" 2>/dev/null)"
fi
munge_sock="$munge_dir/munge.socket"
munge -S "$munge_sock" -n </dev/null | unmunge -S "$munge_sock" >/dev/null ||
	die 1 "munge credentials do not round-trip through $munge_sock"

# ---------------------------------------------------------------- ports
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
listened_by() { # listened_by PORT NAME: NAME itself (not a squatter) listens
	ss -Hltnp "sport = :$1" 2>/dev/null | grep -qF "((\"$2\","
}
up_or_fatal() { # up_or_fatal PORT NAME LOG FROM: listening, or LOG has a fatal
	listened_by "$1" "$2" || tail -n "+$(($4 + 1))" "$3" 2>/dev/null | grep -q "fatal"
}
pick_port() { # a free TCP port below the ephemeral range, not $1
	local p n=0
	while [ "$n" -lt 200 ]; do
		p=$((20000 + RANDOM % 12000))
		if [ "$p" != "${1:-}" ] && ! listening "$p"; then
			echo "$p"
			return 0
		fi
		n=$((n + 1))
	done
	return 1
}
render() { # render TEMPLATE OUT
	sed -e "s|@STATE@|$state|g" -e "s|@CTLD_PORT@|$ctld_port|g" \
		-e "s|@SLURMD_PORT@|$slurmd_port|g" -e "s|@COMM_PARAMS@|$comm_params|g" \
		-e "s|@MUNGE_SOCKET@|$munge_sock|g" -e "s|@DEF_MEM_PER_CPU@|$def_mem|g" \
		-e "s|@NODE@|$node|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY_MB@|$memory_mb|g" \
		-e "s|@NODE_GRES@|$node_gres|g" -e "s|@PARTITION@|$partition|g" \
		-e "s|@GRES_LINE@|$gres_line|g" "$1" >"$2"
	chmod 644 "$2"
}
wait_for() { # wait_for SECS CMD...: retries CMD every 0.2 s
	local end=$((SECONDS + $1))
	shift
	until "$@"; do
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.2
	done
}

# Two runs picking ports at once could pick the same ones: hold a lock from
# the pick until both daemons listen, and pick again if a port was taken
# anyway (by something else) before the daemon bound it.
exec 9>/tmp/.meridian-slurm-ports.lock
flock 9
attempt=0
while :; do
	attempt=$((attempt + 1))
	ctld_port=$(pick_port) || die 1 "no free port found"
	slurmd_port=$(pick_port "$ctld_port") || die 1 "no free port found"
	render "$tmpl/slurm.conf.in" "$conf"
	render "$tmpl/gres.conf.in" "$state/etc/gres.conf"
	render "$tmpl/cgroup.conf.in" "$state/etc/cgroup.conf"
	rm -f "$state/run/slurmctld.pid" "$state/run/slurmd.pid"
	: >>"$state/log/slurmctld.log"
	: >>"$state/log/slurmd.log"
	ctld_from=$(wc -l <"$state/log/slurmctld.log")
	slurmd_from=$(wc -l <"$state/log/slurmd.log")
	# -i: start even if saved state from an earlier run cannot be read.
	run_daemon slurmctld -i -f "$conf" </dev/null >>"$state/log/slurmctld.log" 2>&1 || true
	wait_for 20 up_or_fatal "$ctld_port" slurmctld "$state/log/slurmctld.log" "$ctld_from" || true
	if listened_by "$ctld_port" slurmctld; then
		run_daemon slurmd -N "$node" -f "$conf" </dev/null >>"$state/log/slurmd.log" 2>&1 || true
		wait_for 20 up_or_fatal "$slurmd_port" slurmd "$state/log/slurmd.log" "$slurmd_from" || true
		if listened_by "$slurmd_port" slurmd; then
			break
		fi
	fi
	# Taken port: try new ones; anything else: give up with the logs.
	if [ "$attempt" -lt 3 ] && {
		tail -n "+$((ctld_from + 1))" "$state/log/slurmctld.log"
		tail -n "+$((slurmd_from + 1))" "$state/log/slurmd.log"
	} 2>/dev/null | grep -q "Address already in use"; then
		say "port clash, retrying with new ports"
		"$top/deploy/slurm-down.sh" --state "$state" --keep-munge >&2 || true
		continue
	fi
	die 1 "slurmctld or slurmd did not start listening on 127.0.0.1:$ctld_port/$slurmd_port"
done
flock -u 9
exec 9>&-

node_idle() {
	case "$(SLURM_CONF="$conf" sinfo -h -N -n "$node" -o %T 2>/dev/null)" in
	idle) return 0 ;;
	*) return 1 ;;
	esac
}
wait_for "$timeout" node_idle ||
	die 1 "node $node not idle after ${timeout}s: $(SLURM_CONF="$conf" sinfo -h -N -o '%T %E' 2>&1)"

# ---------------------------------------------------------------- slurmrestd
# slurmrestd refuses to run as root and fatals on the openapi/dbv* plugins
# without slurmdbd: load only the openapi/v* plugins that are installed.
plugins=""
for so in /usr/lib/*/slurm-wlm/openapi_v[0-9]*.so /usr/lib/slurm/openapi_v[0-9]*.so \
	/usr/lib64/slurm/openapi_v[0-9]*.so; do
	[ -e "$so" ] || continue
	v=$(basename "$so" .so | sed -e 's/^openapi_//' -e 's/_/./g')
	plugins="${plugins:+$plugins,}openapi/$v"
done
[ -n "$plugins" ] || plugins="openapi/v0.0.38"
rm -f "$sock" "$state/run/slurmrestd.pid"
SLURM_CONF="$conf" setsid slurmrestd -f "$conf" -a rest_auth/local -s "$plugins" \
	-u "$rest_user" "unix:$sock" </dev/null >>"$state/log/slurmrestd.log" 2>&1 &
echo $! >"$state/run/slurmrestd.pid"

rest_get() { curl -sf --max-time 5 --unix-socket "$sock" "http://localhost$1"; }
openapi_ok() { rest_get /openapi >"$state/run/openapi.json" 2>/dev/null; }
wait_for "$timeout" openapi_ok || die 1 "slurmrestd does not answer on $sock"
# The versions come from the paths it serves (info.version names only the
# first plugin loaded): newest first.
# (Slurm's JSON writer escapes '/' as '\/'.)
sed 's|\\/|/|g' "$state/run/openapi.json" | grep -o '"/slurm/v[0-9.]*/' |
	sed -e 's|"/slurm/||' -e 's|/$||' |
	sort -u -V -r | tr '\n' ' ' | sed 's/ $//' >"$state/run/openapi-versions"
newest=$(awk '{ print $1 }' "$state/run/openapi-versions")
[ -n "$newest" ] || die 1 "slurmrestd serves no /slurm/v*/ paths"
ping_ok() { rest_get "/slurm/$newest/ping" | grep -q '"ping": *"UP"'; }
wait_for 20 ping_ok || die 1 "slurmrestd /slurm/$newest/ping does not report the controller UP"

say "up in $state: partition $partition, node $node ($cpus CPUs, ${memory_mb} MB, gpu:$model:$gpus), slurmctld 127.0.0.1:$ctld_port, slurmd 127.0.0.1:$slurmd_port, slurmrestd $sock ($(cat "$state/run/openapi-versions"))"
trap - EXIT
emit
