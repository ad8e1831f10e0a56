//! One connection's state machine (RFC 9293 section 3.10): segment arrival, timers, and the
//! output path that decides what to send next. The endpoint (`super::Tcp`) owns the table of
//! connections, demultiplexes segments to them and hands them the transmit queue.
//!
//! Send sequence space (RFC 9293 section 3.3.1), as kept here:
//!
//! ```text
//!        snd_una      tx_seq            snd_nxt       snd_max      tx_seq + tx.len()
//!   ----|------------|-----------------|-------------|------------|--------------> seq
//!       acked | SYN (until acked) | sent, unacked: in `tx` |  queued, unsent  | FIN
//! ```
//!
//! `snd_nxt` drops back to `snd_una` after a retransmission timeout (go-back-N) while
//! `snd_max` remembers the highest sequence ever sent. The receive ring holds in-order data from
//! the application's read point up to `rcv_nxt`, and out-of-order data beyond it in its free
//! space, tracked by the assembler.

use super::cc::{self, CongestionControl};
use super::events::{EventKind, EventLog, RetransmitReason, RstReason};
use super::isn::COOKIE_MSS;
use super::ring::{Assembler, Ring};
use super::seq::SeqNumber;
use super::wire::{Flags, TcpHeader, TcpOptions};
use super::{TcpConfig, TcpCounters, TcpError, TcpState};
use crate::ip::{SendOptions, Tx, TxError};
use crate::time::{Duration, Instant};
use std::net::SocketAddrV4;

/// What a connection needs from its endpoint while it processes an event.
pub(super) struct Env<'a> {
    pub now: Instant,
    pub cfg: &'a TcpConfig,
    pub counters: &'a mut TcpCounters,
    /// RFC 5961 section 7: challenge ACKs share one budget per second across connections.
    pub challenge_budget: &'a mut u32,
    /// Buffer bytes all connections reserve (`TcpConfig::max_buffer_total` bounds it).
    pub buffer_total: &'a mut usize,
}

/// An answer the endpoint sends on the connection's behalf, outside its sequence space.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    None,
    Rst {
        seq: SeqNumber,
        ack: Option<SeqNumber>,
        reason: RstReason,
    },
}

/// Options agreed in the handshake.
#[derive(Copy, Clone, Debug, Default)]
pub(super) struct Negotiated {
    pub peer_mss: Option<u16>,
    pub peer_wscale: Option<u8>,
    pub sack: bool,
    /// The peer's TSval, when it offered timestamps.
    pub ts_val: Option<u32>,
}

impl Negotiated {
    pub fn from_syn(o: &TcpOptions, cfg: &TcpConfig) -> Negotiated {
        Negotiated {
            peer_mss: o.mss,
            peer_wscale: o.wscale.filter(|_| cfg.window_scaling),
            sack: o.sack_permitted && cfg.sack,
            ts_val: o.timestamps.filter(|_| cfg.timestamps).map(|t| t.0),
        }
    }
}

pub(super) fn ts_clock(now: Instant) -> u32 {
    // RFC 7323 section 5.4: a 1 ms clock is within the recommended 1 ms to 1 s range.
    now.as_millis() as u32
}

/// The shift that lets the whole receive buffer be advertised (RFC 7323 section 2.3).
pub(super) fn wscale_for(buf: usize) -> u8 {
    let mut s = 0;
    while s < 14 && (buf >> s) > 65_535 {
        s += 1;
    }
    s
}

#[derive(Debug)]
pub(super) struct Conn {
    pub state: TcpState,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// Passive connections belong to their listener until accepted.
    pub listener: Option<usize>,
    pub half_open: bool,
    /// The application gave up the handle; free the slot once closed.
    pub orphaned: bool,
    /// Something the application can observe changed.
    pub notify: bool,
    pub error: Option<TcpError>,
    soft_error: Option<TcpError>,
    pub scheduled: Option<Instant>,
    pub in_dirty: bool,
    pub active: bool,

    iss: SeqNumber,
    snd_una: SeqNumber,
    snd_nxt: SeqNumber,
    snd_max: SeqNumber,
    snd_wnd: usize,
    max_snd_wnd: usize,
    snd_wl1: SeqNumber,
    snd_wl2: SeqNumber,
    snd_wscale: u8,
    rcv_wscale: u8,
    tx_seq: SeqNumber,
    pub tx: Ring,
    fin_queued: bool,

    irs: SeqNumber,
    rcv_nxt: SeqNumber,
    rcv_adv: SeqNumber,
    pub rx: Ring,
    asm: Assembler,
    /// Where the last out-of-order segment ended: the next one starting there extends its block.
    last_ooo_end: Option<SeqNumber>,
    rx_fin: Option<SeqNumber>,
    pub rx_closed: bool,
    /// Data that arrived twice, reported once as the first SACK block (RFC 2883 D-SACK): it
    /// tells the sender a retransmission was spurious, so it can undo the window reduction.
    dsack: Option<(SeqNumber, SeqNumber)>,

    smss: usize,
    our_mss: u16,
    ts_ok: bool,
    ts_recent: u32,
    sack_ok: bool,

    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    backoff: u32,
    rtt_probe: Option<(SeqNumber, Instant)>,

    rtx_at: Option<Instant>,
    persist_at: Option<Instant>,
    persist_backoff: u32,
    persist_probe: bool,
    delack_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    keepalive_sent: u32,
    keepalive_probe: bool,
    close_at: Option<Instant>,

    ack_now: bool,
    /// The ACK must leave before the rest of the batch is read (loss signals).
    pub ack_at_once: bool,
    ack_pending: bool,
    unacked_segs: u32,
    /// In-order segments still to be acknowledged without delay (quick-ACK mode).
    quick_acks: u32,

    cc: Box<dyn CongestionControl>,
    pub congestion: cc::Congestion,
    dupacks: u32,
    in_recovery: bool,
    recover: SeqNumber,
    rexmit_next: SeqNumber,
    /// SND.MAX when the latest recovery retransmission left: SACKs for data past it prove
    /// that anything resent before it and still missing was lost again.
    rexmit_mark: Option<SeqNumber>,
    force_rexmit: bool,
    /// The probe timeout (RFC 8985 section 7): a tail loss probe outside recovery, a new pass
    /// over the holes inside it; far shorter than the RTO, which stays the last resort.
    probe_at: Option<Instant>,
    /// Probes sent since an ACK last advanced SND.UNA: at most `MAX_PROBES` per flight, then
    /// the RTO decides.
    probes: u32,
    /// The probe the next dispatch must send (new data if the window allows, else the last
    /// segment again).
    tlp_pending: bool,
    /// SACKed ranges above `snd_una`, sorted and disjoint (the RFC 6675 scoreboard).
    sacked: Vec<(SeqNumber, SeqNumber)>,

    pub nodelay: bool,
    pub retransmits: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,

    /// The forensic timeline (see `events`).
    pub events: EventLog,
    /// The state and error the timeline last recorded: the endpoint logs changes in `settle`.
    pub logged_state: TcpState,
    pub logged_error: bool,
    /// A reset this connection sent or received, for the endpoint's reset reports.
    pub reset: Option<RstReason>,
}

const MAX_SACKED: usize = 32;
/// Probe timeouts per flight before the RTO is left to act (RFC 8985 sends one; more cover
/// the probe or its ACK being lost too, which at a few percent loss is common, while the
/// RTO's 200 ms floor is thousands of round trips in a lab).
const MAX_PROBES: u32 = 4;
/// In-order segments acknowledged at once at the start of a connection and after each
/// out-of-order one (as Linux's quick-ACK mode): a sender in slow start or repairing a loss has
/// a small window, and the delayed ACK of its lone last segment would stall it for the whole
/// delay, far longer than a lab's round trip.
const QUICK_ACKS: u32 = 16;
/// How long a peer may hold the ACK of a lone segment (see `Conn::pto`).
const LONE_SEGMENT_ACK_DELAY: Duration = Duration::from_millis(50);

impl Conn {
    fn new(
        cfg: &TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: SeqNumber,
        mtu: usize,
    ) -> Conn {
        let our_mss = (cfg.mss as usize).min(mtu.saturating_sub(40)).max(64) as u16;
        Conn {
            state: TcpState::Closed,
            local,
            remote,
            listener: None,
            half_open: false,
            orphaned: false,
            notify: false,
            error: None,
            soft_error: None,
            scheduled: None,
            in_dirty: false,
            active: false,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: SeqNumber(0),
            snd_wl2: iss,
            snd_wscale: 0,
            rcv_wscale: 0,
            tx_seq: iss + 1,
            tx: Ring::new(cfg.tx_buffer),
            fin_queued: false,
            irs: SeqNumber(0),
            rcv_nxt: SeqNumber(0),
            rcv_adv: SeqNumber(0),
            rx: Ring::new(cfg.rx_buffer),
            asm: Assembler::new(),
            last_ooo_end: None,
            rx_fin: None,
            rx_closed: false,
            dsack: None,
            smss: 536,
            our_mss,
            ts_ok: false,
            ts_recent: 0,
            sack_ok: false,
            srtt: None,
            rttvar: Duration::ZERO,
            rto: cfg.rto_initial,
            backoff: 0,
            rtt_probe: None,
            rtx_at: None,
            persist_at: None,
            persist_backoff: 0,
            persist_probe: false,
            delack_at: None,
            keepalive_at: None,
            keepalive_sent: 0,
            keepalive_probe: false,
            close_at: None,
            ack_now: false,
            ack_at_once: false,
            ack_pending: false,
            unacked_segs: 0,
            quick_acks: QUICK_ACKS,
            cc: cc::new(cfg.congestion, 536),
            congestion: cfg.congestion,
            dupacks: 0,
            in_recovery: false,
            recover: iss,
            rexmit_next: iss,
            rexmit_mark: None,
            probe_at: None,
            probes: 0,
            tlp_pending: false,
            force_rexmit: false,
            // Grows on the first SACK block: idle connections keep no scoreboard.
            sacked: Vec::new(),
            nodelay: cfg.nodelay,
            retransmits: 0,
            bytes_sent: 0,
            bytes_received: 0,
            events: EventLog::default(),
            logged_state: TcpState::Closed,
            logged_error: false,
            reset: None,
        }
    }

    /// Active open (RFC 9293 section 3.10.1): SYN-SENT, the SYN goes out on the next dispatch.
    pub fn connect(
        cfg: &TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: SeqNumber,
        mtu: usize,
    ) -> Conn {
        let mut c = Conn::new(cfg, local, remote, iss, mtu);
        c.state = TcpState::SynSent;
        c.active = true;
        c.rcv_wscale = if cfg.window_scaling {
            wscale_for(cfg.rx_buffer_limit())
        } else {
            0
        };
        c
    }

    /// Passive open on a SYN that a listener accepted: SYN-RECEIVED.
    pub fn accept_syn(
        cfg: &TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: SeqNumber,
        mtu: usize,
        syn: &TcpHeader,
    ) -> Conn {
        let mut c = Conn::new(cfg, local, remote, iss, mtu);
        c.state = TcpState::SynReceived;
        c.irs = syn.seq;
        c.rcv_nxt = syn.seq + 1;
        c.apply_options(cfg, Negotiated::from_syn(&syn.options, cfg));
        c.snd_wnd = syn.window as usize; // never scaled in a SYN (RFC 7323 section 2.2)
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = syn.seq;
        c.rcv_adv = c.rcv_nxt;
        c
    }

    /// A connection rebuilt from a valid SYN cookie: straight to ESTABLISHED.
    pub fn from_cookie(
        cfg: &TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        mtu: usize,
        ack: &TcpHeader,
        mss_index: u8,
        neg: Negotiated,
    ) -> Conn {
        let iss = ack.ack - 1;
        let mut c = Conn::new(cfg, local, remote, iss, mtu);
        c.irs = ack.seq - 1;
        c.rcv_nxt = ack.seq;
        c.rcv_adv = c.rcv_nxt + (cfg.rx_buffer.min(65_535));
        c.apply_options(
            cfg,
            Negotiated {
                peer_mss: Some(COOKIE_MSS[mss_index as usize & 7]),
                ..neg
            },
        );
        c.snd_una = ack.ack;
        c.snd_nxt = ack.ack;
        c.snd_max = ack.ack;
        c.snd_wnd = (ack.window as usize) << c.snd_wscale;
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = ack.seq;
        c.snd_wl2 = ack.ack;
        c.state = TcpState::Established;
        c
    }

    fn apply_options(&mut self, cfg: &TcpConfig, n: Negotiated) {
        let peer_mss = n.peer_mss.unwrap_or(536) as usize; // RFC 9293 section 3.7.1 default
        self.smss = peer_mss.min(self.our_mss as usize).max(64);
        match n.peer_wscale {
            Some(ws) if cfg.window_scaling => {
                self.snd_wscale = ws;
                self.rcv_wscale = wscale_for(cfg.rx_buffer_limit());
            }
            _ => {
                self.snd_wscale = 0;
                self.rcv_wscale = 0;
            }
        }
        self.sack_ok = n.sack;
        if let Some(v) = n.ts_val {
            self.ts_ok = true;
            self.ts_recent = v;
        }
        self.cc = cc::new(cfg.congestion, self.max_payload());
    }

    // ----- accessors -----

    pub fn is_synchronized(&self) -> bool {
        !matches!(
            self.state,
            TcpState::Closed | TcpState::Listen | TcpState::SynSent | TcpState::SynReceived
        )
    }

    pub fn can_send(&self) -> bool {
        matches!(
            self.state,
            TcpState::SynSent | TcpState::SynReceived | TcpState::Established | TcpState::CloseWait
        ) && !self.fin_queued
    }

    pub fn fin_seq(&self) -> SeqNumber {
        self.tx_seq + self.tx.len()
    }

    fn fin_acked(&self) -> bool {
        self.fin_queued && self.snd_una == self.fin_seq() + 1
    }

    /// Bytes of payload in a full segment: the MSS less the options every segment carries.
    pub fn max_payload(&self) -> usize {
        self.smss - if self.ts_ok { 12 } else { 0 }
    }

    pub fn recv_eof(&self) -> bool {
        self.rx_closed && self.rx.is_empty()
    }

    pub fn info(&self) -> super::SocketInfo {
        super::SocketInfo {
            state: self.state,
            local: self.local.to_string(),
            remote: self.remote.to_string(),
            cwnd: self.cc.cwnd(),
            ssthresh: self.cc.ssthresh().min(u32::MAX as usize),
            srtt_us: self.srtt.map_or(0, |d| d.as_micros() as u64),
            rttvar_us: self.rttvar.as_micros() as u64,
            rto_ms: self.rto.as_millis() as u64,
            bytes_in_flight: self.snd_max.since(self.snd_una),
            retransmits: self.retransmits,
            rx_queue: self.rx.len(),
            tx_queue: self.tx.len(),
            mss: self.smss,
            snd_wscale: self.snd_wscale,
            rcv_wscale: self.rcv_wscale,
            sack: self.sack_ok,
            timestamps: self.ts_ok,
            snd_wnd: self.snd_wnd,
            // As the peer sees it: the scaled field drops what is below the scale's unit.
            rcv_wnd: self.rcv_adv.since(self.rcv_nxt) >> self.rcv_wscale << self.rcv_wscale,
            congestion: self.congestion,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            in_recovery: self.in_recovery,
            events: None,
        }
    }

    /// The earliest timer, if any is armed.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.rtx_at,
            self.probe_at,
            self.persist_at,
            self.delack_at,
            self.keepalive_at,
            self.close_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn wants_output(&self) -> bool {
        self.ack_now || self.persist_probe || self.keepalive_probe || self.force_rexmit
    }

    // ----- application commands -----

    pub fn app_send(&mut self, data: &[u8]) -> usize {
        self.tx.push(data)
    }

    /// Copies received data out. Returns the count and whether a window update is due.
    pub fn app_recv(&mut self, buf: &mut [u8]) -> usize {
        let before = self.rx.free();
        let n = self.rx.pop(buf);
        if self.asm.is_empty() {
            self.rx.release_if_empty();
        }
        if n > 0 && self.is_synchronized() {
            // RFC 9293 section 3.8.6.2.2: announce the reopened window once it grew enough to
            // matter, not byte by byte (receiver-side silly window avoidance).
            let advertised = self.rcv_adv.since(self.rcv_nxt);
            let step = (self.rx.capacity() / 2).min(2 * self.smss);
            if self.rx.free() >= advertised + step && before < advertised + step {
                self.ack_now = true;
            }
        }
        n
    }

    /// Queues a FIN after the data already in the send buffer (RFC 9293 section 3.10.4).
    pub fn app_shutdown(&mut self) {
        if self.fin_queued {
            return;
        }
        match self.state {
            TcpState::Established => self.state = TcpState::FinWait1,
            TcpState::CloseWait => self.state = TcpState::LastAck,
            TcpState::SynReceived | TcpState::SynSent => {}
            _ => return,
        }
        self.fin_queued = true;
    }

    // ----- segment arrival (RFC 9293 section 3.10.7) -----

    pub fn process(&mut self, env: &mut Env<'_>, h: &TcpHeader, payload: &[u8]) -> Reply {
        match self.state {
            TcpState::SynSent => return self.process_syn_sent(env, h),
            TcpState::Closed | TcpState::Listen => return Reply::None,
            _ => {}
        }
        if let Some(idle) = env.cfg.keepalive.filter(|_| self.is_synchronized()) {
            self.keepalive_at = Some(env.now + idle);
            self.keepalive_sent = 0;
        }
        let mut seq = h.seq;
        let mut payload = payload;
        let mut fin = h.flags.fin();
        let syn = h.flags.syn();
        let rst = h.flags.rst();

        // PAWS (RFC 7323 section 5.3): a segment whose timestamp is older than the most recent
        // one we accepted is an old duplicate from an earlier wrap of the sequence space.
        if self.ts_ok && !rst {
            if let Some((tsval, _)) = h.options.timestamps {
                if (tsval.wrapping_sub(self.ts_recent) as i32) < 0 {
                    env.counters.paws_rejected += 1;
                    self.ack_now = true;
                    return Reply::None;
                }
            }
        }

        // Simultaneous open (RFC 9293 figure 8): the peer's SYN-ACK repeats the SYN we already
        // took, so it fails the window test, yet its ACK completes our handshake.
        if self.state == TcpState::SynReceived
            && syn
            && h.flags.ack()
            && !rst
            && seq == self.irs
            && self.snd_una < h.ack
            && h.ack <= self.snd_max
        {
            self.snd_una = h.ack;
            self.snd_wnd = (h.window as usize) << self.snd_wscale;
            self.max_snd_wnd = self.snd_wnd;
            self.snd_wl1 = seq;
            self.snd_wl2 = h.ack;
            self.rtx_at = None;
            self.established(env);
            self.ack_now = true;
            return Reply::None;
        }

        // Acceptability (RFC 9293 section 3.10.7.4, first check).
        let seg_len = payload.len() + syn as usize + fin as usize;
        let wnd = self.rcv_adv.since(self.rcv_nxt);
        let in_wnd = |s: SeqNumber| s.in_range(self.rcv_nxt, self.rcv_nxt + wnd);
        let acceptable = match (seg_len, wnd) {
            (0, 0) => seq == self.rcv_nxt,
            (0, _) => in_wnd(seq),
            (_, 0) => false,
            _ => in_wnd(seq) || in_wnd(seq + (seg_len - 1)),
        };
        if !acceptable {
            // With a zero window the ACK, RST and URG fields of a segment at RCV.NXT still
            // count (the note after the acceptability table): that is how a zero-window
            // receiver learns about the ACKs riding on a probe.
            if wnd == 0 && seq == self.rcv_nxt && !syn {
                payload = &[];
                fin = false;
                self.ack_now = true;
            } else {
                if !rst {
                    self.ack_now = true;
                    env.counters.out_of_window += 1;
                    if self.sack_ok && !payload.is_empty() && seq + payload.len() <= self.rcv_nxt {
                        self.dsack = Some((seq, seq + payload.len()));
                    }
                    if self.state == TcpState::TimeWait && fin {
                        self.close_at = Some(env.now + env.cfg.time_wait);
                    }
                }
                return Reply::None;
            }
        }

        // RFC 7323 section 4.3: remember the timestamp of the segment that covers RCV.NXT.
        if self.ts_ok {
            if let Some((tsval, _)) = h.options.timestamps {
                if seq <= self.rcv_nxt && (tsval.wrapping_sub(self.ts_recent) as i32) >= 0 {
                    self.ts_recent = tsval;
                }
            }
        }

        // RST (RFC 5961 section 3.2): only an exact match resets, the rest of the window earns
        // a challenge ACK, so that a blind attacker has to guess the sequence number exactly.
        if rst {
            if seq != self.rcv_nxt {
                self.challenge_ack(env);
                return Reply::None;
            }
            env.counters.resets_in += 1;
            self.events.push(env.now, EventKind::RstReceived);
            self.reset = Some(RstReason::Received);
            match self.state {
                TcpState::SynReceived if !self.active => {}
                TcpState::SynReceived => self.error = Some(TcpError::ConnectionRefused),
                TcpState::Established
                | TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::CloseWait => self.error = Some(TcpError::ConnectionReset),
                _ => {}
            }
            self.enter_closed();
            return Reply::None;
        }

        // SYN in a synchronized state (RFC 5961 section 4): challenge ACK, never a reset.
        if syn {
            self.challenge_ack(env);
            return Reply::None;
        }

        // Trim to the window: data before RCV.NXT is a duplicate, data past the right edge is
        // dropped along with a FIN that would follow it.
        if seq < self.rcv_nxt {
            let skip = self.rcv_nxt.since(seq).min(payload.len());
            if skip > 0 && self.sack_ok {
                self.dsack = Some((seq, seq + skip));
            }
            payload = &payload[skip..];
            seq += skip;
        }
        let room = (self.rcv_nxt + wnd).since(seq);
        if payload.len() > room {
            payload = &payload[..room];
            fin = false;
        }

        if !h.flags.ack() {
            return Reply::None;
        }

        if self.state == TcpState::SynReceived {
            if !(self.snd_una < h.ack && h.ack <= self.snd_max) {
                return Reply::Rst {
                    seq: h.ack,
                    ack: None,
                    reason: RstReason::BadAck,
                };
            }
            self.snd_wnd = (h.window as usize) << self.snd_wscale;
            self.snd_wl1 = seq;
            self.snd_wl2 = h.ack;
            self.established(env);
        }

        // ACK validity (RFC 9293 section 3.10.7.4 fifth check, RFC 5961 section 5.2).
        if h.ack > self.snd_max {
            self.ack_now = true;
            return Reply::None;
        }
        if h.ack < self.snd_una - self.max_snd_wnd.max(self.smss) {
            self.ack_now = true;
            return Reply::None;
        }
        self.process_ack(env, h, seq, payload.len(), fin);

        match self.state {
            TcpState::FinWait1 if self.fin_acked() => {
                self.state = TcpState::FinWait2;
                if self.orphaned {
                    self.close_at = Some(env.now + env.cfg.fin_timeout);
                }
                self.notify = true;
            }
            TcpState::Closing if self.fin_acked() => self.enter_time_wait(env),
            TcpState::LastAck if self.fin_acked() => {
                self.enter_closed();
                return Reply::None;
            }
            _ => {}
        }

        if !payload.is_empty() {
            match self.state {
                TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2 => {
                    if self.orphaned && self.state != TcpState::Established {
                        // Nobody will read this: tell the peer (as Linux does) rather than let
                        // it fill a window no one drains.
                        env.counters.resets_out += 1;
                        let r = Reply::Rst {
                            seq: self.snd_nxt,
                            ack: None,
                            reason: RstReason::DataAfterClose,
                        };
                        self.enter_closed();
                        return r;
                    }
                    self.receive_data(env, seq, payload);
                }
                _ => {}
            }
        }

        if fin {
            match self.state {
                TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2 => {
                    self.rx_fin = Some(seq + payload.len());
                }
                TcpState::TimeWait => {
                    self.ack_now = true;
                    self.close_at = Some(env.now + env.cfg.time_wait);
                }
                _ => self.ack_now = true,
            }
        }
        self.check_fin(env);
        Reply::None
    }

    fn process_syn_sent(&mut self, env: &mut Env<'_>, h: &TcpHeader) -> Reply {
        // RFC 9293 section 3.10.7.3.
        if h.flags.ack() && !(self.iss < h.ack && h.ack <= self.snd_max) {
            if h.flags.rst() {
                return Reply::None;
            }
            return Reply::Rst {
                seq: h.ack,
                ack: None,
                reason: RstReason::BadAck,
            };
        }
        if h.flags.rst() {
            if h.flags.ack() {
                env.counters.resets_in += 1;
                self.events.push(env.now, EventKind::RstReceived);
                self.reset = Some(RstReason::Received);
                self.error = Some(TcpError::ConnectionRefused);
                self.enter_closed();
            }
            return Reply::None;
        }
        if !h.flags.syn() {
            return Reply::None;
        }
        self.irs = h.seq;
        self.rcv_nxt = h.seq + 1;
        self.apply_options(env.cfg, Negotiated::from_syn(&h.options, env.cfg));
        self.ack_now = true;
        if h.flags.ack() {
            self.snd_una = h.ack;
            self.snd_wnd = (h.window as usize) << self.snd_wscale;
            self.max_snd_wnd = self.snd_wnd;
            self.snd_wl1 = h.seq;
            self.snd_wl2 = h.ack;
            self.rtx_at = None;
            if self.backoff == 0 {
                self.rtt_sample(env, env.now - self.rtt_probe.map_or(env.now, |p| p.1));
            }
            self.backoff = 0;
            self.rcv_adv = self.rcv_nxt;
            self.established(env);
        } else {
            // Simultaneous open (RFC 9293 figure 8): answer with SYN-ACK from SYN-RECEIVED.
            self.state = TcpState::SynReceived;
            self.snd_wnd = h.window as usize;
            self.snd_wl1 = h.seq;
            self.rcv_adv = self.rcv_nxt;
            self.snd_nxt = self.iss;
        }
        Reply::None
    }

    fn established(&mut self, env: &mut Env<'_>) {
        self.state = TcpState::Established;
        self.notify = true;
        self.recover = self.snd_una;
        self.rexmit_next = self.snd_una;
        if let Some(idle) = env.cfg.keepalive {
            self.keepalive_at = Some(env.now + idle);
        }
        if self.fin_queued {
            self.state = TcpState::FinWait1;
        }
    }

    fn challenge_ack(&mut self, env: &mut Env<'_>) {
        if *env.challenge_budget > 0 {
            *env.challenge_budget -= 1;
            env.counters.challenge_acks += 1;
            self.ack_now = true;
        } else {
            env.counters.challenge_acks_limited += 1;
        }
    }

    fn process_ack(
        &mut self,
        env: &mut Env<'_>,
        h: &TcpHeader,
        seq: SeqNumber,
        payload_len: usize,
        fin: bool,
    ) {
        let ack = h.ack;
        let now = env.now;
        // Window update (RFC 9293 section 3.10.7.4, fifth check): only from a segment newer
        // than the one that last set it.
        let mut window_changed = false;
        if self.snd_wl1 < seq || (self.snd_wl1 == seq && self.snd_wl2 <= ack) {
            let w = (h.window as usize) << self.snd_wscale;
            window_changed = w != self.snd_wnd;
            self.snd_wnd = w;
            self.max_snd_wnd = self.max_snd_wnd.max(w);
            self.snd_wl1 = seq;
            self.snd_wl2 = ack;
        }
        let mut new_sack = false;
        let (snd_una_before, sacked_before) = (self.snd_una, self.sacked_bytes());
        let mut rtt_measured = None;
        if self.sack_ok {
            for &(l, r) in h.options.sack() {
                // Ignore blocks below the cumulative ACK (D-SACK) or beyond what we sent.
                if l < r && l >= ack.max(self.snd_una) && r <= self.snd_max {
                    new_sack |= self.sack_add(l, r);
                }
            }
        }
        if ack > self.snd_una {
            let acked = ack.since(self.snd_una);
            // The timed segment measures in microseconds, which the probe timeout needs on a
            // path whose RTT is well under the timestamp clock's millisecond. The echoed
            // timestamp (RFC 7323 section 4.1) fills in while no segment is timed: after a
            // retransmission (Karn) and in recovery, when samples matter most.
            let rtt = match (self.rtt_probe, h.options.timestamps.filter(|_| self.ts_ok)) {
                (Some((s, t)), _) if ack > s => Some(now - t),
                (None, Some((_, ecr))) if ecr != 0 => {
                    Some(Duration::from_millis(ts_clock(now).wrapping_sub(ecr) as u64))
                }
                _ => None,
            };
            if let Some(r) = rtt.filter(|r| *r < Duration::from_secs(120)) {
                self.rtt_sample(env, r);
                rtt_measured = Some(r);
            }
            if self.rtt_probe.is_some_and(|(s, _)| ack > s) {
                self.rtt_probe = None;
            }
            self.backoff = 0;
            self.probes = 0;
            self.probe_at = None;
            let data = ack.since(self.tx_seq).min(self.tx.len());
            self.tx.consume(data);
            self.tx.release_if_empty();
            self.tx_seq += data;
            if data > 0 {
                self.notify = true;
            }
            self.snd_una = ack;
            if self.snd_nxt < ack {
                self.snd_nxt = ack;
            }
            self.sacked.retain(|b| b.1 > ack);
            if let Some(b) = self.sacked.first_mut() {
                b.0 = b.0.max(ack);
            }
            if self.in_recovery {
                if ack >= self.recover {
                    self.in_recovery = false;
                    self.dupacks = 0;
                    let cwnd = self.cc.cwnd();
                    self.events.push(now, EventKind::RecoveryEnd { cwnd });
                } else {
                    // Partial ACK (RFC 6582 section 3.2 step 5): the next hole is lost too.
                    self.rexmit_next = self.rexmit_next.max(ack);
                    if !self.sack_ok {
                        self.force_rexmit = true;
                        self.dupacks = 0;
                        self.rexmit_next = ack;
                    }
                    self.rtx_at = Some(now + self.rto);
                }
            } else {
                self.dupacks = 0;
                let rtt = self.srtt.unwrap_or(self.rto);
                let mss = self.max_payload();
                self.cc.on_ack(now, acked, mss, rtt);
            }
            self.rtx_at = if self.snd_una == self.snd_max {
                None
            } else {
                Some(now + self.rto)
            };
            self.persist_backoff = 0;
        } else if ack == self.snd_una && self.snd_max > self.snd_una {
            // RFC 5681 section 2 duplicate ACK; with SACK, any ACK that brings new SACK
            // information counts (RFC 6675 section 5).
            if (payload_len == 0 && !window_changed && !fin) || new_sack {
                self.dupacks += 1;
            }
        }
        let acked = if ack > snd_una_before {
            ack.since(snd_una_before)
        } else {
            0
        };
        let delivered = (acked + self.sacked_bytes()).saturating_sub(sacked_before);
        if delivered > 0 {
            let mss = self.max_payload();
            self.cc.on_delivered(now, delivered, rtt_measured, mss);
        }
        if new_sack {
            // Progress of a kind: the probe timer starts again from this ACK.
            self.probe_at = None;
            if self.in_recovery {
                self.probes = 0;
            }
        }
        if self.in_recovery {
            self.detect_lost_retransmit(env);
        }
        if !self.in_recovery && self.snd_una >= self.recover && self.snd_max > self.snd_una {
            let mss = self.max_payload();
            let flight = self.snd_max.since(self.snd_una);
            let sacked = self.sacked_bytes();
            // RFC 6675's DupThresh of three segments, lowered for a flight too short to ever
            // produce three (RFC 5827 early retransmit): then all but one segment SACKed is
            // enough. A SACK for a tail loss probe means what the probe followed is lost.
            let sack_lost = self.sack_ok
                && (sacked > 2 * mss
                    || (sacked > 0 && flight < 4 * mss && sacked + mss >= flight)
                    || (new_sack && self.probes > 0));
            if self.dupacks >= 3 || sack_lost {
                self.enter_recovery(env);
            }
        }
    }

    /// A retransmission lost in recovery would otherwise wait for the RTO (at least 200 ms,
    /// doubling), which at a few percent loss stalls the sender most of the time. The path
    /// delivers in order but for reordering of up to a few segments, so once the peer SACKs
    /// data sent three segments after our latest retransmission while SND.UNA (resent in this
    /// pass, since `rexmit_next` is past it) is still missing, that retransmission is gone:
    /// start the pass over. The walk skips what has been SACKed since, so only the holes that
    /// are still holes are sent again. This is the rule Linux used before RACK (RFC 8985
    /// generalises it with send times).
    fn detect_lost_retransmit(&mut self, env: &mut Env<'_>) {
        let Some(mark) = self.rexmit_mark else {
            return;
        };
        if !self.sack_ok || self.rexmit_next <= self.snd_una {
            return;
        }
        if self.high_sack() >= mark + 3 * self.max_payload() {
            env.counters.lost_retransmits += 1;
            self.rexmit_next = self.snd_una;
            self.rexmit_mark = None;
        }
    }

    fn enter_recovery(&mut self, env: &mut Env<'_>) {
        env.counters.fast_retransmits += 1;
        self.in_recovery = true;
        // Entered during a timeout's go-back-N: the holes are walked by the recovery from
        // here on, so the resend from SND.NXT stops instead of sending them a second time.
        self.snd_nxt = self.snd_max;
        self.recover = self.snd_max;
        let flight = self.snd_max.since(self.snd_una);
        let mss = self.max_payload();
        self.cc.on_loss(env.now, flight, mss);
        let snap = EventKind::RecoveryStart {
            srtt_us: self.srtt.map_or(0, |d| d.as_micros() as u64),
            rto_ms: self.rto.as_millis() as u64,
            cwnd: self.cc.cwnd(),
            ssthresh: self.cc.ssthresh().min(u32::MAX as usize),
            flight,
        };
        self.events.push(env.now, snap);
        self.rexmit_next = self.snd_una;
        self.rexmit_mark = None;
        self.force_rexmit = true;
        self.rtt_probe = None;
        self.probe_at = None;
        self.probes = 0;
        self.tlp_pending = false;
    }

    fn sack_add(&mut self, l: SeqNumber, r: SeqNumber) -> bool {
        let before = self.sacked_bytes();
        let i = self
            .sacked
            .iter()
            .position(|b| b.1 >= l)
            .unwrap_or(self.sacked.len());
        let mut j = i;
        let (mut s, mut e) = (l, r);
        while j < self.sacked.len() && self.sacked[j].0 <= r {
            s = s.min(self.sacked[j].0);
            e = e.max(self.sacked[j].1);
            j += 1;
        }
        if i == j && self.sacked.len() >= MAX_SACKED {
            return false;
        }
        self.sacked.splice(i..j, std::iter::once((s, e)));
        self.sacked_bytes() != before
    }

    fn sacked_bytes(&self) -> usize {
        self.sacked.iter().map(|b| b.1.since(b.0)).sum()
    }

    fn sacked_below(&self, x: SeqNumber) -> usize {
        self.sacked
            .iter()
            .take_while(|b| b.0 < x)
            .map(|b| b.1.min(x).since(b.0))
            .sum()
    }

    fn high_sack(&self) -> SeqNumber {
        self.sacked
            .last()
            .map_or(self.snd_una, |b| b.1)
            .max(self.snd_una)
    }

    /// Bytes believed to be in the network (RFC 6675 section 4 "pipe"): outside recovery,
    /// what was sent and not SACKed; in recovery, holes below the highest SACK count as lost
    /// until retransmitted. Without SACK, each duplicate ACK stands for one segment that left
    /// the network (the NewReno window inflation of RFC 6582, expressed as a pipe estimate).
    fn pipe(&self) -> usize {
        if self.in_recovery {
            let high = self.high_sack();
            let rexmitted = self.rexmit_next.max(self.snd_una);
            let p = self.snd_max.since(high) + rexmitted.since(self.snd_una)
                - self.sacked_below(rexmitted);
            if self.sack_ok {
                p
            } else {
                p.saturating_sub(self.dupacks as usize * self.max_payload())
            }
        } else {
            self.snd_nxt.since(self.snd_una) - self.sacked_below(self.snd_nxt)
        }
    }

    fn rtt_sample(&mut self, env: &Env<'_>, r: Duration) {
        // RFC 6298 section 2, with alpha = 1/8 and beta = 1/4, and G taken as 1 ms.
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let k = (self.rttvar * 4).max(Duration::from_millis(1));
        self.rto = (self.srtt.unwrap_or(r) + k).clamp(env.cfg.rto_min, env.cfg.rto_max);
    }

    fn receive_data(&mut self, env: &mut Env<'_>, seq: SeqNumber, payload: &[u8]) {
        let off = seq.since(self.rcv_nxt);
        if off == 0 {
            let n = self.rx.write_at(0, payload);
            let had_holes = !self.asm.is_empty();
            let end = self.asm.advance(self.rcv_nxt + n);
            let total = end.since(self.rcv_nxt);
            self.rx.commit(total);
            self.rcv_nxt = end;
            self.bytes_received += total as u64;
            self.notify = true;
            self.unacked_segs += 1;
            // RFC 9293 section 3.8.6.3 / RFC 5681 section 4.2: ACK at least every second
            // full-sized segment, and at once when a hole was filled.
            let quick = self.quick_acks > 0;
            self.quick_acks = self.quick_acks.saturating_sub(1);
            if had_holes || quick || self.unacked_segs >= 2 || env.cfg.delayed_ack.is_zero() {
                self.ack_now = true;
                self.ack_at_once |= had_holes;
            } else if !self.ack_pending {
                self.ack_pending = true;
                self.delack_at = Some(env.now + env.cfg.delayed_ack);
            }
        } else {
            env.counters.ooo_segments += 1;
            // Only what fitted in the ring counts as held: the window we advertised can
            // reach past its free space by a rounding of the window scale, and bytes recorded
            // but never written would be delivered as whatever the ring held there.
            let n = self.rx.write_at(off, payload);
            if n > 0 && !self.asm.add(seq, seq + n) {
                env.counters.ooo_dropped += 1;
            }
            self.maybe_grow_rx(env);
            // RFC 5681 section 4.2: an out-of-order segment is acknowledged at once, so the
            // sender sees duplicate ACKs (and SACK blocks) without delay. A segment that only
            // extends the block the previous one started waits for the end of the batch, as
            // GRO merges them for the kernel: the batch's one ACK names the grown block first,
            // which tells a SACK sender everything the per-segment ACKs would have, for one
            // write instead of many. A segment that opens a new block (a new hole) is answered
            // at once, since one ACK names only three blocks.
            // The sender is recovering with a small window: a delayed ACK of the lone segment
            // it sends after the repair would stall it for the whole delay.
            self.quick_acks = QUICK_ACKS;
            let extends = self.last_ooo_end == Some(seq) && n > 0;
            if n > 0 {
                self.last_ooo_end = Some(seq + n);
            }
            self.ack_now = true;
            if !extends || !self.sack_ok {
                self.ack_at_once = true;
            }
        }
    }

    /// Receive autotuning, for loss recovery only. While a hole holds back delivery, the data
    /// beyond it can fill at most the buffer; a sender that runs out of window stops sending
    /// new data, and new data acknowledged past a retransmission is how it learns (RACK, RFC
    /// 8985) that the retransmission was lost too, so a full window leaves it only its RTO.
    /// When out-of-order data reaches past half the buffer, the buffer doubles, up to
    /// `rx_buffer_max` and as the stack's buffer budget allows. An application that reads
    /// slowly fills the buffer in order and never grows it.
    fn maybe_grow_rx(&mut self, env: &mut Env<'_>) {
        let cap = self.rx.capacity();
        let max = env.cfg.rx_buffer_max.min(65_535 << self.rcv_wscale);
        if cap >= max {
            return;
        }
        let Some(&(_, end)) = self.asm.ranges().last() else {
            return;
        };
        if end.since(self.rcv_nxt) < cap / 2 {
            return;
        }
        let new = (cap * 2).min(max);
        if *env.buffer_total + (new - cap) > env.cfg.max_buffer_total {
            env.counters.cap_buffer_total += 1;
            return;
        }
        *env.buffer_total += new - cap;
        self.rx.grow(new);
        env.counters.rx_buffer_grown += 1;
    }

    /// Buffer bytes this connection reserves against the stack's budget.
    pub fn reserved(&self) -> usize {
        self.rx.capacity() + self.tx.capacity()
    }

    fn check_fin(&mut self, env: &mut Env<'_>) {
        if self.rx_fin != Some(self.rcv_nxt) || self.rx_closed {
            return;
        }
        self.rcv_nxt += 1;
        self.rx_closed = true;
        self.rx_fin = None;
        self.ack_now = true;
        self.notify = true;
        match self.state {
            TcpState::Established => self.state = TcpState::CloseWait,
            TcpState::FinWait1 if self.fin_acked() => self.enter_time_wait(env),
            TcpState::FinWait1 => self.state = TcpState::Closing,
            TcpState::FinWait2 => self.enter_time_wait(env),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, env: &mut Env<'_>) {
        self.state = TcpState::TimeWait;
        self.notify = true;
        self.rtx_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.close_at = Some(env.now + env.cfg.time_wait);
    }

    pub fn enter_closed(&mut self) {
        self.state = TcpState::Closed;
        self.notify = true;
        self.rtx_at = None;
        self.persist_at = None;
        self.delack_at = None;
        self.keepalive_at = None;
        self.close_at = None;
        self.ack_now = false;
        self.force_rexmit = false;
        self.persist_probe = false;
        self.keepalive_probe = false;
    }

    /// Hard and soft ICMP errors (RFC 1122 section 4.2.3.9, RFC 5927).
    pub fn icmp_error(&mut self, hard: bool, seq: SeqNumber, mtu: Option<usize>) {
        if !(self.snd_una <= seq && seq <= self.snd_max) {
            return;
        }
        if let Some(mtu) = mtu {
            // Path MTU discovery (RFC 1191): shrink and resend what no longer fits.
            let mss = mtu.saturating_sub(40).max(64);
            if mss < self.smss {
                self.smss = mss;
                self.snd_nxt = self.snd_una;
            }
            return;
        }
        if hard && self.state == TcpState::SynSent {
            self.error = Some(TcpError::ConnectionRefused);
            self.enter_closed();
        } else {
            self.soft_error = Some(TcpError::HostUnreachable);
        }
    }

    // ----- timers -----

    pub fn on_timer(&mut self, env: &mut Env<'_>) {
        let now = env.now;
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.close_at) {
            if self.state != TcpState::TimeWait {
                env.counters.fin_timeouts += 1;
            }
            self.enter_closed();
            return;
        }
        if due(self.delack_at) {
            self.delack_at = None;
            if self.ack_pending {
                self.ack_now = true;
            }
        }
        if due(self.rtx_at) {
            self.on_rto(env);
            if self.state == TcpState::Closed {
                return;
            }
        }
        if due(self.probe_at) {
            self.on_probe_timeout(env);
        }
        if due(self.persist_at) {
            self.persist_probe = true;
            self.persist_backoff = (self.persist_backoff + 1).min(16);
            self.persist_at = Some(now + self.backed_off(env, self.persist_backoff));
        }
        if due(self.keepalive_at) {
            if self.keepalive_sent >= env.cfg.keepalive_probes {
                env.counters.keepalive_timeouts += 1;
                self.error = Some(TcpError::TimedOut);
                self.enter_closed();
                return;
            }
            self.keepalive_sent += 1;
            self.keepalive_probe = true;
            self.keepalive_at = Some(now + env.cfg.keepalive_interval);
        }
    }

    /// PTO = 2 SRTT plus room for the peer's delayed ACK: a little when several segments are
    /// out (the peer ACKs every second one), more for a lone segment, whose ACK the peer may
    /// hold back (RFC 8985 section 7.2). RFC 8985 allows 200 ms for that, which is the RTO
    /// floor again; Linux and tunstack hold an ACK 40 ms, so 50 ms covers them and a lone
    /// lost tail costs a quarter of a timeout. Never later than the RTO.
    fn pto(&self) -> Duration {
        let srtt = self.srtt.unwrap_or(self.rto);
        let flight = self.snd_max.since(self.snd_una);
        // One millisecond: the event loop's timer resolution (epoll waits whole milliseconds).
        let slack = if flight > self.max_payload() {
            Duration::from_millis(1)
        } else {
            LONE_SEGMENT_ACK_DELAY
        };
        (srtt * 2 + slack).min(self.rto)
    }

    fn on_probe_timeout(&mut self, env: &mut Env<'_>) {
        self.probe_at = None;
        if !self.is_synchronized() || self.snd_max <= self.snd_una || self.snd_wnd == 0 {
            return;
        }
        self.probes += 1;
        if !self.in_recovery && !self.sacked.is_empty() {
            // Data above SND.UNA was SACKed and SND.UNA is still missing a PTO later: it is
            // lost (RFC 8985's rule, with the PTO as the reordering allowance). This is also
            // the way out after a timeout whose retransmission was lost, where the recovery
            // point of RFC 6582 would keep fast recovery shut until the next timeout.
            self.enter_recovery(env);
            return;
        }
        if self.in_recovery {
            // Nothing moved for a PTO in recovery: a retransmission was lost, or the segment
            // at SND.UNA was lost with the SACKs that would have shown it (a partial ACK and
            // nothing above it). Walk the holes again from SND.UNA (SACKed data is skipped),
            // at least one segment at once.
            if self.rexmit_next > self.snd_una {
                env.counters.lost_retransmits += 1;
            } else {
                env.counters.loss_probes += 1;
            }
            self.rexmit_next = self.snd_una;
            self.rexmit_mark = None;
            self.force_rexmit = true;
        } else {
            env.counters.loss_probes += 1;
            self.tlp_pending = true;
        }
    }

    /// RFC 8985 section 7.3: a new segment if the peer's window allows one (whatever the
    /// congestion window), else the last segment sent, so the peer's ACK tells which of the
    /// flight's tail is missing.
    fn send_loss_probe(&mut self, env: &mut Env<'_>, tx: &mut Tx) -> bool {
        self.tlp_pending = false;
        let mss = self.max_payload();
        let data_end = self.fin_seq();
        let seq = self.snd_nxt;
        let right = self.snd_una + self.snd_wnd;
        if seq == self.snd_max && seq < data_end && right > seq {
            let len = data_end.since(seq).min(mss).min(right.since(seq));
            self.emit(env, tx, Flags::ACK, seq, len);
            self.bytes_sent += len as u64;
            self.snd_nxt = seq + len;
            self.snd_max = self.snd_nxt;
            return true;
        }
        // The last segment again (the FIN alone, when that was last).
        let top = self.snd_max;
        let fin = self.fin_queued && top == data_end + 1;
        let data_top = if fin { data_end } else { top };
        let len = data_top.since(self.snd_una).min(mss);
        let start = data_top - len;
        let flags = if fin {
            Flags::ACK | Flags::FIN
        } else {
            Flags::ACK
        };
        self.emit(env, tx, flags, start, len);
        self.retransmitted(env, RetransmitReason::LossProbe, start, len);
        true
    }

    fn backed_off(&self, env: &Env<'_>, n: u32) -> Duration {
        (self.rto * (1u32 << n.min(16))).min(env.cfg.rto_max)
    }

    /// RFC 6298 section 5: back off, resend from the oldest unacknowledged byte.
    fn on_rto(&mut self, env: &mut Env<'_>) {
        env.counters.rto_timeouts += 1;
        let snap = EventKind::Timeout {
            backoff: self.backoff + 1,
            srtt_us: self.srtt.map_or(0, |d| d.as_micros() as u64),
            rto_ms: self.rto.as_millis() as u64,
            cwnd: self.cc.cwnd(),
            flight: self.snd_max.since(self.snd_una),
        };
        self.events.push(env.now, snap);
        self.backoff += 1;
        let limit = if self.is_synchronized() {
            env.cfg.max_retransmits
        } else {
            env.cfg.syn_retries
        };
        if self.backoff > limit {
            env.counters.timeouts += 1;
            self.error = Some(self.soft_error.unwrap_or(TcpError::TimedOut));
            self.enter_closed();
            return;
        }
        self.rto = (self.rto * 2).min(env.cfg.rto_max);
        self.rtx_at = Some(env.now + self.rto);
        self.rtt_probe = None;
        match self.state {
            TcpState::SynSent | TcpState::SynReceived => {
                self.snd_nxt = self.iss;
                return;
            }
            _ => {}
        }
        let flight = self.snd_max.since(self.snd_una);
        let mss = self.max_payload();
        if self.backoff == 1 {
            self.cc.on_rto(env.now, flight, mss);
        }
        self.in_recovery = false;
        self.dupacks = 0;
        self.probe_at = None;
        self.probes = 0;
        self.tlp_pending = false;
        self.recover = self.snd_max;
        self.snd_nxt = self.snd_una;
        self.rexmit_next = self.snd_una;
        // The scoreboard is kept (as Linux does, against RFC 2018 section 8's advice): the
        // go-back-N resend skips SACKed data instead of repeating a whole window. A peer that
        // reneges is still served, by the next timeout of the byte at SND.UNA.
    }

    // ----- output -----

    /// Sends what the state, the windows and the timers allow.
    pub fn dispatch(&mut self, env: &mut Env<'_>, tx: &mut Tx) {
        match self.state {
            TcpState::Closed | TcpState::Listen => return,
            TcpState::SynSent | TcpState::SynReceived => {
                if self.snd_nxt == self.iss || self.ack_now {
                    let retrans = self.snd_max != self.iss;
                    let reason = if self.snd_nxt == self.iss {
                        RetransmitReason::Rto
                    } else {
                        RetransmitReason::DuplicateSyn
                    };
                    let flags = if self.state == TcpState::SynSent {
                        Flags::SYN
                    } else {
                        Flags::SYN | Flags::ACK
                    };
                    self.emit(env, tx, flags, self.iss, 0);
                    if retrans {
                        env.counters.retransmits += 1;
                        self.retransmits += 1;
                        self.log_retransmit(env, reason, self.iss, 0);
                    } else {
                        self.rtt_probe = Some((self.iss, env.now));
                    }
                    self.snd_nxt = self.iss + 1;
                    self.snd_max = self.snd_max.max(self.snd_nxt);
                    if self.rtx_at.is_none() {
                        self.rtx_at = Some(env.now + self.rto);
                    }
                }
                return;
            }
            TcpState::TimeWait => {
                if self.ack_now {
                    self.emit(env, tx, Flags::ACK, self.snd_max, 0);
                }
                return;
            }
            _ => {}
        }
        let mut sent = false;
        if self.in_recovery {
            sent |= self.send_recovery(env, tx);
        }
        sent |= self.send_new(env, tx);
        if self.tlp_pending {
            sent |= self.send_loss_probe(env, tx);
        }
        if self.persist_probe {
            self.persist_probe = false;
            // RFC 9293 section 3.8.6.1: probe a zero window with one byte, resent until the
            // window opens; the byte is the one at SND.UNA so a probe never skips data.
            let off = self.snd_una.since(self.tx_seq);
            let data = self
                .tx
                .len()
                .saturating_sub(off)
                .min(self.snd_wnd.max(1))
                .min(self.max_payload());
            let fin = data == 0 && self.fin_queued && self.snd_una == self.fin_seq();
            let flags = if fin {
                Flags::ACK | Flags::FIN
            } else {
                Flags::ACK
            };
            self.emit(env, tx, flags, self.snd_una, data);
            env.counters.window_probes += 1;
            self.log_retransmit(env, RetransmitReason::PersistProbe, self.snd_una, data);
            let end = self.snd_una + data + fin as usize;
            self.snd_nxt = self.snd_nxt.max(end);
            self.snd_max = self.snd_max.max(end);
            sent = true;
        }
        if self.keepalive_probe {
            self.keepalive_probe = false;
            // RFC 9293 section 3.8.4: SEG.SEQ = SND.NXT - 1 makes the peer answer with an ACK.
            if !sent {
                self.emit(env, tx, Flags::ACK, self.snd_una - 1, 0);
                self.log_retransmit(env, RetransmitReason::KeepaliveProbe, self.snd_una - 1, 0);
                sent = true;
            }
        }
        if !sent && self.ack_now {
            // SND.MAX, not SND.NXT: after a timeout SND.NXT points back into data the peer may
            // already hold, and a bare ACK carrying that sequence number would fail the peer's
            // acceptability test and be dropped with its acknowledgment unread.
            self.emit(env, tx, Flags::ACK, self.snd_max, 0);
        }
        // Timers: retransmission while the peer's window is open, persist while it is shut.
        let outstanding = self.snd_max > self.snd_una;
        let pending = self.tx.len() > self.snd_nxt.since(self.tx_seq)
            || (self.fin_queued && self.snd_max <= self.fin_seq());
        // A window too small for the sender's SWS rule with nothing in flight would wait
        // forever for an update the peer may never send: the persist timer covers that case
        // too (RFC 9293 section 3.8.6.2.1's override timeout).
        if (self.snd_wnd == 0 && (pending || outstanding)) || (pending && !outstanding && !sent) {
            self.rtx_at = None;
            if self.persist_at.is_none() {
                self.persist_at = Some(env.now + self.backed_off(env, self.persist_backoff));
            }
        } else {
            self.persist_at = None;
            if outstanding && self.rtx_at.is_none() {
                self.rtx_at = Some(env.now + self.rto);
            }
        }
        if !outstanding || self.snd_wnd == 0 {
            self.probe_at = None;
        } else if self.probe_at.is_none() && self.probes < MAX_PROBES && self.sack_ok {
            // Each further probe waits twice as long: its predecessor or that one's ACK was
            // lost. Four probes take about 15 PTOs, still far below the RTO floor.
            self.probe_at = Some(env.now + self.pto() * (1 << self.probes));
        }
    }

    /// RFC 6675 section 5 NextSeg rule 1 (and RFC 6582 for peers without SACK): resend holes
    /// below the highest SACKed byte while the pipe has room.
    fn send_recovery(&mut self, env: &mut Env<'_>, tx: &mut Tx) -> bool {
        let mut sent = false;
        loop {
            let mut start = self.rexmit_next.max(self.snd_una);
            for b in &self.sacked {
                if b.0 <= start && start < b.1 {
                    start = b.1;
                }
            }
            let limit = if self.sack_ok && self.force_rexmit {
                // The first retransmission of a recovery, or of a probe timeout in one: the
                // segment at SND.UNA goes even when no SACK block lies above it.
                self.high_sack().max(self.snd_una + self.max_payload())
            } else if self.sack_ok {
                self.high_sack()
            } else if self.force_rexmit {
                self.snd_una + self.max_payload()
            } else {
                self.snd_una
            };
            let limit = limit.min(self.snd_max);
            if start >= limit {
                break;
            }
            let hole_end = self
                .sacked
                .iter()
                .find(|b| b.0 > start)
                .map_or(limit, |b| b.0.min(limit));
            let data_end = self.fin_seq();
            let len = hole_end.min(data_end).since(start).min(self.max_payload());
            let fin = self.fin_queued && start + len == data_end && hole_end > data_end;
            if len == 0 && !fin {
                break;
            }
            if !self.force_rexmit && self.pipe() + len > self.cc.cwnd() {
                break;
            }
            let reason = if self.force_rexmit {
                RetransmitReason::FastRetransmit
            } else {
                RetransmitReason::LossRecovery
            };
            self.force_rexmit = false;
            let flags = if fin {
                Flags::ACK | Flags::FIN
            } else {
                Flags::ACK
            };
            self.emit(env, tx, flags, start, len);
            self.retransmitted(env, reason, start, len);
            self.rexmit_next = start + len + fin as usize;
            self.rexmit_mark = Some(self.snd_max);
            sent = true;
        }
        self.force_rexmit = false;
        sent
    }

    /// New data, a FIN, and after a timeout the go-back-N resend from SND.NXT (skipping what
    /// the peer SACKed before the timeout would have cleared the scoreboard).
    fn send_new(&mut self, env: &mut Env<'_>, tx: &mut Tx) -> bool {
        let mut sent = false;
        let max_payload = self.max_payload();
        loop {
            let seq = self.snd_nxt;
            let data_end = self.fin_seq();
            if seq > data_end {
                break; // FIN already sent
            }
            let avail = data_end.since(seq);
            let fin_pending = self.fin_queued;
            if avail == 0 && !fin_pending {
                break;
            }
            let retrans = seq < self.snd_max;
            let wnd_room = (self.snd_una + self.snd_wnd).since(seq);
            let cwnd_room = self.cc.cwnd().saturating_sub(self.pipe());
            let mut len = avail.min(max_payload).min(wnd_room).min(cwnd_room);
            if retrans {
                if let Some(b) = self.sacked.iter().find(|b| b.1 > seq) {
                    if b.0 <= seq {
                        self.snd_nxt = b.1;
                        continue;
                    }
                    len = len.min(b.0.since(seq));
                }
            }
            let fin = fin_pending
                && len == avail
                && (len > 0 || (cwnd_room > 0 && wnd_room > 0) || retrans);
            if len == 0 && !fin {
                break;
            }
            if !retrans && len < max_payload && !fin {
                // Sender-side silly window avoidance (RFC 9293 section 3.8.6.2.1) and Nagle
                // (RFC 896): a short segment only when it is all there is and nothing is in
                // flight (or Nagle is off), or when it fills half the largest window seen.
                let all = len == avail;
                let idle = self.snd_max == self.snd_una || self.nodelay;
                let big = self.max_snd_wnd > 0 && len >= self.max_snd_wnd / 2;
                if !((all && idle) || big) {
                    break;
                }
            }
            let mut flags = Flags::ACK;
            if fin {
                flags = flags | Flags::FIN;
            }
            if len > 0 && len == avail {
                flags = flags | Flags::PSH;
            }
            self.emit(env, tx, flags, seq, len);
            self.snd_nxt = seq + len + fin as usize;
            if retrans {
                self.retransmitted(env, RetransmitReason::Rto, seq, len);
            } else {
                self.bytes_sent += len as u64;
                if self.rtt_probe.is_none() {
                    self.rtt_probe = Some((seq, env.now));
                }
            }
            if self.snd_nxt > self.snd_max {
                self.snd_max = self.snd_nxt;
            }
            if self.rtx_at.is_none() {
                self.rtx_at = Some(env.now + self.rto);
            }
            sent = true;
            if fin {
                break;
            }
        }
        sent
    }

    /// The window to advertise, moving the right edge only by useful amounts (RFC 9293 section
    /// 3.8.6.2.2) and never back (section 3.8.6.2.1's shrinking rule from the receiver side).
    fn advertise(&mut self) -> u16 {
        let free = self.rx.free();
        let cur = self.rcv_adv.since(self.rcv_nxt);
        let step = (self.rx.capacity() / 2).min(self.smss);
        let mut wnd = if free >= cur + step { free } else { cur };
        wnd = wnd.min(65_535 << self.rcv_wscale);
        let edge = self.rcv_nxt + wnd;
        if edge > self.rcv_adv {
            self.rcv_adv = edge;
        }
        (wnd >> self.rcv_wscale) as u16
    }

    fn emit(&mut self, env: &mut Env<'_>, tx: &mut Tx, flags: Flags, seq: SeqNumber, len: usize) {
        let syn = flags.syn();
        let mut options = TcpOptions::default();
        let window;
        if syn {
            options.mss = Some(self.our_mss);
            let offer = env.cfg.window_scaling && (self.active || self.rcv_wscale > 0);
            if offer {
                options.wscale = Some(self.rcv_wscale);
            }
            options.sack_permitted = env.cfg.sack && (self.active || self.sack_ok);
            if env.cfg.timestamps && (self.active || self.ts_ok) {
                options.timestamps = Some((
                    ts_clock(env.now),
                    if self.active && self.state == TcpState::SynSent {
                        0
                    } else {
                        self.ts_recent
                    },
                ));
            }
            // RFC 7323 section 2.2: the window in a SYN is never scaled.
            window = self.rx.free().min(65_535) as u16;
            if !self.active || self.state == TcpState::SynReceived {
                self.rcv_adv = self.rcv_adv.max(self.rcv_nxt + window as usize);
            }
        } else {
            if self.ts_ok {
                options.timestamps = Some((ts_clock(env.now), self.ts_recent));
            }
            window = self.advertise();
        }
        let ack_flag = flags.ack();
        let mut h = TcpHeader {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack: if ack_flag { self.rcv_nxt } else { SeqNumber(0) },
            flags,
            window,
            urgent: 0,
            options,
        };
        if self.sack_ok && !syn && (self.dsack.is_some() || !self.asm.is_empty()) {
            let mut with_sack = h.options;
            if let Some(d) = self.dsack.take() {
                with_sack.push_sack(d);
            }
            self.asm.sack_blocks(&mut with_sack);
            let mut trial = h;
            trial.options = with_sack;
            if trial.header_len() + len + 20 <= tx.mtu() {
                h = trial;
            }
        }
        let off = seq.since(self.tx_seq);
        let ring = &self.tx;
        let (src, dst) = (*self.local.ip(), *self.remote.ip());
        let opts = SendOptions {
            dont_fragment: true,
            ..SendOptions::default()
        };
        let r = tx.send_with(
            dst,
            super::wire::PROTOCOL,
            h.header_len() + len,
            opts,
            |buf| {
                h.emit(src, dst, buf, |p| {
                    ring.read_at(off, p);
                })
            },
        );
        match r {
            Ok(()) => env.counters.segments_out += 1,
            // Treated as a loss in the network: the retransmission timer recovers.
            Err(TxError::QueueFull) | Err(TxError::TooBig) => env.counters.tx_dropped += 1,
        }
        if ack_flag {
            self.ack_now = false;
            self.ack_pending = false;
            self.delack_at = None;
            self.unacked_segs = 0;
        }
    }
}

impl Conn {
    /// Bookkeeping for data sent again: counted, in the timeline, and no longer timed.
    fn retransmitted(
        &mut self,
        env: &mut Env<'_>,
        reason: RetransmitReason,
        start: SeqNumber,
        len: usize,
    ) {
        self.untime(start, len);
        env.counters.retransmits += 1;
        self.retransmits += 1;
        self.log_retransmit(env, reason, start, len);
    }

    /// Karn's rule (RFC 6298 section 3): a retransmitted segment is never timed, since its
    /// ACK may answer either copy.
    fn untime(&mut self, start: SeqNumber, len: usize) {
        if self
            .rtt_probe
            .is_some_and(|(s, _)| s >= start && s < start + len.max(1))
        {
            self.rtt_probe = None;
        }
    }

    fn log_retransmit(
        &mut self,
        env: &Env<'_>,
        reason: RetransmitReason,
        seq: SeqNumber,
        len: usize,
    ) {
        let kind = EventKind::Retransmit {
            reason,
            seq: seq.0,
            len: len as u32,
        };
        self.events.push(env.now, kind);
    }

    pub fn snd_nxt(&self) -> SeqNumber {
        self.snd_nxt
    }

    pub fn set_close_timer(&mut self, at: Instant) {
        self.close_at = Some(at);
    }
}
