#!/usr/bin/env python3
"""Drives `tunstack node` through a real terminal (a pty), as a person at the console would.

usage: console.py [--peer IP --peer-ctl PATH --small FILE --big FILE] NAMESPACE TUNSTACK NODE-ARGS...

Alone: types help, status, ping, an unknown command and quit; checks each answer.
With --peer (a second node already running at IP, reachable through its control socket PATH),
it also types the protocol verbs against it: peers (none yet), discover (finds the peer),
send, file (SMALL, waiting for the outcome), file --no-wait (BIG) with transfers showing it,
and messages (a message the peer sends back through its control socket).
Exits 0 when every answer was right.
"""
import os
import pty
import re
import select
import subprocess
import sys
import time


def main():
    argv = sys.argv[1:]
    opts = {}
    while argv and argv[0] in ("--peer", "--peer-ctl", "--small", "--big"):
        opts[argv[0][2:]] = argv[1]
        argv = argv[2:]
    ns, binary, *args = argv
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("ip", ["ip", "netns", "exec", ns, binary, "node", *args])
    out = b""
    mark = 0

    def read_until(needle, timeout=10.0):
        """Waits for `needle` (bytes or a compiled regex) in what the console printed since the
        last command was typed; returns that text."""
        nonlocal out
        deadline = time.time() + timeout

        def found():
            tail = out[mark:]
            return needle.search(tail) if isinstance(needle, re.Pattern) else needle in tail

        while not found():
            left = deadline - time.time()
            if left <= 0:
                raise SystemExit(f"console: timed out waiting for {needle!r}; got:\n{out.decode(errors='replace')}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise SystemExit(f"console: node exited waiting for {needle!r}; got:\n{out.decode(errors='replace')}")
                out += chunk
        return out[mark:]

    def type_line(line):
        nonlocal mark
        mark = len(out)
        os.write(fd, line.encode() + b"\n")

    def command(line, needle, timeout=10.0):
        """Types a command and waits for its answer and the next prompt."""
        type_line(line)
        read_until(needle, timeout)
        return read_until(b"tunstack> ", timeout)

    read_until(b"tunstack> ")
    command("help", b"ping IP")
    command("status", b"drops")
    # The kernel end of the node's TUN device is .1 of its subnet.
    kernel = ".".join(args[args.index("--addr") + 1].split("/")[0].split(".")[:3]) + ".1"
    command(f"ping {kernel} -c 2 -i 0.2", b"2 packets transmitted, 2 received")
    command("frobnicate", b"unknown command 'frobnicate'")
    if "peer" in opts:
        protocol_verbs(opts, binary, command)
    type_line("quit")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"console: node exited with {code}")
    print("console: help, status, ping, unknown command and quit all answered")


def protocol_verbs(opts, binary, command):
    peer = opts["peer"]
    net = ".".join(peer.split(".")[:3]) + ".0/24"
    command("peers", b"no peers yet")
    command(f"discover {net}", f"probing 256 addresses in {net}".encode())
    # The probes go out at a bounded rate: ask until the peer shows up as alive.
    alive = re.compile(re.escape(peer).encode() + rb"\s+\S+\s+alive")
    deadline = time.time() + 20
    while True:
        text = command("peers", b"", 5)
        if alive.search(text):
            break
        if time.time() > deadline:
            raise SystemExit(f"console: discover never found {peer}; last answer:\n{text.decode(errors='replace')}")
        time.sleep(0.5)
    print(f"console: discover found {peer}")

    command(f'send {peer} "hello from the console" -c lab', f"delivered to {peer}".encode())
    small_sha = sha256(opts["small"])
    command(f"file {peer} {opts['small']}", f"sha256 {small_sha}".encode(), 60)
    print("console: send and file delivered")

    command(f"file {peer} {opts['big']} --no-wait", f"offering {opts['big']} to {peer}".encode())
    big = os.path.basename(opts["big"]).encode()
    row = re.compile(rb"send\s+" + re.escape(peer).encode() + rb"\s+" + re.escape(big) + rb"\s.*?[0-9.]+%")
    text = command("transfers", b"ID", 10)
    if not row.search(text):
        raise SystemExit(f"console: transfers does not show the outgoing {big!r}:\n{text.decode(errors='replace')}")
    print("console: transfers shows the transfer in progress")

    subprocess.run([binary, "ctl", "--control", opts["peer-ctl"], "send", "198.18.1.2", "hello back to the console"],
                   check=True, stdout=subprocess.DEVNULL)
    command("messages", b"hello back to the console")
    print("console: messages shows the peer's answer")


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


if __name__ == "__main__":
    main()
