//! A relay user's client as a state machine.
//!
//! 1. Discover: ask a seed server (`InfoRequest`) for the live servers.
//! 2. Probe: open a connection to each and time `probes` echo round trips; the smallest is its
//!    RTT. Rank servers by RTT (unanswered ones last).
//! 3. Connect to the best, register, and keep the connection alive with echoes; refresh the
//!    server list now and then.
//! 4. When the server dies (connection closed, goodbye, or silence for `dead_after`), connect to
//!    the next best and register again.
//!
//! End-to-end acknowledgement: a message the user hands to [`Client::send`] is *accepted*: it
//! stays in the outbox until the recipient's client answers `Delivered` (or the mesh answers
//! unknown/offline user). Unanswered messages are sent again after re-registration and after
//! `resend_after`, each time as a new attempt with the same UUID; servers drop repeats of one
//! attempt (cycles), and the recipient's client drops repeats of a UUID but acknowledges them
//! again, so every accepted message is shown exactly once and nothing accepted is lost.

use super::wire::{Deframer, Frame, MsgKind, Routed, ServerEntry, Uuid};
use super::{ConnId, Machine, Output};
use crate::rand::Rng;
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, HashSet, VecDeque};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub user: String,
    /// Servers to ask for the list (`HOST:PORT`).
    pub seeds: Vec<String>,
    /// Orders this user's sessions: the runner passes wall-clock milliseconds so a restarted
    /// client outranks its previous session; each registration adds one.
    pub version_base: u64,
    pub probes: u32,
    pub probe_timeout: Duration,
    pub echo_interval: Duration,
    pub dead_after: Duration,
    pub resend_after: Duration,
    pub info_interval: Duration,
    pub retry_after: Duration,
    pub seen_capacity: usize,
    pub outbox_capacity: usize,
    /// Use only the seed servers: still measured and reported, but others the mesh lists are
    /// neither probed nor used for failover (tests and users who want one server).
    pub pin: bool,
}

impl ClientConfig {
    pub fn new(user: impl Into<String>, seeds: Vec<String>) -> ClientConfig {
        ClientConfig {
            user: user.into(),
            seeds,
            version_base: 0,
            probes: 3,
            probe_timeout: Duration::from_millis(2000),
            echo_interval: Duration::from_millis(1000),
            dead_after: Duration::from_millis(4000),
            resend_after: Duration::from_millis(3000),
            info_interval: Duration::from_millis(5000),
            retry_after: Duration::from_millis(1000),
            seen_capacity: 100_000,
            outbox_capacity: 10_000,
            pin: false,
        }
    }
}

/// What the client tells its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The servers the mesh reported.
    Servers(Vec<String>),
    /// Probe result for one server (`None`: no answer in time).
    Rtt {
        server: String,
        rtt: Option<Duration>,
    },
    /// Registered with this server.
    Connected {
        server: String,
    },
    /// The server went away; failing over.
    ServerLost {
        server: String,
    },
    Refused {
        server: String,
        reason: String,
    },
    Message {
        from: String,
        body: Vec<u8>,
        uuid: Uuid,
    },
    Delivered {
        uuid: Uuid,
        to: String,
    },
    UnknownUser {
        uuid: Uuid,
        to: String,
    },
    UserOffline {
        uuid: Uuid,
        to: String,
    },
    /// The server complained about a frame of ours.
    ServerError(String),
    /// No server answered; trying again later.
    NoServer,
}

#[derive(Debug)]
pub enum SendError {
    BadRecipient,
    TooLong,
    OutboxFull,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendError::BadRecipient => "the recipient must be a name of 1-64 bytes without spaces",
            SendError::TooLong => "the message is longer than 60000 bytes",
            SendError::OutboxFull => "too many messages wait for acknowledgement",
        })
    }
}

impl std::error::Error for SendError {}

pub const MAX_BODY: usize = 60_000;

struct Pending {
    to: String,
    body: Vec<u8>,
    /// Attempts sent so far.
    attempts: u8,
    sent_at: Option<Instant>,
}

struct Probe {
    server: String,
    connected: bool,
    sent_at: Option<Instant>,
    samples: Vec<Duration>,
}

enum Phase {
    /// Asking `candidates[idx]` for the server list.
    Discover {
        conn: ConnId,
        idx: usize,
    },
    Probing {
        started: Instant,
    },
    /// Connecting to and registering with `ranking[idx]`.
    Joining {
        conn: ConnId,
        idx: usize,
    },
    Ready {
        conn: ConnId,
        server: String,
    },
    Waiting {
        until: Instant,
    },
}

pub struct Client {
    cfg: ClientConfig,
    rng: Rng,
    phase: Phase,
    conns: BTreeMap<ConnId, Deframer>,
    probes: BTreeMap<ConnId, Probe>,
    /// Everyone we know of, for discovery after a total outage.
    known: Vec<String>,
    ranking: Vec<(String, Option<Duration>)>,
    registrations: u64,
    outbox: BTreeMap<Uuid, Pending>,
    order: VecDeque<Uuid>,
    seen: HashSet<Uuid>,
    seen_order: VecDeque<Uuid>,
    events: VecDeque<Event>,
    out: VecDeque<Output>,
    next_conn: u64,
    last_rx: Instant,
    next_echo: Instant,
    next_info: Instant,
    next_resend_check: Instant,
    started: bool,
}

impl Client {
    pub fn new(cfg: ClientConfig, rng: Rng) -> Client {
        let known = cfg.seeds.clone();
        Client {
            cfg,
            rng,
            phase: Phase::Waiting {
                until: Instant::ZERO,
            },
            conns: BTreeMap::new(),
            probes: BTreeMap::new(),
            known,
            ranking: Vec::new(),
            registrations: 0,
            outbox: BTreeMap::new(),
            order: VecDeque::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            events: VecDeque::new(),
            out: VecDeque::new(),
            next_conn: ConnId::DIALED_BASE,
            last_rx: Instant::ZERO,
            next_echo: Instant::ZERO,
            next_info: Instant::ZERO,
            next_resend_check: Instant::ZERO,
            started: false,
        }
    }

    pub fn user(&self) -> &str {
        &self.cfg.user
    }

    /// The server we are registered with.
    pub fn server(&self) -> Option<&str> {
        match &self.phase {
            Phase::Ready { server, .. } => Some(server),
            _ => None,
        }
    }

    /// Servers ranked by measured RTT.
    pub fn ranking(&self) -> &[(String, Option<Duration>)] {
        &self.ranking
    }

    /// Messages accepted and not yet answered.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Accepts a message for `to`; it is sent now or as soon as we are registered.
    pub fn send(&mut self, now: Instant, to: &str, body: &[u8]) -> Result<Uuid, SendError> {
        if !super::wire::valid_name(to) {
            return Err(SendError::BadRecipient);
        }
        if body.len() > MAX_BODY {
            return Err(SendError::TooLong);
        }
        if self.outbox.len() >= self.cfg.outbox_capacity {
            return Err(SendError::OutboxFull);
        }
        let uuid = Uuid::random(&mut self.rng);
        self.outbox.insert(
            uuid,
            Pending {
                to: to.to_string(),
                body: body.to_vec(),
                attempts: 0,
                sent_at: None,
            },
        );
        self.order.push_back(uuid);
        if let Phase::Ready { conn, .. } = self.phase {
            self.transmit(now, conn, uuid);
        }
        Ok(uuid)
    }

    /// Leaves cleanly: the server marks the user offline at once.
    pub fn quit(&mut self) {
        if let Phase::Ready { conn, .. } = self.phase {
            self.send_frame(conn, &Frame::UserBye);
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in ids {
            self.out.push_back(Output::Close(c));
        }
        self.conns.clear();
        self.probes.clear();
        self.phase = Phase::Waiting {
            until: Instant::from_micros(u64::MAX),
        };
    }

    fn send_frame(&mut self, conn: ConnId, f: &Frame) {
        if let Ok(b) = f.to_bytes() {
            self.out.push_back(Output::Send(conn, b));
        }
    }

    fn transmit(&mut self, now: Instant, conn: ConnId, uuid: Uuid) {
        let Some(p) = self.outbox.get_mut(&uuid) else {
            return;
        };
        let m = Routed {
            kind: MsgKind::Data,
            uuid,
            attempt: p.attempts,
            hops: 0,
            from: self.cfg.user.clone(),
            to: p.to.clone(),
            body: p.body.clone(),
        };
        p.attempts = p.attempts.wrapping_add(1);
        p.sent_at = Some(now);
        self.send_frame(conn, &Frame::Message(m));
    }

    fn dial(&mut self, server: &str) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(id, Deframer::default());
        self.out.push_back(Output::Connect(id, server.to_string()));
        id
    }

    fn close(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.out.push_back(Output::Close(conn));
        }
    }

    /// Candidates for discovery: what we know, then the seeds.
    fn candidates(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ranking.iter().map(|(s, _)| s.clone()).collect();
        for s in self.known.iter().chain(self.cfg.seeds.iter()) {
            if !v.contains(s) {
                v.push(s.clone());
            }
        }
        v
    }

    fn discover(&mut self, now: Instant, idx: usize) {
        let c = self.candidates();
        match c.get(idx) {
            Some(s) => {
                let conn = self.dial(&s.clone());
                self.phase = Phase::Discover { conn, idx };
            }
            None => {
                self.events.push_back(Event::NoServer);
                self.phase = Phase::Waiting {
                    until: now + self.cfg.retry_after,
                };
            }
        }
    }

    fn start_probes(&mut self, now: Instant, servers: Vec<String>) {
        self.events.push_back(Event::Servers(servers.clone()));
        for s in servers {
            let conn = self.dial(&s);
            self.probes.insert(
                conn,
                Probe {
                    server: s,
                    connected: false,
                    sent_at: None,
                    samples: Vec::new(),
                },
            );
        }
        self.phase = Phase::Probing { started: now };
    }

    fn probe_echo(&mut self, now: Instant, conn: ConnId) {
        let token = self.rng.next_u64().to_be_bytes().to_vec();
        if let Some(p) = self.probes.get_mut(&conn) {
            p.sent_at = Some(now);
        }
        self.send_frame(conn, &Frame::EchoRequest(token));
    }

    fn probes_done(&self) -> bool {
        self.probes
            .values()
            .all(|p| p.samples.len() as u32 >= self.cfg.probes)
    }

    fn finish_probes(&mut self, now: Instant) {
        let probes = std::mem::take(&mut self.probes);
        let mut ranking = Vec::new();
        for (conn, p) in probes {
            self.close(conn);
            let rtt = p.samples.iter().min().copied();
            self.events.push_back(Event::Rtt {
                server: p.server.clone(),
                rtt,
            });
            ranking.push((p.server, rtt));
        }
        // Measured ones by RTT, then the silent ones (they may still work).
        ranking.sort_by_key(|(s, r)| (r.is_none(), *r, s.clone()));
        self.ranking = ranking;
        self.join(now, 0);
    }

    fn join(&mut self, now: Instant, idx: usize) {
        match self.ranking.get(idx) {
            Some((s, _)) => {
                let conn = self.dial(&s.clone());
                self.phase = Phase::Joining { conn, idx };
            }
            None => self.discover(now, 0),
        }
    }

    fn lost(&mut self, now: Instant, conn: ConnId) {
        self.close(conn);
        match std::mem::replace(
            &mut self.phase,
            Phase::Waiting {
                until: Instant::ZERO,
            },
        ) {
            Phase::Discover { conn: c, idx } if c == conn => self.discover(now, idx + 1),
            Phase::Joining { conn: c, idx } if c == conn => self.join(now, idx + 1),
            Phase::Ready { conn: c, server } if c == conn => {
                self.events.push_back(Event::ServerLost {
                    server: server.clone(),
                });
                // Failover: the next best by the last measurement.
                self.ranking.retain(|(s, _)| *s != server);
                self.join(now, 0);
            }
            other => {
                self.phase = other;
                if self.probes.remove(&conn).is_some() && self.probes_done() {
                    self.finish_probes(now);
                }
            }
        }
    }

    fn on_frame(&mut self, now: Instant, conn: ConnId, f: Frame) {
        if self.probes.contains_key(&conn) {
            if let Frame::EchoReply(_) = f {
                let done = {
                    let p = self.probes.get_mut(&conn).expect("checked");
                    if let Some(t) = p.sent_at.take() {
                        p.samples.push(now.saturating_since(t));
                    }
                    p.samples.len() as u32 >= self.cfg.probes
                };
                if done {
                    // Keep the conn in the map (finish closes it) but stop probing it.
                    if self.probes_done() {
                        self.finish_probes(now);
                    }
                } else {
                    self.probe_echo(now, conn);
                }
            }
            return;
        }
        match (&self.phase, f) {
            (Phase::Discover { conn: c, .. }, Frame::InfoResponse(list)) if *c == conn => {
                self.close(conn);
                let mut servers: Vec<String> = list.into_iter().map(|e| e.addr).collect();
                if self.cfg.pin {
                    servers.retain(|s| self.cfg.seeds.contains(s));
                }
                for s in &servers {
                    if !self.known.contains(s) {
                        self.known.push(s.clone());
                    }
                }
                self.start_probes(now, servers);
            }
            (Phase::Joining { conn: c, idx }, Frame::Registered { .. }) if *c == conn => {
                let server = self.ranking[*idx].0.clone();
                self.phase = Phase::Ready {
                    conn,
                    server: server.clone(),
                };
                self.last_rx = now;
                self.next_echo = now + self.cfg.echo_interval;
                self.next_info = now + self.cfg.info_interval;
                self.events.push_back(Event::Connected { server });
                let pending: Vec<Uuid> = self.order.iter().copied().collect();
                for u in pending {
                    self.transmit(now, conn, u);
                }
            }
            (Phase::Joining { conn: c, idx }, Frame::RegisterRefused { reason, .. })
                if *c == conn =>
            {
                let (server, idx) = (self.ranking[*idx].0.clone(), *idx);
                self.events.push_back(Event::Refused { server, reason });
                self.close(conn);
                self.join(now, idx + 1);
            }
            (Phase::Ready { conn: c, .. }, f) if *c == conn => self.on_ready_frame(now, conn, f),
            (_, Frame::Error { text, .. }) => self.events.push_back(Event::ServerError(text)),
            _ => {}
        }
    }

    fn on_ready_frame(&mut self, now: Instant, conn: ConnId, f: Frame) {
        match f {
            Frame::Message(m) => match m.kind {
                MsgKind::Data => {
                    if m.to != self.cfg.user {
                        return;
                    }
                    if self.seen.insert(m.uuid) {
                        self.seen_order.push_back(m.uuid);
                        while self.seen_order.len() > self.cfg.seen_capacity {
                            if let Some(u) = self.seen_order.pop_front() {
                                self.seen.remove(&u);
                            }
                        }
                        self.events.push_back(Event::Message {
                            from: m.from.clone(),
                            body: m.body.clone(),
                            uuid: m.uuid,
                        });
                    }
                    let ack = Routed {
                        kind: MsgKind::Delivered,
                        uuid: m.uuid,
                        attempt: m.attempt,
                        hops: 0,
                        from: self.cfg.user.clone(),
                        to: m.from,
                        body: Vec::new(),
                    };
                    self.send_frame(conn, &Frame::Message(ack));
                }
                kind => {
                    if let Some(p) = self.outbox.remove(&m.uuid) {
                        self.order.retain(|u| *u != m.uuid);
                        let (uuid, to) = (m.uuid, p.to);
                        self.events.push_back(match kind {
                            MsgKind::Delivered => Event::Delivered { uuid, to },
                            MsgKind::UnknownUser => Event::UnknownUser { uuid, to },
                            _ => Event::UserOffline { uuid, to },
                        });
                    }
                }
            },
            Frame::InfoResponse(list) => {
                if self.cfg.pin {
                    return;
                }
                for ServerEntry { addr, .. } in list {
                    if !self.known.contains(&addr) {
                        self.known.push(addr.clone());
                    }
                    if !self.ranking.iter().any(|(s, _)| *s == addr) {
                        self.ranking.push((addr, None));
                    }
                }
            }
            Frame::ServerBye { .. } => self.lost(now, conn),
            Frame::Error { text, .. } => self.events.push_back(Event::ServerError(text)),
            _ => {}
        }
    }
}

impl Machine for Client {
    fn handle_accepted(&mut self, _now: Instant, conn: ConnId) {
        // Clients accept nothing.
        self.out.push_back(Output::Close(conn));
    }

    fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        if !self.conns.contains_key(&conn) {
            self.out.push_back(Output::Close(conn));
            return;
        }
        if self.probes.contains_key(&conn) {
            if let Some(p) = self.probes.get_mut(&conn) {
                p.connected = true;
            }
            self.probe_echo(now, conn);
            return;
        }
        match self.phase {
            Phase::Discover { conn: c, .. } if c == conn => {
                self.send_frame(conn, &Frame::InfoRequest);
            }
            Phase::Joining { conn: c, .. } if c == conn => {
                self.registrations += 1;
                let f = Frame::Register {
                    version: self.cfg.version_base + self.registrations,
                    name: self.cfg.user.clone(),
                };
                self.send_frame(conn, &f);
            }
            _ => self.close(conn),
        }
    }

    fn handle_connect_failed(&mut self, now: Instant, conn: ConnId) {
        self.conns.remove(&conn);
        self.lost(now, conn);
    }

    fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        match self.conns.get_mut(&conn) {
            Some(d) => d.push(bytes),
            None => return,
        }
        if matches!(self.phase, Phase::Ready { conn: c, .. } if c == conn) {
            self.last_rx = now;
        }
        loop {
            let next = match self.conns.get_mut(&conn) {
                Some(d) => d.next_frame(),
                None => return,
            };
            match next {
                None => return,
                Some(Ok(f)) => self.on_frame(now, conn, f),
                Some(Err(e)) => self.events.push_back(Event::ServerError(format!(
                    "bad frame from the server: {e}"
                ))),
            }
        }
    }

    fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        self.conns.remove(&conn);
        self.lost(now, conn);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if !self.started {
            self.started = true;
            self.discover(now, 0);
            return;
        }
        match self.phase {
            Phase::Waiting { until } if until <= now => self.discover(now, 0),
            Phase::Probing { started }
                if now.saturating_since(started) >= self.cfg.probe_timeout =>
            {
                self.finish_probes(now)
            }
            Phase::Ready { conn, .. } => {
                if now.saturating_since(self.last_rx) >= self.cfg.dead_after {
                    self.lost(now, conn);
                    return;
                }
                if now >= self.next_echo {
                    self.next_echo = now + self.cfg.echo_interval;
                    self.send_frame(conn, &Frame::EchoRequest(Vec::new()));
                }
                if now >= self.next_info {
                    self.next_info = now + self.cfg.info_interval;
                    self.send_frame(conn, &Frame::InfoRequest);
                }
                if now >= self.next_resend_check {
                    self.next_resend_check = now + Duration::from_millis(500);
                    let due: Vec<Uuid> = self
                        .order
                        .iter()
                        .copied()
                        .filter(|u| {
                            self.outbox[u]
                                .sent_at
                                .is_none_or(|t| now.saturating_since(t) >= self.cfg.resend_after)
                        })
                        .collect();
                    for u in due {
                        self.transmit(now, conn, u);
                    }
                }
            }
            _ => {}
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_at(&self) -> Option<Instant> {
        Some(match self.phase {
            _ if !self.started => Instant::ZERO,
            Phase::Waiting { until } => until,
            Phase::Probing { started } => started + self.cfg.probe_timeout,
            Phase::Ready { .. } => self
                .next_echo
                .min(self.next_info)
                .min(self.next_resend_check)
                .min(self.last_rx + self.cfg.dead_after),
            _ => return None,
        })
    }
}
