#!/usr/bin/env bash
# libFuzzer smoke, last part: session framing and the encrypted-channel record layer.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/fuzz-smoke.sh" session_frame cat_record
