#!/usr/bin/env bash
# Foundation: the node answers ICMP echo through a real kernel.
#
# pair: 200 fast pings; payload sizes 0..MTU-28 with patterns, checked by
#       ping itself; a 4000-byte echo that the kernel fragments; a bounded
#       flood of malformed packets after which the node still answers and its
#       drop counters name the reasons.
# line: the kernel of ts-b pings the node behind ts-a's kernel (forwarding
#       through both), and tcpdump on ts-a's tun0 sees request and reply.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd ping tcpdump python3
require_tunstack

# Drop reasons the garbage flood must have produced (keys of ip.drops in
# `tunstack ctl status --json`).
REQUIRED_DROPS=(bad_checksum bad_version bad_ihl bad_total_length too_short ttl_expired)
GARBAGE_COUNT=${GARBAGE_COUNT:-10000}

# ping_ok NS OUT ARGS...: runs ping, keeps its output in OUT, and fails the
# test unless every request got exactly one intact reply.
ping_ok() {
	local ns=$1 out=$2 count=""
	shift 2
	local prev="" a
	for a in "$@"; do
		[[ $prev == -c ]] && count=$a
		prev=$a
	done
	if ! ip netns exec "$ns" ping -n "$@" >"$out" 2>&1; then
		cat "$out" >&2
		fail "ping $* failed"
	fi
	# iputils reports damaged replies inline instead of failing.
	if grep -Eq 'wrong data|BAD CHECKSUM|DUP!|truncated' "$out"; then
		grep -E 'wrong data|BAD CHECKSUM|DUP!|truncated' "$out" | head -5 >&2
		fail "ping $*: replies were damaged or duplicated"
	fi
	grep -q " ${count} received" "$out" || {
		tail -3 "$out" >&2
		fail "ping $*: expected $count replies"
	}
}

# ---------------------------------------------------------------- pair
lab_up pair
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name fping-pair
PAIR_NODE=$NODE_PID

log "200 pings at 10 ms intervals"
ping_ok "$NS_A" "$TS_TMP/ping200" -c 200 -i 0.01 -W 2 -w 30 198.18.0.2

# MTU 1500 - 20 (IP) - 8 (ICMP) = 1472 is the largest unfragmented payload.
log "payload sizes and patterns"
patterns=(00 ff a5 0123456789abcdef deadbeef 5a)
i=0
for size in 0 1 7 8 56 100 576 1000 1400 1471 1472; do
	pat=${patterns[i % ${#patterns[@]}]}
	i=$((i + 1))
	ping_ok "$NS_A" "$TS_TMP/ping-s$size" -s "$size" -p "$pat" -M "do" -c 2 -i 0.2 -W 2 -w 10 198.18.0.2
done

log "4000-byte echo, fragmented by the kernel"
ping_ok "$NS_A" "$TS_TMP/ping4000" -s 4000 -M dont -c 3 -i 0.3 -W 3 -w 20 198.18.0.2

log "garbage flood: $GARBAGE_COUNT malformed packets"
ip netns exec "$NS_A" python3 "$TS_ROOT/tests/netns/garbage.py" --dev tun0 \
	--src 198.18.0.1 --dst 198.18.0.2 --count "$GARBAGE_COUNT" --seed 170 \
	>"$TS_TMP/garbage.json" || fail "garbage.py failed"
log "sent: $(cat "$TS_TMP/garbage.json")"
kill -0 "$PAIR_NODE" 2>/dev/null || fail "node died during the garbage flood"

ping_ok "$NS_A" "$TS_TMP/ping-after" -c 5 -i 0.1 -W 2 -w 10 198.18.0.2

ctl status --json >"$TS_TMP/status.json" || fail "ctl status --json failed"
python3 - "$TS_TMP/status.json" "${REQUIRED_DROPS[@]}" <<'EOF' || fail "drop counters missing or zero"
import json, sys
path, required = sys.argv[1], sys.argv[2:]
with open(path) as f:
    status = json.load(f)
drops = status.get("ip", {}).get("drops")
if not isinstance(drops, dict):
    sys.exit(f"no ip.drops object in status: {json.dumps(status)[:400]}")
print("ip.drops:", json.dumps(drops, sort_keys=True))
bad = [r for r in required
       if not isinstance(drops.get(r), int) or isinstance(drops.get(r), bool) or drops[r] <= 0]
if bad:
    sys.exit("drop counters not > 0: " + ", ".join(bad))
EOF

interrupt "$PAIR_NODE"
kill -0 "$PAIR_NODE" 2>/dev/null && fail "node ignored SIGINT"

# ---------------------------------------------------------------- line
lab_up line
start_node "$NS_A" --tun tun0 --addr 198.18.1.2/24 --name fping-line

start_tcpdump "$NS_A" "$TS_TMP/tcpdump-line" -ni tun0 icmp
log "ping from ts-b's kernel to the node behind ts-a's kernel"
ping_ok "$NS_B" "$TS_TMP/ping-line" -c 5 -i 0.2 -W 2 -w 15 198.18.1.2
sleep 0.5
interrupt "$TCPDUMP_PID"
grep -q 'ICMP echo request' "$TS_TMP/tcpdump-line" || fail "tcpdump on tun0 saw no echo request"
grep -q 'ICMP echo reply' "$TS_TMP/tcpdump-line" || fail "tcpdump on tun0 saw no echo reply"
requests=$(grep -c 'ICMP echo request' "$TS_TMP/tcpdump-line" || true)
replies=$(grep -c 'ICMP echo reply' "$TS_TMP/tcpdump-line" || true)
log "tun0 in ts-a saw $requests requests and $replies replies"
((requests >= 5 && replies >= 5)) || fail "expected 5 requests and 5 replies on tun0"

pass
