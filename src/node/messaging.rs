//! The node's side of protocol 170: drains the endpoint's events into the inbox and a table of
//! send outcomes that commands and the library API wait on.

use super::inbox::Inbox;
use crate::msg::{MessageId, MsgEvent};
use crate::stack::Stack;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

/// What became of a message this node sent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SendOutcome {
    Pending,
    Delivered { to: Ipv4Addr },
    Failed { to: Ipv4Addr, reason: String },
}

/// How many outcomes are remembered; the oldest are forgotten first.
const OUTCOME_MEMORY: usize = 100_000;

pub struct Messaging {
    pub inbox: Inbox,
    /// Outcomes by message id, in id order (ids grow, and callers track a message as soon as
    /// `send_message` returns it, under the node's lock): lookups are a binary search, and
    /// forgetting the oldest is a pop.
    outcomes: VecDeque<(MessageId, SendOutcome)>,
    /// Recent peer events for `peers` and the log.
    pub peer_events: u64,
    /// Formats "now" for received messages: injected so this stays testable.
    wall_clock: fn() -> String,
}

impl Messaging {
    pub fn new(inbox: Inbox, wall_clock: fn() -> String) -> Messaging {
        Messaging {
            inbox,
            outcomes: VecDeque::new(),
            peer_events: 0,
            wall_clock,
        }
    }

    pub fn track(&mut self, id: MessageId) {
        if self.outcomes.len() == OUTCOME_MEMORY {
            self.outcomes.pop_front();
        }
        match self.outcomes.back() {
            Some(&(last, _)) if last >= id => match self.find(id) {
                Ok(i) => self.outcomes[i].1 = SendOutcome::Pending,
                Err(i) => self.outcomes.insert(i, (id, SendOutcome::Pending)),
            },
            _ => self.outcomes.push_back((id, SendOutcome::Pending)),
        }
    }

    fn find(&self, id: MessageId) -> Result<usize, usize> {
        // Ids are usually consecutive: try the slot they would have, then search.
        if let Some(&(first, _)) = self.outcomes.front() {
            if let Some(i) = id.0.checked_sub(first.0) {
                if let Some((found, _)) = self.outcomes.get(i as usize) {
                    if *found == id {
                        return Ok(i as usize);
                    }
                }
            }
        }
        self.outcomes.binary_search_by_key(&id, |e| e.0)
    }

    pub fn outcome(&self, id: MessageId) -> Option<&SendOutcome> {
        self.find(id).ok().map(|i| &self.outcomes[i].1)
    }

    fn set_outcome(&mut self, id: MessageId, o: SendOutcome) {
        if let Ok(i) = self.find(id) {
            self.outcomes[i].1 = o;
        }
    }

    /// Moves every pending protocol-170 event out of the stack.
    pub fn pump(&mut self, stack: &mut Stack) {
        // One reading of the wall clock for the batch: the messages of one turn arrived together.
        let mut at: Option<String> = None;
        while let Some(ev) = stack.msg.poll_event() {
            match ev {
                MsgEvent::Received { from, msg, origin } => {
                    let at = at.get_or_insert_with(self.wall_clock).clone();
                    self.inbox.push_delivered(from, at, msg, origin);
                }
                MsgEvent::Delivered { id, to } => {
                    self.set_outcome(id, SendOutcome::Delivered { to });
                }
                MsgEvent::Failed { id, to, reason } => {
                    log::info!("message {} to {to} failed: {reason}", id.0);
                    self.set_outcome(id, SendOutcome::Failed { to, reason });
                }
                MsgEvent::PeerUp { addr, name, id } => {
                    self.peer_events += 1;
                    log::info!("peer {name} ({addr}, id {id:016x}) is up");
                }
                MsgEvent::PeerDown { addr } => {
                    self.peer_events += 1;
                    log::info!("peer {addr} is down");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_outcomes_track_in_any_order_and_forget_the_oldest() {
        let mut m = Messaging::new(Inbox::in_memory(1), String::new);
        m.track(MessageId(5));
        m.track(MessageId(7));
        m.track(MessageId(6));
        m.set_outcome(
            MessageId(6),
            SendOutcome::Delivered {
                to: Ipv4Addr::LOCALHOST,
            },
        );
        assert_eq!(m.outcome(MessageId(5)), Some(&SendOutcome::Pending));
        assert_eq!(
            m.outcome(MessageId(6)),
            Some(&SendOutcome::Delivered {
                to: Ipv4Addr::LOCALHOST
            })
        );
        assert_eq!(m.outcome(MessageId(8)), None);
        for i in 8..(8 + OUTCOME_MEMORY as u64) {
            m.track(MessageId(i));
        }
        // 100,003 tracked, room for 100,000: the three oldest are forgotten.
        assert_eq!(m.outcome(MessageId(7)), None);
        assert_eq!(m.outcome(MessageId(8)), Some(&SendOutcome::Pending));
    }
}
