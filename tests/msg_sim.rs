//! Protocol 170 in the deterministic simulator: delivery exactly once and in order under loss,
//! reordering, duplication and corruption; restarts; failure; discovery; throughput.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use tunstack::impair::ImpairSpec;
use tunstack::msg::{Message, MessageId, MsgConfig, MsgEvent, Origin, PeerState};
use tunstack::sim::{for_each_seed, HostId, Sim};
use tunstack::stack::{Stack, StackConfig};
use tunstack::time::{Duration, Instant};

fn addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}

fn stack(i: u8, seed: u64, epoch: u64, tweak: &dyn Fn(&mut MsgConfig)) -> Stack {
    let mut cfg = StackConfig::new(
        addr(i),
        24,
        1500,
        seed.wrapping_mul(31).wrapping_add(i as u64),
    );
    cfg.msg.node_name = format!("node{i}");
    cfg.msg.node_id = 1000 + i as u64;
    cfg.msg.boot_epoch = epoch;
    tweak(&mut cfg.msg);
    Stack::new(cfg)
}

fn msg(channel: &str, n: usize, size: usize) -> Message {
    let mut content = format!("m{n}:");
    while content.len() < size {
        content.push(char::from(b'a' + (content.len() % 26) as u8));
    }
    Message {
        content,
        sender: "tester".into(),
        channel_id: channel.into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        is_file: false,
    }
}

/// Everything each host has reported, drained after every simulator event.
#[derive(Default)]
struct Log {
    received: HashMap<(HostId, Ipv4Addr, String), Vec<String>>,
    delivered: HashMap<HostId, Vec<MessageId>>,
    failed: HashMap<HostId, Vec<(MessageId, String)>>,
    peer_up: HashMap<HostId, Vec<Ipv4Addr>>,
    /// The origin of every message each host received, in delivery order: what a node logs.
    origins: HashMap<HostId, Vec<Origin>>,
}

impl Log {
    fn drain(&mut self, sim: &mut Sim, hosts: &[HostId]) {
        for &h in hosts {
            while let Some(ev) = sim.host::<Stack>(h).msg.poll_event() {
                match ev {
                    MsgEvent::Received { from, msg, origin } => {
                        self.origins.entry(h).or_default().push(origin);
                        self.received
                            .entry((h, from, msg.channel_id))
                            .or_default()
                            .push(msg.content)
                    }
                    MsgEvent::Delivered { id, .. } => self.delivered.entry(h).or_default().push(id),
                    MsgEvent::Failed { id, reason, .. } => {
                        self.failed.entry(h).or_default().push((id, reason))
                    }
                    MsgEvent::PeerUp { addr, .. } => self.peer_up.entry(h).or_default().push(addr),
                    MsgEvent::PeerDown { .. } => {}
                }
            }
        }
    }
    fn outcomes(&self, h: HostId) -> usize {
        self.delivered.get(&h).map_or(0, |v| v.len()) + self.failed.get(&h).map_or(0, |v| v.len())
    }
    /// The marks a node rebuilds from its inbox log after a crash: the highest origin per
    /// sender among everything `to` received, computed from the events alone.
    fn marks(&self, to: HostId) -> Vec<Origin> {
        let mut best: HashMap<u64, Origin> = HashMap::new();
        for &o in self.origins.get(&to).into_iter().flatten() {
            let b = best.entry(o.node_id).or_insert(o);
            if (o.epoch, o.id) > (b.epoch, b.id) {
                *b = o;
            }
        }
        best.into_values().collect()
    }
    fn got(&self, to: HostId, from: u8, ch: &str) -> Vec<String> {
        self.received
            .get(&(to, addr(from), ch.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

fn spec(loss: u32) -> ImpairSpec {
    ImpairSpec::parse(&format!(
        "loss={loss}%,reorder=5%:10ms,dup=2%,corrupt=1%,delay=10ms~2ms"
    ))
    .unwrap()
}

fn lossy(c: &mut MsgConfig) {
    c.max_retries = 20;
    c.max_rto = Duration::from_secs(2);
}

/// Sends `n` messages on `channels` from each (src, dst) pair and waits for every outcome.
/// Returns the log and the simulated time it took.
fn exchange(
    sim: &mut Sim,
    hosts: &[HostId],
    pairs: &[(usize, usize)],
    n: usize,
    size: usize,
    limit: Duration,
) -> (Log, Duration) {
    let start = sim.now();
    let mut log = Log::default();
    let mut expected: HashMap<HostId, usize> = HashMap::new();
    let mut sent = 0;
    // Interleave the senders and channels so streams overlap in time.
    for k in 0..n {
        for &(s, d) in pairs {
            let ch = ["general", "ops", "random"][k % 3];
            let now = sim.now();
            let dst = addr(d as u8 + 1);
            sim.host::<Stack>(hosts[s])
                .msg
                .send_message(now, dst, msg(ch, k, size))
                .expect("queued");
            *expected.entry(hosts[s]).or_default() += 1;
            sent += 1;
        }
    }
    let done = sim.run_until(limit, |sim| {
        log.drain(sim, hosts);
        expected.iter().all(|(h, &n)| log.outcomes(*h) >= n)
    });
    assert!(
        done,
        "only some of {sent} messages had an outcome by {:?}",
        sim.now()
    );
    (log, sim.now() - start)
}

#[track_caller]
fn assert_in_order(log: &Log, to: HostId, from: u8, ch_offset: usize, n: usize) {
    for (c, ch) in ["general", "ops", "random"].iter().enumerate() {
        let want: Vec<String> = (0..n)
            .filter(|k| k % 3 == c)
            .map(|k| msg(ch, k, 0).content)
            .collect();
        let got: Vec<String> = log
            .got(to, from, ch)
            .into_iter()
            .map(|s| s.split(':').next().unwrap().to_string() + ":")
            .collect();
        let want: Vec<String> = want
            .into_iter()
            .map(|s| s.split(':').next().unwrap().to_string() + ":")
            .collect();
        assert_eq!(got, want, "channel {ch} from {from} (offset {ch_offset})");
    }
}

#[test]
fn test_two_nodes_exactly_once_in_order_under_impairment() {
    for loss in [0u32, 5, 10, 20, 30] {
        for_each_seed(1..=3, |seed| {
            let mut sim = Sim::new(seed);
            let a = sim.add_host(stack(1, seed, 1, &lossy));
            let b = sim.add_host(stack(2, seed, 1, &lossy));
            sim.set_path(a, b, spec(loss));
            let n = 300;
            let (log, took) = exchange(
                &mut sim,
                &[a, b],
                &[(0, 1), (1, 0)],
                n,
                40,
                Duration::from_secs(600),
            );
            assert!(log.failed.is_empty(), "failures: {:?}", log.failed);
            assert_eq!(log.delivered[&a].len(), n);
            assert_eq!(log.delivered[&b].len(), n);
            assert_in_order(&log, b, 1, 0, n);
            assert_in_order(&log, a, 2, 0, n);
            let c = sim.host::<Stack>(b).msg.counters().clone();
            let ca = sim.host::<Stack>(a).msg.counters().clone();
            if seed == 1 {
                println!(
                    "loss {loss:2}%: {} msgs each way in {:.2}s simulated; B: dup {} retx {} fast {} bad crc {}",
                    n,
                    took.as_secs_f64(),
                    c.duplicates,
                    ca.retransmits,
                    ca.fast_retransmits,
                    c.bad_checksum
                );
            }
        });
    }
}

#[test]
fn test_three_nodes_all_pairs() {
    for_each_seed(1..=3, |seed| {
        let mut sim = Sim::new(seed);
        let h: Vec<HostId> = (1..=3)
            .map(|i| sim.add_host(stack(i, seed, 1, &lossy)))
            .collect();
        for i in 0..3 {
            for j in i + 1..3 {
                sim.set_path(h[i], h[j], spec(10));
            }
        }
        let pairs = [(0, 1), (0, 2), (1, 2), (2, 0), (1, 0), (2, 1)];
        let n = 120;
        let (log, _) = exchange(&mut sim, &h, &pairs, n, 100, Duration::from_secs(600));
        assert!(log.failed.is_empty());
        for &(s, d) in &pairs {
            assert_in_order(&log, h[d], s as u8 + 1, 0, n);
        }
    });
}

#[test]
fn test_large_messages_are_split_and_reassembled() {
    for_each_seed(1..=3, |seed| {
        let mut sim = Sim::new(seed);
        let a = sim.add_host(stack(1, seed, 1, &lossy));
        let b = sim.add_host(stack(2, seed, 1, &lossy));
        sim.set_path(a, b, spec(10));
        let sizes = [1400usize, 1500, 4000, 20_000, 100_000, 300_000, 10];
        for (k, &size) in sizes.iter().enumerate() {
            let now = sim.now();
            sim.host::<Stack>(a)
                .msg
                .send_message(now, addr(2), msg("big", k, size))
                .unwrap();
        }
        let mut log = Log::default();
        assert!(sim.run_until(Duration::from_secs(300), |sim| {
            log.drain(sim, &[a, b]);
            log.outcomes(a) == sizes.len()
        }));
        let got = log.got(b, 1, "big");
        assert_eq!(got.len(), sizes.len());
        for (k, &size) in sizes.iter().enumerate() {
            assert_eq!(got[k], msg("big", k, size).content, "message {k} differs");
        }
    });
}

#[test]
fn test_corrupted_payloads_are_never_delivered() {
    for_each_seed(1..=2, |seed| {
        let mut sim = Sim::new(seed);
        let a = sim.add_host(stack(1, seed, 1, &lossy));
        let b = sim.add_host(stack(2, seed, 1, &lossy));
        sim.set_path(a, b, ImpairSpec::parse("corrupt=30%,delay=5ms").unwrap());
        let n = 300;
        let (log, _) = exchange(
            &mut sim,
            &[a, b],
            &[(0, 1)],
            n,
            200,
            Duration::from_secs(600),
        );
        assert!(log.failed.is_empty());
        for ch in ["general", "ops", "random"] {
            for content in log.got(b, 1, ch) {
                let k: usize = content[1..content.find(':').unwrap()].parse().unwrap();
                assert_eq!(content, msg(ch, k, 200).content);
            }
        }
        assert_in_order(&log, b, 1, 0, n);
        let c = sim.host::<Stack>(b).msg.counters().clone();
        assert!(c.bad_checksum > 10, "corruption was not exercised: {c:?}");
        println!("corrupt 30%: {} bad checksums caught", c.bad_checksum);
    });
}

/// Sends `n` messages A→B, restarts `victim` with a new epoch after a third of them were
/// delivered, then checks the union of what B's two lives received. A restarted receiver starts
/// from the delivery marks of what its previous life received, as a node rebuilds them from its
/// inbox log, so the union is every message exactly once and in order, with or without loss.
fn restart_run(seed: u64, victim_is_receiver: bool, loss: u32) {
    // A small window spreads the stream over many round trips, so the restart lands mid-stream.
    let small = |c: &mut MsgConfig| {
        lossy(c);
        c.window = 8;
    };
    let mut sim = Sim::new(seed);
    let a = sim.add_host(stack(1, seed, 1, &small));
    let b = sim.add_host(stack(2, seed, 1, &small));
    let s = ImpairSpec::parse(&format!(
        "loss={loss}%,reorder=5%:10ms,dup=2%,delay=10ms~2ms"
    ))
    .unwrap();
    sim.set_path(a, b, s);
    let n = 400;
    let mut ids = Vec::new();
    for k in 0..n {
        let now = sim.now();
        ids.push(
            sim.host::<Stack>(a)
                .msg
                .send_message(now, addr(2), msg("general", k, 30))
                .unwrap(),
        );
    }
    let mut log = Log::default();
    assert!(sim.run_until(Duration::from_secs(60), |sim| {
        log.drain(sim, &[a, b]);
        log.outcomes(a) >= n / 3
    }));
    let got_before = log.got(b, 1, "general").len();
    assert!(got_before < n, "the restart must come mid-stream");
    if victim_is_receiver {
        log.drain(&mut sim, &[a, b]);
        let marks = log.marks(b);
        assert_eq!(
            by_node(marks.clone()),
            by_node(sim.host::<Stack>(b).msg.delivered_marks()),
            "the marks of the received events differ from the endpoint's"
        );
        let mut fresh = stack(2, seed + 100, 2, &small);
        fresh.msg.restore_delivered(marks);
        sim.replace_host(b, fresh);
    } else {
        // The sender's queue dies with it. Whether the in-flight tail reached B is unknowable to
        // the new life, so it sends fresh messages 1000.. and we check the seam instead.
        let delivered_before = log.delivered[&a].len();
        sim.replace_host(a, stack(1, seed + 100, 2, &small));
        log.delivered.clear();
        for k in 1000..1200 {
            let now = sim.now();
            sim.host::<Stack>(a)
                .msg
                .send_message(now, addr(2), msg("general", k, 30))
                .unwrap();
        }
        assert!(sim.run_until(Duration::from_secs(300), |sim| {
            log.drain(sim, &[a, b]);
            sim.host::<Stack>(a).msg.pending() == 0
        }));
        log.drain(&mut sim, &[a, b]);
        assert!(log.failed.is_empty(), "{:?}", log.failed);
        let got: Vec<usize> = log
            .got(b, 1, "general")
            .iter()
            .map(|c| c[1..c.find(':').unwrap()].parse().unwrap())
            .collect();
        let k = got.iter().position(|&x| x >= 1000).unwrap();
        assert!(k >= delivered_before, "B lost messages A saw Delivered");
        let want: Vec<usize> = (0..k).chain(1000..1200).collect();
        assert_eq!(got, want, "seam between the sender's lives is wrong");
        assert!(sim.host::<Stack>(b).msg.counters().peer_restarts >= 1);
        return;
    }
    assert!(sim.run_until(Duration::from_secs(300), |sim| {
        log.drain(sim, &[a, b]);
        sim.host::<Stack>(a).msg.pending() == 0
    }));
    log.drain(&mut sim, &[a, b]);
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    let got: Vec<usize> = log
        .got(b, 1, "general")
        .iter()
        .map(|c| c[1..c.find(':').unwrap()].parse().unwrap())
        .collect();
    let want: Vec<usize> = (0..n).collect();
    assert_eq!(got, want, "restart lost, duplicated or reordered messages");
    let c = sim
        .host::<Stack>(if victim_is_receiver { a } else { b })
        .msg
        .counters()
        .clone();
    assert!(c.peer_restarts >= 1, "restart not noticed: {c:?}");
}

#[test]
fn test_receiver_restart_loses_and_duplicates_nothing() {
    for_each_seed(1..=4, |seed| restart_run(seed, true, 0));
    for_each_seed(1..=2, |seed| restart_run(seed, true, 10));
}

fn by_node(mut v: Vec<Origin>) -> Vec<Origin> {
    v.sort_by_key(|o| o.node_id);
    v
}

/// Whether a packet is a protocol-170 ACK.
fn is_msg_ack(ip: &[u8]) -> bool {
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    ip[9] == tunstack::msg::PROTOCOL && ip.get(ihl + 1) == Some(&tunstack::msg::wire::ty::ACK)
}

/// The crash that used to duplicate: from the moment B has delivered a third of `n` messages,
/// every ACK it sends is lost, so it goes on delivering messages A never hears about; then B
/// crashes and restarts with a new epoch. A renumbers everything unacknowledged into a new
/// stream and sends it again. With `restore`, B's new life starts from the marks of what it
/// received (as rebuilt from its inbox log). Returns the indices B's two lives received, in
/// order, and the new life's count of messages it recognised as delivered before.
fn crash_before_ack_run(seed: u64, loss: u32, restore: bool) -> (Vec<usize>, u64) {
    let cfg = |c: &mut MsgConfig| {
        lossy(c);
        c.window = 16;
    };
    let mut sim = Sim::new(seed);
    let a = sim.add_host(stack(1, seed, 1, &cfg));
    let b = sim.add_host(stack(2, seed, 1, &cfg));
    let s = ImpairSpec::parse(&format!(
        "loss={loss}%,reorder=5%:10ms,dup=2%,delay=10ms~2ms"
    ))
    .unwrap();
    sim.set_path(a, b, s);
    let drop_acks = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = drop_acks.clone();
    sim.set_filter(Box::new(move |_, from, _, ip: &[u8]| {
        !(flag.get() && from == b && is_msg_ack(ip))
    }));
    let n = 300;
    for k in 0..n {
        let now = sim.now();
        sim.host::<Stack>(a)
            .msg
            .send_message(now, addr(2), msg("general", k, 30))
            .unwrap();
    }
    let mut log = Log::default();
    assert!(sim.run_until(Duration::from_secs(60), |sim| {
        log.drain(sim, &[a, b]);
        log.got(b, 1, "general").len() >= n / 3
    }));
    drop_acks.set(true);
    let at_drop = log.got(b, 1, "general").len();
    assert!(
        sim.run_until(Duration::from_secs(30), |sim| {
            log.drain(sim, &[a, b]);
            log.got(b, 1, "general").len() >= at_drop + 8
        }),
        "B delivered nothing more once its ACKs were lost"
    );
    log.drain(&mut sim, &[a, b]);
    let acked = log.delivered[&a].len();
    let received = log.got(b, 1, "general").len();
    assert!(
        acked < received,
        "the crash must leave delivered messages unacknowledged ({acked} acked, {received} received)"
    );
    let mut fresh = stack(2, seed + 100, 2, &cfg);
    if restore {
        fresh.msg.restore_delivered(log.marks(b));
    }
    sim.replace_host(b, fresh);
    drop_acks.set(false);
    assert!(sim.run_until(Duration::from_secs(300), |sim| {
        log.drain(sim, &[a, b]);
        sim.host::<Stack>(a).msg.pending() == 0
    }));
    log.drain(&mut sim, &[a, b]);
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert_eq!(
        log.delivered[&a].len(),
        n,
        "A saw not every message delivered"
    );
    assert!(sim.host::<Stack>(a).msg.counters().peer_restarts >= 1);
    let got = log
        .got(b, 1, "general")
        .iter()
        .map(|c| c[1..c.find(':').unwrap()].parse().unwrap())
        .collect();
    (got, sim.host::<Stack>(b).msg.counters().duplicate_messages)
}

#[test]
fn test_receiver_crash_between_delivery_and_ack_delivers_exactly_once() {
    for loss in [0u32, 10] {
        for_each_seed(1..=4, |seed| {
            let (got, recognised) = crash_before_ack_run(seed, loss, true);
            let want: Vec<usize> = (0..300).collect();
            assert_eq!(got, want, "lost, duplicated or reordered across the crash");
            assert!(
                recognised > 0,
                "no message was sent again: the crash missed its moment"
            );
            if seed == 1 {
                println!("loss {loss:2}%: {recognised} messages delivered before the crash came again, recognised");
            }
            // Without the marks, the same run delivers those messages twice: the hazard is real.
            let (got, _) = crash_before_ack_run(seed, loss, false);
            assert_eq!(
                got.len() as u64,
                300 + recognised,
                "without restored marks every recognised message is a duplicate"
            );
        });
    }
}

#[test]
fn test_sender_restart_loses_and_duplicates_nothing() {
    for_each_seed(1..=4, |seed| restart_run(seed, false, 0));
    for_each_seed(1..=2, |seed| restart_run(seed, false, 10));
}

#[test]
fn test_unreachable_peer_fails_after_retries() {
    let mut sim = Sim::new(1);
    let a = sim.add_host(stack(1, 1, 1, &|_| {}));
    let _b = sim.add_host(stack(2, 1, 1, &|_| {}));
    let now = sim.now();
    let id = sim
        .host::<Stack>(a)
        .msg
        .send_message(now, addr(99), msg("general", 0, 10))
        .unwrap();
    // A known peer that goes silent after the session began.
    let id2 = sim
        .host::<Stack>(a)
        .msg
        .send_message(now, addr(2), msg("general", 1, 10))
        .unwrap();
    let mut log = Log::default();
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        log.drain(sim, &[a]);
        log.outcomes(a) >= 1
    }));
    let b2 = ImpairSpec::parse("loss=100%").unwrap();
    sim.set_path(a, _b, b2);
    let now = sim.now();
    let id3 = sim
        .host::<Stack>(a)
        .msg
        .send_message(now, addr(2), msg("general", 2, 10))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(120), |sim| {
        log.drain(sim, &[a]);
        log.outcomes(a) >= 3
    }));
    let failed = &log.failed[&a];
    assert_eq!(log.delivered[&a], vec![id2]);
    let ids: Vec<MessageId> = failed.iter().map(|f| f.0).collect();
    assert!(ids.contains(&id) && ids.contains(&id3), "{failed:?}");
    for (_, reason) in failed {
        assert!(reason.contains("after 6 tries"), "reason: {reason}");
        println!("failure reason: {reason}");
    }
    let c = sim.host::<Stack>(a).msg.counters().clone();
    assert_eq!(c.messages_failed, 2);
}

#[test]
fn test_self_and_bad_destinations_are_refused() {
    let mut s = stack(1, 1, 1, &|_| {});
    let now = Instant::ZERO;
    assert!(s.msg.send_message(now, addr(1), msg("c", 0, 1)).is_err());
    assert!(s
        .msg
        .send_message(now, Ipv4Addr::BROADCAST, msg("c", 0, 1))
        .is_err());
    assert!(s
        .msg
        .send_message(now, Ipv4Addr::UNSPECIFIED, msg("c", 0, 1))
        .is_err());
    s.msg.add_peer(now, addr(1));
    assert!(s.msg.peers(now).is_empty());
}

#[test]
fn test_pending_queue_is_bounded() {
    let mut s = stack(1, 1, 1, &|c| {
        c.max_pending = 10;
        c.max_pending_total = 15;
    });
    let now = Instant::ZERO;
    for k in 0..10 {
        s.msg.send_message(now, addr(2), msg("c", k, 1)).unwrap();
    }
    assert!(s.msg.send_message(now, addr(2), msg("c", 10, 1)).is_err());
    for k in 0..5 {
        s.msg.send_message(now, addr(3), msg("c", k, 1)).unwrap();
    }
    assert!(s.msg.send_message(now, addr(4), msg("c", 0, 1)).is_err());
    assert_eq!(s.msg.counters().queue_full, 2);
}

#[test]
fn test_peer_exchange_c_learns_b_through_a() {
    for_each_seed(1..=3, |seed| {
        let mut sim = Sim::new(seed);
        let a = sim.add_host(stack(1, seed, 1, &|_| {}));
        let b = sim.add_host(stack(2, seed, 1, &|c| c.peers = vec![addr(1)]));
        let c = sim.add_host(stack(3, seed, 1, &|_| {}));
        sim.run_for(Duration::from_secs(1));
        let now = sim.now();
        sim.host::<Stack>(c).msg.add_peer(now, addr(1));
        let found = sim.run_until(Duration::from_secs(30), |sim| {
            let now = sim.now();
            sim.host::<Stack>(c)
                .msg
                .peers(now)
                .iter()
                .any(|p| p.addr == addr(2) && p.state == PeerState::Alive && p.name == "node2")
        });
        assert!(found, "C never learned about B");
        let now = sim.now();
        let peers = sim.host::<Stack>(c).msg.peers(now);
        println!("C's table: {}", serde_json::to_string(&peers).unwrap());
        let _ = (a, b);
    });
}

#[test]
fn test_discover_probes_range_at_bounded_rate() {
    let mut sim = Sim::new(7);
    let hosts: Vec<HostId> = [1u8, 50, 200]
        .iter()
        .map(|&i| sim.add_host(stack(i, 7, 1, &|_| {})))
        .collect();
    let now = sim.now();
    sim.host::<Stack>(hosts[0])
        .msg
        .discover(now, Ipv4Addr::new(10, 0, 0, 0), 24);
    sim.run_for(Duration::from_secs(1));
    let probes = sim.host::<Stack>(hosts[0]).msg.counters().probes_out;
    assert!(
        (45..=52).contains(&probes),
        "{probes} probes in the first second"
    );
    sim.run_for(Duration::from_secs(5));
    let now = sim.now();
    let peers = sim.host::<Stack>(hosts[0]).msg.peers(now);
    let addrs: Vec<Ipv4Addr> = peers.iter().map(|p| p.addr).collect();
    assert_eq!(addrs, vec![addr(50), addr(200)]);
    assert!(peers.iter().all(|p| p.rtt_ms.is_some()));
}

#[test]
fn test_dead_peer_is_reported_down() {
    let mut sim = Sim::new(3);
    let a = sim.add_host(stack(1, 3, 1, &|c| c.peers = vec![addr(2)]));
    let b = sim.add_host(stack(2, 3, 1, &|_| {}));
    sim.run_for(Duration::from_secs(2));
    let now = sim.now();
    assert_eq!(
        sim.host::<Stack>(a).msg.peers(now)[0].state,
        PeerState::Alive
    );
    sim.set_path(a, b, ImpairSpec::parse("loss=100%").unwrap());
    sim.run_for(Duration::from_secs(20));
    let now = sim.now();
    assert_eq!(
        sim.host::<Stack>(a).msg.peers(now)[0].state,
        PeerState::Suspect
    );
    sim.run_for(Duration::from_secs(20));
    let now = sim.now();
    assert_eq!(
        sim.host::<Stack>(a).msg.peers(now)[0].state,
        PeerState::Dead
    );
    let mut down = false;
    while let Some(ev) = sim.host::<Stack>(a).msg.poll_event() {
        down |= matches!(ev, MsgEvent::PeerDown { addr: x } if x == addr(2));
    }
    assert!(down);
}

#[test]
fn test_throughput_small_messages() {
    for loss in [0u32, 5, 20] {
        let mut sim = Sim::new(11);
        let a = sim.add_host(stack(1, 11, 1, &|c| {
            lossy(c);
            c.max_pending = 200_000;
            c.max_pending_total = 200_000;
            c.window = 1024;
        }));
        let b = sim.add_host(stack(2, 11, 1, &|c| c.window = 1024));
        sim.set_path(
            a,
            b,
            ImpairSpec::parse(&format!("loss={loss}%,delay=1ms")).unwrap(),
        );
        // Prime the session so the handshake is not part of the figure.
        let now = sim.now();
        sim.host::<Stack>(a)
            .msg
            .send_message(now, addr(2), msg("x", 0, 32))
            .unwrap();
        sim.run_for(Duration::from_millis(100));
        while sim.host::<Stack>(a).msg.poll_event().is_some() {}
        while sim.host::<Stack>(b).msg.poll_event().is_some() {}
        let n = if loss == 0 { 100_000 } else { 30_000 };
        let start = sim.now();
        let wall = std::time::Instant::now();
        for k in 0..n {
            sim.host::<Stack>(a)
                .msg
                .send_message(start, addr(2), msg("x", k, 32))
                .unwrap();
        }
        let mut delivered = 0;
        let mut received = 0;
        assert!(sim.run_until(Duration::from_secs(300), |sim| {
            while let Some(ev) = sim.host::<Stack>(a).msg.poll_event() {
                if matches!(ev, MsgEvent::Delivered { .. }) {
                    delivered += 1;
                }
            }
            while let Some(ev) = sim.host::<Stack>(b).msg.poll_event() {
                if matches!(ev, MsgEvent::Received { .. }) {
                    received += 1;
                }
            }
            delivered == n
        }));
        let t = (sim.now() - start).as_secs_f64();
        println!(
            "msg throughput, loss {loss:2}%, 1 ms one-way: {n} x 32 B acknowledged in {t:.3}s simulated = {:.0} msg/s (wall {:.2}s)",
            n as f64 / t,
            wall.elapsed().as_secs_f64()
        );
        assert_eq!(received, n);
    }
}

/// The retransmission settings a user gives (`--msg-retries`, `--msg-backoff`, `--msg-rto-min`),
/// applied the way the node applies them: after the session is up the path goes silent, and the
/// gaps between the transmissions of the stuck segment must grow by the backoff factor, with
/// exactly `retries` retransmissions before the message fails.
#[test]
fn test_configured_retries_and_backoff_shape_the_retransmissions() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use tunstack::msg::wire::{ty, Header};
    use tunstack::node::launch::MsgTuning;

    for (retries, backoff) in [(3u32, 2.0f64), (5, 1.5), (7, 1.25)] {
        let tuning = MsgTuning {
            max_retries: Some(retries),
            backoff: Some(backoff),
            min_rto: Some(Duration::from_millis(100)),
            max_rto: Some(Duration::from_secs(60)),
            ..MsgTuning::default()
        };
        tuning.check().unwrap();
        let tuned = |c: &mut MsgConfig| tuning.apply(c);
        let mut sim = Sim::new(5);
        let a = sim.add_host(stack(1, 5, 1, &tuned));
        let b = sim.add_host(stack(2, 5, 1, &tuned));
        // Every DATA segment A sends, as (time, seq), when it enters the link.
        let sent: Rc<RefCell<Vec<(Instant, u32)>>> = Rc::default();
        let s = sent.clone();
        sim.set_tap(Box::new(move |now, from, _to, pkt| {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if from != a || pkt[9] != 170 {
                return;
            }
            if let Ok((h, _)) = Header::parse(&pkt[ihl..]) {
                if h.ty == ty::DATA {
                    s.borrow_mut().push((now, h.seq));
                }
            }
        }));
        let now = sim.now();
        let first = sim
            .host::<Stack>(a)
            .msg
            .send_message(now, addr(2), msg("general", 0, 10))
            .unwrap();
        let mut log = Log::default();
        assert!(sim.run_until(Duration::from_secs(10), |sim| {
            log.drain(sim, &[a, b]);
            log.outcomes(a) == 1
        }));
        assert_eq!(log.delivered[&a], vec![first], "the session did not start");
        sim.set_link(a, b, ImpairSpec::parse("loss=100%").unwrap());
        sent.borrow_mut().clear();
        let now = sim.now();
        let stuck = sim
            .host::<Stack>(a)
            .msg
            .send_message(now, addr(2), msg("general", 1, 10))
            .unwrap();
        assert!(sim.run_until(Duration::from_secs(600), |sim| {
            log.drain(sim, &[a, b]);
            log.outcomes(a) == 2
        }));
        let failed_at = sim.now();
        let failed = &log.failed[&a];
        assert_eq!(failed.len(), 1);
        let (id, reason) = &failed[0];
        assert_eq!(*id, stuck);
        let tries = retries + 1;
        assert!(
            reason.contains(&format!("after {tries} tries")),
            "{retries} retries: reason {reason:?}"
        );
        let sent = sent.borrow();
        assert!(
            sent.iter().all(|&(_, seq)| seq == sent[0].1),
            "only the stuck segment should be sent: {sent:?}"
        );
        assert_eq!(
            sent.len(),
            tries as usize,
            "{retries} retries: transmissions at {sent:?}"
        );
        // The wait after each try, the last one being the wait before giving up.
        let mut gaps: Vec<f64> = sent
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_secs_f64())
            .collect();
        gaps.push((failed_at - sent[sent.len() - 1].0).as_secs_f64());
        for w in gaps.windows(2) {
            let ratio = w[1] / w[0];
            assert!(
                (ratio - backoff).abs() < 0.01,
                "backoff {backoff}: gaps {gaps:?} grow by {ratio}"
            );
        }
        assert!(
            gaps[0] >= 0.1,
            "the first wait {} is below --msg-rto-min",
            gaps[0]
        );
        let shown: Vec<String> = gaps.iter().map(|g| format!("{:.0}", g * 1e3)).collect();
        println!(
            "retries {retries}, backoff {backoff}: waits {} ms, then: {reason}",
            shown.join(", ")
        );
    }
}

/// A flight whose ACKs are all lost is repaired by a probe within a few round trips, not by the
/// 50 ms retransmission timeout; the probe is not a try.
#[test]
fn test_lost_acks_of_a_flight_are_repaired_by_a_probe() {
    use std::cell::Cell;
    use std::rc::Rc;
    use tunstack::msg::wire::{ty, Header};

    let mut sim = Sim::new(9);
    let a = sim.add_host(stack(1, 9, 1, &|_| {}));
    let b = sim.add_host(stack(2, 9, 1, &|_| {}));
    sim.set_path(a, b, ImpairSpec::parse("delay=1ms").unwrap());
    let mut log = Log::default();
    let now = sim.now();
    sim.host::<Stack>(a)
        .msg
        .send_message(now, addr(2), msg("general", 0, 10))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        log.drain(sim, &[a, b]);
        log.outcomes(a) == 1
    }));
    // From now on, B's ACKs are lost until 3 ms from now: every ACK of the next flight.
    let start = sim.now();
    let dropping = Rc::new(Cell::new(true));
    let d = dropping.clone();
    sim.set_filter(Box::new(move |now, from, _to, pkt| {
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let is_ack = from == b
            && pkt[9] == 170
            && Header::parse(&pkt[ihl..]).is_ok_and(|(h, _)| h.ty == ty::ACK);
        if now - start >= Duration::from_millis(3) {
            d.set(false);
        }
        !(is_ack && d.get())
    }));
    for n in 1..=10 {
        let now = sim.now();
        sim.host::<Stack>(a)
            .msg
            .send_message(now, addr(2), msg("general", n, 10))
            .unwrap();
    }
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        log.drain(sim, &[a, b]);
        log.outcomes(a) == 11
    }));
    let took = sim.now() - start;
    assert_eq!(log.delivered[&a].len(), 11);
    assert!(
        !dropping.get() && sim.stats().filtered > 0,
        "no ACK was dropped"
    );
    let c = sim.host::<Stack>(a).msg.counters().clone();
    assert!(c.probes >= 1, "{c:?}");
    assert!(
        took < Duration::from_millis(20),
        "repaired after {took:?}: {c:?}"
    );
}

#[test]
fn test_new_node_at_the_same_address_and_epoch_gets_a_new_stream() {
    // B is replaced by another node (another node id) that booted within the same second, so
    // with the same epoch: A's next DATA continues the old stream, which the new node never
    // saw opened. Its HELLO (our node id) makes A open a new stream instead of resending the
    // middle of the old one until the message fails.
    let mut sim = Sim::new(7);
    let a = sim.add_host(stack(1, 7, 1, &|_| {}));
    let b = sim.add_host(stack(2, 7, 1, &|_| {}));
    let mut log = Log::default();
    for k in 0..5 {
        let now = sim.now();
        sim.host::<Stack>(a)
            .msg
            .send_message(now, addr(2), msg("general", k, 30))
            .unwrap();
    }
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        log.drain(sim, &[a, b]);
        log.outcomes(a) == 5
    }));
    sim.replace_host(b, stack(2, 8, 1, &|c| c.node_id = 5555));
    let now = sim.now();
    sim.host::<Stack>(a)
        .msg
        .send_message(now, addr(2), msg("general", 5, 30))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        log.drain(sim, &[a, b]);
        log.outcomes(a) == 6
    }));
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert_eq!(log.delivered[&a].len(), 6);
    assert_eq!(
        log.got(b, 1, "general").len(),
        6,
        "5 to the old node, 1 to the new"
    );
}
