//! tunstack: a userspace TCP/IP stack on a Linux TUN device.
//!
//! Layers, bottom up; a layer only ever uses the ones below it:
//!
//! - [`time`], [`rand`]: time as a value and the injected random source.
//! - [`wire`]: packet formats, parse and emit, no state.
//! - [`ip`]: IPv4 validation, reassembly, ICMP, and the transmit queue ([`ip::Tx`]).
//! - [`tcp`], [`msg`] (protocol 170), [`file`] (protocol 171): transports, as sans-IO state machines.
//! - [`stack`]: one node's layers composed; takes packets and `now`, gives packets and a deadline.
//! - [`impair`], [`sim`]: the impairment engine and the deterministic simulator built on it.
//! - [`node`]: a running node (stack + apps) shared between threads; the console/ctl commands.
//! - [`services`], [`api`]: TCP services (`--serve`), the blocking TCP API and the library API.
//! - `device`, `driver`, `cli`: the only code that touches the TUN device, clocks, sockets and files.

pub mod api;
pub mod cat;
pub mod cc;
pub mod cli;
pub mod device;
pub mod driver;
pub mod duplex;
pub mod file;
pub mod impair;
pub mod ip;
pub mod msg;
pub mod node;
pub mod rand;
pub mod relay;
pub mod rtt;
pub mod services;
pub mod session;
pub mod sim;
pub mod stack;
pub mod storage;
pub mod tcp;
pub mod time;
pub mod wire;
