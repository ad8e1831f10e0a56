# shellcheck shell=bash
# Shared helpers for the netns tests. Source it first thing:
#
#   . "$(dirname "$0")/lib.sh"
#   require_root
#   lab_up pair
#   start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name t1
#   ...
#   pass
#
# Exit codes: 0 pass, 1 fail, 77 skip (run-all.sh reports SKIP).
#
# Every test gets its own namespace prefix, so tests never fight over
# namespaces and a test can never delete the interactive lab (`make lab`).
# An EXIT trap kills the processes the test started (by PID, nothing else)
# and deletes the test's namespaces, on failure and on signals too.

set -euo pipefail

TS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TUNSTACK=${TUNSTACK:-$TS_ROOT/target/release/tunstack}
TS_SETUP=$TS_ROOT/netns-scripts/setup-netns.sh
TEST_NAME=$(basename "$0" .sh)

# run-all.sh passes a prefix so it can check for leftovers afterwards; a test
# run by hand makes its own from its name and PID.
_ts_short=$(printf '%s' "${TEST_NAME#test-}" | tr -c 'a-zA-Z0-9' '-' | cut -c1-10)
TS_PREFIX=${TS_TEST_PREFIX:-ts-${_ts_short}-$$-}
export TS_PREFIX
NS_A=${TS_PREFIX}a
NS_B=${TS_PREFIX}b
NS_HUB=${TS_PREFIX}hub
export NS_A NS_B NS_HUB

TS_PIDS=()
TS_LAB_UP=0
TS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tunstack-${_ts_short}.XXXXXX")
# Set by start_node for the node it started last.
NODE_PID=""
NODE_CTL=""
NODE_LOG=""
# Set by bg and start_tcpdump; read by the tests.
BG_PID=""
# shellcheck disable=SC2034
TCPDUMP_PID=""

# Name of the namespace of star node I.
ns_n() {
	echo "${TS_PREFIX}n$1"
}

log() {
	echo "[$TEST_NAME] $*"
}

fail() {
	echo "FAIL: [$TEST_NAME] $*" >&2
	exit 1
}

pass() {
	echo "PASS: $TEST_NAME"
	exit 0
}

skip() {
	echo "SKIP: $*"
	exit 77
}

require_root() {
	[[ ${EUID} -eq 0 ]] || skip "needs root (network namespaces, TUN devices)"
	[[ -c /dev/net/tun ]] || skip "/dev/net/tun missing"
	command -v ip >/dev/null 2>&1 || skip "ip (iproute2) not installed"
}

# require_cmd CMD...: skip when a tool the test needs is not installed.
require_cmd() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || skip "$c not installed (make deps)"
	done
}

# The binary is a build product, not an optional tool: its absence fails.
require_tunstack() {
	[[ -x $TUNSTACK ]] || fail "$TUNSTACK not built (make build)"
}

# Kills one recorded process: SIGTERM, up to 3 s grace, then SIGKILL.
_ts_stop_pid() {
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 30; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

_ts_cleanup() {
	local rc=$? pid
	set +e
	trap - EXIT INT TERM
	for pid in "${TS_PIDS[@]}"; do
		_ts_stop_pid "$pid"
	done
	if ((TS_LAB_UP)); then
		"$TS_SETUP" down >/dev/null 2>&1 || echo "[$TEST_NAME] warning: lab teardown failed" >&2
	fi
	if [[ -n ${TS_KEEP_TMP:-} ]]; then
		echo "[$TEST_NAME] logs kept in $TS_TMP" >&2
	else
		rm -rf "$TS_TMP"
	fi
	exit "$rc"
}
trap _ts_cleanup EXIT
# A command that fails under `set -e` without calling `fail` still says where it was.
set -E
trap 'echo "FAIL: [$TEST_NAME] line $LINENO: command failed: $BASH_COMMAND" >&2' ERR
# Turn signals into a normal exit so the EXIT trap runs.
trap 'exit 130' INT
trap 'exit 143' TERM

# lab_up TOPOLOGY [N]: builds the lab with this test's prefix.
lab_up() {
	TS_LAB_UP=1
	"$TS_SETUP" up "$@" >"$TS_TMP/lab-$1.log" 2>&1 || {
		cat "$TS_TMP/lab-$1.log" >&2
		fail "lab '$*' did not come up"
	}
}

# bg NS CMD...: runs CMD in namespace NS in the background, records its PID
# for the cleanup trap and leaves it in BG_PID. Output goes to the caller's
# redirections.
bg() {
	local ns=$1
	shift
	# `ip netns exec` execs the command, so $! is the command's own PID.
	ip netns exec "$ns" "$@" &
	BG_PID=$!
	TS_PIDS+=("$BG_PID")
}

# stop PID: stops a process this test started (SIGTERM, then SIGKILL).
stop() {
	_ts_stop_pid "$1"
}

# interrupt PID: SIGINT (a clean node shutdown), waits up to 5 s for the exit.
interrupt() {
	local pid=$1 i
	kill -INT "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	_ts_stop_pid "$pid"
}

# wait_for CMD [TIMEOUT_S=10]: re-evaluates the shell command string CMD every
# 0.1 s until it succeeds; returns 1 on timeout.
wait_for() {
	local cmd=$1 timeout=${2:-10} deadline
	deadline=$((SECONDS + timeout))
	while ((SECONDS < deadline)); do
		if eval "$cmd" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	eval "$cmd" >/dev/null 2>&1
}

# ctl ARGS...: `tunstack ctl` against the last started node.
ctl() {
	"$TUNSTACK" ctl --control "$NODE_CTL" "$@"
}

# start_node NS ARGS...: starts `tunstack node ARGS --no-console` in NS and
# waits until its control socket answers `status`. A --control PATH in ARGS
# is respected; otherwise the socket goes into the test's temp directory so
# parallel tests never share /run/tunstack/NAME.sock.
start_node() {
	local ns=$1 ctl_path="" prev="" a n
	shift
	for a in "$@"; do
		[[ $prev == --control ]] && ctl_path=$a
		prev=$a
	done
	n=${#TS_PIDS[@]}
	local args=("$@") has_data=0
	for a in "$@"; do
		[[ $a == --data-dir ]] && has_data=1
	done
	if [[ -z $ctl_path ]]; then
		ctl_path=$TS_TMP/node$n.sock
		args+=(--control "$ctl_path")
	fi
	# Identity, inbox and received files stay inside the test's temp directory.
	if ((!has_data)); then
		args+=(--data-dir "$TS_TMP/data$n")
	fi
	require_tunstack
	NODE_LOG=$TS_TMP/node$n.log
	bg "$ns" "$TUNSTACK" node --no-console "${args[@]}" >"$NODE_LOG" 2>&1
	NODE_PID=$BG_PID
	NODE_CTL=$ctl_path
	local deadline=$((SECONDS + 10))
	# The socket must exist and the node must still be running: a ctl that
	# answers for a node that already exited proves nothing.
	until [[ -S $ctl_path ]] && "$TUNSTACK" ctl --control "$ctl_path" status >/dev/null 2>&1 &&
		kill -0 "$NODE_PID" 2>/dev/null; do
		if ! kill -0 "$NODE_PID" 2>/dev/null; then
			sed 's/^/  node: /' "$NODE_LOG" >&2
			fail "node in $ns exited during startup"
		fi
		if ((SECONDS >= deadline)); then
			sed 's/^/  node: /' "$NODE_LOG" >&2
			fail "node in $ns: control socket $ctl_path did not answer within 10 s"
		fi
		sleep 0.1
	done
	log "node up in $ns (pid $NODE_PID, control $ctl_path)"
}

# start_tcpdump NS OUTFILE ARGS...: background capture that is known to be
# listening when this returns (so nothing sent afterwards is missed).
start_tcpdump() {
	local ns=$1 out=$2
	shift 2
	require_cmd tcpdump
	bg "$ns" tcpdump -l "$@" >"$out" 2>"$out.err"
	# shellcheck disable=SC2034  # read by the tests
	TCPDUMP_PID=$BG_PID
	wait_for "grep -q 'listening on' '$out.err'" 5 || {
		cat "$out.err" >&2
		fail "tcpdump in $ns did not start"
	}
}
