//! Writes seed corpora for the fuzz targets in `fuzz/` from simulator captures.
//!
//! ```text
//! cargo run --release --example fuzz_seeds -- fuzz/seeds
//! ```
//!
//! Two stacks in the deterministic simulator, 10.0.0.1 (the address every fuzz target plays) and
//! 10.0.0.2, over a clean 1 ms link: a TCP connection to port 80 with a few writes each way and
//! a close, a ping, messages of protocol 170 and a file of protocol 171. Every packet towards
//! 10.0.0.1 is kept and re-encoded in each target's input format (`fuzz/src/lib.rs`); the
//! session and record targets get byte streams from their own state machines, and the relay
//! target what a small mesh (two servers, two users) sent to one of its servers. The output is
//! the same on every run, so `fuzz/seeds/` changes only when a format does.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use harness::{OFFER_CHUNK, OFFER_ID, PEERS, PORT, US};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::rc::Rc;
use tunstack::file::store::MemStore;
use tunstack::msg::Message;
use tunstack::session::Session;
use tunstack::sim::Sim;
use tunstack::stack::{Stack, StackConfig};
use tunstack::tcp::wire::TcpHeader;
use tunstack::time::{Duration, Instant};
use tunstack::wire::ipv4::Ipv4Repr;

type Seeds = BTreeMap<(&'static str, String), Vec<u8>>;

fn stack(addr: Ipv4Addr, id: u64, store: &MemStore) -> Stack {
    let mut cfg = StackConfig::new(addr, 24, 1500, id);
    cfg.msg.node_id = 0x4000 + id;
    cfg.file.node_id = 0x4000 + id;
    cfg.tcp.nodelay = true;
    let mut s = Stack::new(cfg);
    s.file.set_store(Box::new(store.clone()));
    s
}

/// Runs the exchange and returns every packet sent to 10.0.0.1, in order.
fn capture() -> Vec<Vec<u8>> {
    let (sa, sb) = (MemStore::new(), MemStore::new());
    sb.add_source("seed.txt", b"seed file for the fuzzers\n".repeat(40));
    let mut sim = Sim::new(11);
    let a = sim.add_host(stack(US, 1, &sa));
    let b = sim.add_host(stack(PEERS[0], 2, &sb));
    let packets: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let sink = packets.clone();
    sim.set_tap(Box::new(move |_now: Instant, _from, _to, bytes: &[u8]| {
        if bytes.get(16..20) == Some(&US.octets()[..]) {
            sink.borrow_mut().push(bytes.to_vec());
        }
    }));
    let l = sim.host::<Stack>(a).tcp.listen(PORT).expect("listen");
    let now = sim.now();
    let cb = sim
        .host::<Stack>(b)
        .tcp
        .connect(now, SocketAddrV4::new(US, PORT))
        .expect("connect");
    let mut ca = None;
    let mut step = 0u32;
    sim.run_until(Duration::from_secs(5), |sim| {
        if ca.is_none() {
            ca = sim.host::<Stack>(a).tcp.accept(l);
        }
        let mut buf = [0u8; 4096];
        while sim
            .host::<Stack>(a)
            .tcp
            .recv(ca.unwrap_or(cb), &mut buf)
            .unwrap_or(0)
            > 0
        {}
        while sim.host::<Stack>(b).tcp.recv(cb, &mut buf).unwrap_or(0) > 0 {}
        step += 1;
        match step {
            2..=4 => {
                let _ = sim.host::<Stack>(b).tcp.send(cb, &[b'a' + step as u8; 200]);
            }
            5 => {
                if let Some(h) = ca {
                    let _ = sim.host::<Stack>(a).tcp.send(h, &[b'z'; 150]);
                }
            }
            40 => {
                let _ = sim.host::<Stack>(b).tcp.shutdown_write(cb);
            }
            60 => {
                if let Some(h) = ca {
                    sim.host::<Stack>(a).tcp.close(h);
                }
            }
            _ => {}
        }
        step > 80
    });
    sim.host::<Stack>(b).tcp.close(cb);
    let now = sim.now();
    {
        let s = sim.host::<Stack>(b);
        let _ = s.ip.ping(now, US, 32, &mut s.tx);
        let m = Message {
            content: "hello fuzzer".into(),
            sender: "beta".into(),
            channel_id: "lab".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            is_file: false,
        };
        let _ = s.msg.send_message(now, US, m);
        let _ = s.file.send_file(now, US, "seed.txt", "lab", "beta");
    }
    sim.run_for(Duration::from_secs(5));
    packets.take()
}

fn record(out: &mut Vec<u8>, flags: u8, p: &[u8]) {
    out.extend_from_slice(&[flags, 0]);
    out.extend_from_slice(&(p.len() as u16).to_be_bytes());
    out.extend_from_slice(p);
}

/// A captured segment as one `TcpHarness::step`, sequence and acknowledgement numbers relative
/// to what the stack last sent (as the capture shows it, since the fuzz stack's ISN differs).
fn tcp_step(out: &mut Vec<u8>, h: &TcpHeader, options: &[u8], payload: &[u8], abs_seq: bool) {
    let mut ctl = 0u8;
    if abs_seq {
        ctl |= 8;
    }
    if !options.is_empty() {
        ctl |= 32;
    }
    if !payload.is_empty() {
        ctl |= 64;
    }
    out.push(0);
    out.push(ctl);
    out.push(h.flags.0);
    if abs_seq {
        out.extend_from_slice(&h.seq.0.to_be_bytes());
    } else {
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&h.window.to_be_bytes());
    if !options.is_empty() {
        out.push(options.len() as u8);
        out.extend_from_slice(options);
    }
    if !payload.is_empty() {
        let p = &payload[..payload.len().min(255)];
        out.push(p.len() as u8);
        out.extend_from_slice(p);
    }
    // The application accepts and reads after each segment, and answers data with data.
    out.extend_from_slice(&[5, 0]);
    if !payload.is_empty() {
        out.extend_from_slice(&[5, 2, 1]);
    }
}

fn build(packets: &[Vec<u8>]) -> Seeds {
    let mut seeds = Seeds::new();
    let mut by_proto: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
    for p in packets {
        if let Ok((ip, _)) = Ipv4Repr::parse(p) {
            by_proto.entry(ip.protocol).or_default().push(p.clone());
        }
    }
    // ip_input: each protocol's packets as one run, and everything together.
    for (proto, ps) in &by_proto {
        let mut s = vec![0];
        for p in ps.iter().take(12) {
            record(&mut s, 0, p);
        }
        seeds.insert(("ip_input", format!("proto{proto}")), s);
    }
    let mut all = vec![0];
    for p in packets.iter().take(24) {
        record(&mut all, 0, p);
    }
    seeds.insert(("ip_input", "mixed".into()), all);

    // TCP: the peer's half of the connection.
    let mut listen = vec![0];
    let mut established = vec![0];
    let mut n = 0;
    for p in by_proto.get(&6).into_iter().flatten() {
        let Ok((ip, seg)) = Ipv4Repr::parse(p) else {
            continue;
        };
        let Ok((h, payload)) = TcpHeader::parse(ip.src, ip.dst, seg) else {
            continue;
        };
        let hlen = ((seg[12] >> 4) as usize) * 4;
        let options = &seg[20..hlen];
        if h.flags.syn() {
            established.extend_from_slice(&h.seq.0.to_be_bytes());
        }
        tcp_step(&mut listen, &h, options, payload, h.flags.syn());
        if n >= 2 {
            tcp_step(&mut established, &h, options, payload, false);
        }
        n += 1;
        if n % 4 == 0 {
            seeds.insert(("tcp_listen", format!("capture{n:02}")), listen.clone());
        }
    }
    seeds.insert(("tcp_listen", "capture".into()), listen);
    seeds.insert(("tcp_established", "capture".into()), established.clone());
    // The same with timers running between steps, and the active-open variant.
    let mut timed = established.clone();
    timed.extend_from_slice(&[6, 200, 6, 140, 5, 2, 3, 6, 150]);
    seeds.insert(("tcp_established", "timers".into()), timed);
    let mut active = established;
    active[0] = 4;
    seeds.insert(("tcp_established", "active".into()), active);

    // 170 and 171 packets as the decoders see them (IP payload, flag 0: unrepaired).
    for (proto, target) in [(170u8, "msg_decode"), (171, "file_decode")] {
        for (i, p) in by_proto
            .get(&proto)
            .into_iter()
            .flatten()
            .enumerate()
            .take(12)
        {
            let (_, body) = Ipv4Repr::parse(p).expect("captured");
            let mut s = vec![0];
            s.extend_from_slice(body);
            seeds.insert((target, format!("capture{i:02}")), s);
        }
    }

    // file_receiver: the harness's own offer answered by a correct transfer, once in order and
    // once with a duplicate, a gap and a reordering; then captured 171 packets under their ids.
    let file = harness::offered_file();
    let chunks: Vec<&[u8]> = file.chunks(OFFER_CHUNK as usize).collect();
    for (name, order) in [("complete", vec![0, 1, 2]), ("reordered", vec![2, 0, 0, 1])] {
        let mut s = vec![0];
        for (pn, &c) in order.iter().enumerate() {
            let data = chunks[c];
            s.extend_from_slice(&[0, 1, 4]);
            s.extend_from_slice(&(pn as u32 + 2).to_be_bytes());
            let mut payload = OFFER_ID.to_be_bytes().to_vec();
            payload.extend_from_slice(&(c as u32).to_be_bytes());
            payload.extend_from_slice(data);
            s.push(payload.len() as u8);
            s.extend_from_slice(&payload);
        }
        seeds.insert(("file_receiver", name.into()), s);
    }
    let mut s = vec![0];
    for p in by_proto.get(&171).into_iter().flatten().take(8) {
        let (_, body) = Ipv4Repr::parse(p).expect("captured");
        let payload = &body[44..];
        s.extend_from_slice(&[2, 1, body[1]]);
        s.extend_from_slice(&body[32..36]);
        let pl = &payload[..payload.len().min(255)];
        s.push(pl.len() as u8);
        s.extend_from_slice(pl);
    }
    seeds.insert(("file_receiver", "capture".into()), s);

    session_seeds(&mut seeds);
    record_seeds(&mut seeds);
    relay_seeds(&mut seeds);
    seeds
}

/// Bytes sent to relay server s1 on one of its connections, with when and by which node.
struct RelayArrival {
    at: Instant,
    from: usize,
    conn: tunstack::relay::ConnId,
    bytes: Vec<u8>,
}

enum RelayNode {
    Server(tunstack::relay::server::Server),
    Client(tunstack::relay::client::Client),
}

impl RelayNode {
    fn m(&mut self) -> &mut dyn tunstack::relay::Machine {
        match self {
            RelayNode::Server(s) => s,
            RelayNode::Client(c) => c,
        }
    }
    fn client(&mut self) -> &mut tunstack::relay::client::Client {
        match self {
            RelayNode::Client(c) => c,
            RelayNode::Server(_) => unreachable!("nodes 2 and 3 are the clients"),
        }
    }
}

/// A two-server mesh with the users `fz` (the harness's registered user) and `bob` run back to
/// back without delay; `fz` messages `bob` and an unknown user, `bob` messages `fz`, then `fz`
/// leaves. Returns what s1 received.
fn relay_capture() -> Vec<RelayArrival> {
    use std::collections::{HashMap, VecDeque};
    use tunstack::rand::Rng;
    use tunstack::relay::client::{Client, ClientConfig};
    use tunstack::relay::server::{Server, ServerConfig};
    use tunstack::relay::{ConnId, Output};

    enum Ev {
        Accepted(ConnId),
        Connected(ConnId),
        Failed(ConnId),
        Bytes(ConnId, Vec<u8>),
        Closed(ConnId),
    }
    let mut s1 = ServerConfig::new(harness::RELAY_ADDR);
    s1.join = vec!["s2:7000".into()];
    // Without delays every RTT is alike and both users would pick s1: full after fz, it sends
    // bob on to s2, so his messages reach s1 forwarded by s2.
    s1.max_users = 1;
    let client = |user: &str, seed: &str, k| {
        RelayNode::Client(Client::new(
            ClientConfig::new(user, vec![seed.to_string()]),
            Rng::new(k),
        ))
    };
    let mut nodes = [
        RelayNode::Server(Server::new(s1)),
        RelayNode::Server(Server::new(ServerConfig::new("s2:7000"))),
        client(harness::RELAY_USER, harness::RELAY_ADDR, 1),
        client("bob", "s2:7000", 2),
    ];
    let addrs: HashMap<&str, usize> = [(harness::RELAY_ADDR, 0), ("s2:7000", 1)].into();
    let mut links: HashMap<(usize, ConnId), (usize, ConnId)> = HashMap::new();
    let mut next_in = [1u64; 4];
    let mut queue: VecDeque<(usize, Ev)> = VecDeque::new();
    let mut got = Vec::new();
    let mut now = Instant::ZERO;
    for step in 0..400 {
        now += Duration::from_millis(10);
        for n in nodes.iter_mut() {
            let m = n.m();
            if m.poll_at().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
        }
        // Both users registered and the directory spread by then: talk once, then fz leaves.
        if step == 150 {
            let fz = nodes[2].client();
            for (to, body) in [
                ("bob", "hello bob"),
                ("nobody", "anyone?"),
                ("bob", "again"),
            ] {
                let _ = fz.send(now, to, body.as_bytes());
            }
            let _ = nodes[3].client().send(now, harness::RELAY_USER, b"hi fz");
        }
        if step == 300 {
            nodes[2].client().quit();
        }
        loop {
            for (i, n) in nodes.iter_mut().enumerate() {
                while let Some(o) = n.m().poll_output() {
                    match o {
                        Output::Send(c, b) => {
                            if let Some(&(j, pc)) = links.get(&(i, c)) {
                                if j == 0 {
                                    got.push(RelayArrival {
                                        at: now,
                                        from: i,
                                        conn: pc,
                                        bytes: b.clone(),
                                    });
                                }
                                queue.push_back((j, Ev::Bytes(pc, b)));
                            }
                        }
                        Output::Close(c) => {
                            if let Some((j, pc)) = links.remove(&(i, c)) {
                                links.remove(&(j, pc));
                                queue.push_back((j, Ev::Closed(pc)));
                            }
                        }
                        Output::Connect(c, a) => match addrs.get(a.as_str()) {
                            Some(&j) => {
                                let pc = ConnId(next_in[j]);
                                next_in[j] += 1;
                                links.insert((i, c), (j, pc));
                                links.insert((j, pc), (i, c));
                                queue.push_back((j, Ev::Accepted(pc)));
                                queue.push_back((i, Ev::Connected(c)));
                            }
                            None => queue.push_back((i, Ev::Failed(c))),
                        },
                    }
                }
            }
            let Some((j, ev)) = queue.pop_front() else {
                break;
            };
            let m = nodes[j].m();
            match ev {
                Ev::Accepted(c) => m.handle_accepted(now, c),
                Ev::Connected(c) => m.handle_connected(now, c),
                Ev::Failed(c) => m.handle_connect_failed(now, c),
                Ev::Closed(c) => m.handle_closed(now, c),
                Ev::Bytes(c, b) => m.handle_bytes(now, c, &b),
            }
        }
    }
    got
}

/// relay_frame seeds: the capture replayed on the harness's three connections (the user's
/// registered session on the registered one, its discovery and probes on the unregistered one,
/// s2 on the peer one), each alone and all together, and once with the one-user limit.
fn relay_seeds(seeds: &mut Seeds) {
    use tunstack::relay::wire::{Deframer, Frame};
    let got = relay_capture();
    let registers = |a: &RelayArrival| {
        let mut d = Deframer::default();
        d.push(&a.bytes);
        std::iter::from_fn(|| d.next_frame()).any(|f| matches!(f, Ok(Frame::Register { .. })))
    };
    // The connections of s1 that carried a registration.
    let mut session = Vec::new();
    for a in got.iter().filter(|a| registers(a)) {
        if !session.contains(&a.conn) {
            session.push(a.conn);
        }
    }
    assert!(!session.is_empty(), "the capture has no registration");
    let role = |a: &RelayArrival| match a.from {
        1 => 2u8,
        2 if session.contains(&a.conn) => 1,
        _ => 0,
    };
    let encode = |mode: u8, only: Option<u8>| {
        let mut v = vec![mode];
        let mut last = Instant::ZERO;
        for a in got.iter().filter(|a| only.is_none_or(|o| o == role(a))) {
            let step = a.at.saturating_since(last).as_millis().min(127) as u8;
            last = a.at;
            for (k, piece) in a.bytes.chunks(255).enumerate() {
                v.extend_from_slice(&[role(a), if k == 0 { step } else { 0 }, piece.len() as u8]);
                v.extend_from_slice(piece);
            }
        }
        v
    };
    seeds.insert(("relay_frame", "mesh".into()), encode(0, None));
    seeds.insert(("relay_frame", "full".into()), encode(1, None));
    seeds.insert(("relay_frame", "unregistered".into()), encode(0, Some(0)));
    seeds.insert(("relay_frame", "registered".into()), encode(0, Some(1)));
    seeds.insert(("relay_frame", "peer".into()), encode(0, Some(2)));
}

/// A client and a server session joined back to back: the bytes each sends, in order.
fn session_seeds(seeds: &mut Seeds) {
    let mut now = Instant::ZERO;
    let mut c = Session::connect(harness::session_client(), now);
    let mut s = Session::accept(harness::session_server(), now);
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    for i in 0..40u32 {
        now += Duration::from_millis(5);
        while let Some(f) = c.poll_transmit() {
            s.handle_bytes(now, &f);
            to_server.push(f);
        }
        while let Some(f) = s.poll_transmit() {
            c.handle_bytes(now, &f);
            to_client.push(f);
        }
        while c.poll_event().is_some() {}
        while s.poll_event().is_some() {}
        if c.is_established() && i < 10 {
            let _ = c.send(now, format!("message {i}").into_bytes());
        }
        if i == 12 {
            c.close(now);
        }
        if i == 6 && s.is_established() {
            let _ = s.send(now, b"from the server".to_vec());
        }
    }
    for (mode, frames, name) in [(0u8, &to_server, "server"), (1, &to_client, "client")] {
        let mut v = vec![mode];
        for f in frames.iter() {
            for piece in f.chunks(255) {
                v.extend_from_slice(&[1, 2, piece.len() as u8]);
                v.extend_from_slice(piece);
            }
        }
        seeds.insert(("session_frame", name.into()), v);
    }
}

fn record_seeds(seeds: &mut Seeds) {
    let recs: [(u8, &[u8]); 5] = [
        (1, b""),
        (2, b"hello over the encrypted channel"),
        (3, b"\0\0\0\0\0\0\0\x05notes"),
        (4, b"chunk"),
        (8, b""),
    ];
    let mut base = Vec::new();
    for (t, body) in recs {
        base.push(t);
        base.push(body.len() as u8);
        base.extend_from_slice(body);
    }
    base.extend_from_slice(&[0, 0]);
    let mut clean = base.clone();
    clean.extend_from_slice(&[0, 3, 7, 255]);
    seeds.insert(("cat_record", "clean".into()), clean);
    // One edit of each kind.
    for (op, name) in [(0u8, "flip"), (1, "drop"), (2, "dup"), (3, "cut")] {
        let mut v = base.clone();
        v.extend_from_slice(&[1, op, 0, 40, 60, 255]);
        seeds.insert(("cat_record", name.into()), v);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    let seeds = build(&capture());
    // Every seed must run clean through its own harness.
    for ((target, name), bytes) in &seeds {
        run(target, bytes);
        let dir = Path::new(&out).join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("fuzz_seeds: wrote {} seeds to {out}", seeds.len());
    Ok(())
}

fn run(target: &str, data: &[u8]) {
    match target {
        "ip_input" => harness::ip_input(data),
        "tcp_listen" => harness::tcp_listen(data),
        "tcp_established" => harness::tcp_established(data),
        "msg_decode" => harness::msg_decode(data),
        "file_decode" => harness::file_decode(data),
        "file_receiver" => harness::file_receiver(data),
        "session_frame" => harness::session_frame(data),
        "cat_record" => harness::cat_record(data),
        "relay_frame" => harness::relay_frame(data),
        _ => unreachable!("unknown target {target}"),
    }
}
