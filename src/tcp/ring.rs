//! Byte ring buffers for the send and receive queues, and the assembler that tracks which
//! out-of-order ranges of the receive ring hold data.
//!
//! The receive side writes out-of-order segments straight into the ring's free space at their
//! offset from RCV.NXT, so reordering costs no extra copy and no allocation, and the memory bound
//! on the out-of-order queue is the receive window itself (RFC 9293 section 3.10.7.4 allows
//! keeping in-window segments for later processing).

use super::seq::SeqNumber;

/// A fixed-capacity byte ring whose storage exists only while it holds data.
///
/// An idle connection must cost a few hundred bytes, not its buffer sizes: with 10,000
/// connections open, allocating 2 × 256 KiB up front (zeroed, so the allocator touches it once
/// it recycles heap memory) costs gigabytes. The storage is therefore allocated uninitialised on
/// the first write, only the bytes ever written are initialised (`buf.len()` is that
/// high-water mark), and `release_if_empty` gives it back. During bulk transfer the allocator
/// hands the same block straight back, so this costs no page faults on the steady path.
#[derive(Debug)]
pub struct Ring {
    buf: Vec<u8>,
    cap: usize,
    head: usize,
    len: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            buf: Vec::new(),
            cap: capacity,
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free(&self) -> usize {
        self.cap - self.len
    }

    /// Bytes of memory the ring holds now (0 while it has no storage).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Frees the storage when nothing is queued. The caller must know that no uncommitted
    /// (out-of-order) bytes sit in the free space, since they would be lost.
    pub fn release_if_empty(&mut self) {
        if self.len == 0 && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.head = 0;
        }
    }

    /// Raises the capacity to `cap`, keeping the queued bytes and any out-of-order bytes in the
    /// free space at their offsets from the front.
    pub fn grow(&mut self, cap: usize) {
        if cap <= self.cap {
            return;
        }
        if self.buf.capacity() > 0 {
            let old = std::mem::take(&mut self.buf);
            let mut buf = Vec::with_capacity(cap);
            // Offsets 0.. sit at positions head..len of the old storage; positions past its
            // high-water mark were never written. The wrapped part, positions 0..head, holds
            // offsets old_cap - head and on.
            buf.extend_from_slice(old.get(self.head..).unwrap_or_default());
            if self.head > 0 {
                buf.resize(self.cap - self.head, 0);
                buf.extend_from_slice(&old[..self.head.min(old.len())]);
            }
            self.buf = buf;
            self.head = 0;
        }
        self.cap = cap;
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
        if offset >= free || data.is_empty() {
            return 0;
        }
        if self.buf.capacity() == 0 {
            self.buf = Vec::with_capacity(self.cap);
        }
        let n = data.len().min(free - offset);
        let cap = self.cap;
        let start = (self.head + self.len + offset) % cap;
        let first = n.min(cap - start);
        self.put(start, &data[..first]);
        self.put(0, &data[first..n]);
        n
    }

    /// Copies `data` to `at`, initialising any storage between the high-water mark and `at`
    /// (only out-of-order data can land past it).
    fn put(&mut self, at: usize, data: &[u8]) {
        let end = at + data.len();
        let init = self.buf.len();
        if end <= init {
            self.buf[at..end].copy_from_slice(data);
            return;
        }
        if at > init {
            self.buf.resize(at, 0);
        }
        let inside = self.buf.len() - at;
        self.buf[at..].copy_from_slice(&data[..inside]);
        self.buf.extend_from_slice(&data[inside..]);
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
        let cap = self.cap;
        let start = (self.head + offset) % cap;
        let first = n.min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }

    /// Removes up to `n` bytes from the front.
    pub fn consume(&mut self, n: usize) -> usize {
        let n = n.min(self.len);
        self.head = (self.head + n) % self.cap.max(1);
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
    /// The ranges that most recently grew, newest first, each named by a sequence number inside
    /// it (ranges merge, so their bounds change). SACK reports them in this order (RFC 2018
    /// section 4), so each block goes out in several ACKs and one lost ACK loses nothing; a
    /// sender that first hears of a block through the cumulative ACK takes it for reordering
    /// (Linux then raises its reordering estimate and waits far longer before retransmitting).
    recent: Vec<SeqNumber>,
}

impl Assembler {
    /// Ranges kept at most: beyond this a segment that would open a new one is dropped, which
    /// bounds the bookkeeping (8 KiB) however an attacker fragments the window. A 4 MiB window
    /// at 5 % random loss holds about 150 holes; a segment dropped here must be sent again, and
    /// a retransmission that lands between ranges would be dropped each time, so the bound sits
    /// well above what loss makes.
    pub const MAX_RANGES: usize = 1024;

    pub fn new() -> Assembler {
        Assembler {
            // Grows on the first out-of-order segment: most connections never see one.
            ranges: Vec::new(),
            recent: Vec::new(),
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
        let i = self.ranges.partition_point(|r| r.1 < start);
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
        self.recent.retain(|&p| p < s || p >= e);
        self.recent.insert(0, start);
        self.recent.truncate(Self::RECENT);
        true
    }

    /// Recently grown ranges remembered: as many as one ACK can carry.
    const RECENT: usize = 4;

    /// The range that holds `p`, if any.
    fn range_of(&self, p: SeqNumber) -> Option<(SeqNumber, SeqNumber)> {
        let i = self.ranges.partition_point(|r| r.1 <= p);
        self.ranges.get(i).copied().filter(|r| r.0 <= p)
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

    /// SACK blocks: the most recently changed ranges first, newest first, then the others from
    /// the top, as many as fit.
    pub fn sack_blocks(&self, out: &mut super::wire::TcpOptions) {
        let mut sent: [Option<(SeqNumber, SeqNumber)>; Self::RECENT] = [None; Self::RECENT];
        let mut n = 0;
        for &p in &self.recent {
            let Some(r) = self.range_of(p) else { continue };
            if sent[..n].contains(&Some(r)) {
                continue;
            }
            if !out.push_sack(r) {
                return;
            }
            sent[n] = Some(r);
            n += 1;
        }
        for &r in self.ranges.iter().rev() {
            if !sent[..n].contains(&Some(r)) && !out.push_sack(r) {
                break;
            }
        }
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
        self.recent.clear();
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
    fn test_ring_grow_keeps_queued_and_out_of_order_bytes() {
        // Every head position and fill level of a small ring, wrapped or not.
        for head in 0..8usize {
            for queued in 0..=8usize {
                let mut r = Ring::new(8);
                let fill: Vec<u8> = (100..100 + head as u8).collect();
                r.push(&fill);
                r.consume(head);
                let data: Vec<u8> = (0..queued as u8).collect();
                assert_eq!(r.push(&data), queued);
                // An out-of-order byte two past the end, if there is room.
                let ooo = r.free() >= 3 && r.write_at(2, &[0xee]) == 1;
                r.grow(32);
                assert_eq!((r.capacity(), r.len()), (32, queued));
                let mut out = vec![0u8; queued];
                assert_eq!(r.read_at(0, &mut out), queued);
                assert_eq!(out, data, "head {head} queued {queued}");
                if ooo {
                    assert_eq!(r.write_at(0, &[1, 2]), 2);
                    r.commit(3);
                    let mut b = [0u8; 3];
                    r.read_at(queued, &mut b);
                    assert_eq!(b, [1, 2, 0xee], "head {head} queued {queued}");
                }
                // The grown ring keeps working as a queue.
                let more: Vec<u8> = (0..20).collect();
                let (front, free) = (r.len(), r.free());
                assert_eq!(r.push(&more), free.min(20));
                let mut back = vec![0u8; free.min(20)];
                r.read_at(front, &mut back);
                assert_eq!(back, more[..free.min(20)]);
            }
        }
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
    fn test_ring_storage_only_while_holding_data() {
        let mut r = Ring::new(1 << 18);
        assert_eq!(r.allocated(), 0);
        r.push(b"hello");
        assert!(r.allocated() >= 1 << 18);
        r.release_if_empty();
        assert!(r.allocated() > 0, "holds data: must keep its storage");
        let mut out = [0u8; 5];
        assert_eq!(r.pop(&mut out), 5);
        r.release_if_empty();
        assert_eq!(r.allocated(), 0);
        // Out-of-order bytes past the high-water mark, then the gap filled.
        assert_eq!(r.write_at(10, b"world"), 5);
        assert_eq!(r.write_at(0, b"0123456789"), 10);
        r.commit(15);
        let mut all = [0u8; 15];
        assert_eq!(r.pop(&mut all), 15);
        assert_eq!(&all, b"0123456789world");
    }

    #[test]
    fn test_ring_matches_a_model_queue() {
        // Random pushes, pops and out-of-order writes against a VecDeque, across releases.
        let mut rng = crate::rand::Rng::new(7);
        let mut r = Ring::new(97);
        let mut model = std::collections::VecDeque::new();
        let mut next = 0u8;
        for _ in 0..20_000 {
            match rng.next_u32() % 4 {
                0 | 1 => {
                    let k = (rng.next_u32() % 40) as usize;
                    let data: Vec<u8> = (0..k).map(|i| next.wrapping_add(i as u8)).collect();
                    let n = r.push(&data);
                    model.extend(&data[..n]);
                    next = next.wrapping_add(n as u8);
                }
                2 => {
                    let mut out = vec![0u8; (rng.next_u32() % 50) as usize];
                    let n = r.pop(&mut out);
                    let want: Vec<u8> = model.drain(..n).collect();
                    assert_eq!(&out[..n], &want[..]);
                    r.release_if_empty();
                }
                _ => {
                    // A later segment first, then the in-order one that fills the gap.
                    let k = (rng.next_u32() % 20) as usize + 1;
                    let data: Vec<u8> = (0..2 * k).map(|i| next.wrapping_add(i as u8)).collect();
                    let hi = r.write_at(k, &data[k..]);
                    let lo = r.write_at(0, &data[..k]);
                    let n = if lo == k { k + hi } else { lo };
                    r.commit(n);
                    model.extend(&data[..n]);
                    next = next.wrapping_add(n as u8);
                }
            }
            assert_eq!(r.len(), model.len());
        }
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
        assert!(!a.add(SeqNumber(1 << 30), SeqNumber((1 << 30) + 1)));
        // Growing an existing range is still fine.
        assert!(a.add(SeqNumber(5), SeqNumber(7)));
    }

    /// RFC 2018 section 4: a block that changed recently is repeated in the next ACKs even when
    /// newer data lands above it, so a sender learns that its retransmission arrived although
    /// one ACK was lost or a later one reported new data first.
    #[test]
    fn test_assembler_repeats_recently_changed_blocks() {
        let mut a = Assembler::new();
        for k in 1..=8u32 {
            a.add(SeqNumber(k * 100), SeqNumber(k * 100 + 10));
        }
        // A retransmission fills part of a low hole and joins the block above it...
        a.add(SeqNumber(150), SeqNumber(200));
        // ...then new data extends the top block.
        a.add(SeqNumber(810), SeqNumber(820));
        let mut o = crate::tcp::wire::TcpOptions::default();
        a.sack_blocks(&mut o);
        assert_eq!(
            o.sack(),
            &[
                (SeqNumber(800), SeqNumber(820)),
                (SeqNumber(150), SeqNumber(210)),
                (SeqNumber(700), SeqNumber(710)),
                (SeqNumber(600), SeqNumber(610)),
            ]
        );
        // Once the cumulative ACK passes a remembered block it is no longer named.
        a.advance(SeqNumber(100));
        a.advance(SeqNumber(150));
        let mut o = crate::tcp::wire::TcpOptions::default();
        a.sack_blocks(&mut o);
        assert_eq!(o.sack()[0], (SeqNumber(800), SeqNumber(820)));
        assert!(!o.sack().contains(&(SeqNumber(150), SeqNumber(210))));
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
