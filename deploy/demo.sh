#!/bin/bash
# The local federation: a real etcd, one broker and three simulated sites
# (plus the local one-node Slurm as a fourth when it can run here) on
# loopback, each site joined with a one-time token exactly as a site admin
# would; then an example three-stage job, where each stage went and why,
# and the federation left up to explore. docs/OPERATIONS.md explains it.
#
# Usage: deploy/demo.sh [--with-slurm | --no-slurm] [--foreground | --detach]
#                       [--ci] [--restart] [--dir DIR] [--timeout SECS]
#        deploy/demo.sh --stop [--dir DIR]
#        deploy/demo.sh --status [--dir DIR]
#   --with-slurm   add the local one-node Slurm (deploy/slurm-up.sh) as
#                  site slurm-local; fail if it cannot start
#   --no-slurm     never add it (default: added when running as root with
#                  the Slurm packages installed; a failure is only a warning)
#   --foreground   after the job, stay until Ctrl-C, which stops everything
#                  (the default when run from a terminal)
#   --detach       after the job, return and leave the federation running
#                  (the default without a terminal); stop it with --stop
#   --ci           bounded and non-interactive: --detach, no Slurm unless
#                  --with-slurm, exit 3 unless the job succeeded
#   --restart      stop a running demo first instead of refusing to start
#   --dir DIR      where state, logs, pid files and secrets go (default
#                  .demo in the repository; env MERIDIAN_DEMO_DIR)
#   --timeout SECS how long the job may take (default 300)
#   --stop         stop everything a demo in DIR started (make demo-stop)
#   --status       say what runs
# Programs come from bin/ (env MERIDIAN_BIN), etcd from /usr/bin/etcd (env
# MERIDIAN_ETCD). Exit: 0 ok; 1 could not start; 2 usage; 3 the job did not
# succeed; 130 interrupted (everything stopped).
set -u
umask 077
# The whole script is one compound command, so bash reads it all before it
# runs any of it: editing or updating the file while a demo runs in the
# foreground cannot change what that demo does.
{

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${MERIDIAN_DEMO_DIR:-$top/.demo}
bin=${MERIDIAN_BIN:-$top/bin}
etcd_bin=${MERIDIAN_ETCD:-/usr/bin/etcd}
slurm=auto
mode=""
ci=0
restart=0
action=start
timeout=300
sim_sites="sim-shanghai sim-frankfurt sim-virginia"
job_file="$top/deploy/examples/jobs/demo-pipeline.json"
slurm_job_file="$top/deploy/examples/jobs/demo-slurm.json"

say() { printf '%s\n' "$*"; }
step() { printf '\n==> %s\n' "$*"; }
warn() { printf 'demo: %s\n' "$*" >&2; }
die() {
	warn "$2"
	exit "$1"
}
usage() { sed -n '8,31p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
	case "$1" in
	--with-slurm) slurm=yes ;;
	--no-slurm) slurm=no ;;
	--foreground) mode=foreground ;;
	--detach) mode=detach ;;
	--ci) ci=1 ;;
	--restart) restart=1 ;;
	--stop) action=stop ;;
	--status) action=status ;;
	--dir)
		[ $# -ge 2 ] || die 2 "--dir needs a directory"
		dir=$2
		shift
		;;
	--timeout)
		[ $# -ge 2 ] || die 2 "--timeout needs seconds"
		timeout=$2
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die 2 "unknown option '$1'"
		;;
	esac
	shift
done
case "$timeout" in '' | *[!0-9]*) die 2 "--timeout must be a number of seconds" ;; esac
if [ "$action" = start ]; then
	mkdir -p "$dir" || die 1 "cannot create $dir"
elif [ ! -d "$dir" ]; then
	echo "no demo federation runs in $dir"
	exit 0
fi
dir=$(cd "$dir" && pwd)
if [ "$ci" -eq 1 ]; then
	[ -n "$mode" ] || mode=detach
	[ "$slurm" = auto ] && slurm=no
fi
if [ -z "$mode" ]; then
	if [ -t 0 ] && [ -t 1 ]; then mode=foreground; else mode=detach; fi
fi

# Absolute, since site admins' join lines run from the site's dir.
bin=$(cd "$bin" 2>/dev/null && pwd) || bin=${MERIDIAN_BIN:-$top/bin}
piddir=$dir/pids
logdir=$dir/logs
secrets=$dir/secrets
slurm_state=$dir/slurm

# ------------------------------------------------------------ processes

# A pid file's process, only if it is still ours: its command line names
# the demo dir, so a reused pid is never signalled.
live_pid() {
	local f=$1 pid
	[ -f "$f" ] || return 1
	pid=$(cat "$f" 2>/dev/null) || return 1
	case "$pid" in '' | *[!0-9]*) return 1 ;; esac
	[ -r "/proc/$pid/cmdline" ] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/" || return 1
	echo "$pid"
}

any_running() {
	local f
	for f in "$piddir"/*.pid; do
		[ -e "$f" ] || continue
		live_pid "$f" >/dev/null && return 0
	done
	[ -f "$slurm_state/run/slurmctld.pid" ] && [ -f "$dir/slurm.up" ] && return 0
	return 1
}

# SIGTERM, up to 10 s, then SIGKILL; then the pid file goes.
stop_one() {
	local f=$1 name pid i
	name=$(basename "$f" .pid)
	if pid=$(live_pid "$f"); then
		kill -TERM "$pid" 2>/dev/null
		# live_pid, not kill -0: a zombie (our own child, in the
		# foreground) has stopped and has no command line any more.
		for i in $(seq 1 100); do
			live_pid "$f" >/dev/null || break
			sleep 0.1
		done
		if live_pid "$f" >/dev/null; then
			warn "$name did not stop in 10 s: killing it"
			kill -KILL "$pid" 2>/dev/null
		fi
		say "stopped $name (pid $pid)"
	fi
	rm -f "$f"
}

stop_all() {
	local f
	# Agents first (their stages end with them), then the broker, then
	# the store it writes to, then Slurm.
	for f in "$piddir"/agent-*.pid; do [ -e "$f" ] && stop_one "$f"; done
	[ -e "$piddir/broker.pid" ] && stop_one "$piddir/broker.pid"
	[ -e "$piddir/etcd.pid" ] && stop_one "$piddir/etcd.pid"
	for f in "$piddir"/*.pid; do [ -e "$f" ] && stop_one "$f"; done
	if [ -f "$dir/slurm.up" ] || [ -f "$slurm_state/.meridian-slurm" ]; then
		if "$top/deploy/slurm-down.sh" --state "$slurm_state" --purge \
			>>"$logdir/slurm.log" 2>&1; then
			say "stopped the local Slurm"
		else
			warn "slurm-down.sh failed: see $logdir/slurm.log"
		fi
		rm -f "$dir/slurm.up"
	fi
	# Secrets are only good for the federation that just stopped.
	rm -rf "$secrets" "$dir/env"
}

# Starts a daemon in its own session (so Ctrl-C in the terminal reaches
# only this script, which stops everything in order) with a pid file.
spawn() {
	local name=$1
	shift
	setsid "$@" </dev/null >>"$logdir/$name.log" 2>&1 &
	echo $! >"$piddir/$name.pid"
}

# Free TCP port on 127.0.0.1 in 12000-19999 (below Slurm's and the
# ephemeral range), not one already handed out by this script.
taken=" "
free_port() {
	local p i
	for i in $(seq 1 200); do
		p=$((12000 + RANDOM % 8000))
		case "$taken" in *" $p "*) continue ;; esac
		if ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
			taken="$taken$p "
			echo "$p"
			return 0
		fi
	done
	return 1
}

wait_for() { # SECS what command...
	local secs=$1 what=$2 i
	shift 2
	for i in $(seq 1 $((secs * 5))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	warn "$what did not come up in ${secs}s"
	return 1
}

show_log_tail() {
	[ -f "$logdir/$1.log" ] || return 0
	warn "last lines of $logdir/$1.log:"
	tail -n 15 "$logdir/$1.log" >&2
}

# ------------------------------------------------------------ actions

if [ "$action" = stop ]; then
	if any_running; then
		stop_all
		say "the demo federation in $dir is stopped"
	else
		rm -rf "$secrets" "$dir/env"
		say "no demo federation runs in $dir"
	fi
	exit 0
fi

if [ "$action" = status ]; then
	found=0
	for f in "$piddir"/*.pid; do
		[ -e "$f" ] || continue
		if pid=$(live_pid "$f"); then
			say "$(basename "$f" .pid): running (pid $pid)"
			found=1
		fi
	done
	[ -f "$dir/slurm.up" ] && say "slurm-local: state in $slurm_state"
	[ "$found" -eq 1 ] || say "no demo federation runs in $dir"
	exit 0
fi

if any_running; then
	if [ "$restart" -eq 1 ]; then
		step "Stopping the demo federation that runs in $dir"
		stop_all
	else
		say "A demo federation already runs in $dir."
		[ -f "$dir/env" ] && say "Explore it:  . $dir/env && meridianctl get sites"
		say "Stop it:     make demo-stop   (or deploy/demo.sh --stop)"
		say "Start anew:  deploy/demo.sh --restart"
		exit 0
	fi
fi

for p in meridian-broker meridian-agent meridianctl; do
	[ -x "$bin/$p" ] || die 1 "$bin/$p is missing: run 'make' first (or set MERIDIAN_BIN)"
done
[ -x "$etcd_bin" ] || die 1 "$etcd_bin is missing: run 'make deps' (Debian package etcd-server)"

# A fresh federation: state from an earlier run goes (its site keys and
# tokens belong to an etcd that is gone).
rm -rf "$piddir" "$logdir" "$secrets" "$dir/etcd" "$dir/broker" \
	"$dir/sites" "$dir/env" "$dir/jobs"
mkdir -p "$piddir" "$logdir" "$secrets" "$dir/broker" "$dir/sites" "$dir/jobs"
chmod 0700 "$secrets"

interrupted() {
	trap - INT TERM HUP
	printf '\n'
	step "Interrupted: stopping the demo federation"
	stop_all
	exit 130
}
trap interrupted INT TERM HUP

fail() {
	warn "$1"
	[ -n "${2:-}" ] && show_log_tail "$2"
	step "Stopping what was started (logs stay in $logdir)"
	stop_all
	exit 1
}

export PATH="$bin:$PATH"
ctl() { "$bin/meridianctl" --url "$url" "$@"; }

# ------------------------------------------------------------ etcd
step "Starting etcd (one member, loopback only, data in $dir/etcd)"
etcd_port=$(free_port) && peer_port=$(free_port) || fail "no free port"
etcd_url=http://127.0.0.1:$etcd_port
# --max-txn-ops: the broker batches many writes per txn (docs/ETCD.md).
spawn etcd "$etcd_bin" --name meridian-demo --data-dir "$dir/etcd" \
	--listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
	--listen-peer-urls "http://127.0.0.1:$peer_port" \
	--initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
	--initial-cluster "meridian-demo=http://127.0.0.1:$peer_port" \
	--max-txn-ops 1024
wait_for 30 etcd curl -fsS "$etcd_url/health" || fail "etcd did not start" etcd
say "etcd serves $etcd_url"

# ------------------------------------------------------------ broker
step "Starting the broker"
# API tokens: random, kept in 0600 files; the tenants file has hashes only.
for t in admin acme; do
	head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secrets/$t.token"
	chmod 0600 "$secrets/$t.token"
done
admin_hash=$("$bin/meridian-broker" hash-token <"$secrets/admin.token") ||
	fail "cannot hash the admin token"
acme_hash=$("$bin/meridian-broker" hash-token <"$secrets/acme.token") ||
	fail "cannot hash the tenant token"
cat >"$dir/broker/tenants.json" <<EOF
{"tenants": [
  {"name": "ops", "role": "admin", "token_hashes": ["$admin_hash"]},
  {"name": "acme", "role": "tenant", "token_hashes": ["$acme_hash"]}
]}
EOF
cp "$top/deploy/demo/policy.json" "$dir/broker/policy.json"
http_port=$(free_port) && link_port=$(free_port) || fail "no free port"
url=http://127.0.0.1:$http_port
link=tcp://127.0.0.1:$link_port
cat >"$dir/broker/broker.json" <<EOF
{
  "listen": {"http": "$url", "link": "$link"},
  "etcd": {"endpoints": ["$etcd_url"], "prefix": "/meridian"},
  "key_file": "$dir/broker/broker.key",
  "policy_file": "$dir/broker/policy.json",
  "tenants_file": "$dir/broker/tenants.json",
  "placement": {"interval": "500ms"},
  "sites": {"report_interval": "2s", "lost_after": 3},
  "log_level": "info"
}
EOF
"$bin/meridian-broker" check-config "$dir/broker/broker.json" >/dev/null ||
	fail "the broker config does not load"
spawn broker "$bin/meridian-broker" --config "$dir/broker/broker.json"
wait_for 30 broker curl -fsS "$url/readyz" || fail "the broker did not start" broker
say "broker: REST $url, agent link $link"

# ------------------------------------------------------------ slurm
if [ "$slurm" != no ]; then
	can=1
	if [ "$(id -u)" -ne 0 ]; then
		can=0
		why="not root"
	elif [ "$slurm" = auto ] && ! command -v slurmctld >/dev/null 2>&1 &&
		[ ! -x /usr/sbin/slurmctld ]; then
		can=0
		why="the Slurm packages are not installed (make deps)"
	fi
	if [ "$can" -eq 0 ]; then
		[ "$slurm" = yes ] && fail "--with-slurm: Slurm cannot run here: $why"
		say "(the local Slurm site is left out: $why)"
		slurm=no
	fi
fi
if [ "$slurm" != no ]; then
	step "Starting the local one-node Slurm (deploy/slurm-up.sh, ~30 s)"
	mkdir -p "$slurm_state"
	chmod 0755 "$dir" "$slurm_state"
	: >"$dir/slurm.up"
	if out=$("$top/deploy/slurm-up.sh" --state "$slurm_state" --gpus 4 \
		--gpu-model a100 --no-install 2>>"$logdir/slurm.log"); then
		eval "$out"
		export SLURM_CONF
		say "Slurm is up: partition $SLURM_PARTITION, $SLURM_GPUS GPUs $SLURM_GPU_MODEL, $SLURM_CPUS CPUs"
	else
		[ "$slurm" = yes ] && fail "slurm-up.sh failed" slurm
		warn "slurm-up.sh failed (see $logdir/slurm.log): going on without it"
		"$top/deploy/slurm-down.sh" --state "$slurm_state" --purge >>"$logdir/slurm.log" 2>&1
		rm -f "$dir/slurm.up"
		slurm=no
	fi
fi
sites=$sim_sites
[ "$slurm" != no ] && sites="$sites slurm-local"

# ------------------------------------------------------------ sites
region_of() {
	sed -n 's/.*"region": *"\([^"]*\)".*/\1/p' "$top/deploy/demo/sites/$1.json" | head -n 1
}
# A string member of meridianctl's indented JSON output.
json_str() { sed -n "s/^ *\"$1\": *\"\\(.*\\)\",\\{0,1\\}\$/\\1/p" | head -n 1; }

for s in $sites; do
	step "Joining site $s ($(region_of "$s"))"
	sd=$dir/sites/$s
	mkdir -p "$sd/data"
	# The admin makes a one-time token; the site admin gets the line.
	if ! ctl --token-file "$secrets/admin.token" -o json token create \
		--site "$s" --region "$(region_of "$s")" --ttl 10m \
		--link "$link" --agent-config "$sd/site.json" \
		>"$secrets/$s.join.json" 2>>"$logdir/ctl.log"; then
		fail "token create failed for $s" ctl
	fi
	token=$(json_str token <"$secrets/$s.join.json")
	broker_key=$(json_str broker_key <"$secrets/$s.join.json")
	join_line=$(json_str join_command <"$secrets/$s.join.json")
	[ -n "$token" ] && [ -n "$broker_key" ] && [ -n "$join_line" ] ||
		fail "token create gave no token for $s"
	printf '%s\n' "$token" >"$secrets/$s.token"
	say "token create: one-time token for $s (kept in $secrets/$s.token, 0600)"
	say "broker key to pin: $broker_key"
	# The site admin writes the site config (the broker's address and key
	# fingerprint go into it) and the datasets the site holds...
	case "$s" in
	sim-shanghai)
		mkdir -p "$sd/data/web-corpus"
		for i in 0 1 2; do
			printf 'demo corpus part %s\n' "$i" >"$sd/data/web-corpus/part-000$i.txt"
		done
		;;
	slurm-local)
		mkdir -p "$sd/data/lab-genomes"
		printf 'ACGT demo genome\n' >"$sd/data/lab-genomes/sample-1.fa"
		;;
	esac
	chmod -R a+rX "$sd/data"
	sed -e "s#@TOP@#$top#g" -e "s#@DIR@#$sd#g" -e "s#@BROKER@#$link#g" \
		-e "s#@BROKER_KEY@#$broker_key#g" \
		-e "s#@SLURM_SOCKET@#${SLURMRESTD_SOCKET:-}#g" \
		-e "s#@SLURM_PARTITION@#${SLURM_PARTITION:-}#g" \
		-e "s#@SLURM_GPU_MODEL@#${SLURM_GPU_MODEL:-a100}#g" \
		"$top/deploy/demo/sites/$s.json" >"$sd/site.json"
	# ...and runs the join line exactly as printed (token redacted here).
	say "site admin runs: $(printf '%s' "$join_line" | sed "s#$token#${token%%.*}.<secret>#")"
	(cd "$sd" && eval "$join_line") >>"$logdir/agent-$s.log" 2>&1 ||
		fail "the join of $s was refused" "agent-$s"
	rm -f "$secrets/$s.join.json"
	say "joined; site key in $sd/site.key (0600)"
	spawn "agent-$s" "$bin/meridian-agent" --config "$sd/site.json"
done

step "Waiting for every site's first report"
site_reported() {
	ctl --token-file "$secrets/admin.token" -o json get site "$1" 2>/dev/null |
		grep -q '"last_heartbeat"'
}
for s in $sites; do
	wait_for 60 "the report of $s" site_reported "$s" || fail "$s never reported" "agent-$s"
done
ctl --token-file "$secrets/admin.token" get sites

# ------------------------------------------------------------ env file
cat >"$dir/env" <<EOF
# Source me: . $dir/env
export MERIDIAN_URL=$url
export MERIDIAN_TOKEN="\$(cat '$secrets/admin.token')"
export PATH="$bin:\$PATH"
EOF
chmod 0600 "$dir/env"

# ------------------------------------------------------------ the job
step "Submitting $(basename "$job_file") as tenant acme: prep -> train -> score"
ctl --token-file "$secrets/acme.token" dry-run "$job_file" >"$dir/jobs/dry-run.txt" 2>&1 || true
ctl --token-file "$secrets/acme.token" submit "$job_file" --wait \
	--interval 500ms --wait-timeout "${timeout}s" | tee "$dir/jobs/submit.txt"
job_rc=${PIPESTATUS[0]}
job_id=$(head -n 1 "$dir/jobs/submit.txt")
if [ -n "$job_id" ]; then
	step "Where each stage went, and why (meridianctl describe job $job_id)"
	ctl --token-file "$secrets/acme.token" describe job "$job_id" | tee "$dir/jobs/describe.txt"
fi

slurm_rc=0
if [ "$slurm" != no ] && [ "$job_rc" -eq 0 ]; then
	step "A job whose input lives only on slurm-local runs on the real Slurm"
	ctl --token-file "$secrets/acme.token" submit "$slurm_job_file" --wait \
		--interval 500ms --wait-timeout "${timeout}s" | tee "$dir/jobs/submit-slurm.txt"
	slurm_rc=${PIPESTATUS[0]}
	say "Slurm's own record (sacct --completion):"
	sacct --completion -n -P -o jobid,jobname,state,exitcode 2>/dev/null | tail -n 3
fi

# ------------------------------------------------------------ explore
step "The federation is up"
cat <<EOF
Explore it from any shell (the export reads your admin token from a 0600
file; the token itself is never printed):

  . $dir/env
  meridianctl get sites
  meridianctl get jobs
  meridianctl describe job ${job_id:-ID}
  meridianctl dry-run deploy/examples/jobs/demo-pipeline.json
  meridianctl submit deploy/examples/jobs/demo-pipeline.json --wait
  meridianctl site drain sim-shanghai      # and watch the next job move
  meridianctl token create --site new-site --region eu-west-1 --link $link

Logs: $logdir    State: $dir
EOF

if [ "$job_rc" -ne 0 ] || [ "$slurm_rc" -ne 0 ]; then
	warn "the demo job did not succeed (meridianctl exit $job_rc${slurm_rc:+/$slurm_rc}); logs are in $logdir"
fi

if [ "$mode" = detach ]; then
	say "Stop it with:  make demo-stop   (or deploy/demo.sh --stop)"
	trap - INT TERM HUP
	[ "$job_rc" -eq 0 ] && [ "$slurm_rc" -eq 0 ] || exit 3
	exit 0
fi

say "It runs until you press Ctrl-C here (or run 'make demo-stop' elsewhere)."
while sleep 2; do
	for f in "$piddir"/*.pid; do
		[ -e "$f" ] || continue
		if ! live_pid "$f" >/dev/null; then
			[ -e "$f" ] || continue
			warn "$(basename "$f" .pid) has stopped (see $logdir)"
			rm -f "$f"
		fi
	done
	any_running || {
		say "the demo federation has stopped"
		exit 0
	}
done
exit 0
}
