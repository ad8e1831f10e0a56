//! Protocol 171: file transfer. Placeholder: the implementation lands with its issue.

use crate::ip::{IpPacket, Transport, Tx};
use crate::rand::Rng;
use crate::time::Instant;
use std::net::Ipv4Addr;

#[derive(Clone, Debug, Default)]
pub struct FileConfig {}

#[derive(Debug)]
pub struct FileEndpoint {}

impl FileEndpoint {
    pub fn new(_cfg: FileConfig, _addr: Ipv4Addr, _rng: Rng) -> FileEndpoint {
        FileEndpoint {}
    }
}

impl Transport for FileEndpoint {
    fn handle_packet(&mut self, _now: Instant, _pkt: &IpPacket<'_>, _tx: &mut Tx) -> bool {
        false
    }
}
