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
    // The FINs and last ACKs crossed the same lossy link: every close must still complete.
    assert_all_closed(&mut sim, &[a, b], Duration::from_secs(900));
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
        assert_all_closed(&mut sim, &[a, b], Duration::from_secs(900));
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
    assert_all_closed(&mut sim, &[a, b], Duration::from_secs(900));
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
    assert_all_closed(&mut sim, &[a, b], Duration::from_secs(900));
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

/// 5,000 seeds of random impairment, transfer sizes (empty included) and options; each run
/// must deliver byte-exact and then release every connection, whatever the link did to the
/// FINs. Small transfers keep the sweep to a few seconds.
#[test]
fn test_seed_sweep_random_impairment() {
    for_each_seed(0..5_000, |seed| {
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
            congestion: match seed % 3 {
                0 => tunstack::tcp::Congestion::Bbr,
                1 => tunstack::tcp::Congestion::Cubic,
                _ => tunstack::tcp::Congestion::NewReno,
            },
            sack: seed % 3 != 0,
            timestamps: seed % 5 != 0,
            ..TcpConfig::default()
        };
        let (ab, ba) = (r.below(12_000) as usize, r.below(4_000) as usize);
        let (mut sim, a, b) = pair(seed, &spec, cfg.clone(), cfg);
        transfer(
            &mut sim,
            a,
            b,
            data(seed, ab),
            data(seed + 1, ba),
            Duration::from_secs(900),
        );
        assert_all_closed(&mut sim, &[a, b], Duration::from_secs(900));
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

// ----- asymmetric paths -----

/// Each direction impaired differently: a slow lossy data path with a fast reordering ACK path,
/// then a clean data path whose ACKs are lost (cumulative ACKs must cover for them).
#[test]
fn test_asymmetric_paths() {
    let cases = [
        (
            80,
            "delay=40ms,loss=2%,rate=10mbit",
            "delay=2ms~1ms,reorder=5%:3ms,dup=1%",
        ),
        (81, "delay=5ms,rate=50mbit", "delay=60ms,loss=10%"),
    ];
    for (seed, forward, back) in cases {
        let (mut sim, a, b) = pair(
            seed,
            "delay=1ms",
            TcpConfig::default(),
            TcpConfig::default(),
        );
        sim.set_link(a, b, ImpairSpec::parse(forward).unwrap());
        sim.set_link(b, a, ImpairSpec::parse(back).unwrap());
        let n = 1_000_000;
        let out = transfer(
            &mut sim,
            a,
            b,
            data(seed, n),
            data(seed + 1, n / 5),
            Duration::from_secs(600),
        );
        eprintln!(
            "a->b {forward} / b->a {back}: {:.1} Mbit/s, a: {:?}",
            goodput_mbit(n, out.elapsed),
            tcp(&mut sim, a).counters()
        );
        assert_all_closed(&mut sim, &[a, b], Duration::from_secs(900));
    }
}

/// The RTT estimate is the sum of both one-way delays, not twice either.
#[test]
fn test_asymmetric_delay_rtt_is_the_sum() {
    let (mut sim, a, b) = pair(82, "delay=1ms", TcpConfig::default(), TcpConfig::default());
    sim.set_link(a, b, ImpairSpec::parse("delay=70ms").unwrap());
    sim.set_link(b, a, ImpairSpec::parse("delay=10ms").unwrap());
    let (ca, cb) = wait_established(&mut sim, a, b);
    let chunk = data(82, 50_000);
    let mut sent = 0;
    let mut got = 0;
    assert!(sim.run_until(Duration::from_secs(30), |sim| {
        if sent < chunk.len() {
            sent += tcp(sim, a).send(ca, &chunk[sent..]).unwrap_or(0);
        }
        let mut buf = [0u8; 8192];
        while let Ok(n) = tcp(sim, b).recv(cb, &mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        got == chunk.len()
    }));
    sim.run_for(Duration::from_millis(500));
    let srtt_ms = tcp(&mut sim, a).socket_info(ca).unwrap().srtt_us / 1000;
    // 80 ms of path plus at most one delayed-ACK timeout (40 ms).
    assert!((80..=125).contains(&srtt_ms), "srtt {srtt_ms} ms");
}

// ----- closing before the connection is established -----

#[test]
fn test_close_in_syn_sent_releases_and_stops_retrying() {
    let (mut sim, a, b) = pair(83, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    sim.set_link(a, b, ImpairSpec::parse("loss=100%").unwrap());
    let syns = Rc::new(RefCell::new(0u32));
    let s2 = syns.clone();
    sim.set_tap(Box::new(move |_, _, _, p| {
        if p[9] == 6 && p[20 + 13] & 0x02 != 0 {
            *s2.borrow_mut() += 1;
        }
    }));
    let now = sim.now();
    let c = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 80))
        .unwrap();
    sim.run_for(Duration::from_millis(1500));
    assert_eq!(tcp(&mut sim, a).state(c), Some(TcpState::SynSent));
    assert!(*syns.borrow() >= 2, "the SYN was retransmitted");
    tcp(&mut sim, a).close(c);
    sim.run_for(Duration::from_millis(1));
    assert_eq!(tcp(&mut sim, a).connection_count(), 0);
    assert_eq!(tcp(&mut sim, a).state(c), None);
    let before = *syns.borrow();
    sim.run_for(Duration::from_secs(120));
    assert_eq!(*syns.borrow(), before, "SYNs after close");
}

/// Simultaneous open passes through SYN-RECEIVED with a handle in the application's hands;
/// closing there must still end in an orderly FIN exchange (RFC 9293 section 3.10.4).
#[test]
fn test_close_in_syn_received_sends_fin_once_established() {
    let mk = |p| TcpConfig {
        ephemeral_ports: (p, p),
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(84, "delay=5ms", mk(6000), mk(7000));
    let now = sim.now();
    let ca = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 7000))
        .unwrap();
    let cb = tcp(&mut sim, b)
        .connect(now, SocketAddrV4::new(A, 6000))
        .unwrap();
    sim.run_for(Duration::from_millis(7));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::SynReceived));
    tcp(&mut sim, a).close(ca);
    let mut buf = [0u8; 8];
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        tcp(sim, b).recv(cb, &mut buf) == Ok(0)
    }));
    tcp(&mut sim, b).close(cb);
    assert_all_closed(&mut sim, &[a, b], Duration::from_secs(30));
}

/// A listener's half-open connection (SYN-ACK lost) goes away with the listener, and the
/// client's next SYN is refused.
#[test]
fn test_unlisten_releases_syn_received() {
    let (mut sim, a, b) = pair(85, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    sim.set_link(b, a, ImpairSpec::parse("loss=100%").unwrap());
    let l = tcp(&mut sim, b).listen(80).unwrap();
    let now = sim.now();
    let c = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 80))
        .unwrap();
    sim.run_for(Duration::from_millis(20));
    assert_eq!(tcp(&mut sim, b).connection_count(), 1);
    assert!(tcp(&mut sim, b)
        .sockets()
        .iter()
        .any(|s| s.state == TcpState::SynReceived));
    tcp(&mut sim, b).unlisten(l);
    sim.run_for(Duration::from_millis(1));
    assert_eq!(tcp(&mut sim, b).connection_count(), 0);
    sim.set_link(b, a, ImpairSpec::parse("delay=5ms").unwrap());
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        tcp(sim, a).error(c) == Some(TcpError::ConnectionRefused)
    }));
}

// ----- keep-alive -----

#[test]
fn test_keepalive_detects_dead_peer() {
    let ka = TcpConfig {
        keepalive: Some(Duration::from_secs(10)),
        keepalive_interval: Duration::from_secs(1),
        keepalive_probes: 3,
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(86, "delay=5ms", ka, TcpConfig::default());
    let (ca, cb) = wait_established(&mut sim, a, b);
    // A live peer answers the probes: a minute of silence changes nothing.
    let out0 = tcp(&mut sim, a).counters().segments_out;
    sim.run_for(Duration::from_secs(60));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::Established));
    let probes = tcp(&mut sim, a).counters().segments_out - out0;
    assert!((5..=7).contains(&probes), "{probes} probes in 60 s idle");
    // The peer vanishes without a word.
    sim.set_path(a, b, ImpairSpec::parse("loss=100%").unwrap());
    let cut = sim.now();
    assert!(sim.run_until(Duration::from_secs(60), |sim| {
        tcp(sim, a).error(ca).is_some()
    }));
    let took = sim.now() - cut;
    assert_eq!(tcp(&mut sim, a).error(ca), Some(TcpError::TimedOut));
    assert_eq!(tcp(&mut sim, a).state(ca), Some(TcpState::Closed));
    assert_eq!(tcp(&mut sim, a).counters().keepalive_timeouts, 1);
    // Idle time plus three unanswered probes a second apart, counted from the last answer.
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_secs(13),
        "{took:?}"
    );
    // Keep-alive is off by default: B never notices.
    assert_eq!(tcp(&mut sim, b).state(cb), Some(TcpState::Established));
    assert_eq!(tcp(&mut sim, b).counters().keepalive_timeouts, 0);
}

// ----- ICMP errors -----

/// Answers every TCP segment with an ICMP destination unreachable quoting it, as a router or
/// a firewall would.
struct IcmpResponder {
    code: u8,
    out: Vec<Vec<u8>>,
}

fn icmp_unreachable(from: Ipv4Addr, code: u8, mtu: u16, offending: &[u8]) -> Vec<u8> {
    use tunstack::wire::icmp::IcmpRepr;
    let ihl = (offending[0] & 0xf) as usize * 4;
    let msg = IcmpRepr::DstUnreachable {
        code,
        next_hop_mtu: mtu,
        original: &offending[..(ihl + 8).min(offending.len())],
    };
    let to = Ipv4Addr::new(offending[12], offending[13], offending[14], offending[15]);
    let ip = Ipv4Repr::new(from, to, 1, msg.buffer_len());
    let mut buf = vec![0u8; 20 + msg.buffer_len()];
    ip.emit(&mut buf);
    msg.emit(&mut buf[20..]);
    buf
}

impl Host for IcmpResponder {
    fn address(&self) -> Ipv4Addr {
        X
    }
    fn receive(&mut self, _now: Instant, packet: &[u8]) {
        if packet.len() >= 28 && packet[9] == 6 {
            self.out.push(icmp_unreachable(X, self.code, 0, packet));
        }
    }
    fn poll(&mut self, _now: Instant) {}
    fn transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop()
    }
    fn poll_at(&self) -> Option<Instant> {
        None
    }
}

#[test]
fn test_icmp_port_unreachable_refuses_connect() {
    let mut sim = Sim::new(87);
    let a = sim.add_host(stack(A, 87, TcpConfig::default()));
    let x = sim.add_host(IcmpResponder {
        code: 1,
        out: Vec::new(),
    });
    let now = sim.now();
    let c = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(X, 80))
        .unwrap();
    // Host unreachable is soft (RFC 1122 4.2.3.9): the connection keeps trying.
    sim.run_for(Duration::from_millis(100));
    assert_eq!(tcp(&mut sim, a).state(c), Some(TcpState::SynSent));
    assert_eq!(tcp(&mut sim, a).counters().icmp_errors, 1);
    // Port unreachable is hard: the retransmitted SYN's answer refuses the connection.
    sim.host::<IcmpResponder>(x).code = 3;
    assert!(sim.run_until(Duration::from_secs(5), |sim| {
        tcp(sim, a).state(c) == Some(TcpState::Closed)
    }));
    assert_eq!(tcp(&mut sim, a).error(c), Some(TcpError::ConnectionRefused));
    let mut ready = Vec::new();
    tcp(&mut sim, a).take_ready(&mut ready);
    assert!(ready.contains(&c));
}

/// Fragmentation needed (RFC 1191) for a segment in flight lowers the MSS; every later segment
/// fits the reported MTU and the stream stays byte-exact.
#[test]
fn test_fragmentation_needed_lowers_mss() {
    let mut sim = Sim::new(88);
    let a = sim.add_host(stack(A, 88, TcpConfig::default()));
    let b = sim.add_host(stack(B, 89, TcpConfig::default()));
    let x = sim.add_host(Injector::default());
    sim.set_path(a, b, ImpairSpec::parse("delay=5ms,rate=20mbit").unwrap());
    let last_data: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let lowered = Rc::new(RefCell::new(false));
    let too_big = Rc::new(RefCell::new(0u32));
    let (ld, lw, tb) = (last_data.clone(), lowered.clone(), too_big.clone());
    sim.set_tap(Box::new(move |_, _, _, p| {
        if p[9] == 6 && p[12..16] == A.octets() {
            let hlen = (p[20 + 12] >> 4) as usize * 4;
            if p.len() > 20 + hlen {
                *ld.borrow_mut() = Some(p[..28].to_vec());
                if *lw.borrow() && p.len() > 1000 {
                    *tb.borrow_mut() += 1;
                }
            }
        }
    }));
    let (ca, cb) = wait_established(&mut sim, a, b);
    assert_eq!(tcp(&mut sim, a).socket_info(ca).unwrap().mss, 1460);
    let big = data(88, 2_000_000);
    let mut sent = 0;
    let mut got = Vec::with_capacity(big.len());
    let mut injected = false;
    let start = sim.now();
    assert!(sim.run_until(Duration::from_secs(60), |sim| {
        if sent < big.len() {
            sent += tcp(sim, a).send(ca, &big[sent..]).unwrap_or(0);
        }
        let mut buf = [0u8; 16384];
        while let Ok(n) = tcp(sim, b).recv(cb, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if !injected && sim.now() - start > Duration::from_millis(50) {
            let quote = last_data.borrow().clone().expect("data in flight");
            let err = icmp_unreachable(X, 4, 1000, &quote);
            sim.host::<Injector>(x).out.push(err);
            injected = true;
        }
        if !*lowered.borrow() && tcp(sim, a).socket_info(ca).unwrap().mss < 1460 {
            *lowered.borrow_mut() = true;
        }
        got.len() == big.len()
    }));
    assert!(got == big, "stream differs");
    assert_eq!(tcp(&mut sim, a).socket_info(ca).unwrap().mss, 960);
    assert!(*lowered.borrow());
    assert_eq!(
        *too_big.borrow(),
        0,
        "segments over 1000 bytes after the ICMP"
    );
}

// ----- PAWS -----

fn data_segment(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    ts: (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let h = TcpHeader {
        src_port: src.port(),
        dst_port: dst.port(),
        seq: SeqNumber(seq),
        ack: SeqNumber(ack),
        flags: Flags::ACK | Flags::PSH,
        window: 1000,
        urgent: 0,
        options: TcpOptions {
            timestamps: Some(ts),
            ..TcpOptions::default()
        },
    };
    let len = h.header_len() + payload.len();
    let ip = Ipv4Repr::new(*src.ip(), *dst.ip(), 6, len);
    let mut buf = vec![0u8; 20 + len];
    ip.emit(&mut buf);
    h.emit(*src.ip(), *dst.ip(), &mut buf[20..], |p| {
        p.copy_from_slice(payload)
    });
    buf
}

/// RFC 7323 section 5: a segment whose TSval is older than the last one accepted is dropped,
/// even with the right sequence number; the same segment with a current TSval is accepted.
#[test]
fn test_paws_drops_old_timestamp() {
    let mut sim = Sim::new(90);
    let a = sim.add_host(stack(A, 90, TcpConfig::default()));
    let b = sim.add_host(stack(B, 91, TcpConfig::default()));
    let x = sim.add_host(Injector::default());
    sim.set_path(a, b, ImpairSpec::parse("delay=5ms").unwrap());
    let last: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let l2 = last.clone();
    sim.set_tap(Box::new(move |_, _, _, p| {
        if p[9] == 6 && p[12..16] == A.octets() {
            *l2.borrow_mut() = Some(p.to_vec());
        }
    }));
    let (ca, cb) = wait_established(&mut sim, a, b);
    // Let the timestamp clock tick well past its start.
    sim.run_for(Duration::from_secs(5));
    tcp(&mut sim, a).send(ca, b"hello").unwrap();
    sim.run_for(Duration::from_millis(100));
    let mut buf = [0u8; 16];
    assert_eq!(tcp(&mut sim, b).recv(cb, &mut buf), Ok(5));
    let p = last.borrow().clone().unwrap();
    let (h, payload) = TcpHeader::parse(A, B, &p[20..]).unwrap();
    assert_eq!(payload, b"hello");
    let (tsval, tsecr) = h.options.timestamps.expect("timestamps negotiated");
    let src = SocketAddrV4::new(A, h.src_port);
    let dst = SocketAddrV4::new(B, h.dst_port);
    let next = h.seq.0.wrapping_add(5);
    let old = data_segment(
        src,
        dst,
        next,
        h.ack.0,
        (tsval.wrapping_sub(1000), tsecr),
        b"old",
    );
    sim.host::<Injector>(x).out.push(old);
    sim.run_for(Duration::from_millis(10));
    assert_eq!(tcp(&mut sim, b).counters().paws_rejected, 1);
    assert_eq!(
        tcp(&mut sim, b).recv(cb, &mut buf),
        Err(TcpError::WouldBlock)
    );
    // The control: only the timestamp made the difference.
    let fresh = data_segment(src, dst, next, h.ack.0, (tsval, tsecr), b"new");
    sim.host::<Injector>(x).out.push(fresh);
    sim.run_for(Duration::from_millis(10));
    assert_eq!(tcp(&mut sim, b).recv(cb, &mut buf), Ok(3));
    assert_eq!(&buf[..3], b"new");
    assert_eq!(tcp(&mut sim, b).counters().paws_rejected, 1);
}

// ----- Nagle -----

/// 100 writes of 10 bytes, 1 ms apart, over a 40 ms RTT: returns the data segments A sent.
fn small_writes(cfg: TcpConfig, per_socket_nodelay: bool) -> u32 {
    let (mut sim, a, b) = pair(92, "delay=20ms", cfg, TcpConfig::default());
    let segs = Rc::new(RefCell::new(0u32));
    let s2 = segs.clone();
    sim.set_tap(Box::new(move |_, _, _, p| {
        if p[9] == 6 && p[12..16] == A.octets() {
            let hlen = (p[20 + 12] >> 4) as usize * 4;
            if p.len() > 20 + hlen {
                *s2.borrow_mut() += 1;
            }
        }
    }));
    let (ca, cb) = wait_established(&mut sim, a, b);
    if per_socket_nodelay {
        tcp(&mut sim, a).set_nodelay(ca, true);
    }
    let mut want = Vec::new();
    for i in 0..100u8 {
        let w = [i; 10];
        assert_eq!(tcp(&mut sim, a).send(ca, &w), Ok(10));
        want.extend_from_slice(&w);
        sim.run_for(Duration::from_millis(1));
    }
    let mut got = Vec::new();
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        let mut buf = [0u8; 2048];
        while let Ok(n) = tcp(sim, b).recv(cb, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.len() == want.len()
    }));
    assert!(got == want);
    let n = *segs.borrow();
    n
}

#[test]
fn test_nagle_coalesces_small_writes_nodelay_does_not() {
    let nagle = small_writes(TcpConfig::default(), false);
    let nodelay = small_writes(
        TcpConfig {
            nodelay: true,
            ..TcpConfig::default()
        },
        false,
    );
    let per_socket = small_writes(TcpConfig::default(), true);
    eprintln!("data segments for 100 small writes: nagle {nagle}, nodelay {nodelay}, set_nodelay {per_socket}");
    // One segment per ACK round trip (40 ms + delayed ACK) over the 100 ms of writes.
    assert!(nagle <= 6, "Nagle sent {nagle} segments");
    assert_eq!(nodelay, 100);
    assert_eq!(per_socket, 100);
}

// ----- caps -----

#[test]
fn test_connection_cap_is_enforced_and_counted() {
    let capped = TcpConfig {
        max_connections: 3,
        ..TcpConfig::default()
    };
    // Server side: SYNs past the cap are dropped (the client keeps retrying), and counted.
    let (mut sim, a, b) = pair(93, "delay=5ms", TcpConfig::default(), capped.clone());
    let l = tcp(&mut sim, b).listen(80).unwrap();
    let now = sim.now();
    let clients: Vec<_> = (0..5)
        .map(|_| {
            tcp(&mut sim, a)
                .connect(now, SocketAddrV4::new(B, 80))
                .unwrap()
        })
        .collect();
    sim.run_for(Duration::from_millis(1500));
    let mut accepted = 0;
    while tcp(&mut sim, b).accept(l).is_some() {
        accepted += 1;
    }
    assert_eq!(accepted, 3);
    assert_eq!(tcp(&mut sim, b).connection_count(), 3);
    // Two SYNs, then each one's retransmission after the 1 s initial RTO.
    assert_eq!(tcp(&mut sim, b).counters().cap_connections, 4);
    let synsent = clients
        .iter()
        .filter(|&&c| tcp(&mut sim, a).state(c) == Some(TcpState::SynSent))
        .count();
    assert_eq!(synsent, 2);
    // Client side: connect itself refuses.
    let (mut sim, a, _b) = pair(94, "delay=5ms", capped, TcpConfig::default());
    let now = sim.now();
    for _ in 0..3 {
        tcp(&mut sim, a)
            .connect(now, SocketAddrV4::new(B, 80))
            .unwrap();
    }
    assert_eq!(
        tcp(&mut sim, a).connect(now, SocketAddrV4::new(B, 80)),
        Err(TcpError::TooManyConnections)
    );
    assert_eq!(tcp(&mut sim, a).counters().cap_connections, 1);
}

#[test]
fn test_buffer_total_cap_is_enforced_counted_and_released() {
    let small = TcpConfig {
        rx_buffer: 64 * 1024,
        tx_buffer: 64 * 1024,
        max_buffer_total: 2 * 128 * 1024,
        ..TcpConfig::default()
    };
    let (mut sim, a, b) = pair(95, "delay=5ms", small.clone(), small);
    let l = tcp(&mut sim, b).listen(80).unwrap();
    let now = sim.now();
    let c1 = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 80))
        .unwrap();
    let c2 = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 80))
        .unwrap();
    assert_eq!(
        tcp(&mut sim, a).connect(now, SocketAddrV4::new(B, 80)),
        Err(TcpError::NoBufferSpace)
    );
    assert_eq!(tcp(&mut sim, a).counters().cap_buffer_total, 1);
    sim.run_for(Duration::from_millis(50));
    let s1 = tcp(&mut sim, b).accept(l).unwrap();
    let s2 = tcp(&mut sim, b).accept(l).unwrap();
    // The budget comes back once the connections are gone (TIME-WAIT included).
    for (h, c) in [(a, c1), (a, c2), (b, s1), (b, s2)] {
        tcp(&mut sim, h).close(c);
    }
    assert_all_closed(&mut sim, &[a, b], Duration::from_secs(30));
    let now = sim.now();
    let c3 = tcp(&mut sim, a)
        .connect(now, SocketAddrV4::new(B, 80))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| {
        tcp(sim, a).state(c3) == Some(TcpState::Established)
    }));
    // Server side: a third SYN while two connections hold the budget is dropped and counted.
    let unlimited = TcpConfig::default();
    let (mut sim, a, b) = pair(
        96,
        "delay=5ms",
        unlimited,
        TcpConfig {
            rx_buffer: 64 * 1024,
            tx_buffer: 64 * 1024,
            max_buffer_total: 2 * 128 * 1024,
            ..TcpConfig::default()
        },
    );
    let l = tcp(&mut sim, b).listen(80).unwrap();
    let now = sim.now();
    for _ in 0..3 {
        tcp(&mut sim, a)
            .connect(now, SocketAddrV4::new(B, 80))
            .unwrap();
    }
    sim.run_for(Duration::from_millis(50));
    let mut accepted = 0;
    while tcp(&mut sim, b).accept(l).is_some() {
        accepted += 1;
    }
    assert_eq!(accepted, 2);
    assert_eq!(tcp(&mut sim, b).counters().cap_buffer_total, 1);
}
