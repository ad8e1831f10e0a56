#!/usr/bin/env bash
# Runs every tests/netns/test-*.sh (or those matching $1, a substring), one
# after the other, each bounded in time, and prints one PASS/FAIL/SKIP line
# per test and a summary line:
#   netns: N passed, M failed, K skipped
# Exit status is non-zero when any test failed.
#
# A test that leaves a namespace behind fails, and the leftover is removed.
set -euo pipefail

dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
filter=${1:-}
timeout_s=${TS_TEST_TIMEOUT:-300}
passed=0
failed=0
skipped=0
failures=()

shopt -s nullglob
tests=("$dir"/test-*.sh)
shopt -u nullglob

leftovers() {
	ip netns list 2>/dev/null | awk -v p="$1" 'index($1, p) == 1 { print $1 }'
}

i=0
for t in "${tests[@]}"; do
	name=$(basename "$t" .sh)
	[[ -z $filter || $name == *"$filter"* ]] || continue
	i=$((i + 1))
	prefix="ts-r$$-$i-"
	echo "=== $name"
	start=$SECONDS
	set +e
	# timeout signals the whole process group, so the test's traps run and
	# its children stop too; -k is the last resort if a trap hangs.
	TS_TEST_PREFIX=$prefix timeout -k 15 "$timeout_s" bash "$t"
	rc=$?
	set -e
	took=$((SECONDS - start))
	left=$(leftovers "$prefix")
	if [[ -n $left ]]; then
		echo "$name left namespaces behind: $left" >&2
		for ns in $left; do ip netns del "$ns" 2>/dev/null || true; done
		((rc == 0 || rc == 77)) && rc=1
	fi
	case $rc in
	0)
		echo "PASS $name (${took}s)"
		passed=$((passed + 1))
		;;
	77)
		echo "SKIP $name"
		skipped=$((skipped + 1))
		;;
	124)
		echo "FAIL $name (timed out after ${timeout_s}s)"
		failed=$((failed + 1))
		failures+=("$name")
		;;
	*)
		echo "FAIL $name (exit $rc, ${took}s)"
		failed=$((failed + 1))
		failures+=("$name")
		;;
	esac
done

if ((failed > 0)); then
	echo "failed: ${failures[*]}"
fi
echo "netns: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
