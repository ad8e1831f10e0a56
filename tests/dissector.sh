#!/usr/bin/env bash
# The Wireshark dissector (tools/wireshark/tunstack.lua) against a real capture.
#
# Builds and runs examples/capture_protocols.rs (two stacks in the simulator exchanging messages
# and the file notes.txt), reads the pcap with tshark and the dissector, and checks decoded field
# values: message id/content/sender/channel, HELLO names, ACKs, the file OFFER, DATA offsets, DONE,
# CRC-32C status on every packet, the Info column. Then flips one payload byte in a copy of the
# capture and checks that exactly that packet shows its CRC as incorrect, with an expert info.
#
# Run from anywhere: bash tests/dissector.sh
# Exit codes: 0 pass, 1 fail, 77 skip (tshark or python3 missing).
# Prints "dissector: N passed, M failed" at the end.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lua=$root/tools/wireshark/tunstack.lua
cargo=${CARGO:-cargo}

command -v tshark >/dev/null 2>&1 || { echo "SKIP: tshark not installed (make deps)"; exit 77; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 not installed (make deps)"; exit 77; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tunstack-dissector.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0

# check NAME WANT GOT: one assertion, one line of output.
check() {
	local name=$1 want=$2 got=$3
	if [[ $want == "$got" ]]; then
		echo "ok   $name"
		passed=$((passed + 1))
	else
		# Long decoded contents would flood the log: show the start.
		echo "FAIL $name: want [${want:0:300}], got [${got:0:300}]"
		failed=$((failed + 1))
	fi
}

# ts PCAP ARGS...: tshark with the dissector; its "running as root" chatter is dropped, anything
# else on stderr (a Lua error while loading) is kept in $tmp/tshark.err and reported.
ts() {
	local pcap=$1
	shift
	# Runs in command substitutions, where a failure would only look like empty output: leave a
	# mark that the summary turns into a failed check.
	if ! tshark -X "lua_script:$lua" -r "$pcap" "$@" 2>"$tmp/tshark.err"; then
		cat "$tmp/tshark.err" >&2
		echo "tshark $* failed" >>"$tmp/tshark-failures"
		return 1
	fi
	if grep -v -e 'Running as user' -e 'This could be dangerous' "$tmp/tshark.err" >&2; then
		echo "tshark $* wrote to stderr (above)" >>"$tmp/tshark-failures"
		return 1
	fi
}

# fields PCAP FILTER FIELD...: one line per packet, fields separated by '|'.
fields() {
	local pcap=$1 filter=$2
	shift 2
	local args=() f
	for f in "$@"; do args+=(-e "$f"); done
	ts "$pcap" -Y "$filter" -T fields -E separator='|' -E occurrence=a -E aggregator=, "${args[@]}"
}

count() {
	local pcap=$1 filter=$2
	ts "$pcap" -Y "$filter" -T fields -e frame.number | wc -l | tr -d ' '
}

echo "building and running examples/capture_protocols"
(cd "$root" && "$cargo" build --release --quiet --example capture_protocols)
"$root/target/release/examples/capture_protocols" "$tmp/out.pcap"
pcap=$tmp/out.pcap

summary() {
	echo "dissector: $passed passed, $failed failed"
	((failed == 0))
}

if ! ts "$pcap" -T fields -e frame.number >"$tmp/frames"; then
	check "tshark loads the dissector and reads the capture" ok failed
	summary
	exit 1
fi
total=$(wc -l <"$tmp/frames" | tr -d ' ')
echo "capture: $total packets"
check "capture has packets" yes "$( ((total >= 10)) && echo yes || echo no)"
check "every packet is protocol 170 or 171" "$total" "$(count "$pcap" 'ip.proto == 170 || ip.proto == 171')"
check "every packet decoded by the dissector" "$total" "$(count "$pcap" 'tunstack.msg.type || tunstack.file.type')"
check "no malformed packets, no Lua errors" 0 "$(count "$pcap" '_ws.malformed || _ws.lua || _ws.expert.severity == error')"
ts "$pcap" -V >"$tmp/verbose.txt"
check "verbose output has no Lua error" 0 "$(grep -c 'Lua Error' "$tmp/verbose.txt" || true)"

# CRC-32C, computed in Lua, agrees with the stack's on every packet.
check "CRC correct on every packet" "$total" \
	"$(count "$pcap" 'tunstack.msg.checksum.status == 1 || tunstack.file.checksum.status == 1')"
check "CRC shown as [correct]" "$total" "$(grep -c 'CRC-32C: 0x[0-9a-f]* \[correct\]' "$tmp/verbose.txt" || true)"

# Protocol 170: the known message, whole in one DATA segment.
hello=$(fields "$pcap" 'tunstack.msg.content == "hello dissector"' \
	tunstack.msg.type tunstack.msg.sender tunstack.msg.channel tunstack.msg.timestamp \
	tunstack.msg.is_file tunstack.msg.content_length tunstack.msg.flags.first tunstack.msg.flags.last \
	tunstack.msg.node_id tunstack.msg.message_id | head -1)
check "message content/sender/channel/timestamp/message id" \
	"1|alice|lab|2026-01-01T00:00:00Z|0|15|1|1|0x0000000000001001|1" "$hello"
check "Info column of the message" 1 \
	"$(ts "$pcap" -Y 'tunstack.msg.type == 1' | grep -c 'MSG DATA seq=0 \[SYN,FIRST,LAST\] alice@lab "hello dissector"' || true)"
check "message from beta" "bob|lab|1" \
	"$(fields "$pcap" 'tunstack.msg.content == "hi alice"' tunstack.msg.sender tunstack.msg.channel tunstack.msg.message_id | head -1)"
# Message ids count per sender: alpha's second message is its id 2.
check "message id of alpha's second message" 2 \
	"$(fields "$pcap" 'tunstack.msg.content == "second message"' tunstack.msg.message_id | head -1)"
# The 3200-byte message spans three segments and is reassembled at its LAST one.
check "long message reassembled" "3|bulk|3200|3" \
	"$(fields "$pcap" 'tunstack.msg.segment_count' tunstack.msg.segment_count tunstack.msg.channel tunstack.msg.content_length tunstack.msg.message_id)"
check "HELLO names" "alpha,beta" \
	"$(fields "$pcap" 'tunstack.msg.type == 3' tunstack.msg.hello.name | sort -u | paste -sd,)"
check "HELLO REQUEST and ECHO flags" "2|2" \
	"$(count "$pcap" 'tunstack.msg.flags.request == 1')|$(count "$pcap" 'tunstack.msg.flags.echo == 1')"
acks=$(count "$pcap" 'tunstack.msg.type == 2 && tunstack.msg.ack >= 1')
check "an ACK with a cumulative ack" yes "$( ((acks >= 1)) && echo yes || echo no)"
check "ACK of all five alpha segments" 1 "$(count "$pcap" 'tunstack.msg.type == 2 && tunstack.msg.ack == 5 && tunstack.msg.sack_count == 0')"

# Protocol 171: the OFFER of notes.txt, its DATA chunks, DONE.
notes_sha=$(python3 -c 'import hashlib; print(hashlib.sha256((b"notes for the dissector test\n" * 200)[:4000]).hexdigest())')
check "file OFFER name/size/chunk size/sha256/channel/sender" "1|notes.txt|4000|1424|$notes_sha|lab|alice|3" \
	"$(fields "$pcap" 'tunstack.file.type == 1' tunstack.file.type tunstack.file.name tunstack.file.size \
		tunstack.file.chunk_size tunstack.file.sha256 tunstack.file.channel tunstack.file.sender tunstack.file.chunk_count)"
check "Info column of the OFFER" 1 \
	"$(ts "$pcap" -Y 'tunstack.file.type == 1' | grep -c 'FILE OFFER name=notes.txt size=4000' || true)"
check "file DATA chunks and offsets" "0|0|1424 1|1424|1424 2|2848|1152" \
	"$(fields "$pcap" 'tunstack.file.type == 4' tunstack.file.chunk tunstack.file.offset tunstack.file.data_length | paste -sd' ')"
check "file DATA bytes are the file" "$notes_sha" \
	"$(fields "$pcap" 'tunstack.file.type == 4' tunstack.file.data | tr -d ':\n' | python3 -c 'import sys, hashlib; print(hashlib.sha256(bytes.fromhex(sys.stdin.read())).hexdigest())')"
check "file ACCEPT and DONE (ok)" "1 0" \
	"$(count "$pcap" 'tunstack.file.type == 2') $(fields "$pcap" 'tunstack.file.type == 6' tunstack.file.status)"
check "one transfer id throughout" 1 "$(fields "$pcap" tunstack.file tunstack.file.transfer_id | sort -u | wc -l | tr -d ' ')"

# A flipped byte in the "hello dissector" content: that packet, and only it, fails the CRC.
python3 - "$pcap" "$tmp/bad.pcap" <<'EOF'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
i = data.find(b"hello dissector")
assert i > 0, "content not found in the capture"
data[i] ^= 0x20  # "hello" -> "Hello"
open(sys.argv[2], "wb").write(data)
EOF
check "corrupted packet: CRC incorrect" "Hello dissector|0" \
	"$(fields "$tmp/bad.pcap" 'tunstack.msg.checksum.status == 0' tunstack.msg.content tunstack.msg.checksum.status)"
check "corrupted packet: expert info" 1 "$(count "$tmp/bad.pcap" 'tunstack.msg.bad_crc')"
check "corrupted packet: [incorrect] and [BAD CRC] shown" "1 1" \
	"$(ts "$tmp/bad.pcap" -V | grep -c 'CRC-32C: 0x[0-9a-f]* \[incorrect, should be 0x[0-9a-f]*\]' || true) $(ts "$tmp/bad.pcap" | grep -c 'BAD CRC' || true)"
check "corrupted capture: every other packet still correct" "$((total - 1))" \
	"$(count "$tmp/bad.pcap" 'tunstack.msg.checksum.status == 1 || tunstack.file.checksum.status == 1')"

check "every tshark run succeeded, nothing on stderr" "" "$(cat "$tmp/tshark-failures" 2>/dev/null || true)"

summary
