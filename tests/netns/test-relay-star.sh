#!/usr/bin/env bash
# Relay mesh in the star lab over kernel TCP: three relay servers (ts-n1..n3,
# 198.19.1.1-3:7000) joined in a cycle, four users spread over n1..n4. Every
# user messages every other: each message arrives exactly once; a message to a
# user nobody registered is answered "no such user". Then the server most users
# chose (read from the clients' logs, so at least one user is on it and failover
# is really exercised) is killed (SIGKILL) and the users keep messaging after
# failing over.
#
# The relay over our own TCP, with delay on the path to one server making
# clients choose another, is tests/netns/test-relay-ours.sh.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_tunstack

lab_up star 4
USERS=(ann bob cy dee)
declare -A SRV_PID FD

for i in 1 2 3; do
	next=$((i % 3 + 1))
	bg "$(ns_n "$i")" "$TUNSTACK" relay serve --kernel --listen "198.19.1.$i" --port 7000 \
		--join "198.19.1.$next:7000" --relay-control "$TS_TMP/relay$i.sock" \
		>"$TS_TMP/server$i.log" 2>&1
	SRV_PID[$i]=$BG_PID
done
wait_for "[[ \$(\"$TUNSTACK\" ctl --control $TS_TMP/relay1.sock relay --json | grep -c '\"connected\": true') -ge 2 ]]" 20 ||
	fail "the mesh did not form"

# Each user reads its lines from a FIFO that this script keeps open.
k=0
for u in "${USERS[@]}"; do
	k=$((k + 1))
	mkfifo "$TS_TMP/$u.in"
	# Opened read-write first: opening a FIFO for reading alone would block.
	exec {fd}<>"$TS_TMP/$u.in"
	FD[$u]=$fd
	seed=$(((k - 1) % 3 + 1))
	# Not through bg: a background command's stdin would be /dev/null.
	ip netns exec "$(ns_n "$k")" "$TUNSTACK" relay client --kernel --server "198.19.1.$seed:7000" \
		--user "$u" <"$TS_TMP/$u.in" >"$TS_TMP/$u.log" 2>&1 &
	TS_PIDS+=("$!")
done
for u in "${USERS[@]}"; do
	wait_for "grep -q '^connected to' $TS_TMP/$u.log" 20 || fail "$u did not connect"
done
# Let the directory settle everywhere.
sleep 2

# send_all TAG: every user to every other.
send_all() {
	local tag=$1 u v
	for u in "${USERS[@]}"; do
		for v in "${USERS[@]}"; do
			[[ $u == "$v" ]] && continue
			echo "$v $tag $u->$v" >&"${FD[$u]}"
		done
	done
}

# check_all TAG: each message arrived exactly once.
check_all() {
	local tag=$1 u v n
	for v in "${USERS[@]}"; do
		for u in "${USERS[@]}"; do
			[[ $u == "$v" ]] && continue
			wait_for "grep -qx 'from $u: $tag $u->$v' $TS_TMP/$v.log" 20 ||
				fail "'$tag $u->$v' never arrived"
			n=$(grep -cx "from $u: $tag $u->$v" "$TS_TMP/$v.log")
			[[ $n -eq 1 ]] || fail "'$tag $u->$v' arrived $n times"
		done
	done
}

log "all-to-all through the cycle"
send_all one
check_all one
grep -h '^rtt ' "$TS_TMP"/*.log | head -4
"$TUNSTACK" ctl --control "$TS_TMP/relay2.sock" relay

log "a message to a user nobody registered is answered"
echo "nobody are you there" >&"${FD[ann]}"
wait_for "grep -qx 'no such user: nobody' $TS_TMP/ann.log" 10 ||
	fail "ann got no 'no such user' answer: $(tail -5 "$TS_TMP/ann.log")"
"$TUNSTACK" ctl --control "$TS_TMP/relay1.sock" relay --json | grep -q '"unknown_user_answers": [1-9]' ||
	"$TUNSTACK" ctl --control "$TS_TMP/relay2.sock" relay --json | grep -q '"unknown_user_answers": [1-9]' ||
	"$TUNSTACK" ctl --control "$TS_TMP/relay3.sock" relay --json | grep -q '"unknown_user_answers": [1-9]' ||
	fail "no server counted an unknown-user answer"

# The victim is the server most users chose (their first 'connected to' line), so
# the crash strands at least one user whatever the RTT measurements picked.
declare -A ON
for u in "${USERS[@]}"; do
	ON[$u]=$(sed -n 's/^connected to 198\.19\.1\.\([0-9]\):7000$/\1/p' "$TS_TMP/$u.log" | head -1)
	[[ -n ${ON[$u]} ]] || fail "cannot tell which server $u chose: $(cat "$TS_TMP/$u.log")"
done
VICTIM=$(printf '%s\n' "${ON[@]}" | sort | uniq -c | sort -k1,1nr -k2,2n | awk 'NR == 1 {print $2}')
STRANDED=()
for u in "${USERS[@]}"; do
	[[ ${ON[$u]} == "$VICTIM" ]] && STRANDED+=("$u")
done
((${#STRANDED[@]} >= 1)) || fail "no user on server $VICTIM: failover would not be exercised"
SURVIVOR=$((VICTIM % 3 + 1))
log "server $VICTIM crashes; its users (${STRANDED[*]}) fail over"
kill -KILL "${SRV_PID[$VICTIM]}"
for u in "${STRANDED[@]}"; do
	wait_for "grep -q '^lost 198.19.1.$VICTIM:7000' $TS_TMP/$u.log && grep '^connected to' $TS_TMP/$u.log | tail -1 | grep -qv '198.19.1.$VICTIM:7000'" 20 ||
		fail "$u did not fail over: $(tail -5 "$TS_TMP/$u.log")"
done
wait_for "\"$TUNSTACK\" ctl --control $TS_TMP/relay$SURVIVOR.sock relay --json | grep -q '\"servers_dropped\": [1-9]'" 15 ||
	fail "server $SURVIVOR did not notice server $VICTIM is gone"
sleep 2
send_all two
check_all two
"$TUNSTACK" ctl --control "$TS_TMP/relay$SURVIVOR.sock" relay

pass
