#!/usr/bin/env bash
# libFuzzer smoke, second half: protocols 170/171 decoding and the file receiver.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/fuzz-smoke.sh" msg_decode file_decode file_receiver
