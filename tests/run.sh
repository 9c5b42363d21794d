#!/bin/sh
# Runs Meridian's test programs and adds up their results. Each program ends
# with "<suite>: N passed, M failed[, K skipped]"; a program that crashes, is
# killed by the time limit or prints no summary counts as one failure.
# Ends with the line "N passed, M failed[, K skipped]" and exits 1 when
# anything failed.
#
# Usage: tests/run.sh DIR [FILTER]   (runs DIR/*_test whose name has FILTER)
# MERIDIAN_TEST_TIMEOUT: seconds one program may take (default 900).
set -u
dir=${1:?usage: tests/run.sh DIR [FILTER]}
filter=${2:-}
limit=${MERIDIAN_TEST_TIMEOUT:-900}
passed=0
failed=0
skipped=0
broken=""
log=$(mktemp)
trap 'rm -f "$log"' EXIT

for t in "$dir"/*_test; do
	[ -x "$t" ] || continue
	case "$(basename "$t")" in *"$filter"*) ;; *) continue ;; esac
	echo "=== $(basename "$t")"
	timeout -k 10 "$limit" "$t" >"$log" 2>&1
	rc=$?
	cat "$log"
	sum=$(grep -E '^[A-Za-z0-9_./-]+: [0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
	if [ -z "$sum" ]; then
		echo "!!! $(basename "$t"): exited $rc without a summary"
		failed=$((failed + 1))
		broken="$broken $(basename "$t")"
		continue
	fi
	p=$(echo "$sum" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
	f=$(echo "$sum" | sed -E 's/.* ([0-9]+) failed.*/\1/')
	s=$(echo "$sum" | sed -nE 's/.* ([0-9]+) skipped.*/\1/p')
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + ${s:-0}))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "!!! $(basename "$t"): exited $rc after its summary"
		failed=$((failed + 1))
	fi
	[ "$f" -gt 0 ] && broken="$broken $(basename "$t")"
done

[ -n "$broken" ] && echo "failing programs:$broken"
if [ "$skipped" -gt 0 ]; then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
