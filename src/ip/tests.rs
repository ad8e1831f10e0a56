use super::*;
use crate::impair::ImpairSpec;
use crate::sim::{for_each_seed, Sim};
use crate::stack::{Stack, StackConfig};
use crate::wire::checksum;

const US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn layer() -> (IpLayer, Tx) {
    let mut rng = Rng::new(1);
    let cfg = IpConfig::new(US, 24, 1500);
    (IpLayer::new(cfg, &mut rng), Tx::new(US, 1500, 1))
}

fn packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr::new(src, dst, protocol, payload.len());
    let mut buf = vec![0u8; ipv4::HEADER_LEN + payload.len()];
    repr.emit(&mut buf);
    buf[ipv4::HEADER_LEN..].copy_from_slice(payload);
    buf
}

fn echo_request(ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let m = IcmpRepr::EchoRequest { ident, seq, data };
    let mut b = vec![0u8; m.buffer_len()];
    m.emit(&mut b);
    b
}

#[test]
fn test_echo_request_gets_identical_reply() {
    let (mut ip, mut tx) = layer();
    let data: Vec<u8> = (0..100u8).collect();
    let req = packet(PEER, US, 1, &echo_request(0x4242, 7, &data));
    assert!(matches!(
        ip.receive(Instant::ZERO, &req, &mut tx),
        Received::Consumed
    ));
    let out = tx.pop().expect("a reply");
    let (h, payload) = Ipv4Repr::parse(&out).unwrap();
    assert_eq!((h.src, h.dst, h.protocol), (US, PEER, 1));
    assert_eq!(
        IcmpRepr::parse(payload).unwrap(),
        IcmpRepr::EchoReply {
            ident: 0x4242,
            seq: 7,
            data: &data
        }
    );
    assert_eq!(ip.counters().icmp.echo_replies_out, 1);
}

#[test]
fn test_each_malformed_class_is_dropped_and_counted() {
    let (mut ip, mut tx) = layer();
    let good = packet(PEER, US, 1, &echo_request(1, 1, b"x"));
    let mut cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::TooShort),
        (good[..12].to_vec(), DropReason::TooShort),
        (
            packet(PEER, Ipv4Addr::new(198, 18, 0, 9), 1, b"x"),
            DropReason::NotForUs,
        ),
        (
            packet(Ipv4Addr::BROADCAST, US, 1, b"x"),
            DropReason::BadSource,
        ),
    ];
    let mut p = good.clone();
    p[0] = 0x65;
    cases.push((p, DropReason::BadVersion));
    let mut p = good.clone();
    p[0] = 0x43;
    cases.push((p, DropReason::BadIhl));
    let mut p = good.clone();
    p[3] = 200;
    cases.push((p, DropReason::BadTotalLength));
    let mut p = good.clone();
    p[10] ^= 0x55;
    cases.push((p, DropReason::BadChecksum));
    let mut p = good.clone();
    p[8] = 0;
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    cases.push((p, DropReason::TtlExpired));
    let mut icmp = echo_request(1, 1, b"x");
    icmp[3] ^= 1;
    cases.push((packet(PEER, US, 1, &icmp), DropReason::IcmpBadChecksum));
    cases.push((packet(PEER, US, 1, &[8, 0, 0]), DropReason::IcmpTooShort));
    for (i, (pkt, reason)) in cases.iter().enumerate() {
        let before = ip.counters().drops.get(*reason);
        match ip.receive(Instant::ZERO, pkt, &mut tx) {
            Received::Dropped(r) => assert_eq!(r, *reason, "case {i}"),
            other => panic!("case {i}: expected drop {reason:?}, got {other:?}"),
        }
        assert_eq!(ip.counters().drops.get(*reason), before + 1, "case {i}");
    }
    assert!(tx.is_empty(), "nothing is answered for malformed input");
}

fn fragments(payload: &[u8], ident: u16, per: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = payload.chunks(per).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut r = Ipv4Repr::new(PEER, US, 1, c.len());
            r.ident = ident;
            r.frag_offset = i * per;
            r.more_fragments = i + 1 < chunks.len();
            let mut b = vec![0u8; 20 + c.len()];
            r.emit(&mut b);
            b[20..].copy_from_slice(c);
            b
        })
        .collect()
}

#[test]
fn test_fragmented_echo_is_reassembled_and_answered_in_fragments() {
    let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let icmp = echo_request(9, 1, &data);
    for order in [[0usize, 1, 2], [2, 0, 1], [1, 2, 0]] {
        let (mut ip, mut tx) = layer();
        let frags = fragments(&icmp, 77, 1480);
        assert_eq!(frags.len(), 3);
        for &i in &order {
            ip.receive(Instant::ZERO, &frags[i], &mut tx);
        }
        // A duplicate fragment after completion starts a new partial datagram, harmlessly.
        assert_eq!(ip.counters().reassembled, 1);
        // The reply is 4028 bytes of IP payload: it leaves as fragments no larger than the MTU.
        let mut out = Vec::new();
        while let Some(p) = tx.pop() {
            assert!(p.len() <= 1500);
            out.push(p);
        }
        assert_eq!(out.len(), 3);
        let mut rng = Rng::new(2);
        let mut back = IpLayer::new(IpConfig::new(PEER, 24, 1500), &mut rng);
        let mut btx = Tx::new(PEER, 1500, 1);
        let mut reply = None;
        for p in &out {
            if let Received::Consumed = back.receive(Instant::ZERO, p, &mut btx) {
                reply = Some(());
            }
        }
        assert!(reply.is_some());
        assert_eq!(back.counters().reassembled, 1);
        assert_eq!(back.counters().icmp.echo_replies_in, 1);
    }
}

#[test]
fn test_overlapping_and_duplicate_fragments() {
    let (mut ip, mut tx) = layer();
    let data = vec![0xabu8; 3000];
    let icmp = echo_request(1, 1, &data);
    let frags = fragments(&icmp, 5, 1000);
    assert_eq!(frags.len(), 4);
    // An overlapping fragment covering bytes 504..1504 with the same data.
    let mut r = Ipv4Repr::new(PEER, US, 1, 1000);
    r.ident = 5;
    r.frag_offset = 504;
    r.more_fragments = true;
    let mut overlap = vec![0u8; 1020];
    r.emit(&mut overlap);
    overlap[20..].copy_from_slice(&icmp[504..1504]);
    for i in [0usize, 0, 3, 2] {
        ip.receive(Instant::ZERO, &frags[i], &mut tx);
    }
    ip.receive(Instant::ZERO, &overlap, &mut tx);
    assert_eq!(ip.counters().reassembled, 0);
    ip.receive(Instant::ZERO, &frags[1], &mut tx);
    assert_eq!(ip.counters().reassembled, 1);
    assert_eq!(ip.counters().icmp.echo_replies_out, 1);
}

#[test]
fn test_reassembly_times_out_and_is_bounded() {
    let (mut ip, mut tx) = layer();
    let icmp = echo_request(1, 1, &[0u8; 3000]);
    let frags = fragments(&icmp, 5, 1000);
    ip.receive(Instant::ZERO, &frags[0], &mut tx);
    assert!(ip.reassembly_bytes() > 0);
    assert_eq!(ip.poll_at(), Some(Instant::from_secs(30)));
    ip.poll(Instant::from_secs(30));
    assert_eq!(ip.reassembly_bytes(), 0);
    assert_eq!(ip.counters().drops.get(DropReason::ReassemblyTimeout), 1);

    // Many never-completed datagrams: memory stays under the bound, the oldest are evicted.
    for ident in 0..2000u16 {
        let f = fragments(&icmp, ident, 1000);
        ip.receive(Instant::from_secs(31), &f[0], &mut tx);
        assert!(ip.reassembly_bytes() <= ReassemblyConfig::default().max_bytes);
    }
    assert!(ip.counters().drops.get(DropReason::ReassemblyLimit) > 0);
}

#[test]
fn test_bad_fragments_are_dropped() {
    let (mut ip, mut tx) = layer();
    // A non-final fragment whose length is not a multiple of 8.
    let mut r = Ipv4Repr::new(PEER, US, 1, 13);
    r.more_fragments = true;
    let mut b = vec![0u8; 33];
    r.emit(&mut b);
    assert!(matches!(
        ip.receive(Instant::ZERO, &b, &mut tx),
        Received::Dropped(DropReason::BadFragment)
    ));
    // A fragment that reaches past 64 KiB.
    let mut r = Ipv4Repr::new(PEER, US, 1, 100);
    r.frag_offset = 65_528;
    let mut b = vec![0u8; 120];
    r.emit(&mut b);
    assert!(matches!(
        ip.receive(Instant::ZERO, &b, &mut tx),
        Received::Dropped(DropReason::BadFragment)
    ));
}

#[test]
fn test_unknown_protocol_gets_protocol_unreachable() {
    let mut stack = Stack::new(StackConfig::new(US, 24, 1500, 1));
    let pkt = packet(PEER, US, 200, b"hello, anyone?");
    stack.handle_packet(Instant::ZERO, &pkt);
    let out = stack.transmit().expect("an ICMP error");
    let (h, payload) = Ipv4Repr::parse(&out).unwrap();
    assert_eq!(h.dst, PEER);
    match IcmpRepr::parse(payload).unwrap() {
        IcmpRepr::DstUnreachable { code, original, .. } => {
            assert_eq!(code, icmp::unreachable::PROTOCOL);
            assert_eq!(&original[..20], &pkt[..20]);
            assert_eq!(&original[20..], &pkt[20..28]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stack.ip.counters().drops.get(DropReason::UnknownProtocol),
        1
    );
}

#[test]
fn test_icmp_errors_are_rate_limited() {
    let mut stack = Stack::new(StackConfig::new(US, 24, 1500, 1));
    let pkt = packet(PEER, US, 200, b"x");
    for _ in 0..1000 {
        stack.handle_packet(Instant::ZERO, &pkt);
    }
    assert_eq!(stack.tx.len(), 100);
    assert_eq!(stack.ip.counters().icmp.errors_rate_limited, 900);
}

#[test]
fn test_icmp_error_quote_is_parsed_for_transport() {
    let (mut ip, mut tx) = layer();
    let ours = packet(US, PEER, 6, &[0x12, 0x34, 0x00, 0x50, 1, 2, 3, 4, 9, 9]);
    let err = IcmpRepr::DstUnreachable {
        code: icmp::unreachable::PORT,
        next_hop_mtu: 0,
        original: &ours[..28],
    };
    let mut b = vec![0u8; err.buffer_len()];
    err.emit(&mut b);
    match ip.receive(Instant::ZERO, &packet(PEER, US, 1, &b), &mut tx) {
        Received::IcmpError(e) => {
            assert_eq!(e.original.protocol, 6);
            assert_eq!(e.original.dst, PEER);
            assert_eq!(&e.original_payload[..4], &[0x12, 0x34, 0x00, 0x50]);
            assert_eq!(
                e.kind,
                IcmpErrorKind::Unreachable {
                    code: 3,
                    next_hop_mtu: 0
                }
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn test_tx_never_exceeds_mtu() {
    let mut tx = Tx::new(US, 576, 1);
    tx.send(PEER, 17, 5000, |b| b.fill(1)).unwrap();
    let mut total = 0;
    while let Some(p) = tx.pop() {
        assert!(p.len() <= 576);
        let (h, payload) = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(h.frag_offset, total);
        total += payload.len();
    }
    assert_eq!(total, 5000);
    let opts = SendOptions {
        dont_fragment: true,
        ..SendOptions::default()
    };
    assert_eq!(
        tx.send_with(PEER, 6, 1000, opts, |_| {}),
        Err(TxError::TooBig)
    );
    assert_eq!(tx.send(PEER, 6, 70_000, |_| {}), Err(TxError::TooBig));
}

#[test]
fn test_ping_between_stacks_over_lossy_sim() {
    for_each_seed(1..=20, |seed| {
        let mut sim = Sim::new(seed);
        let a = sim.add_host(Stack::new(StackConfig::new(PEER, 24, 1500, seed)));
        let b = sim.add_host(Stack::new(StackConfig::new(US, 24, 1500, seed + 1000)));
        sim.set_path(a, b, ImpairSpec::parse("delay=5ms,loss=10%").unwrap());
        let mut sent = 0;
        let mut replies = 0;
        let mut timeouts = 0;
        for _ in 0..50 {
            let now = sim.now();
            let s = sim.host::<Stack>(a);
            s.ip.ping(now, US, 56, &mut s.tx).unwrap();
            sent += 1;
            sim.run_for(Duration::from_millis(100));
        }
        sim.run_for(Duration::from_secs(6));
        let s = sim.host::<Stack>(a);
        while let Some(ev) = s.ip.poll_ping_event() {
            match ev {
                PingEvent::Reply(r) => {
                    assert_eq!(r.rtt, Duration::from_millis(10));
                    assert_eq!(r.bytes, 56);
                    replies += 1;
                }
                PingEvent::Timeout { .. } => timeouts += 1,
            }
        }
        assert_eq!(replies + timeouts, sent);
        // 10% loss each way: about 81% come back.
        assert!(
            (30..=50).contains(&replies),
            "seed {seed}: {replies} replies"
        );
    });
}

/// An ICMP message of any type with a correct checksum.
fn icmp_message(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(rest);
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP error (destination unreachable or time exceeded) quoting a TCP segment we sent.
fn icmp_error(kind: u8, code: u8) -> Vec<u8> {
    let quoted = packet(US, PEER, 6, &[0x12, 0x34, 0, 80, 1, 2, 3, 4]);
    let mut rest = vec![0u8; 4];
    rest.extend_from_slice(&quoted);
    let mut m = icmp_message(kind, &rest);
    m[1] = code;
    m[2..4].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Drop reasons decided before reassembly: each counts one packet that went no further.
const ENTRY_DROPS: [DropReason; 8] = [
    DropReason::TooShort,
    DropReason::BadVersion,
    DropReason::BadIhl,
    DropReason::BadTotalLength,
    DropReason::BadChecksum,
    DropReason::NotForUs,
    DropReason::TtlExpired,
    DropReason::BadSource,
];

/// 100,000 random and mutated packets: no panic, every packet accounted for by the layer's own
/// counters, memory bounded.
#[test]
fn test_random_and_mutated_packets_never_panic() {
    let mut rng = Rng::new(0x7u64);
    let mut stack = Stack::new(StackConfig::new(US, 24, 1500, 3));
    let mut seeds: Vec<Vec<u8>> = vec![
        packet(PEER, US, 1, &echo_request(1, 2, &[7; 64])),
        packet(PEER, US, 6, &[0; 20]),
        packet(PEER, US, 170, &[1; 40]),
        packet(PEER, US, 200, &[9; 30]),
        packet(PEER, US, 1, &icmp_message(13, &[5; 16])),
        packet(PEER, US, 1, &icmp_error(3, 3)),
        packet(PEER, US, 1, &icmp_error(11, 0)),
    ];
    // Every fragment of one datagram, so that some mutants still reassemble.
    seeds.extend(fragments(&echo_request(1, 1, &[3; 3000]), 9, 1000));
    // An ICMP error whose quote is malformed counts both `unreachable_in` (or
    // `time_exceeded_in`) and `icmp_too_short`; such packets are told apart here, per packet,
    // from the counters' increments.
    let mut quote_drops = 0u64;
    for i in 0..100_000u64 {
        let pkt = if i % 4 == 0 {
            let len = rng.below(120) as usize;
            let mut v = vec![0u8; len];
            rng.fill(&mut v);
            if len > 0 && rng.chance(0.5) {
                v[0] = 0x45;
            }
            v
        } else {
            let mut v = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..=rng.below(4) {
                let j = rng.below(v.len() as u64) as usize;
                v[j] = rng.next_u32() as u8;
            }
            if rng.chance(0.2) {
                v.truncate(rng.below(v.len() as u64 + 1) as usize);
            }
            // Half the mutants get a repaired header checksum so that deeper layers see them.
            if v.len() >= 20 && rng.chance(0.5) {
                let ihl = ((v[0] & 0xf) as usize * 4).clamp(20, v.len().min(60));
                v[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::checksum(&v[..ihl]);
                v[10..12].copy_from_slice(&c.to_be_bytes());
            }
            v
        };
        let now = Instant::from_millis(i);
        let before = stack.ip.counters().clone();
        stack.handle_packet(now, &pkt);
        let after = stack.ip.counters();
        let errors_in = (after.icmp.unreachable_in + after.icmp.time_exceeded_in)
            - (before.icmp.unreachable_in + before.icmp.time_exceeded_in);
        let too_short =
            after.drops.get(DropReason::IcmpTooShort) - before.drops.get(DropReason::IcmpTooShort);
        if errors_in == 1 && too_short == 1 {
            quote_drops += 1;
        }
        stack.poll(now);
        while let Some(p) = stack.transmit() {
            assert!(p.len() <= 1500);
            stack.recycle(p);
        }
        assert!(stack.ip.reassembly_bytes() <= ReassemblyConfig::default().max_bytes);
    }
    let c = stack.ip.counters();
    assert_eq!(c.packets_in, 100_000);
    // Every packet ends in exactly one place: dropped on entry, taken by reassembly, or
    // handled whole. Whole datagrams are the unfragmented packets plus the reassembled ones.
    let entry_drops: u64 = ENTRY_DROPS.iter().map(|r| c.drops.get(*r)).sum();
    let whole = c.packets_in - entry_drops - c.fragments_in + c.reassembled;
    let icmp = &c.icmp;
    let handled = c.delivered
        + c.drops.get(DropReason::IcmpBadChecksum)
        + (c.drops.get(DropReason::IcmpTooShort) - quote_drops)
        + icmp.echo_requests_in
        + icmp.echo_replies_in
        + icmp.unreachable_in
        + icmp.time_exceeded_in
        + icmp.other_in;
    assert_eq!(
        whole, handled,
        "packets unaccounted for: {c:#?}, malformed quotes {quote_drops}"
    );
    // Each echo request was answered, refused for being broadcast, or its reply not queued.
    assert_eq!(
        icmp.echo_requests_in,
        icmp.echo_replies_out + icmp.replies_not_sent + c.drops.get(DropReason::BroadcastEcho)
    );
    // Unknown protocols are a subset of what was delivered to the stack.
    assert!(c.drops.get(DropReason::UnknownProtocol) <= c.delivered);
    // Fragments end in a datagram, a drop, or are still held; never more datagrams than
    // fragments.
    assert!(c.reassembled <= c.fragments_in);
    // The mix reached every branch the sums rely on.
    for r in [
        DropReason::BadChecksum,
        DropReason::TooShort,
        DropReason::BadVersion,
        DropReason::IcmpBadChecksum,
        DropReason::BadFragment,
        DropReason::UnknownProtocol,
    ] {
        assert!(c.drops.get(r) > 0, "{r:?} never happened");
    }
    let reached = [
        c.delivered,
        c.fragments_in,
        c.reassembled,
        icmp.echo_requests_in,
        icmp.other_in,
        icmp.unreachable_in,
        icmp.time_exceeded_in,
    ];
    assert!(reached.iter().all(|&n| n > 0), "{c:#?}");
}
