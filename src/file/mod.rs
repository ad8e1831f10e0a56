//! Protocol 171: file transfer, as a sans-IO state machine over a [`store::FileStore`].
//!
//! Sender: OFFER (name, size, chunk size, SHA-256) → the receiver ACCEPTs with the chunk ranges
//! it already holds (resume) or REFUSEs with a reason → DATA chunks, each sent under a new packet
//! number, paced by a congestion window (slow start, then AIMD; halved once per round trip of
//! loss) → the receiver ACKs cumulatively and selectively, echoing the largest packet number, so
//! a chunk whose packet is three numbers behind an acknowledged one is resent → when the store
//! has verified the hash and renamed the file, the receiver sends DONE.
//!
//! Resume rule: the receiver's store checkpoints which byte ranges are durable. A receiver that
//! restarted knows no transfer, answers DATA with RESET, and the sender offers again; a sender
//! that restarted offers again under a new id. Either way the new ACCEPT lists what the store
//! kept, and only the rest is sent. Memory per transfer is bounded by the window, not the size.
//!
//! Path MTU (RFC 1191): DATA leaves with DF set and chunks are sized to the path MTU known for
//! the destination. An ICMP "fragmentation needed" quoting our DATA lowers that MTU; a transfer
//! whose chunks no longer fit is offered again under a new id with smaller chunks (its progress
//! carried over in bytes, as on a sender restart), so no chunk is ever fragmented on the way. A
//! path that swallows large DF packets without a word (a black hole) is detected by timeouts
//! without progress; the transfer then clears DF and lets routers fragment.

pub mod name;
pub mod ranges;
pub mod store;
pub mod wire;

use crate::cc::{self, Congestion, CongestionControl};
use crate::ip::pmtu::PathMtuCache;
use crate::ip::{IcmpError, IcmpErrorKind, IpPacket, SendOptions, Transport, Tx};
use crate::rand::Rng;
use crate::rtt::RttEstimator;
use crate::time::{earliest, Duration, Instant};
use ranges::RangeSet;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use store::{FileStore, Handle, IncomingMeta, MemStore, StoreError};
use wire::{Header, Repr, WireError, DATA_OVERHEAD, HEADER_LEN};

pub const PROTOCOL: u8 = 171;

/// Probes in a row without an ACK of new data; after that only the retransmission timeout acts.
const MAX_PROBES: u32 = 3;

/// The smallest chunk offered, however small the path MTU (smaller paths fragment).
const MIN_CHUNK: usize = 64;

/// Timeouts in a row without progress after which a DF path is taken for a black hole.
const BLACK_HOLE_TIMEOUTS: u32 = 2;

/// Bytes of a DATA packet around its chunk: IPv4 header, our header, id and chunk index.
const DATA_PACKET_OVERHEAD: usize = crate::wire::ipv4::HEADER_LEN + HEADER_LEN + DATA_OVERHEAD;

/// The chunk size whose DATA packets fill `mtu` exactly.
/// How many chunks a transfer may have in flight: its congestion window in chunks, at least
/// two, at most `max_window`.
fn window(o: &Outgoing, cfg: &FileConfig) -> usize {
    (o.cc.cwnd() / (o.chunk_size as usize).max(1)).clamp(2, cfg.max_window.max(2) as usize)
}

fn chunk_for_mtu(mtu: usize) -> u32 {
    mtu.saturating_sub(DATA_PACKET_OVERHEAD).max(MIN_CHUNK) as u32
}

#[derive(Clone, Debug)]
pub struct FileConfig {
    pub node_id: u64,
    pub boot_epoch: u64,
    /// Offers of larger files are refused.
    pub max_file_size: u64,
    pub max_transfers: usize,
    pub max_retries: u32,
    pub backoff: f64,
    pub initial_rto: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// Congestion control of each outgoing transfer (the same algorithms as TCP's, counted in
    /// chunks of the transfer): BBR by default, which random loss on a lab path does not shrink.
    pub congestion: Congestion,
    /// The congestion window never exceeds this many chunks.
    pub max_window: u32,
    /// How far beyond the first missing chunk a receiver accepts chunks.
    pub receive_window: u32,
    /// Chunks written between checkpoints of the store.
    pub checkpoint_every: u32,
    /// An incoming transfer with no packet for this long is released (kept for resume).
    pub idle_timeout: Duration,
}

impl Default for FileConfig {
    fn default() -> FileConfig {
        FileConfig {
            node_id: 0,
            boot_epoch: 1,
            max_file_size: 4 << 30,
            max_transfers: 64,
            max_retries: 8,
            backoff: 1.5,
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(10),
            congestion: Congestion::default(),
            max_window: 448,
            receive_window: 4096,
            checkpoint_every: 2048,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TransferId(pub u64);

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Send,
    Receive,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum FileEvent {
    /// An offer arrived and was accepted (`resumed_bytes` already held).
    Offered {
        id: TransferId,
        from: Ipv4Addr,
        name: String,
        size: u64,
        channel: String,
        sender: String,
        resumed_bytes: u64,
    },
    /// Our offer was accepted.
    Started {
        id: TransferId,
        to: Ipv4Addr,
        resumed_bytes: u64,
    },
    Completed {
        id: TransferId,
        direction: Direction,
        peer: Ipv4Addr,
        name: String,
        path: String,
        bytes: u64,
        sha256: String,
    },
    Failed {
        id: TransferId,
        peer: Ipv4Addr,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileError {
    Store(StoreError),
    BadDestination(Ipv4Addr),
    TooManyTransfers,
    TooLarge,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Store(e) => write!(f, "{e}"),
            FileError::BadDestination(a) => write!(f, "cannot send to {a}"),
            FileError::TooManyTransfers => write!(f, "too many transfers in progress"),
            FileError::TooLarge => write!(f, "file larger than the configured limit"),
        }
    }
}

impl std::error::Error for FileError {}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransferInfo {
    pub id: TransferId,
    pub direction: Direction,
    pub peer: Ipv4Addr,
    pub name: String,
    pub size: u64,
    pub bytes_done: u64,
    pub state: &'static str,
    /// Bytes per second since the transfer started.
    pub rate: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileCounters {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bad_checksum: u64,
    pub bad_length: u64,
    pub bad_version: u64,
    pub bad_payload: u64,
    pub unknown_type: u64,
    pub from_self: u64,
    pub data_out: u64,
    pub data_bytes_out: u64,
    pub retransmits: u64,
    pub timeouts: u64,
    /// Probe timeouts: the oldest packet in flight resent to get an ACK.
    pub probes: u64,
    pub data_in: u64,
    pub duplicate_chunks: u64,
    pub out_of_window: u64,
    pub acks_out: u64,
    pub resets: u64,
    pub refused: u64,
    /// Offers refused because of `max_file_size` / `max_transfers` (also counted in `refused`).
    pub cap_file_size: u64,
    pub cap_transfers: u64,
    pub completed: u64,
    pub failed: u64,
    pub hash_mismatch: u64,
    pub store_errors: u64,
    pub tx_queue_full: u64,
    /// ICMP errors quoting one of our packets.
    pub icmp_errors: u64,
    /// "Fragmentation needed" reports that lowered a destination's path MTU.
    pub pmtu_lowered: u64,
    /// Transfers offered again with smaller chunks after the path MTU fell.
    pub rechunked: u64,
    /// Transfers that stopped setting DF after timeouts suggested a PMTU black hole.
    pub pmtu_black_holes: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum OutState {
    Offering,
    Sending,
    /// Everything acknowledged; waiting for DONE.
    Finishing,
}

#[derive(Debug)]
struct Outgoing {
    /// The application's handle for the transfer.
    id: u64,
    /// The id on the wire: `id` until a re-chunk for a smaller path MTU gives a new one.
    wire_id: u64,
    peer: Ipv4Addr,
    handle: Handle,
    name: String,
    size: u64,
    sha256: [u8; 32],
    chunk_size: u32,
    n_chunks: u32,
    channel: String,
    sender: String,
    state: OutState,
    acked: RangeSet,
    /// (packet number, chunk, sent at), oldest first.
    inflight: VecDeque<(u32, u32, Instant)>,
    lost: VecDeque<u32>,
    next_new: u32,
    next_pn: u32,
    /// In bytes, with the chunk size as its segment size.
    cc: Box<dyn CongestionControl>,
    recovery_pn: u32,
    rtt: RttEstimator,
    /// The last round trip measured (RACK uses the larger of it and the smoothed one).
    latest_rtt: Duration,
    /// Consecutive timeouts without progress (offers, data or the wait for DONE).
    tries: u32,
    due: Instant,
    /// When the last DATA left: the probe timeout runs from here.
    last_send: Instant,
    /// Probes sent since the last acknowledgement of new data.
    probes: u32,
    started: Instant,
    /// DATA leaves with DF set (path MTU discovery); cleared on a suspected black hole.
    df: bool,
    /// `Started` was reported; a re-chunk does not report it again.
    announced: bool,
}

impl Outgoing {
    /// The probe timeout: one smoothed round trip plus four deviations (at least 1 ms), doubled
    /// for each probe already unanswered. Shorter than the retransmission timeout, whose floor
    /// (`min_rto`) is far above a lab's round trip.
    fn pto(&self) -> Duration {
        let base = match self.rtt.srtt() {
            Some(s) => s + (self.rtt.rttvar() * 4).max(Duration::from_millis(1)),
            None => self.rtt.rto(),
        };
        (base * (1u32 << self.probes.min(10))).min(self.rtt.rto())
    }
}

#[derive(Debug)]
struct Incoming {
    id: u64,
    peer: Ipv4Addr,
    handle: Handle,
    name: String,
    size: u64,
    sha256: [u8; 32],
    chunk_size: u32,
    n_chunks: u32,
    have: RangeSet,
    largest_pn: u32,
    ack_pending: bool,
    /// DATA packets since the last ACK.
    since_ack: u32,
    /// An ACK already left in the middle of this poll's batch.
    early_ack: bool,
    since_checkpoint: u32,
    last_activity: Instant,
    started: Instant,
    resumed: u64,
}

impl Incoming {
    fn held_bytes(&self) -> Vec<(u64, u64)> {
        let cs = self.chunk_size as u64;
        self.have
            .ranges()
            .iter()
            .map(|&(a, b)| (a as u64 * cs, (b as u64 * cs).min(self.size)))
            .collect()
    }
}

pub struct FileEndpoint {
    cfg: FileConfig,
    addr: Ipv4Addr,
    node_id: u64,
    rng: Rng,
    store: Box<dyn FileStore + Send>,
    outgoing: HashMap<u64, Outgoing>,
    incoming: HashMap<(Ipv4Addr, u64), Incoming>,
    /// Outcomes of recent incoming transfers, to answer a sender that missed our DONE.
    finished: VecDeque<((Ipv4Addr, u64), u8, String)>,
    /// Replies owed: (peer, packet).
    replies: VecDeque<(Ipv4Addr, OwnedReply)>,
    events: VecDeque<FileEvent>,
    counters: FileCounters,
    /// The local interface's MTU, from the last poll.
    local_mtu: usize,
    pmtu: PathMtuCache,
    last_now: Instant,
    buf: Vec<u8>,
    /// The incoming transfer the packet being handled asks to acknowledge at once.
    ack_now: Option<(Ipv4Addr, u64)>,
}

#[derive(Debug)]
enum OwnedReply {
    Accept(u64, Vec<(u32, u32)>),
    Refuse(u64, String),
    Done(u64, u8, String),
    Reset(u64),
}

impl std::fmt::Debug for FileEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEndpoint")
            .field("addr", &self.addr)
            .field("outgoing", &self.outgoing.len())
            .field("incoming", &self.incoming.len())
            .finish()
    }
}

const FINISHED_MEMORY: usize = 256;

impl FileEndpoint {
    pub fn new(cfg: FileConfig, addr: Ipv4Addr, mut rng: Rng) -> FileEndpoint {
        let node_id = if cfg.node_id != 0 {
            cfg.node_id
        } else {
            rng.next_u64() | 1
        };
        FileEndpoint {
            addr,
            node_id,
            rng,
            store: Box::new(MemStore::new()),
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            finished: VecDeque::new(),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            counters: FileCounters::default(),
            local_mtu: 1500,
            pmtu: PathMtuCache::default(),
            last_now: Instant::ZERO,
            buf: Vec::new(),
            ack_now: None,
            cfg,
        }
    }

    /// Replaces the store; the node installs a `DiskStore`. Do this before any transfer.
    pub fn set_store(&mut self, store: Box<dyn FileStore + Send>) {
        self.store = store;
    }

    pub fn counters(&self) -> &FileCounters {
        &self.counters
    }

    pub fn poll_event(&mut self) -> Option<FileEvent> {
        self.events.pop_front()
    }

    pub fn transfers(&self, now: Instant) -> Vec<TransferInfo> {
        let rate = |bytes: u64, started: Instant| {
            let t = (now - started).as_secs_f64();
            if t > 0.0 {
                bytes as f64 / t
            } else {
                0.0
            }
        };
        let mut v: Vec<TransferInfo> = self
            .outgoing
            .values()
            .map(|o| {
                let done = (o.acked.count() * o.chunk_size as u64).min(o.size);
                TransferInfo {
                    id: TransferId(o.id),
                    direction: Direction::Send,
                    peer: o.peer,
                    name: o.name.clone(),
                    size: o.size,
                    bytes_done: done,
                    state: match o.state {
                        OutState::Offering => "offering",
                        OutState::Sending => "sending",
                        OutState::Finishing => "finishing",
                    },
                    rate: rate(done, o.started),
                }
            })
            .chain(self.incoming.values().map(|i| {
                let done = (i.have.count() * i.chunk_size as u64).min(i.size);
                TransferInfo {
                    id: TransferId(i.id),
                    direction: Direction::Receive,
                    peer: i.peer,
                    name: i.name.clone(),
                    size: i.size,
                    bytes_done: done,
                    state: "receiving",
                    rate: rate(done.saturating_sub(i.resumed), i.started),
                }
            }))
            .collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// Offers `source` (a name the store understands: a path for `DiskStore`) to `dst`.
    pub fn send_file(
        &mut self,
        now: Instant,
        dst: Ipv4Addr,
        source: &str,
        channel: &str,
        sender: &str,
    ) -> Result<TransferId, FileError> {
        self.send_file_named(now, dst, source, None, channel, sender)
    }

    /// Like `send_file`, offering the file under `name` instead of the store's name for it. The
    /// receiver sanitises whatever name arrives, so any string is safe to send.
    pub fn send_file_named(
        &mut self,
        now: Instant,
        dst: Ipv4Addr,
        source: &str,
        name: Option<&str>,
        channel: &str,
        sender: &str,
    ) -> Result<TransferId, FileError> {
        if dst == self.addr || dst.is_unspecified() || dst.is_broadcast() || dst.is_multicast() {
            return Err(FileError::BadDestination(dst));
        }
        if self.outgoing.len() >= self.cfg.max_transfers {
            self.counters.cap_transfers += 1;
            return Err(FileError::TooManyTransfers);
        }
        let (handle, mut info) = self.store.open_source(source).map_err(FileError::Store)?;
        if let Some(n) = name {
            info.name = n.to_string();
        }
        if info.size > self.cfg.max_file_size {
            self.counters.cap_file_size += 1;
            self.store.close_source(handle);
            return Err(FileError::TooLarge);
        }
        let chunk_size = self.chunk_size_to(dst, now);
        let n_chunks = info.size.div_ceil(chunk_size as u64);
        if n_chunks > u32::MAX as u64 {
            self.store.close_source(handle);
            return Err(FileError::TooLarge);
        }
        let id = self.rng.next_u64() | 1;
        self.outgoing.insert(
            id,
            Outgoing {
                id,
                wire_id: id,
                peer: dst,
                handle,
                name: info.name,
                size: info.size,
                sha256: info.sha256,
                chunk_size,
                n_chunks: n_chunks as u32,
                channel: channel.to_string(),
                sender: sender.to_string(),
                state: OutState::Offering,
                acked: RangeSet::new(),
                inflight: VecDeque::new(),
                lost: VecDeque::new(),
                next_new: 0,
                next_pn: 0,
                cc: cc::new(self.cfg.congestion, chunk_size as usize),
                recovery_pn: 0,
                rtt: RttEstimator::new(self.cfg.initial_rto, self.cfg.min_rto, self.cfg.max_rto),
                latest_rtt: Duration::ZERO,
                tries: 0,
                due: now,
                last_send: now,
                probes: 0,
                started: now,
                df: true,
                announced: false,
            },
        );
        Ok(TransferId(id))
    }

    /// The chunk size for a new transfer to `dst`: DATA packets as large as the path allows.
    fn chunk_size_to(&self, dst: Ipv4Addr, now: Instant) -> u32 {
        chunk_for_mtu(self.pmtu.get(dst, now, self.local_mtu))
    }

    /// The path MTU towards `dst` as far as this endpoint knows it.
    pub fn path_mtu(&self, dst: Ipv4Addr, now: Instant) -> usize {
        self.pmtu.get(dst, now, self.local_mtu)
    }

    /// The outgoing transfer that `src` knows by `wire_id`. Its key is the same id unless the
    /// transfer was re-chunked, which is rare, so the scan runs only for those and for ids
    /// nobody sent.
    fn out_key(&self, src: Ipv4Addr, wire_id: u64) -> Option<u64> {
        let mine = |o: &Outgoing| o.wire_id == wire_id && o.peer == src;
        match self.outgoing.get(&wire_id) {
            Some(o) if mine(o) => Some(wire_id),
            _ => self.outgoing.iter().find(|(_, o)| mine(o)).map(|(&k, _)| k),
        }
    }

    /// Offers transfer `key` again with chunks of `chunk_size`, under a new wire id so that no
    /// packet of the old numbering can be mistaken for the new one. Whole new chunks that the
    /// receiver acknowledged count as held; its ACCEPT adds what its store kept beyond that.
    fn rechunk(&mut self, now: Instant, key: u64, chunk_size: u32) {
        let wire_id = self.rng.next_u64() | 1;
        let o = self.outgoing.get_mut(&key).expect("caller checked");
        let (old, new) = (o.chunk_size as u64, chunk_size as u64);
        let mut acked = RangeSet::new();
        for &(a, b) in o.acked.ranges() {
            let (start, end) = (a as u64 * old, (b as u64 * old).min(o.size));
            let first = start.div_ceil(new);
            let last = if end >= o.size {
                o.size.div_ceil(new)
            } else {
                end / new
            };
            if last > first {
                acked.insert(first as u32, last as u32);
            }
        }
        log::info!(
            "file: transfer {key:016x} to {}: chunks of {old} -> {new} bytes for the path MTU",
            o.peer
        );
        o.wire_id = wire_id;
        o.chunk_size = chunk_size;
        o.n_chunks = o.size.div_ceil(new) as u32;
        o.acked = acked;
        o.state = OutState::Offering;
        o.inflight.clear();
        o.lost.clear();
        o.next_new = 0;
        o.tries = 0;
        o.probes = 0;
        o.due = now;
        self.counters.rechunked += 1;
    }

    /// Abandons an outgoing transfer.
    pub fn cancel(&mut self, id: TransferId) {
        if let Some(o) = self.outgoing.remove(&id.0) {
            self.store.close_source(o.handle);
            self.fail(id.0, o.peer, "cancelled".into());
        }
    }

    fn fail(&mut self, id: u64, peer: Ipv4Addr, reason: String) {
        self.counters.failed += 1;
        self.events.push_back(FileEvent::Failed {
            id: TransferId(id),
            peer,
            reason,
        });
    }

    fn send(&mut self, tx: &mut Tx, dst: Ipv4Addr, seq: u32, ack: u32, repr: &Repr<'_>) -> bool {
        self.send_with(tx, dst, seq, ack, repr, SendOptions::default())
    }

    fn send_with(
        &mut self,
        tx: &mut Tx,
        dst: Ipv4Addr,
        seq: u32,
        ack: u32,
        repr: &Repr<'_>,
        opts: SendOptions,
    ) -> bool {
        let h = Header {
            ty: repr.ty(),
            flags: 0,
            node_id: self.node_id,
            epoch: self.cfg.boot_epoch.max(1),
            peer_epoch: 0,
            seq,
            ack,
        };
        let r = tx.send_with(dst, PROTOCOL, HEADER_LEN + repr.buffer_len(), opts, |buf| {
            repr.emit(&mut buf[HEADER_LEN..]);
            h.emit(buf);
        });
        match r {
            Ok(()) => {
                self.counters.packets_out += 1;
                true
            }
            Err(_) => {
                self.counters.tx_queue_full += 1;
                false
            }
        }
    }

    fn count_wire_error(&mut self, e: WireError) {
        match e {
            WireError::Truncated => self.counters.bad_length += 1,
            WireError::BadVersion => self.counters.bad_version += 1,
            WireError::BadChecksum => self.counters.bad_checksum += 1,
            WireError::BadPayload => self.counters.bad_payload += 1,
            WireError::UnknownType => self.counters.unknown_type += 1,
        }
    }

    fn handle(&mut self, now: Instant, src: Ipv4Addr, buf: &[u8]) {
        self.counters.packets_in += 1;
        let (h, payload) = match Header::parse(buf) {
            Ok(x) => x,
            Err(e) => return self.count_wire_error(e),
        };
        if h.node_id == self.node_id || src == self.addr {
            self.counters.from_self += 1;
            return;
        }
        let repr = match Repr::parse(h.ty, payload) {
            Ok(r) => r,
            Err(e) => return self.count_wire_error(e),
        };
        match repr {
            Repr::Offer {
                id,
                size,
                chunk_size,
                sha256,
                name,
                channel,
                sender,
            } => self.on_offer(
                now, src, id, size, chunk_size, sha256, name, channel, sender,
            ),
            Repr::Data { id, chunk, data } => self.on_data(now, src, id, h.seq, chunk, data),
            Repr::Accept { id, have } => {
                if let Some(key) = self.out_key(src, id) {
                    self.on_accept(now, key, &have);
                }
            }
            Repr::Ack { id, cum, ranges } => {
                if let Some(key) = self.out_key(src, id) {
                    self.on_ack(now, key, h.ack, cum, &ranges);
                }
            }
            Repr::Refuse { id, reason } => {
                if let Some((id, o)) = self.take_out(src, id) {
                    self.counters.refused += 1;
                    self.fail(id, src, format!("refused by {}: {reason}", o.peer));
                }
            }
            Repr::Done { id, status, reason } => {
                if let Some((id, o)) = self.take_out(src, id) {
                    if status == 0 {
                        self.counters.completed += 1;
                        self.events.push_back(FileEvent::Completed {
                            id: TransferId(id),
                            direction: Direction::Send,
                            peer: src,
                            name: o.name,
                            path: reason.to_string(),
                            bytes: o.size,
                            sha256: store::sha256_hex(&o.sha256),
                        });
                    } else {
                        self.fail(
                            id,
                            src,
                            format!("receiver could not store the file: {reason}"),
                        );
                    }
                }
            }
            Repr::Reset { id } => {
                let key = self.out_key(src, id);
                if let Some(o) = key.and_then(|k| self.outgoing.get_mut(&k)) {
                    if o.state != OutState::Offering {
                        self.counters.resets += 1;
                        o.state = OutState::Offering;
                        o.acked.clear();
                        o.inflight.clear();
                        o.lost.clear();
                        o.next_new = 0;
                        o.tries = 0;
                        o.due = now;
                    }
                }
            }
            Repr::Cancel { id, reason } => {
                if let Some(i) = self.incoming.remove(&(src, id)) {
                    self.store.release(i.handle);
                    self.fail(id, src, format!("sender cancelled: {reason}"));
                }
                if let Some((id, o)) = self.take_out(src, id) {
                    self.fail(id, o.peer, format!("receiver cancelled: {reason}"));
                }
            }
        }
    }

    /// Removes the outgoing transfer `src` knows by `wire_id`; returns its key and state.
    fn take_out(&mut self, src: Ipv4Addr, wire_id: u64) -> Option<(u64, Outgoing)> {
        let key = self.out_key(src, wire_id)?;
        let o = self.outgoing.remove(&key).expect("present");
        self.store.close_source(o.handle);
        Some((key, o))
    }

    #[allow(clippy::too_many_arguments)]
    fn on_offer(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        id: u64,
        size: u64,
        chunk_size: u32,
        sha256: [u8; 32],
        name: &str,
        channel: &str,
        sender: &str,
    ) {
        if let Some((_, status, reason)) = self.finished.iter().find(|f| f.0 == (src, id)) {
            let r = OwnedReply::Done(id, *status, reason.clone());
            self.replies.push_back((src, r));
            return;
        }
        if let Some(i) = self.incoming.get(&(src, id)) {
            let have = i.have.ranges().to_vec();
            self.replies.push_back((src, OwnedReply::Accept(id, have)));
            return;
        }
        let refuse = |s: &mut Self, reason: String| {
            s.counters.refused += 1;
            s.replies.push_back((src, OwnedReply::Refuse(id, reason)));
        };
        if size > self.cfg.max_file_size {
            let r = format!(
                "file too large: {size} bytes exceeds the limit of {} bytes",
                self.cfg.max_file_size
            );
            self.counters.cap_file_size += 1;
            return refuse(self, r);
        }
        if size.div_ceil(chunk_size as u64) > u32::MAX as u64 {
            return refuse(self, "chunk size too small for the file".into());
        }
        if self.incoming.len() >= self.cfg.max_transfers {
            self.counters.cap_transfers += 1;
            return refuse(self, "too many transfers in progress".into());
        }
        // A sender that restarted offers the same content under a new id: let go of the old one
        // (its data stays in the store and is resumed just below).
        let stale: Vec<(Ipv4Addr, u64)> = self
            .incoming
            .iter()
            .filter(|(k, i)| k.0 == src && i.sha256 == sha256)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            let i = self.incoming.remove(&k).expect("present");
            let _ = self.store.checkpoint(i.handle, &i.held_bytes());
            self.store.release(i.handle);
        }
        let clean = name::sanitize(name);
        let meta = IncomingMeta {
            peer: src,
            name: clean.clone(),
            size,
            sha256,
        };
        let (handle, held) = match self.store.begin_incoming(&meta) {
            Ok(x) => x,
            Err(e) => return refuse(self, e.to_string()),
        };
        let mut have = RangeSet::new();
        let cs = chunk_size as u64;
        let n_chunks = size.div_ceil(cs) as u32;
        for (a, b) in held {
            // Only whole chunks count; a partial one is sent again.
            let first = a.div_ceil(cs);
            let last = if b >= size { n_chunks as u64 } else { b / cs };
            if last > first {
                have.insert(first as u32, last as u32);
            }
        }
        let resumed = (have.count() * cs).min(size);
        if let Some(free) = self.store.free_space() {
            if free < size - resumed {
                self.store.release(handle);
                return refuse(
                    self,
                    format!(
                        "not enough free space: need {} bytes, {free} available",
                        size - resumed
                    ),
                );
            }
        }
        self.events.push_back(FileEvent::Offered {
            id: TransferId(id),
            from: src,
            name: clean.clone(),
            size,
            channel: channel.to_string(),
            sender: sender.to_string(),
            resumed_bytes: resumed,
        });
        self.replies
            .push_back((src, OwnedReply::Accept(id, have.ranges().to_vec())));
        let inc = Incoming {
            id,
            peer: src,
            handle,
            name: clean,
            size,
            sha256,
            chunk_size,
            n_chunks,
            have,
            largest_pn: 0,
            ack_pending: false,
            since_ack: 0,
            early_ack: false,
            since_checkpoint: 0,
            last_activity: now,
            started: now,
            resumed,
        };
        self.incoming.insert((src, id), inc);
        self.maybe_finish(src, id);
    }

    fn on_data(&mut self, now: Instant, src: Ipv4Addr, id: u64, pn: u32, chunk: u32, data: &[u8]) {
        self.counters.data_in += 1;
        let Some(i) = self.incoming.get_mut(&(src, id)) else {
            if let Some((_, status, reason)) = self.finished.iter().find(|f| f.0 == (src, id)) {
                let r = OwnedReply::Done(id, *status, reason.clone());
                self.replies.push_back((src, r));
            } else {
                self.replies.push_back((src, OwnedReply::Reset(id)));
            }
            return;
        };
        i.last_activity = now;
        i.ack_pending = true;
        i.since_ack += 1;
        if pn.wrapping_sub(i.largest_pn) as i32 > 0 || i.largest_pn == 0 {
            i.largest_pn = pn;
        }
        let off = chunk as u64 * i.chunk_size as u64;
        let want = (i.size.saturating_sub(off)).min(i.chunk_size as u64);
        if chunk >= i.n_chunks || data.len() as u64 != want {
            self.counters.bad_payload += 1;
            return;
        }
        if i.have.contains(chunk) {
            self.counters.duplicate_chunks += 1;
            return;
        }
        if chunk
            >= i.have
                .next_missing(0)
                .saturating_add(self.cfg.receive_window)
        {
            self.counters.out_of_window += 1;
            return;
        }
        if let Err(e) = self.store.write_at(i.handle, off, data) {
            self.counters.store_errors += 1;
            let i = self.incoming.remove(&(src, id)).expect("present");
            self.store.release(i.handle);
            let reason = e.to_string();
            self.remember(src, id, 2, reason.clone());
            self.replies
                .push_back((src, OwnedReply::Done(id, 2, reason.clone())));
            return self.fail(id, src, reason);
        }
        // ACKs normally leave once per poll, after the whole batch. Two more kinds go at once:
        // one after the second packet of a batch, so a lost ACK is not the only word the sender
        // gets about a flight (it would wait for a probe timeout, ~1 ms, hundreds of round
        // trips here), and past a hole one every second packet (as TCP does out of order), so
        // the sender learns of the loss sooner.
        if i.since_ack >= 2 && (!i.early_ack || chunk != i.have.next_missing(0)) {
            i.early_ack = true;
            self.ack_now = Some((src, id));
        }
        i.have.insert(chunk, chunk + 1);
        i.since_checkpoint += 1;
        if i.since_checkpoint >= self.cfg.checkpoint_every {
            i.since_checkpoint = 0;
            let held = i.held_bytes();
            if self.store.checkpoint(i.handle, &held).is_err() {
                self.counters.store_errors += 1;
            }
        }
        self.maybe_finish(src, id);
    }

    fn remember(&mut self, src: Ipv4Addr, id: u64, status: u8, reason: String) {
        if self.finished.len() >= FINISHED_MEMORY {
            self.finished.pop_front();
        }
        self.finished.push_back(((src, id), status, reason));
    }

    fn maybe_finish(&mut self, src: Ipv4Addr, id: u64) {
        let Some(i) = self.incoming.get(&(src, id)) else {
            return;
        };
        if !i.have.covers(0, i.n_chunks) {
            return;
        }
        let i = self.incoming.remove(&(src, id)).expect("present");
        match self.store.finish(i.handle) {
            Ok(f) => {
                self.counters.completed += 1;
                self.remember(src, id, 0, f.path.clone());
                self.replies
                    .push_back((src, OwnedReply::Done(id, 0, f.path.clone())));
                self.events.push_back(FileEvent::Completed {
                    id: TransferId(id),
                    direction: Direction::Receive,
                    peer: src,
                    name: f.name,
                    path: f.path,
                    bytes: i.size,
                    sha256: store::sha256_hex(&i.sha256),
                });
            }
            Err(e) => {
                let status = if e == StoreError::HashMismatch {
                    self.counters.hash_mismatch += 1;
                    self.store.abort(i.handle);
                    1
                } else {
                    self.counters.store_errors += 1;
                    self.store.release(i.handle);
                    2
                };
                let reason = e.to_string();
                self.remember(src, id, status, reason.clone());
                self.replies
                    .push_back((src, OwnedReply::Done(id, status, reason.clone())));
                self.fail(id, src, reason);
            }
        }
    }

    fn on_accept(&mut self, now: Instant, id: u64, have: &[(u32, u32)]) {
        let o = self.outgoing.get_mut(&id).expect("caller checked");
        if o.state != OutState::Offering {
            return;
        }
        for &(a, b) in have {
            o.acked.insert(a.min(o.n_chunks), b.min(o.n_chunks));
        }
        o.state = OutState::Sending;
        o.tries = 0;
        o.due = now + o.rtt.rto();
        o.next_new = o.acked.next_missing(0);
        let resumed = (o.acked.count() * o.chunk_size as u64).min(o.size);
        if !o.announced {
            o.announced = true;
            self.events.push_back(FileEvent::Started {
                id: TransferId(id),
                to: o.peer,
                resumed_bytes: resumed,
            });
        }
        self.check_all_acked(now, id);
    }

    fn check_all_acked(&mut self, now: Instant, id: u64) {
        let o = self.outgoing.get_mut(&id).expect("caller checked");
        if o.state == OutState::Sending && o.acked.covers(0, o.n_chunks) {
            o.state = OutState::Finishing;
            o.inflight.clear();
            o.lost.clear();
            o.tries = 0;
            o.due = now + o.rtt.rto();
        }
    }

    fn on_ack(&mut self, now: Instant, id: u64, largest: u32, cum: u32, r: &[(u32, u32)]) {
        let o = self.outgoing.get_mut(&id).expect("caller checked");
        if o.state != OutState::Sending {
            return;
        }
        o.acked.insert(0, cum.min(o.n_chunks));
        for &(a, b) in r {
            o.acked.insert(a.min(o.n_chunks), b.min(o.n_chunks));
        }
        let mut newly = 0u32;
        let mut lost_any = None;
        let mut sample = None;
        // A packet sent before `largest` is lost once three later packet numbers arrived, or
        // (RACK, RFC 8985) once it is older than a round trip and a quarter: with few packets
        // in flight there may never be three later ones. `inflight` is in packet-number order,
        // so only its front, up to `largest`, can change.
        let rack = o.rtt.srtt().unwrap_or(o.rtt.rto()).max(o.latest_rtt);
        let threshold = rack + rack / 4;
        let mut kept: Vec<(u32, u32, Instant)> = Vec::new();
        while let Some(&(pn, chunk, at)) = o.inflight.front() {
            if (pn.wrapping_sub(largest) as i32) > 0 {
                break;
            }
            o.inflight.pop_front();
            if pn == largest {
                sample = Some(now - at);
            }
            if o.acked.contains(chunk) {
                newly += 1;
            } else if largest.wrapping_sub(pn) >= 3 || now - at >= threshold {
                o.lost.push_back(chunk);
                lost_any = Some(pn);
            } else {
                kept.push((pn, chunk, at));
            }
        }
        for e in kept.into_iter().rev() {
            o.inflight.push_front(e);
        }
        if let Some(s) = sample {
            o.rtt.sample(s);
            o.latest_rtt = s;
        }
        if newly > 0 {
            o.tries = 0;
            o.probes = 0;
            o.due = now + o.rtt.rto();
        }
        let chunk = o.chunk_size as usize;
        if newly > 0 {
            let bytes = newly as usize * chunk;
            o.cc.on_delivered(now, bytes, sample, chunk);
            o.cc.on_ack(now, bytes, chunk, o.latest_rtt);
        }
        if let Some(pn) = lost_any {
            // One reduction per round trip: losses from the same window count once.
            if (pn.wrapping_sub(o.recovery_pn) as i32) >= 0 {
                o.cc.on_loss(now, o.inflight.len() * chunk, chunk);
                o.recovery_pn = o.next_pn;
            }
        }
        self.check_all_acked(now, id);
    }

    fn flush_replies(&mut self, tx: &mut Tx) {
        while let Some((dst, r)) = self.replies.pop_front() {
            let repr = match &r {
                OwnedReply::Accept(id, have) => Repr::Accept {
                    id: *id,
                    have: have.clone(),
                },
                OwnedReply::Refuse(id, reason) => Repr::Refuse { id: *id, reason },
                OwnedReply::Done(id, status, reason) => Repr::Done {
                    id: *id,
                    status: *status,
                    reason,
                },
                OwnedReply::Reset(id) => Repr::Reset { id: *id },
            };
            self.send(tx, dst, 0, 0, &repr);
        }
        let keys: Vec<(Ipv4Addr, u64)> = self
            .incoming
            .iter()
            .filter(|(_, i)| i.ack_pending)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.send_ack(tx, k);
        }
        for i in self.incoming.values_mut() {
            i.early_ack = false;
        }
    }

    fn send_ack(&mut self, tx: &mut Tx, k: (Ipv4Addr, u64)) {
        let Some(i) = self.incoming.get_mut(&k) else {
            return;
        };
        i.ack_pending = false;
        i.since_ack = 0;
        let cum = i.have.next_missing(0);
        let ranges: Vec<(u32, u32)> = i
            .have
            .ranges()
            .iter()
            .filter(|r| r.0 > cum)
            .take(wire::MAX_RANGES)
            .copied()
            .collect();
        let largest = i.largest_pn;
        let repr = Repr::Ack {
            id: k.1,
            cum,
            ranges,
        };
        self.counters.acks_out += 1;
        self.send(tx, k.0, 0, largest, &repr);
    }

    /// Timers and data for one outgoing transfer.
    fn drive(&mut self, now: Instant, tx: &mut Tx, id: u64) {
        let o = self.outgoing.get_mut(&id).expect("caller checked");
        let timeout = |o: &Outgoing, cfg: &FileConfig| {
            o.rtt
                .rto()
                .mul_f64(cfg.backoff.max(1.0).powi(o.tries.min(64) as i32))
                .min(cfg.max_rto)
        };
        match o.state {
            OutState::Offering | OutState::Finishing => {
                if o.due > now {
                    return;
                }
                if o.tries > self.cfg.max_retries {
                    let o = self.outgoing.remove(&id).expect("present");
                    self.store.close_source(o.handle);
                    let what = if o.state == OutState::Offering {
                        "no answer to the offer"
                    } else {
                        "no confirmation that the file was stored"
                    };
                    return self.fail(
                        id,
                        o.peer,
                        format!("{what} from {} after {} tries", o.peer, o.tries),
                    );
                }
                o.tries += 1;
                o.due = now + timeout(o, &self.cfg);
                // Re-offering is idempotent: the receiver answers ACCEPT, or DONE if it finished.
                let (peer, repr) = (
                    o.peer,
                    Repr::Offer {
                        id: o.wire_id,
                        size: o.size,
                        chunk_size: o.chunk_size,
                        sha256: o.sha256,
                        name: &o.name,
                        channel: &o.channel,
                        sender: &o.sender,
                    },
                );
                let h = Header {
                    ty: wire::ty::OFFER,
                    flags: 0,
                    node_id: self.node_id,
                    epoch: self.cfg.boot_epoch.max(1),
                    peer_epoch: 0,
                    seq: 0,
                    ack: 0,
                };
                let r = tx.send(peer, PROTOCOL, HEADER_LEN + repr.buffer_len(), |buf| {
                    repr.emit(&mut buf[HEADER_LEN..]);
                    h.emit(buf);
                });
                if r.is_ok() {
                    self.counters.packets_out += 1;
                }
            }
            OutState::Sending => {
                if !o.inflight.is_empty()
                    && o.due > now
                    && o.probes < MAX_PROBES
                    && o.last_send + o.pto() <= now
                {
                    // Nothing acknowledged for a probe timeout: the tail of the flight or its
                    // ACKs were lost. Resend the oldest packet in flight; its ACK tells which
                    // of the others are missing. The window stays as it is.
                    self.counters.probes += 1;
                    o.probes += 1;
                    let (_, chunk, _) = o.inflight.pop_front().expect("not empty");
                    o.lost.push_front(chunk);
                    o.last_send = now;
                }
                if !o.inflight.is_empty() && o.due <= now {
                    // Nothing acknowledged for a whole timeout: everything out there is lost.
                    self.counters.timeouts += 1;
                    o.tries += 1;
                    if o.tries > self.cfg.max_retries {
                        let o = self.outgoing.remove(&id).expect("present");
                        self.store.close_source(o.handle);
                        return self.fail(
                            id,
                            o.peer,
                            format!(
                                "{} stopped acknowledging after {} timeouts",
                                o.peer, o.tries
                            ),
                        );
                    }
                    if o.df && o.tries >= BLACK_HOLE_TIMEOUTS {
                        // Everything is lost and no ICMP says why: perhaps a router drops our
                        // DF packets silently. Let routers fragment instead (RFC 2923 sec 2.1).
                        o.df = false;
                        self.counters.pmtu_black_holes += 1;
                        log::info!(
                            "file: transfer {id:016x} to {}: {} timeouts in a row, sending \
                             without DF in case of a path MTU black hole",
                            o.peer,
                            o.tries
                        );
                    }
                    let chunks: Vec<u32> = o.inflight.drain(..).map(|e| e.1).collect();
                    let chunk = o.chunk_size as usize;
                    o.cc.on_rto(now, chunks.len() * chunk, chunk);
                    o.lost.extend(chunks);
                    o.recovery_pn = o.next_pn;
                    o.due = now + timeout(o, &self.cfg);
                }
                self.send_data(now, tx, id);
            }
        }
    }

    fn send_data(&mut self, now: Instant, tx: &mut Tx, id: u64) {
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            let o = self.outgoing.get_mut(&id).expect("caller checked");
            if o.inflight.len() >= window(o, &self.cfg) || tx.room() == 0 {
                break;
            }
            let mut chunk = None;
            let mut retx = false;
            while let Some(c) = o.lost.pop_front() {
                if !o.acked.contains(c) {
                    chunk = Some(c);
                    retx = true;
                    break;
                }
            }
            if chunk.is_none() {
                let limit = o
                    .acked
                    .next_missing(0)
                    .saturating_add(self.cfg.receive_window);
                let c = o.acked.next_missing(o.next_new);
                if c < o.n_chunks && c < limit {
                    chunk = Some(c);
                    o.next_new = c + 1;
                }
            }
            let Some(c) = chunk else { break };
            let off = c as u64 * o.chunk_size as u64;
            let len = (o.size - off).min(o.chunk_size as u64) as usize;
            buf.resize(len, 0);
            let (handle, peer, wire_id) = (o.handle, o.peer, o.wire_id);
            match self.store.read_at(handle, off, &mut buf) {
                Ok(n) if n == len => {}
                other => {
                    let o = self.outgoing.remove(&id).expect("present");
                    self.store.close_source(o.handle);
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "the file shrank while being sent".into(),
                    };
                    self.counters.store_errors += 1;
                    self.fail(id, peer, format!("cannot read the file: {why}"));
                    break;
                }
            }
            let o = self.outgoing.get_mut(&id).expect("present");
            let pn = o.next_pn;
            o.next_pn = o.next_pn.wrapping_add(1);
            if o.inflight.is_empty() {
                o.due = now + o.rtt.rto();
            }
            o.last_send = now;
            o.inflight.push_back((pn, c, now));
            let repr = Repr::Data {
                id: wire_id,
                chunk: c,
                data: &buf,
            };
            let opts = SendOptions {
                dont_fragment: o.df
                    && len + DATA_PACKET_OVERHEAD <= self.pmtu.get(peer, now, self.local_mtu),
                ..SendOptions::default()
            };
            if retx {
                self.counters.retransmits += 1;
            }
            self.counters.data_out += 1;
            self.counters.data_bytes_out += len as u64;
            self.send_with(tx, peer, pn, 0, &repr, opts);
        }
        self.buf = buf;
    }
}

impl Transport for FileEndpoint {
    fn handle_packet(&mut self, now: Instant, pkt: &IpPacket<'_>, tx: &mut Tx) -> bool {
        self.last_now = now;
        self.handle(now, pkt.src(), pkt.payload);
        if let Some(k) = self.ack_now.take() {
            self.send_ack(tx, k);
        }
        true
    }

    fn handle_icmp_error(&mut self, now: Instant, err: &IcmpError<'_>, _tx: &mut Tx) {
        self.counters.icmp_errors += 1;
        let IcmpErrorKind::Unreachable {
            code: crate::wire::icmp::unreachable::FRAG_NEEDED,
            next_hop_mtu,
        } = err.kind
        else {
            return;
        };
        // Only DATA is large and sent with DF. The quote must look like one of ours, and name
        // our node and a transfer to that destination when it reaches that far (routers quote
        // at least 8 bytes; Linux quotes far more), so a forged report cannot shrink our chunks
        // towards a peer we are not sending to.
        let q = err.original_payload;
        let dst = err.original.dst;
        if q.len() < 2 || q[0] != wire::VERSION || q[1] != wire::ty::DATA {
            return;
        }
        let quoted_u64 = |at: usize| {
            q.get(at..at + 8)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        };
        if quoted_u64(8).is_some_and(|n| n != self.node_id) {
            return;
        }
        let quoted_id = quoted_u64(HEADER_LEN);
        let ours = |o: &Outgoing| o.peer == dst && quoted_id.is_none_or(|w| w == o.wire_id);
        if !self.outgoing.values().any(ours) {
            return;
        }
        let sent_len = err.original.total_len();
        let Some(mtu) = self
            .pmtu
            .learn(dst, next_hop_mtu, sent_len, now, self.local_mtu)
        else {
            return;
        };
        self.counters.pmtu_lowered += 1;
        log::info!(
            "file: path MTU to {dst} is {mtu} (reported by {})",
            err.reporter
        );
        let chunk = chunk_for_mtu(mtu);
        let shrink: Vec<u64> = self
            .outgoing
            .iter()
            .filter(|(_, o)| {
                o.peer == dst && o.chunk_size > chunk && o.state != OutState::Finishing
            })
            .map(|(&k, _)| k)
            .collect();
        for k in shrink {
            self.rechunk(now, k, chunk);
        }
    }

    fn poll(&mut self, now: Instant, tx: &mut Tx) {
        self.last_now = now;
        self.local_mtu = tx.mtu();
        self.flush_replies(tx);
        let ids: Vec<u64> = self.outgoing.keys().copied().collect();
        for id in ids {
            if self.outgoing.contains_key(&id) {
                self.drive(now, tx, id);
            }
        }
        // Senders that went silent: keep what arrived for a resume, stop waiting.
        let idle: Vec<(Ipv4Addr, u64)> = self
            .incoming
            .iter()
            .filter(|(_, i)| now - i.last_activity >= self.cfg.idle_timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            let i = self.incoming.remove(&k).expect("present");
            let _ = self.store.checkpoint(i.handle, &i.held_bytes());
            self.store.release(i.handle);
            self.fail(
                k.1,
                k.0,
                "sender went silent; partial file kept for resume".into(),
            );
        }
    }

    fn poll_at(&self) -> Option<Instant> {
        let mut t = None;
        if !self.replies.is_empty() || self.incoming.values().any(|i| i.ack_pending) {
            t = Some(self.last_now);
        }
        for o in self.outgoing.values() {
            let ready = o.state == OutState::Sending
                && o.inflight.len() < window(o, &self.cfg)
                && (!o.lost.is_empty()
                    || o.acked.next_missing(o.next_new)
                        < o.n_chunks.min(
                            o.acked
                                .next_missing(0)
                                .saturating_add(self.cfg.receive_window),
                        ));
            if ready {
                t = earliest(t, Some(self.last_now));
            } else if o.state != OutState::Sending || !o.inflight.is_empty() {
                t = earliest(t, Some(o.due));
                if o.state == OutState::Sending && o.probes < MAX_PROBES {
                    t = earliest(t, Some(o.last_send + o.pto()));
                }
            }
        }
        for i in self.incoming.values() {
            t = earliest(t, Some(i.last_activity + self.cfg.idle_timeout));
        }
        t
    }
}
