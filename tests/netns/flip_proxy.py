#!/usr/bin/env python3
"""A TCP relay that flips one bit of the byte stream in transit (above TCP, so TCP's checksum
cannot catch it): the encrypted channel's MAC must.

usage: flip_proxy.py LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT FLIP_AT
Flips bit 0 of the byte at offset FLIP_AT of the client-to-target direction.
"""
import socket
import sys
import threading


def pump(src, dst, flip_at):
    seen = 0
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            if flip_at is not None and seen <= flip_at < seen + len(d):
                b = bytearray(d)
                b[flip_at - seen] ^= 1
                d = bytes(b)
            seen += len(d)
            dst.sendall(d)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    laddr, lport, taddr, tport, flip_at = sys.argv[1:6]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((laddr, int(lport)))
    ls.listen(1)
    ls.settimeout(60)
    c, _ = ls.accept()
    t = socket.create_connection((taddr, int(tport)), timeout=30)
    a = threading.Thread(target=pump, args=(c, t, int(flip_at)))
    b = threading.Thread(target=pump, args=(t, c, None))
    a.start()
    b.start()
    a.join()
    b.join()


if __name__ == "__main__":
    main()
