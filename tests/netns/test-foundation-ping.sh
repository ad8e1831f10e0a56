#!/usr/bin/env bash
# Foundation: the node answers ICMP echo through a real kernel.
#
# pair: 200 fast pings; payload sizes 0..MTU-28 with patterns, checked by
#       ping itself; a 4000-byte echo that the kernel fragments; a bounded
#       flood of malformed packets after which the node still answers and its
#       drop counters account for every class sent, by reason and in number.
# line: the kernel of ts-b pings the node behind ts-a's kernel (forwarding
#       through both), and tcpdump on ts-a's tun0 sees request and reply.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd ping tcpdump python3
require_tunstack

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
ctl status --json >"$TS_TMP/status-before.json" || fail "ctl status --json failed"
ip netns exec "$NS_A" python3 "$TS_ROOT/tests/netns/garbage.py" --dev tun0 \
	--src 198.18.0.1 --dst 198.18.0.2 --count "$GARBAGE_COUNT" --seed 170 \
	>"$TS_TMP/garbage.json" || fail "garbage.py failed"
log "sent: $(cat "$TS_TMP/garbage.json")"
kill -0 "$PAIR_NODE" 2>/dev/null || fail "node died during the garbage flood"

# The node may still be draining the device queue: wait until its packet count settles.
prev=-1
for _ in $(seq 50); do
	ctl status --json >"$TS_TMP/status.json" || fail "ctl status --json failed"
	seen=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ip"]["packets_in"])' "$TS_TMP/status.json")
	[[ $seen == "$prev" ]] && break
	prev=$seen
	sleep 0.2
done
ping_ok "$NS_A" "$TS_TMP/ping-after" -c 5 -i 0.1 -W 2 -w 10 198.18.0.2

# Each class garbage.py sent must show up under its drop reason, in number: the counters
# moved by what was sent, less at most a small margin the TUN queue may have lost.
python3 - "$TS_TMP/garbage.json" "$TS_TMP/status-before.json" "$TS_TMP/status.json" <<'EOF' ||
import json, sys
garbage, before, after = (json.load(open(p)) for p in sys.argv[1:4])
sent = garbage["sent"]
total = garbage["total"]
d0, d1 = before["ip"]["drops"], after["ip"]["drops"]
delta = {r: d1[r] - d0.get(r, 0) for r in d1}
print("ip.drops moved by:", json.dumps({r: n for r, n in delta.items() if n}, sort_keys=True))
# Where each class must land. The parser checks the version, then the header length, then
# the total length, then the checksum; an IHL longer than the packet makes it a short packet.
expect = {
    "too_short": sent["too_short"] + sent["bad_ihl_large"],
    "bad_version": sent["bad_version"],
    "bad_ihl": sent["bad_ihl_small"],
    "bad_total_length": sent["total_length_long"] + sent["total_length_short"],
    "bad_checksum": sent["bad_checksum"],
    "ttl_expired": sent["ttl_zero"],
    "unknown_protocol": sent["unknown_protocol"],
}
# Random bytes fail one of the header checks; which one is up to chance.
random_into = {"too_short", "bad_version", "bad_ihl", "bad_total_length", "bad_checksum"}
margin = max(10, total // 100)
errors = []
for reason, want in expect.items():
    got = delta.get(reason, 0)
    high = want + (sent["random_bytes"] if reason in random_into else 0)
    if not want - margin <= got <= high:
        errors.append(f"{reason}: {got}, expected {want}..{high} (margin {margin})")
counted = sum(delta.get(r, 0) for r in expect)
if not total - margin <= counted <= total:
    errors.append(f"{counted} drops counted for {total} packets sent (margin {margin})")
packets_in = after["ip"]["packets_in"] - before["ip"]["packets_in"]
if not total - margin <= packets_in <= total + margin:
    errors.append(f"packets_in moved by {packets_in} for {total} packets sent")
if errors:
    sys.exit("\n".join(errors))
print(f"all {counted} of {total} garbage packets counted under their reasons")
EOF
	fail "drop counters do not match what the flood sent"

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
