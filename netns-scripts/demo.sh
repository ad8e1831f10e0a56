#!/usr/bin/env bash
# A one-minute tour of the stack: build the `line` lab (ts-demo-a and ts-demo-b joined by a
# veth pair, each with a TUN device), start node alice on ts-demo-a's tun0 and node bob on
# ts-demo-b's, then
#   1. the kernel pings alice while tcpdump watches tun0 (our IPv4/ICMP);
#   2. the kernel's curl and nc talk to alice's TCP services (our TCP), with a 100 MB download;
#   3. bob sends alice a message (protocol 170) and a 20 MB file (protocol 171) through both
#      kernels, and the file's SHA-256 is checked;
#   4. alice's peers and status.
# Everything is undone on exit, on failure and on Ctrl-C alike.
#
# Exit status: non-zero if any step did not work.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TUNSTACK=${TUNSTACK:-$ROOT/target/release/tunstack}
SETUP=$ROOT/netns-scripts/setup-netns.sh
# A prefix of its own, so the demo neither uses nor tears down a lab the user
# built with `make lab` (prefix ts-).
export TS_PREFIX=ts-demo-
NS=${TS_PREFIX}a
NS_B=${TS_PREFIX}b
NODE_ADDR=198.18.1.2
BOB_ADDR=198.18.2.2

[[ ${EUID} -eq 0 ]] || {
	echo "demo: must run as root (namespaces, TUN)" >&2
	exit 1
}
[[ -x $TUNSTACK ]] || {
	echo "demo: $TUNSTACK not found; run 'make build'" >&2
	exit 1
}
for tool in tcpdump curl nc sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "demo: $tool not installed; run 'make deps'" >&2
		exit 1
	}
done

TMP=$(mktemp -d /tmp/tunstack-demo.XXXXXX)
CTL=$TMP/alice.sock
CTL_B=$TMP/bob.sock
NODE_PID=""
BOB_PID=""
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
	stop_pid "$BOB_PID" INT
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

die() {
	echo "demo: $*" >&2
	exit 1
}

# start_node NS LOGNAME CTL ARGS...: starts a node, waits for its control socket; sets STARTED_PID.
start_node() {
	local ns=$1 name=$2 ctl=$3 i
	shift 3
	ip netns exec "$ns" "$TUNSTACK" node --no-console --name "$name" --control "$ctl" \
		--data-dir "$TMP/$name" "$@" >"$TMP/$name.log" 2>&1 &
	STARTED_PID=$!
	for ((i = 0; i < 100; i++)); do
		"$TUNSTACK" ctl --control "$ctl" status >/dev/null 2>&1 && return 0
		kill -0 "$STARTED_PID" 2>/dev/null || {
			cat "$TMP/$name.log" >&2
			die "node $name exited during startup"
		}
		sleep 0.1
	done
	cat "$TMP/$name.log" >&2
	die "node $name: control socket $ctl did not answer"
}
alice() { "$TUNSTACK" ctl --control "$CTL" "$@"; }
bob() { "$TUNSTACK" ctl --control "$CTL_B" "$@"; }

section "lab: netns-scripts/setup-netns.sh up line"
bash "$SETUP" up line

section "nodes"
start_node "$NS" alice "$CTL" --tun tun0 --addr "$NODE_ADDR/24" \
	--serve echo:7 --serve hello:9001 --serve http:80
NODE_PID=$STARTED_PID
start_node "$NS_B" bob "$CTL_B" --tun tun0 --addr "$BOB_ADDR/24" --peer "$NODE_ADDR"
BOB_PID=$STARTED_PID
echo "alice (pid $NODE_PID) owns tun0 in $NS as $NODE_ADDR, serving echo:7 hello:9001 http:80"
echo "bob   (pid $BOB_PID) owns tun0 in $NS_B as $BOB_ADDR, told about alice (--peer)"

# 4 echo requests + 4 replies = 8 packets, then tcpdump exits by itself.
ip netns exec "$NS" tcpdump -lni tun0 -c 8 icmp >"$TMP/tcpdump.out" 2>"$TMP/tcpdump.err" &
TCPDUMP_PID=$!
for ((i = 0; i < 50; i++)); do
	grep -q 'listening on' "$TMP/tcpdump.err" 2>/dev/null && break
	sleep 0.1
done

section "1. ping $NODE_ADDR from the kernel in $NS (our IPv4 and ICMP)"
ping_rc=0
ip netns exec "$NS" ping -n -c 4 -i 0.2 -W 2 "$NODE_ADDR" || ping_rc=$?

# Give tcpdump a moment to see the last reply, then stop it if it has not
# counted its 8 packets.
for ((i = 0; i < 20; i++)); do
	kill -0 "$TCPDUMP_PID" 2>/dev/null || break
	sleep 0.1
done
stop_pid "$TCPDUMP_PID" INT
TCPDUMP_PID=""
((ping_rc == 0)) || die "ping failed (exit $ping_rc)"

section "tcpdump -ni tun0 icmp (inside $NS)"
cat "$TMP/tcpdump.out"

section "2. the kernel's curl and nc against alice's TCP (ours)"
echo "\$ curl http://$NODE_ADDR/"
ip netns exec "$NS" curl -sS --max-time 10 "http://$NODE_ADDR/" || die "curl failed"
echo "\$ echo hello | nc -N $NODE_ADDR 9001"
ip netns exec "$NS" bash -c "echo hello | nc -N -w 5 $NODE_ADDR 9001" || die "nc failed"
echo "\$ curl -o /dev/null http://$NODE_ADDR/bytes/100000000"
speed=$(ip netns exec "$NS" curl -sS --max-time 60 -o /dev/null -w '%{size_download} %{speed_download}' \
	"http://$NODE_ADDR/bytes/100000000") || die "download failed"
read -r size bps <<<"$speed"
((size == 100000000)) || die "download: $size bytes of 100000000"
echo "100 MB in $(awk -v b="$bps" 'BEGIN { printf "%.0f Mbit/s", b * 8 / 1e6 }')"

section "3. bob -> alice: a message (protocol 170) and a file (protocol 171), through two kernels"
for ((i = 0; i < 50; i++)); do
	bob peers --json 2>/dev/null | grep -q "$NODE_ADDR" && break
	sleep 0.1
done
echo "\$ tunstack ctl bob send $NODE_ADDR 'hello alice, this is bob'"
bob send "$NODE_ADDR" "hello alice, this is bob" || die "message not delivered"
head -c 20000000 /dev/urandom >"$TMP/photo.bin"
echo "\$ tunstack ctl bob file $NODE_ADDR photo.bin   (20 MB of random bytes)"
bob file "$NODE_ADDR" "$TMP/photo.bin" 2>&1 | tail -1 || die "file transfer failed"
want=$(sha256sum <"$TMP/photo.bin" | cut -d' ' -f1)
got=$(sha256sum <"$TMP/alice/received/photo.bin" | cut -d' ' -f1) || die "alice has no received/photo.bin"
[[ $got == "$want" ]] || die "the received file differs"
echo "alice's received/photo.bin: sha256 ${got:0:16}... matches"
echo "\$ tunstack ctl alice messages"
alice messages

section "4. tunstack ctl alice peers"
alice peers

section "tunstack ctl alice status"
alice status || echo "(status failed)"

section "stopping the nodes (SIGINT)"
stop_pid "$BOB_PID" INT
BOB_PID=""
stop_pid "$NODE_PID" INT
NODE_PID=""
echo "done: lab removed on exit. Next: README.md (make lab, a node by hand, make test)."
