#!/bin/bash
# Stops the one-node Slurm that deploy/slurm-up.sh started in a state dir:
# cancels its jobs, then stops slurmrestd, slurmd, slurmctld and munged by
# their pid files. A pid is signalled only when its command line names the
# state dir, so a reused pid or a system Slurm/munge is never touched.
#
# Usage: deploy/slurm-down.sh --state DIR [--purge] [--keep-munge]
#   --purge       also delete the state dir (only a dir slurm-up.sh made)
#   --keep-munge  leave munged running (slurm-up.sh uses it between retries)
# Exit: 0 when nothing of this cluster runs any more; 1 when something would
# not stop; 2 usage. Idempotent: a second run finds nothing and exits 0.
set -u

state=""
purge=0
keep_munge=0
say() { echo "slurm-down: $*" >&2; }
while [ $# -gt 0 ]; do
	case "$1" in
	--state) state=${2:?--state needs a dir}; shift 2 ;;
	--purge) purge=1; shift ;;
	--keep-munge) keep_munge=1; shift ;;
	-h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) say "unknown option '$1' (try --help)"; exit 2 ;;
	esac
done
[ -n "$state" ] || { say "--state DIR is required"; exit 2; }
if [ ! -d "$state" ]; then
	say "no state dir $state: nothing to stop"
	exit 0
fi
state=$(cd "$state" && pwd -P)
if [ ! -e "$state/.meridian-slurm" ]; then
	say "$state was not made by slurm-up.sh; not touching it"
	exit 2
fi
conf="$state/etc/slurm.conf"
failed=0

pid_of() { # pid_of PIDFILE NEEDLE: prints the pid if it runs with NEEDLE in argv
	local pid
	[ -s "$1" ] || return 1
	pid=$(cat "$1" 2>/dev/null) || return 1
	case "$pid" in '' | *[!0-9]*) return 1 ;; esac
	[ -r "/proc/$pid/cmdline" ] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
	echo "$pid"
}
gone() { # gone PID...: true once none of them runs (a zombie has ended)
	local p st
	for p in "$@"; do
		st=$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null) || continue
		[ -n "$st" ] && [ "$st" != Z ] && return 1
	done
	return 0
}
stop_pids() { # stop_pids WHAT PID...: TERM, up to 10 s, then KILL
	local what=$1 n=0
	shift
	[ $# -gt 0 ] || return 0
	kill -TERM "$@" 2>/dev/null
	while ! gone "$@" && [ "$n" -lt 50 ]; do
		sleep 0.2
		n=$((n + 1))
	done
	if ! gone "$@"; then
		say "$what did not stop on TERM; killing"
		kill -KILL "$@" 2>/dev/null
		sleep 0.5
		gone "$@" || { say "$what still running: $*"; failed=1; }
	fi
}
stop_pidfile() { # stop_pidfile WHAT PIDFILE NEEDLE
	local pid
	if pid=$(pid_of "$2" "$3"); then
		stop_pids "$1" "$pid"
	fi
	rm -f "$2"
}

# 1. Jobs first: slurmstepd and job processes outlive slurmd, so cancel them
# while the controller still runs and give them KillWait to end.
if pid_of "$state/run/slurmctld.pid" "$state" >/dev/null; then
	jobs=$(SLURM_CONF="$conf" timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
	if [ -n "${jobs// /}" ]; then
		# shellcheck disable=SC2086
		SLURM_CONF="$conf" timeout 10 scancel $jobs 2>/dev/null
		n=0
		while [ "$n" -lt 75 ] &&
			[ -n "$(SLURM_CONF="$conf" timeout 5 squeue -h -o %A 2>/dev/null)" ]; do
			sleep 0.2
			n=$((n + 1))
		done
	fi
fi

# 2. The daemons, front to back.
stop_pidfile slurmrestd "$state/run/slurmrestd.pid" "$state"
stop_pidfile slurmd "$state/run/slurmd.pid" "$state"
stop_pidfile slurmctld "$state/run/slurmctld.pid" "$state"

# 3. Anything of this cluster's jobs still alive: slurmstepd and job
# processes carry SLURM_CONF=<our slurm.conf> in their environment (job
# processes also SLURM_JOB_ID). Never ourselves or our callers, who may have
# SLURM_CONF set too.
ancestors=" $$ "
p=$$
while [ "$p" -gt 1 ] 2>/dev/null; do
	p=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null) || break
	ancestors="$ancestors$p "
done
left=""
what=""
# One grep over all environments (NUL-separated entries) finds the few
# candidates; a loop of subshells over every process takes seconds.
# (paths under /proc have no spaces)
# shellcheck disable=SC2013
for f in $(grep -lzxF "SLURM_CONF=$conf" /proc/[0-9]*/environ 2>/dev/null); do
	d=${f%/environ}
	p=${d#/proc/}
	case "$ancestors" in *" $p "*) continue ;; esac
	comm=$(cat "$d/comm" 2>/dev/null) || continue
	if [ "$comm" = slurmstepd ] || grep -qz '^SLURM_JOB_ID=' "$f" 2>/dev/null; then
		left="$left $p"
		what="$what $p($comm)"
	fi
done
if [ -n "$left" ]; then
	say "stopping leftover job processes:$what"
	# shellcheck disable=SC2086
	stop_pids "job processes" $left
fi

# 4. munged: its files are in the state dir, or in the private dir under
# /run that slurm-up.sh had to use (see run/munge-dir).
if [ "$keep_munge" -eq 0 ]; then
	munge_dir=$(cat "$state/run/munge-dir" 2>/dev/null || echo "$state/munge")
	# Never follow a path we did not write.
	if [ "$munge_dir" != "$state/munge" ] &&
		! [[ "$munge_dir" =~ ^/run/meridian-munge\.[A-Za-z0-9]+$ ]]; then
		munge_dir="$state/munge"
	fi
	stop_pidfile munged "$munge_dir/munged.pid" "$munge_dir/munge.socket"
	if [ "$munge_dir" = "$state/munge" ]; then
		rm -f "$munge_dir/munge.socket" "$munge_dir/munge.socket.lock"
	else
		rm -rf "$munge_dir"
	fi
fi
rm -f "$state/rest/slurmrestd.socket"

if [ "$failed" -ne 0 ]; then
	say "some processes of $state did not stop"
	exit 1
fi
if [ "$purge" -eq 1 ]; then
	rm -rf "$state"
	say "stopped and removed $state"
else
	say "stopped; state and logs kept in $state"
fi
exit 0
