#!/usr/bin/env bash
# Builds the libFuzzer targets (nightly, sanitizer flags) so that the smoke runs after it
# (test-fuzz-smoke-{a,b,c}.sh) spend their time limit fuzzing, not compiling.
set -euo pipefail
FUZZ_SMOKE_SECONDS=0 exec bash "$(dirname "${BASH_SOURCE[0]}")/fuzz-smoke.sh"
