//! Our TCP against smoltcp, an independent implementation, in the simulator.

mod tcp_common;

use smoltcp::iface::{Config, Interface, SocketHandle as SmolHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use tcp_common::*;
use tunstack::impair::ImpairSpec;
use tunstack::sim::{Host, Sim};
use tunstack::tcp::TcpConfig;
use tunstack::time::{Duration, Instant};

const S: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

#[derive(Default)]
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _t: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }
}

/// smoltcp's interface and one TCP socket as a simulator host.
struct Smol {
    iface: Interface,
    dev: Queue,
    sockets: SocketSet<'static>,
    sock: SmolHandle,
    now: Instant,
    next: Option<Instant>,
}

fn smol_now(t: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(t.as_micros() as i64)
}

impl Smol {
    fn new(seed: u64) -> Smol {
        let mut dev = Queue::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 9), 24)).unwrap();
        });
        let rx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let tx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
        let mut sockets = SocketSet::new(Vec::new());
        let sock = sockets.add(tcp::Socket::new(rx, tx));
        Smol {
            iface,
            dev,
            sockets,
            sock,
            now: Instant::ZERO,
            next: None,
        }
    }
    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.sock)
    }
}

impl Host for Smol {
    fn address(&self) -> Ipv4Addr {
        S
    }
    fn receive(&mut self, now: Instant, packet: &[u8]) {
        self.now = now;
        self.dev.rx.push_back(packet.to_vec());
    }
    fn poll(&mut self, now: Instant) {
        self.now = now;
        self.iface
            .poll(smol_now(now), &mut self.dev, &mut self.sockets);
        self.next = self
            .iface
            .poll_at(smol_now(now), &self.sockets)
            .map(|t| Instant::from_micros(t.total_micros().max(0) as u64));
    }
    fn transmit(&mut self) -> Option<Vec<u8>> {
        self.dev.tx.pop_front()
    }
    fn poll_at(&self) -> Option<Instant> {
        if !self.dev.rx.is_empty() {
            return Some(self.now);
        }
        // Application calls between polls may have given the socket work: poll soon.
        Some(
            self.next
                .unwrap_or(self.now + Duration::from_millis(1))
                .min(self.now + Duration::from_millis(1)),
        )
    }
}

/// The smoltcp side of a transfer: pushes `out`, closes when all of it is queued, drains `inn`.
fn smol_pump(s: &mut tcp::Socket<'static>, out: &mut Flow, inn: &mut Flow) {
    while out.sent < out.data.len() && s.can_send() {
        match s.send_slice(&out.data[out.sent..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.sent += n,
        }
    }
    if out.sent == out.data.len() && !out.shut && s.may_send() {
        s.close();
        out.shut = true;
    }
    while s.can_recv() {
        let mut buf = [0u8; 8192];
        match s.recv_slice(&mut buf) {
            Ok(n) => inn.received.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    if !s.may_recv() && inn.received.len() == inn.data.len() {
        inn.eof = true;
    }
}

/// smoltcp connects to our listener, sends `up` and reads `down`; both sides half-close.
fn against_smoltcp(seed: u64, spec: &str, up: usize, down: usize, limit: Duration) -> Duration {
    let mut sim = Sim::new(seed);
    let ours = sim.add_host(stack(A, seed, TcpConfig::default()));
    let smol = sim.add_host(Smol::new(seed));
    sim.set_path(ours, smol, ImpairSpec::parse(spec).unwrap());
    let l = tcp(&mut sim, ours).listen(80).unwrap();
    {
        let s = sim.host::<Smol>(smol);
        let cx = s.iface.context();
        let sock = s.sockets.get_mut::<tcp::Socket>(s.sock);
        sock.connect(cx, IpEndpoint::new(IpAddress::v4(10, 0, 0, 1), 80), 40000)
            .unwrap();
    }
    let mut f_up = Flow::new(data(seed, up));
    let mut f_down = Flow::new(data(seed + 7, down));
    let mut h = None;
    let start = sim.now();
    let done = sim.run_until(limit, |sim| {
        if h.is_none() {
            h = tcp(sim, ours).accept(l);
        }
        if let Some(h) = h {
            pump(tcp(sim, ours), h, &mut f_down, &mut f_up, false);
        }
        smol_pump(sim.host::<Smol>(smol).socket(), &mut f_up, &mut f_down);
        f_up.eof && f_down.eof
    });
    let elapsed = sim.now() - start;
    assert!(
        done,
        "incomplete after {elapsed:?}: up {}/{} down {}/{}, ours {:?}",
        f_up.received.len(),
        up,
        f_down.received.len(),
        down,
        h.and_then(|h| tcp(&mut sim, ours).socket_info(h))
    );
    check_stream("smoltcp->ours", &f_up);
    check_stream("ours->smoltcp", &f_down);
    eprintln!("{spec}: {} bytes up, {} down in {elapsed:?}", up, down);
    elapsed
}

#[test]
fn test_smoltcp_clean() {
    against_smoltcp(
        1,
        "delay=5ms",
        10_000_000,
        10_000_000,
        Duration::from_secs(120),
    );
}

#[test]
fn test_smoltcp_loss_1pct() {
    against_smoltcp(
        2,
        "loss=1%,delay=10ms,rate=50mbit",
        500_000,
        500_000,
        Duration::from_secs(300),
    );
}

#[test]
fn test_smoltcp_loss_5pct_reorder() {
    against_smoltcp(
        3,
        "loss=5%,reorder=5%:10ms,dup=1%,corrupt=0.5%,delay=10ms~2ms",
        200_000,
        200_000,
        Duration::from_secs(600),
    );
}

#[test]
fn test_smoltcp_loss_20pct() {
    against_smoltcp(
        4,
        "loss=20%,delay=5ms",
        50_000,
        50_000,
        Duration::from_secs(3600),
    );
}

/// Our client against a smoltcp server: we send `up`, smoltcp sends `down`; both half-close.
/// Afterwards our side must have released the connection.
fn smoltcp_server(seed: u64, spec: &str, up: usize, down: usize, limit: Duration) -> Duration {
    let mut sim = Sim::new(seed);
    let ours = sim.add_host(stack(A, seed, TcpConfig::default()));
    let smol = sim.add_host(Smol::new(seed));
    sim.set_path(ours, smol, ImpairSpec::parse(spec).unwrap());
    sim.host::<Smol>(smol).socket().listen(80).unwrap();
    let now = sim.now();
    let c = tcp(&mut sim, ours)
        .connect(now, std::net::SocketAddrV4::new(S, 80))
        .unwrap();
    let mut f_up = Flow::new(data(seed, up));
    let mut f_down = Flow::new(data(seed + 7, down));
    let start = sim.now();
    let done = sim.run_until(limit, |sim| {
        pump(tcp(sim, ours), c, &mut f_up, &mut f_down, false);
        smol_pump(sim.host::<Smol>(smol).socket(), &mut f_down, &mut f_up);
        f_up.eof && f_down.eof
    });
    let elapsed = sim.now() - start;
    assert!(
        done,
        "incomplete after {elapsed:?}: up {}/{} down {}/{}, ours {:?}, smoltcp {}",
        f_up.received.len(),
        up,
        f_down.received.len(),
        down,
        tcp(&mut sim, ours).socket_info(c),
        sim.host::<Smol>(smol).socket().state()
    );
    check_stream("ours->smoltcp", &f_up);
    check_stream("smoltcp->ours", &f_down);
    eprintln!(
        "server {spec}: {up} bytes up, {down} down in {elapsed:?}, ours {:?}",
        tcp(&mut sim, ours).counters()
    );
    tcp(&mut sim, ours).close(c);
    assert_all_closed(&mut sim, &[ours], Duration::from_secs(900));
    elapsed
}

#[test]
fn test_smoltcp_server_clean() {
    smoltcp_server(
        11,
        "delay=5ms",
        5_000_000,
        5_000_000,
        Duration::from_secs(120),
    );
}

#[test]
fn test_smoltcp_server_loss_1pct() {
    smoltcp_server(
        12,
        "loss=1%,delay=10ms,rate=50mbit",
        500_000,
        500_000,
        Duration::from_secs(300),
    );
}

/// 1 MB each way at 5 % loss with reordering, duplication and corruption.
#[test]
fn test_smoltcp_server_loss_5pct_one_megabyte() {
    smoltcp_server(
        13,
        "loss=5%,reorder=5%:10ms,dup=1%,corrupt=0.5%,delay=10ms~2ms",
        1_000_000,
        1_000_000,
        Duration::from_secs(1800),
    );
}

#[test]
fn test_smoltcp_server_loss_20pct() {
    smoltcp_server(
        14,
        "loss=20%,delay=5ms",
        50_000,
        50_000,
        Duration::from_secs(3600),
    );
}
