#!/usr/bin/env bash
# Sessions (`tunstack session`) and the encrypted netcat (`tunstack cat`) over our TCP between two
# nodes in the `line` lab, and our side against a peer on the kernel's TCP (--kernel) in both
# roles: our session client and server against kernel ones, our cat connector and listener
# against kernel ones (a chat line each way and a file, byte-exact); a relay in the middle that
# flips a bit, or replays a record, ends the transfer with an error and no file.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd python3 tcpdump
require_tunstack

HERE=$(dirname "${BASH_SOURCE[0]}")
BIG=${CAT_TEST_BYTES:-100000000}
lab_up line

# ours NS ADDR NAME ARGS...: a command running its own stack on tun0 in NS.
ours() {
	local ns=$1 addr=$2 name=$3
	shift 3
	ip netns exec "$ns" "$TUNSTACK" "$@" --tun tun0 --addr "$addr/24" --name "$name" \
		--control "$TS_TMP/$name.sock" --data-dir "$TS_TMP/$name.data"
}
# ours_bg: the same in the background (BG_PID), output to $TS_TMP/NAME.out/.err.
ours_bg() {
	local ns=$1 addr=$2 name=$3
	shift 3
	bg "$ns" "$TUNSTACK" "$@" --tun tun0 --addr "$addr/24" --name "$name" \
		--control "$TS_TMP/$name.sock" --data-dir "$TS_TMP/$name.data" \
		>"$TS_TMP/$name.out" 2>"$TS_TMP/$name.err"
}
listening() { wait_for "grep -qi 'listening' '$TS_TMP/$1.err' '$TS_TMP/$1.out'" 15 || fail "$1 did not start: $(cat "$TS_TMP/$1.err")"; }

# ---------------------------------------------------------------- sessions
seq_lines() { python3 -c "import sys; [print('message %05d' % i) for i in range(int(sys.argv[1]))]" "$1"; }

for mode in burst step; do
	n=10000
	[[ $mode == step ]] && n=3000
	log "session, $mode mode: $n messages, our TCP both ends"
	ours_bg "$NS_B" 198.18.2.2 "ss-$mode" session serve --port 7000
	SRV=$BG_PID
	listening "ss-$mode"
	seq_lines $n >"$TS_TMP/lines"
	ours "$NS_A" 198.18.1.2 "sc-$mode" session connect 198.18.2.2 7000 --mode "$mode" --client-id "c-$mode" \
		<"$TS_TMP/lines" >"$TS_TMP/sc-$mode.out" 2>&1 || fail "session client ($mode) failed: $(tail -3 "$TS_TMP/sc-$mode.out")"
	grep -Eiq "acknowledged:? *$n|$n acknowledged" "$TS_TMP/sc-$mode.out" || fail "client report: $(cat "$TS_TMP/sc-$mode.out")"
	wait_for "[[ \$(grep -c 'message [0-9]' '$TS_TMP/ss-$mode.out') -ge $n ]]" 10 || true
	grep -o 'message [0-9]*' "$TS_TMP/ss-$mode.out" >"$TS_TMP/got"
	seq_lines $n | diff -q - "$TS_TMP/got" >/dev/null || fail "server did not print all $n messages in order ($(wc -l <"$TS_TMP/got") lines)"
	log "$(grep -i 'msg/s\|throughput' "$TS_TMP/sc-$mode.out" | head -1)"
	stop "$SRV"
done

log "session: refusal is printed by the client"
ours_bg "$NS_B" 198.18.2.2 ss-refuse session serve --port 7001 --modes step
SRV=$BG_PID
listening ss-refuse
if echo hi | ours "$NS_A" 198.18.1.2 sc-refuse session connect 198.18.2.2 7001 --mode burst >"$TS_TMP/refuse.out" 2>&1; then
	fail "a refused session should fail"
fi
grep -qi "refused\|not supported\|unsupported" "$TS_TMP/refuse.out" || fail "refusal unclear: $(cat "$TS_TMP/refuse.out")"
stop "$SRV"

log "session: burst beats step over a path with 10 ms of delay each way"
ours_bg "$NS_B" 198.18.2.2 ss-delay session serve --port 7002 --quiet --impair delay=10ms
SRV=$BG_PID
listening ss-delay
seq_lines 200 >"$TS_TMP/lines"
rate() { grep -Eo '[0-9.]+ msg/s' "$1" | head -1 | cut -d' ' -f1; }
ours "$NS_A" 198.18.1.2 sd-step session connect 198.18.2.2 7002 --mode step <"$TS_TMP/lines" >"$TS_TMP/sd-step.out" 2>&1 || fail "step over delay failed"
ours "$NS_A" 198.18.1.2 sd-burst session connect 198.18.2.2 7002 --mode burst --window 32 <"$TS_TMP/lines" >"$TS_TMP/sd-burst.out" 2>&1 || fail "burst over delay failed"
step=$(rate "$TS_TMP/sd-step.out")
burst=$(rate "$TS_TMP/sd-burst.out")
log "over 20 ms RTT: step $step msg/s, burst $burst msg/s"
python3 -c "import sys; sys.exit(0 if float('$burst') > 3 * float('$step') else 1)" || fail "burst ($burst) is not clearly faster than step ($step)"
stop "$SRV"

log "session: our client against a kernel server (--kernel)"
bg "$NS_B" "$TUNSTACK" session serve --kernel --port 7003 >"$TS_TMP/sk.out" 2>"$TS_TMP/sk.err"
SRV=$BG_PID
listening sk
seq_lines 1000 >"$TS_TMP/lines"
ours "$NS_A" 198.18.1.2 sk-client session connect 198.18.2.1 7003 --mode burst <"$TS_TMP/lines" >"$TS_TMP/skc.out" 2>&1 ||
	fail "our client vs kernel server: $(tail -3 "$TS_TMP/skc.out")"
wait_for "[[ \$(grep -c 'message [0-9]' '$TS_TMP/sk.out') -ge 1000 ]]" 10 || fail "kernel server got $(grep -c 'message [0-9]' "$TS_TMP/sk.out") of 1000"
stop "$SRV"

log "session: a kernel client (--kernel) against our server"
ours_bg "$NS_B" 198.18.2.2 ss-kc session serve --port 7004
SRV=$BG_PID
listening ss-kc
ip netns exec "$NS_A" "$TUNSTACK" session connect --kernel 198.18.2.2 7004 --mode burst --client-id kernel-client \
	<"$TS_TMP/lines" >"$TS_TMP/kc.out" 2>&1 || fail "kernel client vs our server: $(tail -3 "$TS_TMP/kc.out")"
grep -Eiq "acknowledged:? *1000|1000 acknowledged" "$TS_TMP/kc.out" || fail "kernel client report: $(cat "$TS_TMP/kc.out")"
wait_for "[[ \$(grep -c '\\[kernel-client .*message [0-9]' '$TS_TMP/ss-kc.out') -ge 1000 ]]" 10 || true
grep -o 'message [0-9]*' "$TS_TMP/ss-kc.out" >"$TS_TMP/got"
seq_lines 1000 | diff -q - "$TS_TMP/got" >/dev/null || fail "our server did not print the kernel client's 1000 messages in order ($(wc -l <"$TS_TMP/got") lines)"
stop "$SRV"

log "session: five kernel clients at once against our server (burst and step mixed)"
ours_bg "$NS_B" 198.18.2.2 ss-many session serve --port 7005
SRV=$BG_PID
listening ss-many
seq_lines 2000 >"$TS_TMP/lines"
MANY=()
for k in 1 2 3 4 5; do
	mode=burst
	((k % 2)) || mode=step
	# Not `bg`: an asynchronous command's stdin is /dev/null unless redirected on the command itself.
	ip netns exec "$NS_A" "$TUNSTACK" session connect --kernel 198.18.2.2 7005 --mode "$mode" --client-id "many-$k" \
		<"$TS_TMP/lines" >"$TS_TMP/many-$k.out" 2>&1 &
	MANY+=("$!")
	TS_PIDS+=("$!")
done
for k in 1 2 3 4 5; do
	wait "${MANY[$((k - 1))]}" || fail "concurrent client $k failed: $(tail -3 "$TS_TMP/many-$k.out")"
	grep -Eiq "acknowledged:? *2000|2000 acknowledged" "$TS_TMP/many-$k.out" || fail "client $k report: $(cat "$TS_TMP/many-$k.out")"
done
wait_for "[[ \$(grep -c 'message [0-9]' '$TS_TMP/ss-many.out') -ge 10000 ]]" 10 || true
for k in 1 2 3 4 5; do
	grep "^\[many-$k " "$TS_TMP/ss-many.out" | grep -o 'message [0-9]*' >"$TS_TMP/got"
	seq_lines 2000 | diff -q - "$TS_TMP/got" >/dev/null || fail "our server did not print client $k's 2000 messages in order ($(wc -l <"$TS_TMP/got") lines)"
done
# The sessions overlapped: some client's lines come between another's first and last.
python3 - "$TS_TMP/ss-many.out" <<'PY' || fail "the server handled the five clients one after another"
import sys
ids = [l.split()[0] for l in open(sys.argv[1]) if l.startswith("[many-")]
first = {c: ids.index(c) for c in set(ids)}
last = {c: len(ids) - 1 - ids[::-1].index(c) for c in set(ids)}
sys.exit(0 if any(first[a] < first[b] < last[a] for a in first for b in first if a != b) else 1)
PY
log "five concurrent sessions: 5 x 2000 messages, each client's in order"
stop "$SRV"

# --------------------------------------------------------------------- cat
# Alice types, Bob answers, Alice says BYE! (which ends the session on both sides; Bob's input
# stays open longer so that it is Alice's BYE! that ends it).
log "cat: a chat over our TCP; the capture on tun0 holds none of the typed text"
KEYS_B=$TS_TMP/keys-b
KEYS_A=$TS_TMP/keys-a
start_tcpdump "$NS_A" "$TS_TMP/chat.txt" -ni tun0 -w "$TS_TMP/chat.pcap" tcp
ip netns exec "$NS_B" bash -c "(sleep 3; printf 'answer from bob, plain words\n'; sleep 20) | '$TUNSTACK' cat -l 9000 --key-dir '$KEYS_B' --tun tun0 --addr 198.18.2.2/24 --name cl --control '$TS_TMP/cl.sock' --data-dir '$TS_TMP/cl.data'" \
	>"$TS_TMP/cl.out" 2>"$TS_TMP/cl.err" &
CL=$!
TS_PIDS+=("$CL")
listening cl
(sleep 1; printf 'the secret typed text\n'; sleep 4; printf 'BYE!\n') |
	ours "$NS_A" 198.18.1.2 cc cat 198.18.2.2 9000 --key-dir "$KEYS_A" >"$TS_TMP/cc.out" 2>"$TS_TMP/cc.err" ||
	fail "cat connector failed: $(tail -3 "$TS_TMP/cc.err")"
wait "$CL" || fail "cat listener failed: $(tail -3 "$TS_TMP/cl.err")"
grep -q "the secret typed text" "$TS_TMP/cl.out" || fail "bob did not see alice's line: $(cat "$TS_TMP/cl.out")"
grep -q "answer from bob" "$TS_TMP/cc.out" || fail "alice did not see bob's line: $(cat "$TS_TMP/cc.out")"
sleep 0.3
stop "$TCPDUMP_PID"
[[ -s $TS_TMP/chat.pcap ]] || fail "no capture"
if grep -aq "secret typed text\|answer from bob" "$TS_TMP/chat.pcap"; then
	fail "the capture contains typed text in the clear"
fi
fp=$(sed -n 's/.*fingerprint[^:]*: *\([0-9a-fA-F:]*\).*/\1/p' "$TS_TMP/cl.err" | head -1)
[[ -n $fp ]] || fail "the listener printed no fingerprint: $(cat "$TS_TMP/cl.err")"

log "cat: ${BIG} bytes each way, byte-exact"
head -c "$BIG" /dev/urandom >"$TS_TMP/big.bin"
want=$(sha256sum "$TS_TMP/big.bin" | cut -d' ' -f1)
ours_bg "$NS_B" 198.18.2.2 fr cat -l 9001 --key-dir "$KEYS_B" -fr "$TS_TMP/recv-b.bin"
FR=$BG_PID
listening fr
ours "$NS_A" 198.18.1.2 fs cat 198.18.2.2 9001 --key-dir "$KEYS_A" -fs "$TS_TMP/big.bin" </dev/null >"$TS_TMP/fs.out" 2>&1 ||
	fail "sending the file failed: $(tail -3 "$TS_TMP/fs.out")"
wait "$FR" || fail "receiving the file failed: $(tail -3 "$TS_TMP/fr.err")"
[[ $(sha256sum "$TS_TMP/recv-b.bin" | cut -d' ' -f1) == "$want" ]] || fail "A->B file differs"
# The other way: the listener sends, the connector receives.
ours_bg "$NS_B" 198.18.2.2 fs2 cat -l 9002 --key-dir "$KEYS_B" -fs "$TS_TMP/big.bin"
FS2=$BG_PID
listening fs2
ours "$NS_A" 198.18.1.2 fr2 cat 198.18.2.2 9002 --key-dir "$KEYS_A" -fr "$TS_TMP/recv-a.bin" </dev/null >"$TS_TMP/fr2.out" 2>&1 ||
	fail "receiving from the listener failed: $(tail -3 "$TS_TMP/fr2.out")"
wait "$FS2" || true
[[ $(sha256sum "$TS_TMP/recv-a.bin" | cut -d' ' -f1) == "$want" ]] || fail "B->A file differs"

# kernel_cat NS NAME ARGS...: `tunstack cat --kernel` in NS, in the background (BG_PID), output to
# $TS_TMP/NAME.out/.err.
kernel_cat() {
	local ns=$1 name=$2
	shift 2
	bg "$ns" "$TUNSTACK" cat --kernel "$@" >"$TS_TMP/$name.out" 2>"$TS_TMP/$name.err"
}
# chat_lines FIRST_DELAY LINE LAST_DELAY [END]: typed input: LINE after FIRST_DELAY s, then END (if
# given) after LAST_DELAY s more; the input ends there.
chat_lines() {
	sleep "$1"
	printf '%s\n' "$2"
	sleep "$3"
	[[ -z ${4:-} ]] || printf '%s\n' "$4"
}
head -c 1500000 /dev/urandom >"$TS_TMP/small.bin"
small=$(sha256sum "$TS_TMP/small.bin" | cut -d' ' -f1)

log "cat: our connector on tun0 against a kernel listener (--kernel -l): chat both ways, then a file"
KEYS_K=$TS_TMP/keys-k
ip netns exec "$NS_B" bash -c "$(declare -f chat_lines); chat_lines 3 'kernel listener speaking' 6 | '$TUNSTACK' cat --kernel -l 9010 --key-dir '$KEYS_K'" \
	>"$TS_TMP/kl.out" 2>"$TS_TMP/kl.err" &
KL=$!
TS_PIDS+=("$KL")
listening kl
chat_lines 1 'our connector speaking' 4 'BYE!' |
	ours "$NS_A" 198.18.1.2 oc cat 198.18.2.1 9010 --key-dir "$KEYS_A" >"$TS_TMP/oc.out" 2>"$TS_TMP/oc.err" ||
	fail "our connector vs a kernel listener failed: $(tail -3 "$TS_TMP/oc.err")"
wait "$KL" || fail "the kernel listener failed: $(tail -3 "$TS_TMP/kl.err")"
grep -q "our connector speaking" "$TS_TMP/kl.out" || fail "the kernel listener did not see our line: $(cat "$TS_TMP/kl.out")"
grep -q "kernel listener speaking" "$TS_TMP/oc.out" || fail "our connector did not see the kernel's line: $(cat "$TS_TMP/oc.out")"
kernel_cat "$NS_B" klf -l 9011 --key-dir "$KEYS_K" -fr "$TS_TMP/from-ours.bin"
KLF=$BG_PID
listening klf
ours "$NS_A" 198.18.1.2 ocf cat 198.18.2.1 9011 --key-dir "$KEYS_A" -fs "$TS_TMP/small.bin" </dev/null >"$TS_TMP/ocf.out" 2>&1 ||
	fail "sending a file to a kernel listener failed: $(tail -3 "$TS_TMP/ocf.out")"
wait "$KLF" || fail "the kernel listener did not receive the file: $(tail -3 "$TS_TMP/klf.err")"
[[ $(sha256sum "$TS_TMP/from-ours.bin" | cut -d' ' -f1) == "$small" ]] || fail "our TCP -> kernel TCP: the file differs"

log "cat: a kernel connector (--kernel) against our listener on tun0: chat both ways, then a file"
KEYS_KA=$TS_TMP/keys-ka
ip netns exec "$NS_B" bash -c "$(declare -f chat_lines); chat_lines 3 'our listener speaking' 6 | '$TUNSTACK' cat -l 9012 --key-dir '$KEYS_B' --tun tun0 --addr 198.18.2.2/24 --name ol --control '$TS_TMP/ol.sock' --data-dir '$TS_TMP/ol.data'" \
	>"$TS_TMP/ol.out" 2>"$TS_TMP/ol.err" &
OL=$!
TS_PIDS+=("$OL")
listening ol
chat_lines 1 'kernel connector speaking' 4 'BYE!' |
	ip netns exec "$NS_A" "$TUNSTACK" cat --kernel 198.18.2.2 9012 --key-dir "$KEYS_KA" >"$TS_TMP/kc.out" 2>"$TS_TMP/kc.err" ||
	fail "a kernel connector vs our listener failed: $(tail -3 "$TS_TMP/kc.err")"
wait "$OL" || fail "our listener failed: $(tail -3 "$TS_TMP/ol.err")"
grep -q "kernel connector speaking" "$TS_TMP/ol.out" || fail "our listener did not see the kernel's line: $(cat "$TS_TMP/ol.out")"
grep -q "our listener speaking" "$TS_TMP/kc.out" || fail "the kernel connector did not see our line: $(cat "$TS_TMP/kc.out")"
ours_bg "$NS_B" 198.18.2.2 olf cat -l 9013 --key-dir "$KEYS_B" -fr "$TS_TMP/from-kernel.bin"
OLF=$BG_PID
listening olf
ip netns exec "$NS_A" "$TUNSTACK" cat --kernel 198.18.2.2 9013 --key-dir "$KEYS_KA" -fs "$TS_TMP/small.bin" </dev/null >"$TS_TMP/kcf.out" 2>&1 ||
	fail "sending a file from the kernel to our listener failed: $(tail -3 "$TS_TMP/kcf.out")"
wait "$OLF" || fail "our listener did not receive the file: $(tail -3 "$TS_TMP/olf.err")"
[[ $(sha256sum "$TS_TMP/from-kernel.bin" | cut -d' ' -f1) == "$small" ]] || fail "kernel TCP -> our TCP: the file differs"

log "cat: a bit flipped in transit (by a relay in the middle) aborts and writes nothing"
head -c 2000000 /dev/urandom >"$TS_TMP/mid.bin"
ours_bg "$NS_B" 198.18.2.2 frf cat -l 9003 --key-dir "$KEYS_B" -fr "$TS_TMP/flipped.bin"
FRF=$BG_PID
listening frf
bg "$NS_A" python3 "$HERE/flip_proxy.py" 198.18.1.1 9100 198.18.2.2 9003 1000000
wait_for "ip netns exec '$NS_A' ss -ltnH 'sport = :9100' | grep -q 9100" 10 || fail "the relay did not start"
if ours "$NS_A" 198.18.1.2 fsf cat 198.18.1.1 9100 --key-dir "$KEYS_A" --accept-new-key -fs "$TS_TMP/mid.bin" </dev/null >"$TS_TMP/fsf.out" 2>&1; then
	log "sender finished (the receiver is the one that must notice)"
fi
wait_for "! kill -0 $FRF" 20 || fail "the receiver is still running after the flipped bit"
rc=0
wait "$FRF" || rc=$?
((rc != 0)) || fail "the receiver accepted a flipped bit"
grep -qi "integrity\|authentic\|mac" "$TS_TMP/frf.err" "$TS_TMP/frf.out" || fail "no integrity error: $(cat "$TS_TMP/frf.err")"
[[ ! -e $TS_TMP/flipped.bin ]] || fail "a file was left under the target name"

log "cat: a record replayed in transit (by a relay in the middle) is rejected and writes nothing"
ours_bg "$NS_B" 198.18.2.2 frr cat -l 9004 --key-dir "$KEYS_B" -fr "$TS_TMP/replayed.bin"
FRR=$BG_PID
listening frr
bg "$NS_A" python3 "$HERE/flip_proxy.py" 198.18.1.1 9101 198.18.2.2 9004 replay:20 >"$TS_TMP/replay-proxy.out" 2>&1
wait_for "ip netns exec '$NS_A' ss -ltnH 'sport = :9101' | grep -q 9101" 10 || fail "the replaying relay did not start"
if ours "$NS_A" 198.18.1.2 fsr cat 198.18.1.1 9101 --key-dir "$KEYS_A" -fs "$TS_TMP/mid.bin" </dev/null >"$TS_TMP/fsr.out" 2>&1; then
	log "sender finished (the receiver is the one that must notice)"
fi
wait_for "! kill -0 $FRR" 20 || fail "the receiver is still running after the replayed record"
rc=0
wait "$FRR" || rc=$?
((rc != 0)) || fail "the receiver accepted a replayed record"
grep -q "replayed record 19 after record 20" "$TS_TMP/replay-proxy.out" || fail "the relay did not replay: $(cat "$TS_TMP/replay-proxy.out")"
grep -qi "replayed record rejected" "$TS_TMP/frr.err" "$TS_TMP/frr.out" || fail "no replay error: $(cat "$TS_TMP/frr.err")"
[[ ! -e $TS_TMP/replayed.bin ]] || fail "a file was left under the target name after the replay"
[[ ! -e $TS_TMP/.replayed.bin.tunstack-part ]] || fail "the partial file was left behind after the replay"
log "receiver: $(grep -i 'replayed' "$TS_TMP/frr.err" | head -1)"

log "cat: a changed listener key is refused"
# Same host and port as the chat, whose key alice pinned, but a listener with a new key pair.
ours_bg "$NS_B" 198.18.2.2 newkey cat -l 9000 --key-dir "$TS_TMP/other-keys"
NK=$BG_PID
listening newkey
if echo hi | ours "$NS_A" 198.18.1.2 ck cat 198.18.2.2 9000 --key-dir "$KEYS_A" >"$TS_TMP/ck.out" 2>&1; then
	fail "a changed key was accepted"
fi
grep -qi "changed\|mismatch\|does not match\|refus" "$TS_TMP/ck.out" || fail "refusal unclear: $(cat "$TS_TMP/ck.out")"
stop "$NK"

pass
