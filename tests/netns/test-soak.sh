#!/usr/bin/env bash
# Soak, `line` lab: node B impaired with loss=3%,reorder=3%:10ms,dup=1% at its device (both
# ways) serves echo:7; for SOAK_SECONDS (60) 50 kernel TCP connections in ts-b keep sending and
# verifying every echoed byte, while node A sends B a file over protocol 171 (byte-exact by
# SHA-256). B's VmRSS is sampled every 5 s and must stay under SOAK_RSS_MAX_KB.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd python3 sha256sum
require_tunstack

SECS=${SOAK_SECONDS:-60}
CONNS=${SOAK_CONNS:-50}
FILE_MB=${SOAK_FILE_MB:-10}
# 96 MiB: 50 connections may each touch up to 512 KiB of buffers (25 MiB) on top of the rest.
RSS_MAX_KB=${SOAK_RSS_MAX_KB:-98304}
HERE=$(dirname "${BASH_SOURCE[0]}")

lab_up line
DATA_B=$TS_TMP/bdata
start_node "$NS_A" --tun tun0 --addr 198.18.1.2/24 --name sa --control "$TS_TMP/a.sock"
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name sb --control "$TS_TMP/b.sock" \
	--data-dir "$DATA_B" --serve echo:7 --peer 198.18.1.2 \
	--impair "loss=3%,reorder=3%:10ms,dup=1%,seed=42"
PID_B=$NODE_PID
cta() { "$TUNSTACK" ctl --control "$TS_TMP/a.sock" "$@"; }
ctb() { "$TUNSTACK" ctl --control "$TS_TMP/b.sock" "$@"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID_B/status"; }
wait_for "cta peers --json | grep -q 198.18.2.2" 15 || fail "A never heard of B"

head -c $((FILE_MB * 1000000)) /dev/urandom >"$TS_TMP/soak.bin"
want=$(sha256sum "$TS_TMP/soak.bin" | cut -d' ' -f1)
rss0=$(rss_kb)
log "$CONNS echo connections for $SECS s plus a $FILE_MB MB file, through B's impairment (VmRSS $rss0 kB)"
bg "$NS_B" python3 "$HERE/echo_load.py" --dst 198.18.2.2 --port 7 --conns "$CONNS" \
	--seconds "$SECS" --drain 20 --seed 9 >"$TS_TMP/echo.json" 2>"$TS_TMP/echo.err"
ECHO=$BG_PID
t0=$SECONDS
cta file 198.18.2.2 "$TS_TMP/soak.bin" >"$TS_TMP/file.out" 2>&1 &
FILEPID=$!
TS_PIDS+=("$FILEPID")
samples=()
max=$rss0
while kill -0 "$ECHO" 2>/dev/null; do
	sleep 5
	kill -0 "$PID_B" || fail "B died during the soak"
	r=$(rss_kb)
	samples+=("$r")
	((r > max)) && max=$r
	((r < RSS_MAX_KB)) || fail "B's VmRSS $r kB exceeds $RSS_MAX_KB kB after $((SECONDS - t0)) s"
done
rc=0
wait "$ECHO" || rc=$?
log "echo: $(cat "$TS_TMP/echo.json")"
((rc == 0)) || fail "echo load failed: $(cat "$TS_TMP/echo.json" "$TS_TMP/echo.err")"
wait "$FILEPID" || fail "file transfer failed: $(cat "$TS_TMP/file.out")"
got=$(sha256sum "$DATA_B/received/soak.bin" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "the received file differs"
log "file: $FILE_MB MB byte-exact"
log "VmRSS samples (kB, every 5 s): ${samples[*]}; max $max kB, bound $RSS_MAX_KB kB"
ctb status --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
t, i = v["tcp"], v["impair"]
print("B: tcp retransmits %d (fast %d, rto %d), impair in %s out %s" % (t["retransmits"], t["fast_retransmits"],
      t["rto_timeouts"], i["in"]["counters"], i["out"]["counters"]))'
pass
