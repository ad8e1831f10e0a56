//! The node's side of protocol 171: remembers how each transfer ended, and puts every file
//! received into the inbox as a message with `is_file` set, as the original design did.

use super::inbox::Inbox;
use crate::file::{FileEvent, TransferId};
use crate::msg::Message;
use crate::stack::Stack;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TransferOutcome {
    Completed {
        path: String,
        bytes: u64,
        sha256: String,
    },
    Failed {
        reason: String,
    },
}

struct Incoming {
    sender: String,
    channel: String,
}

const MEMORY: usize = 10_000;

pub struct FileTracking {
    outcomes: HashMap<TransferId, TransferOutcome>,
    order: VecDeque<TransferId>,
    incoming: HashMap<TransferId, Incoming>,
    wall_clock: fn() -> String,
}

impl FileTracking {
    pub fn new(wall_clock: fn() -> String) -> FileTracking {
        FileTracking {
            outcomes: HashMap::new(),
            order: VecDeque::new(),
            incoming: HashMap::new(),
            wall_clock,
        }
    }

    pub fn outcome(&self, id: TransferId) -> Option<&TransferOutcome> {
        self.outcomes.get(&id)
    }

    fn record(&mut self, id: TransferId, o: TransferOutcome) {
        if self.order.len() == MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
        self.order.push_back(id);
        self.outcomes.insert(id, o);
    }

    /// Moves every pending protocol-171 event out of the stack.
    pub fn pump(&mut self, stack: &mut Stack, inbox: &mut Inbox) {
        while let Some(ev) = stack.file.poll_event() {
            match ev {
                FileEvent::Offered {
                    id,
                    from,
                    name,
                    size,
                    channel,
                    sender,
                    resumed_bytes,
                } => {
                    log::info!("file {name} ({size} bytes) from {sender} at {from}: receiving, {resumed_bytes} bytes already held");
                    if self.incoming.len() < MEMORY {
                        self.incoming.insert(id, Incoming { sender, channel });
                    }
                }
                FileEvent::Started {
                    id,
                    to,
                    resumed_bytes,
                } => {
                    log::info!(
                        "transfer {} to {to} accepted ({resumed_bytes} bytes already there)",
                        id.0
                    );
                }
                FileEvent::Completed {
                    id,
                    direction,
                    peer,
                    name,
                    path,
                    bytes,
                    sha256,
                } => {
                    if direction == crate::file::Direction::Receive {
                        let meta = self.incoming.remove(&id);
                        self.note_received(inbox, peer, &name, &path, bytes, &sha256, meta);
                    }
                    self.record(
                        id,
                        TransferOutcome::Completed {
                            path,
                            bytes,
                            sha256,
                        },
                    );
                }
                FileEvent::Failed { id, peer, reason } => {
                    log::info!("transfer {} with {peer} failed: {reason}", id.0);
                    self.incoming.remove(&id);
                    self.record(id, TransferOutcome::Failed { reason });
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn note_received(
        &self,
        inbox: &mut Inbox,
        from: Ipv4Addr,
        name: &str,
        path: &str,
        bytes: u64,
        sha256: &str,
        meta: Option<Incoming>,
    ) {
        let (sender, channel) = meta
            .map(|m| (m.sender, m.channel))
            .unwrap_or_else(|| (from.to_string(), "general".into()));
        let now = (self.wall_clock)();
        let msg = Message {
            content: format!("file {name} ({bytes} bytes, sha256 {sha256}) saved as {path}"),
            sender,
            channel_id: channel,
            timestamp: now.clone(),
            is_file: true,
        };
        inbox.push(from, now, msg);
    }
}
