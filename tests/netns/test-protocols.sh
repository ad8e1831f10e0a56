#!/usr/bin/env bash
# Protocols 170 and 171 between two nodes through two kernels, with nftables dropping 5 % of the
# forwarded packets in ts-a (the `line` lab):
# - 1,000 messages each way, delivered exactly once and in order;
# - a 50 MB file, byte-exact by SHA-256;
# - the receiving node killed (SIGKILL) in the middle of a transfer and restarted: the transfer
#   resumes, and no partial file ever appears under the final name;
# - a file offered as `../../etc/x` lands inside received/;
# then `star 3`: nodes 2 and 3 are given only node 1 (--peer), and learn each other through
# peer exchange in node 1's HELLOs.
# Functions below are called through wait_for's eval, which shellcheck cannot see.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd python3 nft
require_tunstack

MSGS=${PROTO_TEST_MESSAGES:-1000}
FILE_MB=${PROTO_TEST_FILE_MB:-50}

lab_up line
ip netns exec "$NS_A" nft -f - <<'NFT'
table inet tsloss {
	counter dropped { }
	chain forward {
		type filter hook forward priority 0; policy accept;
		numgen random mod 100 < 5 counter name dropped drop
	}
}
NFT

DATA_B=$TS_TMP/bdata
start_node "$NS_A" --tun tun0 --addr 198.18.1.2/24 --name pa --control "$TS_TMP/a.sock"
PID_A=$NODE_PID
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name pb --control "$TS_TMP/b.sock" \
	--data-dir "$DATA_B" --peer 198.18.1.2
PID_B=$NODE_PID
cta() { "$TUNSTACK" ctl --control "$TS_TMP/a.sock" "$@"; }
ctb() { "$TUNSTACK" ctl --control "$TS_TMP/b.sock" "$@"; }

wait_for "cta peers --json | grep -q 198.18.2.2" 15 || fail "A never heard of B"

log "$MSGS messages each way through 5% loss"
t0=$SECONDS
for ((i = 0; i < MSGS; i++)); do
	cta send 198.18.2.2 "a-to-b $i" --no-wait >/dev/null
	ctb send 198.18.1.2 "b-to-a $i" --no-wait >/dev/null
done
# check_inbox CTL PREFIX: the inbox holds PREFIX 0..MSGS-1, each once, in order.
check_inbox() {
	"$TUNSTACK" ctl --control "$1" messages --json | python3 -c "
import json, sys
want = ['$2 %d' % i for i in range($MSGS)]
got = [json.loads(l)['content'] for l in sys.stdin if l.strip()]
got = [g for g in got if g.startswith('$2 ')]
sys.exit(0 if got == want else 1)"
}
wait_for "check_inbox '$TS_TMP/b.sock' a-to-b" 120 || fail "B's inbox is not exactly a-to-b 0..$((MSGS - 1)) in order"
wait_for "check_inbox '$TS_TMP/a.sock' b-to-a" 120 || fail "A's inbox is not exactly b-to-a 0..$((MSGS - 1)) in order"
delivered=$(cta status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["msg"]["messages_delivered"])')
((delivered == MSGS)) || fail "A saw $delivered of $MSGS messages acknowledged"
retrans=$(cta status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["msg"]["retransmits"])')
log "messages: exactly once and in order both ways in $((SECONDS - t0)) s; A retransmitted $retrans segments"

log "a ${FILE_MB} MB file through 5% loss"
head -c $((FILE_MB * 1000000)) /dev/urandom >"$TS_TMP/big.bin"
want=$(sha256sum "$TS_TMP/big.bin" | cut -d' ' -f1)
t0=$(date +%s.%N)
cta file 198.18.2.2 "$TS_TMP/big.bin" >"$TS_TMP/file.out" 2>&1 || fail "file send failed: $(cat "$TS_TMP/file.out")"
t1=$(date +%s.%N)
got=$(sha256sum "$DATA_B/received/big.bin" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "received file differs"
log "file: byte-exact, $(python3 -c "print(f'{$FILE_MB*8/($t1-$t0):.1f} Mbit/s')") through 5% loss"
ctb messages | grep -q "\[file\]: file big.bin" || fail "the received file is not in B's inbox"

log "a file named ../../etc/x stays inside received/"
echo "not for /etc" >"$TS_TMP/x"
cta file 198.18.2.2 "$TS_TMP/x" --as "../../etc/x" >/dev/null || fail "send as ../../etc/x failed"
[[ ! -e $DATA_B/../../etc/x ]] || fail "a file escaped the received directory"
found=$(find "$DATA_B/received" -maxdepth 1 -type f -name '*etc*x*' -print -quit)
[[ -n $found && $(cat "$found") == "not for /etc" ]] || fail "the sanitised file is missing: $(ls "$DATA_B/received")"
log "../../etc/x arrived as received/$(basename "$found")"

log "receiver killed (SIGKILL) in the middle of a transfer, then restarted"
# 30 MB take a fifth of a second at full speed, less than it takes to notice the transfer
# running: ts-a's router holds protocol 171 to 10 MB/s, so the kill lands mid-transfer.
ip netns exec "$NS_A" nft add chain inet tsloss slow '{ type filter hook forward priority 1; policy accept; }'
ip netns exec "$NS_A" nft add rule inet tsloss slow meta l4proto 171 limit rate over 10 mbytes/second drop
head -c 30000000 /dev/urandom >"$TS_TMP/resume.bin"
want=$(sha256sum "$TS_TMP/resume.bin" | cut -d' ' -f1)
cta file 198.18.2.2 "$TS_TMP/resume.bin" >"$TS_TMP/resume.out" 2>&1 &
SEND_PID=$!
TS_PIDS+=("$SEND_PID")
wait_for "ctb transfers --json | python3 -c 'import json,sys; t=json.load(sys.stdin); sys.exit(0 if t and t[0][\"bytes_done\"] > 5000000 else 1)'" 60 ||
	fail "transfer never got going"
kill -KILL "$PID_B"
wait "$PID_B" 2>/dev/null || true
[[ ! -e $DATA_B/received/resume.bin ]] || fail "a partial file appeared under the final name"
partial=$(du -sb "$DATA_B/received/.partial" | cut -f1)
log "killed with $partial bytes in received/.partial"
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name pb --control "$TS_TMP/b.sock" \
	--data-dir "$DATA_B" --peer 198.18.1.2
wait "$SEND_PID" || fail "the resumed transfer failed: $(cat "$TS_TMP/resume.out")"
got=$(sha256sum "$DATA_B/received/resume.bin" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "resumed file differs"
grep -q "already held" "$NODE_LOG" || fail "the restarted node did not resume (log: $(grep -i resume "$NODE_LOG" | head -3))"
held=$(sed -n 's/.*receiving, \([0-9]*\) bytes already held.*/\1/p' "$NODE_LOG" | tail -1)
((held > 0)) || fail "the transfer started over instead of resuming"
log "resumed from $held bytes already held; byte-exact"
interrupt "$PID_A"
interrupt "$NODE_PID"

log "star 3: nodes 2 and 3 know only node 1; peer exchange introduces them to each other"
lab_up star 3
t0=$SECONDS
start_node "$(ns_n 1)" --tun tun0 --addr 198.18.1.2/24 --name s1 --control "$TS_TMP/s1.sock"
for i in 2 3; do
	start_node "$(ns_n "$i")" --tun tun0 --addr "198.18.$i.2/24" --name "s$i" --control "$TS_TMP/s$i.sock" \
		--peer 198.18.1.2
done
# knows I J: node I's table has node J alive, under J's name.
knows() {
	"$TUNSTACK" ctl --control "$TS_TMP/s$1.sock" peers --json |
		python3 -c "import json,sys; sys.exit(0 if any(p['addr']=='198.18.$2.2' and p['state']=='alive' and p['name']=='s$2' for p in json.load(sys.stdin)) else 1)"
}
knows_all() {
	local i j
	for i in 1 2 3; do
		for j in 1 2 3; do
			[[ $i == "$j" ]] && continue
			knows "$i" "$j" || return 1
		done
	done
}
wait_for knows_all 30 || fail "not every node knows every other: $("$TUNSTACK" ctl --control "$TS_TMP/s2.sock" peers)"
# Nobody told s2 about s3 or s3 about s2: they learned each other from s1's HELLOs, and now talk
# to each other: a message between them is delivered.
"$TUNSTACK" ctl --control "$TS_TMP/s2.sock" send 198.18.3.2 "met through s1" >/dev/null || fail "s2 cannot reach s3"
"$TUNSTACK" ctl --control "$TS_TMP/s3.sock" messages | grep -q "198.18.2.2 (s2) \[general\]: met through s1" ||
	fail "s3 did not get s2's message"
log "star 3: s2 and s3 learned each other from s1 (within $((SECONDS - t0)) s of the first start) and exchanged a message"

pass
