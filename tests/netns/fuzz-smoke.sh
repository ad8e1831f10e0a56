#!/usr/bin/env bash
# Shared by test-fuzz-smoke-*.sh: a libFuzzer smoke of the named targets, FUZZ_SMOKE_SECONDS
# (default 30) each. No namespaces. Exit codes as in lib.sh: 0 pass, 1 fail (a crash), 77 skip
# (no nightly toolchain, or cargo-fuzz not installable), with the reason on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TS_SKIP_CODE=77 exec bash fuzz/run.sh "${FUZZ_SMOKE_SECONDS:-30}" "$@"
