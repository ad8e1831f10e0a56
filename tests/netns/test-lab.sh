#!/usr/bin/env bash
# The lab script itself: `up` is idempotent (a second `up` changes nothing and succeeds),
# `status` lists what is up, every topology gets the address plan of README/docs/lab.md with
# no default route in any namespace, the line lab's kernels forward between the two tun0
# subnets, and `down` removes every namespace it made (and is harmless when run twice).
set -euo pipefail
# shellcheck source=tests/netns/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root

ours() {
	ip netns list 2>/dev/null | awk -v p="$TS_PREFIX" 'index($1, p) == 1 { print $1 }' | sort | tr '\n' ' '
}

addr_of() { # NS DEV: the IPv4 address/prefix of DEV in NS
	ip -n "$1" -4 -o addr show dev "$2" | awk '{ print $4 }'
}

no_default_route() {
	local ns
	for ns in $(ours); do
		if ip -n "$ns" route show default | grep -q .; then
			fail "namespace $ns has a default route"
		fi
	done
}

# pair, twice.
lab_up pair
lab_up pair
[[ $(ours) == "${NS_A} " ]] || fail "pair: namespaces are '$(ours)', expected only $NS_A"
[[ $(addr_of "$NS_A" tun0) == 198.18.0.1/24 ]] || fail "pair: tun0 is $(addr_of "$NS_A" tun0)"
ip -n "$NS_A" -o link show tun0 | grep -q 'state UP\|,UP' || fail "pair: tun0 is not up"
status=$("$TS_SETUP" status)
grep -q "$NS_A" <<<"$status" || fail "status does not list $NS_A: $status"
no_default_route
"$TS_SETUP" down >/dev/null
[[ -z $(ours) ]] || fail "down left $(ours)"
"$TS_SETUP" down >/dev/null || fail "a second down failed"

# line, twice: two tun0 subnets joined by a veth, each kernel routing to the other.
lab_up line
lab_up line
[[ $(ours) == "${NS_A} ${NS_B} " ]] || fail "line: namespaces are '$(ours)'"
[[ $(addr_of "$NS_A" tun0) == 198.18.1.1/24 ]] || fail "line: ts-a tun0 is $(addr_of "$NS_A" tun0)"
[[ $(addr_of "$NS_B" tun0) == 198.18.2.1/24 ]] || fail "line: ts-b tun0 is $(addr_of "$NS_B" tun0)"
ip -n "$NS_A" route get 198.18.2.2 | grep -q 198.19.0 || fail "line: ts-a has no route to 198.18.2.0/24 over the veth"
ip -n "$NS_B" route get 198.18.1.2 | grep -q 198.19.0 || fail "line: ts-b has no route to 198.18.1.0/24 over the veth"
# The kernel side of ts-b's tun0 answers ping from ts-a, through both kernels.
ip netns exec "$NS_A" ping -c 1 -W 2 -q 198.18.2.1 >/dev/null || fail "line: ts-a cannot reach 198.18.2.1"
no_default_route
"$TS_SETUP" down >/dev/null
[[ -z $(ours) ]] || fail "down left $(ours)"

# star 3, twice.
lab_up star 3
lab_up star 3
want="${NS_HUB} $(ns_n 1) $(ns_n 2) $(ns_n 3) "
[[ $(ours) == "$(tr ' ' '\n' <<<"$want" | grep . | sort | tr '\n' ' ')" ]] || fail "star 3: namespaces are '$(ours)'"
for i in 1 2 3; do
	[[ $(addr_of "$(ns_n "$i")" tun0) == "198.18.$i.1/24" ]] || fail "star: n$i tun0 is $(addr_of "$(ns_n "$i")" tun0)"
done
ip netns exec "$(ns_n 1)" ping -c 1 -W 2 -q 198.18.3.1 >/dev/null || fail "star: n1 cannot reach n3's kernel"
no_default_route
"$TS_SETUP" down >/dev/null
[[ -z $(ours) ]] || fail "down left $(ours)"

# Only 198.18.0.0/15 was ever used: nothing else appeared in the root namespace either.
if ip -4 -o addr show | awk '{ print $4 }' | grep -q '^198\.1[89]\.'; then
	fail "a lab address leaked into the root namespace"
fi
pass
