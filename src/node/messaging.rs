//! The node's side of protocol 170: drains the endpoint's events into the inbox and a table of
//! send outcomes that commands and the library API wait on.

use super::inbox::Inbox;
use crate::msg::{MessageId, MsgEvent};
use crate::stack::Stack;
use std::collections::{HashMap, VecDeque};
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
    outcomes: HashMap<MessageId, SendOutcome>,
    order: VecDeque<MessageId>,
    /// Recent peer events for `peers` and the log.
    pub peer_events: u64,
    /// Formats "now" for received messages: injected so this stays testable.
    wall_clock: fn() -> String,
}

impl Messaging {
    pub fn new(inbox: Inbox, wall_clock: fn() -> String) -> Messaging {
        Messaging {
            inbox,
            outcomes: HashMap::new(),
            order: VecDeque::new(),
            peer_events: 0,
            wall_clock,
        }
    }

    pub fn track(&mut self, id: MessageId) {
        if self.order.len() == OUTCOME_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
        self.order.push_back(id);
        self.outcomes.insert(id, SendOutcome::Pending);
    }

    pub fn outcome(&self, id: MessageId) -> Option<&SendOutcome> {
        self.outcomes.get(&id)
    }

    /// Moves every pending protocol-170 event out of the stack.
    pub fn pump(&mut self, stack: &mut Stack) {
        while let Some(ev) = stack.msg.poll_event() {
            match ev {
                MsgEvent::Received { from, msg } => {
                    let at = (self.wall_clock)();
                    self.inbox.push(from, at, msg);
                }
                MsgEvent::Delivered { id, to } => {
                    if let Some(o) = self.outcomes.get_mut(&id) {
                        *o = SendOutcome::Delivered { to };
                    }
                }
                MsgEvent::Failed { id, to, reason } => {
                    log::info!("message {} to {to} failed: {reason}", id.0);
                    if let Some(o) = self.outcomes.get_mut(&id) {
                        *o = SendOutcome::Failed { to, reason };
                    }
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
