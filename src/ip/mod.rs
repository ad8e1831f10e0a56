//! The IPv4 layer: validates every inbound packet, reassembles fragments, answers and sends ICMP,
//! and hands the rest to a transport. The transmit side (`Tx`) builds, fragments and queues
//! outbound packets so that nothing larger than the MTU ever leaves.
//!
//! Transports (TCP, protocols 170 and 171) implement [`Transport`]; this layer never names them.

mod counters;
mod ping;
pub mod pmtu;
mod reassembly;
mod tx;

pub use counters::{DropCounts, DropReason, IcmpCounters, IpCounters};
pub use ping::{PingEvent, PingReply};
pub use reassembly::ReassemblyConfig;
pub use tx::{SendOptions, Tx, TxCounters, TxError};

use crate::rand::Rng;
use crate::time::{earliest, Duration, Instant};
use crate::wire::icmp::{self, IcmpRepr};
use crate::wire::ipv4::{self, Ipv4Repr};
use crate::wire::IpProtocol;
use ping::Pinger;
use reassembly::{Outcome, Reassembler};
use std::net::Ipv4Addr;

/// Address, MTU and limits of one interface.
#[derive(Clone, Debug)]
pub struct IpConfig {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// Largest IP packet (header included) the device carries.
    pub mtu: usize,
    pub reassembly: ReassemblyConfig,
    /// ICMP errors (unreachable, time exceeded) sent per second at most (RFC 1812 4.3.2.8).
    pub icmp_error_rate: u32,
    /// How long a ping waits for its reply before it is reported lost.
    pub ping_timeout: Duration,
}

impl IpConfig {
    pub const MIN_MTU: usize = 576;
    pub const MAX_MTU: usize = 65_535;

    pub fn new(addr: Ipv4Addr, prefix_len: u8, mtu: usize) -> IpConfig {
        IpConfig {
            addr,
            prefix_len,
            mtu,
            reassembly: ReassemblyConfig::default(),
            icmp_error_rate: 100,
            ping_timeout: Duration::from_secs(5),
        }
    }

    fn netmask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix_len.min(32) as u32)
        }
    }

    /// The subnet-directed broadcast address, if the prefix leaves room for one.
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix_len < 31).then(|| Ipv4Addr::from(u32::from(self.addr) | !self.netmask()))
    }

    fn is_broadcast(&self, a: Ipv4Addr) -> bool {
        a == Ipv4Addr::BROADCAST || Some(a) == self.broadcast()
    }
}

/// A validated datagram for a transport: the header (as if unfragmented) and the whole payload.
#[derive(Copy, Clone, Debug)]
pub struct IpPacket<'a> {
    pub header: Ipv4Repr,
    pub payload: &'a [u8],
}

impl IpPacket<'_> {
    pub fn src(&self) -> Ipv4Addr {
        self.header.src
    }
    pub fn dst(&self) -> Ipv4Addr {
        self.header.dst
    }
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.header.protocol)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IcmpErrorKind {
    Unreachable { code: u8, next_hop_mtu: u16 },
    TimeExceeded { code: u8 },
}

/// An ICMP error about a packet we sent, for the transport that sent it.
#[derive(Copy, Clone, Debug)]
pub struct IcmpError<'a> {
    /// Who reported the error (a router or the destination).
    pub reporter: Ipv4Addr,
    pub kind: IcmpErrorKind,
    /// The header of our packet, as quoted; `payload_len` is the length we sent, although
    /// only the start of the payload is quoted.
    pub original: Ipv4Repr,
    /// The start of our packet's payload as quoted (at least 8 bytes: ports and sequence number).
    pub original_payload: &'a [u8],
}

/// What became of an inbound packet.
#[derive(Debug)]
pub enum Received<'a> {
    /// For a transport.
    Deliver(IpPacket<'a>),
    /// An ICMP error for the transport named by `original.protocol`.
    IcmpError(IcmpError<'a>),
    /// Handled here (echo request answered, echo reply matched, fragment stored).
    Consumed,
    Dropped(DropReason),
}

/// A protocol above IP. The stack routes packets by protocol number to its transports.
pub trait Transport {
    /// Takes a packet addressed to this transport's protocol. Returns false when the transport does
    /// not serve the protocol at all, so the stack answers with ICMP protocol unreachable.
    fn handle_packet(&mut self, now: Instant, pkt: &IpPacket<'_>, tx: &mut Tx) -> bool;

    /// An ICMP error quoting a packet this transport sent.
    fn handle_icmp_error(&mut self, _now: Instant, _err: &IcmpError<'_>, _tx: &mut Tx) {}

    /// Runs timers that are due and sends whatever is ready. Cheap when nothing is due.
    fn poll(&mut self, _now: Instant, _tx: &mut Tx) {}

    /// When `poll` next has work, if ever.
    fn poll_at(&self) -> Option<Instant> {
        None
    }
}

/// A token bucket refilled once per second; enough for rate-limiting ICMP errors.
#[derive(Debug)]
struct RateLimit {
    per_second: u32,
    tokens: u32,
    window_start: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            tokens: per_second,
            window_start: Instant::ZERO,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if now - self.window_start >= Duration::from_secs(1) {
            self.window_start = now;
            self.tokens = self.per_second;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// The receive side of IPv4 plus ICMP.
#[derive(Debug)]
pub struct IpLayer {
    cfg: IpConfig,
    counters: IpCounters,
    reassembler: Reassembler,
    pinger: Pinger,
    icmp_errors: RateLimit,
}

impl IpLayer {
    pub fn new(cfg: IpConfig, rng: &mut Rng) -> IpLayer {
        IpLayer {
            reassembler: Reassembler::new(cfg.reassembly.clone()),
            pinger: Pinger::new(rng.next_u16(), cfg.ping_timeout),
            icmp_errors: RateLimit::new(cfg.icmp_error_rate),
            counters: IpCounters::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &IpConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &IpCounters {
        &self.counters
    }

    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.drops.add(reason);
    }

    /// Validates one inbound packet and decides where it goes. Never panics, whatever `buf` holds.
    pub fn receive<'a>(&'a mut self, now: Instant, buf: &'a [u8], tx: &mut Tx) -> Received<'a> {
        self.counters.packets_in += 1;
        self.counters.bytes_in += buf.len() as u64;
        let (header, payload) = match Ipv4Repr::parse(buf) {
            Ok(x) => x,
            Err(e) => return self.drop(DropReason::from(e)),
        };
        if header.dst != self.cfg.addr && !self.cfg.is_broadcast(header.dst) {
            return self.drop(DropReason::NotForUs);
        }
        if header.ttl == 0 {
            return self.drop(DropReason::TtlExpired);
        }
        if header.src.is_broadcast() || header.src.is_multicast() {
            return self.drop(DropReason::BadSource);
        }
        if header.is_fragment() {
            self.counters.fragments_in += 1;
            let outcome = self
                .reassembler
                .add(now, &header, payload, &mut self.counters.drops);
            return match outcome {
                Outcome::Incomplete => Received::Consumed,
                Outcome::Dropped => Received::Dropped(DropReason::BadFragment),
                Outcome::Complete(whole, data) => {
                    self.counters.reassembled += 1;
                    Self::dispatch(
                        &self.cfg,
                        &mut self.counters,
                        &mut self.pinger,
                        now,
                        whole,
                        data,
                        tx,
                    )
                }
            };
        }
        Self::dispatch(
            &self.cfg,
            &mut self.counters,
            &mut self.pinger,
            now,
            header,
            payload,
            tx,
        )
    }

    fn drop(&mut self, reason: DropReason) -> Received<'static> {
        self.counters.drops.add(reason);
        Received::Dropped(reason)
    }

    // An associated function so that a reassembled payload (borrowed from the reassembler) and the
    // counters can be used together.
    fn dispatch<'a>(
        cfg: &IpConfig,
        counters: &mut IpCounters,
        pinger: &mut Pinger,
        now: Instant,
        header: Ipv4Repr,
        payload: &'a [u8],
        tx: &mut Tx,
    ) -> Received<'a> {
        if header.protocol != u8::from(IpProtocol::Icmp) {
            counters.delivered += 1;
            return Received::Deliver(IpPacket { header, payload });
        }
        let msg = match IcmpRepr::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                let reason = match e {
                    icmp::ParseError::TooShort => DropReason::IcmpTooShort,
                    icmp::ParseError::BadChecksum => DropReason::IcmpBadChecksum,
                };
                counters.drops.add(reason);
                return Received::Dropped(reason);
            }
        };
        match msg {
            IcmpRepr::EchoRequest { ident, seq, data } => {
                counters.icmp.echo_requests_in += 1;
                // Like Linux by default, broadcast pings go unanswered (smurf amplification).
                if header.dst != cfg.addr {
                    counters.drops.add(DropReason::BroadcastEcho);
                    return Received::Dropped(DropReason::BroadcastEcho);
                }
                let reply = IcmpRepr::EchoReply { ident, seq, data };
                match tx.send(
                    header.src,
                    IpProtocol::Icmp.into(),
                    reply.buffer_len(),
                    |b| reply.emit(b),
                ) {
                    Ok(()) => counters.icmp.echo_replies_out += 1,
                    Err(_) => counters.icmp.replies_not_sent += 1,
                }
                Received::Consumed
            }
            IcmpRepr::EchoReply { ident, seq, data } => {
                counters.icmp.echo_replies_in += 1;
                pinger.handle_reply(now, header.src, ident, seq, data.len(), header.ttl);
                Received::Consumed
            }
            IcmpRepr::DstUnreachable {
                code,
                next_hop_mtu,
                original,
            } => {
                counters.icmp.unreachable_in += 1;
                Self::quoted_error(
                    counters,
                    header.src,
                    IcmpErrorKind::Unreachable { code, next_hop_mtu },
                    original,
                )
            }
            IcmpRepr::TimeExceeded { code, original } => {
                counters.icmp.time_exceeded_in += 1;
                Self::quoted_error(
                    counters,
                    header.src,
                    IcmpErrorKind::TimeExceeded { code },
                    original,
                )
            }
            IcmpRepr::Other { .. } => {
                counters.icmp.other_in += 1;
                Received::Consumed
            }
        }
    }

    fn quoted_error<'a>(
        counters: &mut IpCounters,
        reporter: Ipv4Addr,
        kind: IcmpErrorKind,
        quoted: &'a [u8],
    ) -> Received<'a> {
        // The quote is our header plus at least 8 bytes; its total length may exceed the quote, so
        // parse the header alone.
        let ihl = quoted.first().map(|b| (b & 0x0f) as usize * 4).unwrap_or(0);
        if ihl < ipv4::HEADER_LEN || quoted.len() < ihl + 8 {
            counters.drops.add(DropReason::IcmpTooShort);
            return Received::Dropped(DropReason::IcmpTooShort);
        }
        let mut hdr = [0u8; 60];
        hdr[..ihl].copy_from_slice(&quoted[..ihl]);
        // Fix up the quoted total length so the header parses on its own.
        hdr[2..4].copy_from_slice(&(ihl as u16).to_be_bytes());
        hdr[10..12].copy_from_slice(&[0, 0]);
        let c = crate::wire::checksum::checksum(&hdr[..ihl]);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        match Ipv4Repr::parse(&hdr[..ihl]) {
            Ok((mut original, _)) => Received::IcmpError(IcmpError {
                // The length we sent, which path MTU discovery needs; only the header was cut.
                original: {
                    let total = u16::from_be_bytes([quoted[2], quoted[3]]) as usize;
                    original.payload_len = total.saturating_sub(ihl);
                    original
                },
                reporter,
                kind,
                original_payload: &quoted[ihl..],
            }),
            Err(_) => {
                counters.drops.add(DropReason::IcmpTooShort);
                Received::Dropped(DropReason::IcmpTooShort)
            }
        }
    }

    /// Sends an ICMP destination unreachable about `offending` (its header and payload start),
    /// unless RFC 1122 3.2.2 forbids it or the rate limit is spent.
    pub fn send_unreachable(
        &mut self,
        now: Instant,
        code: u8,
        offending: &IpPacket<'_>,
        tx: &mut Tx,
    ) {
        let h = &offending.header;
        if self.cfg.is_broadcast(h.dst) || h.frag_offset != 0 || h.src.is_unspecified() {
            return;
        }
        if !self.icmp_errors.take(now) {
            self.counters.icmp.errors_rate_limited += 1;
            return;
        }
        // Quote the header and the first 8 bytes of the payload (RFC 792).
        let quote_len = offending.payload.len().min(8);
        let mut quote = [0u8; ipv4::HEADER_LEN + 8];
        let mut qh = *h;
        qh.header_len = ipv4::HEADER_LEN;
        qh.emit(&mut quote);
        quote[ipv4::HEADER_LEN..ipv4::HEADER_LEN + quote_len]
            .copy_from_slice(&offending.payload[..quote_len]);
        let msg = IcmpRepr::DstUnreachable {
            code,
            next_hop_mtu: 0,
            original: &quote[..ipv4::HEADER_LEN + quote_len],
        };
        if tx
            .send(h.src, IpProtocol::Icmp.into(), msg.buffer_len(), |b| {
                msg.emit(b)
            })
            .is_ok()
        {
            self.counters.icmp.unreachable_out += 1;
        }
    }

    /// Sends an echo request with `payload_len` bytes of pattern; the reply or the timeout comes
    /// back through [`IpLayer::poll_ping_event`]. Returns the sequence number.
    pub fn ping(
        &mut self,
        now: Instant,
        dst: Ipv4Addr,
        payload_len: usize,
        tx: &mut Tx,
    ) -> Result<u16, TxError> {
        let seq = self.pinger.next_seq();
        let mut data = vec![0u8; payload_len];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let msg = IcmpRepr::EchoRequest {
            ident: self.pinger.ident(),
            seq,
            data: &data,
        };
        tx.send(dst, IpProtocol::Icmp.into(), msg.buffer_len(), |b| {
            msg.emit(b)
        })?;
        self.pinger.sent(now, dst, seq);
        self.counters.icmp.echo_requests_out += 1;
        Ok(seq)
    }

    pub fn poll_ping_event(&mut self) -> Option<PingEvent> {
        self.pinger.poll_event()
    }

    /// Expires reassembly buffers and pings.
    pub fn poll(&mut self, now: Instant) {
        self.reassembler.expire(now, &mut self.counters.drops);
        self.pinger.expire(now);
    }

    pub fn poll_at(&self) -> Option<Instant> {
        earliest(self.reassembler.poll_at(), self.pinger.poll_at())
    }

    /// Bytes currently held for reassembly.
    pub fn reassembly_bytes(&self) -> usize {
        self.reassembler.bytes()
    }
}

#[cfg(test)]
mod tests;
