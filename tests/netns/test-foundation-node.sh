#!/usr/bin/env bash
# Foundation: the node's own features against the kernel in a `pair` lab.
#
# - `ctl ping` from the node to the kernel, with RTTs;
# - `--pcap` captures both directions, readable by tcpdump;
# - SIGTERM stops the node with exit code 0 and removes its control socket;
# - errors a user meets: device busy, not root (as user nobody);
# - `--impair` drops packets both ways and `ctl status --json` counts it;
# - `--msg-retries`, `--msg-backoff`, `--msg-rto-initial` decide when a message to nobody fails;
# - the interactive console on a real terminal: help, status, ping, quit;
# - then in a `line` lab, a console talking to a second node: peers, discover, send, file,
#   transfers, messages; and `ctl messages --follow --json` streaming a message sent after it
#   started, until it is stopped by PID.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd ping tcpdump python3
require_tunstack

lab_up pair

# ------------------------------------------------ node-side ping and pcap
PCAP=$TS_TMP/node.pcap
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name fnode --pcap "$PCAP"
log "node pings the kernel"
ctl ping 198.18.0.1 -c 3 -i 0.2 >"$TS_TMP/ctlping" || {
	cat "$TS_TMP/ctlping" >&2
	fail "ctl ping failed"
}
grep -q "3 packets transmitted, 3 received" "$TS_TMP/ctlping" || fail "ctl ping: expected 3 replies: $(cat "$TS_TMP/ctlping")"
grep -Eq "time=[0-9.]+ ms" "$TS_TMP/ctlping" || fail "ctl ping printed no RTT"
ip netns exec "$NS_A" ping -n -c 2 -i 0.2 -W 2 198.18.0.2 >/dev/null || fail "kernel ping failed"
ctl status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
icmp = s["ip"]["icmp"]
assert icmp["echo_requests_out"] == 3 and icmp["echo_replies_in"] == 3, icmp
assert icmp["echo_requests_in"] == 2 and icmp["echo_replies_out"] == 2, icmp
' || fail "ICMP counters are off"

log "device busy: a second node on the same tun0"
if ip netns exec "$NS_A" "$TUNSTACK" node --no-console --tun tun0 --addr 198.18.0.3/24 \
	--control "$TS_TMP/busy.sock" >"$TS_TMP/busy.out" 2>&1; then
	fail "a second node on a busy device should fail"
fi
grep -qi "busy" "$TS_TMP/busy.out" || fail "busy error unclear: $(cat "$TS_TMP/busy.out")"
grep -q "hint:" "$TS_TMP/busy.out" || fail "busy error has no hint"

log "SIGTERM stops the node cleanly"
kill -TERM "$NODE_PID"
rc=0
wait "$NODE_PID" || rc=$?
[[ $rc -eq 0 ]] || fail "node exited with $rc after SIGTERM"
[[ ! -e $NODE_CTL ]] || fail "control socket $NODE_CTL left behind"

log "the capture holds both directions"
tcpdump -nr "$PCAP" icmp >"$TS_TMP/pcap.txt" 2>/dev/null || fail "tcpdump cannot read $PCAP"
grep -q "198.18.0.2 > 198.18.0.1: ICMP echo request" "$TS_TMP/pcap.txt" || fail "capture lacks the node's requests"
grep -q "198.18.0.1 > 198.18.0.2: ICMP echo reply" "$TS_TMP/pcap.txt" || fail "capture lacks the kernel's replies"
grep -q "198.18.0.2 > 198.18.0.1: ICMP echo reply" "$TS_TMP/pcap.txt" || fail "capture lacks the node's replies"
[[ $(wc -l <"$TS_TMP/pcap.txt") -eq 10 ]] || fail "expected 10 ICMP packets in the capture, got $(wc -l <"$TS_TMP/pcap.txt")"

log "not root: a readable error"
if command -v setpriv >/dev/null 2>&1; then
	if ip netns exec "$NS_A" setpriv --reuid=65534 --regid=65534 --clear-groups \
		"$TUNSTACK" node --no-console --tun tsnr0 --addr 198.18.0.3/24 \
		--control "$TS_TMP/nr.sock" >"$TS_TMP/nr.out" 2>&1; then
		fail "an unprivileged node should fail"
	fi
	grep -q "root" "$TS_TMP/nr.out" || fail "not-root error unclear: $(cat "$TS_TMP/nr.out")"
else
	log "setpriv missing: not-root check skipped"
fi

# ----------------------------------------------------------- impairment
log "--impair loss=30% both ways is counted"
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name fimpair --impair "loss=30%,delay=5ms,seed=11"
ip netns exec "$NS_A" ping -n -c 100 -i 0.01 -W 1 198.18.0.2 >"$TS_TMP/imping" 2>&1 || true
received=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$TS_TMP/imping")
log "with 30% loss each way: $received/100 replies"
((received > 25 && received < 75)) || fail "expected about 49 replies with 30% loss each way, got $received"
grep -Eq "time=[5-9]\.|time=1[0-9]\." "$TS_TMP/imping" || fail "the 5 ms delay each way does not show in the RTT"
ctl status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
i, o = s["impair"]["in"]["counters"], s["impair"]["out"]["counters"]
assert i["packets"] == 100 and 15 < i["dropped"] < 45, i
assert o["dropped"] > 0 and o["delayed"] > 0, o
' || fail "impairment counters are off: $(ctl status --json)"
interrupt "$NODE_PID"

# ------------------------------------------------- message retry options
log "--msg-retries/--msg-backoff/--msg-rto-initial shape how long a send to nobody takes"
if "$TUNSTACK" node --no-console --tun tun0 --addr 198.18.0.2/24 --msg-backoff 0.5 >"$TS_TMP/badopt.out" 2>&1; then
	fail "--msg-backoff 0.5 was accepted"
fi
grep -q "backoff factor 0.5 is out of range" "$TS_TMP/badopt.out" || fail "bad --msg-backoff error unclear: $(cat "$TS_TMP/badopt.out")"
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name fretry --msg-retries 2 --msg-backoff 2 --msg-rto-initial 100ms
t0=$(date +%s.%N)
# Nobody has 198.18.0.77: the greeting goes unanswered, 1 + 2 retries, 100 + 200 + 400 ms apart.
if ctl send 198.18.0.77 "anyone there?" >"$TS_TMP/retry.out" 2>&1; then
	fail "a message to nobody was delivered"
fi
t1=$(date +%s.%N)
grep -q "after 3 tries" "$TS_TMP/retry.out" || fail "expected a failure after 3 tries: $(cat "$TS_TMP/retry.out")"
took=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
log "failed in $took s: $(cat "$TS_TMP/retry.out")"
python3 -c "import sys; sys.exit(0 if 0.6 <= $took < 2.5 else 1)" || fail "3 tries 100/200/400 ms apart took $took s"
ctl status --json | python3 -c '
import json, sys
m = json.load(sys.stdin)["msg"]
assert m["hellos_out"] >= 3 and m["messages_failed"] == 1, m
' || fail "msg counters are off: $(ctl status --json)"
interrupt "$NODE_PID"

# --------------------------------------------------------------- console
log "the console on a terminal"
python3 "$(dirname "${BASH_SOURCE[0]}")/console.py" "$NS_A" "$TUNSTACK" \
	--tun tun0 --addr 198.18.0.2/24 --name fconsole --control "$TS_TMP/console.sock" --data-dir "$TS_TMP/cdata" \
	>"$TS_TMP/console.out" 2>&1 || {
	cat "$TS_TMP/console.out" >&2
	fail "console session failed"
}
[[ ! -e $TS_TMP/console.sock ]] || fail "console node left its socket"

log "ctl --help lists every verb of the console"
"$TUNSTACK" ctl --help >"$TS_TMP/ctlhelp"
for verb in help status ping sockets send file transfers messages peers discover relay; do
	grep -Eq "^  $verb( |$)" "$TS_TMP/ctlhelp" || fail "ctl --help does not list '$verb'"
done

# ------------------------------------------- the protocol verbs at a console, between two nodes
log "a console between two nodes: peers, discover, send, file, transfers, messages"
lab_up line
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name fpeer --data-dir "$TS_TMP/pdata"
PEER_CTL=$NODE_CTL
head -c 300000 /dev/urandom >"$TS_TMP/small.bin"
head -c 30000000 /dev/urandom >"$TS_TMP/big.bin"
# The rate limit keeps the big transfer going long enough for `transfers` to see it.
python3 "$(dirname "${BASH_SOURCE[0]}")/console.py" --peer 198.18.2.2 --peer-ctl "$PEER_CTL" \
	--small "$TS_TMP/small.bin" --big "$TS_TMP/big.bin" "$NS_A" "$TUNSTACK" \
	--tun tun0 --addr 198.18.1.2/24 --name fconsole2 --control "$TS_TMP/console2.sock" \
	--data-dir "$TS_TMP/c2data" --impair-out rate=80mbit \
	>"$TS_TMP/console2.out" 2>&1 || {
	cat "$TS_TMP/console2.out" >&2
	fail "two-node console session failed"
}
grep '^console:' "$TS_TMP/console2.out" | sed 's/^/  /'
"$TUNSTACK" ctl --control "$PEER_CTL" messages >"$TS_TMP/peer-inbox"
grep -q "(fconsole2) \[lab\]: hello from the console" "$TS_TMP/peer-inbox" || fail "the peer did not get the console's message: $(cat "$TS_TMP/peer-inbox")"
cmp -s "$TS_TMP/small.bin" "$TS_TMP/pdata/received/small.bin" || fail "the file sent from the console differs"

log "ctl messages --follow --json streams a message sent after it started"
start_node "$NS_A" --tun tun0 --addr 198.18.1.2/24 --name ffollow
A_CTL=$NODE_CTL
out=$("$TUNSTACK" ctl --control "$PEER_CTL" send 198.18.1.2 "follow: before" 2>&1) || fail "send before failed: $out"
"$TUNSTACK" ctl --control "$A_CTL" messages --follow --json >"$TS_TMP/follow.out" 2>"$TS_TMP/follow.err" &
FOLLOW=$!
TS_PIDS+=("$FOLLOW")
# The backlog is printed first: once it is there, the follower is connected and waiting.
wait_for "grep -q 'follow: before' '$TS_TMP/follow.out'" 10 || fail "the follower did not print the backlog"
out=$("$TUNSTACK" ctl --control "$PEER_CTL" send 198.18.1.2 "follow: after" 2>&1) || fail "send after failed: $out"
wait_for "grep -q 'follow: after' '$TS_TMP/follow.out'" 10 || fail "the follower did not print the new message: $(cat "$TS_TMP/follow.out")"
kill -0 "$FOLLOW" 2>/dev/null || fail "the follower exited by itself"
stop "$FOLLOW"
! kill -0 "$FOLLOW" 2>/dev/null || fail "the follower survived being stopped"
python3 - "$TS_TMP/follow.out" <<'PY' || fail "follower output is not the two messages as JSON lines: $(cat "$TS_TMP/follow.out")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert [l["content"] for l in lines] == ["follow: before", "follow: after"], lines
for l in lines:
    assert l["from"] == "198.18.2.2" and l["sender"] == "fpeer" and not l["is_file"], l
    assert l["timestamp"].endswith("Z") and l["channel_id"] == "general", l
assert lines[1]["index"] == lines[0]["index"] + 1, lines
PY
# The node outlives its follower's disconnect.
ctl status >/dev/null || fail "the node stopped answering after the follower went away"
interrupt "$NODE_PID"

pass
