//! TCP (RFC 9293). Placeholder: the implementation lands with the TCP issue.

use crate::ip::{IpPacket, Transport, Tx};
use crate::rand::Rng;
use crate::time::Instant;
use std::net::Ipv4Addr;

#[derive(Clone, Debug, Default)]
pub struct TcpConfig {}

#[derive(Debug)]
pub struct Tcp {}

impl Tcp {
    pub fn new(_cfg: TcpConfig, _addr: Ipv4Addr, _rng: Rng) -> Tcp {
        Tcp {}
    }
}

impl Transport for Tcp {
    fn handle_packet(&mut self, _now: Instant, _pkt: &IpPacket<'_>, _tx: &mut Tx) -> bool {
        false
    }
}
