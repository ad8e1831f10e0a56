//! Round-trip time estimation and the retransmission timeout (RFC 6298 section 2), shared by
//! protocols 170 and 171. (TCP keeps its own, with Karn's rule and timestamps woven in.)

use crate::time::Duration;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    /// Before the first sample the timeout is `initial_rto` (clamped to the bounds).
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> RttEstimator {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: initial_rto.clamp(min_rto, max_rto.max(min_rto)),
            min_rto,
            max_rto: max_rto.max(min_rto),
        }
    }

    /// Takes one measured round trip (RFC 6298 2.2 and 2.3, alpha 1/8, beta 1/4, K 4; the clock
    /// granularity term is 1 ms).
    pub fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                self.rttvar = (self.rttvar * 3 + s.abs_diff(r)) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let rto = self.srtt.unwrap_or_default() + (self.rttvar * 4).max(Duration::from_millis(1));
        self.rto = rto.clamp(self.min_rto, self.max_rto);
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The round-trip variation (RFC 6298 RTTVAR); zero before the first sample.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    pub fn rto(&self) -> Duration {
        self.rto
    }

    pub fn max_rto(&self) -> Duration {
        self.max_rto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn test_first_sample_and_smoothing() {
        let mut e = RttEstimator::new(ms(500), ms(50), ms(10_000));
        assert_eq!(e.rto(), ms(500));
        e.sample(ms(100));
        // srtt 100, rttvar 50: rto = 100 + 4 * 50.
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rto(), ms(300));
        e.sample(ms(100));
        // rttvar 3/4 * 50 = 37.5, srtt 100: rto = 250.
        assert_eq!(e.rto(), ms(250));
    }

    #[test]
    fn test_bounds() {
        let mut e = RttEstimator::new(ms(1), ms(50), ms(200));
        assert_eq!(e.rto(), ms(50));
        e.sample(ms(1));
        assert_eq!(e.rto(), ms(50));
        e.sample(ms(5_000));
        assert_eq!(e.rto(), ms(200));
    }
}
