#!/usr/bin/env python3
"""Send a bounded flood of well-formed packets from spoofed sources into a TUN device.

Run inside the lab namespace that owns the device, e.g.

    ip netns exec ts-b python3 tests/netns/flood.py syn --dev tun0 \
        --dst 198.18.2.2 --port 7 --count 5000 --seed 1

Kinds:
  syn    TCP SYNs to --port
  msg    protocol-170 HELLOs (valid CRC-32C) with random node ids and epochs
  offer  protocol-171 OFFERs of random files (valid CRC-32C), some larger than any sane limit

Sources are random addresses in 198.19.128.0/17 (inside the lab's 198.18.0.0/15, away from
every address the lab gives out), so the node's answers are unroutable and die in the namespace.
Prints one JSON object: packets sent, seconds taken, packets per second.

As garbage.py, this writes through an AF_PACKET socket bound to the TUN device: the node reads
exactly these bytes, and the kernel's own stack never sees them as local traffic.
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


def _crc32c_table():
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    # MSS 1460 so the node treats it like any client's SYN.
    opts = struct.pack("!BBH", 2, 4, 1460)
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, (5 + len(opts) // 4) << 4, 0x02,
                      64240, 0, 0) + opts
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    csum = checksum(pseudo + hdr)
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:]


def ts_header(ty: int, node_id: int, epoch: int, payload: bytes) -> bytes:
    """The common 44-byte header of protocols 170/171 (src/msg/wire.rs) with a valid CRC-32C."""
    hdr = struct.pack("!BBBBIQQQIIHH", 1, ty, 0, 0, 0, node_id, epoch, 0, 0, 0, len(payload), 0)
    pkt = hdr + payload
    crc = crc32c(pkt)
    return pkt[:4] + struct.pack("!I", crc) + pkt[8:]


def str8(s: bytes) -> bytes:
    return struct.pack("!B", len(s)) + s


def str16(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def make(kind: str, rng: random.Random, dst: str, port: int, i: int):
    src = "198.19.%d.%d" % (rng.randint(128, 255), rng.randint(1, 254))
    if kind == "syn":
        return ipv4(src, dst, 6, tcp_syn(src, dst, rng.randint(1024, 65535), port,
                                         rng.getrandbits(32)), rng.getrandbits(16))
    if kind == "msg":
        payload = str8(b"flood-%d" % i) + b"\0"  # name, no peers
        return ipv4(src, dst, 170, ts_header(3, rng.getrandbits(64) or 1,
                                             rng.randint(1, 1 << 40), payload),
                    rng.getrandbits(16))
    if kind == "offer":
        # One in four is larger than any limit a test sets (1 TiB).
        size = (1 << 40) if i % 4 == 0 else rng.randint(1, 1 << 20)
        payload = (struct.pack("!QQI", rng.getrandbits(64), size, 1024)
                   + bytes(rng.getrandbits(8) for _ in range(32))
                   + str16(b"flood-%d.bin" % i) + str16(b"") + str16(b"flood"))
        return ipv4(src, dst, 171, ts_header(1, rng.getrandbits(64) or 1,
                                             rng.randint(1, 1 << 40), payload),
                    rng.getrandbits(16))
    raise ValueError(kind)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["syn", "msg", "offer"])
    ap.add_argument("--dev", default="tun0")
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=0, help="packets per second (0: as fast as the device takes them)")
    args = ap.parse_args()
    if not args.dst.startswith(("198.18.", "198.19.")):
        ap.error("only 198.18.0.0/15 addresses are allowed in the lab")
    if not 0 < args.count <= 200_000:
        ap.error("--count must be 1..200000")

    rng = random.Random(args.seed)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.bind((args.dev, ETH_P_IP))
    sent = 0
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    for i in range(args.count):
        if time.monotonic() > deadline:
            break
        pkt = make(args.kind, rng, args.dst, args.port, i)
        for _attempt in range(200):
            try:
                sock.sendto(pkt, (args.dev, ETH_P_IP))
                sent += 1
                break
            except OSError as e:
                if e.errno in (errno.ENOBUFS, errno.EAGAIN):
                    time.sleep(0.001)  # the device queue is full: let the node drain it
                    continue
                raise
        if args.rate > 0:
            ahead = t0 + (i + 1) / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        elif i % 200 == 199:
            time.sleep(0.002)
    took = time.monotonic() - t0
    json.dump({"kind": args.kind, "sent": sent, "seconds": round(took, 3),
               "pps": round(sent / took) if took > 0 else 0}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
