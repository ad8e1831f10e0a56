#!/usr/bin/env bash
# A one-minute tour: build the `pair` lab, start a node on tun0, watch the
# kernel ping it (with tcpdump listening on tun0), show the node's status,
# then stop the node and remove the lab. Everything is undone on exit, on
# failure and on Ctrl-C alike.
#
# Exit status: non-zero if the pings were not answered.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TUNSTACK=${TUNSTACK:-$ROOT/target/release/tunstack}
SETUP=$ROOT/netns-scripts/setup-netns.sh
# A prefix of its own, so the demo neither uses nor tears down a lab the user
# built with `make lab` (prefix ts-).
export TS_PREFIX=ts-demo-
NS=${TS_PREFIX}a
NODE_ADDR=198.18.0.2
CTL=/run/tunstack/demo.sock

[[ ${EUID} -eq 0 ]] || {
	echo "demo: must run as root (namespaces, TUN)" >&2
	exit 1
}
[[ -x $TUNSTACK ]] || {
	echo "demo: $TUNSTACK not found; run 'make build'" >&2
	exit 1
}
command -v tcpdump >/dev/null 2>&1 || {
	echo "demo: tcpdump not installed; run 'make deps'" >&2
	exit 1
}

TMP=$(mktemp -d /tmp/tunstack-demo.XXXXXX)
NODE_PID=""
TCPDUMP_PID=""

stop_pid() {
	local pid=$1 sig=$2 i
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill "-$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	stop_pid "$TCPDUMP_PID" INT
	stop_pid "$NODE_PID" INT
	bash "$SETUP" down >/dev/null
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section() {
	printf '\n== %s\n' "$*"
}

section "lab"
bash "$SETUP" up pair

section "node"
mkdir -p "$(dirname "$CTL")"
ip netns exec "$NS" "$TUNSTACK" node --tun tun0 --addr "$NODE_ADDR/24" --name demo \
	--no-console --control "$CTL" --data-dir "$TMP/data" >"$TMP/node.log" 2>&1 &
NODE_PID=$!
for ((i = 0; i < 100; i++)); do
	"$TUNSTACK" ctl --control "$CTL" status >/dev/null 2>&1 && break
	if ! kill -0 "$NODE_PID" 2>/dev/null; then
		cat "$TMP/node.log" >&2
		echo "demo: the node exited during startup" >&2
		exit 1
	fi
	sleep 0.1
done
"$TUNSTACK" ctl --control "$CTL" status >/dev/null 2>&1 || {
	cat "$TMP/node.log" >&2
	echo "demo: the node's control socket $CTL did not answer" >&2
	exit 1
}
echo "node 'demo' (pid $NODE_PID) owns tun0 in $NS as $NODE_ADDR"

# 4 echo requests + 4 replies = 8 packets, then tcpdump exits by itself.
ip netns exec "$NS" tcpdump -lni tun0 -c 8 icmp >"$TMP/tcpdump.out" 2>"$TMP/tcpdump.err" &
TCPDUMP_PID=$!
for ((i = 0; i < 50; i++)); do
	grep -q 'listening on' "$TMP/tcpdump.err" 2>/dev/null && break
	sleep 0.1
done

section "ping $NODE_ADDR from the kernel in $NS"
ping_rc=0
ip netns exec "$NS" ping -n -c 4 -W 2 "$NODE_ADDR" || ping_rc=$?

# Give tcpdump a moment to see the last reply, then stop it if it has not
# counted its 8 packets.
for ((i = 0; i < 20; i++)); do
	kill -0 "$TCPDUMP_PID" 2>/dev/null || break
	sleep 0.1
done
stop_pid "$TCPDUMP_PID" INT
TCPDUMP_PID=""

section "tcpdump -ni tun0 icmp (inside $NS)"
cat "$TMP/tcpdump.out"

section "tunstack ctl --control $CTL status"
"$TUNSTACK" ctl --control "$CTL" status || echo "(status failed)"

section "stopping the node (SIGINT)"
stop_pid "$NODE_PID" INT
NODE_PID=""
echo "done"

if ((ping_rc != 0)); then
	echo "demo: ping failed (exit $ping_rc)" >&2
	exit 1
fi
