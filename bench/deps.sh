#!/usr/bin/env bash
# Installs the tools bench/run.sh needs, only those missing, when root with apt.
set -euo pipefail

pkgs=(nftables ethtool iputils-ping util-linux coreutils python3 python3-matplotlib)
if [[ ${EUID} -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
	echo "bench deps: not root or no apt-get, not installing (needed: ${pkgs[*]})"
	exit 0
fi
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
	exit 0
fi
echo "bench deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# matplotlib only draws the chart; bench/report.py falls back to a plain PNG.
apt-get install -y -q --no-install-recommends "${missing[@]}" ||
	apt-get install -y -q --no-install-recommends "${missing[@]/python3-matplotlib/}"
