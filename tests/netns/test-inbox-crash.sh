#!/usr/bin/env bash
# Crash safety of the inbox (protocol 170) in a `line` lab, no loss:
# 1. group-commit rate: A queues INBOX_MSGS messages to B at once; B's rate is taken from the
#    arrival times in its inbox (each turn of B's loop appends, fdatasyncs once, then ACKs);
# 2. A queues INBOX_MSGS more; B is SIGKILLed at a random moment while they flow and restarted
#    with the same --data-dir; once A has an outcome for every message, every message A saw as
#    delivered is in B's inbox (here: all of them, since none may fail) exactly once: messages B
#    logged but whose ACK had not left come again, renumbered, and B's restarted life recognises
#    them by the delivery marks it rebuilt from inbox.log (counted in msg.duplicate_messages).
# (The file-transfer side of crash safety is in test-protocols.sh.)
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd python3
require_tunstack

N=${INBOX_MSGS:-2000}
lab_up line
DATA_B=$TS_TMP/bdata
start_node "$NS_A" --tun tun0 --addr 198.18.1.2/24 --name ia --control "$TS_TMP/a.sock"
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name ib --control "$TS_TMP/b.sock" \
	--data-dir "$DATA_B" --peer 198.18.1.2
PID_B=$NODE_PID
cta() { "$TUNSTACK" ctl --control "$TS_TMP/a.sock" "$@"; }
ctb() { "$TUNSTACK" ctl --control "$TS_TMP/b.sock" "$@"; }
wait_for "cta peers --json | grep -q 198.18.2.2" 15 || fail "A never heard of B"

# queue PREFIX: A queues N messages "PREFIX i" through its control socket, without waiting.
queue() {
	python3 - "$TS_TMP/a.sock" "$1" "$N" <<'PY'
import json, socket, sys
path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((json.dumps(["send", "198.18.2.2", "%s %d" % (prefix, i), "--no-wait"]) + "\n").encode())
    reply = s.makefile().read()
    if reply.startswith("error"):
        sys.exit("send %d: %s" % (i, reply))
    s.close()
PY
}
msgstat() {
	cta status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['msg']['$1'])"
}
msgstat_b() {
	ctb status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['msg']['$1'])"
}

log "phase 1: $N messages, group-commit rate"
t0=$(date +%s.%N)
queue rate
t1=$(date +%s.%N)
wait_for "[[ \$(msgstat messages_delivered) -ge $N ]]" 60 || fail "phase 1: only $(msgstat messages_delivered) of $N delivered"
t2=$(date +%s.%N)
ctb messages --json | python3 -c '
import json, sys
from datetime import datetime
ts = [datetime.fromisoformat(json.loads(l)["received_at"].replace("Z", "+00:00"))
      for l in sys.stdin if l.strip() and json.loads(l)["content"].startswith("rate ")]
span = (max(ts) - min(ts)).total_seconds()
print("%d messages arrived over %.3f s at B: %.0f msg/s" % (len(ts), span, (len(ts) - 1) / span if span else 0))
' >"$TS_TMP/rate.txt"
log "queueing took $(echo "$t1 - $t0" | bc 2>/dev/null || echo "?") s, all delivered after $(echo "$t2 - $t0" | bc 2>/dev/null || echo "?") s; $(cat "$TS_TMP/rate.txt")"
delivered1=$(msgstat messages_delivered)

log "phase 2: $N messages, B SIGKILLed while they flow"
queue crash &
QPID=$!
# A random moment while they flow: once B has logged 100..1500 of them. Its log is watched in a
# tight loop: at thousands of messages a second, a status query every 0.1 s would come too late.
target=$((N + 100 + RANDOM % 1400))
deadline=$((SECONDS + 30))
until (($(wc -l <"$DATA_B/inbox.log") >= target)); do
	((SECONDS < deadline)) || fail "phase 2: B never logged $target messages"
done
kill -KILL "$PID_B"
wait "$PID_B" 2>/dev/null || true
logged=$(($(wc -l <"$DATA_B/inbox.log") - N))
before_kill=$(($(msgstat messages_delivered) - delivered1))
log "B killed with $logged of phase 2's messages in its log, $before_kill acknowledged to A"
((before_kill < N)) || fail "B was killed after every message was acknowledged: the crash tested nothing"
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name ib --control "$TS_TMP/b.sock" \
	--data-dir "$DATA_B" --peer 198.18.1.2
wait "$QPID" || fail "queueing phase 2 failed"
outcomes() { echo $(($(msgstat messages_delivered) + $(msgstat messages_failed))); }
wait_for "[[ \$(outcomes) -ge $((2 * N)) ]]" 90 || fail "A has outcomes for $(outcomes) of $((2 * N)) messages"
delivered=$(($(msgstat messages_delivered) - delivered1))
failed=$(msgstat messages_failed)
log "A: $delivered of phase 2 delivered, $failed failed"
ctb messages --json | python3 -c "
import json, sys
got = [json.loads(l)['content'] for l in sys.stdin if l.strip()]
crash = [g for g in got if g.startswith('crash ')]
distinct = set(crash)
want = set('crash %d' % i for i in range($N))
missing = sorted(want - distinct, key=lambda s: int(s.split()[1]))
print('inbox: %d crash messages, %d distinct, %d duplicates, %d missing %s'
      % (len(crash), len(distinct), len(crash) - len(distinct), len(missing), missing[:5]))
# Every message A saw delivered is in the inbox: with no failures that is every message;
# otherwise at least as many distinct ones as A counted. None of them twice.
ok = not missing if $failed == 0 else len(distinct) >= $delivered
sys.exit(0 if ok and len(crash) == len(distinct) else 1)
" >"$TS_TMP/check.txt" || fail "B lost or duplicated messages: $(cat "$TS_TMP/check.txt")"
log "$(cat "$TS_TMP/check.txt")"
log "B's restarted life recognised $(msgstat_b duplicate_messages) messages sent again after the crash (acknowledged, not delivered twice)"
((failed == 0)) || fail "$failed messages failed: B was down longer than protocol 170 retries"
pass
