//! The whole sans-IO stack of one node: IP and ICMP, TCP, protocols 170 and 171, composed.
//!
//! Inputs: `handle_packet(now, bytes)`. Outputs: `transmit()` packets and `poll_at()` deadline.
//! `poll(now)` runs timers and lets every transport send what is ready. Nothing in here reads a
//! clock, a socket or a file.

use crate::file::{FileConfig, FileEndpoint};
use crate::ip::{IpConfig, IpLayer, IpPacket, Received, Transport, Tx};
use crate::msg::{MsgConfig, MsgEndpoint};
use crate::rand::Rng;
use crate::tcp::{Tcp, TcpConfig};
use crate::time::{earliest, Instant};
use crate::wire::icmp::unreachable;
use crate::wire::IpProtocol;
use std::net::Ipv4Addr;

#[derive(Clone, Debug)]
pub struct StackConfig {
    pub ip: IpConfig,
    pub tcp: TcpConfig,
    pub msg: MsgConfig,
    pub file: FileConfig,
    /// Seeds every random choice the stack makes (ISNs, identifiers).
    pub seed: u64,
}

impl StackConfig {
    pub fn new(addr: Ipv4Addr, prefix_len: u8, mtu: usize, seed: u64) -> StackConfig {
        StackConfig {
            ip: IpConfig::new(addr, prefix_len, mtu),
            tcp: TcpConfig::default(),
            msg: MsgConfig::default(),
            file: FileConfig::default(),
            seed,
        }
    }
}

#[derive(Debug)]
pub struct Stack {
    pub ip: IpLayer,
    pub tx: Tx,
    pub tcp: Tcp,
    pub msg: MsgEndpoint,
    pub file: FileEndpoint,
}

impl Stack {
    pub fn new(cfg: StackConfig) -> Stack {
        let mut rng = Rng::new(cfg.seed);
        let addr = cfg.ip.addr;
        let tx = Tx::new(addr, cfg.ip.mtu, rng.next_u16());
        let ip = IpLayer::new(cfg.ip, &mut rng);
        Stack {
            tcp: Tcp::new(cfg.tcp, addr, rng.fork()),
            msg: MsgEndpoint::new(cfg.msg, addr, rng.fork()),
            file: FileEndpoint::new(cfg.file, addr, rng.fork()),
            ip,
            tx,
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.ip.config().addr
    }

    /// Takes one inbound IP packet.
    pub fn handle_packet(&mut self, now: Instant, buf: &[u8]) {
        let pkt = match self.ip.receive(now, buf, &mut self.tx) {
            Received::Deliver(p) => p,
            Received::IcmpError(err) => {
                match IpProtocol::from(err.original.protocol) {
                    IpProtocol::Tcp => self.tcp.handle_icmp_error(now, &err, &mut self.tx),
                    IpProtocol::Msg => self.msg.handle_icmp_error(now, &err, &mut self.tx),
                    IpProtocol::File => self.file.handle_icmp_error(now, &err, &mut self.tx),
                    _ => {}
                }
                return;
            }
            Received::Consumed | Received::Dropped(_) => return,
        };
        let taken = match pkt.protocol() {
            IpProtocol::Tcp => self.tcp.handle_packet(now, &pkt, &mut self.tx),
            IpProtocol::Msg => self.msg.handle_packet(now, &pkt, &mut self.tx),
            IpProtocol::File => self.file.handle_packet(now, &pkt, &mut self.tx),
            _ => false,
        };
        if !taken {
            // Copy what the error quotes so the borrow of the reassembly buffer ends here.
            let header = pkt.header;
            let mut head = [0u8; 8];
            let n = pkt.payload.len().min(8);
            head[..n].copy_from_slice(&pkt.payload[..n]);
            self.ip.count_drop(crate::ip::DropReason::UnknownProtocol);
            let quoted = IpPacket {
                header,
                payload: &head[..n],
            };
            self.ip
                .send_unreachable(now, unreachable::PROTOCOL, &quoted, &mut self.tx);
        }
    }

    /// Runs every layer's due timers and lets transports send what is ready.
    pub fn poll(&mut self, now: Instant) {
        self.ip.poll(now);
        self.tcp.poll(now, &mut self.tx);
        self.msg.poll(now, &mut self.tx);
        self.file.poll(now, &mut self.tx);
    }

    /// The earliest instant `poll` has work to do.
    pub fn poll_at(&self) -> Option<Instant> {
        let t = earliest(self.ip.poll_at(), self.tcp.poll_at());
        let t = earliest(t, self.msg.poll_at());
        earliest(t, self.file.poll_at())
    }

    /// The next outbound packet; hand the buffer back with `recycle`.
    pub fn transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop()
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.tx.recycle(buf);
    }
}

impl crate::sim::Host for Stack {
    fn address(&self) -> Ipv4Addr {
        self.addr()
    }
    fn receive(&mut self, now: Instant, packet: &[u8]) {
        self.handle_packet(now, packet);
    }
    fn poll(&mut self, now: Instant) {
        Stack::poll(self, now);
    }
    fn transmit(&mut self) -> Option<Vec<u8>> {
        Stack::transmit(self)
    }
    fn recycle(&mut self, buf: Vec<u8>) {
        Stack::recycle(self, buf);
    }
    fn poll_at(&self) -> Option<Instant> {
        Stack::poll_at(self)
    }
}
