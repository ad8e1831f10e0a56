#!/usr/bin/env bash
# Relay mesh on our own TCP: three relay servers run their own stacks on the star lab's nodes,
# joined in a cycle.
# 1. Baseline, no delay anywhere: a client in ts-n1 measures the three servers and picks the
#    fastest, X (whichever it is: the RTTs are all well under a millisecond).
# 2. X restarts with 20 ms of delay (the impairment layer): a client seeded at X measures it
#    and now picks another server; X's RTT is at least 20 ms where it was the smallest.
# 3. A client pinned to the third server (--pin) messages that client: it crosses from one
#    server to the other exactly once, and one to a user that does not exist is answered "no
#    such user"; `ctl relay` on the servers' nodes shows the mesh, the users and the
#    forwarding counters that carried it.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_tunstack

lab_up star 3
declare -A RPID

# start_relay I [ARGS...]: relay server I on node 198.18.I.2, joining the next one.
start_relay() {
	local i=$1 j=$(($1 % 3 + 1))
	shift
	bg "$(ns_n "$i")" "$TUNSTACK" relay serve --tun tun0 --addr "198.18.$i.2/24" --port 7000 \
		--join "198.18.$j.2:7000" --name "r$i" --control "$TS_TMP/r$i.sock" --data-dir "$TS_TMP/r$i.data" \
		"$@" >>"$TS_TMP/r$i.log" 2>&1
	RPID[$i]=$BG_PID
}

# relay_json I: `ctl relay --json` of server I's node.
relay_json() {
	"$TUNSTACK" ctl --control "$TS_TMP/r$1.sock" relay --json
}

# rtt_ms FILE SERVER: the RTT a client printed for SERVER, in whole ms ("" if none).
rtt_ms() {
	sed -n "s/^rtt $2 \([0-9]*\)\.[0-9]* ms$/\1/p" "$1" | tail -1
}

for i in 1 2 3; do
	start_relay "$i"
done
# Each server must know both others before a client asks one for the list: the list a
# client measures is what its first server knows at that moment.
for i in 1 2 3; do
	wait_for "relay_json $i | python3 -c 'import json,sys; d=json.load(sys.stdin); assert len({s[\"addr\"] for s in d[\"servers\"]}) >= 2'" 15 ||
		fail "relay $i does not know both other servers: $(relay_json "$i" | head -c 400)"
done

log "baseline without delay: amy (in ts-n1, seeded at server 1) picks the fastest"
ip netns exec "$(ns_n 1)" timeout 30 "$TUNSTACK" relay client --kernel --server 198.18.1.2:7000 \
	--user amy --linger 4 </dev/null >"$TS_TMP/amy.out" 2>&1 || fail "amy failed: $(cat "$TS_TMP/amy.out")"
X=$(sed -n 's/^connected to 198\.18\.\([123]\)\.2:7000$/\1/p' "$TS_TMP/amy.out" | head -1)
[[ -n $X ]] || fail "amy never connected: $(cat "$TS_TMP/amy.out")"
best=$(sed -n 's/^rtt \([^ ]*\) \([0-9.]*\) ms$/\2 \1/p' "$TS_TMP/amy.out" | sort -n | head -1)
[[ $(grep -c '^rtt .* ms$' "$TS_TMP/amy.out") == 3 ]] || fail "amy did not measure all three servers: $(cat "$TS_TMP/amy.out")"
[[ ${best#* } == "198.18.$X.2:7000" ]] || fail "amy chose server $X, not the lowest RTT ($best)"
base=$(rtt_ms "$TS_TMP/amy.out" "198.18.$X.2:7000")
((base < 10)) || fail "server $X answers in $base ms without any delay"
log "baseline: $(grep -E '^rtt|^connected' "$TS_TMP/amy.out" | tr '\n' ';')"

log "server $X restarts with 20 ms of delay on its device"
stop "${RPID[$X]}"
start_relay "$X" --impair delay=20ms
for i in 1 2 3; do
	[[ $i == "$X" ]] && continue
	wait_for "relay_json $i | python3 -c 'import json,sys; d=json.load(sys.stdin); assert any(s[\"addr\"] == \"198.18.$X.2:7000\" and s[\"connected\"] for s in d[\"servers\"])'" 20 ||
		fail "server $i did not take server $X back: $(relay_json "$i")"
done

log "bob's seed is the delayed server $X; he must choose another"
bg "$(ns_n 1)" bash -c "sleep 20 | '$TUNSTACK' relay client --kernel --server 198.18.$X.2:7000 --user bob" >"$TS_TMP/bob.out" 2>&1
wait_for "grep -q 'connected to' '$TS_TMP/bob.out'" 20 || fail "bob never connected: $(cat "$TS_TMP/bob.out")"
slow=$(rtt_ms "$TS_TMP/bob.out" "198.18.$X.2:7000")
[[ -n $slow ]] || fail "bob did not measure server $X: $(cat "$TS_TMP/bob.out")"
((slow >= 20)) || fail "server $X answers bob in $slow ms despite 20 ms of delay"
if grep -q "connected to 198.18.$X.2:7000" "$TS_TMP/bob.out"; then
	fail "bob chose the delayed server: $(cat "$TS_TMP/bob.out")"
fi
B=$(sed -n 's/^connected to 198\.18\.\([123]\)\.2:7000$/\1/p' "$TS_TMP/bob.out" | head -1)
log "server $X: $base ms without delay, $slow ms with; bob is on server $B ($(grep -E '^rtt' "$TS_TMP/bob.out" | tr '\n' ';'))"

# ann stays on the third server (--pin), so her message must cross from one server to another.
A=$((6 - X - B))
log "ann (pinned to server $A) messages bob on server $B, and someone who does not exist"
printf 'bob hello bob over our TCP\nnobody hello?\n' | ip netns exec "$(ns_n "$A")" timeout 20 "$TUNSTACK" relay client --kernel \
	--server "198.18.$A.2:7000" --pin --user ann >"$TS_TMP/ann.out" 2>&1 || fail "ann failed: $(cat "$TS_TMP/ann.out")"
grep -qx "connected to 198.18.$A.2:7000" "$TS_TMP/ann.out" || fail "ann did not stay on server $A: $(cat "$TS_TMP/ann.out")"
grep -q "delivered to bob" "$TS_TMP/ann.out" || fail "ann saw no delivery: $(cat "$TS_TMP/ann.out")"
grep -qx "no such user: nobody" "$TS_TMP/ann.out" || fail "ann got no 'no such user' answer: $(cat "$TS_TMP/ann.out")"
wait_for "grep -q 'from ann: hello bob over our TCP' '$TS_TMP/bob.out'" 10 || fail "bob got nothing: $(cat "$TS_TMP/bob.out")"
[[ $(grep -c "from ann: hello bob over our TCP" "$TS_TMP/bob.out") == 1 ]] || fail "bob got the message more than once"

log "ctl relay: ann on server $A, bob on server $B"
for i in 1 2 3; do
	"$TUNSTACK" ctl --control "$TS_TMP/r$i.sock" relay >"$TS_TMP/ctl$i.txt" || fail "ctl relay on node $i failed"
done
cat "$TS_TMP/ctl$A.txt"
grep -Eq '^messages: in [2-9][0-9]*, delivered here [0-9]+, forwarded [1-9]' "$TS_TMP/ctl$A.txt" ||
	fail "ctl relay on server $A does not show ann's message forwarded: $(cat "$TS_TMP/ctl$A.txt")"
grep -Eq '^messages: .*delivered here [1-9]' "$TS_TMP/ctl$B.txt" ||
	fail "ctl relay on server $B does not show the delivery to bob: $(cat "$TS_TMP/ctl$B.txt")"
# ann's server took her message and the one to nobody, answered that one itself and forwarded
# the other straight to bob's server, which handed it to him.
relay_json "$A" >"$TS_TMP/a.json"
relay_json "$B" >"$TS_TMP/b.json"
python3 - "$TS_TMP/a.json" "$TS_TMP/b.json" "$A" "$B" <<'EOF' || fail "the counters do not show the forwarding"
import json, sys
a = json.load(open(sys.argv[1]))
b = json.load(open(sys.argv[2]))
ca, cb = a["counters"], b["counters"]
assert ca["messages_in"] >= 2, ca
assert ca["unknown_user_answers"] >= 1, ca
assert ca["forwarded_direct"] >= 1, ca
assert cb["messages_in"] >= 1 and cb["delivered_local"] >= 1, cb
others = {"198.18.%d.2:7000" % i for i in (1, 2, 3)} - {a["addr"]}
assert {x["addr"] for x in a["servers"]} == others, a["servers"]
assert any(u["name"] == "bob" and u["online"] for u in a["users"]), a["users"]
print("counters: server %s in %d, forwarded %d, unknown-user answers %d; server %s delivered %d"
      % (sys.argv[3], ca["messages_in"], ca["forwarded_direct"], ca["unknown_user_answers"],
         sys.argv[4], cb["delivered_local"]))
EOF

pass
