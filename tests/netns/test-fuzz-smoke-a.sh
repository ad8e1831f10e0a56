#!/usr/bin/env bash
# libFuzzer smoke, first half of the targets (split so each file stays under the runner's
# 300 s per-test limit, build included): IPv4/ICMP input, TCP listening and established.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/fuzz-smoke.sh" ip_input tcp_listen tcp_established
