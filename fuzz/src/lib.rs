//! Fuzz harnesses for tunstack, one function per target. Each takes arbitrary bytes, drives one
//! parser or state machine entry with them and asserts invariants that can fail: no panic is the
//! baseline; emitted packets fit the MTU and carry valid checksums; a parsed repr re-emits to
//! bytes that parse to the same repr; bytes an application reads are bytes its peer sent.
//!
//! The same file is compiled three ways: as the `tunstack_fuzz` library of the cargo-fuzz crate
//! (`fuzz/fuzz_targets/*.rs` are one-line wrappers), into `tests/random_input.rs` (proptest on
//! stable Rust) and into `examples/fuzz_seeds.rs` (seed corpora from simulator captures), the
//! last two through `#[path]`. It depends on nothing but `tunstack`, `sha2` and std.
//!
//! Structured targets read their input with [`Input`], which yields zeros once the bytes run
//! out, so every input is valid and the fuzzer spends its time in the state machines. Checksums
//! and CRCs are fixed up by the harness wherever the fuzzer could not compute them.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use tunstack::cat::record::{DirectionKeys, Opener, RecordError, RecordType, Sealer};
use tunstack::file::store::MemStore;
use tunstack::file::wire as fwire;
use tunstack::file::{Direction, FileEvent};
use tunstack::msg::wire::{self as mwire, AckRepr, Header, HelloRepr};
use tunstack::session::wire::{self as swire, ErrorRepr, FrameType, Parsed, SynAckRepr, SynRepr};
use tunstack::session::{ClientConfig, Event, Mode, ServerConfig, Session, Timing};
use tunstack::stack::{Stack, StackConfig};
use tunstack::tcp::wire::{Flags, TcpHeader};
use tunstack::tcp::{ListenerHandle, SocketHandle};
use tunstack::time::{Duration, Instant};
use tunstack::wire::checksum;
use tunstack::wire::icmp::IcmpRepr;
use tunstack::wire::ipv4::Ipv4Repr;

/// Our address in every stack target.
pub const US: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Peers the fuzzer speaks as.
pub const PEERS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
/// The listening port of the TCP targets.
pub const PORT: u16 = 80;

// ---------------------------------------------------------------------------------------------
// Input and packet building

/// A cursor over fuzz input that never fails: past the end every read is zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// The mock clock: one byte is a step of 0-127 ms, or of 1-128 s (timers up to TIME-WAIT and
/// idle timeouts are reachable in a few steps).
pub fn time_step(b: u8) -> Duration {
    if b < 128 {
        Duration::from_millis(b as u64)
    } else {
        Duration::from_secs((b - 127) as u64)
    }
}

/// An unfragmented IPv4 packet with a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr::new(src, dst, protocol, payload.len());
    let mut p = vec![0u8; 20 + payload.len()];
    repr.emit(&mut p);
    p[20..].copy_from_slice(payload);
    p
}

/// Fields of a TCP segment the harness builds; `options` are raw bytes, padded with zeros.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Segment {
    /// The segment with a correct checksum for the pseudo-header `src -> dst`.
    pub fn bytes(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let olen = self.options.len().min(40).div_ceil(4) * 4;
        let hlen = 20 + olen;
        let mut b = vec![0u8; hlen + self.payload.len()];
        b[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        b[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        b[4..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..12].copy_from_slice(&self.ack.to_be_bytes());
        b[12] = ((hlen / 4) as u8) << 4;
        b[13] = self.flags;
        b[14..16].copy_from_slice(&self.window.to_be_bytes());
        b[18..20].copy_from_slice(&self.urgent.to_be_bytes());
        let n = self.options.len().min(40);
        b[20..20 + n].copy_from_slice(&self.options[..n]);
        b[hlen..].copy_from_slice(&self.payload);
        fix_tcp_checksum(src, dst, &mut b);
        b
    }

    pub fn packet(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        ipv4(src, dst, 6, &self.bytes(src, dst))
    }
}

pub fn fix_tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &mut [u8]) {
    if seg.len() < 20 {
        return;
    }
    seg[16] = 0;
    seg[17] = 0;
    let sum = checksum::accumulate(checksum::pseudo_header(src, dst, 6, seg.len()), seg);
    let c = checksum::finish(sum);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
}

/// Makes the 44-byte header of protocols 170/171 valid: version, payload length, CRC-32C.
pub fn seal_p17x(buf: &mut [u8]) {
    if buf.len() < mwire::HEADER_LEN || buf.len() - mwire::HEADER_LEN > u16::MAX as usize {
        return;
    }
    buf[0] = mwire::VERSION;
    let len = (buf.len() - mwire::HEADER_LEN) as u16;
    buf[40..42].copy_from_slice(&len.to_be_bytes());
    let crc = mwire::packet_crc(buf);
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// What every stack target checks on the way out

/// One packet the stack sent, parsed far enough for the targets' bookkeeping.
#[derive(Clone, Debug)]
pub struct Sent {
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub tcp: Option<(TcpHeader, Vec<u8>)>,
}

/// Checks and returns everything the stack has queued: never larger than the MTU, a valid IPv4
/// header from our address, and (unfragmented) a transport header that its own parser accepts.
#[track_caller]
pub fn drain(stack: &mut Stack, mtu: usize, out: &mut Vec<Sent>) {
    while let Some(p) = stack.transmit() {
        assert!(
            p.len() <= mtu,
            "sent {} bytes over an MTU of {mtu}",
            p.len()
        );
        let (ip, payload) = match Ipv4Repr::parse(&p) {
            Ok(x) => x,
            Err(e) => panic!("sent an invalid IPv4 packet ({e:?}): {}", hex(&p)),
        };
        assert_eq!(ip.src, stack.addr(), "sent from a foreign address");
        assert_eq!(
            ip.total_len(),
            p.len(),
            "IPv4 total length differs from the packet"
        );
        let mut tcp = None;
        if !ip.is_fragment() {
            match ip.protocol {
                1 => {
                    if let Err(e) = IcmpRepr::parse(payload) {
                        panic!("sent invalid ICMP ({e:?}): {}", hex(&p));
                    }
                }
                6 => match TcpHeader::parse(ip.src, ip.dst, payload) {
                    Ok((h, data)) => tcp = Some((h, data.to_vec())),
                    Err(e) => panic!("sent an invalid TCP segment ({e:?}): {}", hex(&p)),
                },
                170 | 171 => {
                    let (h, body) = match Header::parse(payload) {
                        Ok(x) => x,
                        Err(e) => panic!("sent an invalid protocol {} packet ({e:?})", ip.protocol),
                    };
                    if ip.protocol == 171 {
                        if let Err(e) = fwire::Repr::parse(h.ty, body) {
                            panic!("sent a 171 payload its own parser refuses: {e:?}");
                        }
                    } else {
                        check_msg_payload(h.ty, body, true);
                    }
                }
                _ => {}
            }
        }
        out.push(Sent {
            dst: ip.dst,
            protocol: ip.protocol,
            tcp,
        });
        stack.recycle(p);
    }
}

/// Runs due timers until the stack has nothing due at `now`, checking its output. A stack whose
/// deadline stays at or before `now` after many polls is spinning: the driver would busy-loop.
#[track_caller]
pub fn settle(stack: &mut Stack, now: Instant, mtu: usize, out: &mut Vec<Sent>) {
    for _ in 0..64 {
        drain(stack, mtu, out);
        match stack.poll_at() {
            Some(t) if t <= now => stack.poll(now),
            _ => return,
        }
    }
    panic!("poll_at() stays at or before now after 64 polls: the driver would spin");
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn new_stack(mtu: usize, seed: u64) -> Stack {
    let mut cfg = StackConfig::new(US, 24, mtu, seed);
    cfg.tcp.isn_secret = [7; 16];
    cfg.msg.node_id = 0x1001;
    cfg.file.node_id = 0x1001;
    // The default store is a `MemStore`, which allocates an offered file's whole size at once:
    // offers of up to 4 GiB would exhaust the fuzzer's memory, not find a bug.
    cfg.file.max_file_size = 1 << 20;
    Stack::new(cfg)
}

const MTUS: [usize; 4] = [1500, 576, 1280, 9000];

// ---------------------------------------------------------------------------------------------
// ip_input: any bytes into Stack::handle_packet, some of them repaired to get past the checks

/// Input: MTU selector, then records of `flags (u8) | time step (u8) | length (u16) | bytes`.
/// Flags: bit 0 fixes the IPv4 total length and header checksum, bit 1 sets the destination to
/// us, bit 2 fixes the transport checksum (ICMP, TCP, or the CRC of 170/171).
pub fn ip_input(data: &[u8]) {
    let mut inp = Input::new(data);
    let mtu = MTUS[inp.u8() as usize % MTUS.len()];
    let mut stack = new_stack(mtu, 1);
    let _ = stack.tcp.listen(PORT);
    let mut now = Instant::ZERO;
    let mut out = Vec::new();
    while !inp.is_empty() {
        let flags = inp.u8();
        now += time_step(inp.u8());
        let len = inp.u16() as usize % 4096;
        let mut p = inp.bytes(len).to_vec();
        repair(&mut p, flags);
        stack.handle_packet(now, &p);
        settle(&mut stack, now, mtu, &mut out);
        out.clear();
    }
    let r = stack.ip.reassembly_bytes();
    assert!(r <= 1 << 22, "reassembly holds {r} bytes");
}

/// Repairs what `flags` asks for (see [`ip_input`]); leaves anything too short alone.
pub fn repair(p: &mut [u8], flags: u8) {
    if p.len() < 20 {
        return;
    }
    let ihl = ((p[0] & 0x0f) as usize * 4).max(20);
    if flags & 2 != 0 {
        p[16..20].copy_from_slice(&US.octets());
    }
    if flags & 4 != 0 && p.len() > ihl {
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
        let protocol = p[9];
        let body = &mut p[ihl..];
        match protocol {
            1 if body.len() >= 8 => {
                body[2] = 0;
                body[3] = 0;
                let c = checksum::checksum(body);
                body[2..4].copy_from_slice(&c.to_be_bytes());
            }
            6 if !frag => fix_tcp_checksum(src, dst, body),
            170 | 171 if !frag => seal_p17x(body),
            _ => {}
        }
    }
    if flags & 1 != 0 && p.len() >= ihl {
        p[0] = 0x40 | (p[0] & 0x0f).max(5);
        let total = p.len().min(65535) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[10] = 0;
        p[11] = 0;
        let c = checksum::checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// TCP: a scripted set of peers speaking fuzzed segments to one stack

/// What the harness learned about one four-tuple from the stack's output and its own input.
#[derive(Default)]
struct Tuple {
    /// ISNs the stack used (its SYNs) and the peers' (every SYN they sent on the tuple).
    our_isns: Vec<u32>,
    peer_isns: Vec<u32>,
    /// The stack's highest sequence number sent plus length, and its last acknowledgement.
    snd_nxt: u32,
    rcv_nxt: u32,
    /// Every segment payload the peers sent on this tuple: (seq of first payload byte, bytes).
    peer_data: Vec<(u32, Vec<u8>)>,
    /// Salts and lengths of what applications wrote on sockets of this tuple.
    app_streams: Vec<(u8, usize)>,
}

struct Sock {
    h: SocketHandle,
    key: (u16, SocketAddrV4),
    salt: u8,
    written: usize,
    read: usize,
    /// Where the last byte read was found in the peer's log: a hint for the next byte.
    hint: (usize, usize),
}

/// The byte an application writes at offset `k` of a stream with `salt`: varied enough that a
/// misplaced or stale byte is caught.
fn app_byte(salt: u8, k: usize) -> u8 {
    let x = (k as u32).wrapping_mul(0x9e37_79b1) ^ (salt as u32).wrapping_mul(0x85eb_ca6b);
    (x >> 24) as u8 ^ (x >> 7) as u8
}

pub struct TcpHarness {
    pub stack: Stack,
    pub now: Instant,
    mtu: usize,
    listener: ListenerHandle,
    tuples: HashMap<(u16, SocketAddrV4), Tuple>,
    socks: Vec<Sock>,
    next_salt: u8,
    /// The tuple relative sequence numbers refer to by default.
    primary: (u16, SocketAddrV4),
    out: Vec<Sent>,
}

impl TcpHarness {
    pub fn new(mtu: usize) -> TcpHarness {
        let mut stack = new_stack(mtu, 3);
        let listener = stack.tcp.listen(PORT).expect("listen");
        TcpHarness {
            stack,
            now: Instant::ZERO,
            mtu,
            listener,
            tuples: HashMap::new(),
            socks: Vec::new(),
            next_salt: 0,
            primary: (PORT, SocketAddrV4::new(PEERS[0], 40000)),
            out: Vec::new(),
        }
    }

    /// Delivers one segment from `remote` to our port `local`, then lets the stack react.
    pub fn deliver(&mut self, local: u16, remote: SocketAddrV4, seg: &Segment) {
        let t = self.tuples.entry((local, remote)).or_default();
        let syn = seg.flags & Flags::SYN.0 != 0;
        // Any SYN the peer sent may be the one the stack synchronised on.
        if syn && !t.peer_isns.contains(&seg.seq) {
            t.peer_isns.push(seg.seq);
        }
        if !seg.payload.is_empty() {
            t.peer_data
                .push((seg.seq.wrapping_add(syn as u32), seg.payload.clone()));
        }
        let p = seg.packet(*remote.ip(), US);
        self.stack.handle_packet(self.now, &p);
        self.settle();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.settle();
    }

    fn settle(&mut self) {
        settle(&mut self.stack, self.now, self.mtu, &mut self.out);
        for s in std::mem::take(&mut self.out) {
            let Some((h, data)) = s.tcp else { continue };
            self.observe(s.dst, &h, &data);
        }
    }

    /// Bookkeeping of one segment the stack sent, and the check that its data is what an
    /// application wrote at that offset.
    fn observe(&mut self, dst: Ipv4Addr, h: &TcpHeader, data: &[u8]) {
        let key = (h.src_port, SocketAddrV4::new(dst, h.dst_port));
        let t = self.tuples.entry(key).or_default();
        let syn = h.flags.syn();
        if syn && !t.our_isns.contains(&h.seq.0) {
            t.our_isns.push(h.seq.0);
        }
        let end = h
            .seq
            .0
            .wrapping_add(data.len() as u32 + syn as u32 + h.flags.fin() as u32);
        if t.snd_nxt == 0 || (end.wrapping_sub(t.snd_nxt) as i32) > 0 {
            t.snd_nxt = end;
        }
        if h.flags.ack() {
            t.rcv_nxt = h.ack.0;
        }
        if data.is_empty() || h.flags.rst() {
            return;
        }
        assert!(!syn, "data on a SYN we sent");
        let ok = t.our_isns.iter().any(|&isn| {
            let off = h.seq.0.wrapping_sub(isn.wrapping_add(1)) as usize;
            t.app_streams.iter().any(|&(salt, len)| {
                off + data.len() <= len
                    && data
                        .iter()
                        .enumerate()
                        .all(|(j, &b)| b == app_byte(salt, off + j))
            })
        });
        assert!(
            ok,
            "sent {} bytes at seq {} on {key:?} that no application wrote there (ISNs {:?})",
            data.len(),
            h.seq.0,
            t.our_isns
        );
    }

    fn add_sock(&mut self, h: SocketHandle) {
        let Some(remote) = self.stack.tcp.peer_addr(h) else {
            return;
        };
        let local = self.stack.tcp.local_addr(h).map_or(0, |a| a.port());
        let salt = self.next_salt;
        self.next_salt = self.next_salt.wrapping_add(1);
        let key = (local, remote);
        self.tuples
            .entry(key)
            .or_default()
            .app_streams
            .push((salt, 0));
        self.socks.push(Sock {
            h,
            key,
            salt,
            written: 0,
            read: 0,
            hint: (0, 0),
        });
    }

    pub fn accept_all(&mut self) {
        while let Some(h) = self.stack.tcp.accept(self.listener) {
            self.add_sock(h);
        }
    }

    /// Reads everything readable from socket `i`, checking each byte against what the peers sent
    /// at that stream offset.
    pub fn recv(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        loop {
            let s = &mut self.socks[i];
            let n = match self.stack.tcp.recv(s.h, &mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let t = self.tuples.get(&s.key).expect("tuple of a socket");
            for &b in &buf[..n] {
                s.hint = find_peer_byte(t, s.read, b, s.hint).unwrap_or_else(|| {
                    panic!(
                        "read byte {b:#04x} at offset {} of {:?}, which no peer sent there",
                        s.read, s.key
                    )
                });
                s.read += 1;
            }
        }
        self.settle();
    }

    pub fn send(&mut self, i: usize, n: usize) {
        let s = &mut self.socks[i];
        let data: Vec<u8> = (s.written..s.written + n)
            .map(|k| app_byte(s.salt, k))
            .collect();
        if let Ok(w) = self.stack.tcp.send(s.h, &data) {
            s.written += w;
            let t = self.tuples.get_mut(&s.key).expect("tuple of a socket");
            if let Some(e) = t.app_streams.iter_mut().find(|e| e.0 == s.salt) {
                e.1 = s.written;
            }
        }
        self.settle();
    }

    /// One fuzzed step: a segment from a peer (most of the time), an application call, or time.
    pub fn step(&mut self, inp: &mut Input<'_>) {
        let op = inp.u8();
        match op % 8 {
            0..=4 => {
                let seg_ctl = inp.u8();
                let (local, remote) = match seg_ctl & 3 {
                    0 | 1 => self.primary,
                    2 => (PORT, SocketAddrV4::new(PEERS[1], 40000 + (op as u16 >> 3))),
                    _ => (inp.u16(), SocketAddrV4::new(PEERS[0], inp.u16())),
                };
                let t = self.tuples.entry((local, remote)).or_default();
                let (rcv_nxt, snd_nxt) = (t.rcv_nxt, t.snd_nxt);
                let flags = inp.u8();
                // Relative numbers land near the window: the case the state machine cares about.
                let seq = if seg_ctl & 8 != 0 {
                    inp.u32()
                } else {
                    rcv_nxt.wrapping_add(inp.u16() as i16 as u32)
                };
                let ack = if seg_ctl & 16 != 0 {
                    inp.u32()
                } else {
                    snd_nxt.wrapping_add(inp.u16() as i16 as u32)
                };
                let window = inp.u16();
                let options = if seg_ctl & 32 != 0 {
                    let n = inp.u8() as usize % 41;
                    inp.bytes(n).to_vec()
                } else {
                    Vec::new()
                };
                let payload = if seg_ctl & 64 != 0 {
                    let n = inp.u8() as usize;
                    let chunk = inp.bytes(n);
                    let times = if seg_ctl & 128 != 0 { 16 } else { 1 };
                    chunk.repeat(times)
                } else {
                    Vec::new()
                };
                let seg = Segment {
                    src_port: remote.port(),
                    dst_port: local,
                    seq,
                    ack,
                    flags,
                    window,
                    urgent: 0,
                    options,
                    payload,
                };
                self.deliver(local, remote, &seg);
            }
            5 => {
                let a = inp.u8();
                self.accept_all();
                if self.socks.is_empty() {
                    return;
                }
                let i = (a >> 3) as usize % self.socks.len();
                match a & 7 {
                    0 | 1 => self.recv(i),
                    2 | 3 => self.send(i, (inp.u8() as usize + 1) * 64),
                    4 => {
                        let _ = self.stack.tcp.shutdown_write(self.socks[i].h);
                        self.settle();
                    }
                    5 => {
                        let s = self.socks.swap_remove(i);
                        self.stack.tcp.close(s.h);
                        self.settle();
                    }
                    6 => {
                        self.stack.tcp.abort(self.socks[i].h);
                        self.settle();
                    }
                    _ => {
                        let on = a & 0x80 != 0;
                        self.stack.tcp.set_nodelay(self.socks[i].h, on);
                    }
                }
            }
            6 => self.advance(time_step(inp.u8())),
            _ => {
                // An active open towards a peer that the fuzzer then answers.
                let port = 5000 + (inp.u8() as u16 & 3);
                let dst = SocketAddrV4::new(PEERS[1], port);
                if let Ok(h) = self.stack.tcp.connect(self.now, dst) {
                    self.add_sock(h);
                    if let Some(local) = self.stack.tcp.local_addr(h) {
                        self.primary = (local.port(), dst);
                    }
                }
                self.settle();
            }
        }
    }

    /// Completes a handshake with `remote` as a scripted peer: SYN with the usual options, our
    /// SYN-ACK, the ACK. The connection becomes the primary tuple and is accepted.
    pub fn open_passive(&mut self, remote: SocketAddrV4, peer_isn: u32) {
        let syn = Segment {
            src_port: remote.port(),
            dst_port: PORT,
            seq: peer_isn,
            flags: Flags::SYN.0,
            window: 65535,
            // MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
            options: vec![
                2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
            ],
            ..Segment::default()
        };
        self.deliver(PORT, remote, &syn);
        let t = &self.tuples[&(PORT, remote)];
        let our_isn = *t.our_isns.last().expect("the listener answered the SYN");
        let ack = Segment {
            src_port: remote.port(),
            dst_port: PORT,
            seq: peer_isn.wrapping_add(1),
            ack: our_isn.wrapping_add(1),
            flags: Flags::ACK.0,
            window: 65535,
            options: vec![1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 1],
            ..Segment::default()
        };
        self.deliver(PORT, remote, &ack);
        self.accept_all();
        assert!(!self.socks.is_empty(), "handshake did not complete");
        self.primary = (PORT, remote);
    }

    /// As `open_passive`, the other way: we connect and the scripted peer answers.
    pub fn open_active(&mut self, remote: SocketAddrV4, peer_isn: u32) {
        let h = self.stack.tcp.connect(self.now, remote).expect("connect");
        self.add_sock(h);
        self.settle();
        let local = self.stack.tcp.local_addr(h).expect("bound").port();
        let t = &self.tuples[&(local, remote)];
        let our_isn = *t.our_isns.last().expect("we sent a SYN");
        let synack = Segment {
            src_port: remote.port(),
            dst_port: local,
            seq: peer_isn,
            ack: our_isn.wrapping_add(1),
            flags: Flags::SYN.0 | Flags::ACK.0,
            window: 65535,
            options: vec![2, 4, 5, 0xb4, 1, 3, 3, 7, 4, 2, 0, 0],
            ..Segment::default()
        };
        self.deliver(local, remote, &synack);
        self.primary = (local, remote);
    }
}

/// Where in the peers' log byte `b` at stream offset `k` was sent, if anywhere; tries `hint`
/// (the place of the previous byte) first, so a run of bytes costs one lookup each.
fn find_peer_byte(t: &Tuple, k: usize, b: u8, hint: (usize, usize)) -> Option<(usize, usize)> {
    let at = |ii: usize, e: usize| -> bool {
        let Some(&isn) = t.peer_isns.get(ii) else {
            return false;
        };
        let Some((seq, data)) = t.peer_data.get(e) else {
            return false;
        };
        // Signed: a segment may begin before the stream does (its head overlaps the SYN or
        // precedes the ISN), and its later bytes still land at small offsets.
        let start = i64::from(seq.wrapping_sub(isn.wrapping_add(1)) as i32);
        usize::try_from(k as i64 - start)
            .ok()
            .and_then(|j| data.get(j))
            .is_some_and(|&x| x == b)
    };
    if at(hint.0, hint.1) {
        return Some(hint);
    }
    for e in (0..t.peer_data.len()).rev() {
        for ii in 0..t.peer_isns.len() {
            if at(ii, e) {
                return Some((ii, e));
            }
        }
    }
    None
}

/// Input: MTU selector, then steps (see [`TcpHarness::step`]).
pub fn tcp_listen(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut h = TcpHarness::new(MTUS[inp.u8() as usize % MTUS.len()]);
    while !inp.is_empty() {
        h.step(&mut inp);
    }
    h.accept_all();
    for i in 0..h.socks.len() {
        h.recv(i);
    }
}

/// Input: MTU selector and open mode, the peer's ISN, then steps on an established connection.
pub fn tcp_established(data: &[u8]) {
    let mut inp = Input::new(data);
    let b = inp.u8();
    let mut h = TcpHarness::new(MTUS[b as usize % MTUS.len()]);
    let peer_isn = inp.u32();
    if b & 4 == 0 {
        h.open_passive(SocketAddrV4::new(PEERS[0], 40000), peer_isn);
    } else {
        h.open_active(SocketAddrV4::new(PEERS[1], 5000), peer_isn);
    }
    while !inp.is_empty() {
        h.step(&mut inp);
    }
    for i in 0..h.socks.len() {
        h.recv(i);
    }
}

// ---------------------------------------------------------------------------------------------
// Protocols 170 and 171: decoding, re-emitting, and the file receiver

/// Checks the payload parsers of protocol 170 for type `ty`; `must` says the payload came from
/// our own emitter, so refusing it is a bug.
fn check_msg_payload(ty: u8, p: &[u8], must: bool) {
    match ty {
        mwire::ty::ACK => match AckRepr::parse(p) {
            Ok(a) => {
                let mut b = vec![0u8; a.buffer_len()];
                a.emit(&mut b);
                assert_eq!(b, p, "ACK payload re-emits differently");
            }
            Err(e) => assert!(!must, "our ACK payload refused: {e:?}"),
        },
        mwire::ty::HELLO => match HelloRepr::parse(p) {
            Ok(hl) => {
                let mut b = vec![0u8; hl.buffer_len()];
                hl.emit(&mut b);
                assert_eq!(b, p, "HELLO payload re-emits differently");
            }
            Err(e) => assert!(!must, "our HELLO payload refused: {e:?}"),
        },
        _ => {}
    }
    // DATA segments carry slices of an encoded message; whole ones decode on their own.
    if let Ok(m) = mwire::message::decode(p) {
        let mut b = Vec::new();
        mwire::message::encode(&mut b, &m);
        assert_eq!(b, p, "message encoding re-emits differently");
    }
}

/// Input: a flag byte (bit 0: repair version, length and CRC), then a packet of protocol 170.
pub fn msg_decode(data: &[u8]) {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flag & 1 != 0 {
        seal_p17x(&mut buf);
    }
    let Ok((h, payload)) = Header::parse(&buf) else {
        return;
    };
    let mut again = buf.clone();
    Header::emit(&h, &mut again);
    let (h2, p2) = Header::parse(&again).expect("a re-emitted header parses");
    assert_eq!((h2, p2), (h, payload), "header changes through emit");
    // Only the reserved bytes may differ from what arrived.
    for i in (0..buf.len()).filter(|i| ![3, 4, 5, 6, 7, 42, 43].contains(i)) {
        assert_eq!(buf[i], again[i], "byte {i} changes through emit");
    }
    check_msg_payload(h.ty, payload, false);
}

/// A 171 payload re-emits to bytes that parse to the same repr; byte for byte when nothing in
/// it exceeds what the emitter writes (strings of 1024 bytes).
fn check_file_repr(ty: u8, p: &[u8]) {
    let Ok(r) = fwire::Repr::parse(ty, p) else {
        return;
    };
    assert_eq!(r.ty(), ty);
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut b);
    let r2 = fwire::Repr::parse(ty, &b).expect("a re-emitted payload parses");
    let long = match &r {
        fwire::Repr::Offer {
            name,
            channel,
            sender,
            ..
        } => [name, channel, sender].iter().any(|s| s.len() > 1024),
        fwire::Repr::Refuse { reason, .. }
        | fwire::Repr::Cancel { reason, .. }
        | fwire::Repr::Done { reason, .. } => reason.len() > 1024,
        _ => false,
    };
    if long {
        let mut b2 = vec![0u8; r2.buffer_len()];
        r2.emit(&mut b2);
        assert_eq!(b, b2, "emit is not idempotent");
    } else {
        assert_eq!(r2, r, "repr changes through emit");
        assert_eq!(b, p, "payload re-emits differently");
    }
}

/// Input: as [`msg_decode`], a packet of protocol 171 (any type byte).
pub fn file_decode(data: &[u8]) {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flag & 1 != 0 {
        seal_p17x(&mut buf);
    }
    match Header::parse(&buf) {
        Ok((h, payload)) => check_file_repr(h.ty, payload),
        // Payload parsers see unsealed bytes too: they must not rely on the header checks.
        Err(_) => {
            if let Some((&ty, p)) = rest.split_first() {
                check_file_repr(ty % 10, p);
            }
        }
    }
}

/// The file the scripted sender offers in [`file_receiver`]: three chunks, the last one short.
pub const OFFER_CHUNK: u32 = 128;
pub fn offered_file() -> Vec<u8> {
    (0..300u32).map(|i| (i * 7 + 3) as u8).collect()
}
pub const OFFER_ID: u64 = 0x0171_0001;
const SENDER_NODE: u64 = 0x2002;

fn p171(ty: u8, seq: u32, payload: &[u8], node: u64) -> Vec<u8> {
    let mut b = vec![0u8; mwire::HEADER_LEN + payload.len()];
    b[mwire::HEADER_LEN..].copy_from_slice(payload);
    Header {
        ty,
        flags: 0,
        node_id: node,
        epoch: 5,
        peer_epoch: 0,
        seq,
        ack: 0,
    }
    .emit(&mut b);
    b
}

fn offer_payload(id: u64, size: u64, chunk: u32, sha: [u8; 32], name: &str) -> Vec<u8> {
    let r = fwire::Repr::Offer {
        id,
        size,
        chunk_size: chunk,
        sha256: sha,
        name,
        channel: "fuzz",
        sender: "peer",
    };
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut b);
    b
}

/// A receiving stack with a `MemStore`, offered [`offered_file`] by 10.0.0.2, then fed fuzzed
/// 171 packets. Input records: `ctl (u8) | time step (u8) | type (u8) | seq (u32) | length (u8) |
/// payload`. ctl bit 0: from 10.0.0.3 instead; bit 1: keep the payload's own id (else the
/// offer's id is written over its first 8 bytes); bit 2: leave the header unsealed.
/// Invariant: a file reported complete is in the store and hashes to the reported SHA-256.
pub fn file_receiver(data: &[u8]) {
    let mut inp = Input::new(data);
    let mtu = MTUS[inp.u8() as usize % MTUS.len()];
    let mut stack = new_stack(mtu, 5);
    let store = MemStore::new();
    stack.file.set_store(Box::new(store.clone()));
    let file = offered_file();
    let sha: [u8; 32] = Sha256::digest(&file).into();
    let mut now = Instant::ZERO;
    let mut out = Vec::new();
    let offer = offer_payload(OFFER_ID, file.len() as u64, OFFER_CHUNK, sha, "fuzz.bin");
    let pkt = ipv4(
        PEERS[0],
        US,
        171,
        &p171(fwire::ty::OFFER, 1, &offer, SENDER_NODE),
    );
    stack.handle_packet(now, &pkt);
    settle(&mut stack, now, mtu, &mut out);
    while !inp.is_empty() {
        let ctl = inp.u8();
        now += time_step(inp.u8());
        let ty = inp.u8() % 10;
        let seq = inp.u32();
        let n = inp.u8() as usize;
        let mut payload = inp.bytes(n).to_vec();
        if ctl & 2 == 0 {
            if payload.len() < 8 {
                payload.resize(8, 0);
            }
            payload[..8].copy_from_slice(&OFFER_ID.to_be_bytes());
        }
        let mut body = p171(ty, seq, &payload, SENDER_NODE);
        if ctl & 4 != 0 {
            body[4] ^= 1;
        }
        let src = PEERS[(ctl & 1) as usize];
        stack.handle_packet(now, &ipv4(src, US, 171, &body));
        settle(&mut stack, now, mtu, &mut out);
        out.clear();
        check_file_events(&mut stack, &store);
    }
    now += Duration::from_secs(120);
    settle(&mut stack, now, mtu, &mut out);
    check_file_events(&mut stack, &store);
}

fn check_file_events(stack: &mut Stack, store: &MemStore) {
    while let Some(ev) = stack.file.poll_event() {
        if let FileEvent::Completed {
            direction: Direction::Receive,
            name,
            bytes,
            sha256,
            ..
        } = ev
        {
            let got = store
                .completed(&name)
                .unwrap_or_else(|| panic!("completed {name:?} is not in the store"));
            assert_eq!(got.len() as u64, bytes, "completed size differs");
            let h: [u8; 32] = Sha256::digest(&got).into();
            assert_eq!(
                hex(&h),
                sha256,
                "completed file does not hash to its SHA-256"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Session framing

fn timing() -> Timing {
    Timing {
        rto: Duration::from_millis(100),
        max_rto: Duration::from_secs(1),
        keepalive: Duration::from_secs(2),
        dead_after: Duration::from_secs(6),
    }
}

pub fn session_server() -> ServerConfig {
    ServerConfig {
        max_size: 1024,
        window: 8,
        min_size: 16,
        modes: vec![Mode::Step, Mode::Burst],
        isn: 1000,
        session_id: 0x5e55,
        timing: timing(),
    }
}

pub fn session_client() -> ClientConfig {
    ClientConfig {
        mode: Mode::Burst,
        max_size: 512,
        window: 8,
        client_id: "fuzz".into(),
        isn: 7,
        timing: timing(),
    }
}

/// Frame and payload parsers: a parsed frame re-emits byte for byte; handshake and error
/// payloads re-emit to bytes that parse the same.
pub fn check_frames(buf: &[u8], max: usize) {
    let mut rest = buf;
    loop {
        match swire::parse(rest, max) {
            Parsed::Frame(f, used) => {
                assert!(used >= swire::HEADER_LEN && used <= rest.len());
                assert_eq!(used, swire::HEADER_LEN + f.payload.len());
                let again = swire::frame_bytes(f.kind, f.seq, &f.payload);
                assert_eq!(again, &rest[..used], "frame re-emits differently");
                match f.kind {
                    FrameType::Syn => {
                        if let Ok(s) = SynRepr::parse(&f.payload) {
                            let s2 = SynRepr::parse(&s.emit()).expect("SYN re-parses");
                            assert_eq!(SynRepr::parse(&s2.emit()), Ok(s2));
                        }
                    }
                    FrameType::SynAck => {
                        if let Ok(s) = SynAckRepr::parse(&f.payload) {
                            assert_eq!(s.emit(), f.payload, "SYN-ACK re-emits differently");
                        }
                    }
                    FrameType::Error => {
                        if let Ok(e) = ErrorRepr::parse(&f.payload) {
                            let e2 = ErrorRepr::parse(&e.emit()).expect("ERROR re-parses");
                            assert_eq!(e2, e);
                        }
                    }
                    _ => {}
                }
                rest = &rest[used..];
            }
            Parsed::BadChecksum { used, .. } => {
                assert!(used >= swire::HEADER_LEN && used <= rest.len());
                rest = &rest[used..];
            }
            Parsed::Incomplete | Parsed::TooLarge { .. } => return,
        }
    }
}

/// Input: a mode byte (bit 0: we are the client), then records `ctl (u8) | time step (u8) | ...`.
/// ctl bit 0 set: raw bytes `length (u8) | bytes` into the stream; clear: a frame the harness
/// seals, `type (u8) | seq delta (u8, signed, from the peer's next) | length (u8) | payload`.
/// Invariants: every frame we send parses with a good checksum within the negotiated size, and
/// a delivered message fits the negotiated size.
pub fn session_frame(data: &[u8]) {
    check_frames(data, 4096);
    let mut inp = Input::new(data);
    let client = inp.u8() & 1 != 0;
    let mut now = Instant::ZERO;
    let mut s = if client {
        Session::connect(session_client(), now)
    } else {
        Session::accept(session_server(), now)
    };
    let mut peer_seq: u32 = if client { 1000 } else { 7 };
    let mut max = if client { 512 } else { 1024 };
    while !inp.is_empty() {
        let ctl = inp.u8();
        now += time_step(inp.u8() / 2);
        if ctl & 1 != 0 {
            let n = inp.u8() as usize;
            s.handle_bytes(now, inp.bytes(n));
        } else {
            let ty = inp.u8() % 9;
            let seq = peer_seq.wrapping_add(inp.u8() as i8 as u32);
            let n = inp.u8() as usize;
            let payload = inp.bytes(n);
            if ty == 1 || ty == 5 {
                peer_seq = seq.wrapping_add(1);
            }
            s.handle_bytes(now, &swire::frame_bytes(FrameType::from(ty), seq, payload));
        }
        if s.poll_at().is_some_and(|t| t <= now) {
            s.handle_timeout(now);
        }
        if ctl & 2 != 0 && s.is_established() {
            let _ = s.send(now, vec![ctl; (ctl >> 2) as usize]);
        }
        if ctl == 0xff {
            s.close(now);
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Established(n) => {
                    max = n.max_size as usize;
                    assert!(n.max_size <= if client { 512 } else { 1024 });
                }
                Event::Message(m) => assert!(m.len() <= max, "message over the negotiated size"),
                _ => {}
            }
        }
        while let Some(f) = s.poll_transmit() {
            match swire::parse(&f, max.max(swire::HANDSHAKE_MAX_PAYLOAD)) {
                Parsed::Frame(_, used) => assert_eq!(used, f.len(), "one frame per transmit"),
                other => panic!("we sent a frame we cannot parse: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The encrypted-channel record layer

fn keys(x: u8) -> DirectionKeys {
    DirectionKeys {
        enc: [x; 32],
        mac: [x ^ 0x5a; 32],
    }
}

/// Input: records to seal `type (u8) | length (u8) | body`, until a zero length with type 0;
/// then stream edits `op (u8) | position (u16) | value (u8)`: 0 flip a bit, 1 drop a byte,
/// 2 duplicate a range, 3 truncate; the last byte choices are chunk sizes for the receiver.
/// Invariants: every record the opener yields is exactly the record sealed under that counter;
/// an untouched stream yields all of them in order; errors are only the documented kinds.
pub fn cat_record(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut sealer = Sealer::new(keys(1));
    let mut stream = Vec::new();
    let mut sealed = Vec::new();
    loop {
        let ty = inp.u8();
        let n = inp.u8() as usize;
        if (ty == 0 && n == 0) || sealed.len() >= 64 {
            break;
        }
        let body = inp.bytes(n).to_vec();
        sealer.seal(RecordType::from(ty), &body, &mut stream);
        let kind = RecordType::from(u8::from(RecordType::from(ty)));
        sealed.push((kind, body));
    }
    let pristine = stream.clone();
    let edits = inp.u8() % 8;
    for _ in 0..edits {
        let op = inp.u8();
        let pos = inp.u16() as usize;
        let v = inp.u8();
        if stream.is_empty() {
            break;
        }
        let i = pos % stream.len();
        match op % 4 {
            0 => stream[i] ^= 1 << (v % 8),
            1 => {
                stream.remove(i);
            }
            2 => {
                let end = (i + v as usize + 1).min(stream.len());
                let dup = stream[i..end].to_vec();
                stream.splice(end..end, dup);
            }
            _ => stream.truncate(i),
        }
    }
    let mut opener = Opener::new(keys(1));
    let mut got = 0usize;
    let mut rest = &stream[..];
    let mut failed = false;
    while !rest.is_empty() && !failed {
        let n = (inp.u8() as usize + 1) * 4;
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        opener.push(a);
        loop {
            match opener.next_record() {
                Ok(Some(rec)) => {
                    let want = sealed.get(got).unwrap_or_else(|| {
                        panic!("record {got} delivered, only {} sealed", sealed.len())
                    });
                    assert_eq!(&rec, want, "record {got} differs from what was sealed");
                    got += 1;
                }
                Ok(None) => break,
                Err(
                    RecordError::Integrity { .. }
                    | RecordError::Replayed { .. }
                    | RecordError::OutOfOrder { .. }
                    | RecordError::TooLarge { .. },
                ) => {
                    assert_ne!(stream, pristine, "an unmodified stream was refused");
                    failed = true;
                    break;
                }
                Err(RecordError::Empty) => panic!("a sealed record is never empty"),
            }
        }
    }
    if stream == pristine {
        assert_eq!(got, sealed.len(), "an unmodified stream lost records");
    }
    // The opener also takes raw bytes under a key nobody sealed with: nothing may come out.
    let mut o = Opener::new(keys(9));
    o.push(data);
    if let Ok(Some(rec)) = o.next_record() {
        panic!("forged record accepted: {rec:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Relay framing and the relay server

/// The relay server every `relay_frame` input talks to, and the connections the harness opens
/// before the fuzzed records: one left unregistered, one registered as [`RELAY_USER`], one that
/// announced itself as the server [`RELAY_PEER`].
pub const RELAY_ADDR: &str = "s1:7000";
pub const RELAY_USER: &str = "fz";
pub const RELAY_PEER: &str = "peer:7000";
pub const RELAY_UNREGISTERED: rconn::ConnId = rconn::ConnId(1);
pub const RELAY_REGISTERED: rconn::ConnId = rconn::ConnId(2);
pub const RELAY_PEER_CONN: rconn::ConnId = rconn::ConnId(3);
const RELAY_DEDUP: usize = 64;

/// Names of the relay module as the harness uses them (`ServerConfig` is the session's here).
pub mod rconn {
    pub use tunstack::relay::server::{Server, ServerConfig};
    pub use tunstack::relay::wire::{Deframer, Frame, HEADER_LEN, MAX_DATA_LEN};
    pub use tunstack::relay::{ConnId, Machine, Output};
}

/// The deframer on any bytes: fed whole or in pieces it yields the same frames (it never loses
/// sync); each frame it parses re-emits to bytes that parse the same, byte for byte unless a
/// free text had invalid UTF-8; what it leaves buffered is less than one frame.
pub fn check_relay_frames(buf: &[u8]) {
    use rconn::*;
    let mut whole = Deframer::default();
    whole.push(buf);
    let all: Vec<_> = std::iter::from_fn(|| whole.next_frame()).collect();
    assert!(whole.buffered() < HEADER_LEN + MAX_DATA_LEN);
    if whole.buffered() >= HEADER_LEN {
        let rest = &buf[buf.len() - whole.buffered()..];
        let need = HEADER_LEN + u16::from_be_bytes([rest[2], rest[3]]) as usize;
        assert!(whole.buffered() < need, "a whole frame was left buffered");
    }
    // The same bytes in pieces of 1, 2, 3 ... bytes.
    let mut pieces = Deframer::default();
    let mut again = Vec::new();
    let (mut at, mut n) = (0, 1);
    while at < buf.len() {
        let end = (at + n).min(buf.len());
        pieces.push(&buf[at..end]);
        again.extend(std::iter::from_fn(|| pieces.next_frame()));
        at = end;
        n = n % 7 + 1;
    }
    assert_eq!(all, again, "deframing depends on how the bytes were split");
    let mut at = 0;
    for r in &all {
        let len = HEADER_LEN + u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let raw = &buf[at..at + len];
        at += len;
        let Ok(f) = r else { continue };
        let bytes = f.to_bytes().expect("a parsed frame fits its length field");
        assert_eq!(
            Frame::parse(&bytes).as_ref(),
            Ok(f),
            "re-emitted frame parses differently"
        );
        let free_text = matches!(f, Frame::Error { .. } | Frame::RegisterRefused { .. });
        if !free_text || std::str::from_utf8(&raw[HEADER_LEN..]).is_ok() {
            assert_eq!(bytes, raw, "frame re-emits differently: {f:?}");
        }
    }
}

/// What the harness knows of one connection of the server.
#[derive(Default)]
struct RelayConn {
    /// The user the server said this connection is registered as.
    user: Option<String>,
    /// The server closed it; nothing may be sent on it afterwards.
    closed: bool,
    /// A peer server's connection (announced, or dialed by the server).
    peer: bool,
}

/// Checks everything the server asked for since the last call.
fn relay_outputs(
    s: &mut rconn::Server,
    conns: &mut std::collections::BTreeMap<rconn::ConnId, RelayConn>,
    dials: &mut Vec<rconn::ConnId>,
) {
    use rconn::*;
    while let Some(o) = s.poll_output() {
        match o {
            Output::Send(c, bytes) => {
                let rc = conns
                    .get_mut(&c)
                    .unwrap_or_else(|| panic!("send on {c:?}, never opened"));
                assert!(!rc.closed, "send on {c:?} after the server closed it");
                let mut d = Deframer::default();
                d.push(&bytes);
                let mut n = 0;
                while let Some(f) = d.next_frame() {
                    n += 1;
                    let f = f.unwrap_or_else(|e| panic!("the server sent a bad frame: {e}"));
                    match &f {
                        Frame::Registered { name } => rc.user = Some(name.clone()),
                        Frame::Message(m) if !rc.peer => {
                            let user = rc
                                .user
                                .as_deref()
                                .unwrap_or_else(|| panic!("message to unregistered {c:?}: {m:?}"));
                            assert_eq!(m.to, user, "message for someone else on {c:?}");
                        }
                        Frame::Announce { .. } | Frame::AnnounceResponse { .. } => rc.peer = true,
                        _ => {}
                    }
                }
                assert_eq!(n, 1, "one whole frame per send");
                assert_eq!(d.buffered(), 0, "one whole frame per send");
            }
            Output::Close(c) => {
                if let Some(rc) = conns.get_mut(&c) {
                    rc.closed = true;
                }
                dials.retain(|d| *d != c);
            }
            Output::Connect(c, addr) => {
                assert!(
                    c.0 >= ConnId::DIALED_BASE,
                    "dialed {c:?} in the accepted range"
                );
                assert!(!conns.contains_key(&c), "dialed {c:?} twice");
                assert!(tunstack::relay::wire::valid_name(&addr), "dialed '{addr}'");
                conns.insert(
                    c,
                    RelayConn {
                        peer: true,
                        ..RelayConn::default()
                    },
                );
                dials.push(c);
            }
        }
    }
}

/// Input: a mode byte (bit 0: the server takes 1 user instead of 3, so the registered
/// connection fills it), then records `ctl (u8) | time step (u8) | length (u8) | bytes`.
/// ctl & 3 picks the connection: 0 the unregistered one, 1 the registered one, 2 the peer;
/// with ctl & 4 the bytes become one frame (type, subtype, then the data, the header made
/// right), else they go in raw. ctl & 3 == 3 is an event instead, by (ctl >> 2) & 3: accept a
/// new connection (it replaces the unregistered one), close connection `bytes[0] % 4`, complete
/// or fail the oldest dial, or just let time pass.
/// Invariants: the server sends only whole, valid frames, never on a connection it closed;
/// user messages reach only the connection registered as their recipient, never one that is not
/// registered; it never holds more users than its limit or more dedup keys than its capacity;
/// after a timeout its next deadline is in the future.
pub fn relay_frame(data: &[u8]) {
    use rconn::*;
    check_relay_frames(data);
    let mut inp = Input::new(data);
    let max_users = if inp.u8() & 1 != 0 { 1 } else { 3 };
    let mut cfg = ServerConfig::new(RELAY_ADDR);
    cfg.max_users = max_users;
    cfg.dedup_capacity = RELAY_DEDUP;
    let mut s = Server::new(cfg);
    let mut now = Instant::ZERO;
    let mut conns = std::collections::BTreeMap::new();
    let mut dials = Vec::new();
    s.handle_timeout(now);
    for c in [RELAY_UNREGISTERED, RELAY_REGISTERED, RELAY_PEER_CONN] {
        s.handle_accepted(now, c);
        conns.insert(c, RelayConn::default());
    }
    let hello = |f: Frame| f.to_bytes().expect("small frame");
    s.handle_bytes(
        now,
        RELAY_REGISTERED,
        &hello(Frame::Register {
            version: 1,
            name: RELAY_USER.into(),
        }),
    );
    s.handle_bytes(
        now,
        RELAY_PEER_CONN,
        &hello(Frame::Announce {
            me: RELAY_PEER.into(),
            known: Vec::new(),
        }),
    );
    conns.get_mut(&RELAY_PEER_CONN).expect("opened").peer = true;
    relay_outputs(&mut s, &mut conns, &mut dials);
    assert_eq!(
        conns[&RELAY_REGISTERED].user.as_deref(),
        Some(RELAY_USER),
        "the harness's own registration failed"
    );
    // The three roles, by the connection each is on now.
    let mut on = [RELAY_UNREGISTERED, RELAY_REGISTERED, RELAY_PEER_CONN];
    let mut next_accept = 4u64;
    while !inp.is_empty() {
        let ctl = inp.u8();
        now += time_step(inp.u8());
        let n = inp.u8() as usize;
        let bytes = inp.bytes(n);
        match ctl & 3 {
            3 => match (ctl >> 2) & 3 {
                0 => {
                    let c = ConnId(next_accept);
                    next_accept += 1;
                    s.handle_accepted(now, c);
                    conns.insert(c, RelayConn::default());
                    on[0] = c;
                }
                1 => {
                    let c = on[bytes.first().copied().unwrap_or(0) as usize % 3];
                    if conns.get(&c).is_some_and(|rc| !rc.closed) {
                        s.handle_closed(now, c);
                        conns.get_mut(&c).expect("known").closed = true;
                    }
                }
                2 if !dials.is_empty() => {
                    let c = dials.remove(0);
                    if bytes.first().is_some_and(|b| b & 1 != 0) {
                        s.handle_connected(now, c);
                    } else {
                        s.handle_connect_failed(now, c);
                        conns.get_mut(&c).expect("dialed").closed = true;
                    }
                }
                _ => {}
            },
            k => {
                let c = on[k as usize];
                if conns[&c].closed {
                    continue;
                }
                if ctl & 4 != 0 {
                    let mut f = vec![bytes.first().copied().unwrap_or(0)];
                    f.push(bytes.get(1).copied().unwrap_or(0));
                    let body = bytes.get(2..).unwrap_or(&[]);
                    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
                    f.extend_from_slice(&[0, 0]);
                    f.extend_from_slice(body);
                    s.handle_bytes(now, c, &f);
                } else {
                    s.handle_bytes(now, c, bytes);
                }
            }
        }
        if s.poll_at().is_some_and(|t| t <= now) {
            s.handle_timeout(now);
            assert!(
                s.poll_at().is_none_or(|t| t > now),
                "the server wants attention again at once"
            );
        }
        relay_outputs(&mut s, &mut conns, &mut dials);
        assert!(s.local_users() <= max_users, "more users than the limit");
        assert!(
            s.dedup_len() <= RELAY_DEDUP,
            "more dedup keys than the capacity"
        );
    }
    let st = s.status_json(now);
    assert_eq!(st["users_here"], s.local_users());
    // A clean stop says goodbye only with whole frames, on open connections.
    s.shutdown();
    relay_outputs(&mut s, &mut conns, &mut dials);
}
