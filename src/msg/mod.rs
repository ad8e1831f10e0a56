//! Protocol 170: reliable messages. Placeholder: the implementation lands with its issue.

use crate::ip::{IpPacket, Transport, Tx};
use crate::rand::Rng;
use crate::time::Instant;
use std::net::Ipv4Addr;

#[derive(Clone, Debug, Default)]
pub struct MsgConfig {}

#[derive(Debug)]
pub struct MsgEndpoint {}

impl MsgEndpoint {
    pub fn new(_cfg: MsgConfig, _addr: Ipv4Addr, _rng: Rng) -> MsgEndpoint {
        MsgEndpoint {}
    }
}

impl Transport for MsgEndpoint {
    fn handle_packet(&mut self, _now: Instant, _pkt: &IpPacket<'_>, _tx: &mut Tx) -> bool {
        false
    }
}
