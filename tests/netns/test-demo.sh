#!/usr/bin/env bash
# `make demo` is the README's first command: its script must run to the end on this machine,
# and every step must have shown what it claims (ping answered, curl/nc answered by our TCP,
# the message and the file delivered between the two nodes).
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
require_cmd tcpdump curl nc
require_tunstack

OUT=$TS_TMP/demo.out
TUNSTACK=$TUNSTACK timeout 120 bash "$TS_ROOT/netns-scripts/demo.sh" >"$OUT" 2>&1 || {
	tail -20 "$OUT" >&2
	fail "the demo failed"
}
for want in \
	'4 packets transmitted, 4 received' \
	'ICMP echo reply' \
	'hello from tunstack' \
	'^world$' \
	'100 MB in [0-9]+ Mbit/s' \
	'delivered to 198.18.1.2' \
	'received/photo.bin: sha256 [0-9a-f]+\.\.\. matches' \
	'\(bob\) \[general\]: hello alice, this is bob' \
	'^done: lab removed'; do
	grep -Eq "$want" "$OUT" || fail "the demo's output lacks /$want/"
done
ip netns list | grep -q '^ts-demo-' && fail "the demo left namespaces behind"
log "the demo ran every step: $(grep -E '100 MB in' "$OUT")"
pass
