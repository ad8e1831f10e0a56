//! The blocking `TcpStream` / `TcpListener` API on two real event loops (`Driver`), joined by
//! a socket-pair wire instead of TUN devices, so no root is needed: timeouts, half-close,
//! shutdown, refusal, and use from several threads while the loops run.

mod sock_device;

use sock_device::{SockDevice, Wire};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tunstack::api::tcp::{TcpListener, TcpStream};
use tunstack::driver::Driver;
use tunstack::node::clock::Clock;
use tunstack::node::{Node, NodeHandle};
use tunstack::rand::Rng;
use tunstack::stack::{Stack, StackConfig};
use tunstack::tcp::TcpConfig;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Two nodes, each with its own event loop thread; stops both when dropped.
struct Net {
    client: NodeHandle,
    server: NodeHandle,
    loops: Vec<JoinHandle<io::Result<()>>>,
    _wire: Wire,
}

fn node(
    addr: Ipv4Addr,
    seed: u64,
    tcp: &TcpConfig,
    dev: SockDevice,
) -> (NodeHandle, JoinHandle<io::Result<()>>) {
    let clock = Clock::new();
    let mut cfg = StackConfig::new(addr, 24, 1500, seed);
    cfg.tcp = tcp.clone();
    let handle = NodeHandle::new(
        Node::new(addr.to_string(), Stack::new(cfg), clock.now()),
        clock,
    );
    let driver = Driver {
        device: dev,
        pcap: None,
        control: None,
        rst_dump: None,
    };
    let h = handle.clone();
    (handle, std::thread::spawn(move || driver.run(h)))
}

impl Net {
    fn new(tcp: TcpConfig) -> Net {
        let (wire, da, db) = Wire::new();
        let (client, ja) = node(CLIENT, 1, &tcp, da);
        let (server, jb) = node(SERVER, 2, &tcp, db);
        Net {
            client,
            server,
            loops: vec![ja, jb],
            _wire: wire,
        }
    }

    /// A connected pair: (client side, server side).
    fn pair(&self, port: u16) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind(&self.server, port).unwrap();
        let c = TcpStream::connect(
            &self.client,
            SocketAddrV4::new(SERVER, port),
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        let (s, peer) = l
            .accept_timeout(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        (c, s)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.client.stop();
        self.server.stop();
        for j in self.loops.drain(..) {
            j.join().unwrap().unwrap();
        }
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

#[test]
fn test_echo_with_reader_and_writer_on_other_threads() {
    let net = Net::new(TcpConfig::default());
    let l = TcpListener::bind(&net.server, 7).unwrap();
    // The server runs on its own thread: echo until end of stream, then close.
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = (&s).read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            (&s).write_all(&buf[..n]).unwrap();
        }
    });
    let c = TcpStream::connect(
        &net.client,
        SocketAddrV4::new(SERVER, 7),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    assert_eq!(c.peer_addr().unwrap(), SocketAddrV4::new(SERVER, 7));
    let want = data(1, 2_000_000);
    // A clone moves to a writer thread while this thread reads: both block independently.
    let w = c.clone();
    let sent = want.clone();
    let writer = std::thread::spawn(move || {
        for chunk in sent.chunks(10_000) {
            (&w).write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    (&c).read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    server.join().unwrap();
    assert!(
        got == want,
        "echo differs ({} of {} bytes)",
        got.len(),
        want.len()
    );
}

#[test]
fn test_read_timeout_expires_then_data_still_arrives() {
    let net = Net::new(TcpConfig::default());
    let (mut c, s) = net.pair(80);
    c.set_read_timeout(Some(Duration::from_millis(300)));
    let t0 = Instant::now();
    let e = (&c).read(&mut [0u8; 16]).unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // A timeout leaves the connection usable.
    (&s).write_all(b"late").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!((&c).read(&mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"late");
}

#[test]
fn test_write_timeout_when_the_peer_stops_reading() {
    let tcp = TcpConfig {
        rx_buffer: 64 * 1024,
        tx_buffer: 64 * 1024,
        ..TcpConfig::default()
    };
    let net = Net::new(tcp);
    let (mut c, s) = net.pair(80);
    c.set_write_timeout(Some(Duration::from_millis(300)));
    let block = vec![7u8; 4_000_000];
    let mut sent = 0;
    let t0 = Instant::now();
    let e = loop {
        match (&c).write(&block[sent..]) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    // Our send buffer and the peer's receive window filled, nothing more.
    assert!(
        (64 * 1024..=256 * 1024).contains(&sent),
        "{sent} bytes accepted"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Once the peer reads, writing resumes.
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        let mut buf = vec![0u8; 65536];
        while n < 1_000_000 {
            n += (&s).read(&mut buf).unwrap();
        }
        s
    });
    c.set_write_timeout(Some(Duration::from_secs(10)));
    (&c).write_all(&block[..1_000_000 - sent]).unwrap();
    drop(reader.join().unwrap());
}

#[test]
fn test_shutdown_write_is_a_half_close() {
    let net = Net::new(TcpConfig::default());
    let (c, s) = net.pair(80);
    (&c).write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let e = (&c).write(b"more").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
    let mut req = Vec::new();
    (&s).read_to_end(&mut req).unwrap();
    assert_eq!(req, b"request");
    // The other direction still flows.
    (&s).write_all(b"response").unwrap();
    drop(s);
    let mut resp = Vec::new();
    (&c).read_to_end(&mut resp).unwrap();
    assert_eq!(resp, b"response");
}

#[test]
fn test_shutdown_read_ends_blocked_and_later_reads() {
    let net = Net::new(TcpConfig::default());
    let (c, _s) = net.pair(80);
    let mut r = c.clone();
    // A guard: without the shutdown the read would end only by this timeout, and fail.
    r.set_read_timeout(Some(Duration::from_secs(5)));
    let (tx, rx) = mpsc::channel();
    let blocked = std::thread::spawn(move || {
        tx.send(()).unwrap();
        (&r).read(&mut [0u8; 16]).unwrap()
    });
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    c.shutdown(Shutdown::Read).unwrap();
    assert_eq!(blocked.join().unwrap(), 0);
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert_eq!((&c).read(&mut [0u8; 16]).unwrap(), 0);
    // Writing is unaffected.
    (&c).write_all(b"still writing").unwrap();
}

#[test]
fn test_accept_and_connect_timeouts_and_refusal() {
    let net = Net::new(TcpConfig::default());
    let l = TcpListener::bind(&net.server, 80).unwrap();
    let t0 = Instant::now();
    assert!(l
        .accept_timeout(Some(Duration::from_millis(200)))
        .unwrap()
        .is_none());
    assert!(t0.elapsed() >= Duration::from_millis(200));
    // No listener on the port: the server's RST refuses the connection.
    let e = TcpStream::connect(
        &net.client,
        SocketAddrV4::new(SERVER, 9),
        Some(Duration::from_secs(5)),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // Nobody owns the address: the handshake times out.
    let t0 = Instant::now();
    let e = TcpStream::connect(
        &net.client,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 77), 80),
        Some(Duration::from_millis(300)),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Binding a port twice fails.
    let e = TcpListener::bind(&net.server, 80).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::AddrInUse);
}

#[test]
fn test_blocked_calls_return_when_the_node_stops() {
    let net = Net::new(TcpConfig::default());
    let (c, _s) = net.pair(80);
    let l = TcpListener::bind(&net.client, 81).unwrap();
    let mut c = c;
    // Guards: a missed stop shows up as a timeout, not a hung test.
    c.set_read_timeout(Some(Duration::from_secs(10)));
    let reader = std::thread::spawn(move || (&c).read(&mut [0u8; 16]));
    let acceptor = std::thread::spawn(move || {
        l.accept_timeout(Some(Duration::from_secs(10)))
            .map(|got| got.is_some())
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    net.client.stop();
    let e = reader.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
    let e = acceptor.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}
