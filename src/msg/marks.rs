//! What a receiver remembers so that a message is delivered once even across its own restart.
//!
//! Sequence numbers deduplicate within a session only. When the receiver restarts, the sender
//! renumbers everything it has not seen acknowledged into a new stream, so a message the
//! receiver delivered just before a crash (its ACK never left) arrives again under a new number.
//! What stays the same is the message's [`Origin`]: the sender's node id, its boot epoch and the
//! id it gave the message. A sender hands out ids in increasing order and a receiver delivers
//! each sender's messages in that order (renumbering keeps it, and a stream abandoned after a
//! failure is followed only by higher ids), so the highest id delivered per sender life — a
//! high-water mark — recognises every message delivered before. One mark per sender node id is
//! kept, for its latest epoch: a message from an earlier epoch comes from a life that has ended.

use super::MessageId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where a message comes from; unchanged when its stream is renumbered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The sender's node id.
    pub node_id: u64,
    /// The sender's boot epoch when it queued the message.
    pub epoch: u64,
    /// The sender's id for the message.
    pub id: MessageId,
}

#[derive(Copy, Clone, Debug)]
struct Mark {
    epoch: u64,
    id: MessageId,
    /// When the mark last rose (a counter): the mark not raised for longest is forgotten first.
    touched: u64,
}

/// The highest message delivered per sender node id, for at most `capacity` senders.
#[derive(Debug)]
pub struct DeliveredMarks {
    by_node: HashMap<u64, Mark>,
    capacity: usize,
    clock: u64,
}

impl DeliveredMarks {
    pub fn new(capacity: usize) -> DeliveredMarks {
        DeliveredMarks {
            by_node: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// Whether a complete message from `o` is new, i.e. after its sender's mark; if so the mark
    /// rises to it. `false` means it was delivered before (or comes from an ended sender life).
    pub fn admit(&mut self, o: Origin) -> bool {
        self.clock += 1;
        if let Some(m) = self.by_node.get_mut(&o.node_id) {
            let new = o.epoch > m.epoch || (o.epoch == m.epoch && o.id > m.id);
            if new {
                *m = Mark {
                    epoch: o.epoch,
                    id: o.id,
                    touched: self.clock,
                };
            }
            return new;
        }
        if self.by_node.len() >= self.capacity {
            // Full: forget the sender heard from least recently. Rare (a new node id with the
            // table full), so a scan is cheaper than keeping an ordered index up to date.
            if let Some(old) = self
                .by_node
                .iter()
                .min_by_key(|(_, m)| m.touched)
                .map(|(&k, _)| k)
            {
                self.by_node.remove(&old);
            }
        }
        self.by_node.insert(
            o.node_id,
            Mark {
                epoch: o.epoch,
                id: o.id,
                touched: self.clock,
            },
        );
        true
    }

    /// Raises the marks to `marks`, one per sender, oldest first (as [`marks`](Self::marks)
    /// lists them); never lowers one.
    pub fn restore(&mut self, marks: impl IntoIterator<Item = Origin>) {
        let v: Vec<Origin> = marks.into_iter().collect();
        // Only the newest `capacity` can stay: skipping the rest is cheaper than evicting them
        // one scan at a time.
        let skip = v.len().saturating_sub(self.capacity);
        for o in v.into_iter().skip(skip) {
            self.admit(o);
        }
    }

    /// Every mark, the one raised longest ago first: feeding them to [`restore`](Self::restore)
    /// of an empty set gives the same marks.
    pub fn marks(&self) -> Vec<Origin> {
        let mut v: Vec<(u64, Origin)> = self
            .by_node
            .iter()
            .map(|(&node_id, m)| {
                (
                    m.touched,
                    Origin {
                        node_id,
                        epoch: m.epoch,
                        id: m.id,
                    },
                )
            })
            .collect();
        v.sort_by_key(|&(t, _)| t);
        v.into_iter().map(|(_, o)| o).collect()
    }

    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(node_id: u64, epoch: u64, id: u64) -> Origin {
        Origin {
            node_id,
            epoch,
            id: MessageId(id),
        }
    }

    #[test]
    fn test_admits_only_past_the_mark_of_the_latest_epoch() {
        let mut m = DeliveredMarks::new(8);
        assert!(m.admit(o(1, 5, 1)));
        assert!(m.admit(o(1, 5, 2)));
        assert!(!m.admit(o(1, 5, 2)), "the same message twice");
        assert!(!m.admit(o(1, 5, 1)), "an older message");
        // Renumbering may skip ids (a failed stream): what counts is the order.
        assert!(m.admit(o(1, 5, 9)));
        // Another sender has its own mark.
        assert!(m.admit(o(2, 5, 1)));
        // The sender restarted: its ids start again at 1.
        assert!(m.admit(o(1, 6, 1)));
        assert!(!m.admit(o(1, 5, 10)), "a message from an ended life");
        assert_eq!(m.marks(), vec![o(2, 5, 1), o(1, 6, 1)]);
    }

    #[test]
    fn test_restore_round_trips_and_capacity_forgets_the_least_recent() {
        let mut m = DeliveredMarks::new(2);
        m.admit(o(1, 1, 3));
        m.admit(o(2, 1, 4));
        m.admit(o(1, 1, 5));
        // Node 2 was raised longest ago: it goes when node 3 arrives.
        m.admit(o(3, 1, 1));
        assert_eq!(m.marks(), vec![o(1, 1, 5), o(3, 1, 1)]);
        let mut again = DeliveredMarks::new(2);
        again.restore(m.marks());
        assert_eq!(again.marks(), m.marks());
        // Restoring never lowers a mark.
        again.restore([o(1, 1, 2)]);
        assert!(!again.admit(o(1, 1, 5)));
        assert!(again.admit(o(1, 1, 6)));
    }
}
