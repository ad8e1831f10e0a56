//! Byte ring buffers for the send and receive queues, and the assembler that tracks which
//! out-of-order ranges of the receive ring hold data.
//!
//! The receive side writes out-of-order segments straight into the ring's free space at their
//! offset from RCV.NXT, so reordering costs no extra copy and no allocation, and the memory bound
//! on the out-of-order queue is the receive window itself (RFC 9293 section 3.10.7.4 allows
//! keeping in-window segments for later processing).

use super::seq::SeqNumber;

#[derive(Debug)]
pub struct Ring {
    // Allocated zeroed: large zeroed allocations come straight from the OS as untouched pages,
    // so an idle connection's buffers cost address space, not memory.
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            buf: vec![0u8; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Appends as much of `data` as fits; returns how much did.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = self.write_at(0, data);
        self.len += n;
        n
    }

    /// Writes `data` into the free space, `offset` bytes past the end of the queued data,
    /// without making it part of the queue (see `commit`). Returns how much fit.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        let free = self.free();
        if offset >= free {
            return 0;
        }
        let n = data.len().min(free - offset);
        let cap = self.buf.len();
        let start = (self.head + self.len + offset) % cap;
        let first = n.min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        n
    }

    /// Makes `n` bytes written with `write_at` part of the queue.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free());
        self.len += n.min(self.free());
    }

    /// Copies queued bytes starting `offset` bytes from the front into `out`, without removing
    /// them. Returns how many were copied.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> usize {
        if offset >= self.len {
            return 0;
        }
        let n = out.len().min(self.len - offset);
        let cap = self.buf.len();
        let start = (self.head + offset) % cap;
        let first = n.min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }

    /// Removes up to `n` bytes from the front.
    pub fn consume(&mut self, n: usize) -> usize {
        let n = n.min(self.len);
        self.head = (self.head + n) % self.buf.len().max(1);
        // The head must not jump back to 0 when the queue empties: out-of-order data may sit in
        // the free space, placed relative to the current end.
        self.len -= n;
        n
    }

    /// Copies from the front into `out` and removes what was copied.
    pub fn pop(&mut self, out: &mut [u8]) -> usize {
        let n = self.read_at(0, out);
        self.consume(n)
    }
}

/// Out-of-order ranges received beyond RCV.NXT, sorted, disjoint and not adjacent.
#[derive(Debug, Default)]
pub struct Assembler {
    ranges: Vec<(SeqNumber, SeqNumber)>,
    /// The range that most recently grew, reported first in SACK (RFC 2018 section 4).
    last: Option<SeqNumber>,
}

impl Assembler {
    /// Ranges kept at most: beyond this a segment that would open a new one is dropped, which
    /// bounds the bookkeeping however an attacker fragments the window.
    pub const MAX_RANGES: usize = 32;

    pub fn new() -> Assembler {
        Assembler {
            ranges: Vec::with_capacity(Self::MAX_RANGES + 1),
            last: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[(SeqNumber, SeqNumber)] {
        &self.ranges
    }

    /// Records `[start, end)` as received. Returns false (and records nothing) when it would
    /// need a new range and the table is full.
    pub fn add(&mut self, start: SeqNumber, end: SeqNumber) -> bool {
        if start >= end {
            return true;
        }
        // First range that ends at or after `start` (could merge or lies after).
        let i = self
            .ranges
            .iter()
            .position(|r| r.1 >= start)
            .unwrap_or(self.ranges.len());
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.ranges.len() && self.ranges[j].0 <= end {
            s = s.min(self.ranges[j].0);
            e = e.max(self.ranges[j].1);
            j += 1;
        }
        if i == j && self.ranges.len() >= Self::MAX_RANGES {
            return false;
        }
        self.ranges.splice(i..j, std::iter::once((s, e)));
        self.last = Some(s);
        true
    }

    /// Called when RCV.NXT reaches `next`: removes the range that starts there (or covers it)
    /// and everything before, and returns where contiguous data now ends.
    pub fn advance(&mut self, next: SeqNumber) -> SeqNumber {
        let mut end = next;
        while let Some(&(s, e)) = self.ranges.first() {
            if s > end {
                break;
            }
            end = end.max(e);
            self.ranges.remove(0);
        }
        end
    }

    /// SACK blocks: the most recently changed range first, then the others from the top.
    pub fn sack_blocks(&self, out: &mut super::wire::TcpOptions) {
        let recent = self
            .last
            .and_then(|s| self.ranges.iter().find(|r| r.0 == s));
        if let Some(&r) = recent {
            out.push_sack(r);
        }
        for &r in self.ranges.iter().rev() {
            if Some(&r) != recent && !out.push_sack(r) {
                break;
            }
        }
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ring_wraps() {
        let mut r = Ring::new(8);
        assert_eq!(r.push(b"abcdef"), 6);
        let mut out = [0u8; 4];
        assert_eq!(r.pop(&mut out), 4);
        assert_eq!(&out, b"abcd");
        assert_eq!(r.push(b"ghijklmn"), 6);
        assert_eq!(r.len(), 8);
        let mut all = [0u8; 8];
        assert_eq!(r.read_at(0, &mut all), 8);
        assert_eq!(&all, b"efghijkl");
        let mut mid = [0u8; 3];
        assert_eq!(r.read_at(5, &mut mid), 3);
        assert_eq!(&mid, b"jkl");
        assert_eq!(r.consume(100), 8);
        assert!(r.is_empty());
    }

    #[test]
    fn test_ring_write_at_then_commit() {
        let mut r = Ring::new(8);
        r.push(b"ab");
        assert_eq!(r.write_at(2, b"ef"), 2);
        assert_eq!(r.write_at(0, b"cd"), 2);
        r.commit(4);
        let mut out = [0u8; 6];
        assert_eq!(r.pop(&mut out), 6);
        assert_eq!(&out, b"abcdef");
        assert_eq!(r.write_at(8, b"x"), 0);
        assert_eq!(r.write_at(6, b"xyz"), 2);
    }

    #[test]
    fn test_assembler_merges_and_advances() {
        let s = |n: u32| SeqNumber(n.wrapping_add(u32::MAX - 50));
        let mut a = Assembler::new();
        assert!(a.add(s(10), s(20)));
        assert!(a.add(s(30), s(40)));
        assert!(a.add(s(20), s(25)));
        assert_eq!(a.ranges(), &[(s(10), s(25)), (s(30), s(40))]);
        assert!(a.add(s(24), s(31)));
        assert_eq!(a.ranges(), &[(s(10), s(40))]);
        assert_eq!(a.advance(s(5)), s(5));
        assert_eq!(a.advance(s(10)), s(40));
        assert!(a.is_empty());
    }

    #[test]
    fn test_assembler_bounds_ranges() {
        let mut a = Assembler::new();
        for i in 0..Assembler::MAX_RANGES as u32 {
            assert!(a.add(SeqNumber(i * 10), SeqNumber(i * 10 + 5)));
        }
        assert!(!a.add(SeqNumber(1000), SeqNumber(1001)));
        // Growing an existing range is still fine.
        assert!(a.add(SeqNumber(5), SeqNumber(7)));
    }

    #[test]
    fn test_assembler_sack_order() {
        let mut a = Assembler::new();
        a.add(SeqNumber(10), SeqNumber(20));
        a.add(SeqNumber(40), SeqNumber(50));
        a.add(SeqNumber(70), SeqNumber(80));
        a.add(SeqNumber(40), SeqNumber(55));
        let mut o = crate::tcp::wire::TcpOptions::default();
        a.sack_blocks(&mut o);
        assert_eq!(
            o.sack(),
            &[
                (SeqNumber(40), SeqNumber(55)),
                (SeqNumber(70), SeqNumber(80)),
                (SeqNumber(10), SeqNumber(20))
            ]
        );
    }
}
