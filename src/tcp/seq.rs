//! Sequence numbers: 32-bit values compared modulo 2^32 (RFC 9293 section 3.4).
//!
//! Two numbers compare by the sign of their wrapping difference, so "a < b" means "b lies less
//! than 2^31 ahead of a". The order is not transitive across more than half the space, which is
//! why windows are bounded well below 2^31.

use std::cmp::Ordering;
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The larger of two numbers in sequence order.
    pub fn max(self, other: SeqNumber) -> SeqNumber {
        if self > other {
            self
        } else {
            other
        }
    }

    pub fn min(self, other: SeqNumber) -> SeqNumber {
        if self < other {
            self
        } else {
            other
        }
    }

    /// Bytes from `earlier` up to `self`, zero when `earlier` is not actually earlier.
    pub fn since(self, earlier: SeqNumber) -> usize {
        let d = self.0.wrapping_sub(earlier.0) as i32;
        d.max(0) as usize
    }

    /// `lo <= self < hi`, the window test used throughout RFC 9293 section 3.10.7.4.
    pub fn in_range(self, lo: SeqNumber, hi: SeqNumber) -> bool {
        lo <= self && self < hi
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        Some((self.0.wrapping_sub(other.0) as i32).cmp(&0))
    }
}

impl Add<usize> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, n: usize) -> SeqNumber {
        // Offsets larger than half the space are always a bug: they would compare backwards.
        debug_assert!(n <= i32::MAX as usize, "sequence offset {n} too large");
        SeqNumber(self.0.wrapping_add(n as u32))
    }
}

impl AddAssign<usize> for SeqNumber {
    fn add_assign(&mut self, n: usize) {
        *self = *self + n;
    }
}

impl Sub<usize> for SeqNumber {
    type Output = SeqNumber;
    fn sub(self, n: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(n as u32))
    }
}

impl Sub<SeqNumber> for SeqNumber {
    type Output = i32;
    /// The signed distance from `other` to `self`.
    fn sub(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
}

impl fmt::Debug for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seq_compare_plain() {
        assert!(SeqNumber(1) < SeqNumber(2));
        assert!(SeqNumber(2) > SeqNumber(1));
        assert!(SeqNumber(5) <= SeqNumber(5));
        assert_eq!(SeqNumber(10) - SeqNumber(4), 6);
        assert_eq!(SeqNumber(4) - SeqNumber(10), -6);
    }

    #[test]
    fn test_seq_compare_across_wrap() {
        let a = SeqNumber(u32::MAX - 10);
        let b = a + 20;
        assert_eq!(b, SeqNumber(9));
        assert!(a < b);
        assert!(b > a);
        assert_eq!(b - a, 20);
        assert_eq!(b.since(a), 20);
        assert_eq!(a.since(b), 0);
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
        assert!(SeqNumber(u32::MAX).in_range(a, b));
        assert!(SeqNumber(0).in_range(a, b));
        assert!(!b.in_range(a, b));
        assert_eq!(SeqNumber(3) - 5, SeqNumber(u32::MAX - 1));
    }

    #[test]
    fn test_seq_half_space_flips() {
        let a = SeqNumber(0);
        assert!(a < SeqNumber(0x7fff_ffff));
        assert!(a > SeqNumber(0x8000_0001));
    }
}
