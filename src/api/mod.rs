//! The library API: run a node from a program and use it as the CLI does.
//!
//! - [`node::TunstackNode`]: start a node on a TUN device, send messages and files, read the
//!   inbox, status, stop.
//! - [`tcp`]: blocking `TcpStream` / `TcpListener` on a running node.

pub mod node;
pub mod tcp;
