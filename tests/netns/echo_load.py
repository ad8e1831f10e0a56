#!/usr/bin/env python3
"""Kernel TCP clients against an echo service: each connection keeps sending seeded random
bytes and checks that exactly those bytes come back, in order.

    ip netns exec ts-a python3 tests/netns/echo_load.py --dst 198.18.0.2 --port 7 \
        --conns 50 --seconds 60

Stops sending after --seconds (or --bytes per connection), waits up to --drain seconds for the
rest of the echo, and prints one JSON object: bytes verified, mismatches, connections that
failed, throughput. Exit status 1 if any byte was wrong, missing, or a connection failed.
"""

import argparse
import json
import random
import selectors
import socket
import sys
import time

WINDOW = 64 * 1024  # bytes a connection may have sent but not yet seen echoed


class Conn:
    def __init__(self, sock, seed):
        self.sock = sock
        self.rng = random.Random(seed)
        self.pending = bytearray()  # sent, not yet echoed
        self.sent = 0
        self.verified = 0
        self.error = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bytes", type=int, default=0, help="stop each connection after this many (0: no limit)")
    ap.add_argument("--drain", type=float, default=20.0)
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not args.dst.startswith(("198.18.", "198.19.")):
        ap.error("only 198.18.0.0/15 addresses are allowed in the lab")

    sel = selectors.DefaultSelector()
    conns = []
    t0 = time.monotonic()
    for i in range(args.conns):
        s = socket.create_connection((args.dst, args.port), timeout=args.connect_timeout)
        s.setblocking(False)
        c = Conn(s, args.seed * 1000 + i)
        conns.append(c)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    connected = time.monotonic() - t0
    stop_at = time.monotonic() + args.seconds
    hard_stop = stop_at + args.drain
    sending = True
    while True:
        now = time.monotonic()
        if sending and (now >= stop_at or (args.bytes and all(c.sent >= args.bytes for c in conns))):
            sending = False
        if not sending and all(not c.pending or c.error for c in conns):
            break
        if now >= hard_stop:
            for c in conns:
                if c.pending and not c.error:
                    c.error = "%d bytes never came back" % len(c.pending)
            break
        for key, mask in sel.select(timeout=0.2):
            c = key.data
            if c.error:
                continue
            if mask & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError as e:
                    c.error = "recv: %s" % e
                    sel.unregister(c.sock)
                    continue
                if data == b"":
                    c.error = "connection closed by the node"
                    sel.unregister(c.sock)
                    continue
                if data:
                    n = len(data)
                    if c.pending[:n] != data:
                        c.error = "mismatch after %d verified bytes" % c.verified
                        sel.unregister(c.sock)
                        continue
                    del c.pending[:n]
                    c.verified += n
            if mask & selectors.EVENT_WRITE and sending and len(c.pending) < WINDOW:
                if args.bytes and c.sent >= args.bytes:
                    continue
                n = min(WINDOW - len(c.pending), 16384)
                if args.bytes:
                    n = min(n, args.bytes - c.sent)
                chunk = c.rng.randbytes(n)
                try:
                    k = c.sock.send(chunk)
                except BlockingIOError:
                    k = 0
                except OSError as e:
                    c.error = "send: %s" % e
                    sel.unregister(c.sock)
                    continue
                # What the kernel did not take is dropped: the check is against what was sent.
                c.pending += chunk[:k]
                c.sent += k
            if not sending:
                sel.modify(c.sock, selectors.EVENT_READ, c)
    took = time.monotonic() - t0
    for c in conns:
        c.sock.close()
    verified = sum(c.verified for c in conns)
    errors = [c.error for c in conns if c.error]
    out = {
        "conns": len(conns),
        "connect_seconds": round(connected, 3),
        "seconds": round(took, 3),
        "bytes_verified": verified,
        "mbit_per_s": round(verified * 8 / took / 1e6, 3),
        "failed": len(errors),
        "errors": errors[:5],
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
