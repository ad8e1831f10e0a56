//! Path MTU discovery for datagram transports (RFC 1191): what ICMP "fragmentation needed"
//! reports taught us about each destination, forgotten after a while so that a path that grew
//! again is used in full.
//!
//! TCP keeps its own per-connection MSS; this cache serves transports that size datagrams per
//! destination (protocol 171's chunks).

use crate::time::{Duration, Instant};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The smallest MTU any IPv4 path has (RFC 791): reports below it are bogus.
pub const MIN_MTU: usize = 68;

/// How long a learned path MTU holds before the local MTU is tried again (RFC 1191 section 6
/// suggests 10 minutes).
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);

/// Destinations remembered at once; the stalest entry makes room for a new one.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The MTU plateaus of RFC 1191 section 7, for routers that report a next-hop MTU of zero.
const PLATEAUS: [usize; 10] = [32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68];

/// The next plateau strictly below `len`: the estimate when a router does not say its MTU.
pub fn plateau_below(len: usize) -> usize {
    PLATEAUS
        .iter()
        .copied()
        .find(|&p| p < len)
        .unwrap_or(MIN_MTU)
}

#[derive(Debug)]
pub struct PathMtuCache {
    entries: HashMap<Ipv4Addr, (usize, Instant)>,
    expiry: Duration,
    capacity: usize,
}

impl Default for PathMtuCache {
    fn default() -> PathMtuCache {
        PathMtuCache::new(DEFAULT_EXPIRY, DEFAULT_CAPACITY)
    }
}

impl PathMtuCache {
    pub fn new(expiry: Duration, capacity: usize) -> PathMtuCache {
        PathMtuCache {
            entries: HashMap::new(),
            expiry,
            capacity: capacity.max(1),
        }
    }

    /// The path MTU towards `dst`: what was learned and has not expired, else `local_mtu`.
    pub fn get(&self, dst: Ipv4Addr, now: Instant, local_mtu: usize) -> usize {
        match self.entries.get(&dst) {
            Some(&(mtu, at)) if now.saturating_since(at) < self.expiry => mtu.min(local_mtu),
            _ => local_mtu,
        }
    }

    /// Takes a report that packets of `sent_len` bytes towards `dst` did not fit, with the
    /// next-hop MTU the router named (0 if it named none). Returns the new path MTU when it
    /// lowered the one in use; a report that would raise it, or names an impossible MTU, or
    /// concerns a packet that fitted the reported MTU, changes nothing (RFC 1191 section 6, and
    /// a forged report cannot grow our packets).
    pub fn learn(
        &mut self,
        dst: Ipv4Addr,
        reported: u16,
        sent_len: usize,
        now: Instant,
        local_mtu: usize,
    ) -> Option<usize> {
        let mtu = match reported as usize {
            0 => plateau_below(sent_len),
            m if m < MIN_MTU || m >= sent_len => return None,
            m => m,
        };
        if mtu >= self.get(dst, now, local_mtu) {
            return None;
        }
        if !self.entries.contains_key(&dst) && self.entries.len() >= self.capacity {
            let stalest = self
                .entries
                .iter()
                .min_by_key(|(_, &(_, at))| at)
                .map(|(a, _)| *a)
                .expect("capacity is at least one");
            self.entries.remove(&stalest);
        }
        self.entries.insert(dst, (mtu, now));
        Some(mtu)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

    #[test]
    fn test_learns_only_decreases_and_expires() {
        let mut c = PathMtuCache::default();
        let t0 = Instant::ZERO;
        assert_eq!(c.get(DST, t0, 1500), 1500);
        assert_eq!(c.learn(DST, 1280, 1500, t0, 1500), Some(1280));
        assert_eq!(c.get(DST, t0, 1500), 1280);
        // A report naming a larger MTU, or about a packet that fitted, is ignored.
        assert_eq!(c.learn(DST, 1400, 1500, t0, 1500), None);
        assert_eq!(c.learn(DST, 1280, 1200, t0, 1500), None);
        // Impossible MTUs are ignored.
        assert_eq!(c.learn(DST, 40, 1280, t0, 1500), None);
        assert_eq!(c.learn(DST, 1000, 1280, t0, 1500), Some(1000));
        assert_eq!(c.get(DST, t0 + DEFAULT_EXPIRY, 1500), 1500);
        // The local MTU always bounds the answer.
        assert_eq!(c.get(DST, t0, 900), 900);
    }

    #[test]
    fn test_zero_report_uses_the_plateau_below() {
        let mut c = PathMtuCache::default();
        assert_eq!(c.learn(DST, 0, 1500, Instant::ZERO, 1500), Some(1492));
        assert_eq!(c.learn(DST, 0, 1492, Instant::ZERO, 1500), Some(1006));
        assert_eq!(plateau_below(68), MIN_MTU);
    }

    #[test]
    fn test_capacity_evicts_the_stalest() {
        let mut c = PathMtuCache::new(DEFAULT_EXPIRY, 2);
        let t = |s| Instant::ZERO + Duration::from_secs(s);
        let (a, b, d) = (
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 3),
        );
        c.learn(a, 1000, 1500, t(1), 1500);
        c.learn(b, 1000, 1500, t(2), 1500);
        c.learn(d, 1000, 1500, t(3), 1500);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(a, t(3), 1500), 1500);
        assert_eq!(c.get(d, t(3), 1500), 1000);
    }
}
