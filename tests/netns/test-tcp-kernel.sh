#!/usr/bin/env bash
# TCP: our stack against the Linux kernel's TCP, both ways.
#
# pair: kernel clients (nc, python, curl) to the node's services; 100 MB each way byte-exact by
#       SHA-256 (curl download, tcp listen upload, tcp connect sending to a kernel server and
#       receiving from one, echo both ways at once); 1,000 sequential and 200 concurrent
#       connections; a capture checked by tshark (no bad checksums, no malformed packets);
#       the TCP stack options (--congestion, --no-sack, --tcp-buffer) seen in ctl sockets.
# line: nftables drops 2 % of forwarded packets in ts-a; transfers through both kernels still
#       finish byte-exact.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
# tshark and nft are part of what this test checks, not optional extras: without them it
# skips as a whole rather than passing with checks silently left out.
require_cmd nc curl python3 tcpdump tshark nft
require_tunstack

PEER=(python3 "$(dirname "${BASH_SOURCE[0]}")/tcp_peer.py")
BIG=${TCP_TEST_BYTES:-100000000}

# ------------------------------------------------------------------ pair
lab_up pair
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name ftcp \
	--serve echo:7 --serve discard:9 --serve chargen:19 --serve daytime:13 --serve http:80 \
	--serve greet:9000 --serve hello:9001 --serve hold:9002
nsx() { ip netns exec "$NS_A" "$@"; }

log "classic services over nc"
[[ $(echo "hello tunstack" | nsx nc -N -w 5 198.18.0.2 7) == "hello tunstack" ]] || fail "echo"
[[ $(printf 'hello\n' | nsx nc -N -w 5 198.18.0.2 9001) == "world" ]] || fail "hello/world"
[[ $(printf 'one\ntwo\n' | nsx nc -N -w 5 198.18.0.2 9000) == $'Server received: one\nServer received: two' ]] || fail "greet"
# RFC 867: one line, then the server closes. nc has no -N and nothing to send, so only the
# node's FIN ends it; ending near the 5 s idle timeout would mean the node never closed.
t0=$(date +%s%N)
daytime=$(nsx nc -w 5 198.18.0.2 13 </dev/null)
daytime_ms=$((($(date +%s%N) - t0) / 1000000))
grep -Eq '^20[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9:]{8} UTC' <<<"$daytime" || fail "daytime: '$daytime'"
((daytime_ms < 2000)) || fail "daytime: nc took ${daytime_ms} ms, the node did not close the connection"
log "daytime: one line, connection closed by the node after ${daytime_ms} ms"
chargen=$(nsx timeout 5 nc 198.18.0.2 19 </dev/null | head -c 74) || true
[[ $chargen == ' !"#$%&'* ]] || fail "chargen pattern: '$chargen'"

log "capture a transfer for tshark"
CAP=$TS_TMP/tcp.pcap
start_tcpdump "$NS_A" "$TS_TMP/tcpdump.txt" -ni tun0 -w "$CAP" tcp
read -r sent got n < <(nsx "${PEER[@]}" echo 198.18.0.2 7 2000000)
[[ $sent == "$got" && $n == 2000000 ]] || fail "2 MB echo: $sent vs $got ($n bytes)"
sleep 0.3
stop "$TCPDUMP_PID"

log "curl: a page and a ${BIG}-byte download, checked by hash"
nsx curl -sf --max-time 10 http://198.18.0.2/ | grep -q "hello from tunstack" || fail "curl page"
want=$("${PEER[@]}" pattern-sha "$BIG")
t0=$(date +%s.%N)
got=$(nsx curl -sf --max-time 120 "http://198.18.0.2/bytes/$BIG" | sha256sum | cut -d' ' -f1)
t1=$(date +%s.%N)
[[ $got == "$want" ]] || fail "download hash mismatch"
log "download: $(python3 -c "print(f'{$BIG*8/($t1-$t0)/1e6:.0f} Mbit/s')")"

log "${BIG} bytes echoed both ways at once, by python sockets"
read -r sent got n < <(nsx "${PEER[@]}" echo 198.18.0.2 7 "$BIG")
[[ $sent == "$got" && $n == "$BIG" ]] || fail "echo of $BIG bytes: $n bytes back, hashes $sent / $got"

log "1,000 sequential connections"
nsx "${PEER[@]}" sequential 198.18.0.2 7 1000 | grep -q "ok 1000" || fail "sequential connections"
log "200 concurrent connections"
nsx "${PEER[@]}" concurrent 198.18.0.2 7 200 | grep -q "ok 200" || fail "concurrent connections"

log "hold: the window fills and stays shut, the node stays healthy"
# The client fills the window, reports how much the path took, and keeps the socket open.
bg "$NS_A" timeout 20 python3 -c "
import socket, sys, time
s = socket.create_connection(('198.18.0.2', 9002)); s.setblocking(False); n = 0
deadline = time.time() + 3
while time.time() < deadline:
    try:
        n += s.send(b'x' * 65536)
    except BlockingIOError:
        time.sleep(0.05)
print(n, flush=True)
time.sleep(15)" >"$TS_TMP/hold"
HOLD_PID=$BG_PID
wait_for "test -s '$TS_TMP/hold'" 10 || fail "hold client did not report"
held=$(cat "$TS_TMP/hold")
((held > 0 && held < 64000000)) || fail "hold accepted an unexpected amount: $held"
ctl sockets | grep -q "ESTAB" || fail "ctl sockets shows no connection"
ctl sockets --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
held = [c for c in d["connections"] if c["local"].endswith(":9002") and c["state"] == "ESTAB"]
assert held and held[0]["rx_queue"] > 0 and held[0]["rcv_wnd"] == 0, d' ||
	fail "hold: expected a full receive queue and a zero window in ctl sockets --json"
log "hold: the kernel pushed $held bytes, then the window stayed shut"
stop "$HOLD_PID"

log "tshark: checksums and well-formedness"
bad=$(tshark -r "$CAP" -o tcp.check_checksum:TRUE -Y 'tcp.checksum.status == 0 || _ws.malformed || _ws.expert.severity == error' 2>/dev/null | wc -l)
total=$(tshark -r "$CAP" 2>/dev/null | wc -l)
good=$(tshark -r "$CAP" -o tcp.check_checksum:TRUE -Y 'tcp.checksum.status == 1' 2>/dev/null | wc -l)
((total > 100)) || fail "capture too small: $total packets"
((bad == 0)) || fail "tshark found $bad bad packets out of $total"
((good == total)) || fail "tshark verified only $good of $total checksums"
log "tshark: $total packets, all checksums verified good, none malformed"
interrupt "$NODE_PID"

log "tcp listen: the kernel uploads ${BIG} bytes to our listener"
head -c "$BIG" /dev/urandom >"$TS_TMP/up.bin"
want=$(sha256sum "$TS_TMP/up.bin" | cut -d' ' -f1)
# shellcheck disable=SC2217  # bg runs the command with these redirections; it reads stdin
bg "$NS_A" "$TUNSTACK" tcp listen 6000 --tun tun0 --addr 198.18.0.2/24 --name flisten \
	--control "$TS_TMP/listen.sock" --data-dir "$TS_TMP/ldata" >"$TS_TMP/listen.out" 2>"$TS_TMP/listen.err" </dev/null
LPID=$BG_PID
wait_for "grep -q listening '$TS_TMP/listen.err'" 10 || fail "tcp listen did not start"
nsx nc -N -w 30 198.18.0.2 6000 <"$TS_TMP/up.bin" >/dev/null || fail "nc upload failed"
wait "$LPID" || fail "tcp listen exited with an error: $(tail -2 "$TS_TMP/listen.err")"
got=$(sha256sum "$TS_TMP/listen.out" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "upload hash mismatch ($(stat -c %s "$TS_TMP/listen.out") bytes)"

log "tcp connect: our client sends ${BIG} bytes to a kernel server"
bg "$NS_A" "${PEER[@]}" serve-hash 198.18.0.1 6001 >"$TS_TMP/serve.out" 2>&1
wait_for "ip netns exec '$NS_A' ss -ltnH 'sport = :6001' | grep -q 6001" 10 || fail "the kernel server did not start"
nsx "$TUNSTACK" tcp connect 198.18.0.1 6001 --tun tun0 --addr 198.18.0.2/24 --name fconnect \
	--control "$TS_TMP/connect.sock" --data-dir "$TS_TMP/cdata" <"$TS_TMP/up.bin" >"$TS_TMP/connect.out" 2>"$TS_TMP/connect.err" ||
	fail "tcp connect failed: $(tail -2 "$TS_TMP/connect.err")"
[[ $(cat "$TS_TMP/connect.out") == "$BIG $want" ]] || fail "kernel server got: $(cat "$TS_TMP/connect.out")"

log "tcp connect: our client receives ${BIG} bytes from a kernel server"
bg "$NS_A" "${PEER[@]}" send-file 198.18.0.1 6002 "$TS_TMP/up.bin" >"$TS_TMP/sendfile.out" 2>&1
SENDER_PID=$BG_PID
wait_for "ip netns exec '$NS_A' ss -ltnH 'sport = :6002' | grep -q 6002" 10 || fail "the kernel sender did not start"
# Empty stdin: our FIN goes first, then the kernel sends everything and closes; the client
# must keep reading through the half-close and exit on the kernel's FIN.
t0=$(date +%s.%N)
nsx "$TUNSTACK" tcp connect 198.18.0.1 6002 --tun tun0 --addr 198.18.0.2/24 --name freceive \
	--control "$TS_TMP/receive.sock" --data-dir "$TS_TMP/rcdata" </dev/null >"$TS_TMP/receive.out" 2>"$TS_TMP/receive.err" ||
	fail "tcp connect (receiving) failed: $(tail -2 "$TS_TMP/receive.err")"
t1=$(date +%s.%N)
wait "$SENDER_PID" || fail "the kernel sender failed: $(cat "$TS_TMP/sendfile.out")"
got=$(sha256sum "$TS_TMP/receive.out" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "received hash mismatch ($(stat -c %s "$TS_TMP/receive.out") of $BIG bytes)"
log "kernel -> tcp connect: $(python3 -c "print(f'{$BIG*8/($t1-$t0)/1e6:.0f} Mbit/s')"), byte-exact"

log "tcp connect to a closed port is refused"
if nsx "$TUNSTACK" tcp connect 198.18.0.1 6999 --tun tun0 --addr 198.18.0.2/24 --name frefused \
	--control "$TS_TMP/r.sock" --data-dir "$TS_TMP/rdata" </dev/null >/dev/null 2>"$TS_TMP/refused.err"; then
	fail "connect to a closed port succeeded"
fi
grep -qi "refused" "$TS_TMP/refused.err" || fail "refusal unclear: $(cat "$TS_TMP/refused.err")"

log "TCP stack options reach the connections (ctl sockets --json)"
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name fopts --serve hold:9002 \
	--congestion newreno --no-sack --tcp-buffer 64K --nodelay --keepalive 60s --time-wait 500ms
OPTS_NODE=$NODE_PID
bg "$NS_A" timeout 20 python3 -c "
import socket, time
s = socket.create_connection(('198.18.0.2', 9002)); s.setblocking(False)
deadline = time.time() + 2
while time.time() < deadline:
    try:
        s.send(b'x' * 65536)
    except BlockingIOError:
        time.sleep(0.05)
print('filled', flush=True)
time.sleep(15)" >"$TS_TMP/opts-hold"
OPTS_CLIENT=$BG_PID
wait_for "test -s '$TS_TMP/opts-hold'" 10 || fail "options: the client did not fill the window"
ctl sockets --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
c = [c for c in d["connections"] if c["local"].endswith(":9002") and c["state"] == "ESTAB"]
assert c, d
c = c[0]
# A 64 KiB receive buffer, full (less than a segment of window left); NewReno; no SACK.
assert c["congestion"].lower() == "newreno", c
assert c["sack"] is False, c
assert 60000 <= c["rx_queue"] <= 65536 and c["rcv_wnd"] < c["mss"], c
q = c["rx_queue"]
print(f"newreno, no SACK, rx_queue {q} of 65536")' ||
	fail "options: ctl sockets --json does not show --congestion/--no-sack/--tcp-buffer"
stop "$OPTS_CLIENT"
interrupt "$OPTS_NODE"

# ------------------------------------------------------------------ line
log "line: 2% of forwarded packets dropped by nftables in ts-a"
lab_up line
ip netns exec "$NS_A" nft -f - <<'NFT'
table inet tsloss {
	counter dropped { }
	chain forward {
		type filter hook forward priority 0; policy accept;
		numgen random mod 100 < 2 counter name dropped drop
	}
}
NFT
start_node "$NS_A" --tun tun0 --addr 198.18.1.2/24 --name fline --serve echo:7 --serve http:80
nsb() { ip netns exec "$NS_B" "$@"; }
LOSSY=${TCP_LOSSY_BYTES:-20000000}
want=$("${PEER[@]}" pattern-sha "$LOSSY")
got=$(nsb curl -sf --max-time 120 "http://198.18.1.2/bytes/$LOSSY" | sha256sum | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "lossy download hash mismatch"
read -r sent got n < <(nsb "${PEER[@]}" echo 198.18.1.2 7 5000000)
[[ $sent == "$got" && $n == 5000000 ]] || fail "lossy echo: $n bytes, $sent vs $got"
dropped=$(ip netns exec "$NS_A" nft list counter inet tsloss dropped | sed -n 's/.*packets \([0-9]*\).*/\1/p')
((dropped > 50)) || fail "nftables dropped only $dropped packets"
retrans=$(ctl status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tcp"]["retransmits"])')
log "lossy path: nftables dropped $dropped packets, the node retransmitted $retrans segments, data byte-exact"
((retrans > 0)) || fail "no retransmissions on a lossy path?"

pass
