//! Protocol 170: reliable messages and peer discovery, as a sans-IO state machine.
//!
//! Each pair of nodes runs a *session* named by both boot epochs. Within it, each direction is a
//! stream of segments numbered by `seq`; a message is one or more segments (FIRST..LAST). The
//! sender keeps a sliding window of segments in flight, retransmits on a per-segment timer
//! (RFC 6298 estimate, multiplied by `backoff` per try) or early when three later segments are
//! selectively acknowledged, and reports `Delivered` once the cumulative ACK passes the last
//! segment of a message (which means the receiver handed it to its application) or `Failed`
//! after `max_retries` retransmissions.
//!
//! Restart rules (see `docs/protocols.md`):
//! - A packet whose sender epoch is higher than the one we know means the peer restarted: we drop
//!   our receive state for it and renumber everything not yet delivered into a new stream (SYN).
//! - A packet whose sender epoch is lower is from a previous life of the peer and is dropped.
//! - DATA must name our current epoch; otherwise it was meant for our previous life (or the
//!   sender does not know us yet) and we answer with a HELLO so the sender learns our epoch.
//! - A complete message carries its sender's id for it; a receiver delivers it only if it is past
//!   the highest one delivered from that sender life ([`marks`]). The node persists those marks
//!   with its inbox and hands them back ([`MsgEndpoint::restore_delivered`]) after a restart, so
//!   a message delivered just before a crash is acknowledged again but not delivered twice.
//!
//! Method kinds: `send_message`/`add_peer`/`discover` are commands, `handle_packet` is input,
//! `poll` sends what is ready and runs timers, `poll_event` drains outcomes, `poll_at` is the
//! next deadline.

pub mod marks;
pub mod wire;

use crate::ip::{IcmpError, IpPacket, Transport, Tx};
use crate::rand::Rng;
use crate::rtt::RttEstimator;
use crate::time::{Duration, Instant};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use wire::{flags, ty, AckRepr, Header, HelloRepr, WireError, HEADER_LEN};

pub use marks::{DeliveredMarks, Origin};

/// The IP protocol number.
pub const PROTOCOL: u8 = 170;

/// Probes in a row without an ACK of new data; after that only the retransmission timer acts.
const MAX_PROBES: u32 = 2;

#[derive(Clone, Debug)]
pub struct MsgConfig {
    pub node_name: String,
    /// 0 picks a random id from the stack's seed.
    pub node_id: u64,
    /// Must grow across restarts of the same node (the driver uses a persisted counter or the
    /// boot time). 0 is reserved for "unknown" and is replaced by 1.
    pub boot_epoch: u64,
    /// Retransmissions of a segment (or HELLOs to a silent peer) before giving up.
    pub max_retries: u32,
    /// Each retransmission waits this many times longer than the previous one.
    pub backoff: f64,
    /// The retransmission timeout before any RTT has been measured.
    pub initial_rto: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// How often known peers are sent a HELLO.
    pub heartbeat: Duration,
    /// Silence after which a peer is suspect, then dead.
    pub suspect_after: Duration,
    pub dead_after: Duration,
    /// Addresses to greet at start.
    pub peers: Vec<Ipv4Addr>,
    /// Discovery probes per second.
    pub discover_rate: u32,
    /// Messages not yet delivered, per peer and in total.
    pub max_pending: usize,
    pub max_pending_total: usize,
    /// Segments in flight per peer, and how far ahead of the next expected one a receiver buffers.
    /// The default stays below the 500-packet queue of a Linux TUN device, so a full window
    /// waiting while the receiver syncs its inbox is not cut short by the kernel.
    pub window: u32,
    pub max_peers: usize,
    /// Largest `content` accepted, in bytes.
    pub max_message_len: usize,
    /// Addresses waiting to be probed by `discover` (a /16 fits).
    pub max_probe_queue: usize,
}

impl Default for MsgConfig {
    fn default() -> MsgConfig {
        MsgConfig {
            node_name: String::from("node"),
            node_id: 0,
            boot_epoch: 1,
            max_retries: 5,
            backoff: 1.5,
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(10),
            heartbeat: Duration::from_secs(5),
            suspect_after: Duration::from_secs(15),
            dead_after: Duration::from_secs(30),
            peers: Vec::new(),
            discover_rate: 50,
            max_pending: 4096,
            max_pending_total: 65_536,
            window: 448,
            max_peers: 1024,
            max_message_len: 1 << 20,
            max_probe_queue: 65_536,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub content: String,
    pub sender: String,
    pub channel_id: String,
    /// RFC 3339 UTC, supplied by the caller: the core never reads the wall clock.
    pub timestamp: String,
    pub is_file: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub u64);

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum MsgEvent {
    Received {
        from: Ipv4Addr,
        msg: Message,
        /// Who sent it and under which id: what a node persists to restore the marks with.
        origin: Origin,
    },
    Delivered {
        id: MessageId,
        to: Ipv4Addr,
    },
    Failed {
        id: MessageId,
        to: Ipv4Addr,
        reason: String,
    },
    PeerUp {
        addr: Ipv4Addr,
        name: String,
        id: u64,
    },
    PeerDown {
        addr: Ipv4Addr,
    },
}

/// Misuse of the API; nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MsgError {
    /// Our own address, or an address no single node can have.
    BadDestination(Ipv4Addr),
    /// A field does not fit its length on the wire, or the content exceeds `max_message_len`.
    TooLarge(&'static str),
    /// `max_pending` for this peer reached.
    PeerQueueFull,
    /// `max_pending_total` reached.
    QueueFull,
    /// The peer table is full of live peers.
    PeerTableFull,
}

impl std::fmt::Display for MsgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MsgError::BadDestination(a) => write!(f, "cannot send to {a}"),
            MsgError::TooLarge(what) => write!(f, "{what} too large"),
            MsgError::PeerQueueFull => write!(f, "too many undelivered messages for this peer"),
            MsgError::QueueFull => write!(f, "too many undelivered messages"),
            MsgError::PeerTableFull => write!(f, "peer table full"),
        }
    }
}

impl std::error::Error for MsgError {}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Named by `add_peer` or a send, never heard from.
    Probing,
    Alive,
    Suspect,
    Dead,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerInfo {
    pub addr: Ipv4Addr,
    pub name: String,
    pub id: u64,
    pub epoch: u64,
    pub rtt_ms: Option<f64>,
    pub last_seen_ms_ago: Option<u64>,
    pub state: PeerState,
    pub pending: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MsgCounters {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bad_checksum: u64,
    pub bad_version: u64,
    pub bad_length: u64,
    pub bad_payload: u64,
    pub unknown_type: u64,
    pub from_self: u64,
    pub stale_epoch: u64,
    pub wrong_epoch: u64,
    pub peer_restarts: u64,
    pub data_in: u64,
    pub data_out: u64,
    pub retransmits: u64,
    pub fast_retransmits: u64,
    /// Probe timeouts: the oldest unacknowledged segment resent because no ACK came.
    pub probes: u64,
    pub duplicates: u64,
    /// Complete messages not delivered because their sender life's mark showed them delivered
    /// already (sent again after this receiver restarted); acknowledged all the same.
    pub duplicate_messages: u64,
    pub out_of_window: u64,
    pub acks_in: u64,
    pub acks_out: u64,
    pub hellos_in: u64,
    pub hellos_out: u64,
    pub probes_out: u64,
    pub messages_queued: u64,
    pub messages_delivered: u64,
    pub messages_failed: u64,
    pub messages_received: u64,
    pub messages_malformed: u64,
    pub queue_full: u64,
    pub peer_table_full: u64,
    pub tx_queue_full: u64,
    pub icmp_errors: u64,
}

/// One segment of the send stream.
#[derive(Debug)]
struct Seg {
    seq: u32,
    msg: MessageId,
    flags: u8,
    data: Vec<u8>,
    last_sent: Instant,
    /// Transmissions so far; 0 means never sent.
    tries: u32,
    acked: bool,
    /// Set by selective acknowledgement evidence: resend at the next poll.
    lost: bool,
    /// Resent by a probe: its ACK is no round-trip sample (Karn).
    probed: bool,
}

/// `a < b` in sequence space, valid while the two are within 2^31 of each other.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[derive(Debug)]
struct Peer {
    addr: Ipv4Addr,
    name: String,
    node_id: u64,
    /// 0 until we hear from the peer.
    epoch: u64,
    state: PeerState,
    last_seen: Option<Instant>,
    rtt: RttEstimator,
    hello_due: Option<Instant>,
    hello_tries: u32,
    hello_reply: Option<Option<u32>>,
    next_heartbeat: Instant,
    in_dirty: bool,
    // Send side. `segs` holds whole messages, oldest first, with consecutive sequence numbers.
    segs: VecDeque<Seg>,
    next_unsent: usize,
    snd_nxt: u32,
    stream_start: u32,
    pending_msgs: usize,
    // Receive side.
    rcv_next: Option<u32>,
    ooo: BTreeMap<u32, (u8, Vec<u8>)>,
    reasm: Vec<u8>,
    reasm_active: bool,
    ack_pending: bool,
    /// When DATA last left for this peer; the probe timeout runs from here.
    last_send: Instant,
    /// Probes sent since the last acknowledgement of new data.
    probes: u32,
}

impl Peer {
    fn new(addr: Ipv4Addr, now: Instant, rtt: RttEstimator) -> Peer {
        Peer {
            addr,
            name: String::new(),
            node_id: 0,
            epoch: 0,
            state: PeerState::Probing,
            last_seen: None,
            rtt,
            hello_due: None,
            hello_tries: 0,
            hello_reply: None,
            next_heartbeat: now,
            in_dirty: false,
            segs: VecDeque::new(),
            next_unsent: 0,
            snd_nxt: 0,
            stream_start: 0,
            pending_msgs: 0,
            rcv_next: None,
            ooo: BTreeMap::new(),
            reasm: Vec::new(),
            reasm_active: false,
            ack_pending: false,
            last_send: now,
            probes: 0,
        }
    }

    /// The probe timeout (RFC 8985 section 7): a smoothed round trip plus four deviations (at
    /// least 1 ms), doubled per unanswered probe, never beyond the retransmission timeout. Far
    /// shorter than the RTO, whose 50 ms floor is hundreds of lab round trips.
    fn pto(&self) -> Duration {
        let base = match self.rtt.srtt() {
            Some(s) => s + (self.rtt.rttvar() * 4).max(Duration::from_millis(1)),
            None => self.rtt.rto(),
        };
        (base * (1u32 << self.probes.min(10))).min(self.rtt.rto())
    }

    fn timeout(&self, tries: u32, cfg: &MsgConfig) -> Duration {
        let f = cfg
            .backoff
            .max(1.0)
            .powi(tries.saturating_sub(1).min(64) as i32);
        self.rtt.rto().mul_f64(f).min(cfg.max_rto)
    }

    /// Renumbers everything undelivered into a new stream that starts beyond any number used.
    fn restart_stream(&mut self) {
        let base = self.snd_nxt;
        for (i, s) in self.segs.iter_mut().enumerate() {
            s.seq = base.wrapping_add(i as u32);
            s.tries = 0;
            s.acked = false;
            s.lost = false;
            s.probed = false;
        }
        self.stream_start = base;
        self.snd_nxt = base.wrapping_add(self.segs.len() as u32);
        self.next_unsent = 0;
    }

    fn reset_receive(&mut self) {
        self.rcv_next = None;
        self.ooo.clear();
        self.reasm.clear();
        self.reasm_active = false;
    }
}

pub struct MsgEndpoint {
    cfg: MsgConfig,
    addr: Ipv4Addr,
    node_id: u64,
    epoch: u64,
    peers: HashMap<Ipv4Addr, Peer>,
    dirty: Vec<Ipv4Addr>,
    events: VecDeque<MsgEvent>,
    counters: MsgCounters,
    /// The last message delivered per sender life, so a resent one is not delivered twice.
    delivered: DeliveredMarks,
    next_id: u64,
    total_pending: usize,
    seg_size: usize,
    next_timer: Option<Instant>,
    last_now: Instant,
    probes: VecDeque<Ipv4Addr>,
    next_probe: Instant,
    pool: Vec<Vec<u8>>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for MsgEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgEndpoint")
            .field("addr", &self.addr)
            .field("node_id", &self.node_id)
            .field("epoch", &self.epoch)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl MsgEndpoint {
    pub fn new(cfg: MsgConfig, addr: Ipv4Addr, mut rng: Rng) -> MsgEndpoint {
        let node_id = if cfg.node_id != 0 {
            cfg.node_id
        } else {
            rng.next_u64() | 1
        };
        let epoch = cfg.boot_epoch.max(1);
        let mut ep = MsgEndpoint {
            addr,
            node_id,
            epoch,
            peers: HashMap::new(),
            dirty: Vec::new(),
            events: VecDeque::new(),
            counters: MsgCounters::default(),
            delivered: DeliveredMarks::new(cfg.max_peers),
            next_id: 1,
            total_pending: 0,
            seg_size: 1500 - 20 - HEADER_LEN,
            next_timer: None,
            last_now: Instant::ZERO,
            probes: VecDeque::new(),
            next_probe: Instant::ZERO,
            pool: Vec::new(),
            scratch: Vec::new(),
            cfg,
        };
        for a in ep.cfg.peers.clone() {
            ep.add_peer(Instant::ZERO, a);
        }
        ep
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn config(&self) -> &MsgConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &MsgCounters {
        &self.counters
    }

    /// Restores what a previous life of this node delivered (the origins of its last messages,
    /// oldest first, as its inbox log lists them). Call before the first packet: a message
    /// delivered before a crash whose ACK never left is then acknowledged but not delivered again.
    pub fn restore_delivered(&mut self, marks: impl IntoIterator<Item = Origin>) {
        self.delivered.restore(marks);
    }

    /// The highest message delivered per sender (at most `max_peers` senders), oldest first.
    pub fn delivered_marks(&self) -> Vec<Origin> {
        self.delivered.marks()
    }

    pub fn poll_event(&mut self) -> Option<MsgEvent> {
        self.events.pop_front()
    }

    /// Messages accepted by `send_message` and not yet Delivered or Failed.
    pub fn pending(&self) -> usize {
        self.total_pending
    }

    pub fn peers(&self, now: Instant) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .peers
            .values()
            .map(|p| PeerInfo {
                addr: p.addr,
                name: p.name.clone(),
                id: p.node_id,
                epoch: p.epoch,
                rtt_ms: p.rtt.srtt().map(|d| d.as_secs_f64() * 1000.0),
                last_seen_ms_ago: p.last_seen.map(|t| (now - t).as_millis() as u64),
                state: p.state,
                pending: p.pending_msgs,
            })
            .collect();
        v.sort_by_key(|p| p.addr);
        v
    }

    /// The peer's smoothed RTT, for other transports that want a starting estimate.
    pub fn peer_rtt(&self, addr: Ipv4Addr) -> Option<Duration> {
        self.peers.get(&addr).and_then(|p| p.rtt.srtt())
    }

    fn valid_peer_addr(&self, a: Ipv4Addr) -> bool {
        a != self.addr && !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast()
    }

    fn mark_dirty(&mut self, addr: Ipv4Addr) {
        if let Some(p) = self.peers.get_mut(&addr) {
            if !p.in_dirty {
                p.in_dirty = true;
                self.dirty.push(addr);
            }
        }
    }

    /// Makes room for a new peer by forgetting a dead one with nothing queued.
    fn ensure_peer(&mut self, now: Instant, addr: Ipv4Addr) -> bool {
        if self.peers.contains_key(&addr) {
            return true;
        }
        if self.peers.len() >= self.cfg.max_peers {
            let victim = self
                .peers
                .values()
                .filter(|p| p.state == PeerState::Dead && p.segs.is_empty())
                .min_by_key(|p| p.last_seen)
                .map(|p| p.addr);
            match victim {
                Some(v) => {
                    self.peers.remove(&v);
                }
                None => {
                    self.counters.peer_table_full += 1;
                    return false;
                }
            }
        }
        let rtt = RttEstimator::new(self.cfg.initial_rto, self.cfg.min_rto, self.cfg.max_rto);
        self.peers.insert(addr, Peer::new(addr, now, rtt));
        true
    }

    /// Greets `addr`; once it answers, its HELLOs tell us about the rest of the lab.
    pub fn add_peer(&mut self, now: Instant, addr: Ipv4Addr) {
        if !self.valid_peer_addr(addr) || !self.ensure_peer(now, addr) {
            return;
        }
        let p = self.peers.get_mut(&addr).expect("just ensured");
        if p.epoch == 0 && p.hello_due.is_none() {
            p.hello_due = Some(now);
            p.hello_tries = 0;
        }
        self.next_timer = crate::time::earliest(self.next_timer, Some(now));
    }

    /// Queues a HELLO probe for every host address in `net/prefix_len` (bounded), sent at
    /// `discover_rate` per second. Hosts that answer join the peer table.
    pub fn discover(&mut self, now: Instant, net: Ipv4Addr, prefix_len: u8) {
        let prefix_len = prefix_len.clamp(8, 32);
        let mask = if prefix_len == 32 {
            u32::MAX
        } else {
            !(u32::MAX >> prefix_len)
        };
        let base = u32::from(net) & mask;
        let size = 1u64 << (32 - prefix_len);
        let (first, last) = if size <= 2 {
            (0, size - 1)
        } else {
            (1, size - 2) // skip the network and broadcast addresses
        };
        for off in first..=last {
            if self.probes.len() >= self.cfg.max_probe_queue {
                break;
            }
            let a = Ipv4Addr::from(base | off as u32);
            if self.valid_peer_addr(a) && !self.peers.contains_key(&a) {
                self.probes.push_back(a);
            }
        }
        if self.next_probe < now {
            self.next_probe = now;
        }
    }

    pub fn send_message(
        &mut self,
        now: Instant,
        dst: Ipv4Addr,
        msg: Message,
    ) -> Result<MessageId, MsgError> {
        if !self.valid_peer_addr(dst) {
            return Err(MsgError::BadDestination(dst));
        }
        if msg.content.len() > self.cfg.max_message_len {
            return Err(MsgError::TooLarge("content"));
        }
        if msg.channel_id.len() > u16::MAX as usize {
            return Err(MsgError::TooLarge("channel_id"));
        }
        if msg.sender.len() > u16::MAX as usize {
            return Err(MsgError::TooLarge("sender"));
        }
        if msg.timestamp.len() > u8::MAX as usize {
            return Err(MsgError::TooLarge("timestamp"));
        }
        if self.total_pending >= self.cfg.max_pending_total {
            self.counters.queue_full += 1;
            return Err(MsgError::QueueFull);
        }
        if !self.ensure_peer(now, dst) {
            return Err(MsgError::PeerTableFull);
        }
        if self.peers[&dst].pending_msgs >= self.cfg.max_pending {
            self.counters.queue_full += 1;
            return Err(MsgError::PeerQueueFull);
        }
        let id = MessageId(self.next_id);
        self.next_id += 1;
        let mut enc = std::mem::take(&mut self.scratch);
        enc.clear();
        wire::message::encode(
            &mut enc,
            &wire::message::Fields {
                id: id.0,
                content: &msg.content,
                sender: &msg.sender,
                channel: &msg.channel_id,
                timestamp: &msg.timestamp,
                is_file: msg.is_file,
            },
        );
        let seg_size = self.seg_size;
        let n = enc.len().div_ceil(seg_size);
        let p = self.peers.get_mut(&dst).expect("just ensured");
        for (i, chunk) in enc.chunks(seg_size).enumerate() {
            let mut data = self.pool.pop().unwrap_or_default();
            data.clear();
            data.extend_from_slice(chunk);
            let mut f = 0;
            if i == 0 {
                f |= flags::FIRST;
            }
            if i + 1 == n {
                f |= flags::LAST;
            }
            p.segs.push_back(Seg {
                seq: p.snd_nxt,
                msg: id,
                flags: f,
                data,
                last_sent: now,
                tries: 0,
                acked: false,
                lost: false,
                probed: false,
            });
            p.snd_nxt = p.snd_nxt.wrapping_add(1);
        }
        p.pending_msgs += 1;
        if p.epoch == 0 && p.hello_due.is_none() {
            p.hello_due = Some(now);
            p.hello_tries = 0;
            self.next_timer = crate::time::earliest(self.next_timer, Some(now));
        }
        self.scratch = enc;
        self.total_pending += 1;
        self.counters.messages_queued += 1;
        self.mark_dirty(dst);
        Ok(id)
    }

    fn header(&self, ty: u8, flags: u8, peer_epoch: u64, seq: u32, ack: u32) -> Header {
        Header {
            ty,
            flags,
            node_id: self.node_id,
            epoch: self.epoch,
            peer_epoch,
            seq,
            ack,
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

    fn fail_all(&mut self, addr: Ipv4Addr, reason: &str) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        for s in p.segs.drain(..) {
            if s.flags & flags::LAST != 0 {
                self.events.push_back(MsgEvent::Failed {
                    id: s.msg,
                    to: addr,
                    reason: reason.to_string(),
                });
                self.counters.messages_failed += 1;
            }
            if self.pool.len() < 4096 {
                self.pool.push(s.data);
            }
        }
        self.total_pending -= p.pending_msgs;
        p.pending_msgs = 0;
        // Whatever the receiver holds of the failed stream is abandoned: the next message
        // opens a new one.
        p.restart_stream();
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
        if !matches!(h.ty, ty::DATA | ty::ACK | ty::HELLO) {
            self.counters.unknown_type += 1;
            return;
        }
        // Validate the payload before touching any state.
        let hello = match h.ty {
            ty::HELLO => match HelloRepr::parse(payload) {
                Ok(x) => Some(x),
                Err(e) => return self.count_wire_error(e),
            },
            _ => None,
        };
        let ack = match h.ty {
            ty::ACK => match AckRepr::parse(payload) {
                Ok(x) => Some(x),
                Err(e) => return self.count_wire_error(e),
            },
            _ => None,
        };
        if !self.ensure_peer(now, src) {
            return;
        }
        let cfg = &self.cfg;
        let p = self.peers.get_mut(&src).expect("just ensured");
        let first_contact = p.epoch == 0;
        if p.epoch == 0 {
            p.epoch = h.epoch;
            p.node_id = h.node_id;
            p.next_heartbeat = now + cfg.heartbeat;
            self.next_timer = crate::time::earliest(self.next_timer, Some(p.next_heartbeat));
        } else if h.epoch > p.epoch || h.node_id != p.node_id {
            // The peer restarted (or another node took the address): new session.
            p.epoch = h.epoch;
            p.node_id = h.node_id;
            p.reset_receive();
            p.restart_stream();
            self.counters.peer_restarts += 1;
        } else if h.epoch < p.epoch {
            self.counters.stale_epoch += 1;
            return;
        }
        p.last_seen = Some(now);
        p.hello_due = None;
        p.hello_tries = 0;
        if p.state != PeerState::Alive {
            let was = p.state;
            p.state = PeerState::Alive;
            if was != PeerState::Suspect {
                self.events.push_back(MsgEvent::PeerUp {
                    addr: src,
                    name: hello.as_ref().map(|h| h.name.clone()).unwrap_or_default(),
                    id: h.node_id,
                });
            }
        }
        match h.ty {
            ty::HELLO => {
                let hello = hello.expect("parsed above");
                self.counters.hellos_in += 1;
                p.name = hello.name;
                if h.flags & flags::ECHO != 0 {
                    let micros = (now.as_micros() as u32).wrapping_sub(h.ack);
                    if micros < 60_000_000 {
                        p.rtt.sample(Duration::from_micros(micros as u64));
                    }
                }
                if h.flags & flags::REQUEST != 0 {
                    p.hello_reply = Some(Some(h.seq));
                }
                for a in hello.peers {
                    if self.valid_peer_addr(a)
                        && !self.peers.contains_key(&a)
                        && !self.probes.contains(&a)
                        && self.probes.len() < self.cfg.max_probe_queue
                    {
                        // Peer exchange goes ahead of a range scan: these addresses are known good.
                        self.probes.push_front(a);
                    }
                }
            }
            ty::ACK => {
                self.counters.acks_in += 1;
                if h.peer_epoch != self.epoch {
                    self.counters.wrong_epoch += 1;
                    return;
                }
                let ack = ack.expect("parsed above");
                self.process_ack(now, src, h.ack, &ack.ranges);
            }
            _ => {
                self.counters.data_in += 1;
                if h.peer_epoch != self.epoch {
                    // Meant for our previous life, or the sender never heard from us.
                    self.counters.wrong_epoch += 1;
                    if p.hello_reply.is_none() {
                        p.hello_reply = Some(None);
                    }
                } else {
                    if first_contact && h.flags & flags::SYN == 0 {
                        // The first we hear of this sender is the middle of a stream: it began
                        // with another node at this address (one that stopped, while we
                        // started within the same second and so with the same epoch). Only our
                        // node id, in a HELLO, makes the sender open a new stream; otherwise it
                        // would resend the middle of the old one to us until it gave up.
                        p.hello_reply = Some(None);
                    }
                    self.process_data(src, h.seq, h.flags, payload);
                }
            }
        }
        self.mark_dirty(src);
    }

    fn process_data(&mut self, src: Ipv4Addr, seq: u32, f: u8, data: &[u8]) {
        let window = self.cfg.window;
        let max_len = self.cfg.max_message_len + 600;
        let p = self.peers.get_mut(&src).expect("caller checked");
        p.ack_pending = true;
        let syn = f & flags::SYN != 0;
        match p.rcv_next {
            None if syn => {
                p.rcv_next = Some(seq);
                p.ooo.retain(|&s, _| !seq_lt(s, seq));
            }
            None => {
                // The stream's first segment has not arrived yet; keep this one for then.
                if p.ooo.len() < window as usize {
                    p.ooo.entry(seq).or_insert_with(|| (f, data.to_vec()));
                } else {
                    self.counters.out_of_window += 1;
                }
                return;
            }
            Some(n) if syn && seq_lt(n, seq) => {
                // The sender abandoned what we were waiting for and opened a new stream.
                p.rcv_next = Some(seq);
                p.ooo.retain(|&s, _| !seq_lt(s, seq));
                p.reasm.clear();
                p.reasm_active = false;
            }
            Some(_) => {}
        }
        let next = p.rcv_next.expect("set above");
        if seq_lt(seq, next) {
            self.counters.duplicates += 1;
            return;
        }
        if seq.wrapping_sub(next) >= window {
            self.counters.out_of_window += 1;
            return;
        }
        if seq != next {
            match p.ooo.entry(seq) {
                std::collections::btree_map::Entry::Occupied(_) => self.counters.duplicates += 1,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert((f, data.to_vec()));
                }
            }
            return;
        }
        let mut out = Deliveries {
            events: &mut self.events,
            counters: &mut self.counters,
            marks: &mut self.delivered,
            max_len,
        };
        deliver(p, src, f, data, &mut out);
        let mut next = next.wrapping_add(1);
        while let Some((f, d)) = p.ooo.remove(&next) {
            deliver(p, src, f, &d, &mut out);
            next = next.wrapping_add(1);
        }
        p.rcv_next = Some(next);
    }

    fn process_ack(&mut self, now: Instant, src: Ipv4Addr, cum: u32, ranges: &[(u32, u32)]) {
        let p = self.peers.get_mut(&src).expect("caller checked");
        let Some(front) = p.segs.front() else {
            return;
        };
        let base = front.seq;
        let sent = p.next_unsent;
        // Offsets into `segs`; anything outside what we sent is nonsense and ignored.
        let off = |s: u32| s.wrapping_sub(base) as usize;
        let cum_off = if seq_lt(cum, base) {
            0
        } else {
            off(cum).min(sent)
        };
        let mut sample: Option<Duration> = None;
        let mut newly = false;
        let mut mark = |p: &mut Peer, i: usize| {
            let s = &mut p.segs[i];
            if !s.acked {
                s.acked = true;
                s.lost = false;
                newly = true;
                if s.tries == 1 && !s.probed {
                    sample = Some(now - s.last_sent);
                }
            }
        };
        for i in 0..cum_off {
            mark(p, i);
        }
        let mut highest_sacked = None;
        for &(a, b) in ranges {
            if seq_lt(a, base) || !seq_lt(a, b) {
                continue;
            }
            let (a, b) = (off(a).min(sent), off(b).min(sent));
            for i in a..b {
                mark(p, i);
            }
            if b > a {
                highest_sacked = Some(highest_sacked.unwrap_or(0).max(b - 1));
            }
        }
        if let Some(r) = sample {
            p.rtt.sample(r);
        }
        if newly {
            p.probes = 0;
        }
        // Three later segments held by the receiver are evidence enough that this one was lost.
        if let Some(h) = highest_sacked {
            let min_gap = p.rtt.srtt().unwrap_or(p.rtt.rto());
            for i in 0..h.saturating_sub(2) {
                let s = &mut p.segs[i];
                if !s.acked && !s.lost && s.tries > 0 && now - s.last_sent >= min_gap {
                    s.lost = true;
                }
            }
        }
        // Pop whole messages whose last segment the cumulative ACK covers.
        let mut covered = cum_off;
        while let Some(j) = p
            .segs
            .iter()
            .take(covered)
            .position(|s| s.flags & flags::LAST != 0)
        {
            for s in p.segs.drain(..=j) {
                if self.pool.len() < 4096 {
                    self.pool.push(s.data);
                }
                if s.flags & flags::LAST != 0 {
                    self.events
                        .push_back(MsgEvent::Delivered { id: s.msg, to: src });
                }
            }
            covered -= j + 1;
            p.next_unsent -= j + 1;
            p.pending_msgs -= 1;
            self.total_pending -= 1;
            self.counters.messages_delivered += 1;
        }
    }

    fn send_hello(
        &mut self,
        tx: &mut Tx,
        dst: Ipv4Addr,
        now: Instant,
        reply_to: Option<Option<u32>>,
    ) {
        let peers: Vec<Ipv4Addr> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Alive && p.addr != dst)
            .take(wire::MAX_HELLO_PEERS)
            .map(|p| p.addr)
            .collect();
        let hello = HelloRepr {
            name: self.cfg.node_name.clone(),
            peers,
        };
        let peer_epoch = self.peers.get(&dst).map_or(0, |p| p.epoch);
        let (f, ack) = match reply_to {
            Some(Some(nonce)) => (flags::ECHO, nonce),
            Some(None) => (0, 0),
            None => (flags::REQUEST, 0),
        };
        let h = self.header(ty::HELLO, f, peer_epoch, now.as_micros() as u32, ack);
        let len = HEADER_LEN + hello.buffer_len();
        let r = tx.send(dst, PROTOCOL, len, |buf| {
            hello.emit(&mut buf[HEADER_LEN..]);
            h.emit(buf);
        });
        self.count_send(r);
        self.counters.hellos_out += 1;
    }

    fn count_send(&mut self, r: Result<(), crate::ip::TxError>) {
        match r {
            Ok(()) => self.counters.packets_out += 1,
            Err(_) => self.counters.tx_queue_full += 1,
        }
    }

    fn send_ack(&mut self, tx: &mut Tx, addr: Ipv4Addr) {
        let p = self.peers.get_mut(&addr).expect("caller checked");
        p.ack_pending = false;
        let Some(next) = p.rcv_next else {
            return;
        };
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for &s in p.ooo.keys() {
            match ranges.last_mut() {
                Some(r) if r.1 == s => r.1 = s.wrapping_add(1),
                _ => {
                    if ranges.len() == wire::MAX_SACK_RANGES {
                        break;
                    }
                    ranges.push((s, s.wrapping_add(1)));
                }
            }
        }
        let peer_epoch = p.epoch;
        let a = AckRepr { ranges };
        let h = self.header(ty::ACK, 0, peer_epoch, 0, next);
        let r = tx.send(addr, PROTOCOL, HEADER_LEN + a.buffer_len(), |buf| {
            a.emit(&mut buf[HEADER_LEN..]);
            h.emit(buf);
        });
        self.count_send(r);
        self.counters.acks_out += 1;
    }

    fn send_seg(&mut self, tx: &mut Tx, now: Instant, addr: Ipv4Addr, i: usize) {
        let node_id = self.node_id;
        let epoch = self.epoch;
        let p = self.peers.get_mut(&addr).expect("caller checked");
        let s = &mut p.segs[i];
        let mut f = s.flags;
        if s.seq == p.stream_start {
            f |= flags::SYN;
        }
        let h = Header {
            ty: ty::DATA,
            flags: f,
            node_id,
            epoch,
            peer_epoch: p.epoch,
            seq: s.seq,
            ack: 0,
        };
        let data = &s.data;
        let r = tx.send(addr, PROTOCOL, HEADER_LEN + data.len(), |buf| {
            buf[HEADER_LEN..].copy_from_slice(data);
            h.emit(buf);
        });
        if s.tries > 0 {
            self.counters.retransmits += 1;
        }
        s.tries += 1;
        s.last_sent = now;
        s.lost = false;
        let tries = s.tries;
        p.last_send = now;
        let deadline = (now + p.timeout(tries, &self.cfg)).min(now + p.pto());
        self.next_timer = crate::time::earliest(self.next_timer, Some(deadline));
        self.counters.data_out += 1;
        self.count_send(r);
    }

    /// Resends segment `i` as a probe: its tries and timer stay as they are.
    fn send_probe(&mut self, tx: &mut Tx, now: Instant, addr: Ipv4Addr, i: usize) {
        let p = self.peers.get_mut(&addr).expect("caller checked");
        let (tries, last_sent) = (p.segs[i].tries, p.segs[i].last_sent);
        self.send_seg(tx, now, addr, i);
        let p = self.peers.get_mut(&addr).expect("present");
        let s = &mut p.segs[i];
        s.tries = tries;
        s.last_sent = last_sent;
        s.probed = true;
        p.probes += 1;
        self.counters.probes += 1;
    }

    /// Sends what `addr` is owed: a HELLO answer, an ACK, lost segments, new segments.
    fn flush(&mut self, now: Instant, tx: &mut Tx, addr: Ipv4Addr) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        p.in_dirty = false;
        if let Some(r) = p.hello_reply.take() {
            self.send_hello(tx, addr, now, Some(r));
        }
        let p = &self.peers[&addr];
        if p.ack_pending {
            self.send_ack(tx, addr);
        }
        let p = &self.peers[&addr];
        if p.epoch == 0 || p.segs.is_empty() {
            return;
        }
        let window = self.cfg.window as usize;
        let limit = p.segs.iter().position(|s| !s.acked).unwrap_or(p.segs.len()) + window;
        for i in 0..p.next_unsent.min(limit) {
            if self.peers[&addr].segs[i].lost {
                if tx.room() == 0 {
                    return self.mark_dirty(addr);
                }
                self.counters.fast_retransmits += 1;
                self.send_seg(tx, now, addr, i);
            }
        }
        loop {
            let p = &self.peers[&addr];
            let i = p.next_unsent;
            if i >= p.segs.len() || i >= limit {
                break;
            }
            if tx.room() == 0 {
                return self.mark_dirty(addr);
            }
            self.send_seg(tx, now, addr, i);
            self.peers.get_mut(&addr).expect("present").next_unsent += 1;
        }
    }

    /// Retransmissions, HELLO retries, heartbeats and liveness for one peer. Returns the peer's
    /// next deadline.
    fn timers(&mut self, now: Instant, tx: &mut Tx, addr: Ipv4Addr) -> Option<Instant> {
        let cfg = self.cfg.clone_timing();
        let p = self.peers.get_mut(&addr).expect("caller checked");
        let mut next: Option<Instant> = None;
        // Liveness.
        if let Some(seen) = p.last_seen {
            let quiet = now - seen;
            if quiet >= cfg.dead_after && p.state != PeerState::Dead {
                p.state = PeerState::Dead;
                self.events.push_back(MsgEvent::PeerDown { addr });
            } else if quiet >= cfg.suspect_after && p.state == PeerState::Alive {
                p.state = PeerState::Suspect;
            }
            if p.state == PeerState::Alive {
                next = crate::time::earliest(next, Some(seen + cfg.suspect_after));
            } else if p.state == PeerState::Suspect {
                next = crate::time::earliest(next, Some(seen + cfg.dead_after));
            }
        }
        // Greeting a peer whose epoch we do not know (needed before any DATA can go).
        if let Some(due) = p.hello_due {
            if due <= now {
                if p.hello_tries > cfg.max_retries && p.epoch == 0 {
                    p.hello_tries = 0;
                    p.hello_due = Some(now + cfg.heartbeat);
                    if !p.segs.is_empty() {
                        let reason =
                            format!("no answer from {addr} after {} tries", cfg.max_retries + 1);
                        self.fail_all(addr, &reason);
                    }
                } else {
                    p.hello_tries += 1;
                    let t = p.timeout(p.hello_tries, &self.cfg);
                    p.hello_due = Some(now + t);
                    self.send_hello(tx, addr, now, None);
                }
            }
        }
        let p = self.peers.get_mut(&addr).expect("present");
        next = crate::time::earliest(next, p.hello_due);
        if p.epoch != 0 {
            if p.next_heartbeat <= now {
                p.next_heartbeat = now + cfg.heartbeat;
                self.send_hello(tx, addr, now, None);
            }
            let p = &self.peers[&addr];
            next = crate::time::earliest(next, Some(p.next_heartbeat));
        }
        // Retransmissions.
        let p = &self.peers[&addr];
        let mut failed = None;
        let mut due = Vec::new();
        for i in 0..p.next_unsent {
            let s = &p.segs[i];
            if s.acked || s.tries == 0 {
                continue;
            }
            let d = s.last_sent + p.timeout(s.tries, &self.cfg);
            if d <= now {
                if s.tries > cfg.max_retries {
                    failed = Some(s.tries);
                    break;
                }
                due.push(i);
            } else {
                next = crate::time::earliest(next, Some(d));
            }
        }
        if let Some(tries) = failed {
            let reason = format!("not acknowledged by {addr} after {tries} tries");
            self.fail_all(addr, &reason);
            return next;
        }
        if due.is_empty() && p.probes < MAX_PROBES {
            // No ACK for a probe timeout while several segments are out: the ones that would
            // show a hole (or their ACKs) were lost. Resend the oldest unacknowledged one; its
            // ACK carries the evidence fast retransmission needs. Unlike a timeout, a probe
            // neither counts as a try nor restarts the segment's own timer. A lone segment is
            // left to its timer: a probe would only be an early retransmission of it.
            let mut out = (0..p.next_unsent).filter(|&i| !p.segs[i].acked && p.segs[i].tries > 0);
            let first = out.next().filter(|_| out.next().is_some());
            if let Some(i) = first {
                let at = p.last_send + p.pto();
                if at > now {
                    next = crate::time::earliest(next, Some(at));
                } else if tx.room() == 0 {
                    return Some(now + Duration::from_millis(1));
                } else {
                    self.send_probe(tx, now, addr, i);
                    let p = &self.peers[&addr];
                    next = crate::time::earliest(next, Some(p.last_send + p.pto()));
                }
            }
        }
        for i in due {
            if tx.room() == 0 {
                return Some(now + Duration::from_millis(1));
            }
            self.send_seg(tx, now, addr, i);
            let p = &self.peers[&addr];
            let s = &p.segs[i];
            next = crate::time::earliest(next, Some(s.last_sent + p.timeout(s.tries, &self.cfg)));
        }
        next
    }
}

/// The timing subset of the config, copied so timers can borrow a peer mutably.
struct Timing {
    max_retries: u32,
    heartbeat: Duration,
    suspect_after: Duration,
    dead_after: Duration,
}

impl MsgConfig {
    fn clone_timing(&self) -> Timing {
        Timing {
            max_retries: self.max_retries,
            heartbeat: self.heartbeat,
            suspect_after: self.suspect_after,
            dead_after: self.dead_after,
        }
    }
}

/// Where `deliver` puts what it completes, borrowed from the endpoint beside the peer.
struct Deliveries<'a> {
    events: &'a mut VecDeque<MsgEvent>,
    counters: &'a mut MsgCounters,
    marks: &'a mut DeliveredMarks,
    /// The largest encoded message accepted.
    max_len: usize,
}

/// Appends one in-order segment to the message being reassembled and emits it when complete,
/// unless the peer's mark shows it delivered already.
fn deliver(p: &mut Peer, src: Ipv4Addr, f: u8, data: &[u8], out: &mut Deliveries<'_>) {
    let c = &mut *out.counters;
    let max_len = out.max_len;
    let whole: &[u8];
    if f & flags::FIRST != 0 && f & flags::LAST != 0 {
        // The common case needs no copy.
        whole = data;
    } else {
        if f & flags::FIRST != 0 {
            p.reasm.clear();
            p.reasm_active = true;
        }
        if !p.reasm_active {
            return;
        }
        if p.reasm.len() + data.len() > max_len {
            p.reasm.clear();
            p.reasm_active = false;
            c.messages_malformed += 1;
            return;
        }
        p.reasm.extend_from_slice(data);
        if f & flags::LAST == 0 {
            return;
        }
        p.reasm_active = false;
        whole = &p.reasm;
    }
    match wire::message::decode(whole) {
        Ok(m) => {
            // The session's node id and epoch are the header's: `handle` set them before DATA.
            let origin = Origin {
                node_id: p.node_id,
                epoch: p.epoch,
                id: MessageId(m.id),
            };
            if !out.marks.admit(origin) {
                c.duplicate_messages += 1;
                return;
            }
            c.messages_received += 1;
            out.events.push_back(MsgEvent::Received {
                from: src,
                msg: Message {
                    content: m.content.to_string(),
                    sender: m.sender.to_string(),
                    channel_id: m.channel.to_string(),
                    timestamp: m.timestamp.to_string(),
                    is_file: m.is_file,
                },
                origin,
            });
        }
        Err(_) => c.messages_malformed += 1,
    }
}

impl Transport for MsgEndpoint {
    fn handle_packet(&mut self, now: Instant, pkt: &IpPacket<'_>, _tx: &mut Tx) -> bool {
        self.last_now = now;
        self.handle(now, pkt.src(), pkt.payload);
        true
    }

    fn handle_icmp_error(&mut self, _now: Instant, _err: &IcmpError<'_>, _tx: &mut Tx) {
        // Retransmission gives up on its own; an ICMP error is only worth counting because it
        // can be forged and the reliable path does not need it.
        self.counters.icmp_errors += 1;
    }

    fn poll(&mut self, now: Instant, tx: &mut Tx) {
        self.last_now = now;
        self.seg_size = tx.max_payload().saturating_sub(HEADER_LEN).max(64);
        if self.next_timer.is_some_and(|t| t <= now) {
            let addrs: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
            let mut next = None;
            for a in addrs {
                let n = self.timers(now, tx, a);
                next = crate::time::earliest(next, n);
                self.mark_dirty(a);
            }
            self.next_timer = next;
        }
        for a in std::mem::take(&mut self.dirty) {
            self.flush(now, tx, a);
        }
        while !self.probes.is_empty() && self.next_probe <= now && tx.room() > 0 {
            let a = self.probes.pop_front().expect("not empty");
            if self.peers.contains_key(&a) {
                continue;
            }
            self.send_hello(tx, a, now, None);
            self.counters.probes_out += 1;
            let gap = Duration::from_secs(1) / self.cfg.discover_rate.max(1);
            self.next_probe = self.next_probe.max(now - gap) + gap;
        }
    }

    fn poll_at(&self) -> Option<Instant> {
        let mut t = self.next_timer;
        if !self.dirty.is_empty() {
            t = crate::time::earliest(t, Some(self.last_now));
        }
        if !self.probes.is_empty() {
            t = crate::time::earliest(t, Some(self.next_probe));
        }
        t
    }
}
