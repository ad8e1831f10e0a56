#!/usr/bin/env bash
# The Wireshark dissector for protocols 170 and 171 (tools/wireshark/tunstack.lua) decodes a
# simulator capture correctly: see tests/dissector.sh. No namespaces: it is here so that
# `make test` (run-all.sh) runs it. Exit codes as in lib.sh: 0 pass, 1 fail, 77 skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec bash tests/dissector.sh
