//! The session protocol (`tunstack session`): a framed, checksummed, acknowledged message
//! protocol that runs inside any reliable byte stream (our TCP, or the kernel's).
//!
//! - [`wire`]: frame layout, CRC-32, handshake and error payloads.
//! - [`conn`]: one session as a sans-IO state machine (handshake, step and burst modes,
//!   resends, keep-alive, disconnect).
//! - [`run`]: drivers that join a state machine to a blocking stream, stdin and stdout.

pub mod conn;
pub mod run;
pub mod wire;

pub use conn::{
    ClientConfig, Event, Negotiated, ServerConfig, Session, SessionError, Stats, Timing,
};
pub use wire::Mode;
