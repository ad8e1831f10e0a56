//! CUBIC (RFC 9438): after a loss the window follows a cubic curve that is flat around the
//! window where the loss happened (W_max) and probes quickly away from it, and never grows slower
//! than Reno would (the Reno-friendly region, section 4.3).

use super::{halve, initial_window, slow_start, CongestionControl};
use crate::time::{Duration, Instant};

/// RFC 9438 section 5: C = 0.4, beta_cubic = 0.7.
const C: f64 = 0.4;
const BETA: f64 = 0.7;

#[derive(Debug)]
pub struct Cubic {
    cwnd: usize,
    ssthresh: usize,
    /// Window before the last reduction, in segments.
    w_max: f64,
    /// Time for the curve to return to W_max, in seconds.
    k: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch: Option<Instant>,
    /// The Reno-friendly estimate, in segments.
    w_est: f64,
    /// Fractional segments of growth not yet applied to `cwnd`.
    carry: f64,
}

impl Cubic {
    pub fn new(mss: usize) -> Cubic {
        Cubic {
            cwnd: initial_window(mss),
            ssthresh: usize::MAX,
            w_max: 0.0,
            k: 0.0,
            epoch: None,
            w_est: 0.0,
            carry: 0.0,
        }
    }

    fn reduce(&mut self, mss: usize, flight: usize) {
        let cwnd_seg = self.cwnd.max(flight.min(self.cwnd)) as f64 / mss as f64;
        // Fast convergence (section 4.7): a flow whose W_max keeps shrinking yields faster.
        self.w_max = if cwnd_seg < self.w_max {
            cwnd_seg * (1.0 + BETA) / 2.0
        } else {
            cwnd_seg
        };
        self.ssthresh = halve(self.cwnd.min(flight.max(2 * mss)), 7, 10, mss);
        self.epoch = None;
        self.carry = 0.0;
    }
}

impl CongestionControl for Cubic {
    fn cwnd(&self) -> usize {
        self.cwnd
    }

    fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    fn on_ack(&mut self, now: Instant, acked: usize, mss: usize, rtt: Duration) {
        let acked = if self.cwnd < self.ssthresh {
            slow_start(&mut self.cwnd, self.ssthresh, acked, mss)
        } else {
            acked
        };
        if acked == 0 || self.cwnd < self.ssthresh {
            return;
        }
        let mssf = mss as f64;
        let cwnd_seg = self.cwnd as f64 / mssf;
        let epoch = *self.epoch.get_or_insert_with(|| {
            // A new epoch: K from W_max, or start on the curve's plateau when W_max is below us
            // (section 4.2, after slow start without loss).
            if self.w_max <= cwnd_seg {
                self.k = 0.0;
                self.w_max = cwnd_seg;
            } else {
                self.k = ((self.w_max - cwnd_seg) / C).cbrt();
            }
            self.w_est = cwnd_seg;
            now
        });
        let t = (now - epoch).as_secs_f64() + rtt.as_secs_f64();
        let target = (C * (t - self.k).powi(3) + self.w_max).clamp(cwnd_seg, 1.5 * cwnd_seg);
        // Section 4.3: Reno-friendly growth with alpha = 3 (1 - beta) / (1 + beta).
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * (acked as f64 / mssf) / cwnd_seg;
        let goal = target.max(self.w_est);
        self.carry += (goal - cwnd_seg) / cwnd_seg * (acked as f64 / mssf);
        if self.carry >= 1.0 {
            let whole = self.carry.floor();
            self.cwnd += whole as usize * mss;
            self.carry -= whole;
        }
    }

    fn on_loss(&mut self, _now: Instant, flight: usize, mss: usize) {
        self.reduce(mss, flight);
        self.cwnd = self.ssthresh;
    }

    fn on_rto(&mut self, _now: Instant, flight: usize, mss: usize) {
        self.reduce(mss, flight);
        self.cwnd = mss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cubic_reduces_by_beta_and_regrows_to_wmax() {
        let mss = 1000;
        let mut c = Cubic::new(mss);
        let rtt = Duration::from_millis(50);
        let mut now = Instant::ZERO;
        // Leave slow start at 100 segments.
        c.cwnd = 100 * mss;
        c.on_loss(now, 100 * mss, mss);
        assert_eq!(c.cwnd(), 70 * mss);
        // K = cbrt(30 / 0.4) ~ 4.2 s: after 5 s of ACK clocking the window is back near W_max.
        for _ in 0..100 {
            now += Duration::from_millis(50);
            let w = c.cwnd();
            c.on_ack(now, w, mss, rtt);
        }
        assert!(c.cwnd() >= 95 * mss, "cwnd {}", c.cwnd());
        assert!(c.cwnd() <= 130 * mss, "cwnd {}", c.cwnd());
    }
}
