#!/usr/bin/env python3
"""The Linux kernel's TCP as a test peer for tunstack (run inside a namespace).

  echo HOST PORT BYTES          send BYTES of random data to an echo service, read them back,
                                print "sent-sha received-sha bytes"
  upload HOST PORT FILE         send FILE and half-close; print the reply
  sequential HOST PORT N        N connect/send/echo/close in a row; print "ok N"
  concurrent HOST PORT N        N connections open at once, each echoing its id; print "ok N"
  serve-hash ADDR PORT          accept one connection, hash what arrives until EOF,
                                answer "BYTES SHA256" and close
  send-file ADDR PORT FILE      accept one connection and send FILE, then close
  pattern-sha N                 the SHA-256 of tunstack's http /bytes/N body (byte i = i % 251)
"""
import hashlib
import os
import socket
import sys
import time


def connect(host, port, timeout=20):
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def echo(host, port, nbytes):
    import threading
    nbytes = int(nbytes)
    data = os.urandom(nbytes)
    s = connect(host, port)
    got = hashlib.sha256()
    count = [0]

    def reader():
        while count[0] < nbytes:
            d = s.recv(1 << 16)
            if not d:
                break
            got.update(d)
            count[0] += len(d)

    t = threading.Thread(target=reader)
    t.start()
    s.sendall(data)
    t.join(60)
    s.close()
    print(hashlib.sha256(data).hexdigest(), got.hexdigest(), count[0])


def upload(host, port, path):
    s = connect(host, port)
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 16)
            if not b:
                break
            s.sendall(b)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        reply += d
    print(reply.decode(errors="replace").strip())


def sequential(host, port, n):
    n = int(n)
    for i in range(n):
        s = connect(host, port, timeout=5)
        msg = b"ping %d\n" % i
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(100)
            if not d:
                raise SystemExit(f"connection {i}: closed early")
            got += d
        if got != msg:
            raise SystemExit(f"connection {i}: got {got!r}")
        s.close()
    print("ok", n)


def concurrent(host, port, n):
    n = int(n)
    socks = [connect(host, port, timeout=20) for _ in range(n)]
    for i, s in enumerate(socks):
        s.sendall(b"conn %05d\n" % i)
    for i, s in enumerate(socks):
        want = b"conn %05d\n" % i
        got = b""
        while len(got) < len(want):
            d = s.recv(100)
            if not d:
                raise SystemExit(f"connection {i}: closed early")
            got += d
        if got != want:
            raise SystemExit(f"connection {i}: got {got!r}")
    for s in socks:
        s.close()
    print("ok", n)


def serve_hash(addr, port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, int(port)))
    ls.listen(1)
    ls.settimeout(60)
    c, _ = ls.accept()
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        h.update(d)
        n += len(d)
    c.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
    c.close()


def send_file(addr, port, path):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, int(port)))
    ls.listen(1)
    ls.settimeout(60)
    c, _ = ls.accept()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 16)
            if not b:
                break
            c.sendall(b)
    c.close()


def pattern_sha(n):
    n = int(n)
    block = bytes(i % 251 for i in range(251)) * 4096
    h = hashlib.sha256()
    while n > 0:
        k = min(n, len(block))
        h.update(block[:k])
        n -= k
    print(h.hexdigest())


if __name__ == "__main__":
    cmds = {
        "echo": echo,
        "upload": upload,
        "sequential": sequential,
        "concurrent": concurrent,
        "serve-hash": serve_hash,
        "send-file": send_file,
        "pattern-sha": pattern_sha,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__)
        sys.exit(2)
    cmds[sys.argv[1]](*sys.argv[2:])
