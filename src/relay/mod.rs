//! The relay mesh (`tunstack relay`): relay servers that find each other by gossip, keep a
//! directory of users, and forward user messages server to server, exactly once.
//!
//! - [`wire`]: the frames (6-byte header, typed bodies), parse and emit.
//! - [`server`], [`client`]: sans-IO state machines. They take `now` and bytes per connection,
//!   and give bytes per connection and requests to open or close connections; no clock, socket,
//!   file or OS randomness inside.
//! - [`run`]: the runner that drives a state machine over byte streams (kernel TCP or ours).

pub mod client;
pub mod run;
pub mod server;
pub mod wire;

/// A connection as the state machines know it. Whoever opens it names it: the runner numbers
/// accepted connections from 1, and a state machine numbers the ones it asks to open from
/// [`ConnId::DIALED_BASE`], so the two never collide.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ConnId(pub u64);

impl ConnId {
    pub const DIALED_BASE: u64 = 1 << 40;
}

/// What a state machine asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Write these bytes to the connection.
    Send(ConnId, Vec<u8>),
    /// Open a connection to `HOST:PORT` and call it `ConnId`; report `handle_connected` or
    /// `handle_connect_failed`.
    Connect(ConnId, String),
    /// Close the connection (after what was sent before). No `handle_closed` follows.
    Close(ConnId),
}

/// The driver-facing side shared by the server and the client, so one runner and one simulator
/// drive both.
pub trait Machine: Send {
    fn handle_accepted(&mut self, now: crate::time::Instant, conn: ConnId);
    fn handle_connected(&mut self, now: crate::time::Instant, conn: ConnId);
    fn handle_connect_failed(&mut self, now: crate::time::Instant, conn: ConnId);
    fn handle_bytes(&mut self, now: crate::time::Instant, conn: ConnId, bytes: &[u8]);
    /// The peer closed or the connection broke.
    fn handle_closed(&mut self, now: crate::time::Instant, conn: ConnId);
    /// Harmless when called early.
    fn handle_timeout(&mut self, now: crate::time::Instant);
    fn poll_output(&mut self) -> Option<Output>;
    fn poll_at(&self) -> Option<crate::time::Instant>;
}
