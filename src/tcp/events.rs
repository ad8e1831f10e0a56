//! RST forensics: a short per-connection timeline of what the connection went through (state
//! changes, timeouts, recoveries, every retransmission with its reason, resets and why), and the
//! reset reports the node drains to dump the packets that led to a reset.
//!
//! Everything here is `Copy`. The ring grows by doubling up to its fixed size as events come, so
//! a short connection with a handful of state changes keeps a handful of slots; events are rare
//! (state changes, timeouts, recoveries), so this never allocates per data segment.

use super::{TcpError, TcpState};
use crate::time::Instant;
use std::fmt;
use std::net::SocketAddrV4;

/// Events kept per connection: enough for the handshake, the last RTOs and recoveries and the
/// close, small enough (64 x 40 bytes) to keep for every connection.
pub const EVENTS_PER_CONN: usize = 64;

/// Timelines of released connections kept for `sockets --events`, newest last.
pub const CLOSED_TIMELINES: usize = 32;

/// Why a segment was sent again.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetransmitReason {
    /// The retransmission timer fired (go-back-N from SND.UNA, or a SYN / SYN-ACK).
    Rto,
    /// Three duplicate ACKs or enough SACKed data: the first segment of a recovery.
    FastRetransmit,
    /// Further holes resent during a SACK or NewReno recovery.
    LossRecovery,
    /// A duplicate SYN made us repeat our SYN-ACK.
    DuplicateSyn,
    /// A zero-window probe (persist timer).
    PersistProbe,
    /// An idle-connection keep-alive probe.
    KeepaliveProbe,
    /// A tail loss probe (RFC 8985 section 7) that resent the flight's last segment.
    LossProbe,
}

/// Why a reset left or arrived.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RstReason {
    /// The peer sent an acceptable RST.
    Received,
    /// The application aborted the connection (or closed it with unread data, or its listener
    /// went away before it was accepted).
    Abort,
    /// Data arrived for a connection nobody will read any more (closed by the application).
    DataAfterClose,
    /// An ACK in SYN-RECEIVED or SYN-SENT that acknowledges nothing we sent.
    BadAck,
    /// A segment for a port nobody listens on.
    ClosedPort,
    /// An ACK to a listener that carried no valid SYN cookie.
    ListenerAck,
}

impl RstReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RstReason::Received => "received",
            RstReason::Abort => "abort",
            RstReason::DataAfterClose => "data_after_close",
            RstReason::BadAck => "bad_ack",
            RstReason::ClosedPort => "closed_port",
            RstReason::ListenerAck => "listener_ack",
        }
    }
}

/// What happened.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    State {
        from: TcpState,
        to: TcpState,
    },
    Retransmit {
        reason: RetransmitReason,
        seq: u32,
        len: u32,
    },
    /// The retransmission timer fired; the snapshot is taken before the backoff.
    Timeout {
        backoff: u32,
        srtt_us: u64,
        rto_ms: u64,
        cwnd: usize,
        flight: usize,
    },
    RecoveryStart {
        srtt_us: u64,
        rto_ms: u64,
        cwnd: usize,
        ssthresh: usize,
        flight: usize,
    },
    RecoveryEnd {
        cwnd: usize,
    },
    RstSent {
        reason: RstReason,
    },
    RstReceived,
    /// The connection failed with this error (timeout, reset, refused).
    Error {
        error: TcpError,
    },
}

/// One entry of a timeline; `at_us` is the stack's clock (microseconds since it started).
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TcpEvent {
    pub at_us: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl fmt::Display for TcpEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>12.3} ms  ", self.at_us as f64 / 1000.0)?;
        match self.kind {
            EventKind::State { from, to } => write!(f, "state {from} -> {to}"),
            EventKind::Retransmit { reason, seq, len } => {
                write!(f, "retransmit ({reason:?}) seq {seq} len {len}")
            }
            EventKind::Timeout {
                backoff,
                srtt_us,
                rto_ms,
                cwnd,
                flight,
            } => write!(
                f,
                "RTO #{backoff}: srtt {:.3} ms rto {rto_ms} ms cwnd {cwnd} inflight {flight}",
                srtt_us as f64 / 1000.0
            ),
            EventKind::RecoveryStart {
                srtt_us,
                rto_ms,
                cwnd,
                ssthresh,
                flight,
            } => write!(
                f,
                "recovery start: srtt {:.3} ms rto {rto_ms} ms cwnd {cwnd} ssthresh {ssthresh} inflight {flight}",
                srtt_us as f64 / 1000.0
            ),
            EventKind::RecoveryEnd { cwnd } => write!(f, "recovery end: cwnd {cwnd}"),
            EventKind::RstSent { reason } => write!(f, "RST sent ({})", reason.as_str()),
            EventKind::RstReceived => write!(f, "RST received"),
            EventKind::Error { error } => write!(f, "error: {error}"),
        }
    }
}

/// A fixed-size ring of events: the oldest is overwritten once it is full.
#[derive(Clone, Debug, Default)]
pub struct EventLog {
    buf: Vec<TcpEvent>,
    /// Index of the oldest event once the ring is full.
    head: usize,
    /// Events ever recorded (so a reader can tell how many were overwritten).
    total: u64,
}

impl EventLog {
    pub fn push(&mut self, at: Instant, kind: EventKind) {
        let e = TcpEvent {
            at_us: at.as_micros(),
            kind,
        };
        self.total += 1;
        if self.buf.len() < EVENTS_PER_CONN {
            self.buf.push(e);
        } else {
            self.buf[self.head] = e;
            self.head = (self.head + 1) % EVENTS_PER_CONN;
        }
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &TcpEvent> {
        let (a, b) = self.buf.split_at(self.head);
        b.iter().chain(a.iter())
    }

    pub fn to_vec(&self) -> Vec<TcpEvent> {
        self.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Events recorded but no longer in the ring.
    pub fn overwritten(&self) -> u64 {
        self.total - self.buf.len() as u64
    }
}

/// The timeline of a connection that no longer exists.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClosedTimeline {
    pub local: String,
    pub remote: String,
    pub closed_at_us: u64,
    pub error: Option<TcpError>,
    pub overwritten: u64,
    pub events: Vec<TcpEvent>,
}

/// A reset sent or received, for the node to act on (e.g. dump the packets that led to it).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ResetReport {
    pub at: Instant,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub reason: RstReason,
}

/// Reports waiting for the node; a flood of resets (say, a SYN flood at a closed port) keeps the
/// first ones and counts the rest.
pub const MAX_RESET_REPORTS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_event_log_keeps_the_newest_in_order() {
        let mut log = EventLog::default();
        assert!(log.is_empty());
        for i in 0..(EVENTS_PER_CONN as u64 + 10) {
            log.push(
                Instant::from_micros(i),
                EventKind::RecoveryEnd { cwnd: i as usize },
            );
        }
        assert_eq!(log.len(), EVENTS_PER_CONN);
        assert_eq!(log.overwritten(), 10);
        let at: Vec<u64> = log.iter().map(|e| e.at_us).collect();
        let want: Vec<u64> = (10..EVENTS_PER_CONN as u64 + 10).collect();
        assert_eq!(at, want);
    }

    #[test]
    fn test_event_log_grows_to_its_bound_then_stops_allocating() {
        let mut log = EventLog::default();
        for _ in 0..3 {
            log.push(Instant::ZERO, EventKind::RstReceived);
        }
        assert!(
            log.buf.capacity() < EVENTS_PER_CONN,
            "a short timeline stays small"
        );
        for i in 0..EVENTS_PER_CONN as u64 {
            log.push(Instant::from_micros(i), EventKind::RstReceived);
        }
        let cap = log.buf.capacity();
        let ptr = log.buf.as_ptr();
        assert_eq!(cap, EVENTS_PER_CONN);
        for i in 0..1000 {
            log.push(Instant::from_micros(i), EventKind::RstReceived);
        }
        assert_eq!(log.buf.capacity(), cap);
        assert_eq!(log.buf.as_ptr(), ptr);
    }

    #[test]
    fn test_event_display_and_json() {
        let e = TcpEvent {
            at_us: 1500,
            kind: EventKind::RstSent {
                reason: RstReason::ClosedPort,
            },
        };
        assert_eq!(e.to_string().trim(), "1.500 ms  RST sent (closed_port)");
        let j = serde_json::to_value(e).unwrap();
        assert_eq!(j["kind"], "rst_sent");
        assert_eq!(j["reason"], "closed_port");
        assert_eq!(j["at_us"], 1500);
    }
}
