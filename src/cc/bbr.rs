//! A model-based window after BBR (Cardwell et al., "BBR: Congestion-Based Congestion Control",
//! ACM Queue 2016; draft-cardwell-iccrg-bbr-congestion-control): the sender estimates the path's
//! bottleneck bandwidth (the highest delivery rate of recent round trips) and its round-trip
//! propagation time (the lowest RTT of the last 10 s), and keeps twice their product in flight.
//! Loss is not a congestion signal here, which is what lets it keep a path busy through random
//! loss (a lab's nftables `numgen random` drop), where a loss-based window collapses to the
//! handful of segments that RFC 5681's arithmetic allows (about 5 at 5 %).
//!
//! Simplified against the published algorithm, since this stack does not pace: the window alone
//! bounds the flight (the "cwnd-limited" mode of BBR), the bandwidth sample is the delivery rate
//! over an interval of at least one minimum round trip (not per packet), and the states are
//! STARTUP (the window grows with every delivered byte until the bandwidth stops growing by a
//! quarter for three intervals), PROBE_BW (window = 2 x bandwidth x min RTT) and PROBE_RTT (the
//! window drops to four segments for 200 ms when the minimum RTT is 10 s old, so queues drain
//! and the floor is measured again). As in Linux's BBR, the window also covers ACK aggregation:
//! a user-space stack reads ACKs in batches, one per turn of its loop, so deliveries arrive in
//! bursts well above the bandwidth estimate; without the burst on top, twice the product of the
//! bandwidth and the (idle) minimum RTT starves the sender between turns.

use super::{initial_window, CongestionControl};
use crate::time::{Duration, Instant};
use std::collections::VecDeque;

/// Bandwidth samples the maximum is taken over (each at least one round trip long).
const BW_WINDOW: usize = 10;
/// How long a minimum RTT stands before it is measured again.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// The window, as a multiple of the estimated bandwidth-delay product.
const CWND_GAIN: f64 = 2.0;
/// Shortest sampling interval: below it timer granularity dominates the rate.
const MIN_INTERVAL: Duration = Duration::from_micros(100);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Startup,
    ProbeBw,
    ProbeRtt { until: Instant },
}

#[derive(Debug)]
pub struct Bbr {
    cwnd: usize,
    mss: usize,
    state: State,
    /// Delivered bytes since `interval_start`.
    interval_bytes: usize,
    interval_start: Option<Instant>,
    /// Recent bandwidth samples in bytes per second, newest last.
    samples: VecDeque<f64>,
    min_rtt: Option<(Duration, Instant)>,
    /// Startup's plateau detection: the bandwidth that last grew by a quarter, and how many
    /// samples since did not.
    full_bw: f64,
    full_bw_count: u32,
    /// ACK aggregation: the current epoch (since deliveries last fell behind the bandwidth
    /// estimate) and what it delivered; the largest excess over the estimate in this interval,
    /// and in the last `BW_WINDOW` intervals.
    ack_epoch: Option<Instant>,
    ack_epoch_bytes: usize,
    extra_now: usize,
    extra_samples: VecDeque<usize>,
}

impl Bbr {
    pub fn new(mss: usize) -> Bbr {
        Bbr {
            cwnd: initial_window(mss),
            mss,
            state: State::Startup,
            interval_bytes: 0,
            interval_start: None,
            samples: VecDeque::with_capacity(BW_WINDOW),
            min_rtt: None,
            full_bw: 0.0,
            full_bw_count: 0,
            ack_epoch: None,
            ack_epoch_bytes: 0,
            extra_now: 0,
            extra_samples: VecDeque::with_capacity(BW_WINDOW),
        }
    }

    fn max_bw(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }

    fn floor(&self) -> usize {
        4 * self.mss
    }

    /// Twice the bandwidth-delay product plus the recent ACK aggregation, once both are known.
    fn target(&self) -> Option<usize> {
        let (rtt, _) = self.min_rtt?;
        let bw = self.max_bw();
        let extra = self
            .extra_samples
            .iter()
            .copied()
            .fold(self.extra_now, usize::max);
        (bw > 0.0)
            .then(|| ((CWND_GAIN * bw * rtt.as_secs_f64()) as usize + extra).max(self.floor()))
    }

    /// Tracks how far deliveries run ahead of the bandwidth estimate (Linux's `extra_acked`).
    fn sample_aggregation(&mut self, now: Instant, delivered: usize) {
        let bw = self.max_bw();
        let mut expected = match self.ack_epoch {
            Some(start) => bw * now.saturating_since(start).as_secs_f64(),
            None => f64::INFINITY,
        };
        if self.ack_epoch_bytes as f64 <= expected {
            self.ack_epoch = Some(now);
            self.ack_epoch_bytes = 0;
            expected = 0.0;
        }
        self.ack_epoch_bytes += delivered;
        let extra = (self.ack_epoch_bytes as f64 - expected).max(0.0) as usize;
        self.extra_now = self.extra_now.max(extra.min(self.cwnd));
    }

    fn sample_rtt(&mut self, now: Instant, rtt: Duration) {
        let expired = self
            .min_rtt
            .is_some_and(|(_, at)| now.saturating_since(at) >= MIN_RTT_WINDOW);
        match self.min_rtt {
            Some((m, _)) if rtt > m && !expired => {}
            _ => {
                if expired && self.state == State::ProbeBw {
                    self.state = State::ProbeRtt {
                        until: now + PROBE_RTT_TIME,
                    };
                }
                self.min_rtt = Some((rtt, now));
            }
        }
    }

    fn end_interval(&mut self, now: Instant) {
        let Some(start) = self.interval_start else {
            self.interval_start = Some(now);
            return;
        };
        let len = now.saturating_since(start);
        let min = self
            .min_rtt
            .map_or(MIN_INTERVAL, |(r, _)| r.max(MIN_INTERVAL));
        if len < min {
            return;
        }
        let bw = self.interval_bytes as f64 / len.as_secs_f64();
        if self.samples.len() == BW_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(bw);
        if self.extra_samples.len() == BW_WINDOW {
            self.extra_samples.pop_front();
        }
        self.extra_samples
            .push_back(std::mem::take(&mut self.extra_now));
        self.interval_bytes = 0;
        self.interval_start = Some(now);
        if self.state == State::Startup {
            let best = self.max_bw();
            if best >= self.full_bw * 1.25 {
                self.full_bw = best;
                self.full_bw_count = 0;
            } else {
                self.full_bw_count += 1;
                if self.full_bw_count >= 3 {
                    self.state = State::ProbeBw;
                }
            }
        }
    }
}

impl CongestionControl for Bbr {
    fn cwnd(&self) -> usize {
        match self.state {
            State::ProbeRtt { .. } => self.floor().min(self.cwnd),
            _ => self.cwnd,
        }
    }

    fn ssthresh(&self) -> usize {
        usize::MAX
    }

    fn on_ack(&mut self, _now: Instant, _acked: usize, _mss: usize, _rtt: Duration) {
        // Everything happens in `on_delivered`, which also sees data SACKed during recovery.
    }

    fn on_delivered(&mut self, now: Instant, delivered: usize, rtt: Option<Duration>, mss: usize) {
        self.mss = mss;
        if let Some(r) = rtt.filter(|r| !r.is_zero()) {
            self.sample_rtt(now, r);
        }
        if let State::ProbeRtt { until } = self.state {
            if now >= until {
                self.state = State::ProbeBw;
            }
        }
        self.interval_bytes += delivered;
        self.sample_aggregation(now, delivered);
        self.end_interval(now);
        match self.state {
            State::Startup => {
                self.cwnd += delivered;
                // Never more than the gain over what the estimate supports, once there is one.
                if let Some(t) = self.target() {
                    self.cwnd = self.cwnd.min(t.max(initial_window(mss)) * 2);
                }
            }
            State::ProbeBw | State::ProbeRtt { .. } => {
                if let Some(t) = self.target() {
                    // Approach the target by what was delivered, so the window never jumps by
                    // more than one flight's worth in either direction.
                    self.cwnd = if t > self.cwnd {
                        (self.cwnd + delivered).min(t)
                    } else {
                        t
                    };
                }
            }
        }
        self.cwnd = self.cwnd.max(self.floor());
    }

    fn on_loss(&mut self, _now: Instant, _flight: usize, _mss: usize) {
        // Random loss says nothing about the bottleneck; the model already bounds the flight.
    }

    fn on_rto(&mut self, _now: Instant, _flight: usize, mss: usize) {
        // Nothing came back for a whole timeout: restart from a small window; the model brings
        // it back within a round trip if the path is fine.
        self.cwnd = 4 * mss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1448;

    /// A path of `bw` bytes/s and `rtt`, delivering one window per round trip: returns the
    /// window after `rounds` round trips.
    fn run(b: &mut Bbr, bw: f64, rtt: Duration, rounds: u32, t: &mut Instant) -> usize {
        for _ in 0..rounds {
            let flight = b.cwnd().min((bw * rtt.as_secs_f64() * 4.0) as usize);
            let delivered = flight.min((bw * rtt.as_secs_f64()) as usize);
            // Four ACKs per round trip.
            for _ in 0..4 {
                *t += rtt / 4;
                b.on_delivered(*t, delivered / 4, Some(rtt), MSS);
            }
        }
        b.cwnd()
    }

    #[test]
    fn test_window_settles_at_twice_the_bdp_and_ignores_loss() {
        let mut b = Bbr::new(MSS);
        let mut t = Instant::ZERO;
        let (bw, rtt) = (100e6, Duration::from_millis(1));
        let w = run(&mut b, bw, rtt, 60, &mut t);
        let bdp = (bw * rtt.as_secs_f64()) as usize;
        assert_eq!(b.state, State::ProbeBw);
        assert!(
            w >= bdp * 3 / 2 && w <= bdp * 5 / 2,
            "window {w} for a BDP of {bdp}"
        );
        b.on_loss(t, w, MSS);
        assert_eq!(b.cwnd(), w);
    }

    #[test]
    fn test_timeout_shrinks_then_the_model_restores() {
        let mut b = Bbr::new(MSS);
        let mut t = Instant::ZERO;
        let (bw, rtt) = (50e6, Duration::from_millis(2));
        let w = run(&mut b, bw, rtt, 60, &mut t);
        b.on_rto(t, w, MSS);
        assert_eq!(b.cwnd(), 4 * MSS);
        let again = run(&mut b, bw, rtt, 20, &mut t);
        assert!(again >= w * 3 / 4, "{again} vs {w}");
    }

    #[test]
    fn test_probe_rtt_drains_every_ten_seconds() {
        let mut b = Bbr::new(MSS);
        let mut t = Instant::ZERO;
        let rtt = Duration::from_millis(1);
        run(&mut b, 100e6, rtt, 60, &mut t);
        t += MIN_RTT_WINDOW;
        b.on_delivered(t, MSS, Some(rtt * 2), MSS);
        assert!(matches!(b.state, State::ProbeRtt { .. }));
        assert_eq!(b.cwnd(), 4 * MSS);
        t += PROBE_RTT_TIME;
        b.on_delivered(t, MSS, Some(rtt), MSS);
        assert_eq!(b.state, State::ProbeBw);
    }
}
