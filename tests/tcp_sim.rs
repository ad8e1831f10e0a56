//! End-to-end tests of our TCP against itself in the deterministic simulator.

mod tcp_common;

use tcp_common::*;
use tunstack::tcp::{TcpConfig, TcpState};
use tunstack::time::Duration;

#[test]
fn test_small_transfer_clean_link() {
    let (mut sim, a, b) = pair(1, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let out = transfer(
        &mut sim,
        a,
        b,
        data(1, 100_000),
        data(2, 50_000),
        Duration::from_secs(30),
    );
    eprintln!("elapsed {:?}", out.elapsed);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(tcp(&mut sim, a).connection_count(), 0);
    assert_eq!(tcp(&mut sim, b).connection_count(), 0);
    let _ = TcpState::Closed;
}

fn lossy(seed: u64, spec: &str, n: usize, limit_s: u64) -> f64 {
    let (mut sim, a, b) = pair(seed, spec, TcpConfig::default(), TcpConfig::default());
    let out = transfer(
        &mut sim,
        a,
        b,
        data(seed, n),
        data(seed + 1, n / 4),
        Duration::from_secs(limit_s),
    );
    let g = goodput_mbit(n, out.elapsed);
    eprintln!(
        "{spec}: {n} bytes in {:?}, {g:.1} Mbit/s, a: {:?}",
        out.elapsed,
        tcp(&mut sim, a).counters()
    );
    g
}

#[test]
fn test_loss_1pct() {
    lossy(3, "loss=1%,delay=10ms,rate=50mbit", 2_000_000, 120);
}

#[test]
fn test_loss_5pct_reorder_dup_corrupt() {
    lossy(
        4,
        "loss=5%,reorder=5%:10ms,dup=1%,corrupt=0.5%,delay=10ms~2ms,rate=50mbit",
        1_000_000,
        300,
    );
}

#[test]
fn test_loss_20pct() {
    lossy(5, "loss=20%,delay=10ms,rate=50mbit", 200_000, 600);
}

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use tunstack::impair::ImpairSpec;
use tunstack::rand::Rng;
use tunstack::sim::{for_each_seed, Host, Sim};
use tunstack::tcp::seq::SeqNumber;
use tunstack::tcp::wire::{Flags, TcpHeader, TcpOptions};
use tunstack::tcp::TcpError;
use tunstack::time::Instant;
use tunstack::wire::ipv4::Ipv4Repr;

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);

/// A host that sends whatever packets the test queues (with any source address).
#[derive(Default)]
struct Injector {
    out: Vec<Vec<u8>>,
}

impl Host for Injector {
    fn address(&self) -> Ipv4Addr {
        X
    }
    fn receive(&mut self, _now: Instant, _packet: &[u8]) {}
    fn poll(&mut self, _now: Instant) {}
    fn transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop()
    }
    fn poll_at(&self) -> Option<Instant> {
        None
    }
}

fn segment(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32, flags: Flags) -> Vec<u8> {
    let h = TcpHeader {
        src_port: src.port(),
        dst_port: dst.port(),
        seq: SeqNumber(seq),
        ack: SeqNumber(ack),
        flags,
        window: 1000,
        urgent: 0,
        options: TcpOptions {
            mss: flags.syn().then_some(1460),
            ..TcpOptions::default()
        },
    };
    let len = h.header_len();
    let ip = Ipv4Repr::new(*src.ip(), *dst.ip(), 6, len);
    let mut buf = vec![0u8; 20 + len];
    ip.emit(&mut buf);
    h.emit(*src.ip(), *dst.ip(), &mut buf[20..], |_| {});
    buf
}

fn wait_established(
    sim: &mut Sim,
    a: tunstack::sim::HostId,
    b: tunstack::sim::HostId,
) -> (tunstack::tcp::SocketHandle, tunstack::tcp::SocketHandle) {
    let l = tcp(sim, b).listen(80).unwrap();
    let now = sim.now();
    let ca = tcp(sim, a).connect(now, SocketAddrV4::new(B, 80)).unwrap();
    let mut cb = None;
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        cb = cb.or_else(|| tcp(sim, b).accept(l));
        cb.is_some() && tcp(sim, a).state(ca) == Some(TcpState::Established)
    }));
    (ca, cb.unwrap())
}

#[test]
fn test_ten_megabytes_both_ways() {
    for (seed, spec) in [
        (10, "delay=5ms,rate=200mbit"),
        (11, "loss=1%,delay=5ms,rate=100mbit"),
    ] {
        let (mut sim, a, b) = pair(seed, spec, TcpConfig::default(), TcpConfig::default());
        let n = 10_000_000;
        let out = transfer(
            &mut sim,
            a,
            b,
            data(seed, n),
            data(seed + 1, n),
            Duration::from_secs(600),
        );
        eprintln!(
            "{spec}: 2 x 10 MB in {:?} ({:.1} Mbit/s each way)",
            out.elapsed,
            goodput_mbit(n, out.elapsed)
        );
    }
}

#[test]
fn test_goodput_table() {
    for loss in [0, 1, 5, 20] {
        let spec = format!("loss={loss}%,delay=10ms,rate=50mbit");
        let n = if loss >= 20 { 300_000 } else { 3_000_000 };
        let (mut sim, a, b) = pair(20 + loss, &spec, TcpConfig::default(), TcpConfig::default());
        let out = transfer(
            &mut sim,
            a,
            b,
            data(loss, n),
            Vec::new(),
            Duration::from_secs(1200),
        );
        eprintln!(
            "goodput {spec}: {:.2} Mbit/s ({n} bytes in {:?})",
            goodput_mbit(n, out.elapsed),
            out.elapsed
        );
    }
}

#[test]
fn test_newreno_without_sack_over_loss() {
    let cfg = TcpConfig {
        sack: false,
        congestion: tunstack::tcp::Congestion::NewReno,
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(
        30,
        "loss=3%,reorder=2%:5ms,delay=10ms,rate=50mbit",
        cfg.clone(),
        cfg,
    );
    transfer(
        &mut sim,
        a,
        b,
        data(30, 1_000_000),
        data(31, 100_000),
        Duration::from_secs(600),
    );
    assert!(tcp(&mut sim, a).counters().fast_retransmits > 0);
}

#[test]
fn test_sequence_numbers_wrap_mid_transfer() {
    let cfg = TcpConfig {
        fixed_isn: Some(u32::MAX - 100_000),
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(31, "loss=2%,reorder=2%:5ms,delay=5ms", cfg.clone(), cfg);
    transfer(
        &mut sim,
        a,
        b,
        data(32, 1_000_000),
        data(33, 500_000),
        Duration::from_secs(600),
    );
}

#[test]
fn test_zero_window_receiver_resumes() {
    let (mut sim, a, b) = pair(
        40,
        "delay=5ms,rate=50mbit",
        TcpConfig::default(),
        TcpConfig::default(),
    );
    let start = sim.now();
    let pause_until = start + Duration::from_secs(3);
    transfer_with(
        &mut sim,
        a,
        b,
        data(40, 2_000_000),
        Vec::new(),
        Duration::from_secs(120),
        |now, got| got > 100_000 && now < pause_until,
    );
    assert!(
        tcp(&mut sim, a).counters().window_probes > 0,
        "no zero-window probes"
    );
}

#[test]
fn test_seed_sweep_random_impairment() {
    for_each_seed(0..300, |seed| {
        let mut r = Rng::new(seed);
        let spec = format!(
            "loss={}%,reorder={}%:{}ms,dup={}%,corrupt={}%,delay={}ms~{}ms",
            r.below(21),
            r.below(10),
            1 + r.below(20),
            r.below(3),
            r.below(2),
            1 + r.below(30),
            r.below(2)
        );
        let cfg = TcpConfig {
            congestion: if seed % 2 == 0 {
                tunstack::tcp::Congestion::Cubic
            } else {
                tunstack::tcp::Congestion::NewReno
            },
            sack: seed % 3 != 0,
            timestamps: seed % 5 != 0,
            ..TcpConfig::default()
        };
        let (mut sim, a, b) = pair(seed, &spec, cfg.clone(), cfg);
        transfer(
            &mut sim,
            a,
            b,
            data(seed, 30_000),
            data(seed + 1, 10_000),
            Duration::from_secs(900),
        );
    });
}

#[test]
fn test_close_active_passive_time_wait_expiry() {
    let (mut sim, a, b) = pair(50, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let (ca, cb) = wait_established(&mut sim, a, b);
    tcp(&mut sim, a).shutdown_write(ca).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::FinWait2));
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::CloseWait));
    let mut buf = [0u8; 10];
    assert_eq!(tcp(&mut sim, b).recv(cb, &mut buf), Ok(0));
    assert!(tcp(&mut sim, b).recv_eof(cb));
    // Half-close: B can still send, A still reads.
    assert_eq!(tcp(&mut sim, b).send(cb, b"late data"), Ok(9));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(tcp(&mut sim, a).recv(ca, &mut buf), Ok(9));
    assert_eq!(&buf[..9], b"late data");
    tcp(&mut sim, b).close(cb);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::TimeWait));
    assert_eq!(tcp(&mut sim, b).connection_count(), 0, "LAST-ACK done");
    assert_eq!(tcp(&mut sim, a).recv(ca, &mut buf), Ok(0));
    sim.run_for(Duration::from_millis(2100));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::Closed));
    tcp(&mut sim, a).close(ca);
    sim.run_for(Duration::from_millis(1));
    assert_eq!(tcp(&mut sim, a).connection_count(), 0);
    assert_eq!(tcp(&mut sim, a).state(ca), None);
}

#[test]
fn test_close_simultaneous() {
    let (mut sim, a, b) = pair(51, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let (ca, cb) = wait_established(&mut sim, a, b);
    tcp(&mut sim, a).shutdown_write(ca).unwrap();
    tcp(&mut sim, b).shutdown_write(cb).unwrap();
    sim.run_for(Duration::from_millis(3));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::FinWait1));
    sim.run_for(Duration::from_millis(4));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::Closing));
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::Closing));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::TimeWait));
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::TimeWait));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::Closed));
}

#[test]
fn test_simultaneous_open() {
    let mk = |p| TcpConfig {
        ephemeral_ports: (p, p),
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(52, "delay=5ms", mk(6000), mk(7000));
    let now = sim.now();
    let ca = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 7000))
        .unwrap();
    let cb = tcp(&mut sim, b)
        .connect(now, SocketAddrV4::new(A, 6000))
        .unwrap();
    sim.run_for(Duration::from_millis(50));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::Established));
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::Established));
    tcp(&mut sim, a).send(ca, b"hello").unwrap();
    sim.run_for(Duration::from_millis(100));
    let mut buf = [0u8; 8];
    assert_eq!(tcp(&mut sim, b).recv(cb, &mut buf), Ok(5));
}

#[test]
fn test_abort_resets_peer() {
    let (mut sim, a, b) = pair(53, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let (ca, cb) = wait_established(&mut sim, a, b);
    tcp(&mut sim, a).abort(ca);
    sim.run_for(Duration::from_millis(50));
    let mut buf = [0u8; 8];
    assert_eq!(
        tcp(&mut sim, b).recv(cb, &mut buf),
        Err(TcpError::ConnectionReset)
    );
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::Closed));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::Closed));
}

#[test]
fn test_close_with_unread_data_sends_rst() {
    let (mut sim, a, b) = pair(54, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let (ca, cb) = wait_established(&mut sim, a, b);
    tcp(&mut sim, a).send(ca, b"unread").unwrap();
    sim.run_for(Duration::from_millis(50));
    tcp(&mut sim, b).close(cb);
    sim.run_for(Duration::from_millis(50));
    assert_eq!(tcp(&mut sim, a).error(ca), Some(TcpError::ConnectionReset));
}

#[test]
fn test_connect_to_closed_port_is_refused() {
    let (mut sim, a, _b) = pair(55, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let now = sim.now();
    let c = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 9))
        .unwrap();
    sim.run_for(Duration::from_millis(50));
    assert_eq!(tcp(&mut sim, a).state(c), Some(TcpState::Closed));
    assert_eq!(tcp(&mut sim, a).error(c), Some(TcpError::ConnectionRefused));
    let mut ready = Vec::new();
    tcp(&mut sim, a).take_ready(&mut ready);
    assert!(ready.contains(&c));
}

#[test]
fn test_challenge_ack_for_in_window_rst() {
    let mut sim = Sim::new(60);
    let a = sim.add_host(stack(A, 60, TcpConfig::default()));
    let b = sim.add_host(stack(B, 61, TcpConfig::default()));
    let x = sim.add_host(Injector::default());
    sim.set_path(a, b, ImpairSpec::parse("delay=5ms").unwrap());
    let last: Rc<RefCell<Option<(SocketAddrV4, SocketAddrV4, u32)>>> = Rc::default();
    let l2 = last.clone();
    sim.set_tap(Box::new(move |_, _, _, p| {
        if p[9] == 6 && p[12..16] == A.octets() {
            let src = SocketAddrV4::new(A, u16::from_be_bytes([p[20], p[21]]));
            let dst = SocketAddrV4::new(B, u16::from_be_bytes([p[22], p[23]]));
            *l2.borrow_mut() = Some((src, dst, u32::from_be_bytes([p[24], p[25], p[26], p[27]])));
        }
    }));
    let (ca, cb) = wait_established(&mut sim, a, b);
    sim.run_for(Duration::from_millis(100));
    let (src, dst, seq) = last.borrow().unwrap();
    // In the window but not at RCV.NXT: a blind attacker's guess.
    let rst = segment(src, dst, seq.wrapping_add(1000), 0, Flags::RST);
    sim.host::<Injector>(x).out.push(rst);
    sim.run_for(Duration::from_millis(50));
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::Established));
    assert_eq!(tcp(&mut sim, b).counters().challenge_acks, 1);
    // A SYN on the established tuple gets a challenge ACK too (RFC 5961 section 4).
    sim.host::<Injector>(x)
        .out
        .push(segment(src, dst, seq.wrapping_add(5), 0, Flags::SYN));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(tcp(&mut sim, b).counters().challenge_acks, 2);
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::Established));
    // The exact sequence number resets.
    sim.host::<Injector>(x)
        .out
        .push(segment(src, dst, seq, 0, Flags::RST));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(tcp(&mut sim, b).error(cb), Some(TcpError::ConnectionReset));
    let _ = ca;
}

#[test]
fn test_syn_flood_backlog_then_cookies() {
    let mut sim = Sim::new(70);
    let a = sim.add_host(stack(A, 70, TcpConfig::default()));
    let b = sim.add_host(stack(B, 71, TcpConfig::default()));
    let x = sim.add_host(Injector::default());
    sim.set_path(a, b, ImpairSpec::parse("delay=5ms").unwrap());
    let l = tcp(&mut sim, b).listen(80).unwrap();
    // 1000 SYNs from spoofed sources that never answer.
    for i in 0..1000u32 {
        let src = SocketAddrV4::new(
            Ipv4Addr::new(172, 16, (i >> 8) as u8, i as u8),
            1024 + i as u16,
        );
        let syn = segment(src, SocketAddrV4::new(B, 80), i * 7919, 0, Flags::SYN);
        sim.host::<Injector>(x).out.push(syn);
    }
    sim.run_for(Duration::from_millis(20));
    let backlog = tcp(&mut sim, b).config().syn_backlog;
    assert_eq!(tcp(&mut sim, b).connection_count(), backlog);
    assert_eq!(
        tcp(&mut sim, b).counters().syn_cookies_sent,
        1000 - backlog as u64
    );
    // A real client still gets in, through a cookie.
    let now = sim.now();
    let c = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 80))
        .unwrap();
    let mut s = None;
    assert!(sim.run_until(Duration::from_secs(5), |sim| {
        s = s.or_else(|| tcp(sim, b).accept(l));
        s.is_some()
    }));
    let s = s.unwrap();
    assert_eq!(tcp(&mut sim, b).counters().syn_cookies_validated, 1);
    let big = data(70, 300_000);
    let mut sent = 0;
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(30), |sim| {
        if sent < big.len() {
            sent += tcp(sim, a).send(c, &big[sent..]).unwrap_or(0);
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp(sim, b).recv(s, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == big.len()
    }));
    assert!(got == big);
    // Window scaling and SACK survived the cookie (carried in the timestamp).
    let info = tcp(&mut sim, b).socket_info(s).unwrap();
    assert!(
        info.sack && info.timestamps && info.snd_wscale > 0,
        "{info:?}"
    );
}

#[test]
fn test_timeline_abort_is_recorded_and_reported_both_sides() {
    let cfg = TcpConfig {
        reset_reports: true,
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(56, "delay=5ms", cfg.clone(), cfg);
    let (ca, cb) = wait_established(&mut sim, a, b);
    tcp(&mut sim, a).abort(ca);
    sim.run_for(Duration::from_millis(50));
    use tunstack::tcp::events::{EventKind, RstReason};
    let ev_a = tcp(&mut sim, a).socket_events(ca).unwrap();
    let kinds: Vec<EventKind> = ev_a.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::State {
        from: TcpState::SynSent,
        to: TcpState::Established
    }));
    assert!(kinds.contains(&EventKind::RstSent {
        reason: RstReason::Abort
    }));
    let ev_b = tcp(&mut sim, b).socket_events(cb).unwrap();
    assert!(ev_b.iter().any(|e| e.kind == EventKind::RstReceived));
    assert!(ev_b.iter().any(|e| matches!(
        e.kind,
        EventKind::Error {
            error: TcpError::ConnectionReset
        }
    )));
    // Timestamps never go backwards.
    assert!(ev_b.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    let ra = tcp(&mut sim, a).poll_reset().unwrap();
    assert_eq!(ra.reason, RstReason::Abort);
    assert_eq!(ra.remote, SocketAddrV4::new(B, 80));
    assert_eq!(
        tcp(&mut sim, b).poll_reset().unwrap().reason,
        RstReason::Received
    );
    // Once the application lets go, the timeline survives among the closed ones.
    tcp(&mut sim, b).close(cb);
    sim.run_for(Duration::from_millis(10));
    let closed = tcp(&mut sim, b).closed_timelines();
    let last = closed.last().unwrap();
    assert_eq!(
        last.remote,
        tcp(&mut sim, a).local_addr(ca).unwrap().to_string()
    );
    assert_eq!(last.error, Some(TcpError::ConnectionReset));
    assert!(last.events.iter().any(|e| e.kind == EventKind::RstReceived));
}

#[test]
fn test_timeline_records_rto_with_snapshot_and_reason() {
    let (mut sim, a, b) = pair(57, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let (ca, _cb) = wait_established(&mut sim, a, b);
    sim.set_path(a, b, ImpairSpec::parse("loss=100%").unwrap());
    tcp(&mut sim, a).send(ca, b"lost").unwrap();
    sim.run_for(Duration::from_secs(2));
    use tunstack::tcp::events::{EventKind, RetransmitReason};
    let ev = tcp(&mut sim, a).socket_events(ca).unwrap();
    assert!(ev.iter().any(|e| matches!(
        e.kind,
        EventKind::Timeout { backoff: 1, rto_ms, .. } if rto_ms >= 200
    )));
    assert!(ev.iter().any(|e| matches!(
        e.kind,
        EventKind::Retransmit {
            reason: RetransmitReason::Rto,
            len: 4,
            ..
        }
    )));
}

#[test]
fn test_closed_port_reset_is_reported_only_when_enabled() {
    let on = TcpConfig {
        reset_reports: true,
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(58, "delay=5ms", TcpConfig::default(), on);
    let now = sim.now();
    tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 9))
        .unwrap();
    sim.run_for(Duration::from_millis(50));
    let r = tcp(&mut sim, b).poll_reset().unwrap();
    assert_eq!(r.reason, tunstack::tcp::events::RstReason::ClosedPort);
    assert_eq!(r.local, SocketAddrV4::new(B, 9));
    assert!(tcp(&mut sim, b).poll_reset().is_none());
    // A's RST-received report is not queued: A did not ask for reports.
    assert!(tcp(&mut sim, a).poll_reset().is_none());
}
