//! The session state machine driven in memory: two ends joined by a link that delays, drops and
//! damages whole frames (seeded), on a virtual clock that jumps to the next arrival or deadline.

use super::*;
use crate::rand::Rng;

struct Link {
    queue: VecDeque<(Instant, Vec<u8>)>,
    delay: Duration,
    drop_pct: u64,
    corrupt_pct: u64,
    rng: Rng,
    dropped: u64,
    corrupted: u64,
}

impl Link {
    fn new(delay: Duration, drop_pct: u64, corrupt_pct: u64, seed: u64) -> Link {
        Link {
            queue: VecDeque::new(),
            delay,
            drop_pct,
            corrupt_pct,
            rng: Rng::new(seed),
            dropped: 0,
            corrupted: 0,
        }
    }

    fn push(&mut self, now: Instant, mut frame: Vec<u8>) {
        if self.rng.next_u64() % 100 < self.drop_pct {
            self.dropped += 1;
            return;
        }
        if self.rng.next_u64() % 100 < self.corrupt_pct {
            // Damage after the length field: a flipped length would desynchronise the stream,
            // which TCP never does to us; the session layer's checksum is for everything else.
            let i = 4 + (self.rng.next_u64() as usize) % (frame.len() - 4);
            frame[i] ^= 1 << (self.rng.next_u64() % 8);
            self.corrupted += 1;
        }
        self.queue.push_back((now + self.delay, frame));
    }
}

struct Pair {
    now: Instant,
    a: Session,
    b: Session,
    ab: Link,
    ba: Link,
    a_events: Vec<Event>,
    b_events: Vec<Event>,
}

fn timing() -> Timing {
    Timing {
        rto: Duration::from_millis(100),
        max_rto: Duration::from_secs(1),
        keepalive: Duration::from_secs(2),
        dead_after: Duration::from_secs(6),
    }
}

fn client_cfg(mode: Mode, isn: u32) -> ClientConfig {
    ClientConfig {
        mode,
        max_size: 256,
        window: 16,
        client_id: "tester".into(),
        isn,
        timing: timing(),
    }
}

fn server_cfg(isn: u32) -> ServerConfig {
    ServerConfig {
        max_size: 1024,
        window: 32,
        min_size: DEFAULT_MIN_SIZE,
        modes: vec![Mode::Step, Mode::Burst],
        isn,
        session_id: 0x5e55_1011,
        timing: timing(),
    }
}

impl Pair {
    fn new(c: ClientConfig, s: ServerConfig, ab: Link, ba: Link) -> Pair {
        let now = Instant::ZERO;
        Pair {
            now,
            a: Session::connect(c, now),
            b: Session::accept(s, now),
            ab,
            ba,
            a_events: vec![],
            b_events: vec![],
        }
    }

    fn flush(&mut self) {
        while let Some(f) = self.a.poll_transmit() {
            self.ab.push(self.now, f);
        }
        while let Some(f) = self.b.poll_transmit() {
            self.ba.push(self.now, f);
        }
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    /// Delivers what has arrived, fires due timers, then jumps to the next thing that happens.
    /// False when nothing is left to happen.
    fn step(&mut self) -> bool {
        self.flush();
        let mut next: Option<Instant> = None;
        for t in [
            self.ab.queue.front().map(|x| x.0),
            self.ba.queue.front().map(|x| x.0),
            self.a.poll_at(),
            self.b.poll_at(),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        }
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        while self.ab.queue.front().is_some_and(|x| x.0 <= self.now) {
            let (_, f) = self.ab.queue.pop_front().unwrap();
            self.b.handle_bytes(self.now, &f);
        }
        while self.ba.queue.front().is_some_and(|x| x.0 <= self.now) {
            let (_, f) = self.ba.queue.pop_front().unwrap();
            self.a.handle_bytes(self.now, &f);
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.flush();
        true
    }

    fn run_until(&mut self, mut done: impl FnMut(&Pair) -> bool, limit: Duration) {
        let end = self.now + limit;
        while !done(self) && self.now < end {
            if !self.step() {
                break;
            }
        }
    }

    fn messages(events: &[Event]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}

fn clean(delay_ms: u64) -> Link {
    Link::new(Duration::from_millis(delay_ms), 0, 0, 1)
}

/// Sends `n` numbered messages from the client, keeping at most 64 queued, then disconnects;
/// returns the virtual time the transfer took.
fn transfer(p: &mut Pair, n: u32) -> Duration {
    p.run_until(|p| p.a.is_established(), Duration::from_secs(30));
    assert!(p.a.is_established(), "handshake failed: {:?}", p.a_events);
    let start = p.now;
    let mut next = 0u32;
    let mut closing = false;
    let end = p.now + Duration::from_secs(3600);
    while !(p.a.is_closed() && p.b.is_closed()) && p.now < end {
        while next < n && p.a.unacked() < 64 {
            p.a.send(p.now, format!("message {next}").into_bytes())
                .unwrap();
            next += 1;
        }
        if next == n && !closing {
            closing = true;
            p.a.close(p.now);
        }
        if !p.step() {
            break;
        }
    }
    p.now - start
}

#[track_caller]
fn assert_in_order(events: &[Event], n: u32) {
    let got = Pair::messages(events);
    assert_eq!(got.len(), n as usize, "delivered {} of {n}", got.len());
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m, format!("message {i}").as_bytes());
    }
}

#[test]
fn test_handshake_negotiates_smaller_size_and_window() {
    let mut p = Pair::new(
        client_cfg(Mode::Burst, 7),
        server_cfg(9),
        clean(5),
        clean(5),
    );
    p.run_until(|p| p.b.is_established(), Duration::from_secs(5));
    let want = Negotiated {
        session_id: 0x5e55_1011,
        mode: Mode::Burst,
        max_size: 256,
        window: 16,
        client_id: "tester".into(),
    };
    assert_eq!(p.a_events, vec![Event::Established(want.clone())]);
    assert_eq!(p.b_events, vec![Event::Established(want)]);
}

#[test]
fn test_step_mode_window_is_one() {
    let mut p = Pair::new(client_cfg(Mode::Step, 7), server_cfg(9), clean(5), clean(5));
    p.run_until(|p| p.b.is_established(), Duration::from_secs(5));
    assert_eq!(p.a.negotiated().unwrap().window, 1);
    for i in 0..3 {
        p.a.send(p.now, vec![i]).unwrap();
    }
    // Only the first data frame leaves before its ACK comes back.
    let mut data = 0;
    while let Some(f) = p.a.poll_transmit() {
        if f[4] == u8::from(FrameType::Data) {
            data += 1;
        }
    }
    assert_eq!(data, 1);
}

#[test]
fn test_refusal_unsupported_mode() {
    let mut s = server_cfg(1);
    s.modes = vec![Mode::Step];
    let mut p = Pair::new(client_cfg(Mode::Burst, 7), s, clean(1), clean(1));
    p.run_until(|p| p.a.is_closed(), Duration::from_secs(5));
    match &p.a_events[..] {
        [Event::Refused(r)] => assert!(r.contains("burst is not supported"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(&p.b_events[..], [Event::Refused(r)] if r.contains("tester")));
}

#[test]
fn test_refusal_unknown_mode_and_small_size() {
    let mut p = Pair::new(
        client_cfg(Mode::Unknown(9), 7),
        server_cfg(1),
        clean(1),
        clean(1),
    );
    p.run_until(|p| p.a.is_closed(), Duration::from_secs(5));
    assert!(matches!(&p.a_events[..], [Event::Refused(r)] if r.contains("unknown mode 9")));

    let mut c = client_cfg(Mode::Step, 7);
    c.max_size = 8;
    let mut p = Pair::new(c, server_cfg(1), clean(1), clean(1));
    p.run_until(|p| p.a.is_closed(), Duration::from_secs(5));
    assert!(
        matches!(&p.a_events[..], [Event::Refused(r)] if r.contains("too small")),
        "{:?}",
        p.a_events
    );
}

#[test]
fn test_both_modes_deliver_in_order_with_5_percent_drop() {
    for (mode, seed) in [(Mode::Step, 11), (Mode::Burst, 12)] {
        let ab = Link::new(Duration::from_millis(2), 5, 0, seed);
        let ba = Link::new(Duration::from_millis(2), 5, 0, seed + 100);
        let mut p = Pair::new(client_cfg(mode, 1000), server_cfg(2000), ab, ba);
        transfer(&mut p, 10_000);
        assert_in_order(&p.b_events, 10_000);
        let st = p.a.stats();
        assert_eq!(st.sent, 10_000);
        assert_eq!(st.acked, 10_000);
        assert!(st.resent > 0 && p.ab.dropped > 0, "{mode}: {st:?}");
        assert!(p.a_events.contains(&Event::Closed { by_peer: false }) || p.a.is_closed());
        assert!(p.b_events.contains(&Event::Closed { by_peer: true }));
    }
}

#[test]
fn test_sequence_numbers_wrap() {
    for mode in [Mode::Step, Mode::Burst] {
        let mut p = Pair::new(
            client_cfg(mode, u32::MAX - 20),
            server_cfg(u32::MAX),
            clean(1),
            clean(1),
        );
        transfer(&mut p, 100);
        assert_in_order(&p.b_events, 100);
        assert_eq!(p.a.stats().resent, 0);
        assert!(p.a_events.contains(&Event::Closed { by_peer: false }));
    }
}

#[test]
fn test_sequence_numbers_wrap_with_loss() {
    let ab = Link::new(Duration::from_millis(1), 10, 0, 3);
    let ba = Link::new(Duration::from_millis(1), 10, 0, 4);
    let mut p = Pair::new(
        client_cfg(Mode::Burst, u32::MAX - 50),
        server_cfg(5),
        ab,
        ba,
    );
    transfer(&mut p, 500);
    assert_in_order(&p.b_events, 500);
}

#[test]
fn test_corrupt_frames_are_reported_and_resent_never_delivered() {
    for mode in [Mode::Step, Mode::Burst] {
        let ab = Link::new(Duration::from_millis(2), 0, 5, 21);
        let ba = Link::new(Duration::from_millis(2), 0, 5, 22);
        let mut p = Pair::new(client_cfg(mode, 77), server_cfg(88), ab, ba);
        transfer(&mut p, 2000);
        // Every delivered message is exactly what was sent: damage never reaches the app.
        assert_in_order(&p.b_events, 2000);
        assert!(p.ab.corrupted > 0);
        assert!(p.b.stats().checksum_errors > 0);
        assert!(p.a.stats().resent > 0);
    }
}

#[test]
fn test_bad_checksum_gets_error_then_resend() {
    let mut p = Pair::new(client_cfg(Mode::Step, 1), server_cfg(1), clean(1), clean(1));
    p.run_until(|p| p.b.is_established(), Duration::from_secs(5));
    p.a.send(p.now, b"hello".to_vec()).unwrap();
    let mut f = p.a.poll_transmit().unwrap();
    let last = f.len() - 1;
    f[last] ^= 0x01;
    p.b.handle_bytes(p.now, &f);
    let err = p.b.poll_transmit().unwrap();
    assert_eq!(err[4], u8::from(FrameType::Error));
    assert_eq!(err[13], u8::from(ErrorCode::BadChecksum));
    assert_eq!(p.b.poll_event(), None);
    p.a.handle_bytes(p.now, &err);
    let again = p.a.poll_transmit().unwrap();
    f[last] ^= 0x01;
    assert_eq!(again, f);
    assert_eq!(p.a.stats().resent, 1);
    p.b.handle_bytes(p.now, &again);
    assert_eq!(p.b.poll_event(), Some(Event::Message(b"hello".to_vec())));
}

#[test]
fn test_keepalive_keeps_idle_session_up() {
    let mut p = Pair::new(client_cfg(Mode::Step, 1), server_cfg(1), clean(5), clean(5));
    let limit = Duration::from_secs(60);
    p.run_until(|_| false, limit);
    assert!(p.a.is_established() && p.b.is_established());
    // Whoever goes idle first sends the keep-alive; the ACK it gets back keeps the other side
    // from needing its own.
    let sent = p.a.stats().keepalives + p.b.stats().keepalives;
    assert!(sent > 10, "{:?} {:?}", p.a.stats(), p.b.stats());
}

#[test]
fn test_keepalive_detects_dead_peer() {
    let mut p = Pair::new(
        client_cfg(Mode::Burst, 1),
        server_cfg(1),
        clean(5),
        clean(5),
    );
    p.run_until(|p| p.b.is_established(), Duration::from_secs(5));
    // The server hangs: nothing reaches it and nothing comes from it.
    p.ab.drop_pct = 100;
    p.ba.drop_pct = 100;
    let t0 = p.now;
    p.run_until(|p| p.a.is_closed(), Duration::from_secs(60));
    let dead = p.a_events.iter().find_map(|e| match e {
        Event::Failed(SessionError::DeadPeer(d)) => Some(*d),
        _ => None,
    });
    assert!(dead.is_some(), "{:?}", p.a_events);
    let took = p.now - t0;
    // Dead after `dead_after` of silence: the last thing heard was the server's keep-alive ACK.
    assert!(
        took >= Duration::from_secs(4) && took <= Duration::from_secs(7),
        "{took:?}"
    );
}

#[test]
fn test_server_initiated_disconnect() {
    let mut p = Pair::new(
        client_cfg(Mode::Burst, 1),
        server_cfg(1),
        clean(3),
        clean(3),
    );
    p.run_until(|p| p.b.is_established(), Duration::from_secs(5));
    p.b.close(p.now);
    p.run_until(
        |p| p.a.is_closed() && p.b.is_closed(),
        Duration::from_secs(5),
    );
    assert!(p.a_events.contains(&Event::Closed { by_peer: true }));
    assert!(p.b_events.contains(&Event::Closed { by_peer: false }));
}

#[test]
fn test_send_too_large_is_rejected() {
    let mut p = Pair::new(client_cfg(Mode::Step, 1), server_cfg(1), clean(1), clean(1));
    assert!(matches!(
        p.a.send(p.now, vec![1]),
        Err(SendError::NotEstablished)
    ));
    p.run_until(|p| p.a.is_established(), Duration::from_secs(5));
    assert!(matches!(
        p.a.send(p.now, vec![0; 257]),
        Err(SendError::TooLarge { .. })
    ));
}

#[test]
fn test_oversized_frame_is_a_protocol_violation() {
    let mut p = Pair::new(client_cfg(Mode::Step, 1), server_cfg(1), clean(1), clean(1));
    p.run_until(|p| p.b.is_established(), Duration::from_secs(5));
    let f = wire::frame_bytes(FrameType::Data, 1, &vec![0; 5000]);
    p.b.handle_bytes(p.now, &f);
    assert!(p.b.is_closed());
    assert!(matches!(
        p.b.poll_event(),
        Some(Event::Failed(SessionError::Protocol(_)))
    ));
}

#[test]
fn test_burst_is_faster_than_step_over_delay() {
    // 20 ms round trip, no loss: step pays one round trip per message, burst one per window.
    let n = 1000;
    let mut rates = vec![];
    for mode in [Mode::Step, Mode::Burst] {
        let mut p = Pair::new(client_cfg(mode, 1), server_cfg(1), clean(10), clean(10));
        let took = transfer(&mut p, n);
        assert_in_order(&p.b_events, n);
        let rate = n as f64 / took.as_secs_f64();
        println!(
            "in-memory link, 10 ms each way: {mode} mode {n} messages in {:.2} s = {rate:.0} msg/s",
            took.as_secs_f64()
        );
        rates.push(rate);
    }
    println!("burst/step throughput ratio: {:.1}", rates[1] / rates[0]);
    assert!(rates[1] > 5.0 * rates[0]);
}
