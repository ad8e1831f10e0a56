//! A bounded in-memory ring of the most recent packets with their timestamps, for `--rst-dump`:
//! when a connection is reset, the packets that led to it are still at hand.
//!
//! Bounded both in packets and in bytes; buffers of evicted packets are reused, so once the ring
//! is full, recording a packet copies bytes but allocates nothing.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

pub struct PacketRing {
    pkts: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    max_pkts: usize,
    max_bytes: usize,
    spare: Vec<Vec<u8>>,
}

impl PacketRing {
    pub fn new(max_pkts: usize, max_bytes: usize) -> PacketRing {
        PacketRing {
            pkts: VecDeque::with_capacity(max_pkts.min(4096)),
            bytes: 0,
            max_pkts: max_pkts.max(1),
            max_bytes: max_bytes.max(1),
            spare: Vec::new(),
        }
    }

    /// Records a packet (`ts_us`: wall clock, microseconds since the Unix epoch).
    pub fn record(&mut self, ts_us: u64, pkt: &[u8]) {
        if pkt.len() > self.max_bytes {
            return;
        }
        while self.pkts.len() >= self.max_pkts || self.bytes + pkt.len() > self.max_bytes {
            let Some((_, old)) = self.pkts.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            self.spare.push(old);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(pkt);
        self.bytes += buf.len();
        self.pkts.push_back((ts_us, buf));
    }

    pub fn len(&self) -> usize {
        self.pkts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every packet, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pkts.iter().map(|(t, p)| (*t, p.as_slice()))
    }

    /// The TCP packets of one connection, either direction, oldest first.
    pub fn connection(
        &self,
        a: SocketAddrV4,
        b: SocketAddrV4,
    ) -> impl Iterator<Item = (u64, &[u8])> {
        self.iter().filter(move |(_, p)| match tcp_endpoints(p) {
            Some((s, d)) => (s == a && d == b) || (s == b && d == a),
            None => false,
        })
    }
}

/// Source and destination of an unfragmented (or first-fragment) IPv4 TCP packet.
fn tcp_endpoints(p: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    if frag_offset != 0 || p.len() < ihl + 4 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    Some((
        SocketAddrV4::new(ip(12), port(ihl)),
        SocketAddrV4::new(ip(16), port(ihl + 2)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_pkt(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, pad: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + pad];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn test_ring_bounded_by_count_and_bytes() {
        let mut r = PacketRing::new(3, 1000);
        for i in 0..5u64 {
            r.record(i, &[i as u8; 10]);
        }
        assert_eq!(r.len(), 3);
        let ts: Vec<u64> = r.iter().map(|(t, _)| t).collect();
        assert_eq!(ts, vec![2, 3, 4]);
        assert_eq!(r.bytes(), 30);

        let mut r = PacketRing::new(100, 250);
        for i in 0..10u64 {
            r.record(i, &[0u8; 100]);
        }
        assert_eq!(r.len(), 2);
        assert!(r.bytes() <= 250);
        // A packet larger than the whole budget is not kept.
        r.record(99, &[0u8; 300]);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn test_ring_reuses_buffers_once_full() {
        let mut r = PacketRing::new(4, 1 << 20);
        for i in 0..4u64 {
            r.record(i, &[0u8; 1500]);
        }
        let ptrs: Vec<*const u8> = r.pkts.iter().map(|(_, p)| p.as_ptr()).collect();
        for i in 4..8u64 {
            r.record(i, &[1u8; 1000]);
        }
        let now: Vec<*const u8> = r.pkts.iter().map(|(_, p)| p.as_ptr()).collect();
        assert!(now.iter().all(|p| ptrs.contains(p)));
    }

    #[test]
    fn test_ring_filters_one_connection_both_ways() {
        let mut r = PacketRing::new(10, 1 << 20);
        let a = [198, 18, 0, 1];
        let b = [198, 18, 0, 2];
        r.record(1, &tcp_pkt(a, 4000, b, 7, 0));
        r.record(2, &tcp_pkt(b, 7, a, 4000, 5));
        r.record(3, &tcp_pkt(a, 4001, b, 7, 0));
        r.record(4, &[0x45, 0, 0]);
        let got: Vec<u64> = r
            .connection(
                SocketAddrV4::new(b.into(), 7),
                SocketAddrV4::new(a.into(), 4000),
            )
            .map(|(t, _)| t)
            .collect();
        assert_eq!(got, vec![1, 2]);
    }
}
