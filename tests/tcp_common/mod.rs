//! Shared helpers for the TCP simulation tests: two-host setups and a bulk transfer driver that
//! checks every byte.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use tunstack::impair::ImpairSpec;
use tunstack::rand::Rng;
use tunstack::sim::{HostId, Sim};
use tunstack::stack::{Stack, StackConfig};
use tunstack::tcp::{SocketHandle, TcpConfig};
use tunstack::time::Duration;

pub const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub fn stack(addr: Ipv4Addr, seed: u64, tcp: TcpConfig) -> Stack {
    let mut cfg = StackConfig::new(addr, 24, 1500, seed);
    let mut secret = [0u8; 16];
    Rng::new(seed ^ 0x5eed).fill(&mut secret);
    cfg.tcp = TcpConfig {
        isn_secret: secret,
        ..tcp
    };
    Stack::new(cfg)
}

/// Two of our stacks joined by `spec` both ways.
pub fn pair(seed: u64, spec: &str, a: TcpConfig, b: TcpConfig) -> (Sim, HostId, HostId) {
    let mut sim = Sim::new(seed);
    let ha = sim.add_host(stack(A, seed, a));
    let hb = sim.add_host(stack(B, seed.wrapping_add(1), b));
    sim.set_path(ha, hb, ImpairSpec::parse(spec).unwrap());
    (sim, ha, hb)
}

pub fn tcp(sim: &mut Sim, h: HostId) -> &mut tunstack::tcp::Tcp {
    &mut sim.host::<Stack>(h).tcp
}

pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// One direction of a byte stream: what to send, how much went in, and what came out.
#[derive(Default)]
pub struct Flow {
    pub data: Vec<u8>,
    pub sent: usize,
    pub shut: bool,
    pub received: Vec<u8>,
    pub eof: bool,
}

impl Flow {
    pub fn new(data: Vec<u8>) -> Flow {
        Flow {
            received: Vec::with_capacity(data.len()),
            data,
            ..Flow::default()
        }
    }
}

/// Pushes `out` into `h` and drains `h` into `inn`; `paused` stops reading (a zero-window
/// receiver). Returns false once the socket failed.
pub fn pump(
    t: &mut tunstack::tcp::Tcp,
    h: SocketHandle,
    out: &mut Flow,
    inn: &mut Flow,
    paused: bool,
) {
    while out.sent < out.data.len() {
        let end = (out.sent + 65536).min(out.data.len());
        match t.send(h, &out.data[out.sent..end]) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.sent += n,
        }
    }
    if out.sent == out.data.len() && !out.shut && t.shutdown_write(h).is_ok() {
        out.shut = true;
    }
    let mut buf = [0u8; 16384];
    while !paused && !inn.eof {
        match t.recv(h, &mut buf) {
            Ok(0) => inn.eof = true,
            Ok(n) => inn.received.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
}

pub struct Outcome {
    pub elapsed: Duration,
    pub ab: Flow,
    pub ba: Flow,
}

/// Opens a connection from `a` to `b:port`, sends `ab` one way and `ba` the other, each side
/// half-closing when done, until both sides saw EOF. Panics on timeout with the state.
pub fn transfer(
    sim: &mut Sim,
    a: HostId,
    b: HostId,
    ab: Vec<u8>,
    ba: Vec<u8>,
    limit: Duration,
) -> Outcome {
    transfer_with(sim, a, b, ab, ba, limit, |_, _| false)
}

/// As `transfer`, with `pause(now, received_by_b)` deciding whether `b` stops reading.
pub fn transfer_with(
    sim: &mut Sim,
    a: HostId,
    b: HostId,
    ab: Vec<u8>,
    ba: Vec<u8>,
    limit: Duration,
    pause: impl Fn(tunstack::time::Instant, usize) -> bool,
) -> Outcome {
    let port = 5001;
    let l = tcp(sim, b).listen(port).unwrap();
    let now = sim.now();
    let ca = tcp(sim, a)
        .connect(now, SocketAddrV4::new(B, port))
        .unwrap();
    let start = sim.now();
    let mut fab = Flow::new(ab);
    let mut fba = Flow::new(ba);
    let mut cb: Option<SocketHandle> = None;
    let done = sim.run_until(limit, |sim| {
        let now = sim.now();
        pump(tcp(sim, a), ca, &mut fab, &mut fba, false);
        if cb.is_none() {
            cb = tcp(sim, b).accept(l);
        }
        if let Some(hb) = cb {
            let paused = pause(now, fab.received.len());
            pump(tcp(sim, b), hb, &mut fba, &mut fab, paused);
        }
        fab.eof && fba.eof
    });
    let elapsed = sim.now() - start;
    if !done {
        let ia = tcp(sim, a).socket_info(ca);
        let ib = cb.and_then(|h| tcp(sim, b).socket_info(h));
        panic!(
            "transfer incomplete after {:?}: a->b {}/{} (sent {}), b->a {}/{} (sent {})\na: {:?}\nb: {:?}\nca: {:?}\ncb: {:?}",
            elapsed,
            fab.received.len(),
            fab.data.len(),
            fab.sent,
            fba.received.len(),
            fba.data.len(),
            fba.sent,
            ia,
            ib,
            tcp(sim, a).counters().clone(),
            tcp(sim, b).counters().clone(),
        );
    }
    check_stream("a->b", &fab);
    check_stream("b->a", &fba);
    let t = tcp(sim, a);
    t.close(ca);
    if let Some(hb) = cb {
        tcp(sim, b).close(hb);
    }
    tcp(sim, b).unlisten(l);
    Outcome {
        elapsed,
        ab: fab,
        ba: fba,
    }
}

pub fn goodput_mbit(bytes: usize, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e6
}

#[track_caller]
pub fn check_stream(name: &str, f: &Flow) {
    if f.received != f.data {
        let first = f.received.iter().zip(&f.data).position(|(x, y)| x != y);
        panic!(
            "{name} stream differs: received {} of {} bytes, first difference at {:?}",
            f.received.len(),
            f.data.len(),
            first
        );
    }
}

/// Runs until none of `hosts` holds a connection in any state (TIME-WAIT expired, lost FINs
/// and ACKs recovered, orphans released), or panics with what is left.
#[track_caller]
pub fn assert_all_closed(sim: &mut Sim, hosts: &[HostId], limit: Duration) {
    let done = sim.run_until(limit, |sim| {
        hosts.iter().all(|&h| tcp(sim, h).connection_count() == 0)
    });
    if !done {
        let left: Vec<_> = hosts
            .iter()
            .map(|&h| {
                let t = tcp(sim, h);
                (t.connection_count(), t.sockets())
            })
            .collect();
        panic!(
            "connections still open {limit:?} after the transfer (seed {}): {left:?}",
            sim.seed()
        );
    }
}
