#!/usr/bin/env bash
# The library API (`tunstack::api::node::TunstackNode`) run for real: examples/api_exchange.rs on
# tun0 in both namespaces of the `line` lab. The sender's node sends a message and a file and
# waits for both outcomes; the receiver's node collects them with received_messages, checks that a
# second call returns nothing new, answers, and both check status() before stop().
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_tunstack

# API_EXAMPLE=PATH runs a program built beforehand instead of building it here.
EXAMPLE=${API_EXAMPLE:-}
if [[ -z $EXAMPLE ]]; then
	EXAMPLE=$TS_ROOT/target/release/examples/api_exchange
	log "building examples/api_exchange"
	(cd "$TS_ROOT" && "${CARGO:-cargo}" build --release --quiet --example api_exchange) ||
		fail "cannot build examples/api_exchange"
fi

lab_up line
head -c 3000000 /dev/urandom >"$TS_TMP/photo.jpg"
want=$(sha256sum "$TS_TMP/photo.jpg" | cut -d' ' -f1)

bg "$NS_B" "$EXAMPLE" receive --tun tun0 --addr 198.18.2.2/24 --data-dir "$TS_TMP/b" \
	--file-name photo.jpg >"$TS_TMP/recv.out" 2>&1
RECV=$BG_PID
wait_for "grep -q 'receiver: started' '$TS_TMP/recv.out'" 10 || fail "the receiver's node did not start: $(cat "$TS_TMP/recv.out")"
bg "$NS_A" "$EXAMPLE" send --tun tun0 --addr 198.18.1.2/24 --data-dir "$TS_TMP/a" \
	--to 198.18.2.2 --file "$TS_TMP/photo.jpg" >"$TS_TMP/send.out" 2>&1
SEND=$BG_PID

rc=0
wait "$SEND" || rc=$?
sed 's/^/  /' "$TS_TMP/send.out"
((rc == 0)) || fail "the sending program failed (exit $rc)"
rc=0
wait "$RECV" || rc=$?
sed 's/^/  /' "$TS_TMP/recv.out"
((rc == 0)) || fail "the receiving program failed (exit $rc)"

grep -q "sender: message [0-9]* delivered" "$TS_TMP/send.out" || fail "no delivery outcome"
grep -q "sender: file sent, 3000000 bytes, sha256 $want" "$TS_TMP/send.out" || fail "the sender's outcome does not name the file's SHA-256"
grep -q "receiver: message from 198.18.1.2 (alice, channel lab)" "$TS_TMP/recv.out" || fail "the receiver did not report the message"
grep -q "sender: reply received from 198.18.2.2 (bob)" "$TS_TMP/send.out" || fail "the reply did not come back"
grep -q "sender: stopped" "$TS_TMP/send.out" || fail "the sending node did not stop"
grep -q "receiver: stopped" "$TS_TMP/recv.out" || fail "the receiving node did not stop"
got=$(sha256sum "$TS_TMP/b/received/photo.jpg" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "the received file differs"
# stop() released the device: a new node can open tun0 at once.
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name api-after
log "message, file (3 MB, byte-exact), reply and status through the library API"
pass
