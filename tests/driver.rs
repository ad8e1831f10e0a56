//! The event loop without root: a Unix datagram socket pair stands in for the TUN fd (one packet
//! per datagram, pollable), so the real `Driver` runs against a test peer.

mod sock_device;

use sock_device::SockDevice;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use tunstack::driver::Driver;
use tunstack::node::clock::Clock;
use tunstack::node::{Node, NodeHandle};
use tunstack::stack::{Stack, StackConfig};
use tunstack::wire::icmp::IcmpRepr;
use tunstack::wire::ipv4::Ipv4Repr;

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn echo_request(seq: u16, data: &[u8]) -> Vec<u8> {
    let icmp = IcmpRepr::EchoRequest {
        ident: 9,
        seq,
        data,
    };
    let ip = Ipv4Repr::new(PEER, NODE, 1, icmp.buffer_len());
    let mut buf = vec![0u8; 20 + icmp.buffer_len()];
    ip.emit(&mut buf);
    icmp.emit(&mut buf[20..]);
    buf
}

fn start(
    impair: Option<&str>,
) -> (
    NodeHandle,
    UnixDatagram,
    std::thread::JoinHandle<io::Result<()>>,
) {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let clock = Clock::new();
    let mut node = Node::new(
        "t".into(),
        Stack::new(StackConfig::new(NODE, 24, 1500, 1)),
        clock.now(),
    );
    if let Some(spec) = impair {
        let s = tunstack::impair::ImpairSpec::parse(spec).unwrap();
        node.set_impairment(Some(s.clone()), Some(s));
    }
    let handle = NodeHandle::new(node, clock);
    let driver = Driver {
        device: SockDevice(ours),
        pcap: None,
        control: None,
        rst_dump: None,
    };
    let h = handle.clone();
    let join = std::thread::spawn(move || driver.run(h));
    (handle, peer, join)
}

#[test]
fn test_driver_answers_a_burst_of_pings_and_stops() {
    let (handle, peer, join) = start(None);
    // More than one read budget's worth, as fast as the socket takes them: the loop must drain
    // every wake-up completely. Replies are read on another thread so neither side stalls.
    let reader = peer.try_clone().unwrap();
    let collect = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut seen = vec![false; 2000];
        for _ in 0..2000 {
            let n = reader.recv(&mut buf).expect("a reply within 5 s");
            let (h, payload) = Ipv4Repr::parse(&buf[..n]).unwrap();
            assert_eq!(h.dst, PEER);
            match IcmpRepr::parse(payload).unwrap() {
                IcmpRepr::EchoReply { seq, data, .. } => {
                    assert_eq!(data, seq.to_be_bytes());
                    assert!(!seen[seq as usize], "duplicate reply {seq}");
                    seen[seq as usize] = true;
                }
                other => panic!("{other:?}"),
            }
        }
    });
    for seq in 0..2000u16 {
        peer.send(&echo_request(seq, &seq.to_be_bytes())).unwrap();
    }
    collect.join().unwrap();
    let dev = handle.with(|n, _| n.device.clone());
    assert_eq!(dev.packets_read, 2000);
    assert_eq!(dev.packets_written, 2000);
    handle.stop();
    join.join().unwrap().unwrap();
}

#[test]
fn test_driver_delays_through_impairment() {
    let (handle, peer, join) = start(Some("delay=50ms"));
    let t0 = std::time::Instant::now();
    peer.send(&echo_request(1, b"x")).unwrap();
    let mut buf = [0u8; 2048];
    peer.recv(&mut buf).expect("a reply");
    let rtt = t0.elapsed();
    assert!(rtt >= Duration::from_millis(100), "{rtt:?}");
    assert!(rtt < Duration::from_millis(1000), "{rtt:?}");
    handle.stop();
    join.join().unwrap().unwrap();
}
