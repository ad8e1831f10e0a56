#!/usr/bin/env bash
# TUN segmentation offload (`--offload`: IFF_VNET_HDR + TSO4), against the kernel's TCP.
#
# pair: a 100 MB curl download from the node (our segments joined into super-segments) and a
#       100 MB nc upload to `tcp listen --offload` (the kernel's TSO super-segments read whole),
#       both byte-exact by SHA-256; the node counts super-segments both ways; the node's own
#       --pcap capture holds MTU-sized segments only, every checksum good (tshark); a node
#       started afterwards on the same persistent device without --offload still works (the
#       offloads are switched off again).
# line: node A (--offload) sends 20 MB with `tcp connect` to node B (plain) through ts-a's and
#       ts-b's kernels, which cut A's super-segments back into segments B can take; byte-exact.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd nc curl python3 tshark
require_tunstack

PEER=(python3 "$(dirname "${BASH_SOURCE[0]}")/tcp_peer.py")
BIG=${OFFLOAD_TEST_BYTES:-100000000}
counter() { ctl status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['device']['$1'])"; }

# ------------------------------------------------------------------ pair
lab_up pair
nsx() { ip netns exec "$NS_A" "$@"; }
CAP=$TS_TMP/own.pcap
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name foff --offload --serve http:80 --pcap "$CAP"

log "curl: a ${BIG}-byte download through the offload, checked by hash"
want=$("${PEER[@]}" pattern-sha "$BIG")
t0=$(date +%s.%N)
got=$(nsx curl -sf --max-time 120 "http://198.18.0.2/bytes/$BIG" | sha256sum | cut -d' ' -f1)
t1=$(date +%s.%N)
[[ $got == "$want" ]] || fail "download hash mismatch"
out=$(counter offload_out)
segs=$(counter offload_out_segments)
((out > 100 && segs > 2 * out)) || fail "the node wrote $out super-segments carrying $segs segments"
log "download: $(python3 -c "print(round($BIG * 8 / ($t1 - $t0) / 1e6))") Mbit/s; $out super-segments carried $segs segments"
interrupt "$NODE_PID"

bad=$(tshark -r "$CAP" -o tcp.check_checksum:TRUE -Y 'tcp.checksum.status == 0 || _ws.malformed' 2>/dev/null | wc -l)
largest=$(tshark -r "$CAP" -Y 'ip.src == 198.18.0.2' -T fields -e ip.len 2>/dev/null | sort -n | tail -1)
((bad == 0)) || fail "tshark found $bad bad packets in the node's own capture"
((largest <= 1500)) || fail "the node's capture holds a ${largest}-byte packet: --pcap must show the stack's own segments"
log "--pcap: the node's own segments, at most $largest bytes, checksums good"

log "tcp listen --offload: the kernel uploads ${BIG} bytes in TSO super-segments"
head -c "$BIG" /dev/urandom >"$TS_TMP/up.bin"
want=$(sha256sum "$TS_TMP/up.bin" | cut -d' ' -f1)
# shellcheck disable=SC2217  # bg runs the command with these redirections; it reads stdin
bg "$NS_A" "$TUNSTACK" tcp listen 6000 --tun tun0 --addr 198.18.0.2/24 --name flisten --offload \
	--control "$TS_TMP/listen.sock" --data-dir "$TS_TMP/ldata" >"$TS_TMP/listen.out" 2>"$TS_TMP/listen.err" </dev/null
LPID=$BG_PID
wait_for "grep -q listening '$TS_TMP/listen.err'" 10 || fail "tcp listen did not start"
nsx nc -N -w 30 198.18.0.2 6000 <"$TS_TMP/up.bin" >/dev/null || fail "nc upload failed"
wait "$LPID" || fail "tcp listen exited with an error: $(tail -2 "$TS_TMP/listen.err")"
got=$(sha256sum "$TS_TMP/listen.out" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "upload hash mismatch ($(stat -c %s "$TS_TMP/listen.out") bytes)"
log "upload byte-exact"

log "the kernel's super-segments arrive whole: ${BIG} bytes to discard"
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name fdiscard --offload --serve discard:9
nsx nc -N -w 30 198.18.0.2 9 <"$TS_TMP/up.bin" >/dev/null || fail "nc upload to discard failed"
super_in=$(counter offload_in)
read_pkts=$(counter packets_read)
((super_in > 100)) || fail "the node read $super_in super-segments"
log "${super_in} of ${read_pkts} packets read were super-segments"
interrupt "$NODE_PID"

log "the same persistent device without --offload"
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name fplain --serve http:80
want=$("${PEER[@]}" pattern-sha 5000000)
got=$(nsx curl -sf --max-time 30 "http://198.18.0.2/bytes/5000000" | sha256sum | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "plain download after an offload run: hash mismatch"
((($(counter offload_in) + $(counter offload_out)) == 0)) || fail "a plain node saw super-segments"
interrupt "$NODE_PID"

# ------------------------------------------------------------------ line
lab_up line
log "line: node A (--offload) -> node B (plain), 20 MB through two kernels"
head -c 20000000 /dev/urandom >"$TS_TMP/line.bin"
want=$(sha256sum "$TS_TMP/line.bin" | cut -d' ' -f1)
# shellcheck disable=SC2217
bg "$NS_B" "$TUNSTACK" tcp listen 6001 --tun tun0 --addr 198.18.2.2/24 --name lb \
	--control "$TS_TMP/lb.sock" --data-dir "$TS_TMP/lbdata" >"$TS_TMP/lb.out" 2>"$TS_TMP/lb.err" </dev/null
LPID=$BG_PID
wait_for "grep -q listening '$TS_TMP/lb.err'" 10 || fail "B's tcp listen did not start"
ip netns exec "$NS_A" "$TUNSTACK" tcp connect 198.18.2.2 6001 --tun tun0 --addr 198.18.1.2/24 --name la --offload \
	--control "$TS_TMP/la.sock" --data-dir "$TS_TMP/ladata" <"$TS_TMP/line.bin" >/dev/null 2>"$TS_TMP/la.err" ||
	fail "A's tcp connect failed: $(tail -2 "$TS_TMP/la.err")"
wait "$LPID" || fail "B's tcp listen exited with an error: $(tail -2 "$TS_TMP/lb.err")"
got=$(sha256sum "$TS_TMP/lb.out" | cut -d' ' -f1)
[[ $got == "$want" ]] || fail "B received something else ($(stat -c %s "$TS_TMP/lb.out") bytes)"
log "B received the 20 MB byte-exact"

pass
