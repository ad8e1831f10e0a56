//! TCP (RFC 9293) as a sans-IO state machine.
//!
//! `Tcp` is the endpoint: it owns every connection and listener of one address, demultiplexes
//! inbound segments by 4-tuple, runs timers from one heap, and sends only for connections on
//! its dirty list, so the cost of a `poll` follows the work to do, not the number of sockets.
//! The methods fall in the usual groups: inputs (`handle_packet`, `handle_icmp_error`, from the
//! IP layer), outputs (`poll`, `poll_at`), application commands (`connect`, `send`, ...) and
//! getters (`state`, `sockets`, ...). Application commands never send: they mark the connection
//! dirty and the next `poll` (which `poll_at` asks for at once) sends.
//!
//! See `docs/tcp.md` for what is implemented, with RFC references.

/// Congestion control lives beside the transports that use it (TCP and protocol 171).
pub use crate::cc;
mod conn;
pub mod events;
pub mod isn;
pub mod ring;
pub mod seq;
pub mod wire;

pub use cc::Congestion;
pub use seq::SeqNumber;

use crate::ip::{IcmpError, IcmpErrorKind, IpPacket, SendOptions, Transport, Tx};
use crate::rand::Rng;
use crate::time::{Duration, Instant};
use conn::{Conn, Env, Negotiated, Reply};
use events::{
    ClosedTimeline, EventKind, EventLog, ResetReport, RstReason, TcpEvent, CLOSED_TIMELINES,
    MAX_RESET_REPORTS,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use wire::{Flags, ParseError, TcpHeader, TcpOptions};

/// Tunables. `Default` suits the lab: short TIME-WAIT, 256 KiB buffers.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Largest segment we accept, announced in our SYN; also capped by the interface MTU.
    pub mss: u16,
    /// Receive buffer per connection. 256 KiB covers the bandwidth-delay product of 100 Mbit/s
    /// at 20 ms, the scale of the lab; the pages are only touched as data flows.
    pub rx_buffer: usize,
    /// How far the receive buffer may grow while out-of-order data fills it (loss recovery:
    /// see `Conn::maybe_grow_rx`); the window scale is chosen for this size. The growth counts
    /// against `max_buffer_total`.
    pub rx_buffer_max: usize,
    /// Send buffer per connection.
    pub tx_buffer: usize,
    /// TIME-WAIT length, 2 x MSL (RFC 9293 section 3.4.2 suggests MSL = 2 min; the lab uses less).
    pub time_wait: Duration,
    /// How long an orphaned connection may sit in FIN-WAIT-2 (as Linux's tcp_fin_timeout).
    pub fin_timeout: Duration,
    pub congestion: Congestion,
    /// Default for new connections; `set_nodelay` overrides per socket.
    pub nodelay: bool,
    /// Delayed ACK timeout (RFC 9293 section 3.8.6.3: under 500 ms); zero acknowledges at once.
    pub delayed_ack: Duration,
    /// Idle time before keep-alive probes (RFC 9293 section 3.8.4); `None` disables them.
    pub keepalive: Option<Duration>,
    pub keepalive_interval: Duration,
    pub keepalive_probes: u32,
    pub max_connections: usize,
    /// Half-open plus not-yet-accepted connections per listener before SYN cookies take over.
    pub syn_backlog: usize,
    pub syn_cookies: bool,
    /// Key for ISNs and SYN cookies (RFC 6528). The driver fills it from OS randomness.
    pub isn_secret: [u8; 16],
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// Retransmissions of one segment before the connection is abandoned.
    pub max_retransmits: u32,
    pub syn_retries: u32,
    pub window_scaling: bool,
    pub sack: bool,
    pub timestamps: bool,
    /// RFC 5961 section 7: challenge ACKs per second, across all connections.
    pub challenge_ack_limit: u32,
    /// Bytes of send and receive buffers all connections together may reserve. A connection
    /// reserves `rx_buffer + tx_buffer` for its lifetime but holds memory only while data is
    /// queued (see `ring::Ring`), so this bounds the worst case, not the usual footprint.
    pub max_buffer_total: usize,
    pub ephemeral_ports: (u16, u16),
    /// Queue a `ResetReport` for every reset sent or received (`poll_reset`), for a node that
    /// dumps the packets behind each reset. Off by default: nobody would drain the queue.
    pub reset_reports: bool,
    /// For tests only: every new connection starts at this ISN (to exercise wrap-around).
    #[doc(hidden)]
    pub fixed_isn: Option<u32>,
}

impl TcpConfig {
    /// The largest receive buffer a connection may have (initial or grown).
    pub fn rx_buffer_limit(&self) -> usize {
        self.rx_buffer.max(self.rx_buffer_max)
    }
}

impl Default for TcpConfig {
    fn default() -> TcpConfig {
        TcpConfig {
            mss: 1460,
            rx_buffer: 256 * 1024,
            rx_buffer_max: 4 << 20,
            tx_buffer: 256 * 1024,
            time_wait: Duration::from_secs(2),
            fin_timeout: Duration::from_secs(60),
            congestion: Congestion::Bbr,
            nodelay: false,
            delayed_ack: Duration::from_millis(40),
            keepalive: None,
            keepalive_interval: Duration::from_secs(75),
            keepalive_probes: 9,
            max_connections: 16_384,
            syn_backlog: 128,
            syn_cookies: true,
            isn_secret: [0; 16],
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(60),
            max_retransmits: 15,
            syn_retries: 6,
            window_scaling: true,
            sack: true,
            timestamps: true,
            challenge_ack_limit: 1000,
            // Room for `max_connections` connections at the default buffer sizes.
            max_buffer_total: 8 << 30,
            ephemeral_ports: (49152, 65535),
            reset_reports: false,
            fixed_isn: None,
        }
    }
}

/// A connection, as the application names it. Stale handles (the slot was reused) are refused.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct SocketHandle {
    index: u32,
    generation: u32,
}

#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct ListenerHandle {
    index: u32,
    generation: u32,
}

/// Errors, sorted by cause: API misuse, resource limits, and what the network or the peer did.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TcpError {
    InvalidHandle,
    /// Nothing to read yet (`recv`), the connection is still opening or has data pending.
    WouldBlock,
    /// Writing after `shutdown_write` or after the peer reset the connection.
    BrokenPipe,
    NotConnected,
    AddrInUse,
    NoPorts,
    TooManyConnections,
    /// The total buffer budget (`max_buffer_total`) is spent.
    NoBufferSpace,
    ConnectionReset,
    ConnectionRefused,
    TimedOut,
    HostUnreachable,
}

impl fmt::Display for TcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcpError::InvalidHandle => "invalid socket handle",
            TcpError::WouldBlock => "operation would block",
            TcpError::BrokenPipe => "broken pipe",
            TcpError::NotConnected => "not connected",
            TcpError::AddrInUse => "address in use",
            TcpError::NoPorts => "no ephemeral ports left",
            TcpError::TooManyConnections => "too many connections",
            TcpError::NoBufferSpace => "no buffer space",
            TcpError::ConnectionReset => "connection reset by peer",
            TcpError::ConnectionRefused => "connection refused",
            TcpError::TimedOut => "connection timed out",
            TcpError::HostUnreachable => "host unreachable",
        })
    }
}

impl std::error::Error for TcpError {}

/// RFC 9293 section 3.3.2 states.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl fmt::Display for TcpState {
    /// The names `ss` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcpState::Closed => "CLOSED",
            TcpState::Listen => "LISTEN",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynReceived => "SYN-RECV",
            TcpState::Established => "ESTAB",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::Closing => "CLOSING",
            TcpState::LastAck => "LAST-ACK",
            TcpState::TimeWait => "TIME-WAIT",
        })
    }
}

impl serde::Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One row of `tunstack ctl sockets`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SocketInfo {
    pub state: TcpState,
    pub local: String,
    pub remote: String,
    pub cwnd: usize,
    pub ssthresh: usize,
    pub srtt_us: u64,
    pub rttvar_us: u64,
    pub rto_ms: u64,
    pub bytes_in_flight: usize,
    pub retransmits: u64,
    pub rx_queue: usize,
    pub tx_queue: usize,
    pub mss: usize,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub sack: bool,
    pub timestamps: bool,
    pub snd_wnd: usize,
    /// The receive window as last advertised, in bytes (a multiple of the window scale unit).
    pub rcv_wnd: usize,
    pub congestion: Congestion,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub in_recovery: bool,
    /// The connection's timeline, oldest first, when asked for (`sockets_with_events`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<TcpEvent>>,
}

/// Endpoint-wide counters; every cap hit and every refused segment is counted.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TcpCounters {
    pub active_opens: u64,
    pub passive_opens: u64,
    pub segments_in: u64,
    pub segments_out: u64,
    pub resets_in: u64,
    pub resets_out: u64,
    pub retransmits: u64,
    pub fast_retransmits: u64,
    /// Retransmissions found lost in recovery (by SACKs for later data) and resent again.
    pub lost_retransmits: u64,
    /// Tail loss probes sent (RFC 8985 section 7).
    pub loss_probes: u64,
    pub rto_timeouts: u64,
    pub timeouts: u64,
    pub keepalive_timeouts: u64,
    pub fin_timeouts: u64,
    pub window_probes: u64,
    pub syn_cookies_sent: u64,
    pub syn_cookies_validated: u64,
    pub syn_cookies_failed: u64,
    pub challenge_acks: u64,
    pub challenge_acks_limited: u64,
    pub bad_checksum: u64,
    pub malformed: u64,
    pub not_for_us: u64,
    pub out_of_window: u64,
    pub paws_rejected: u64,
    pub ooo_segments: u64,
    pub ooo_dropped: u64,
    pub icmp_errors: u64,
    pub tx_dropped: u64,
    pub cap_connections: u64,
    pub cap_syn_backlog: u64,
    pub cap_buffer_total: u64,
    /// Receive buffers doubled for out-of-order data (receive autotuning).
    pub rx_buffer_grown: u64,
    pub closed_port: u64,
    /// Reset reports dropped because the node had not drained the queue (a reset flood).
    pub reset_reports_dropped: u64,
}

#[derive(Debug)]
struct Listener {
    port: u16,
    queue: VecDeque<SocketHandle>,
    half_open: usize,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    item: Option<T>,
}

#[derive(Debug)]
pub struct Tcp {
    cfg: TcpConfig,
    addr: Ipv4Addr,
    now: Instant,
    conns: Vec<Slot<Conn>>,
    free_conns: Vec<u32>,
    by_tuple: HashMap<(u16, SocketAddrV4), u32>,
    listeners: Vec<Slot<Listener>>,
    by_port: HashMap<u16, u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    dirty: Vec<u32>,
    ready: Vec<SocketHandle>,
    counters: TcpCounters,
    challenge_budget: u32,
    challenge_window: Instant,
    next_port: u16,
    buffer_total: usize,
    live: usize,
    mtu: usize,
    /// Resets requested by `abort`, sent on the next `poll`.
    pending_rsts: Vec<(u16, SocketAddrV4, SeqNumber)>,
    /// Timelines of the last connections released, oldest first (bounded).
    closed: VecDeque<(
        SocketAddrV4,
        SocketAddrV4,
        Instant,
        Option<TcpError>,
        EventLog,
    )>,
    /// Resets not yet drained by `poll_reset` (bounded).
    resets: VecDeque<ResetReport>,
}

impl Tcp {
    pub fn new(cfg: TcpConfig, addr: Ipv4Addr, mut rng: Rng) -> Tcp {
        let (lo, hi) = cfg.ephemeral_ports;
        let span = hi.saturating_sub(lo) as u64 + 1;
        Tcp {
            next_port: lo + rng.below(span) as u16,
            challenge_budget: cfg.challenge_ack_limit,
            cfg,
            addr,
            now: Instant::ZERO,
            conns: Vec::new(),
            free_conns: Vec::new(),
            by_tuple: HashMap::new(),
            listeners: Vec::new(),
            by_port: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            ready: Vec::new(),
            counters: TcpCounters::default(),
            challenge_window: Instant::ZERO,
            buffer_total: 0,
            live: 0,
            mtu: 1500,
            pending_rsts: Vec::new(),
            closed: VecDeque::new(),
            resets: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &TcpCounters {
        &self.counters
    }

    // ----- listeners -----

    pub fn listen(&mut self, port: u16) -> Result<ListenerHandle, TcpError> {
        if port == 0 || self.by_port.contains_key(&port) {
            return Err(TcpError::AddrInUse);
        }
        let l = Listener {
            port,
            queue: VecDeque::new(),
            half_open: 0,
        };
        let index = match self.listeners.iter().position(|s| s.item.is_none()) {
            Some(i) => {
                self.listeners[i].item = Some(l);
                i
            }
            None => {
                self.listeners.push(Slot {
                    generation: 0,
                    item: Some(l),
                });
                self.listeners.len() - 1
            }
        };
        self.by_port.insert(port, index as u32);
        Ok(ListenerHandle {
            index: index as u32,
            generation: self.listeners[index].generation,
        })
    }

    fn listener(&self, l: ListenerHandle) -> Option<&Listener> {
        let s = self.listeners.get(l.index as usize)?;
        (s.generation == l.generation)
            .then_some(s.item.as_ref())
            .flatten()
    }

    /// Stops listening; connections not yet accepted are reset.
    pub fn unlisten(&mut self, l: ListenerHandle) {
        if self.listener(l).is_none() {
            return;
        }
        let slot = &mut self.listeners[l.index as usize];
        let listener = slot.item.take().unwrap();
        slot.generation = slot.generation.wrapping_add(1);
        self.by_port.remove(&listener.port);
        for h in listener.queue {
            self.abort(h);
            self.close(h);
        }
        let idx = l.index as usize;
        let orphans: Vec<u32> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.item
                    .as_ref()
                    .is_some_and(|c| c.listener == Some(idx) && c.half_open)
            })
            .map(|(i, _)| i as u32)
            .collect();
        for i in orphans {
            let h = self.handle_of(i);
            self.abort(h);
            self.close(h);
        }
    }

    /// An established connection from the listener's queue, if any.
    pub fn accept(&mut self, l: ListenerHandle) -> Option<SocketHandle> {
        self.listener(l)?;
        loop {
            let h = self.listeners[l.index as usize]
                .item
                .as_mut()?
                .queue
                .pop_front()?;
            if let Some(c) = self.conn_mut_any(h) {
                c.orphaned = false;
                c.listener = None;
                return Some(h);
            }
        }
    }

    pub fn listener_ready(&self, l: ListenerHandle) -> bool {
        self.listener(l).is_some_and(|l| !l.queue.is_empty())
    }

    // ----- connections: commands -----

    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddrV4,
    ) -> Result<SocketHandle, TcpError> {
        self.now = self.now.max(now);
        if self.live >= self.cfg.max_connections {
            self.counters.cap_connections += 1;
            return Err(TcpError::TooManyConnections);
        }
        let port = self.pick_port(remote)?;
        let local = SocketAddrV4::new(self.addr, port);
        let iss = self.isn(now, local, remote);
        let conn = Conn::connect(&self.cfg, local, remote, iss, self.mtu);
        let i = self.insert(conn)?;
        self.counters.active_opens += 1;
        self.mark_dirty(i);
        Ok(self.handle_of(i))
    }

    fn pick_port(&mut self, remote: SocketAddrV4) -> Result<u16, TcpError> {
        let (lo, hi) = self.cfg.ephemeral_ports;
        let span = hi as u32 - lo as u32 + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= hi { lo } else { p + 1 };
            if !self.by_port.contains_key(&p) && !self.by_tuple.contains_key(&(p, remote)) {
                return Ok(p);
            }
        }
        Err(TcpError::NoPorts)
    }

    fn isn(&self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4) -> SeqNumber {
        match self.cfg.fixed_isn {
            Some(n) => SeqNumber(n),
            None => isn::isn(&self.cfg.isn_secret, now, local, remote),
        }
    }

    fn insert(&mut self, conn: Conn) -> Result<u32, TcpError> {
        let bytes = self.cfg.rx_buffer + self.cfg.tx_buffer;
        if self.buffer_total + bytes > self.cfg.max_buffer_total {
            self.counters.cap_buffer_total += 1;
            return Err(TcpError::NoBufferSpace);
        }
        self.buffer_total += bytes;
        self.live += 1;
        let key = (conn.local.port(), conn.remote);
        let i = match self.free_conns.pop() {
            Some(i) => {
                self.conns[i as usize].item = Some(conn);
                i
            }
            None => {
                self.conns.push(Slot {
                    generation: 0,
                    item: Some(conn),
                });
                (self.conns.len() - 1) as u32
            }
        };
        self.by_tuple.insert(key, i);
        Ok(i)
    }

    fn handle_of(&self, i: u32) -> SocketHandle {
        SocketHandle {
            index: i,
            generation: self.conns[i as usize].generation,
        }
    }

    fn conn_any(&self, h: SocketHandle) -> Option<&Conn> {
        let s = self.conns.get(h.index as usize)?;
        (s.generation == h.generation)
            .then_some(s.item.as_ref())
            .flatten()
    }

    fn conn_mut_any(&mut self, h: SocketHandle) -> Option<&mut Conn> {
        let s = self.conns.get_mut(h.index as usize)?;
        if s.generation != h.generation {
            return None;
        }
        s.item.as_mut()
    }

    /// The connection behind a handle the application holds.
    fn conn(&self, h: SocketHandle) -> Result<&Conn, TcpError> {
        self.conn_any(h)
            .filter(|c| !c.orphaned)
            .ok_or(TcpError::InvalidHandle)
    }

    fn conn_mut(&mut self, h: SocketHandle) -> Result<&mut Conn, TcpError> {
        self.conn_mut_any(h)
            .filter(|c| !c.orphaned)
            .ok_or(TcpError::InvalidHandle)
    }

    /// Copies as much of `data` as fits into the send buffer: `Ok(0)` means full. Data may be
    /// queued while the connection is still opening.
    pub fn send(&mut self, h: SocketHandle, data: &[u8]) -> Result<usize, TcpError> {
        let c = self.conn_mut(h)?;
        if let Some(e) = c.error {
            return Err(e);
        }
        if !c.can_send() {
            return Err(if c.state == TcpState::Closed {
                TcpError::NotConnected
            } else {
                TcpError::BrokenPipe
            });
        }
        let n = c.app_send(data);
        if n > 0 {
            self.mark_dirty(h.index);
        }
        Ok(n)
    }

    /// Reads received data. `Ok(n > 0)`: data; `Ok(0)` (for a non-empty `buf`): end of stream,
    /// the peer sent FIN and everything before it was read; `Err(WouldBlock)`: nothing yet;
    /// `Err(ConnectionReset)` and friends once the connection failed.
    pub fn recv(&mut self, h: SocketHandle, buf: &mut [u8]) -> Result<usize, TcpError> {
        let c = self.conn_mut(h)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let n = c.app_recv(buf);
        if n > 0 {
            if c.wants_output() {
                self.mark_dirty(h.index);
            }
            return Ok(n);
        }
        if let Some(e) = c.error {
            return Err(e);
        }
        if c.rx_closed {
            return Ok(0);
        }
        match c.state {
            TcpState::Closed => Err(TcpError::NotConnected),
            _ => Err(TcpError::WouldBlock),
        }
    }

    /// Sends FIN once the queued data is out (half-close); reading continues.
    pub fn shutdown_write(&mut self, h: SocketHandle) -> Result<(), TcpError> {
        let c = self.conn_mut(h)?;
        if let Some(e) = c.error {
            return Err(e);
        }
        if c.state == TcpState::Closed {
            return Err(TcpError::NotConnected);
        }
        c.app_shutdown();
        self.mark_dirty(h.index);
        Ok(())
    }

    /// The application is done with the handle, which becomes invalid. The connection closes
    /// gracefully in the background (FIN, then FIN-WAIT/TIME-WAIT as needed), or with a RST if
    /// received data was left unread (as Linux does, RFC 2525 section 2.17).
    pub fn close(&mut self, h: SocketHandle) {
        let fin_deadline = self.now + self.cfg.fin_timeout;
        let Ok(c) = self.conn_mut(h) else { return };
        match c.state {
            TcpState::Closed | TcpState::SynSent | TcpState::Listen => {
                c.enter_closed();
                c.orphaned = true;
            }
            _ if !c.rx.is_empty() => {
                self.abort(h);
                if let Ok(c) = self.conn_mut(h) {
                    c.orphaned = true;
                }
            }
            _ => {
                c.app_shutdown();
                c.orphaned = true;
                if c.state == TcpState::FinWait2 {
                    // Our FIN was already acknowledged: bound the wait for the peer's.
                    c.set_close_timer(fin_deadline);
                }
            }
        }
        self.mark_dirty(h.index);
    }

    /// Resets the connection now (RFC 9293 section 3.10.5). The handle stays valid, in CLOSED,
    /// until `close`.
    pub fn abort(&mut self, h: SocketHandle) {
        let now = self.now;
        let Some(c) = self.conn_mut_any(h) else {
            return;
        };
        let send_rst = matches!(
            c.state,
            TcpState::SynReceived
                | TcpState::Established
                | TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::CloseWait
        );
        let (local, remote) = (c.local, c.remote);
        let seq = c.snd_nxt();
        c.enter_closed();
        if send_rst {
            c.events.push(
                now,
                EventKind::RstSent {
                    reason: RstReason::Abort,
                },
            );
            c.reset = Some(RstReason::Abort);
            self.counters.resets_out += 1;
            self.pending_rsts.push((local.port(), remote, seq));
        }
        self.mark_dirty(h.index);
    }
}

impl Tcp {
    // ----- connections: getters -----

    pub fn state(&self, h: SocketHandle) -> Option<TcpState> {
        self.conn(h).ok().map(|c| c.state)
    }

    /// Data is waiting, or a read would return at once (EOF or error).
    pub fn can_recv(&self, h: SocketHandle) -> bool {
        self.conn(h)
            .is_ok_and(|c| !c.rx.is_empty() || c.rx_closed || c.error.is_some())
    }

    pub fn recv_eof(&self, h: SocketHandle) -> bool {
        self.conn(h).is_ok_and(|c| c.recv_eof())
    }

    /// Bytes `send` would accept now.
    pub fn send_capacity(&self, h: SocketHandle) -> usize {
        self.conn(h)
            .map_or(0, |c| if c.can_send() { c.tx.free() } else { 0 })
    }

    pub fn error(&self, h: SocketHandle) -> Option<TcpError> {
        self.conn(h).ok().and_then(|c| c.error)
    }

    pub fn set_nodelay(&mut self, h: SocketHandle, on: bool) {
        if let Ok(c) = self.conn_mut(h) {
            c.nodelay = on;
            self.mark_dirty(h.index);
        }
    }

    pub fn local_addr(&self, h: SocketHandle) -> Option<SocketAddrV4> {
        self.conn(h).ok().map(|c| c.local)
    }

    pub fn peer_addr(&self, h: SocketHandle) -> Option<SocketAddrV4> {
        self.conn(h).ok().map(|c| c.remote)
    }

    pub fn socket_info(&self, h: SocketHandle) -> Option<SocketInfo> {
        self.conn(h).ok().map(|c| c.info())
    }

    /// Handles whose readable, writable, connected, closed or error state changed since the
    /// last call, each once.
    pub fn take_ready(&mut self, out: &mut Vec<SocketHandle>) {
        out.append(&mut self.ready);
    }

    /// Every connection, listeners included (as `ss -ta` shows them).
    pub fn sockets(&self) -> Vec<SocketInfo> {
        let mut v: Vec<SocketInfo> = self
            .listeners
            .iter()
            .filter_map(|s| s.item.as_ref())
            .map(|l| SocketInfo {
                state: TcpState::Listen,
                local: SocketAddrV4::new(self.addr, l.port).to_string(),
                remote: "0.0.0.0:*".to_string(),
                cwnd: 0,
                ssthresh: 0,
                srtt_us: 0,
                rttvar_us: 0,
                rto_ms: 0,
                bytes_in_flight: 0,
                retransmits: 0,
                rx_queue: l.queue.len(),
                tx_queue: self.cfg.syn_backlog,
                mss: 0,
                snd_wscale: 0,
                rcv_wscale: 0,
                sack: false,
                timestamps: false,
                snd_wnd: 0,
                rcv_wnd: 0,
                congestion: self.cfg.congestion,
                bytes_sent: 0,
                bytes_received: 0,
                in_recovery: false,
                events: None,
            })
            .collect();
        v.extend(
            self.conns
                .iter()
                .filter_map(|s| s.item.as_ref())
                .map(|c| c.info()),
        );
        v
    }

    /// Like `sockets`, with each connection's timeline.
    pub fn sockets_with_events(&self) -> Vec<SocketInfo> {
        let mut v = self.sockets();
        let live = self.conns.iter().filter_map(|s| s.item.as_ref());
        let listeners = v.len() - live.clone().count();
        for (info, c) in v[listeners..].iter_mut().zip(live) {
            info.events = Some(c.events.to_vec());
        }
        v
    }

    /// The timeline of one connection, oldest first.
    pub fn socket_events(&self, h: SocketHandle) -> Option<Vec<TcpEvent>> {
        self.conn_any(h).map(|c| c.events.to_vec())
    }

    /// Timelines of the connections released most recently, oldest first: a connection that
    /// just died can still be inspected.
    pub fn closed_timelines(&self) -> Vec<ClosedTimeline> {
        self.closed
            .iter()
            .map(|(local, remote, at, error, log)| ClosedTimeline {
                local: local.to_string(),
                remote: remote.to_string(),
                closed_at_us: at.as_micros(),
                error: *error,
                overwritten: log.overwritten(),
                events: log.to_vec(),
            })
            .collect()
    }

    /// The next reset sent or received (with `TcpConfig::reset_reports`), oldest first.
    pub fn poll_reset(&mut self) -> Option<ResetReport> {
        self.resets.pop_front()
    }

    fn report_reset(&mut self, local: SocketAddrV4, remote: SocketAddrV4, reason: RstReason) {
        if !self.cfg.reset_reports {
            return;
        }
        if self.resets.len() >= MAX_RESET_REPORTS {
            self.counters.reset_reports_dropped += 1;
            return;
        }
        self.resets.push_back(ResetReport {
            at: self.now,
            local,
            remote,
            reason,
        });
    }

    /// Connections in the table, in any state (TIME-WAIT and orphans included).
    pub fn connection_count(&self) -> usize {
        self.live
    }

    // ----- internals -----

    fn mark_dirty(&mut self, i: u32) {
        if let Some(c) = self.conns[i as usize].item.as_mut() {
            if !c.in_dirty {
                c.in_dirty = true;
                self.dirty.push(i);
            }
        }
    }

    fn env(&mut self) -> (Env<'_>, &mut Vec<Slot<Conn>>) {
        (
            Env {
                now: self.now,
                cfg: &self.cfg,
                counters: &mut self.counters,
                challenge_budget: &mut self.challenge_budget,
                buffer_total: &mut self.buffer_total,
            },
            &mut self.conns,
        )
    }

    /// Bookkeeping after a connection handled an event and sent what it had: readiness, the
    /// listener's accept queue, the timer heap, and releasing closed connections.
    fn settle(&mut self, i: u32) {
        let gen = self.conns[i as usize].generation;
        let now = self.now;
        let Some(c) = self.conns[i as usize].item.as_mut() else {
            return;
        };
        // The timeline learns of state changes and errors here, once per event, rather than at
        // each of the many places in `Conn` that move the state.
        if c.state != c.logged_state {
            let kind = EventKind::State {
                from: c.logged_state,
                to: c.state,
            };
            c.events.push(now, kind);
            c.logged_state = c.state;
        }
        if let (Some(error), false) = (c.error, c.logged_error) {
            c.events.push(now, EventKind::Error { error });
            c.logged_error = true;
        }
        if let Some(reason) = c.reset.take() {
            let (local, remote) = (c.local, c.remote);
            self.report_reset(local, remote, reason);
        }
        let Some(c) = self.conns[i as usize].item.as_mut() else {
            return;
        };
        if c.notify {
            c.notify = false;
            if !c.orphaned {
                self.ready.push(SocketHandle {
                    index: i,
                    generation: gen,
                });
            }
        }
        if c.half_open && c.state != TcpState::SynReceived {
            c.half_open = false;
            let established = c.state != TcpState::Closed;
            if let Some(l) = c.listener.and_then(|l| self.listeners[l].item.as_mut()) {
                l.half_open = l.half_open.saturating_sub(1);
                if established {
                    self.counters.passive_opens += 1;
                    l.queue.push_back(SocketHandle {
                        index: i,
                        generation: gen,
                    });
                }
            }
        }
        if c.state == TcpState::Closed {
            let key = (c.local.port(), c.remote);
            if self.by_tuple.get(&key) == Some(&i) {
                self.by_tuple.remove(&key);
            }
            if c.orphaned {
                let c = self.conns[i as usize].item.take().expect("checked above");
                let reserved = c.reserved();
                if self.closed.len() == CLOSED_TIMELINES {
                    self.closed.pop_front();
                }
                // The log moves, so keeping it costs no copy.
                self.closed
                    .push_back((c.local, c.remote, self.now, c.error, c.events));
                self.conns[i as usize].generation = gen.wrapping_add(1);
                self.free_conns.push(i);
                self.live -= 1;
                self.buffer_total -= reserved;
            }
            return;
        }
        if let Some(d) = c.deadline() {
            if c.scheduled.is_none_or(|s| d < s) {
                c.scheduled = Some(d);
                self.timers.push(Reverse((d, i, gen)));
            }
        }
    }

    fn process_conn(&mut self, i: u32, h: &TcpHeader, payload: &[u8], tx: &mut Tx) {
        let (mut env, conns) = self.env();
        let Some(c) = conns[i as usize].item.as_mut() else {
            return;
        };
        let reply = c.process(&mut env, h, payload);
        // Output waits for the end of the batch (`poll`): the in-order segments the driver read
        // in one wake-up are answered by one ACK, not one per two segments, and that ACK
        // carries what the application wrote and the window it opened meanwhile (GRO does the
        // same for the kernel's TCP). RFC 9293 section 3.8.6.3 bounds only how long an ACK may
        // wait, and a batch is well under a millisecond. Loss signals do not wait.
        // A segment without data is the sender's side of the exchange (ACKs, SACKs): what it
        // allows goes out at once, keeping the ACK clock as fine-grained as the peer made it.
        let at_once =
            std::mem::take(&mut c.ack_at_once) || !c.is_synchronized() || payload.is_empty();
        if at_once {
            c.dispatch(&mut env, tx);
        }
        let (local, remote) = (c.local, c.remote);
        if let Reply::Rst { seq, ack, reason } = reply {
            c.events.push(env.now, EventKind::RstSent { reason });
            c.reset = Some(reason);
            self.send_rst(tx, local.port(), remote, seq, ack);
        }
        if !at_once {
            self.mark_dirty(i);
        }
        self.settle(i);
    }

    fn send_rst(
        &mut self,
        tx: &mut Tx,
        port: u16,
        remote: SocketAddrV4,
        seq: SeqNumber,
        ack: Option<SeqNumber>,
    ) {
        let h = TcpHeader {
            src_port: port,
            dst_port: remote.port(),
            seq,
            ack: ack.unwrap_or(SeqNumber(0)),
            flags: if ack.is_some() {
                Flags::RST | Flags::ACK
            } else {
                Flags::RST
            },
            window: 0,
            urgent: 0,
            options: TcpOptions::default(),
        };
        self.send_stateless(tx, remote, &h);
        self.counters.resets_out += 1;
    }

    fn send_stateless(&mut self, tx: &mut Tx, remote: SocketAddrV4, h: &TcpHeader) {
        let src = self.addr;
        let dst = *remote.ip();
        let opts = SendOptions {
            dont_fragment: true,
            ..SendOptions::default()
        };
        match tx.send_with(dst, wire::PROTOCOL, h.header_len(), opts, |b| {
            h.emit(src, dst, b, |_| {})
        }) {
            Ok(()) => self.counters.segments_out += 1,
            Err(_) => self.counters.tx_dropped += 1,
        }
    }

    /// A segment for no connection and no listener (RFC 9293 section 3.10.7.1).
    fn reply_closed(
        &mut self,
        tx: &mut Tx,
        h: &TcpHeader,
        remote: SocketAddrV4,
        payload_len: usize,
    ) {
        if h.flags.rst() {
            return;
        }
        self.counters.closed_port += 1;
        let local = SocketAddrV4::new(self.addr, h.dst_port);
        self.report_reset(local, remote, RstReason::ClosedPort);
        if h.flags.ack() {
            self.send_rst(tx, h.dst_port, remote, h.ack, None);
        } else {
            let len = payload_len + h.flags.syn() as usize + h.flags.fin() as usize;
            self.send_rst(tx, h.dst_port, remote, SeqNumber(0), Some(h.seq + len));
        }
    }

    /// RFC 9293 section 3.10.7.2, with the SYN backlog and SYN cookies of RFC 4987.
    fn listen_input(
        &mut self,
        li: u32,
        h: &TcpHeader,
        remote: SocketAddrV4,
        payload: &[u8],
        tx: &mut Tx,
    ) {
        let local = SocketAddrV4::new(self.addr, h.dst_port);
        if h.flags.rst() {
            return;
        }
        if h.flags.ack() {
            if !h.flags.syn() && self.cfg.syn_cookies {
                let isn_them = h.seq - 1;
                let ours = h.ack - 1;
                if let Some(idx) = isn::check_cookie(
                    &self.cfg.isn_secret,
                    self.now,
                    local,
                    remote,
                    isn_them,
                    ours,
                ) {
                    self.counters.syn_cookies_validated += 1;
                    self.cookie_connection(li, h, remote, payload, idx, tx);
                    return;
                }
                self.counters.syn_cookies_failed += 1;
            }
            self.report_reset(local, remote, RstReason::ListenerAck);
            self.send_rst(tx, h.dst_port, remote, h.ack, None);
            return;
        }
        if !h.flags.syn() {
            return;
        }
        if self.live >= self.cfg.max_connections {
            self.counters.cap_connections += 1;
            return;
        }
        let listener = self.listeners[li as usize].item.as_ref().unwrap();
        if listener.half_open + listener.queue.len() >= self.cfg.syn_backlog {
            self.counters.cap_syn_backlog += 1;
            if self.cfg.syn_cookies {
                self.send_cookie(tx, h, local, remote);
            }
            return;
        }
        let iss = self.isn(self.now, local, remote);
        let mut conn = Conn::accept_syn(&self.cfg, local, remote, iss, self.mtu, h);
        conn.listener = Some(li as usize);
        conn.half_open = true;
        conn.orphaned = true;
        let Ok(i) = self.insert(conn) else { return };
        self.listeners[li as usize].item.as_mut().unwrap().half_open += 1;
        let (mut env, conns) = self.env();
        let c = conns[i as usize].item.as_mut().unwrap();
        c.dispatch(&mut env, tx);
        self.settle(i);
    }

    fn send_cookie(
        &mut self,
        tx: &mut Tx,
        syn: &TcpHeader,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) {
        let neg = Negotiated::from_syn(&syn.options, &self.cfg);
        let our_mss = (self.cfg.mss as usize).min(self.mtu - 40) as u16;
        let mss_index = isn::cookie_mss_index(neg.peer_mss.unwrap_or(536).min(our_mss));
        let cookie = isn::cookie(
            &self.cfg.isn_secret,
            self.now,
            local,
            remote,
            syn.seq,
            mss_index,
        );
        let mut options = TcpOptions {
            mss: Some(our_mss),
            ..TcpOptions::default()
        };
        // Without timestamps there is nowhere to keep window scale and SACK: offer neither.
        if let Some(tsval) = neg.ts_val {
            let ts = isn::encode_ts_options(conn::ts_clock(self.now), neg.peer_wscale, neg.sack);
            options.timestamps = Some((ts, tsval));
            options.sack_permitted = neg.sack;
            if neg.peer_wscale.is_some() {
                options.wscale = Some(conn::wscale_for(self.cfg.rx_buffer_limit()));
            }
        }
        let h = TcpHeader {
            src_port: local.port(),
            dst_port: remote.port(),
            seq: cookie,
            ack: syn.seq + 1,
            flags: Flags::SYN | Flags::ACK,
            window: self.cfg.rx_buffer.min(65_535) as u16,
            urgent: 0,
            options,
        };
        self.send_stateless(tx, remote, &h);
        self.counters.syn_cookies_sent += 1;
    }

    fn cookie_connection(
        &mut self,
        li: u32,
        h: &TcpHeader,
        remote: SocketAddrV4,
        payload: &[u8],
        idx: u8,
        tx: &mut Tx,
    ) {
        if self.live >= self.cfg.max_connections {
            self.counters.cap_connections += 1;
            return;
        }
        let local = SocketAddrV4::new(self.addr, h.dst_port);
        let neg = match h.options.timestamps.filter(|_| self.cfg.timestamps) {
            Some((tsval, tsecr)) => {
                let (ws, sack) = isn::decode_ts_options(tsecr);
                Negotiated {
                    peer_mss: None,
                    peer_wscale: ws.filter(|_| self.cfg.window_scaling),
                    sack: sack && self.cfg.sack,
                    ts_val: Some(tsval),
                }
            }
            None => Negotiated::default(),
        };
        let mut conn = Conn::from_cookie(&self.cfg, local, remote, self.mtu, h, idx, neg);
        conn.listener = Some(li as usize);
        conn.orphaned = true;
        let Ok(i) = self.insert(conn) else { return };
        self.counters.passive_opens += 1;
        let gen = self.conns[i as usize].generation;
        self.listeners[li as usize]
            .item
            .as_mut()
            .unwrap()
            .queue
            .push_back(SocketHandle {
                index: i,
                generation: gen,
            });
        self.process_conn(i, h, payload, tx);
    }

    fn run_timers(&mut self, tx: &mut Tx) {
        while let Some(&Reverse((t, i, gen))) = self.timers.peek() {
            if t > self.now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.conns[i as usize];
            if slot.generation != gen {
                continue;
            }
            let Some(c) = slot.item.as_mut() else {
                continue;
            };
            if c.scheduled != Some(t) {
                continue; // superseded by an earlier entry that already ran
            }
            c.scheduled = None;
            let (mut env, conns) = self.env();
            let c = conns[i as usize].item.as_mut().unwrap();
            c.on_timer(&mut env);
            c.dispatch(&mut env, tx);
            self.settle(i);
        }
    }

    fn refill_challenge_budget(&mut self) {
        if self.now - self.challenge_window >= Duration::from_secs(1) {
            self.challenge_window = self.now;
            self.challenge_budget = self.cfg.challenge_ack_limit;
        }
    }
}

impl Transport for Tcp {
    fn handle_packet(&mut self, now: Instant, pkt: &IpPacket<'_>, tx: &mut Tx) -> bool {
        self.now = self.now.max(now);
        self.mtu = tx.mtu();
        self.refill_challenge_budget();
        if pkt.dst() != self.addr {
            // TCP is unicast only (RFC 1122 section 4.2.3.10).
            self.counters.not_for_us += 1;
            return true;
        }
        let (h, payload) = match TcpHeader::parse(pkt.src(), pkt.dst(), pkt.payload) {
            Ok(x) => x,
            Err(ParseError::BadChecksum) => {
                self.counters.bad_checksum += 1;
                return true;
            }
            Err(_) => {
                self.counters.malformed += 1;
                return true;
            }
        };
        self.counters.segments_in += 1;
        let remote = SocketAddrV4::new(pkt.src(), h.src_port);
        if let Some(&i) = self.by_tuple.get(&(h.dst_port, remote)) {
            self.process_conn(i, &h, payload, tx);
        } else if let Some(&li) = self.by_port.get(&h.dst_port) {
            self.listen_input(li, &h, remote, payload, tx);
        } else {
            self.reply_closed(tx, &h, remote, payload.len());
        }
        true
    }

    fn handle_icmp_error(&mut self, now: Instant, err: &IcmpError<'_>, _tx: &mut Tx) {
        self.now = self.now.max(now);
        self.counters.icmp_errors += 1;
        let Some((sport, dport, seq)) = wire::quoted_ports_seq(err.original_payload) else {
            return;
        };
        let remote = SocketAddrV4::new(err.original.dst, dport);
        let Some(&i) = self.by_tuple.get(&(sport, remote)) else {
            return;
        };
        let (hard, mtu) = match err.kind {
            // Protocol and port unreachable (codes 2, 3) are hard errors (RFC 1122 4.2.3.9).
            IcmpErrorKind::Unreachable { code: 2 | 3, .. } => (true, None),
            IcmpErrorKind::Unreachable {
                code: 4,
                next_hop_mtu,
            } if next_hop_mtu >= 68 => (false, Some(next_hop_mtu as usize)),
            _ => (false, None),
        };
        if let Some(c) = self.conns[i as usize].item.as_mut() {
            c.icmp_error(hard, seq, mtu);
        }
        self.mark_dirty(i);
    }

    fn poll(&mut self, now: Instant, tx: &mut Tx) {
        self.now = self.now.max(now);
        self.mtu = tx.mtu();
        self.refill_challenge_budget();
        for (port, remote, seq) in std::mem::take(&mut self.pending_rsts) {
            self.send_rst(tx, port, remote, seq, None);
            self.counters.resets_out -= 1; // counted when the abort was requested
        }
        self.run_timers(tx);
        let mut dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            let (mut env, conns) = self.env();
            let Some(c) = conns[i as usize].item.as_mut() else {
                continue;
            };
            c.in_dirty = false;
            c.dispatch(&mut env, tx);
            self.settle(i);
        }
        dirty.clear();
        // Keep the allocation for next time unless something was marked meanwhile.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn poll_at(&self) -> Option<Instant> {
        if !self.dirty.is_empty() || !self.pending_rsts.is_empty() {
            return Some(self.now);
        }
        self.timers.peek().map(|r| r.0 .0)
    }
}

#[cfg(test)]
mod tests;
