#!/usr/bin/env bash
# Build, inspect and remove the tunstack lab: network namespaces holding a
# persistent TUN device (tun0) each, wired together with veth pairs.
#
#   setup-netns.sh up     pair | line | star N
#   setup-netns.sh down   [pair | line | star N]
#   setup-netns.sh status [pair | line | star N]
#
# Everything lives inside namespaces named "${TS_PREFIX}..." (default prefix
# "ts-"). Veth pairs are created directly inside their namespaces, so the root
# namespace never sees a device, an address, a route or a sysctl change, and
# parallel labs with different prefixes cannot collide on device names.
# Only addresses from 198.18.0.0/15 (RFC 2544) are used. No default routes.
set -euo pipefail

PREFIX="${TS_PREFIX:-ts-}"
MAX_STAR=8

die() {
	echo "setup-netns: error: $*" >&2
	exit 1
}

usage() {
	cat >&2 <<EOF
usage: $0 up|down|status TOPOLOGY
  TOPOLOGY: pair | line | star N   (N = 1..$MAX_STAR)
  down and status also work without a topology (they cover every one).
  env TS_PREFIX: namespace name prefix (default "ts-")
EOF
	exit 2
}

preflight() {
	[[ ${EUID} -eq 0 ]] || die "must run as root (namespaces and TUN devices need CAP_NET_ADMIN / CAP_SYS_ADMIN)"
	command -v ip >/dev/null 2>&1 || die "'ip' not found; install iproute2 (apt-get install -y iproute2)"
	# Namespace names end up in /run/netns paths and in messages; keep them tame.
	[[ ${PREFIX} =~ ^[A-Za-z0-9._-]+$ ]] || die "TS_PREFIX may only contain letters, digits, '.', '_' and '-'"
}

# Every namespace name this script may ever create with the current prefix.
# `down` removes exactly these, never anything else that happens to share the
# prefix (another test's "ts-foo-12-a" starts with "ts-" too).
all_known_ns() {
	local i
	echo "${PREFIX}a" "${PREFIX}b" "${PREFIX}hub"
	for ((i = 1; i <= MAX_STAR; i++)); do echo "${PREFIX}n${i}"; done
}

ns_exists() {
	[[ -e "/run/netns/$1" ]]
}

nsx() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

# sysctl inside a namespace; falls back to /proc when procps is absent.
ns_sysctl() {
	local ns=$1 key=$2 val=$3
	if command -v sysctl >/dev/null 2>&1; then
		nsx "$ns" sysctl -qw "${key}=${val}"
	else
		nsx "$ns" tee "/proc/sys/${key//.//}" <<<"$val" >/dev/null
	fi
}

ensure_ns() {
	local ns=$1
	ns_exists "$ns" || ip netns add "$ns"
	ip -n "$ns" link set lo up
	ns_sysctl "$ns" net.ipv4.ip_forward 1
	# The node may source packets from addresses the kernel does not route back
	# the same way (e.g. while experimenting); strict reverse-path filtering would
	# silently drop them and make tests lie.
	ns_sysctl "$ns" net.ipv4.conf.all.rp_filter 0
	ns_sysctl "$ns" net.ipv4.conf.default.rp_filter 0
	# The node speaks IPv4 only; kernel IPv6 chatter (router solicitations, MLD)
	# on tun0 would only show up as noise in captures and drop counters.
	if nsx "$ns" test -d /proc/sys/net/ipv6; then
		ns_sysctl "$ns" net.ipv6.conf.all.disable_ipv6 1
		ns_sysctl "$ns" net.ipv6.conf.default.disable_ipv6 1
	fi
}

link_exists() {
	ip -n "$1" link show dev "$2" >/dev/null 2>&1
}

# Make DEV in NS carry exactly the one IPv4 address CIDR (idempotent; also
# repairs a device left over from another topology with the same names).
set_addr() {
	local ns=$1 dev=$2 cidr=$3 current
	current=$(ip -n "$ns" -4 -o addr show dev "$dev" | awk '{print $4}' | tr '\n' ' ')
	if [[ ${current} != "${cidr} " ]]; then
		ip -n "$ns" -4 addr flush dev "$dev"
		ip -n "$ns" addr add "$cidr" dev "$dev"
	fi
}

ensure_tun() {
	local ns=$1 cidr=$2
	[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (modprobe tun?)"
	if ! link_exists "$ns" tun0; then
		# No "pi" flag: the node opens it with IFF_NO_PI and reads bare IP packets.
		ip -n "$ns" tuntap add dev tun0 mode tun
	fi
	set_addr "$ns" tun0 "$cidr"
	ns_sysctl "$ns" net.ipv4.conf.tun0.rp_filter 0
	ip -n "$ns" link set tun0 up
}

no_offload() {
	local ns=$1 dev=$2
	# Checksum offload on veth leaves partial checksums in packets that reach
	# tun0 by forwarding; the node must see finished checksums.
	if command -v ethtool >/dev/null 2>&1; then
		nsx "$ns" ethtool -K "$dev" tx off >/dev/null 2>&1 || true
	fi
}

# A veth pair whose ends are born inside their namespaces.
ensure_veth() {
	local ns1=$1 dev1=$2 ns2=$3 dev2=$4
	if link_exists "$ns1" "$dev1" && ! link_exists "$ns2" "$dev2"; then
		ip -n "$ns1" link del "$dev1"
	fi
	if ! link_exists "$ns1" "$dev1"; then
		ip -n "$ns2" link del "$dev2" 2>/dev/null || true
		ip -n "$ns1" link add "$dev1" type veth peer name "$dev2" netns "$ns2"
	fi
	no_offload "$ns1" "$dev1"
	no_offload "$ns2" "$dev2"
	ns_sysctl "$ns1" "net.ipv4.conf.${dev1}.rp_filter" 0
	ns_sysctl "$ns2" "net.ipv4.conf.${dev2}.rp_filter" 0
}

# Delete every known namespace of this prefix that is not in the wanted list,
# so switching topologies never leaves stale pieces behind.
prune_except() {
	local ns keep w
	for ns in $(all_known_ns); do
		keep=0
		for w in "$@"; do [[ $ns == "$w" ]] && keep=1; done
		if ((keep == 0)) && ns_exists "$ns"; then
			ip netns del "$ns"
		fi
	done
}

topo_namespaces() {
	local i
	case $1 in
	pair) echo "${PREFIX}a" ;;
	line) echo "${PREFIX}a" "${PREFIX}b" ;;
	star)
		echo "${PREFIX}hub"
		for ((i = 1; i <= $2; i++)); do echo "${PREFIX}n${i}"; done
		;;
	esac
}

up_pair() {
	local a="${PREFIX}a"
	# shellcheck disable=SC2046  # word splitting of namespace names is intended
	prune_except $(topo_namespaces pair)
	ensure_ns "$a"
	ensure_tun "$a" 198.18.0.1/24
	ip -n "$a" -4 route flush scope global 2>/dev/null || true
}

up_line() {
	local a="${PREFIX}a" b="${PREFIX}b"
	# shellcheck disable=SC2046
	prune_except $(topo_namespaces line)
	ensure_ns "$a"
	ensure_ns "$b"
	ensure_tun "$a" 198.18.1.1/24
	ensure_tun "$b" 198.18.2.1/24
	ensure_veth "$a" ts-ab "$b" ts-ba
	set_addr "$a" ts-ab 198.19.0.1/30
	set_addr "$b" ts-ba 198.19.0.2/30
	ip -n "$a" link set ts-ab up
	ip -n "$b" link set ts-ba up
	ip -n "$a" route replace 198.18.2.0/24 via 198.19.0.2 dev ts-ab
	ip -n "$b" route replace 198.18.1.0/24 via 198.19.0.1 dev ts-ba
}

up_star() {
	local n=$1 hub="${PREFIX}hub" i j ns
	# shellcheck disable=SC2046
	prune_except $(topo_namespaces star "$n")
	ensure_ns "$hub"
	if ! link_exists "$hub" br0; then
		ip -n "$hub" link add br0 type bridge
	fi
	set_addr "$hub" br0 198.19.1.254/24
	ip -n "$hub" link set br0 up
	for ((i = 1; i <= n; i++)); do
		ns="${PREFIX}n${i}"
		ensure_ns "$ns"
		ensure_tun "$ns" "198.18.${i}.1/24"
		ensure_veth "$ns" ts-up "$hub" "ts-n${i}"
		ip -n "$hub" link set "ts-n${i}" master br0
		ip -n "$hub" link set "ts-n${i}" up
		set_addr "$ns" ts-up "198.19.1.${i}/24"
		ip -n "$ns" link set ts-up up
	done
	for ((i = 1; i <= n; i++)); do
		ns="${PREFIX}n${i}"
		# Drop routes to nodes that existed in a bigger star before.
		for ((j = 1; j <= MAX_STAR; j++)); do
			((j == i)) && continue
			if ((j <= n)); then
				ip -n "$ns" route replace "198.18.${j}.0/24" via "198.19.1.${j}" dev ts-up
			else
				ip -n "$ns" route del "198.18.${j}.0/24" 2>/dev/null || true
			fi
		done
	done
}

print_plan() {
	local topo=$1 n=${2:-0} i
	echo
	echo "tunstack lab '${topo}${2:+ $2}' is up (namespace prefix '${PREFIX}')"
	printf '%-12s %-8s %-18s %-16s %s\n' NAMESPACE DEVICE KERNEL-ADDRESS NODE-ADDRESS NOTE
	case $topo in
	pair)
		printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}a" tun0 198.18.0.1/24 198.18.0.2 ""
		;;
	line)
		printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}a" tun0 198.18.1.1/24 198.18.1.2 ""
		printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}a" ts-ab 198.19.0.1/30 - "198.18.2.0/24 via 198.19.0.2"
		printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}b" tun0 198.18.2.1/24 198.18.2.2 ""
		printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}b" ts-ba 198.19.0.2/30 - "198.18.1.0/24 via 198.19.0.1"
		;;
	star)
		printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}hub" br0 198.19.1.254/24 - "bridge of ts-n1..ts-n${n}"
		for ((i = 1; i <= n; i++)); do
			printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}n${i}" tun0 "198.18.${i}.1/24" "198.18.${i}.2" ""
			printf '%-12s %-8s %-18s %-16s %s\n' "${PREFIX}n${i}" ts-up "198.19.1.${i}/24" - "198.18.j.0/24 via 198.19.1.j"
		done
		;;
	esac
}

do_up() {
	local topo=${1:-}
	case $topo in
	pair) up_pair ;;
	line) up_line ;;
	star)
		local n=${2:-}
		if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > MAX_STAR)); then
			die "star needs a node count 1..$MAX_STAR"
		fi
		up_star "$n"
		;;
	*) usage ;;
	esac
	print_plan "$@"
}

do_down() {
	local ns removed=0
	# Without a topology, or with any topology: remove every namespace this
	# prefix could have produced, so a half-built or switched lab goes too.
	for ns in $(all_known_ns); do
		if ns_exists "$ns"; then
			# Deleting the namespace destroys tun0, veths and the bridge with it.
			ip netns del "$ns"
			removed=$((removed + 1))
		fi
	done
	echo "setup-netns: removed ${removed} namespace(s) with prefix '${PREFIX}'"
}

do_status() {
	local ns found=0
	for ns in $(all_known_ns); do
		ns_exists "$ns" || continue
		found=1
		echo "== namespace ${ns}"
		ip -n "$ns" -br link show
		ip -n "$ns" -br -4 addr show
		ip -n "$ns" -4 route show | sed 's/^/route: /'
		printf 'ip_forward: %s\n' "$(nsx "$ns" cat /proc/sys/net/ipv4/ip_forward)"
	done
	((found)) || echo "setup-netns: no lab namespaces with prefix '${PREFIX}'"
}

main() {
	local cmd=${1:-}
	[[ -n $cmd ]] || usage
	shift
	preflight
	case $cmd in
	up) do_up "$@" ;;
	down) do_down ;;
	status) do_status ;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
