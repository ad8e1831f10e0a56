//! One session, either end, as a sans-IO state machine: bytes and `now` in; frames, events and
//! the next deadline out.
//!
//! Inputs are `handle_bytes` (what the stream delivered) and `handle_timeout`; application
//! commands are `send` and `close`; outputs are `poll_transmit` (one frame at a time, so a test
//! link can drop or damage whole frames), `poll_event` and `poll_at`. After any input or command,
//! drain `poll_transmit` and `poll_event`, then sleep until `poll_at`.
//!
//! Reliability is go-back-N: the receiver takes only the next sequence number and acknowledges
//! cumulatively (the ACK carries the next number it expects); the sender keeps up to `window`
//! data frames in flight (1 in step mode) and resends all of them when its timer runs out or the
//! peer reports a damaged frame. Over TCP nothing is lost, so this only matters for damage the
//! session layer itself detects, and for the in-memory tests that drop whole frames.

use super::wire::{
    self, seq_lt, ErrorCode, ErrorRepr, Frame, FrameType, Mode, Parsed, SynAckRepr, SynRepr,
    HANDSHAKE_MAX_PAYLOAD,
};
use crate::time::{Duration, Instant};
use std::collections::VecDeque;
use std::fmt;

/// Smallest max packet size a server accepts unless configured otherwise: below it the header
/// outweighs the data.
pub const DEFAULT_MIN_SIZE: u32 = 16;
/// Largest max packet size anyone may negotiate (bounds the receive buffer).
pub const MAX_MAX_SIZE: u32 = 1 << 20;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// First resend timeout; doubles on each expiry up to `max_rto`.
    pub rto: Duration,
    pub max_rto: Duration,
    /// Send a keep-alive after this long without sending anything.
    pub keepalive: Duration,
    /// Give up on a peer not heard from for this long.
    pub dead_after: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            rto: Duration::from_millis(300),
            max_rto: Duration::from_secs(3),
            keepalive: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub mode: Mode,
    pub max_size: u32,
    pub window: u16,
    pub client_id: String,
    /// First sequence number of the client's data (random in the CLI, chosen in tests).
    pub isn: u32,
    pub timing: Timing,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub max_size: u32,
    pub window: u16,
    pub min_size: u32,
    pub modes: Vec<Mode>,
    pub isn: u32,
    pub session_id: u32,
    pub timing: Timing,
}

/// What both ends agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub session_id: u32,
    pub mode: Mode,
    pub max_size: u32,
    pub window: u16,
    pub client_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    DeadPeer(Duration),
    /// The peer broke the protocol; we told it why.
    Protocol(String),
    /// The peer ended the session with an ERROR.
    PeerError(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::DeadPeer(d) => {
                write!(
                    f,
                    "peer is dead: nothing heard for {:.1} s",
                    d.as_secs_f64()
                )
            }
            SessionError::Protocol(s) => write!(f, "protocol error: {s}"),
            SessionError::PeerError(s) => write!(f, "peer reported an error: {s}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Established(Negotiated),
    Message(Vec<u8>),
    /// The server refused the handshake (client side), or we refused a client (server side).
    Refused(String),
    /// Orderly end: our DISCONNECT was acknowledged, or we acknowledged the peer's.
    Closed {
        by_peer: bool,
    },
    Failed(SessionError),
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Data messages sent (first transmissions).
    pub sent: u64,
    /// Data messages the peer acknowledged.
    pub acked: u64,
    /// Frames sent again (timeouts and damage reports).
    pub resent: u64,
    /// Data messages delivered to us, in order.
    pub delivered: u64,
    /// Damaged frames we received and reported.
    pub checksum_errors: u64,
    pub keepalives: u64,
}

#[derive(Debug)]
pub enum SendError {
    NotEstablished,
    TooLarge { len: usize, max: u32 },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotEstablished => f.write_str("the session is not established"),
            SendError::TooLarge { len, max } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the negotiated max packet size {max}"
                )
            }
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    /// Client: SYN sent, waiting for SYN-ACK or ERROR.
    SynSent,
    /// Server: waiting for the SYN.
    Listen,
    /// Server: SYN-ACK sent, waiting for the ACK with the session id.
    SynAckSent,
    Established,
    Closed,
}

#[derive(Debug)]
pub struct Session {
    state: State,
    timing: Timing,
    client: Option<ClientConfig>,
    server: Option<ServerConfig>,
    neg: Option<Negotiated>,
    rx: Vec<u8>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// The handshake frame we resend until it is answered.
    hs_frame: Option<Vec<u8>>,
    snd_una: u32,
    snd_nxt: u32,
    inflight: VecDeque<(u32, FrameType, Vec<u8>)>,
    queue: VecDeque<(FrameType, Vec<u8>)>,
    rcv_nxt: u32,
    rto_cur: Duration,
    rto_at: Option<Instant>,
    last_sent: Instant,
    last_heard: Instant,
    disconnect_queued: bool,
    ack_pending: bool,
    /// Closed by the peer's DISCONNECT: keep acknowledging it in case our ACK was lost.
    linger: bool,
    stats: Stats,
}

impl Session {
    fn new(timing: Timing, state: State, now: Instant) -> Session {
        Session {
            state,
            timing,
            client: None,
            server: None,
            neg: None,
            rx: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            hs_frame: None,
            snd_una: 0,
            snd_nxt: 0,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            rcv_nxt: 0,
            rto_cur: timing.rto,
            rto_at: None,
            last_sent: now,
            last_heard: now,
            disconnect_queued: false,
            ack_pending: false,
            linger: false,
            stats: Stats::default(),
        }
    }

    /// Client end: sends the SYN at once.
    pub fn connect(cfg: ClientConfig, now: Instant) -> Session {
        let mut s = Session::new(cfg.timing, State::SynSent, now);
        let syn = SynRepr {
            mode: cfg.mode,
            max_size: cfg.max_size,
            window: cfg.window,
            client_id: cfg.client_id.clone(),
        };
        let f = wire::frame_bytes(FrameType::Syn, cfg.isn, &syn.emit());
        s.snd_una = cfg.isn;
        s.snd_nxt = cfg.isn;
        s.client = Some(cfg);
        s.send_handshake(now, f);
        s
    }

    /// Server end: waits for a SYN.
    pub fn accept(cfg: ServerConfig, now: Instant) -> Session {
        let mut s = Session::new(cfg.timing, State::Listen, now);
        s.snd_una = cfg.isn;
        s.snd_nxt = cfg.isn;
        s.server = Some(cfg);
        s
    }

    // ---- getters

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.neg.as_ref()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Messages queued or in flight, not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    // ---- application commands

    /// Queues a data message; it leaves when the window allows.
    pub fn send(&mut self, now: Instant, msg: Vec<u8>) -> Result<(), SendError> {
        let neg = match (&self.neg, self.state, self.disconnect_queued) {
            (Some(n), State::Established, false) => n,
            _ => return Err(SendError::NotEstablished),
        };
        if msg.len() > neg.max_size as usize {
            return Err(SendError::TooLarge {
                len: msg.len(),
                max: neg.max_size,
            });
        }
        self.queue.push_back((FrameType::Data, msg));
        self.pump(now);
        Ok(())
    }

    /// Orderly disconnect after everything queued: DISCONNECT takes the next sequence number, so
    /// the peer sees it only after all data, and we close when it is acknowledged.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Established if !self.disconnect_queued => {
                self.disconnect_queued = true;
                self.queue.push_back((FrameType::Disconnect, Vec::new()));
                self.pump(now);
            }
            State::Established | State::Closed => {}
            _ => {
                self.state = State::Closed;
                self.events.push_back(Event::Closed { by_peer: false });
            }
        }
    }

    // ---- outputs

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_at(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut at = self.last_heard + self.timing.dead_after;
        if let Some(r) = self.rto_at {
            at = at.min(r);
        }
        if self.state == State::Established {
            at = at.min(self.last_sent + self.timing.keepalive);
        }
        Some(at)
    }

    // ---- inputs

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if now >= self.last_heard + self.timing.dead_after {
            self.fail(SessionError::DeadPeer(now - self.last_heard));
            return;
        }
        if self.rto_at.is_some_and(|t| now >= t) {
            self.rto_cur = (self.rto_cur * 2).min(self.timing.max_rto);
            self.resend_all(now);
        }
        if self.state == State::Established && now >= self.last_sent + self.timing.keepalive {
            self.stats.keepalives += 1;
            let f = wire::frame_bytes(FrameType::KeepAlive, self.snd_nxt, &[]);
            self.transmit(now, f);
        }
    }

    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == State::Closed && !self.linger {
            return;
        }
        self.rx.extend_from_slice(bytes);
        let mut off = 0;
        while self.state != State::Closed || self.linger {
            let limit = self.neg.as_ref().map_or(0, |n| n.max_size as usize);
            match wire::parse(&self.rx[off..], limit.max(HANDSHAKE_MAX_PAYLOAD)) {
                Parsed::Incomplete => break,
                Parsed::TooLarge { length } => {
                    self.violation(now, format!("frame of {length} bytes exceeds the limit"));
                    break;
                }
                Parsed::BadChecksum { seq, used } => {
                    off += used;
                    self.last_heard = now;
                    self.stats.checksum_errors += 1;
                    let e = ErrorRepr {
                        code: ErrorCode::BadChecksum,
                        reason: format!("frame with sequence {seq} failed its checksum"),
                    };
                    let f = wire::frame_bytes(FrameType::Error, self.rcv_nxt, &e.emit());
                    self.transmit(now, f);
                }
                Parsed::Frame(frame, used) => {
                    off += used;
                    self.last_heard = now;
                    self.handle_frame(now, frame);
                }
            }
        }
        self.rx.drain(..off.min(self.rx.len()));
        if self.ack_pending && (self.state != State::Closed || self.linger) {
            self.ack_pending = false;
            let f = wire::frame_bytes(FrameType::Ack, self.rcv_nxt, &[]);
            self.transmit(now, f);
        }
        self.pump(now);
    }

    fn handle_frame(&mut self, now: Instant, f: Frame) {
        match (self.state, f.kind) {
            (State::Closed, FrameType::Disconnect) if seq_lt(f.seq, self.rcv_nxt) => {
                self.ack_pending = true
            }
            (State::Closed, _) => {}
            (_, FrameType::Error) => self.handle_error(now, &f),
            (State::Listen, FrameType::Syn) => self.handle_syn(now, &f),
            (State::SynAckSent, FrameType::Syn) => self.resend_all(now),
            (State::SynAckSent, FrameType::Ack) => {
                let sid = self.neg.as_ref().map(|n| n.session_id);
                if f.payload.len() == 4
                    && sid
                        == Some(u32::from_be_bytes(
                            f.payload[..4].try_into().unwrap_or([0; 4]),
                        ))
                {
                    self.establish(now);
                } else {
                    self.violation(now, "handshake ACK with a wrong session id".into());
                }
            }
            // Data before the handshake ACK: the client resends it once we are established.
            (State::SynAckSent, _) => {}
            (State::SynSent, FrameType::SynAck) => self.handle_syn_ack(now, &f),
            (State::SynSent, _) => {}
            // Our handshake ACK was lost: the server asks again.
            (State::Established, FrameType::SynAck) if self.client.is_some() => {
                if let Some(n) = &self.neg {
                    let isn = self.client.as_ref().map_or(0, |c| c.isn);
                    let f = wire::frame_bytes(FrameType::Ack, isn, &n.session_id.to_be_bytes());
                    self.transmit(now, f);
                }
            }
            (State::Established, FrameType::Syn) if self.server.is_some() => {}
            (State::Established, FrameType::Data | FrameType::Disconnect) => {
                self.handle_data(now, f)
            }
            (State::Established, FrameType::Ack) => self.handle_ack(now, f.seq),
            (State::Established, FrameType::KeepAlive) => self.ack_pending = true,
            (_, kind) => self.violation(now, format!("unexpected {kind:?} frame")),
        }
    }

    fn handle_syn(&mut self, now: Instant, f: &Frame) {
        let Some(cfg) = self.server.clone() else {
            return;
        };
        let syn = match SynRepr::parse(&f.payload) {
            Ok(s) => s,
            Err(e) => return self.violation(now, e.to_string()),
        };
        let refusal = if !cfg.modes.contains(&syn.mode) {
            let names: Vec<String> = cfg.modes.iter().map(|m| m.to_string()).collect();
            Some((
                ErrorCode::UnsupportedMode,
                format!(
                    "{} is not supported (this server accepts: {})",
                    syn.mode,
                    names.join(", ")
                ),
            ))
        } else if syn.max_size < cfg.min_size {
            Some((
                ErrorCode::SizeTooSmall,
                format!(
                    "max packet size {} is too small (the minimum is {})",
                    syn.max_size, cfg.min_size
                ),
            ))
        } else {
            None
        };
        if let Some((code, reason)) = refusal {
            let e = ErrorRepr {
                code,
                reason: reason.clone(),
            };
            let fr = wire::frame_bytes(FrameType::Error, 0, &e.emit());
            self.transmit(now, fr);
            self.state = State::Closed;
            self.events.push_back(Event::Refused(format!(
                "client '{}': {reason}",
                syn.client_id
            )));
            return;
        }
        let window = match syn.mode {
            Mode::Burst => syn.window.min(cfg.window).max(1),
            _ => 1,
        };
        let neg = Negotiated {
            session_id: cfg.session_id,
            mode: syn.mode,
            max_size: syn.max_size.min(cfg.max_size).min(MAX_MAX_SIZE),
            window,
            client_id: syn.client_id,
        };
        let sa = SynAckRepr {
            status: 0,
            session_id: neg.session_id,
            max_size: neg.max_size,
            mode: neg.mode,
            window: neg.window,
        };
        self.rcv_nxt = f.seq;
        self.neg = Some(neg);
        self.state = State::SynAckSent;
        let fr = wire::frame_bytes(FrameType::SynAck, cfg.isn, &sa.emit());
        self.send_handshake(now, fr);
    }

    fn handle_syn_ack(&mut self, now: Instant, f: &Frame) {
        let Some(cfg) = self.client.clone() else {
            return;
        };
        let sa = match SynAckRepr::parse(&f.payload) {
            Ok(s) => s,
            Err(e) => return self.violation(now, e.to_string()),
        };
        if sa.status != 0 {
            return self.refused(format!("server refused with status {}", sa.status));
        }
        if sa.max_size > cfg.max_size || sa.max_size == 0 || sa.window == 0 {
            return self.violation(
                now,
                format!(
                    "SYN-ACK offers max size {} window {}",
                    sa.max_size, sa.window
                ),
            );
        }
        self.neg = Some(Negotiated {
            session_id: sa.session_id,
            mode: sa.mode,
            max_size: sa.max_size,
            window: if sa.mode == Mode::Step { 1 } else { sa.window },
            client_id: cfg.client_id.clone(),
        });
        self.rcv_nxt = f.seq;
        let ack = wire::frame_bytes(FrameType::Ack, cfg.isn, &sa.session_id.to_be_bytes());
        self.transmit(now, ack);
        self.establish(now);
    }

    fn establish(&mut self, now: Instant) {
        self.hs_frame = None;
        self.rto_at = None;
        self.rto_cur = self.timing.rto;
        self.state = State::Established;
        if let Some(n) = self.neg.clone() {
            self.events.push_back(Event::Established(n));
        }
        self.pump(now);
    }

    fn handle_error(&mut self, now: Instant, f: &Frame) {
        let e = match ErrorRepr::parse(&f.payload) {
            Ok(e) => e,
            Err(m) => return self.violation(now, m.to_string()),
        };
        match e.code {
            ErrorCode::BadChecksum => self.resend_all(now),
            ErrorCode::UnsupportedMode | ErrorCode::SizeTooSmall
                if self.state == State::SynSent =>
            {
                self.refused(e.reason)
            }
            _ => {
                self.state = State::Closed;
                self.events
                    .push_back(Event::Failed(SessionError::PeerError(e.reason)));
            }
        }
    }

    fn handle_data(&mut self, now: Instant, f: Frame) {
        if f.seq != self.rcv_nxt {
            // A duplicate (our ACK was lost) is acknowledged again; a frame from beyond a gap is
            // dropped, go-back-N style, and comes again after the missing one.
            if seq_lt(f.seq, self.rcv_nxt) {
                self.ack_pending = true;
            }
            return;
        }
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.ack_pending = true;
        if f.kind == FrameType::Disconnect {
            let ack = wire::frame_bytes(FrameType::Ack, self.rcv_nxt, &[]);
            self.ack_pending = false;
            self.transmit(now, ack);
            self.state = State::Closed;
            self.linger = true;
            self.events.push_back(Event::Closed { by_peer: true });
            return;
        }
        let max = self.neg.as_ref().map_or(0, |n| n.max_size as usize);
        if f.payload.len() > max {
            return self.violation(
                now,
                format!("data of {} bytes exceeds max size {max}", f.payload.len()),
            );
        }
        self.stats.delivered += 1;
        self.events.push_back(Event::Message(f.payload));
    }

    fn handle_ack(&mut self, now: Instant, ack: u32) {
        // Acceptable: snd_una < ack <= snd_nxt; anything else is stale or a duplicate.
        if !seq_lt(self.snd_una, ack) || seq_lt(self.snd_nxt, ack) {
            return;
        }
        let mut disconnect_acked = false;
        while let Some((seq, kind, _)) = self.inflight.front() {
            if !seq_lt(*seq, ack) {
                break;
            }
            match kind {
                FrameType::Data => self.stats.acked += 1,
                FrameType::Disconnect => disconnect_acked = true,
                _ => {}
            }
            self.inflight.pop_front();
        }
        self.snd_una = ack;
        self.rto_cur = self.timing.rto;
        self.rto_at = (!self.inflight.is_empty()).then(|| now + self.rto_cur);
        if disconnect_acked {
            self.state = State::Closed;
            self.events.push_back(Event::Closed { by_peer: false });
        }
    }

    // ---- internals

    /// Moves queued messages into the window.
    fn pump(&mut self, now: Instant) {
        if self.state != State::Established {
            return;
        }
        let window = self.neg.as_ref().map_or(1, |n| n.window.max(1)) as usize;
        while self.inflight.len() < window {
            let Some((kind, payload)) = self.queue.pop_front() else {
                break;
            };
            let seq = self.snd_nxt;
            self.snd_nxt = seq.wrapping_add(1);
            if kind == FrameType::Data {
                self.stats.sent += 1;
            }
            let f = wire::frame_bytes(kind, seq, &payload);
            self.transmit(now, f);
            self.inflight.push_back((seq, kind, payload));
            if self.rto_at.is_none() {
                self.rto_at = Some(now + self.rto_cur);
            }
        }
    }

    fn send_handshake(&mut self, now: Instant, f: Vec<u8>) {
        self.hs_frame = Some(f.clone());
        self.transmit(now, f);
        self.rto_at = Some(now + self.rto_cur);
    }

    fn resend_all(&mut self, now: Instant) {
        if let Some(f) = self.hs_frame.clone() {
            self.stats.resent += 1;
            self.transmit(now, f);
        }
        for i in 0..self.inflight.len() {
            let (seq, kind, ref payload) = self.inflight[i];
            let f = wire::frame_bytes(kind, seq, payload);
            self.stats.resent += 1;
            self.out.push_back(f);
            self.last_sent = now;
        }
        let waiting = self.hs_frame.is_some() || !self.inflight.is_empty();
        self.rto_at = waiting.then(|| now + self.rto_cur);
    }

    fn transmit(&mut self, now: Instant, f: Vec<u8>) {
        self.out.push_back(f);
        self.last_sent = now;
    }

    fn refused(&mut self, reason: String) {
        self.state = State::Closed;
        self.events.push_back(Event::Refused(reason));
    }

    fn violation(&mut self, now: Instant, what: String) {
        let e = ErrorRepr {
            code: ErrorCode::ProtocolViolation,
            reason: what.clone(),
        };
        let f = wire::frame_bytes(FrameType::Error, self.rcv_nxt, &e.emit());
        self.transmit(now, f);
        self.fail(SessionError::Protocol(what));
    }

    fn fail(&mut self, e: SessionError) {
        self.state = State::Closed;
        self.linger = false;
        self.events.push_back(Event::Failed(e));
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
