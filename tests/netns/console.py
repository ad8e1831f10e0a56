#!/usr/bin/env python3
"""Drives `tunstack node` through a real terminal (a pty), as a person at the console would.

usage: console.py NAMESPACE TUNSTACK NODE-ARGS...
Types help, status, ping and quit; checks each answer; exits 0 when all were right.
"""
import os
import pty
import select
import sys
import time


def main():
    ns, binary, *args = sys.argv[1:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("ip", ["ip", "netns", "exec", ns, binary, "node", *args])
    out = b""

    def read_until(needle, timeout=10.0):
        nonlocal out
        deadline = time.time() + timeout
        while needle not in out:
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

    def type_line(line):
        os.write(fd, line.encode() + b"\n")

    read_until(b"tunstack> ")
    type_line("help")
    read_until(b"ping IP")
    type_line("status")
    read_until(b"drops")
    type_line("ping 198.18.0.1 -c 2 -i 0.2")
    read_until(b"2 packets transmitted, 2 received")
    type_line("frobnicate")
    read_until(b"unknown command 'frobnicate'")
    type_line("quit")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"console: node exited with {code}")
    print("console: help, status, ping, unknown command and quit all answered")


if __name__ == "__main__":
    main()
