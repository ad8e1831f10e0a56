//! The transmit side of IPv4: builds headers, fragments what does not fit, and queues packets in
//! reusable buffers for the driver to write. Nothing larger than the MTU is ever queued.

use crate::wire::ipv4::{self, Ipv4Repr};
use std::collections::VecDeque;
use std::net::Ipv4Addr;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TxError {
    /// The datagram does not fit in the MTU and may not be fragmented, or exceeds 64 KiB.
    TooBig,
    /// The queue is full: the device is not keeping up. The caller retries later.
    QueueFull,
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::TooBig => write!(f, "datagram larger than the MTU and not fragmentable"),
            TxError::QueueFull => write!(f, "transmit queue full"),
        }
    }
}

impl std::error::Error for TxError {}

#[derive(Copy, Clone, Debug)]
pub struct SendOptions {
    /// Set DF and refuse to fragment (TCP sizes its segments itself).
    pub dont_fragment: bool,
    pub ttl: u8,
}

impl Default for SendOptions {
    fn default() -> SendOptions {
        SendOptions {
            dont_fragment: false,
            ttl: ipv4::DEFAULT_TTL,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TxCounters {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub fragmented: u64,
    pub fragments_out: u64,
    pub too_big: u64,
    pub queue_full: u64,
}

#[derive(Debug)]
pub struct Tx {
    src: Ipv4Addr,
    mtu: usize,
    next_ident: u16,
    queue: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    max_queue: usize,
    scratch: Vec<u8>,
    counters: TxCounters,
}

impl Tx {
    /// Packets the queue holds before `send` refuses more.
    pub const DEFAULT_MAX_QUEUE: usize = 16_384;

    pub fn new(src: Ipv4Addr, mtu: usize, first_ident: u16) -> Tx {
        Tx {
            src,
            mtu: mtu.clamp(ipv4::HEADER_LEN + 8, ipv4::MAX_DATAGRAM),
            next_ident: first_ident,
            queue: VecDeque::new(),
            pool: Vec::new(),
            max_queue: Self::DEFAULT_MAX_QUEUE,
            scratch: Vec::new(),
            counters: TxCounters::default(),
        }
    }

    pub fn src(&self) -> Ipv4Addr {
        self.src
    }

    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The largest payload that leaves in one unfragmented packet.
    pub fn max_payload(&self) -> usize {
        self.mtu - ipv4::HEADER_LEN
    }

    pub fn counters(&self) -> &TxCounters {
        &self.counters
    }

    pub fn set_max_queue(&mut self, n: usize) {
        self.max_queue = n.max(1);
    }

    /// Room left in the queue, in packets.
    pub fn room(&self) -> usize {
        self.max_queue.saturating_sub(self.queue.len())
    }

    /// Sends a datagram whose payload `fill` writes into the slice it is given (exactly
    /// `payload_len` bytes). Fragments it when it exceeds the MTU.
    pub fn send(
        &mut self,
        dst: Ipv4Addr,
        protocol: u8,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), TxError> {
        self.send_with(dst, protocol, payload_len, SendOptions::default(), fill)
    }

    pub fn send_with(
        &mut self,
        dst: Ipv4Addr,
        protocol: u8,
        payload_len: usize,
        opts: SendOptions,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), TxError> {
        if payload_len + ipv4::HEADER_LEN > ipv4::MAX_DATAGRAM {
            self.counters.too_big += 1;
            return Err(TxError::TooBig);
        }
        let mut header = Ipv4Repr::new(self.src, dst, protocol, payload_len);
        header.ttl = opts.ttl;
        header.dont_fragment = opts.dont_fragment;
        header.ident = self.next_ident;
        let total = ipv4::HEADER_LEN + payload_len;
        if total <= self.mtu {
            if self.queue.len() >= self.max_queue {
                self.counters.queue_full += 1;
                return Err(TxError::QueueFull);
            }
            self.next_ident = self.next_ident.wrapping_add(1);
            let mut buf = self.pool.pop().unwrap_or_default();
            buf.clear();
            buf.resize(total, 0);
            header.emit(&mut buf);
            fill(&mut buf[ipv4::HEADER_LEN..]);
            self.push(buf);
            return Ok(());
        }
        if opts.dont_fragment {
            self.counters.too_big += 1;
            return Err(TxError::TooBig);
        }
        // Fragment: every fragment but the last carries a multiple of 8 bytes (RFC 791).
        let per_frag = (self.mtu - ipv4::HEADER_LEN) & !7;
        let n_frags = payload_len.div_ceil(per_frag);
        if self.queue.len() + n_frags > self.max_queue {
            self.counters.queue_full += 1;
            return Err(TxError::QueueFull);
        }
        self.next_ident = self.next_ident.wrapping_add(1);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(payload_len, 0);
        fill(&mut scratch);
        for (i, chunk) in scratch.chunks(per_frag).enumerate() {
            let mut frag = header;
            frag.frag_offset = i * per_frag;
            frag.more_fragments = i + 1 < n_frags;
            frag.payload_len = chunk.len();
            let mut buf = self.pool.pop().unwrap_or_default();
            buf.clear();
            buf.resize(ipv4::HEADER_LEN + chunk.len(), 0);
            frag.emit(&mut buf);
            buf[ipv4::HEADER_LEN..].copy_from_slice(chunk);
            self.push(buf);
            self.counters.fragments_out += 1;
        }
        self.scratch = scratch;
        self.counters.fragmented += 1;
        Ok(())
    }

    fn push(&mut self, buf: Vec<u8>) {
        self.counters.packets_out += 1;
        self.counters.bytes_out += buf.len() as u64;
        self.queue.push_back(buf);
    }

    /// The next packet to write to the device. Give the buffer back with `recycle`.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        self.queue.pop_front()
    }

    /// Returns a buffer to the pool so the steady state allocates nothing.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 1024 {
            self.pool.push(buf);
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
