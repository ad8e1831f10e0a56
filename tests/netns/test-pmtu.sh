#!/usr/bin/env bash
# Path MTU discovery through a real kernel router (RFC 1191). In the `line` lab the veth end
# that leaves ts-a towards ts-b gets an MTU of 1280, so ts-a's kernel answers our 1500-byte DF
# packets with ICMP "fragmentation needed" (the other direction keeps 1500):
# - protocol 171: a 5 MB file A -> B arrives byte-exact, A lowers its path MTU to B and offers
#   the transfer again with smaller chunks, and no 171 packet reaching B is a fragment or
#   larger than 1280 bytes (tcpdump + tshark on B's tun0);
# - TCP: the kernel in ts-b downloads 5 MB over HTTP from node A, whose segments shrink to the
#   path MTU (A counts the ICMP errors), byte-exact.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd python3 curl tcpdump tshark
require_tunstack

PEER=(python3 "$(dirname "${BASH_SOURCE[0]}")/tcp_peer.py")
PATH_MTU=1280
BYTES=5000000

lab_up line
ip -n "$NS_A" link set dev ts-ab mtu "$PATH_MTU"

DATA_B=$TS_TMP/bdata
start_node "$NS_A" --tun tun0 --addr 198.18.1.2/24 --name pa --control "$TS_TMP/a.sock" --serve http:80
start_node "$NS_B" --tun tun0 --addr 198.18.2.2/24 --name pb --control "$TS_TMP/b.sock" \
	--data-dir "$DATA_B" --peer 198.18.1.2
cta() { "$TUNSTACK" ctl --control "$TS_TMP/a.sock" "$@"; }
status_a() { cta status --json | python3 -c "import json,sys; v=json.load(sys.stdin); print(v$1)"; }

wait_for "cta peers --json | grep -q 198.18.2.2" 15 || fail "A never heard of B"

CAP=$TS_TMP/b171.pcap
start_tcpdump "$NS_B" "$TS_TMP/tcpdump.txt" -ni tun0 -w "$CAP" 'ip proto 171'

log "protocol 171: a file A -> B through a ${PATH_MTU}-byte hop"
head -c "$BYTES" /dev/urandom >"$TS_TMP/f.bin"
want=$(sha256sum "$TS_TMP/f.bin" | cut -d' ' -f1)
cta file 198.18.2.2 "$TS_TMP/f.bin" >"$TS_TMP/file.out" 2>&1 || fail "file send failed: $(cat "$TS_TMP/file.out")"
got=$(sha256sum "$DATA_B/received/f.bin" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "received file differs"
lowered=$(status_a '["file"]["pmtu_lowered"]')
rechunked=$(status_a '["file"]["rechunked"]')
((lowered >= 1 && rechunked >= 1)) || fail "A did not adapt: path MTU lowered $lowered times, re-chunked $rechunked"
stop "$TCPDUMP_PID"
frags=$(tshark -r "$CAP" -Y 'ip.flags.mf == 1 || ip.frag_offset > 0' 2>/dev/null | wc -l)
largest=$(tshark -r "$CAP" -T fields -e ip.len 2>/dev/null | sort -n | tail -1)
packets=$(tshark -r "$CAP" 2>/dev/null | wc -l)
((packets > BYTES / PATH_MTU)) || fail "the capture holds only $packets packets"
((frags == 0)) || fail "$frags fragments of protocol 171 reached B"
((largest <= PATH_MTU)) || fail "a $largest-byte packet reached B through a $PATH_MTU-byte hop"
log "171: byte-exact; A lowered its path MTU $lowered time(s) and re-chunked; $packets packets at B, largest $largest bytes, no fragments"

log "TCP: the kernel in ts-b downloads ${BYTES} bytes from node A"
icmp_before=$(status_a '["tcp"]["icmp_errors"]')
want=$("${PEER[@]}" pattern-sha "$BYTES")
got=$(ip netns exec "$NS_B" curl -s --max-time 60 "http://198.18.1.2/bytes/$BYTES" | sha256sum | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "HTTP body through the narrow hop differs"
icmp_after=$(status_a '["tcp"]["icmp_errors"]')
((icmp_after > icmp_before)) || fail "A's TCP saw no ICMP error: the segments never met the narrow hop"
log "TCP: byte-exact; A's TCP took $((icmp_after - icmp_before)) ICMP report(s) and shrank its segments"

pass
