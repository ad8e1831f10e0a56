//! A node run from a program: the shape of the original library (`send_message`, `send_file`,
//! `received_messages`, `status`, `stop`), on top of the same node the CLI runs.
//!
//! ```no_run
//! use tunstack::api::node::TunstackNode;
//! use tunstack::node::launch::LaunchConfig;
//! use std::time::Duration;
//!
//! let mut cfg = LaunchConfig::new("tun0", "198.18.1.2".parse().unwrap(), 24);
//! cfg.data_dir = Some("/tmp/node-a".into());
//! cfg.msg.max_retries = Some(8); // protocol-170 retransmission settings, see `MsgTuning`
//! let node = TunstackNode::start(cfg).unwrap();
//! let id = node.send_message("198.18.2.2".parse().unwrap(), "hello", "alice", "general").unwrap();
//! node.wait_delivered(id, Duration::from_secs(10)).unwrap();
//! let dst: std::net::Ipv4Addr = "198.18.2.2".parse().unwrap();
//! for t in node.send_file(&[dst], "photo.jpg".as_ref(), "general", "alice").unwrap() {
//!     node.wait_transfer(t, Duration::from_secs(60)).unwrap();
//! }
//! for m in node.received_messages(Duration::from_secs(1)) {
//!     println!("{}: {}", m.msg.sender, m.msg.content);
//! }
//! node.stop();
//! ```

use crate::file::{FileError, TransferId};
use crate::msg::{Message, MessageId, MsgError};
use crate::node::clock::rfc3339_now;
use crate::node::files::TransferOutcome;
use crate::node::inbox::InboxEntry;
use crate::node::launch::{launch, LaunchConfig, LaunchError, MsgTuningError};
use crate::node::messaging::SendOutcome;
use crate::node::NodeHandle;
use crate::time::Duration;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub enum ApiError {
    Launch(LaunchError),
    /// `LaunchConfig::msg` holds a value out of range.
    Config(MsgTuningError),
    Send(MsgError),
    File(FileError),
    TransferFailed(String),
    /// The message could not be delivered after every retry.
    Failed {
        to: Ipv4Addr,
        reason: String,
    },
    TimedOut,
    Stopped,
    Io(std::io::Error),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Launch(e) => write!(f, "{e}"),
            ApiError::Config(e) => write!(f, "{e}"),
            ApiError::Send(e) => write!(f, "{e}"),
            ApiError::File(e) => write!(f, "{e}"),
            ApiError::TransferFailed(r) => write!(f, "file transfer failed: {r}"),
            ApiError::Failed { to, reason } => write!(f, "delivery to {to} failed: {reason}"),
            ApiError::TimedOut => write!(f, "timed out"),
            ApiError::Stopped => write!(f, "the node stopped"),
            ApiError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> ApiError {
        ApiError::Launch(e)
    }
}

pub struct TunstackNode {
    handle: NodeHandle,
    join: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The inbox index up to which `received_messages` has returned entries.
    read_up_to: AtomicU64,
}

impl TunstackNode {
    /// Opens the TUN device and starts the node's event loop on a thread.
    pub fn start(cfg: LaunchConfig) -> Result<TunstackNode, ApiError> {
        cfg.msg.check().map_err(ApiError::Config)?;
        let prepared = launch::<ApiError>(&cfg, |_| {}, |_| Ok(()))?;
        let (handle, join) = prepared.spawn().map_err(ApiError::Io)?;
        Ok(TunstackNode {
            handle,
            join: Some(join),
            read_up_to: AtomicU64::new(0),
        })
    }

    /// The node, for the blocking TCP API and everything else.
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// Queues a reliable message; the outcome comes through [`TunstackNode::wait_delivered`].
    pub fn send_message(
        &self,
        dest: Ipv4Addr,
        text: &str,
        sender: &str,
        channel: &str,
    ) -> Result<MessageId, ApiError> {
        self.handle.with(|n, now| {
            let msg = Message {
                content: text.to_string(),
                sender: sender.to_string(),
                channel_id: channel.to_string(),
                timestamp: rfc3339_now(),
                is_file: false,
            };
            let id = n
                .stack
                .msg
                .send_message(now, dest, msg)
                .map_err(ApiError::Send)?;
            n.messaging.track(id);
            Ok(id)
        })
    }

    /// Waits until the message is acknowledged, or fails with the reason.
    pub fn wait_delivered(&self, id: MessageId, timeout: Duration) -> Result<(), ApiError> {
        let r = self
            .handle
            .wait(Some(timeout), |n, _| match n.messaging.outcome(id) {
                Some(SendOutcome::Pending) | None => None,
                Some(o) => Some(o.clone()),
            });
        match r {
            Some(SendOutcome::Delivered { .. }) => Ok(()),
            Some(SendOutcome::Failed { to, reason }) => Err(ApiError::Failed { to, reason }),
            _ if self.handle.is_stopping() => Err(ApiError::Stopped),
            _ => Err(ApiError::TimedOut),
        }
    }

    /// Offers a file to each recipient (protocol 171); returns one transfer per recipient, whose
    /// outcome [`TunstackNode::wait_transfer`] waits for.
    pub fn send_file(
        &self,
        recipients: &[Ipv4Addr],
        path: &Path,
        channel: &str,
        sender: &str,
    ) -> Result<Vec<TransferId>, ApiError> {
        let abs = std::fs::canonicalize(path).map_err(ApiError::Io)?;
        let source = abs.to_string_lossy().into_owned();
        recipients
            .iter()
            .map(|dst| {
                self.handle
                    .with(|n, now| n.stack.file.send_file(now, *dst, &source, channel, sender))
                    .map_err(ApiError::File)
            })
            .collect()
    }

    /// Waits until a transfer completes (verified by the receiver) or fails.
    pub fn wait_transfer(
        &self,
        id: TransferId,
        timeout: Duration,
    ) -> Result<TransferOutcome, ApiError> {
        match self
            .handle
            .wait(Some(timeout), |n, _| n.files.outcome(id).cloned())
        {
            Some(TransferOutcome::Failed { reason }) => Err(ApiError::TransferFailed(reason)),
            Some(o) => Ok(o),
            None if self.handle.is_stopping() => Err(ApiError::Stopped),
            None => Err(ApiError::TimedOut),
        }
    }

    /// Messages received since the last call, waiting up to `timeout` for the first one.
    pub fn received_messages(&self, timeout: Duration) -> Vec<InboxEntry> {
        let after = self.read_up_to.load(Ordering::SeqCst);
        let got = self
            .handle
            .wait(Some(timeout), |n, _| {
                let v: Vec<InboxEntry> = n.messaging.inbox.since(after).cloned().collect();
                (!v.is_empty()).then_some(v)
            })
            .unwrap_or_default();
        if let Some(last) = got.last() {
            self.read_up_to.store(last.index, Ordering::SeqCst);
        }
        got
    }

    /// Every counter of the node, as `tunstack ctl status --json` shows them.
    pub fn status(&self) -> serde_json::Value {
        crate::node::commands::status_json(&self.handle)
    }

    /// Stops the event loop and releases the device.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.handle.stop();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for TunstackNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}
