#!/bin/sh
# Runs every benchmark program in DIR (make bench does this), shows their
# human-readable blocks, and collects the lines they print as
#   BENCH {"bench": "...", ...}
# into bench/results/latest.json together with a note of the machine, so
# docs/PERFORMANCE.md can quote figures with where they came from.
# Usage: bench/run.sh DIR [FILTER]
set -u
dir=${1:?usage: bench/run.sh DIR [FILTER]}
filter=${2:-}
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/bench/results/latest.json"
tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.all"' EXIT
: >"$tmp.all"
status=0

for b in "$dir"/*_bench; do
	[ -x "$b" ] || continue
	case "$(basename "$b")" in *"$filter"*) ;; *) continue ;; esac
	echo "=== $(basename "$b")"
	if ! "$b" >"$tmp" 2>&1; then
		echo "!!! $(basename "$b") failed"
		status=1
	fi
	grep -v '^BENCH ' "$tmp"
	grep '^BENCH ' "$tmp" | sed 's/^BENCH //' >>"$tmp.all"
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //; s/"/\\"/g')
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
{
	printf '{"date": "%s", "machine": {"cpus": %s, "cpu": "%s", "memory": "%s"},\n "results": [\n' \
		"$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$cpu" "$mem"
	sed '$!s/$/,/' "$tmp.all"
	printf ' ]}\n'
} >"$out"
echo "results written to bench/results/latest.json"
exit $status
