//! A set of `u32` indices kept as sorted, disjoint, non-touching half-open ranges. Memory grows
//! with the number of holes, not with the number of indices.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    r: Vec<(u32, u32)>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Adds `[a, b)`.
    pub fn insert(&mut self, a: u32, b: u32) {
        if a >= b {
            return;
        }
        let i = self.r.partition_point(|r| r.1 < a);
        let j = self.r.partition_point(|r| r.0 <= b);
        if i == j {
            self.r.insert(i, (a, b));
        } else {
            let m = (a.min(self.r[i].0), b.max(self.r[j - 1].1));
            self.r.splice(i..j, std::iter::once(m));
        }
    }

    pub fn contains(&self, x: u32) -> bool {
        let i = self.r.partition_point(|r| r.1 <= x);
        i < self.r.len() && self.r[i].0 <= x
    }

    /// The smallest index `>= x` not in the set.
    pub fn next_missing(&self, x: u32) -> u32 {
        let i = self.r.partition_point(|r| r.1 <= x);
        if i < self.r.len() && self.r[i].0 <= x {
            self.r[i].1
        } else {
            x
        }
    }

    pub fn covers(&self, a: u32, b: u32) -> bool {
        a >= b || self.next_missing(a) >= b
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.r
    }

    pub fn count(&self) -> u64 {
        self.r.iter().map(|&(a, b)| (b - a) as u64).sum()
    }

    pub fn clear(&mut self) {
        self.r.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_insert_merges_and_queries() {
        let mut s = RangeSet::new();
        s.insert(5, 7);
        s.insert(0, 2);
        s.insert(10, 12);
        assert_eq!(s.ranges(), &[(0, 2), (5, 7), (10, 12)]);
        s.insert(2, 5);
        assert_eq!(s.ranges(), &[(0, 7), (10, 12)]);
        s.insert(6, 11);
        assert_eq!(s.ranges(), &[(0, 12)]);
        assert!(s.contains(11) && !s.contains(12));
        assert_eq!(s.next_missing(3), 12);
        s.insert(20, 21);
        assert_eq!(s.next_missing(12), 12);
        assert!(s.covers(0, 12) && !s.covers(0, 13));
        assert_eq!(s.count(), 13);
    }
}
