#!/usr/bin/env bash
# Relay mesh on our own TCP: three relay servers run their own stacks on the star lab's nodes,
# joined in a cycle; 20 ms of delay on server 1 (the impairment layer) makes a client whose
# seed is server 1 measure it and choose another; a message crosses the mesh to it; `ctl relay`
# on a server's node shows servers, users and counters.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_tunstack

lab_up star 3
for i in 1 2 3; do
	j=$((i % 3 + 1))
	extra=()
	[[ $i == 1 ]] && extra=(--impair delay=20ms)
	bg "$(ns_n "$i")" "$TUNSTACK" relay serve --tun tun0 --addr "198.18.$i.2/24" --port 7000 \
		--join "198.18.$j.2:7000" --name "r$i" --control "$TS_TMP/r$i.sock" --data-dir "$TS_TMP/r$i.data" \
		"${extra[@]}" >"$TS_TMP/r$i.log" 2>&1
done
for i in 1 2 3; do
	wait_for "grep -q 'discovered server' '$TS_TMP/r$i.log'" 15 || fail "relay $i found no other server: $(tail -3 "$TS_TMP/r$i.log")"
done

log "bob's seed is the delayed server 1; he must choose another"
bg "$(ns_n 1)" bash -c "sleep 20 | '$TUNSTACK' relay client --kernel --server 198.18.1.2:7000 --user bob" >"$TS_TMP/bob.out" 2>&1
wait_for "grep -q 'connected to' '$TS_TMP/bob.out'" 20 || fail "bob never connected: $(cat "$TS_TMP/bob.out")"
grep -q "rtt 198.18.1.2:7000" "$TS_TMP/bob.out" || fail "bob did not measure server 1: $(cat "$TS_TMP/bob.out")"
if grep -q "connected to 198.18.1.2:7000" "$TS_TMP/bob.out"; then
	fail "bob chose the delayed server: $(cat "$TS_TMP/bob.out")"
fi
log "$(grep -E '^rtt|connected' "$TS_TMP/bob.out" | tr '\n' ';')"

log "ann (seeded at server 2) messages bob across the mesh"
printf 'bob hello bob over our TCP\n' | ip netns exec "$(ns_n 2)" timeout 20 "$TUNSTACK" relay client --kernel \
	--server 198.18.2.2:7000 --user ann >"$TS_TMP/ann.out" 2>&1 || fail "ann failed: $(cat "$TS_TMP/ann.out")"
grep -q "delivered to bob" "$TS_TMP/ann.out" || fail "ann saw no delivery: $(cat "$TS_TMP/ann.out")"
wait_for "grep -q 'from ann: hello bob over our TCP' '$TS_TMP/bob.out'" 10 || fail "bob got nothing: $(cat "$TS_TMP/bob.out")"
[[ $(grep -c "from ann: hello bob over our TCP" "$TS_TMP/bob.out") == 1 ]] || fail "bob got the message more than once"

log "ctl relay on server 2's node"
"$TUNSTACK" ctl --control "$TS_TMP/r2.sock" relay --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
s = json.dumps(d)
assert "198.18.1.2:7000" in s and "198.18.3.2:7000" in s, d
assert "ann" in s or "bob" in s, d
' || fail "ctl relay does not show the mesh: $("$TUNSTACK" ctl --control "$TS_TMP/r2.sock" relay)"

pass
