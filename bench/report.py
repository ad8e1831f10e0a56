#!/usr/bin/env python3
"""Summaries of bench/run.sh results.

    report.py table RESULTS.jsonl    print the comparison table
    report.py write RESULTS.jsonl    write docs/benchmarks.md and docs/bench-loss.png

Every result line carries target, workload, round and either value/unit or
status ("n/a" or "error") with a reason. Medians, min-max and the ratios
tunstack/smoltcp and tunstack/kernel are computed here, nowhere else.
"""

import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import zlib

TARGETS = ["tunstack", "smoltcp", "kernel"]

# (key, label, unit, better): better is "higher" or "lower".
WORKLOADS = [
    ("bulk_to_stack", "Bulk TCP kernel → stack (discard, 1 GB)", "Mbit/s", "higher"),
    ("bulk_from_stack", "Bulk TCP stack → kernel (chargen, 1 GB)", "Mbit/s", "higher"),
    ("bulk_to_stack_offload", "Bulk TCP kernel → stack with segmentation offload", "Mbit/s", "higher"),
    ("bulk_from_stack_offload", "Bulk TCP stack → kernel with segmentation offload", "Mbit/s", "higher"),
    ("rr_pinned", "1-byte echo round trip, median, one CPU", "µs", "lower"),
    ("rr_pinned_p99", "1-byte echo round trip, p99, one CPU", "µs", "lower"),
    ("rr_unpinned", "1-byte echo round trip, median, unpinned", "µs", "lower"),
    ("rr_unpinned_p99", "1-byte echo round trip, p99, unpinned", "µs", "lower"),
    ("conn_rate", "Connect / 1 byte / close", "conn/s", "higher"),
    ("icmp_rtt", "ICMP echo RTT, median (ping -i 0.001)", "µs", "lower"),
    ("conc_10k", "Concurrent established connections (goal 10,000)", "conns", "higher"),
    ("conc_10k_rss", "Server RSS per connection at 10,000", "bytes", "lower"),
    ("loss_0", "Goodput via router, 0 % loss", "Mbit/s", "higher"),
    ("loss_1", "Goodput via router, 1 % loss", "Mbit/s", "higher"),
    ("loss_5", "Goodput via router, 5 % loss", "Mbit/s", "higher"),
    ("p170_msg_rate", "Protocol 170 messages per second", "msg/s", "higher"),
    ("p170_msg_rate_latency", "Protocol 170 latency at full rate, median", "µs", "lower"),
    ("p170_msg_latency", "Protocol 170 latency, one at a time, median", "µs", "lower"),
    ("p170_msg_latency_p99", "Protocol 170 latency, one at a time, p99", "µs", "lower"),
    ("p171_file_0", "Protocol 171 file throughput, 0 % loss", "Mbit/s", "higher"),
    ("p171_file_5", "Protocol 171 file throughput, 5 % loss", "Mbit/s", "higher"),
    ("p171_tcp_0", "tunstack TCP node → node on the 171 path, 0 % loss", "Mbit/s", "higher"),
    ("p171_tcp_5", "tunstack TCP node → node on the 171 path, 5 % loss", "Mbit/s", "higher"),
]

# Rows derived from extra fields of another workload's result.
DERIVED = {
    "rr_pinned_p99": ("rr_pinned", "p99_us"),
    "rr_unpinned_p99": ("rr_unpinned", "p99_us"),
    "conc_10k_rss": ("conc_10k", "rss_bytes_per_conn"),
    "p170_msg_rate_latency": ("p170_msg_rate", "latency_median_us"),
    "p170_msg_latency_p99": ("p170_msg_latency", "p99_us"),
}

LOSS_KEYS = [(0, "loss_0"), (1, "loss_1"), (5, "loss_5")]


def load(path):
    meta, end, rows = {}, {}, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if "meta" in obj:
                meta = obj["meta"]
            elif "meta_end" in obj:
                end = obj["meta_end"]
            else:
                rows.append(obj)
    return meta, end, rows


class Cell:
    """All rounds of one target on one workload."""

    def __init__(self):
        self.values = []
        self.na = None
        self.errors = []

    def median(self):
        return statistics.median(self.values) if self.values else None


def collect(rows):
    cells = {}
    for row in rows:
        key, target = row["workload"], row["target"]
        status = row.get("status")
        derived_from = [(d, field) for d, (src, field) in DERIVED.items() if src == key]
        for k, field in [(key, "value")] + derived_from:
            cell = cells.setdefault((k, target), Cell())
            if status == "n/a":
                cell.na = row.get("reason", "")
            elif status == "error":
                cell.errors.append(row.get("reason", ""))
            elif row.get(field) is not None:
                cell.values.append(float(row[field]))
    return cells


def fmt_num(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_cell(cell):
    if cell is None:
        return "-"
    if cell.values:
        lo, hi = min(cell.values), max(cell.values)
        text = fmt_num(cell.median())
        if len(cell.values) > 1:
            text += f" ({fmt_num(lo)}–{fmt_num(hi)})"
        if cell.errors:
            text += f" [{len(cell.errors)} failed]"
        return text
    if cell.errors:
        return f"error ({cell.errors[0].strip()[:80]})"
    if cell.na is not None:
        return f"n/a ({cell.na})"
    return "-"


def ratio(cells, key, other):
    a, b = cells.get((key, "tunstack")), cells.get((key, other))
    if a and b and a.values and b.values and b.median():
        return f"{a.median() / b.median():.2f}"
    return "-"


def table_rows(cells):
    present = {k for k, _ in cells}
    out = []
    for key, label, unit, better in WORKLOADS:
        if key not in present:
            continue
        out.append(
            [label, f"{unit} ({better} is better)"]
            + [fmt_cell(cells.get((key, t))) for t in TARGETS]
            + [ratio(cells, key, "smoltcp"), ratio(cells, key, "kernel")]
        )
    return out


HEADER = ["workload", "unit"] + TARGETS + ["tunstack/smoltcp", "tunstack/kernel"]

# Protocol 171 against tunstack's own TCP (issue target: at least 0.5). The same path is node to
# node (tcpbench, the p171_tcp rows); runs from before tcpbench existed compare with the kernel
# client's TCP into the node via the router (the loss rows).
FILE_VS_TCP = [
    ("p171_file_0", ("p171_tcp_0", "node → node"), ("loss_0", "via the router"), "0 %"),
    ("p171_file_5", ("p171_tcp_5", "node → node"), ("loss_5", "via the router"), "5 %"),
]


def file_vs_tcp(cells):
    """Lines comparing protocol 171 with tunstack TCP goodput at the same loss, where both ran."""
    out = []
    for fkey, same, router, label in FILE_VS_TCP:
        f = cells.get((fkey, "tunstack"))
        for tkey, how in (same, router):
            t = cells.get((tkey, "tunstack"))
            if f and t and f.values and t.values and t.median():
                out.append(
                    f"protocol 171 / tunstack TCP {how} at {label} loss: "
                    f"{fmt_num(f.median())} / {fmt_num(t.median())} Mbit/s = {f.median() / t.median():.2f}"
                )
                break
    return out


def print_table(path):
    meta, end, rows = load(path)
    cells = collect(rows)
    body = table_rows(cells)
    widths = [max(len(r[i]) for r in body + [HEADER]) for i in range(len(HEADER))]
    # The n/a reasons make the target columns wide; cap them for a terminal.
    widths = [min(w, 46) for w in widths]

    def line(cols):
        return "  ".join(c[:w].ljust(w) for c, w in zip(cols, widths))

    print()
    print(
        f"tunstack bench ({meta.get('mode', '?')}, {meta.get('rounds', '?')} round(s), "
        f"{end.get('seconds', '?')} s): median (min–max) over rounds"
    )
    print(line(HEADER))
    print(line(["-" * w for w in widths]))
    for r in body:
        print(line(r))
    for text in file_vs_tcp(cells):
        print(text)


# ------------------------------------------------------------------ chart


def loss_series(cells):
    series = {}
    for target in TARGETS:
        pts = []
        for loss, key in LOSS_KEYS:
            cell = cells.get((key, target))
            if cell and cell.values:
                pts.append((loss, cell.median()))
        series[target] = pts
    return series


COLORS = {"tunstack": "#d62728", "smoltcp": "#1f77b4", "kernel": "#2ca02c"}


def chart_matplotlib(series, reasons, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for target in TARGETS:
        pts = series[target]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=COLORS[target], label=target)
        else:
            ax.plot([], [], color=COLORS[target], label=f"{target}: n/a ({reasons.get(target, 'no data')})")
    ax.set_yscale("log")
    ax.set_xlabel("random loss on the path, % of forwarded packets (each direction)")
    ax.set_ylabel("goodput, Mbit/s (median, log scale)")
    ax.set_xticks([loss for loss, _ in LOSS_KEYS])
    ax.set_title("Bulk TCP goodput through a lossy router (nftables numgen)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def chart_plain(series, path, width=640, height=400):
    """A chart without matplotlib: axes and one coloured polyline per target
    on a log scale, no text (the legend colours are in docs/benchmarks.md)."""
    import math

    px = [[(255, 255, 255)] * width for _ in range(height)]
    left, right, top, bottom = 50, width - 20, 20, height - 40
    vals = [v for pts in series.values() for _, v in pts if v > 0]
    lo, hi = (math.log10(min(vals)), math.log10(max(vals))) if vals else (0, 1)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5

    def put(x, y, c):
        if 0 <= x < width and 0 <= y < height:
            px[y][x] = c

    def seg(x0, y0, x1, y1, c):
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(n + 1):
            x, y = round(x0 + (x1 - x0) * i / n), round(y0 + (y1 - y0) * i / n)
            for dx in (0, 1):
                for dy in (0, 1):
                    put(x + dx, y + dy, c)

    seg(left, top, left, bottom, (0, 0, 0))
    seg(left, bottom, right, bottom, (0, 0, 0))
    for target, pts in series.items():
        c = tuple(int(COLORS[target][i : i + 2], 16) for i in (1, 3, 5))
        xy = [
            (left + (right - left) * loss / 5, bottom - (bottom - top) * (math.log10(v) - lo) / (hi - lo))
            for loss, v in pts
            if v > 0
        ]
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            seg(round(x0), round(y0), round(x1), round(y1), c)
    raw = b"".join(b"\x00" + bytes(v for p in row for v in p) for row in px)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


# ---------------------------------------------------------------- markdown


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "CPU": model,
        "cores (nproc)": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "rustc": sh(["rustc", "--version"]) or "unknown",
    }


def smoltcp_version(root):
    lock = os.path.join(root, "bench", "smoltcp-ref", "Cargo.lock")
    try:
        with open(lock, encoding="utf-8") as f:
            text = f.read()
        for block in text.split("[[package]]"):
            if 'name = "smoltcp"' in block:
                return block.split('version = "', 1)[1].split('"', 1)[0]
    except (OSError, IndexError):
        pass
    return "0.14"


def targets(cells):
    """The issue's targets, each as (target, what this run measured, met?)."""

    def med(key, target="tunstack"):
        c = cells.get((key, target))
        return c.median() if c and c.values else None

    def yes(ok):
        return "n/a" if ok is None else ("yes" if ok else "no")

    def r(a, b):
        return None if a is None or b is None or not b else a / b

    out = []
    for key, off, label in (
        ("bulk_to_stack", "bulk_to_stack_offload", "Bulk kernel → stack ≥ 1.2 × smoltcp"),
        ("bulk_from_stack", "bulk_from_stack_offload", "Bulk stack → kernel ≥ 1.2 × smoltcp"),
    ):
        plain = r(med(key), med(key, "smoltcp"))
        offl = r(med(off), med(key, "smoltcp"))
        text = f"plain TUN: {plain:.2f} ×" if plain is not None else "plain TUN: n/a"
        if offl is not None:
            text += f"; with --offload: {fmt_num(med(off))} Mbit/s = {offl:.2f} × smoltcp"
        best = max((x for x in (plain, offl) if x is not None), default=None)
        met = yes(None if best is None else best >= 1.2)
        if plain is not None and plain < 1.2 and offl is not None and offl >= 1.2:
            met = "with --offload"
        out.append((label, text, met))
    rr, rr_s, rr_k = med("rr_pinned"), med("rr_pinned", "smoltcp"), med("rr_pinned", "kernel")
    ok = None if None in (rr, rr_s, rr_k) else rr <= rr_s and rr <= 1.2 * rr_k
    out.append((
        "1-byte round trip on one CPU ≤ smoltcp and ≤ 1.2 × kernel",
        "n/a" if ok is None else f"{fmt_num(rr)} µs: {rr / rr_s:.2f} × smoltcp, {rr / rr_k:.2f} × kernel",
        yes(ok),
    ))
    cr = r(med("conn_rate"), med("conn_rate", "smoltcp"))
    out.append(("Connect/close ≥ 1.5 × smoltcp", "n/a" if cr is None else f"{cr:.2f} ×", yes(None if cr is None else cr >= 1.5)))
    l5 = r(med("loss_5"), med("loss_5", "kernel"))
    out.append(("Goodput at 5 % loss ≥ kernel", "n/a" if l5 is None else f"{l5:.2f} × kernel", yes(None if l5 is None else l5 >= 1.0)))
    rss = med("conc_10k_rss")
    out.append((
        "10,000 idle connections ≤ 4 KiB RSS each",
        "n/a" if rss is None else f"{fmt_num(rss)} bytes per connection",
        yes(None if rss is None else rss <= 4096),
    ))
    for fkey, tkey, label in (("p171_file_0", "p171_tcp_0", "0 %"), ("p171_file_5", "p171_tcp_5", "5 %")):
        x = r(med(fkey), med(tkey))
        out.append((
            f"Protocol 171 ≥ 0.5 × tunstack TCP ({label} loss, node → node)",
            "n/a" if x is None else f"{x:.2f} ×",
            yes(None if x is None else x >= 0.5),
        ))
    m = med("p170_msg_rate")
    out.append((
        "Protocol 170 ≥ 100,000 acknowledged messages/s",
        "n/a" if m is None else f"{fmt_num(m)} msg/s",
        yes(None if m is None else m >= 100_000),
    ))
    return out


def write(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    meta, end, rows = load(path)
    cells = collect(rows)
    series = loss_series(cells)
    reasons = {}
    for target in TARGETS:
        cell = cells.get(("loss_0", target))
        if cell and not cell.values:
            reasons[target] = cell.na or (cell.errors[0] if cell.errors else "no data")
    png = os.path.join(root, "docs", "bench-loss.png")
    try:
        chart_matplotlib(series, reasons, png)
        chart_note = "drawn with matplotlib"
    except ImportError:
        chart_plain(series, png)
        chart_note = "plain chart (matplotlib missing): red tunstack, blue smoltcp, green kernel; log y"

    md = []
    md.append("# Benchmarks")
    md.append("")
    md.append(
        "Generated by `bench/report.py` from `bench/results/latest.jsonl`, written by `make bench` "
        "(`bench/run.sh`). Do not edit by hand: rerun `make bench`."
    )
    md.append("")
    md.append(
        f"Run of {meta.get('date', '?')}: {meta.get('rounds', '?')} round(s) per target and workload, "
        f"{end.get('seconds', '?')} s in all, tunstack at `{meta.get('tunstack_rev', '?')}`. "
        "Each cell is the median over the rounds, with min–max in brackets. The ratios divide "
        "tunstack's median by the other's: above 1 is better for tunstack where higher is better, "
        "below 1 where lower is better."
    )
    md.append("")
    md.append("| " + " | ".join(HEADER) + " |")
    md.append("|" + "|".join(["---"] * len(HEADER)) + "|")
    for r in table_rows(cells):
        md.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    md.append("")
    for text in file_vs_tcp(cells):
        md.append(f"- {text[0].upper()}{text[1:]}")
    md.append("")
    md.append(f"![Goodput against loss](bench-loss.png) ({chart_note})")
    md.append("")
    md.append("## The machine")
    md.append("")
    for k, v in machine().items():
        md.append(f"- {k}: {v}")
    md.append(f"- smoltcp (reference server): {smoltcp_version(root)}")
    md.append("")
    if meta.get("loadavg"):
        md.append(f"- load average when the run started: {meta['loadavg']} (other builds share the cores)")
    md.append("")
    md.append("Timings on this machine type are noisy (2 shared cores): compare the columns of one run, not runs.")
    md.append("")
    md.append("## Known limits of the reference figures")
    md.append("")
    md.append(
        "- smoltcp connect/close rate is low (about 250/s): when the client's last data byte and its FIN arrive "
        "back to back, smoltcp-ref answers the FIN only after a few milliseconds (tcpdump shows the kernel "
        "retransmitting its FIN first). Not yet understood; turning delayed ACKs off (`--ack-delay-ms 0`) did "
        "not help. Treat tunstack/smoltcp on that row with care."
    )
    md.append(
        "- The kernel loses little goodput to 5 % loss here because the path RTT is tens of microseconds; "
        "smoltcp (no SACK) falls back to timeouts."
    )
    md.append("")
    md.append("## The targets of issue 7 in this run")
    md.append("")
    md.append("| target | measured in this run | met |")
    md.append("|---|---|---|")
    for target, measured, met in targets(cells):
        md.append(f"| {target} | {measured} | {met} |")
    md.append("")
    md.append(
        "- **Bulk on a plain TUN** (the rows without offload): both TUN stacks sit near the single-queue "
        "TUN's ceiling of one system call per packet (about 740k packets/s each way, the issue's reference "
        "figure). `perf` on the node during the chargen transfer puts 86 % of its time in the kernel (one "
        "`write` per packet into the TUN and the kernel's TCP receive path, run in the node's system call) "
        "and 14 % in tunstack, so no change inside the stack moves that row much. The remedy is fewer "
        "system calls per byte: `--offload` (IFF_VNET_HDR with TSO4, docs/architecture.md) moves TCP "
        "through the TUN in super-segments of up to 64 KiB, still MTU-sized on the wire. smoltcp-ref reads "
        "plain TUN packets, so its plain rows are the comparison for tunstack's offload rows; the kernel "
        "is measured with TSO/GSO/GRO back on for those rows."
    )
    md.append(
        "- **Goodput under loss**: the sender is the Linux kernel (BBR in this lab) for every target, so "
        "these rows compare paths and receivers. tunstack's receiver grows its window while out-of-order "
        "data fills it (up to 4 MiB) and keeps 1,024 SACK ranges; as a sender it uses BBR-style control "
        "by default, which ignores random loss (docs/tcp.md)."
    )
    md.append(
        "- **Protocol 171 against tunstack TCP**: compared node → node on the same path "
        "(`ctl filebench` against `ctl tcpbench`). 171 pays for a SHA-256 over every byte at the receiver "
        "and an fsync of the file before DONE; TCP into discard pays neither."
    )
    md.append("")
    md.append("## What runs")
    md.append("")
    md.append(
        "- **tunstack**: `tunstack node --tun tun0 --addr 198.18.0.2/24 --no-console` "
        "(`--serve echo:7 --serve discard:9 --serve chargen:19` once the node has `--serve`)."
    )
    md.append(
        "- **smoltcp**: `bench/smoltcp-ref` (`smoltcp-ref --tun tun0 --addr 198.18.0.2/24`): smoltcp "
        f"{smoltcp_version(root)}, `Medium::Ip` on the same kind of TUN, a `phy::wait` + `poll_delay` loop, "
        "1 MiB receive and send buffers per socket, 16 listening sockets per port topped up as "
        "connections arrive, ICMP echo answered by the interface."
    )
    md.append(
        "- **kernel**: `tsbench server` (one thread per connection, blocking sockets) in a second namespace "
        "over a veth pair with `tx tso gso gro` offloads off, so it moves MTU-sized segments like the TUN stacks."
    )
    md.append(
        "- **Offload rows**: tunstack's node with `--offload` (IFF_VNET_HDR + TSO4 on its TUN) and the kernel "
        "with `tx tso gso gro` back on over its veth pair; same generators, 1 GB each way."
    )
    md.append(
        "- **Generators**: `tsbench` (`bench/smoltcp-ref/src/bin/tsbench.rs`) on kernel sockets in the client "
        "namespace, the same for every target: `send` (to discard, timed until the server closes after our FIN), "
        "`recv` (from chargen), `rr` (1-byte echo, TCP_NODELAY, 100 warm-up exchanges, then 10,000 timed), "
        "`connrate` (connect, 1 byte, half-close, wait for the server's FIN; 3 s), `hold` (10,000 connections "
        "opened, each checked with one echo, server RSS read from /proc before and after), ICMP with "
        "`ping -c 1000 -i 0.001`. One CPU: `taskset -c 0` for the generator and `taskset -a -p -c 0` for the server."
    )
    md.append(
        "- **Loss**: the client reaches a second TUN (tunstack, smoltcp) or a kernel server through a router "
        "namespace whose nftables forward chain has `numgen random mod 100 < N drop`, applied to both "
        "directions; 300 MB to discard, capped at 10 s."
    )
    md.append(
        "- **Protocols 170 and 171** (tunstack only): two nodes, 198.18.0.2 on the client namespace's TUN and "
        "198.18.1.2 on the router's, each with a data directory (the inbox is synced before every ACK, "
        "received files before DONE); the client namespace forwards between its TUN and the router. "
        "`tunstack ctl msgbench 198.18.1.2 --count 500000 --size 64 --window 1024` (messages/s of "
        "acknowledged messages, at most 1,024 undelivered; latency from queueing to the acknowledgement as "
        "the command sees it) and `--count 3000 --window 1` (one message at a time: the latency row); "
        "`tunstack ctl filebench 198.18.1.2 --size 500M` (0 % loss) and `--size 200M` (5 % loss on the router): "
        "a fresh file of random bytes, timed from the offer to DONE, i.e. until the receiver has checked the "
        "SHA-256 and synced the file; hashing before the offer is not timed. Compare the file rows with "
        "tunstack's own TCP on the same node-to-node path: `tunstack ctl tcpbench 198.18.1.2 --size 500M` "
        "(`--size 200M` at 5 % loss) into the peer node's discard service."
    )
    md.append(
        "- Kernel RSS per connection counts only the user-space server (its thread stacks); the kernel's "
        "socket memory is not in it. smoltcp's buffers are 1 MiB mappings touched only as far as used."
    )
    md.append("")
    md.append("## Commands")
    md.append("")
    md.append("```")
    md.append("make bench            # as root: builds, runs bench/run.sh, writes this page (< 15 min)")
    md.append("BENCH_ROUNDS=5 make bench")
    md.append("make bench-smoke      # one short round, < 1 min, part of make test")
    md.append("bench/report.py table bench/results/latest.jsonl")
    md.append("```")
    md.append("")
    md.append(
        "Workloads marked n/a could not run in this build; the reason says why (probed at run time, "
        "e.g. the node has no TCP yet)."
    )
    md.append("")
    with open(os.path.join(root, "docs", "benchmarks.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    print(f"wrote docs/benchmarks.md and docs/bench-loss.png ({chart_note})")


def main(argv):
    if len(argv) != 3 or argv[1] not in ("table", "write"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[1] == "table":
        print_table(argv[2])
    else:
        write(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
