#!/usr/bin/env python3
"""A TCP relay that tampers with the byte stream in transit (above TCP, so TCP's checksum cannot
catch it): the encrypted channel's MAC and record counter must.

usage: flip_proxy.py LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT FAULT
FAULT is either
  N          flip bit 0 of the byte at offset N of the client-to-target direction, or
  replay:N   in the client-to-target direction, send record N-1 again right after record N
             (records as `tunstack cat` frames them after the key exchange: length u32,
             counter u64, ciphertext, 32-byte tag; the key exchange itself is one blob,
             length u32 then bytes).
"""
import socket
import struct
import sys
import threading

TAG_LEN = 32


def shutdown(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


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
    shutdown(src, dst)


def pump_replay(src, dst, replay_after):
    """Forwards whole units (the key-exchange blob, then records); after the record whose
    counter is `replay_after`, sends the previous record a second time."""
    buf = bytearray()
    handshake_done = False
    previous = None
    replayed = False
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            buf += d
            while True:
                if not handshake_done:
                    if len(buf) < 4:
                        break
                    n = 4 + struct.unpack(">I", buf[:4])[0]
                    if len(buf) < n:
                        break
                    dst.sendall(bytes(buf[:n]))
                    del buf[:n]
                    handshake_done = True
                    continue
                if len(buf) < 12:
                    break
                length, counter = struct.unpack(">IQ", buf[:12])
                n = 12 + length + TAG_LEN
                if len(buf) < n:
                    break
                record = bytes(buf[:n])
                del buf[:n]
                dst.sendall(record)
                if counter == replay_after and previous is not None and not replayed:
                    dst.sendall(previous)
                    replayed = True
                    print(f"flip_proxy: replayed record {counter - 1} after record {counter}", flush=True)
                previous = record
        if buf:
            dst.sendall(bytes(buf))
    except OSError:
        pass
    shutdown(src, dst)


def main():
    laddr, lport, taddr, tport, fault = sys.argv[1:6]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((laddr, int(lport)))
    ls.listen(1)
    ls.settimeout(60)
    c, _ = ls.accept()
    t = socket.create_connection((taddr, int(tport)), timeout=30)
    if fault.startswith("replay:"):
        a = threading.Thread(target=pump_replay, args=(c, t, int(fault[len("replay:"):])))
    else:
        a = threading.Thread(target=pump, args=(c, t, int(fault)))
    b = threading.Thread(target=pump, args=(t, c, None))
    a.start()
    b.start()
    a.join()
    b.join()


if __name__ == "__main__":
    main()
