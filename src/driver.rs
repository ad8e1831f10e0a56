//! The event loop: the thin shell that connects a [`Node`](crate::node::Node) to a real device.
//!
//! One mio poll waits on the TUN fd, the control socket and a waker (callers on other threads),
//! with the node's next deadline as its timeout. Each wake-up drains every packet the device has
//! (up to a budget, so the loop stays fair), runs the node's timers and apps, and writes every
//! queued packet out. It is the only place that moves bytes between the device and the stack.

use crate::device::{Device, PacketRing, PcapWriter};
use crate::node::clock::unix_micros;
use crate::node::{commands, DeviceCounters, NodeHandle};
use crate::tcp::events::ResetReport;
use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

const TUN: Token = Token(0);
const CONTROL: Token = Token(1);
const WAKE: Token = Token(2);

/// Packets read per wake-up before the loop runs timers and writes output: keeps latency
/// bounded under a flood while still amortising the wake-up cost.
const READ_BUDGET: usize = 512;
/// After a turn that read packets, the loop polls without sleeping for this long before it
/// blocks: the answer to what it just sent (ACKs, the next request) usually comes within tens
/// of microseconds, and a sleep and wake-up costs about as much as the round trip itself.
/// An idle node sleeps as before.
const SPIN: Duration = Duration::from_micros(50);

pub struct Driver<D: Device + AsRawFd> {
    pub device: D,
    pub pcap: Option<PcapWriter<BufWriter<File>>>,
    pub control: Option<(UnixListener, PathBuf)>,
    /// `--rst-dump DIR`: recent packets, written out when a connection is reset.
    pub rst_dump: Option<RstDump>,
}

/// Keeps the last packets in memory and writes those of a connection to
/// `DIR/rst-<unix ms>-<local>-<remote>.pcap` when it is reset.
pub struct RstDump {
    dir: PathBuf,
    ring: PacketRing,
    last_dump_us: u64,
}

impl RstDump {
    /// Packets and bytes kept: a few seconds of a busy connection, 4 MiB at most.
    pub const MAX_PACKETS: usize = 2_000;
    pub const MAX_BYTES: usize = 4 << 20;
    /// Dumps at least this far apart (10 per second): a reset flood (say, a SYN flood at a
    /// closed port) must not become a flood of files. Skipped dumps are counted.
    const MIN_INTERVAL_US: u64 = 100_000;
    /// Files written in one run at most.
    const MAX_FILES: u64 = 1_000;

    pub fn new(dir: PathBuf) -> RstDump {
        RstDump {
            dir,
            ring: PacketRing::new(Self::MAX_PACKETS, Self::MAX_BYTES),
            last_dump_us: 0,
        }
    }

    fn dump(&mut self, r: &ResetReport, wall_us: u64, counters: &mut DeviceCounters) {
        if counters.rst_dumps_written >= Self::MAX_FILES
            || wall_us.saturating_sub(self.last_dump_us) < Self::MIN_INTERVAL_US
        {
            counters.rst_dumps_skipped += 1;
            return;
        }
        self.last_dump_us = wall_us;
        let name = format!(
            "rst-{}-{}.{}-{}.{}.pcap",
            wall_us / 1000,
            r.local.ip(),
            r.local.port(),
            r.remote.ip(),
            r.remote.port()
        );
        let path = self.dir.join(name);
        let mut n = 0;
        let result = std::fs::File::create(&path)
            .and_then(|f| PcapWriter::new(BufWriter::new(f)))
            .and_then(|mut w| {
                let mut pkts: Vec<(u64, &[u8])> = self.ring.connection(r.local, r.remote).collect();
                if pkts.is_empty() {
                    // Not one packet of the connection left in the ring: the context is all there is.
                    pkts = self.ring.iter().collect();
                }
                for (ts, p) in pkts {
                    w.write_packet(ts, p)?;
                    n += 1;
                }
                w.flush()
            });
        match result {
            Ok(()) => {
                counters.rst_dumps_written += 1;
                log::info!(
                    "rst-dump: {} {} <-> {} ({}): {n} packets in {}",
                    if r.reason == crate::tcp::events::RstReason::Received {
                        "reset received"
                    } else {
                        "reset sent"
                    },
                    r.local,
                    r.remote,
                    r.reason.as_str(),
                    path.display()
                );
            }
            Err(e) => {
                counters.rst_dumps_skipped += 1;
                log::warn!("rst-dump: cannot write {}: {e}", path.display());
            }
        }
    }
}

impl<D: Device + AsRawFd> Driver<D> {
    /// Runs until `handle.stop()` (a signal, `quit`, or a fatal device error).
    pub fn run(mut self, handle: NodeHandle) -> io::Result<()> {
        let mut poll = Poll::new()?;
        let fd = self.device.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), TUN, Interest::READABLE)?;
        if let Some((l, _)) = self.control.as_mut() {
            poll.registry().register(l, CONTROL, Interest::READABLE)?;
        }
        handle.set_waker(Waker::new(poll.registry(), WAKE)?);
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; 65_536];
        let mut more_to_read = true;
        let mut spin_until: Option<std::time::Instant> = None;
        let result = loop {
            if handle.is_stopping() {
                break Ok(());
            }
            let spinning = spin_until.is_some_and(|t| std::time::Instant::now() < t);
            let timeout = if more_to_read || spinning {
                Some(Duration::ZERO)
            } else {
                let node = handle.lock();
                let now = handle.now();
                // Never sleep forever: a slow tick bounds the damage of a missed wake-up.
                let cap = Duration::from_millis(500);
                Some(node.poll_at().map(|t| (t - now).min(cap)).unwrap_or(cap))
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(e);
            }
            for ev in events.iter() {
                if ev.token() == CONTROL {
                    self.accept_control(&handle);
                }
            }
            match self.turn(&handle, &mut buf) {
                Ok((more, read_any)) => {
                    more_to_read = more;
                    if read_any {
                        spin_until = Some(std::time::Instant::now() + SPIN);
                    }
                }
                Err(e) => break Err(e),
            }
            handle.notify();
        };
        if let Some(p) = self.pcap.as_mut() {
            let _ = p.flush();
        }
        if let Some((_, path)) = self.control.take() {
            let _ = std::fs::remove_file(path);
        }
        handle.stop();
        result
    }

    /// One turn of the loop: read, run, write. Returns whether the device may have more to read,
    /// and whether it read anything.
    fn turn(&mut self, handle: &NodeHandle, buf: &mut [u8]) -> io::Result<(bool, bool)> {
        let mut node = handle.lock();
        let now = handle.now();
        node.device.wakeups += 1;
        let wall = (self.pcap.is_some() || self.rst_dump.is_some()).then(unix_micros);
        let mut reads = 0;
        let mut more = false;
        loop {
            if reads == READ_BUDGET {
                more = true;
                break;
            }
            let n = match self.device.recv(buf)? {
                Some(n) => n,
                None => break,
            };
            reads += 1;
            node.device.packets_read += 1;
            node.device.bytes_read += n as u64;
            if let (Some(p), Some(ts)) = (self.pcap.as_mut(), wall) {
                if p.write_packet(ts, &buf[..n]).is_err() {
                    node.device.pcap_errors += 1;
                }
            }
            if let (Some(d), Some(ts)) = (self.rst_dump.as_mut(), wall) {
                d.ring.record(ts, &buf[..n]);
            }
            let node = &mut *node;
            match node.impair_in.as_mut() {
                Some(imp) => imp.push(now, &buf[..n]),
                None => node.stack.handle_packet(now, &buf[..n]),
            }
        }
        {
            let node = &mut *node;
            if let Some(imp) = node.impair_in.as_mut() {
                while let Some(p) = imp.pop(now) {
                    node.stack.handle_packet(now, &p);
                    imp.recycle(p);
                }
            }
        }
        node.poll(now);
        node.commit();
        node.check_limits(now);
        let node = &mut *node;
        while let Some(p) = node.stack.transmit() {
            match node.impair_out.as_mut() {
                Some(imp) => imp.push(now, &p),
                None => write_packet(
                    &mut self.device,
                    self.pcap.as_mut(),
                    self.rst_dump.as_mut().map(|d| &mut d.ring),
                    wall,
                    &mut node.device,
                    &p,
                )?,
            }
            node.stack.recycle(p);
        }
        if let Some(imp) = node.impair_out.as_mut() {
            while let Some(p) = imp.pop(now) {
                write_packet(
                    &mut self.device,
                    self.pcap.as_mut(),
                    self.rst_dump.as_mut().map(|d| &mut d.ring),
                    wall,
                    &mut node.device,
                    &p,
                )?;
                imp.recycle(p);
            }
        }
        match self.device.flush() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Err(e),
            Err(e) => {
                node.device.write_errors += 1;
                log::debug!("device write failed: {e}");
            }
        }
        node.device.absorb(self.device.stats());
        // After the writes, so the RST this turn sent is in the ring too.
        while let Some(r) = node.stack.tcp.poll_reset() {
            if let (Some(d), Some(ts)) = (self.rst_dump.as_mut(), wall) {
                d.dump(&r, ts, &mut node.device);
            }
        }
        Ok((more, reads > 0))
    }

    fn accept_control(&mut self, handle: &NodeHandle) {
        let Some((listener, _)) = self.control.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let h = handle.clone();
                    // A command may block (ping, messages --follow): give it its own thread so the
                    // loop never waits on a client.
                    let spawned = std::thread::Builder::new()
                        .name("tunstack-ctl".into())
                        .spawn(move || serve_control(h, stream));
                    if let Err(e) = spawned {
                        log::warn!("control: cannot start a thread for a client: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("control: accept failed: {e}");
                    return;
                }
            }
        }
    }
}

fn write_packet<D: Device>(
    dev: &mut D,
    pcap: Option<&mut PcapWriter<BufWriter<File>>>,
    ring: Option<&mut PacketRing>,
    wall: Option<u64>,
    counters: &mut DeviceCounters,
    p: &[u8],
) -> io::Result<()> {
    if let (Some(r), Some(ts)) = (ring, wall) {
        r.record(ts, p);
    }
    if let (Some(w), Some(ts)) = (pcap, wall) {
        if w.write_packet(ts, p).is_err() {
            counters.pcap_errors += 1;
        }
    }
    match dev.send(p) {
        Ok(()) => {
            counters.packets_written += 1;
            counters.bytes_written += p.len() as u64;
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Err(e),
        Err(e) => {
            counters.write_errors += 1;
            log::debug!("device write failed: {e}");
            Ok(())
        }
    }
}

/// The control protocol: the client sends one line, a JSON array of words
/// (`["status","--json"]`); the node answers with text and closes. An answer whose first line
/// starts with `error: ` is a failure.
fn serve_control(h: NodeHandle, stream: mio::net::UnixStream) {
    let std_stream: std::os::unix::net::UnixStream = stream.into();
    let _ = std_stream.set_nonblocking(false);
    let _ = std_stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let reader_stream = match std_stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::new(reader_stream).take(64 * 1024);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut out = std_stream;
    let args: Vec<String> = match serde_json::from_str(line.trim()) {
        Ok(a) => a,
        Err(_) => commands::split_words(line.trim()),
    };
    if args.first().map(String::as_str) == Some("quit") {
        let _ = writeln!(
            out,
            "error: 'quit' is for the console; stop the node with SIGINT or SIGTERM"
        );
        return;
    }
    if let Err(e) = commands::execute(&h, &args, &mut out) {
        let _ = writeln!(out, "error: {e}");
    }
}
