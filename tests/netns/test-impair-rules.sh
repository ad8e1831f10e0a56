#!/usr/bin/env bash
# Scripted impairment reproduces precise failures (`--impair-rules FILE`):
# - the kernel's first SYN to the node is dropped: the kernel retransmits it after its 1 s
#   initial RTO and the connection still opens;
# - one byte of the node's first data segment is corrupted on the way out: the kernel drops the
#   segment (bad TCP checksum), our TCP retransmits it, the data arrives intact;
# each rule fires exactly once, as `ctl status --json` counts.
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd python3
require_tunstack

cat >"$TS_TMP/rules" <<'RULES'
# the kernel's first SYN never reaches the node
in  tcp dport=7 flags=S  nth=1  drop
# flip byte 45 (inside the TCP payload) of the node's first data segment
out tcp sport=7 flags=PA nth=1  corrupt=45
RULES

lab_up pair
start_node "$NS_A" --tun tun0 --addr 198.18.0.2/24 --name frules --serve echo:7 --impair-rules "$TS_TMP/rules"

t0=$(date +%s.%N)
got=$(ip netns exec "$NS_A" python3 -c "
import socket
s = socket.create_connection(('198.18.0.2', 7), timeout=10)
msg = b'precise failure, reproduced on purpose\n' * 4
s.sendall(msg)
buf = b''
while len(buf) < len(msg):
    d = s.recv(4096)
    if not d:
        break
    buf += d
print('same' if buf == msg else 'different')")
t1=$(date +%s.%N)
[[ $got == same ]] || fail "echo came back $got"
python3 -c "import sys; sys.exit(0 if $t1 - $t0 >= 0.9 else 1)" || fail "the first SYN was not dropped (connected too fast)"
ctl status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
rin = s["impair"]["in"]["rules"]
rout = s["impair"]["out"]["rules"]
assert rin[0]["fired"] == 1 and rin[0]["matched"] >= 2, rin
assert rout[1]["fired"] == 1, rout
assert s["tcp"]["retransmits"] >= 1, s["tcp"]
' || fail "rule counters are off: $(ctl status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["impair"])')"
log "first SYN dropped (connect took $(python3 -c "print(f'{$t1-$t0:.2f}')") s), first data segment corrupted and retransmitted; data intact"
pass
