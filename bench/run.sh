#!/usr/bin/env bash
# Side-by-side benchmark: tunstack's node and a smoltcp reference server on a
# TUN device, and kernel TCP over veth, with the same load generators, in
# namespaces this script creates and always deletes.
#
#   bench/run.sh            full run (BENCH_ROUNDS rounds, default 3)
#   bench/run.sh --smoke    one short round of a few workloads (< 1 minute)
#   BENCH_ONLY=proto bench/run.sh   only some workload groups (icmp,tcp,offload,loss,proto)
#
# Results: one JSON object per line in bench/results/latest.jsonl (smoke:
# bench/results/smoke.jsonl), then a table on stdout. `bench/report.py write`
# turns latest.jsonl into docs/benchmarks.md and docs/bench-loss.png.
#
# Layout (namespace prefix ts-bn<PID>-, addresses from 198.18.0.0/15 only, no
# default routes, nothing in the root namespace):
#
#   c (client, generators)      tun0 198.18.0.1/24 -- stack under test 198.18.0.2
#     |-- veth 198.19.0.1/30 <-> 198.19.0.2/30  k (kernel server, direct)
#     `-- veth 198.19.0.5/30 <-> 198.19.0.6/30  r (router: nftables drops N %)
#                                                 tun0 198.18.1.1/24 -- stack 198.18.1.2
#                                                 veth 198.19.0.9/30 <-> 198.19.0.10/30 l (kernel server, lossy path)
#
# The lossy workloads cross r's forward chain for every target alike. The
# protocol 170/171 workloads run between two tunstack nodes, 198.18.0.2 (c's
# tun0) and 198.18.1.2 (r's tun0): c forwards between tun0 and its veth, r
# between its veth and tun0, so they cross r's forward chain too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TUNSTACK=${TUNSTACK:-$ROOT/target/release/tunstack}
BENCH_BIN=${BENCH_BIN:-$ROOT/bench/smoltcp-ref/target/release}
SMOLTCP_REF=$BENCH_BIN/smoltcp-ref
TSBENCH=$BENCH_BIN/tsbench
RESULTS_DIR=$ROOT/bench/results

MODE=full
case ${1:-} in
--smoke) MODE=smoke ;;
"") ;;
*)
	echo "usage: $0 [--smoke]" >&2
	exit 2
	;;
esac

if [[ $MODE == smoke ]]; then
	ROUNDS=1
	OUT=$RESULTS_DIR/smoke.jsonl
else
	ROUNDS=${BENCH_ROUNDS:-3}
	OUT=$RESULTS_DIR/latest.jsonl
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || {
	echo "bench: BENCH_ROUNDS must be a positive integer" >&2
	exit 2
}
# Workload groups to run (comma-separated): icmp, tcp (direct-path TCP), offload
# (direct-path bulk TCP with segmentation offload), loss (goodput through the lossy
# router), proto (protocols 170 and 171).
ONLY=${BENCH_ONLY:-icmp,tcp,offload,loss,proto}
[[ $ONLY =~ ^(icmp|tcp|offload|loss|proto)(,(icmp|tcp|offload|loss|proto))*$ ]] || {
	echo "bench: BENCH_ONLY is a comma-separated list of icmp, tcp, offload, loss, proto" >&2
	exit 2
}
want() {
	[[ ,$ONLY, == *,$1,* ]]
}

PFX=ts-bn$$-
NS_C=${PFX}c
NS_K=${PFX}k
NS_R=${PFX}r
NS_L=${PFX}l
ALL_NS=("$NS_C" "$NS_K" "$NS_R" "$NS_L")
PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tunstack-bench.XXXXXX")
# Set by start_server: the PID of the server of the current target.
SERVER_PID=""
# Counts failures of the harness itself (kernel and smoltcp workloads).
HARNESS_ERRORS=0

log() {
	echo "[bench] $*" >&2
}

die() {
	echo "[bench] error: $*" >&2
	exit 1
}

stop_pid() {
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

cleanup() {
	local rc=$? pid ns
	set +e
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		stop_pid "$pid"
	done
	for ns in "${ALL_NS[@]}"; do
		[[ -e /run/netns/$ns ]] && ip netns del "$ns"
	done
	if [[ -n ${BENCH_KEEP_TMP:-} ]]; then
		log "logs kept in $TMP"
	else
		rm -rf "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nsx() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

# bg NS LOG CMD...: starts CMD in NS, records its PID in PIDS and BG_PID.
BG_PID=""
bg() {
	local ns=$1 logf=$2
	shift 2
	ip netns exec "$ns" "$@" >"$logf" 2>&1 &
	BG_PID=$!
	PIDS+=("$BG_PID")
}

# skip_or_die MESSAGE: a smoke run (part of `make test`) skips on a machine
# that cannot run it at all; a full run fails.
skip_or_die() {
	if [[ $MODE == smoke ]]; then
		echo "[bench] SKIP: $*" >&2
		exit 0
	fi
	die "$*"
}

preflight() {
	[[ ${EUID} -eq 0 ]] || skip_or_die "must run as root (namespaces, TUN devices)"
	[[ -c /dev/net/tun ]] || skip_or_die "/dev/net/tun is missing"
	local tool
	for tool in ip nft ping taskset timeout python3; do
		command -v "$tool" >/dev/null 2>&1 || die "$tool not installed (bench/deps.sh installs what is missing)"
	done
	[[ -x $SMOLTCP_REF && -x $TSBENCH ]] ||
		die "bench binaries missing: cargo build --release --manifest-path bench/smoltcp-ref/Cargo.toml"
	[[ -x $TUNSTACK ]] || die "$TUNSTACK missing: cargo build --release"
}

# ------------------------------------------------------------------ lab

ns_setup() {
	local ns=$1
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	if nsx "$ns" test -d /proc/sys/net/ipv6; then
		nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	fi
}

# veth NS1 DEV1 CIDR1 NS2 DEV2 CIDR2: a veth pair born in its namespaces, with
# offloads off so the kernel baseline moves MTU-sized segments like the TUN
# stacks do, and forwarded packets reach tun0 with finished checksums.
veth() {
	local ns1=$1 dev1=$2 cidr1=$3 ns2=$4 dev2=$5 cidr2=$6 pair
	ip -n "$ns1" link add "$dev1" type veth peer name "$dev2" netns "$ns2"
	for pair in "$ns1 $dev1 $cidr1" "$ns2 $dev2 $cidr2"; do
		# shellcheck disable=SC2086  # "ns dev cidr" splits on purpose
		set -- $pair
		ip -n "$1" addr add "$3" dev "$2"
		ip -n "$1" link set "$2" up
		if command -v ethtool >/dev/null 2>&1; then
			nsx "$1" ethtool -K "$2" tx off tso off gso off gro off >/dev/null 2>&1 || true
		fi
	done
}

tun() {
	local ns=$1 cidr=$2
	ip -n "$ns" tuntap add dev tun0 mode tun
	ip -n "$ns" addr add "$cidr" dev tun0
	ip -n "$ns" link set tun0 up
}

lab_up() {
	local ns
	for ns in "${ALL_NS[@]}"; do ns_setup "$ns"; done
	tun "$NS_C" 198.18.0.1/24
	tun "$NS_R" 198.18.1.1/24
	veth "$NS_C" bk-c 198.19.0.1/30 "$NS_K" bk-k 198.19.0.2/30
	veth "$NS_C" br-c 198.19.0.5/30 "$NS_R" br-r 198.19.0.6/30
	veth "$NS_R" bl-r 198.19.0.9/30 "$NS_L" bl-l 198.19.0.10/30
	nsx "$NS_R" sysctl -qw net.ipv4.ip_forward=1
	# c forwards too, between its tun0 and r, for node-to-node traffic
	# (protocols 170/171); r routes the answers back to c's TUN subnet.
	nsx "$NS_C" sysctl -qw net.ipv4.ip_forward=1
	ip -n "$NS_C" route add 198.18.1.0/24 via 198.19.0.6
	ip -n "$NS_R" route add 198.18.0.0/24 via 198.19.0.5
	ip -n "$NS_C" route add 198.19.0.8/30 via 198.19.0.6
	ip -n "$NS_L" route add 198.19.0.4/30 via 198.19.0.9
	# The client opens tens of thousands of short connections: a wide port
	# range, and TIME-WAIT sockets beyond a small table are dropped instead of
	# blocking ports (per-namespace settings).
	nsx "$NS_C" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_max_tw_buckets=4096
	nsx "$NS_R" nft -f - <<-'EOF'
		table ip bench {
			chain forward {
				type filter hook forward priority 0; policy accept;
			}
		}
	EOF
}

# set_loss PERCENT: drops PERCENT % of the packets r forwards, both ways.
set_loss() {
	nsx "$NS_R" nft flush chain ip bench forward
	if (($1 > 0)); then
		nsx "$NS_R" nft add rule ip bench forward numgen random mod 100 "<" "$1" counter drop
	fi
}

# ------------------------------------------------------------- servers

tunstack_serves() {
	"$TUNSTACK" node --help 2>/dev/null | grep -q -- '--serve'
}

# start_server TARGET SIDE: starts TARGET's server; SIDE is "direct" (client
# reaches it without forwarding) or "lossy" (through r). Sets SERVER_PID and
# SERVER_ADDR.
SERVER_ADDR=""
# Extra arguments for the tunstack node (the offload workloads add --offload).
NODE_EXTRA=()
start_server() {
	local target=$1 side=$2 ns cidr addr logf i
	logf=$TMP/$target-$side.log
	if [[ $target == kernel ]]; then
		if [[ $side == direct ]]; then ns=$NS_K addr=198.19.0.2; else ns=$NS_L addr=198.19.0.10; fi
		bg "$ns" "$logf" "$TSBENCH" server --bind "$addr"
	else
		if [[ $side == direct ]]; then
			ns=$NS_C cidr=198.18.0.2/24 addr=198.18.0.2
		else
			ns=$NS_R cidr=198.18.1.2/24 addr=198.18.1.2
		fi
		if [[ $target == smoltcp ]]; then
			bg "$ns" "$logf" "$SMOLTCP_REF" --tun tun0 --addr "$cidr"
		else
			local args=(node --tun tun0 --addr "$cidr" --no-console --control "$TMP/node-$side.sock"
				--data-dir "$TMP/data-$side")
			if tunstack_serves; then
				args+=(--serve echo:7 --serve discard:9 --serve chargen:19 --serve hold:5001)
			fi
			args+=("${NODE_EXTRA[@]}")
			bg "$ns" "$logf" "$TUNSTACK" "${args[@]}"
		fi
	fi
	SERVER_PID=$BG_PID
	SERVER_ADDR=$addr
	# Ready when it answers: ICMP for all (the TUN stacks), TCP for kernel.
	for ((i = 0; i < 50; i++)); do
		kill -0 "$SERVER_PID" 2>/dev/null || {
			sed 's/^/  server: /' "$logf" >&2
			die "$target server ($side) exited during startup"
		}
		if [[ $target == kernel ]]; then
			nsx "$NS_C" "$TSBENCH" probe --to "$addr:9" --timeout-ms 200 2>/dev/null && return 0
		else
			nsx "$NS_C" ping -c 1 -W 1 -q "$addr" >/dev/null 2>&1 && return 0
		fi
		sleep 0.1
	done
	sed 's/^/  server: /' "$logf" >&2
	die "$target server ($side) did not answer within 5 s"
}

stop_server() {
	stop_pid "$SERVER_PID"
	SERVER_PID=""
}

# ----------------------------------------------------------- workloads

# emit TARGET WORKLOAD ROUND JSON-OBJECT: appends one result line.
emit() {
	local body=$4
	printf '{"target":"%s","workload":"%s","round":%s,%s\n' "$1" "$2" "$3" "${body#\{}" >>"$OUT"
}

na() {
	emit "$1" "$2" "$3" "{\"status\":\"n/a\",\"reason\":\"$4\"}"
}

# run_gen TARGET WORKLOAD ROUND LIMIT_S CMD...: runs a generator in the client
# namespace under a hard time limit and records its JSON or its failure.
run_gen() {
	local target=$1 workload=$2 round=$3 limit=$4 out err
	shift 4
	err=$TMP/gen.err
	if out=$(timeout --kill-after=5 "$limit" ip netns exec "$NS_C" "$@" 2>"$err"); then
		emit "$target" "$workload" "$round" "$out"
		log "  $target $workload: $(printf '%s' "$out" | cut -c1-110)"
	else
		local why
		# Only characters that need no JSON escaping.
		why=$(tr -c '[:alnum:] .,:/()_=+-' ' ' <"$err" | cut -c1-200)
		[[ -n $why ]] || why="no output (time limit ${limit}s?)"
		emit "$target" "$workload" "$round" "{\"status\":\"error\",\"reason\":\"$why\"}"
		log "  $target $workload: ERROR $why"
		[[ $target == tunstack ]] || HARNESS_ERRORS=$((HARNESS_ERRORS + 1))
	fi
}

icmp() {
	local target=$1 round=$2 addr=$3 count=$4
	# shellcheck disable=SC2016  # the inner script expands its own arguments
	run_gen "$target" icmp_rtt "$round" 60 \
		bash -c 'ping -c "$1" -i 0.001 -W 1 "$2" | "$3" pingstat' _ "$count" "$addr" "$TSBENCH"
}

pin_server() {
	taskset -a -p -c "$1" "$SERVER_PID" >/dev/null
}

# tcp_workloads TARGET ROUND: the direct-path TCP workloads.
tcp_workloads() {
	local t=$1 r=$2 a=$SERVER_ADDR
	if [[ $MODE == smoke ]]; then
		run_gen "$t" bulk_to_stack "$r" 15 "$TSBENCH" send --to "$a:9" --bytes 20000000 --max-secs 8
		run_gen "$t" bulk_from_stack "$r" 15 "$TSBENCH" recv --to "$a:19" --bytes 20000000 --max-secs 8
		run_gen "$t" rr_unpinned "$r" 15 "$TSBENCH" rr --to "$a:7" --count 1000 --max-secs 5
		return
	fi
	run_gen "$t" bulk_to_stack "$r" 50 "$TSBENCH" send --to "$a:9" --bytes 1000000000 --max-secs 40
	run_gen "$t" bulk_from_stack "$r" 50 "$TSBENCH" recv --to "$a:19" --bytes 1000000000 --max-secs 40
	pin_server 0
	run_gen "$t" rr_pinned "$r" 25 taskset -c 0 "$TSBENCH" rr --to "$a:7" --count 10000 --max-secs 15
	pin_server "0-$(($(nproc) - 1))"
	run_gen "$t" rr_unpinned "$r" 25 "$TSBENCH" rr --to "$a:7" --count 10000 --max-secs 15
	run_gen "$t" conn_rate "$r" 15 "$TSBENCH" connrate --to "$a:9" --secs 3
	run_gen "$t" conc_10k "$r" 90 "$TSBENCH" hold --to "$a:7" --count 10000 --rss-pid "$SERVER_PID" --max-secs 60
}

# veth_offloads on|off: TSO/GSO/GRO and checksum offload of the direct kernel path.
veth_offloads() {
	command -v ethtool >/dev/null 2>&1 || return 0
	nsx "$NS_C" ethtool -K bk-c tx "$1" tso "$1" gso "$1" gro "$1" >/dev/null 2>&1 || true
	nsx "$NS_K" ethtool -K bk-k tx "$1" tso "$1" gso "$1" gro "$1" >/dev/null 2>&1 || true
}

# offload_workloads TARGET ROUND: bulk TCP with segmentation offload at the stack's
# device, so one system call (or one skb) carries up to 64 KiB: tunstack with --offload
# (IFF_VNET_HDR + TSO4 on its TUN), the kernel with TSO/GSO/GRO back on over veth.
offload_workloads() {
	local t=$1 r=$2 bytes=1000000000 cap=40 limit=50 w
	[[ $MODE == smoke ]] && bytes=20000000 cap=8 limit=15
	if [[ $t == smoltcp ]]; then
		for w in bulk_to_stack_offload bulk_from_stack_offload; do
			na "$t" "$w" "$r" "smoltcp-ref reads plain TUN packets (no virtio header, no TSO)"
		done
		return
	fi
	[[ $t == kernel ]] && veth_offloads on
	[[ $t == tunstack ]] && NODE_EXTRA=(--offload)
	start_server "$t" direct
	local a=$SERVER_ADDR reason=""
	[[ $t == tunstack ]] && reason=$(tcp_probe)
	if [[ -n $reason ]]; then
		na "$t" bulk_to_stack_offload "$r" "$reason"
		na "$t" bulk_from_stack_offload "$r" "$reason"
	else
		run_gen "$t" bulk_to_stack_offload "$r" "$limit" "$TSBENCH" send --to "$a:9" --bytes "$bytes" --max-secs "$cap"
		run_gen "$t" bulk_from_stack_offload "$r" "$limit" "$TSBENCH" recv --to "$a:19" --bytes "$bytes" --max-secs "$cap"
	fi
	stop_server
	NODE_EXTRA=()
	[[ $t == kernel ]] && veth_offloads off
	return 0
}

LOSS_LEVELS=(0 1 5)
loss_workloads() {
	local t=$1 r=$2 a=$SERVER_ADDR loss bytes=300000000 cap=10
	[[ $MODE == smoke ]] && LOSS_LEVELS=(1) bytes=10000000 cap=4
	for loss in "${LOSS_LEVELS[@]}"; do
		set_loss "$loss"
		run_gen "$t" "loss_${loss}" "$r" $((cap + 10)) "$TSBENCH" send --to "$a:9" --bytes "$bytes" --max-secs "$cap"
	done
	set_loss 0
}

# proto_gen WORKLOAD ROUND LIMIT_S FIELD UNIT CTL-COMMAND...: runs a bench
# command (msgbench, filebench) on the node at 198.18.0.2 through `tunstack
# ctl`; bench/ctljson.py makes FIELD of its JSON the row's value.
proto_gen() {
	local w=$1 r=$2 limit=$3 field=$4 unit=$5
	shift 5
	run_gen tunstack "$w" "$r" "$limit" python3 "$ROOT/bench/ctljson.py" --value "$field" --unit "$unit" -- \
		"$TUNSTACK" ctl --control "$TMP/node-direct.sock" "$@"
}

# proto_workloads TARGET ROUND: protocols 170 and 171 between two tunstack
# nodes, 198.18.0.2 (c) -> 198.18.1.2 (r), through r's forward chain.
proto_workloads() {
	local t=$1 r=$2 w
	if [[ $t != tunstack ]]; then
		for w in p170_msg_rate p170_msg_latency p171_file_0 p171_file_5 p171_tcp_0 p171_tcp_5; do
			na "$t" "$w" "$r" "tunstack-only protocol"
		done
		return
	fi
	local peer=198.18.1.2 pid_a pid_b
	local msgs=500000 lat_msgs=3000 file=500M file5=200M
	if [[ $MODE == smoke ]]; then
		msgs=20000 lat_msgs=200 file=5M file5=""
	fi
	start_server tunstack direct
	pid_a=$SERVER_PID
	start_server tunstack lossy
	pid_b=$SERVER_PID
	set_loss 0
	proto_gen p170_msg_rate "$r" 40 value msg/s msgbench "$peer" --count "$msgs" --size 64 --window 1024 --timeout 30 --json
	proto_gen p170_msg_latency "$r" 30 latency_median_us µs msgbench "$peer" --count "$lat_msgs" --size 64 --window 1 --timeout 20 --json
	proto_gen p171_file_0 "$r" 60 value Mbit/s filebench "$peer" --size "$file" --timeout 45 --json
	rm -f "$TMP"/data-lossy/received/filebench-*
	# Our TCP on the same node-to-node path, into the peer node's discard service.
	proto_gen p171_tcp_0 "$r" 60 value Mbit/s tcpbench "$peer" --size "$file" --timeout 45 --json
	if [[ -n $file5 ]]; then
		set_loss 5
		proto_gen p171_file_5 "$r" 60 value Mbit/s filebench "$peer" --size "$file5" --timeout 45 --json
		proto_gen p171_tcp_5 "$r" 60 value Mbit/s tcpbench "$peer" --size "$file5" --timeout 45 --json
		set_loss 0
		rm -f "$TMP"/data-lossy/received/filebench-*
	else
		na "$t" p171_file_5 "$r" "not in the smoke run"
		na "$t" p171_tcp_5 "$r" "not in the smoke run"
	fi
	stop_pid "$pid_b"
	stop_pid "$pid_a"
	SERVER_PID=""
}

# tcp_probe: empty when the stack at SERVER_ADDR accepts TCP, else a reason.
tcp_probe() {
	if ! tunstack_serves; then
		echo "TCP not merged yet: tunstack node has no --serve"
	elif ! nsx "$NS_C" "$TSBENCH" probe --to "$SERVER_ADDR:9" --timeout-ms 1500 2>/dev/null; then
		echo "TCP connect to tunstack port 9 failed or timed out"
	fi
}

run_target() {
	local t=$1 r=$2 w reason
	log "round $r: $t"
	if want icmp || want tcp; then
		start_server "$t" direct
		if want icmp; then
			if [[ $MODE == smoke ]]; then
				icmp "$t" "$r" "$SERVER_ADDR" 200
			else
				icmp "$t" "$r" "$SERVER_ADDR" 1000
			fi
		fi
		if want tcp; then
			reason=""
			[[ $t == tunstack ]] && reason=$(tcp_probe)
			if [[ -n $reason ]]; then
				for w in bulk_to_stack bulk_from_stack rr_pinned rr_unpinned conn_rate conc_10k; do
					[[ $MODE == smoke && $w =~ ^(rr_pinned|conn_rate|conc_10k)$ ]] && continue
					na "$t" "$w" "$r" "$reason"
				done
			else
				tcp_workloads "$t" "$r"
			fi
		fi
		stop_server
	fi

	if want offload; then
		offload_workloads "$t" "$r"
	fi

	if want loss; then
		start_server "$t" lossy
		reason=""
		[[ $t == tunstack ]] && reason=$(tcp_probe)
		if [[ -n $reason ]]; then
			for w in "${LOSS_LEVELS[@]}"; do
				[[ $MODE == smoke && $w != 1 ]] && continue
				na "$t" "loss_$w" "$r" "$reason"
			done
		else
			loss_workloads "$t" "$r"
		fi
		stop_server
	fi
	if want proto; then
		proto_workloads "$t" "$r"
	fi
}

main() {
	preflight
	mkdir -p "$RESULTS_DIR"
	: >"$OUT"
	local started=$SECONDS r t
	printf '{"meta":{"mode":"%s","rounds":%s,"date":"%s","kernel":"%s","nproc":%s,"loadavg":"%s","tunstack_rev":"%s"}}\n' \
		"$MODE" "$ROUNDS" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -r)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
		"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" >>"$OUT"
	lab_up
	log "lab up (prefix $PFX), $ROUNDS round(s), mode $MODE"
	for ((r = 1; r <= ROUNDS; r++)); do
		for t in tunstack smoltcp kernel; do
			run_target "$t" "$r"
		done
	done
	printf '{"meta_end":{"seconds":%s,"harness_errors":%s}}\n' "$((SECONDS - started))" "$HARNESS_ERRORS" >>"$OUT"
	log "done in $((SECONDS - started)) s; results in $OUT"
	"$(bench_python)" "$ROOT/bench/report.py" table "$OUT"
	if ((HARNESS_ERRORS > 0)); then
		log "$HARNESS_ERRORS kernel/smoltcp workload(s) failed: the harness is broken"
		exit 1
	fi
}

# The Python that has matplotlib (Debian's python3-matplotlib lives in
# /usr/bin/python3, which may not be the first python3 on PATH).
bench_python() {
	local py
	for py in /usr/bin/python3 python3; do
		if "$py" -c 'import matplotlib' >/dev/null 2>&1; then
			echo "$py"
			return
		fi
	done
	echo python3
}

main
