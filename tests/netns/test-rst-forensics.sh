#!/usr/bin/env bash
# RST forensics against the kernel in a `pair` lab:
# - a kernel client closes its echo connection with SO_LINGER 0 (an abortive close: RST):
#   --rst-dump writes a pcap of that connection, tcpdump reads it and sees the RST;
# - a kernel client connects to a port nobody listens on: the node's RST is dumped too;
# - `ctl sockets --events` shows the reset connection's timeline (handshake, RST received),
#   also once the connection is gone, and `--json` carries the same events.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd python3 tcpdump
require_tunstack

lab_up pair
DUMP=$TS_TMP/rst
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name rst --serve echo:7 --rst-dump "$DUMP"

log "kernel client: echo, then close with SO_LINGER 0"
ip netns exec "$NS_A" python3 - <<'PY' || fail "the abortive-close client failed"
import socket, struct
s = socket.create_connection(("198.18.0.2", 7), timeout=5)
s.sendall(b"hello rst")
got = b""
while len(got) < 9:
    got += s.recv(100)
assert got == b"hello rst", got
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
PY
wait_for "ls '$DUMP'/rst-*-198.18.0.2.7-198.18.0.1.*.pcap" 5 || fail "no dump for the reset echo connection: $(ls "$DUMP")"
f=$(find "$DUMP" -name "rst-*-198.18.0.2.7-198.18.0.1.*.pcap" -print -quit)
tcpdump -nr "$f" >"$TS_TMP/dump1.txt" 2>"$TS_TMP/dump1.err" || fail "tcpdump cannot read $f: $(cat "$TS_TMP/dump1.err")"
grep -q "198.18.0.1.[0-9]* > 198.18.0.2.7: Flags \[S\]" "$TS_TMP/dump1.txt" || fail "dump lacks the SYN: $(cat "$TS_TMP/dump1.txt")"
grep -q "198.18.0.1.[0-9]* > 198.18.0.2.7: Flags \[R" "$TS_TMP/dump1.txt" || fail "dump lacks the client's RST: $(cat "$TS_TMP/dump1.txt")"
grep -q "rst-dump: reset received" "$NODE_LOG" || fail "the node did not log the dump"
log "dump $(basename "$f"): $(wc -l <"$TS_TMP/dump1.txt") packets, RST included"

log "sockets --events: the timeline of the reset connection"
ctl sockets --events >"$TS_TMP/events.txt"
grep -q "RST received" "$TS_TMP/events.txt" || fail "no 'RST received' in the timeline: $(cat "$TS_TMP/events.txt")"
grep -q "state SYN-RECV -> ESTAB" "$TS_TMP/events.txt" || fail "no handshake in the timeline: $(cat "$TS_TMP/events.txt")"
grep -q "connection reset by peer" "$TS_TMP/events.txt" || fail "no error in the timeline: $(cat "$TS_TMP/events.txt")"
sed 's/^/  /' "$TS_TMP/events.txt"
ctl sockets --events --json | python3 -c '
import json, sys
v = json.load(sys.stdin)
tl = [t for t in v["closed"] if t["local"] == "198.18.0.2:7"] + \
     [c for c in v["connections"] if c["local"] == "198.18.0.2:7" and c["state"] != "LISTEN"]
kinds = [e["kind"] for t in tl for e in t["events"]]
assert "rst_received" in kinds, kinds
' || fail "sockets --events --json lacks the rst_received event"

log "connect to a closed port: the node's RST is dumped"
sleep 0.2 # dumps are at least 100 ms apart
ip netns exec "$NS_A" python3 - <<'PY' || fail "connecting to a closed port did not fail with ECONNREFUSED"
import socket
try:
    socket.create_connection(("198.18.0.2", 9), timeout=5)
except ConnectionRefusedError:
    raise SystemExit(0)
raise SystemExit(1)
PY
wait_for "ls '$DUMP'/rst-*-198.18.0.2.9-198.18.0.1.*.pcap" 5 || fail "no dump for the closed port: $(ls "$DUMP")"
f=$(find "$DUMP" -name "rst-*-198.18.0.2.9-198.18.0.1.*.pcap" -print -quit)
tcpdump -nr "$f" >"$TS_TMP/dump2.txt" 2>/dev/null || fail "tcpdump cannot read $f"
grep -q "198.18.0.2.9 > 198.18.0.1.[0-9]*: Flags \[R" "$TS_TMP/dump2.txt" || fail "dump lacks the node's RST: $(cat "$TS_TMP/dump2.txt")"
grep -q "closed_port" "$NODE_LOG" || fail "the log does not give the reason"
ctl status --json | python3 -c '
import json, sys
d = json.load(sys.stdin)["device"]
assert d["rst_dumps_written"] == 2, d
' || fail "status does not count 2 dumps"
pass
