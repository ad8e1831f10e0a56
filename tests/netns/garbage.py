#!/usr/bin/env python3
"""Send a bounded flood of malformed IPv4 packets into a TUN device.

Run inside the lab namespace that owns the device, e.g.

    ip netns exec ts-a python3 tests/netns/garbage.py --dev tun0 \
        --src 198.18.0.1 --dst 198.18.0.2 --count 10000 --seed 1

Prints one JSON object: packets sent per class.

Why a packet socket and not `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`: with
IP_HDRINCL the kernel always rewrites the total length and the header checksum
(raw(7)) and refuses headers whose IHL exceeds the packet, so the most
interesting lies would never leave. An AF_PACKET socket bound to a TUN device
hands our bytes to the device unchanged, which is exactly what the node reads.
"""

import argparse
import errno
import json
import random
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(rng: random.Random, size: int) -> bytes:
    payload = bytes(rng.getrandbits(8) for _ in range(size))
    hdr = struct.pack("!BBHHH", 8, 0, 0, rng.getrandbits(16), rng.getrandbits(16))
    csum = checksum(hdr + payload)
    return struct.pack("!BBHHH", 8, 0, csum, *struct.unpack("!HH", hdr[4:8])) + payload


def ipv4(src, dst, payload, *, proto=1, ttl=64, version=4, ihl=5,
         total_length=None, bad_checksum=False, ident=0x1234, options=b""):
    """An IPv4 header + payload; every field can lie, the checksum is right
    for whatever the header says unless bad_checksum is set."""
    if total_length is None:
        total_length = 20 + len(options) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | (ihl & 0xF), 0,
                      total_length & 0xFFFF, ident, 0, ttl, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst)) + options
    csum = checksum(hdr)
    if bad_checksum:
        # Any other value is wrong; never send 0, which some read as "unset".
        csum = (csum + 1 + (ident % 0xFFFE)) & 0xFFFF or 1
    hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
    return hdr + payload


def make(kind: str, rng: random.Random, src: str, dst: str) -> bytes:
    echo = icmp_echo(rng, rng.randint(0, 64))
    if kind == "random_bytes":
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 120)))
    if kind == "too_short":
        # A plausible IPv4 start, cut before the 20-byte header ends.
        return ipv4(src, dst, echo)[: rng.randint(1, 19)]
    if kind == "bad_checksum":
        return ipv4(src, dst, echo, bad_checksum=True, ident=rng.getrandbits(16))
    if kind == "bad_version":
        return ipv4(src, dst, echo, version=rng.choice([0, 1, 5, 6, 7, 15]))
    if kind == "bad_ihl_small":
        # IHL below 5 cannot even cover the fixed header.
        return ipv4(src, dst, echo, ihl=rng.randint(0, 4))
    if kind == "bad_ihl_large":
        # IHL claims options (up to 60 bytes) the packet does not have room for.
        return ipv4(src, dst, b"", ihl=15, total_length=20)[:20] + echo[:8]
    if kind == "total_length_long":
        return ipv4(src, dst, echo, total_length=20 + len(echo) + rng.randint(1, 1000))
    if kind == "total_length_short":
        # Shorter than the header itself.
        return ipv4(src, dst, echo, total_length=rng.randint(0, 19))
    if kind == "ttl_zero":
        return ipv4(src, dst, echo, ttl=0)
    if kind == "unknown_protocol":
        # 253/254 are reserved for experiments (RFC 3692); 143+ are unassigned.
        return ipv4(src, dst, echo, proto=rng.choice([143, 200, 253, 254]))
    raise ValueError(kind)


KINDS = [
    "random_bytes", "too_short", "bad_checksum", "bad_version", "bad_ihl_small",
    "bad_ihl_large", "total_length_long", "total_length_short", "ttl_zero",
    "unknown_protocol",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", default="tun0")
    ap.add_argument("--src", default="198.18.0.1")
    ap.add_argument("--dst", default="198.18.0.2")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args()
    for a in (args.src, args.dst):
        if not a.startswith("198.18.") and not a.startswith("198.19."):
            ap.error(f"{a}: only 198.18.0.0/15 addresses are allowed in the lab")
    if not 0 < args.count <= 1_000_000:
        ap.error("--count must be 1..1000000")

    rng = random.Random(args.seed)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.bind((args.dev, ETH_P_IP))
    sent = {k: 0 for k in KINDS}
    refused = {}
    full_queue_waits = 0
    deadline = time.monotonic() + args.max_seconds

    for i in range(args.count):
        if time.monotonic() > deadline:
            break
        kind = KINDS[i % len(KINDS)]
        pkt = make(kind, rng, args.src, args.dst)
        for _attempt in range(200):
            try:
                sock.sendto(pkt, (args.dev, ETH_P_IP))
                sent[kind] += 1
                break
            except OSError as e:
                if e.errno in (errno.ENOBUFS, errno.EAGAIN):
                    # The device queue (txqueuelen 500) is full: let the node drain it.
                    full_queue_waits += 1
                    time.sleep(0.001)
                    continue
                refused[kind] = refused.get(kind, 0) + 1
                break
        # Keep well under the TUN queue length so packets are not lost before
        # the node has seen them.
        if i % 200 == 199:
            time.sleep(0.005)

    json.dump({"sent": sent, "total": sum(sent.values()), "refused": refused,
               "full_queue_waits": full_queue_waits}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
