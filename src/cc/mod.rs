//! Congestion control behind one trait, so a transport's loss recovery is written once and the
//! window policy is chosen per stack (`TcpConfig::congestion`, `FileConfig::congestion`). Used
//! by TCP and by protocol 171's file transfers, which is why it sits beside them, not in either.
//!
//! The transport calls in: `on_ack` for newly acknowledged bytes outside loss recovery,
//! `on_delivered` for every newly delivered byte with its RTT sample, `on_loss` when a loss
//! starts a recovery episode, `on_rto` when the retransmission timer fires. Everything is in
//! bytes; `mss` is the transport's packet payload (a TCP segment, a 171 chunk).

mod bbr;
mod cubic;
mod newreno;

pub use bbr::Bbr;
pub use cubic::Cubic;
pub use newreno::NewReno;

use crate::time::{Duration, Instant};
use std::fmt;

/// Which algorithm new connections use.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum Congestion {
    NewReno,
    Cubic,
    /// Model-based (bottleneck bandwidth and minimum RTT), blind to random loss.
    #[default]
    Bbr,
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Congestion::NewReno => "newreno",
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        })
    }
}

pub trait CongestionControl: fmt::Debug + Send {
    fn cwnd(&self) -> usize;
    fn ssthresh(&self) -> usize;
    /// `acked` new bytes were cumulatively acknowledged, outside loss recovery.
    fn on_ack(&mut self, now: Instant, acked: usize, mss: usize, rtt: Duration);
    /// A loss was detected by duplicate ACKs or SACK with `flight` bytes outstanding.
    fn on_loss(&mut self, now: Instant, flight: usize, mss: usize);
    /// The retransmission timer fired.
    fn on_rto(&mut self, now: Instant, flight: usize, mss: usize);
    /// An ACK newly delivered `delivered` bytes (cumulatively or by SACK, in recovery too),
    /// with the RTT it measured, if any. For model-based control; loss-based ones ignore it.
    fn on_delivered(
        &mut self,
        _now: Instant,
        _delivered: usize,
        _rtt: Option<Duration>,
        _mss: usize,
    ) {
    }
}

/// RFC 5681 section 3.1 and RFC 6675: the window after a loss never drops below two segments.
fn halve(flight: usize, beta_num: usize, beta_den: usize, mss: usize) -> usize {
    (flight * beta_num / beta_den).max(2 * mss)
}

/// RFC 6928 initial window: ten segments, capped at 14600 bytes unless the MSS is tiny.
pub fn initial_window(mss: usize) -> usize {
    (10 * mss).min((2 * mss).max(14_600))
}

/// Slow start with appropriate byte counting (RFC 3465, L = 2): growth per ACK is capped at two
/// segments so that stretch ACKs and ACK division cannot inflate the window. Returns the bytes
/// of `acked` left over once the window reaches `ssthresh`.
fn slow_start(cwnd: &mut usize, ssthresh: usize, acked: usize, mss: usize) -> usize {
    let room = ssthresh.saturating_sub(*cwnd);
    let grow = acked.min(2 * mss).min(room);
    *cwnd += grow;
    acked - grow.min(acked)
}

pub fn new(kind: Congestion, mss: usize) -> Box<dyn CongestionControl> {
    match kind {
        Congestion::NewReno => Box::new(NewReno::new(mss)),
        Congestion::Cubic => Box::new(Cubic::new(mss)),
        Congestion::Bbr => Box::new(Bbr::new(mss)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_initial_window() {
        assert_eq!(initial_window(1460), 14_600);
        assert_eq!(initial_window(536), 5360);
        assert_eq!(initial_window(8960), 17_920);
    }

    #[test]
    fn test_abc_caps_growth_per_ack() {
        let mut cwnd = 10_000;
        let left = slow_start(&mut cwnd, 100_000, 10_000, 1000);
        assert_eq!(cwnd, 12_000);
        assert_eq!(left, 8000);
        let mut cwnd = 99_500;
        slow_start(&mut cwnd, 100_000, 2000, 1000);
        assert_eq!(cwnd, 100_000);
    }
}
