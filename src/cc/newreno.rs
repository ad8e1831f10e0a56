//! Reno's window policy (RFC 5681), used with NewReno or SACK loss recovery: slow start with
//! ABC, then one segment per window of acknowledged bytes, halving on loss.

use super::{halve, initial_window, slow_start, CongestionControl};
use crate::time::{Duration, Instant};

#[derive(Debug)]
pub struct NewReno {
    cwnd: usize,
    ssthresh: usize,
    /// Bytes acknowledged in congestion avoidance since the window last grew (RFC 3465 2.1).
    acked_in_ca: usize,
}

impl NewReno {
    pub fn new(mss: usize) -> NewReno {
        NewReno {
            cwnd: initial_window(mss),
            ssthresh: usize::MAX,
            acked_in_ca: 0,
        }
    }
}

impl CongestionControl for NewReno {
    fn cwnd(&self) -> usize {
        self.cwnd
    }

    fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    fn on_ack(&mut self, _now: Instant, acked: usize, mss: usize, _rtt: Duration) {
        let left = if self.cwnd < self.ssthresh {
            slow_start(&mut self.cwnd, self.ssthresh, acked, mss)
        } else {
            acked
        };
        if self.cwnd >= self.ssthresh {
            self.acked_in_ca += left;
            if self.acked_in_ca >= self.cwnd {
                self.acked_in_ca -= self.cwnd;
                self.cwnd += mss;
            }
        }
    }

    fn on_loss(&mut self, _now: Instant, flight: usize, mss: usize) {
        self.ssthresh = halve(flight, 1, 2, mss);
        self.cwnd = self.ssthresh;
        self.acked_in_ca = 0;
    }

    fn on_rto(&mut self, _now: Instant, flight: usize, mss: usize) {
        self.ssthresh = halve(flight, 1, 2, mss);
        self.cwnd = mss;
        self.acked_in_ca = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_newreno_grows_one_mss_per_window_in_ca() {
        let mut c = NewReno::new(1000);
        let now = Instant::ZERO;
        let rtt = Duration::from_millis(10);
        c.on_loss(now, 20_000, 1000);
        assert_eq!((c.cwnd(), c.ssthresh()), (10_000, 10_000));
        for _ in 0..10 {
            c.on_ack(now, 1000, 1000, rtt);
        }
        assert_eq!(c.cwnd(), 11_000);
        c.on_rto(now, 4000, 1000);
        assert_eq!((c.cwnd(), c.ssthresh()), (1000, 2000));
        // Slow start up to ssthresh, the rest counts towards congestion avoidance.
        c.on_ack(now, 5000, 1000, rtt);
        assert_eq!(c.cwnd(), 3000);
    }
}
