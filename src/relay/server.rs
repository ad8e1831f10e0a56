//! One relay server as a state machine.
//!
//! - Servers: every server announces itself on each peer connection once a second with the list
//!   of servers it knows and how long ago each was heard from (gossip). A receiver keeps the
//!   freshest sighting of each, so ages spread and a server nobody hears from ages out everywhere
//!   after `dead_after`. A closed peer connection drops that server at once and leaves a tombstone
//!   so older gossip cannot bring it back.
//! - Users: registering makes this server the user's home; a `Directory` frame floods the
//!   (user, home, online, version) record; a record wins when its version is higher, or equal
//!   and it says offline (offline always follows online within one session).
//! - Messages: routed by recipient: delivered locally, sent straight to the home server when
//!   connected to it, otherwise flooded to every other peer with a hop limit. Every server
//!   remembers (uuid, attempt, kind) for `dedup_ttl` (bounded by `dedup_capacity`) and drops
//!   repeats, so cycles deliver each try once. Answers (delivered, unknown user, user offline)
//!   travel back to the sender the same way.
//! - Limits: at most `max_users` users registered here at once; a registration past it is
//!   refused with the reason (the client moves on to its next best server), counted in
//!   `users_limit` and logged at most once a second.

use super::wire::{Deframer, ErrorCode, Frame, MsgKind, Routed, ServerEntry, Uuid};
use super::{ConnId, Machine, Output};
use crate::node::limits::RateLimitedLog;
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This server's address as others dial it (`HOST:PORT`); also its name in the mesh.
    pub addr: String,
    /// Servers to join (any one member is enough).
    pub join: Vec<String>,
    pub gossip_interval: Duration,
    /// A server not heard from for this long is dropped.
    pub dead_after: Duration,
    /// How often to retry a server we should be connected to.
    pub redial_interval: Duration,
    pub dedup_capacity: usize,
    pub dedup_ttl: Duration,
    /// Dial every server we learn about; off, only `join` targets are dialed (a partial mesh
    /// where messages are flooded).
    pub full_mesh: bool,
    pub max_hops: u8,
    /// Bad frames tolerated on one connection before it is closed.
    pub max_errors: u32,
    /// Users registered with this server at once; more are refused (`users_limit`).
    pub max_users: usize,
}

/// Default of [`ServerConfig::max_users`]: far above a lab mesh, low enough that a registration
/// flood cannot grow the directory without bound.
pub const DEFAULT_MAX_USERS: usize = 10_000;

impl ServerConfig {
    pub fn new(addr: impl Into<String>) -> ServerConfig {
        ServerConfig {
            addr: addr.into(),
            join: Vec::new(),
            gossip_interval: Duration::from_millis(1000),
            dead_after: Duration::from_millis(5000),
            redial_interval: Duration::from_millis(2000),
            dedup_capacity: 65_536,
            dedup_ttl: Duration::from_secs(120),
            full_mesh: true,
            max_hops: 16,
            max_errors: 8,
            max_users: DEFAULT_MAX_USERS,
        }
    }
}

/// Forwarding and membership counters, shown by `tunstack ctl ... relay`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counters {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bad_frames: u64,
    pub registrations: u64,
    pub registrations_refused: u64,
    /// Registrations refused because `max_users` users were registered here.
    pub users_limit: u64,
    pub messages_in: u64,
    pub delivered_local: u64,
    pub forwarded_direct: u64,
    pub flooded: u64,
    pub duplicates_dropped: u64,
    pub hop_limit_dropped: u64,
    pub unknown_user_answers: u64,
    pub offline_answers: u64,
    pub answers_undeliverable: u64,
    pub servers_discovered: u64,
    pub servers_dropped: u64,
    pub dials: u64,
    pub dial_failures: u64,
    pub directory_updates: u64,
    pub echo_replies: u64,
}

/// Remembered message keys: bounded (oldest out first) and expiring.
pub struct Dedup {
    seen: HashSet<(Uuid, u8, MsgKind)>,
    order: VecDeque<(Instant, (Uuid, u8, MsgKind))>,
    capacity: usize,
    ttl: Duration,
}

impl Dedup {
    pub fn new(capacity: usize, ttl: Duration) -> Dedup {
        Dedup {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// True the first time a key is seen (within its lifetime).
    pub fn insert(&mut self, now: Instant, key: (Uuid, u8, MsgKind)) -> bool {
        self.expire(now);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((now, key));
        while self.order.len() > self.capacity {
            if let Some((_, k)) = self.order.pop_front() {
                self.seen.remove(&k);
            }
        }
        true
    }

    pub fn expire(&mut self, now: Instant) {
        while let Some((t, k)) = self.order.front().copied() {
            if now.saturating_since(t) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// Nothing said yet (a client or a server that has not announced).
    Unknown,
    Client {
        user: Option<String>,
    },
    Peer {
        addr: String,
    },
}

struct Conn {
    role: Role,
    deframer: Deframer,
    errors: u32,
    /// The target when we dialed it.
    dialed: Option<String>,
    /// Dial still in progress.
    connecting: bool,
    answered_announce: bool,
    /// Opened, or last sent us bytes: a connection that never says who it is gets closed.
    last_rx: Instant,
}

struct Known {
    last_seen: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    pub home: String,
    pub online: bool,
    pub version: u64,
}

pub struct Server {
    cfg: ServerConfig,
    conns: BTreeMap<ConnId, Conn>,
    known: BTreeMap<String, Known>,
    /// When a server was dropped: gossip heard before then cannot revive it.
    tombstones: HashMap<String, Instant>,
    last_dial: HashMap<String, Instant>,
    users: BTreeMap<String, DirEntry>,
    local: HashMap<String, ConnId>,
    dedup: Dedup,
    counters: Counters,
    out: VecDeque<Output>,
    next_conn: u64,
    next_tick: Option<Instant>,
    /// `users_limit` as last logged: a registration flood costs one line a second.
    limit_log: RateLimitedLog,
}

impl Server {
    pub fn new(cfg: ServerConfig) -> Server {
        let dedup = Dedup::new(cfg.dedup_capacity, cfg.dedup_ttl);
        Server {
            cfg,
            conns: BTreeMap::new(),
            known: BTreeMap::new(),
            tombstones: HashMap::new(),
            last_dial: HashMap::new(),
            users: BTreeMap::new(),
            local: HashMap::new(),
            dedup,
            counters: Counters::default(),
            out: VecDeque::new(),
            next_conn: ConnId::DIALED_BASE,
            next_tick: Some(Instant::ZERO),
            limit_log: RateLimitedLog::new(1, Duration::from_secs(1)),
        }
    }

    pub fn addr(&self) -> &str {
        &self.cfg.addr
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Servers this one believes alive (itself excluded).
    pub fn servers(&self) -> Vec<String> {
        self.known.keys().cloned().collect()
    }

    pub fn directory(&self) -> &BTreeMap<String, DirEntry> {
        &self.users
    }

    /// Users registered with this server now.
    pub fn local_users(&self) -> usize {
        self.local.len()
    }

    /// Message keys remembered for duplicate suppression.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// "limit hit" lines logged so far.
    pub fn limit_log_lines(&self) -> u64 {
        self.limit_log.lines
    }

    /// Logs `users_limit` if it grew since the last report and that was a second ago or more;
    /// otherwise the next call (a refusal or the gossip tick) reports the increase.
    fn log_limits(&mut self, now: Instant) {
        if let Some(d) = self.limit_log.check(now, 0, self.counters.users_limit) {
            log::warn!(
                "relay {}: limit hit: max-users {} (users_limit): {d} times since the last report, {} in total",
                self.cfg.addr,
                self.cfg.max_users,
                self.counters.users_limit
            );
        }
    }

    /// Everything `ctl relay` shows.
    pub fn status_json(&self, now: Instant) -> serde_json::Value {
        let servers: Vec<_> = self
            .known
            .iter()
            .map(|(a, k)| {
                serde_json::json!({
                    "addr": a,
                    "heard_ms_ago": now.saturating_since(k.last_seen).as_millis() as u64,
                    "connected": self.peer_conn(a).is_some(),
                })
            })
            .collect();
        let users: Vec<_> = self
            .users
            .iter()
            .map(|(n, e)| {
                serde_json::json!({
                    "name": n, "home": e.home, "online": e.online, "version": e.version,
                    "local": self.local.contains_key(n),
                })
            })
            .collect();
        let clients = self
            .conns
            .values()
            .filter(|c| matches!(c.role, Role::Client { .. }))
            .count();
        serde_json::json!({
            "addr": self.cfg.addr,
            "servers": servers,
            "users": users,
            "connections": self.conns.len(),
            "clients": clients,
            "users_here": self.local.len(),
            "max_users": self.cfg.max_users,
            "dedup_entries": self.dedup.len(),
            "counters": self.counters,
        })
    }

    /// Says goodbye to everyone and closes every connection (a clean stop).
    pub fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        let bye = Frame::ServerBye {
            addr: self.cfg.addr.clone(),
        };
        for id in ids {
            if !self.conns[&id].connecting {
                self.send(id, &bye);
            }
            self.out.push_back(Output::Close(id));
        }
        self.conns.clear();
    }

    fn send(&mut self, conn: ConnId, f: &Frame) {
        match f.to_bytes() {
            Ok(b) => {
                self.counters.frames_out += 1;
                self.out.push_back(Output::Send(conn, b));
            }
            Err(e) => log::warn!("relay: cannot emit {:?}: {e}", f.kind()),
        }
    }

    fn close(&mut self, now: Instant, conn: ConnId) {
        self.out.push_back(Output::Close(conn));
        self.forget_conn(now, conn);
    }

    fn error(&mut self, now: Instant, conn: ConnId, code: ErrorCode, text: String) {
        self.counters.bad_frames += 1;
        self.send(conn, &Frame::Error { code, text });
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.errors += 1;
        if c.errors >= self.cfg.max_errors {
            self.close(now, conn);
        }
    }

    /// Live connections to a peer server.
    fn peer_conn(&self, addr: &str) -> Option<ConnId> {
        self.conns.iter().find_map(|(id, c)| match &c.role {
            Role::Peer { addr: a } if a == addr => Some(*id),
            _ => None,
        })
    }

    fn peer_conns(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.role, Role::Peer { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// One connection per peer server: the first, so floods do not double up on twin links.
    fn one_conn_per_peer(&self) -> Vec<ConnId> {
        let mut seen = HashSet::new();
        let mut v = Vec::new();
        for (id, c) in &self.conns {
            if let Role::Peer { addr } = &c.role {
                if seen.insert(addr.clone()) {
                    v.push(*id);
                }
            }
        }
        v
    }

    fn gossip_list(&self, now: Instant) -> Vec<ServerEntry> {
        let mut v = vec![ServerEntry {
            addr: self.cfg.addr.clone(),
            age_ms: 0,
        }];
        for (a, k) in &self.known {
            let age = now.saturating_since(k.last_seen).as_millis();
            v.push(ServerEntry {
                addr: a.clone(),
                age_ms: age.min(u32::MAX as u128) as u32,
            });
        }
        v
    }

    fn dial(&mut self, now: Instant, target: &str) {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.counters.dials += 1;
        self.last_dial.insert(target.to_string(), now);
        self.conns.insert(
            id,
            Conn {
                role: Role::Unknown,
                deframer: Deframer::default(),
                errors: 0,
                dialed: Some(target.to_string()),
                connecting: true,
                answered_announce: false,
                last_rx: now,
            },
        );
        self.out.push_back(Output::Connect(id, target.to_string()));
    }

    fn has_conn_to(&self, target: &str) -> bool {
        self.conns.values().any(|c| {
            c.dialed.as_deref() == Some(target)
                || matches!(&c.role, Role::Peer { addr } if addr == target)
        })
    }

    fn merge(&mut self, now: Instant, entries: &[ServerEntry]) {
        for e in entries {
            if e.addr == self.cfg.addr || !super::wire::valid_name(&e.addr) {
                continue;
            }
            // Judged by the age itself: early in a run `now - age` saturates at zero and would
            // make a long-dead server look recently heard from.
            let age = Duration::from_millis(e.age_ms as u64);
            if age >= self.cfg.dead_after {
                continue;
            }
            let heard = now - age;
            if let Some(t) = self.tombstones.get(&e.addr) {
                if heard <= *t {
                    continue;
                }
                self.tombstones.remove(&e.addr);
            }
            match self.known.get_mut(&e.addr) {
                Some(k) => k.last_seen = k.last_seen.max(heard),
                None => {
                    log::info!("relay {}: discovered server {}", self.cfg.addr, e.addr);
                    self.counters.servers_discovered += 1;
                    self.known
                        .insert(e.addr.clone(), Known { last_seen: heard });
                    if self.cfg.full_mesh && !self.has_conn_to(&e.addr) {
                        self.dial(now, &e.addr.clone());
                    }
                }
            }
        }
    }

    /// Forgets a server: its users go offline here (each server notices on its own).
    fn drop_server(&mut self, now: Instant, addr: &str) {
        if self.known.remove(addr).is_some() {
            log::info!("relay {}: server {addr} is gone", self.cfg.addr);
            self.counters.servers_dropped += 1;
        }
        self.tombstones.insert(addr.to_string(), now);
        for e in self.users.values_mut() {
            if e.home == addr {
                e.online = false;
            }
        }
    }

    fn forget_conn(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        match c.role {
            Role::Client { user: Some(name) } if self.local.get(&name) == Some(&conn) => {
                self.local.remove(&name);
                self.user_offline(&name);
            }
            Role::Peer { addr } if self.peer_conn(&addr).is_none() => {
                self.drop_server(now, &addr);
            }
            _ => {}
        }
    }

    fn user_offline(&mut self, name: &str) {
        let Some(e) = self.users.get_mut(name) else {
            return;
        };
        if e.home != self.cfg.addr || !e.online {
            return;
        }
        e.online = false;
        let f = Frame::Directory {
            name: name.to_string(),
            home: e.home.clone(),
            online: false,
            version: e.version,
        };
        self.flood(None, &f);
    }

    fn flood(&mut self, except: Option<ConnId>, f: &Frame) {
        for id in self.one_conn_per_peer() {
            if Some(id) != except {
                self.send(id, f);
            }
        }
    }

    /// Applies a directory record; true when it changed what we know.
    fn apply_directory(&mut self, name: &str, home: &str, online: bool, version: u64) -> bool {
        let newer = match self.users.get(name) {
            None => true,
            Some(e) => version > e.version || (version == e.version && e.online && !online),
        };
        if newer {
            self.users.insert(
                name.to_string(),
                DirEntry {
                    home: home.to_string(),
                    online,
                    version,
                },
            );
            self.counters.directory_updates += 1;
        }
        newer
    }

    fn on_frame(&mut self, now: Instant, conn: ConnId, f: Frame) {
        self.counters.frames_in += 1;
        let role = match self.conns.get(&conn) {
            Some(c) => c.role.clone(),
            None => return,
        };
        match f {
            Frame::InfoRequest => {
                let list = self.gossip_list(now);
                self.send(conn, &Frame::InfoResponse(list));
            }
            Frame::EchoRequest(d) => {
                self.counters.echo_replies += 1;
                self.send(conn, &Frame::EchoReply(d));
            }
            Frame::Announce { me, known } | Frame::AnnounceResponse { me, known }
                if matches!(role, Role::Client { .. }) =>
            {
                let _ = (me, known);
                self.error(
                    now,
                    conn,
                    ErrorCode::Refused,
                    "a client cannot announce".into(),
                );
            }
            Frame::Announce { me, known } | Frame::AnnounceResponse { me, known } => {
                if me == self.cfg.addr {
                    // We dialed ourselves (our own address in --join).
                    self.close(now, conn);
                    return;
                }
                let was_unknown = role == Role::Unknown;
                let reply = {
                    let c = self.conns.get_mut(&conn).expect("checked above");
                    c.role = Role::Peer { addr: me.clone() };
                    let r = !c.answered_announce && c.dialed.is_none();
                    c.answered_announce = true;
                    r
                };
                self.tombstones.remove(&me);
                let mut entries = known;
                entries.push(ServerEntry {
                    addr: me.clone(),
                    age_ms: 0,
                });
                self.merge(now, &entries);
                if reply {
                    let list = self.gossip_list(now);
                    self.send(
                        conn,
                        &Frame::AnnounceResponse {
                            me: self.cfg.addr.clone(),
                            known: list,
                        },
                    );
                }
                if was_unknown {
                    // A new peer learns the whole directory at once; floods keep it current.
                    let records: Vec<Frame> = self
                        .users
                        .iter()
                        .map(|(n, e)| Frame::Directory {
                            name: n.clone(),
                            home: e.home.clone(),
                            online: e.online,
                            version: e.version,
                        })
                        .collect();
                    for r in records {
                        self.send(conn, &r);
                    }
                }
            }
            Frame::Register { version, name } => {
                if matches!(role, Role::Peer { .. }) {
                    self.error(
                        now,
                        conn,
                        ErrorCode::Refused,
                        "a server cannot register users".into(),
                    );
                    return;
                }
                if let Some(e) = self.users.get(&name) {
                    if e.version > version {
                        self.counters.registrations_refused += 1;
                        self.send(
                            conn,
                            &Frame::RegisterRefused {
                                name,
                                reason: "a newer session of this user is registered".into(),
                            },
                        );
                        return;
                    }
                }
                // A new name here (not a session moving connections, not a rename) needs room.
                let renaming = matches!(&role, Role::Client { user: Some(old) }
                    if self.local.get(old) == Some(&conn));
                if !self.local.contains_key(&name)
                    && !renaming
                    && self.local.len() >= self.cfg.max_users
                {
                    self.counters.registrations_refused += 1;
                    self.counters.users_limit += 1;
                    self.log_limits(now);
                    let reason = format!(
                        "this server has its limit of {} users registered; try another server",
                        self.cfg.max_users
                    );
                    self.send(conn, &Frame::RegisterRefused { name, reason });
                    return;
                }
                if let Role::Client { user: Some(old) } = &role {
                    if old != &name && self.local.get(old) == Some(&conn) {
                        self.local.remove(old);
                        self.user_offline(&old.clone());
                    }
                }
                if let Some(prev) = self.local.insert(name.clone(), conn) {
                    if prev != conn {
                        // The same user again on a new connection: the old one is stale.
                        if let Some(c) = self.conns.get_mut(&prev) {
                            c.role = Role::Client { user: None };
                        }
                        self.close(now, prev);
                    }
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.role = Role::Client {
                        user: Some(name.clone()),
                    };
                }
                self.counters.registrations += 1;
                let home = self.cfg.addr.clone();
                self.users.insert(
                    name.clone(),
                    DirEntry {
                        home: home.clone(),
                        online: true,
                        version,
                    },
                );
                self.counters.directory_updates += 1;
                log::info!("relay {}: user {name} registered", self.cfg.addr);
                self.send(conn, &Frame::Registered { name: name.clone() });
                self.flood(
                    None,
                    &Frame::Directory {
                        name,
                        home,
                        online: true,
                        version,
                    },
                );
            }
            Frame::Directory {
                name,
                home,
                online,
                version,
            } => {
                if !matches!(role, Role::Peer { .. }) {
                    self.error(
                        now,
                        conn,
                        ErrorCode::Refused,
                        "only servers send directory records".into(),
                    );
                    return;
                }
                if self.apply_directory(&name, &home, online, version) {
                    if home != self.cfg.addr {
                        // The user moved on: a session still held here is stale.
                        if let Some(old) = self.local.remove(&name) {
                            if let Some(c) = self.conns.get_mut(&old) {
                                c.role = Role::Client { user: None };
                            }
                            self.close(now, old);
                        }
                    }
                    let f = Frame::Directory {
                        name,
                        home,
                        online,
                        version,
                    };
                    self.flood(Some(conn), &f);
                }
            }
            Frame::Message(mut m) => {
                match &role {
                    Role::Unknown | Role::Client { user: None } => {
                        self.error(
                            now,
                            conn,
                            ErrorCode::NotRegistered,
                            "register a user first".into(),
                        );
                        return;
                    }
                    Role::Client { user: Some(u) } => {
                        if &m.from != u || !matches!(m.kind, MsgKind::Data | MsgKind::Delivered) {
                            self.error(
                                now,
                                conn,
                                ErrorCode::Refused,
                                format!("you are {u}: send as yourself"),
                            );
                            return;
                        }
                        m.hops = self.cfg.max_hops;
                    }
                    Role::Peer { .. } => {}
                }
                self.route(now, Some(conn), m);
            }
            Frame::UserBye => {
                if let Role::Client { user: Some(name) } = role {
                    if self.local.get(&name) == Some(&conn) {
                        self.local.remove(&name);
                        self.user_offline(&name);
                    }
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.role = Role::Client { user: None };
                    }
                }
                self.close(now, conn);
            }
            Frame::ServerBye { addr } => {
                if matches!(role, Role::Peer { .. }) {
                    self.drop_server(now, &addr);
                }
            }
            Frame::Error { code, text } => {
                log::debug!(
                    "relay {}: peer {conn:?} reports {code:?}: {text}",
                    self.cfg.addr
                );
            }
            Frame::EchoReply(_)
            | Frame::InfoResponse(_)
            | Frame::Registered { .. }
            | Frame::RegisterRefused { .. } => {
                self.error(
                    now,
                    conn,
                    ErrorCode::Refused,
                    "a server does not expect this frame".into(),
                );
            }
        }
    }

    /// Sends a message or answer one step closer to the user `m.to`.
    fn route(&mut self, now: Instant, from_conn: Option<ConnId>, m: Routed) {
        if m.kind == MsgKind::Data {
            self.counters.messages_in += 1;
        }
        if !self.dedup.insert(now, (m.uuid, m.attempt, m.kind)) {
            self.counters.duplicates_dropped += 1;
            return;
        }
        if m.hops == 0 {
            self.counters.hop_limit_dropped += 1;
            return;
        }
        let entry = self.users.get(&m.to).cloned();
        let max_hops = self.cfg.max_hops;
        let answer = |kind| Routed {
            kind,
            uuid: m.uuid,
            attempt: m.attempt,
            hops: max_hops,
            from: m.to.clone(),
            to: m.from.clone(),
            body: Vec::new(),
        };
        let e = match entry {
            None => {
                if m.kind == MsgKind::Data {
                    self.counters.unknown_user_answers += 1;
                    let a = answer(MsgKind::UnknownUser);
                    self.route(now, None, a);
                } else {
                    self.counters.answers_undeliverable += 1;
                }
                return;
            }
            Some(e) => e,
        };
        let offline = |s: &mut Server| {
            if m.kind == MsgKind::Data {
                s.counters.offline_answers += 1;
                let a = answer(MsgKind::UserOffline);
                s.route(now, None, a);
            } else {
                s.counters.answers_undeliverable += 1;
            }
        };
        if !e.online {
            offline(self);
            return;
        }
        if e.home == self.cfg.addr {
            match self.local.get(&m.to).copied() {
                Some(c) => {
                    self.counters.delivered_local += 1;
                    self.send(c, &Frame::Message(m));
                }
                None => offline(self),
            }
            return;
        }
        let mut fwd = m.clone();
        fwd.hops -= 1;
        if let Some(c) = self.peer_conn(&e.home) {
            self.counters.forwarded_direct += 1;
            self.send(c, &Frame::Message(fwd));
            return;
        }
        let targets: Vec<ConnId> = self
            .one_conn_per_peer()
            .into_iter()
            .filter(|c| Some(*c) != from_conn)
            .collect();
        if targets.is_empty() {
            offline(self);
            return;
        }
        self.counters.flooded += 1;
        for c in targets {
            self.send(c, &Frame::Message(fwd.clone()));
        }
    }
}

impl Machine for Server {
    fn handle_accepted(&mut self, now: Instant, conn: ConnId) {
        self.conns.insert(
            conn,
            Conn {
                role: Role::Unknown,
                deframer: Deframer::default(),
                errors: 0,
                dialed: None,
                connecting: false,
                answered_announce: false,
                last_rx: now,
            },
        );
    }

    fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            // We gave up on it meanwhile.
            self.out.push_back(Output::Close(conn));
            return;
        };
        c.connecting = false;
        c.last_rx = now;
        let list = self.gossip_list(now);
        self.send(
            conn,
            &Frame::Announce {
                me: self.cfg.addr.clone(),
                known: list,
            },
        );
    }

    fn handle_connect_failed(&mut self, _now: Instant, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            self.counters.dial_failures += 1;
            log::debug!("relay {}: cannot reach {:?}", self.cfg.addr, c.dialed);
        }
    }

    fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        match self.conns.get_mut(&conn) {
            Some(c) => {
                c.deframer.push(bytes);
                c.last_rx = now;
            }
            None => return,
        }
        loop {
            let next = match self.conns.get_mut(&conn) {
                Some(c) => c.deframer.next_frame(),
                None => return,
            };
            match next {
                None => return,
                Some(Ok(f)) => self.on_frame(now, conn, f),
                Some(Err(e)) => self.error(now, conn, ErrorCode::Malformed, e.to_string()),
            }
        }
    }

    fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        self.forget_conn(now, conn);
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.next_tick {
            Some(t) if t <= now => {}
            _ => return,
        }
        self.next_tick = Some(now + self.cfg.gossip_interval);
        self.log_limits(now);
        self.dedup.expire(now);
        let dead_after = self.cfg.dead_after;
        self.tombstones
            .retain(|_, t| now.saturating_since(*t) < dead_after * 2);
        // Servers silent too long: drop them, and any connection to them.
        let silent: Vec<String> = self
            .known
            .iter()
            .filter(|(_, k)| now.saturating_since(k.last_seen) >= dead_after)
            .map(|(a, _)| a.clone())
            .collect();
        for a in silent {
            let conns: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| matches!(&c.role, Role::Peer { addr } if *addr == a))
                .map(|(id, _)| *id)
                .collect();
            for c in conns {
                self.out.push_back(Output::Close(c));
                self.conns.remove(&c);
            }
            self.drop_server(now, &a);
        }
        // Connections that stayed silent without saying who they are: a server we dialed that
        // went dark right after the TCP handshake would otherwise count as connected forever
        // (and never be dialed again); an idle stranger would hold its slot.
        let mute: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.role == Role::Unknown
                    && !c.connecting
                    && now.saturating_since(c.last_rx) >= dead_after
            })
            .map(|(id, _)| *id)
            .collect();
        for c in mute {
            log::debug!(
                "relay {}: closing {c:?}: silent, never announced or registered",
                self.cfg.addr
            );
            self.close(now, c);
        }
        let list = self.gossip_list(now);
        let me = self.cfg.addr.clone();
        for c in self.peer_conns() {
            self.send(
                c,
                &Frame::Announce {
                    me: me.clone(),
                    known: list.clone(),
                },
            );
        }
        let mut targets: Vec<String> = self.cfg.join.clone();
        if self.cfg.full_mesh {
            targets.extend(self.known.keys().cloned());
        }
        for t in targets {
            if t == self.cfg.addr || self.has_conn_to(&t) {
                continue;
            }
            let due = self
                .last_dial
                .get(&t)
                .is_none_or(|d| now.saturating_since(*d) >= self.cfg.redial_interval);
            if due {
                self.dial(now, &t);
            }
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_at(&self) -> Option<Instant> {
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Server) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn frames(outs: &[Output], conn: ConnId) -> Vec<Frame> {
        let mut d = Deframer::default();
        for o in outs {
            if let Output::Send(c, b) = o {
                if *c == conn {
                    d.push(b);
                }
            }
        }
        std::iter::from_fn(|| d.next_frame())
            .map(|f| f.unwrap())
            .collect()
    }

    fn server_with_client(name: &str) -> (Server, ConnId) {
        let mut s = Server::new(ServerConfig::new("s1:1"));
        let now = Instant::ZERO;
        s.handle_timeout(now);
        let c = ConnId(1);
        s.handle_accepted(now, c);
        let reg = Frame::Register {
            version: 1,
            name: name.into(),
        };
        s.handle_bytes(now, c, &reg.to_bytes().unwrap());
        let outs = drain(&mut s);
        assert_eq!(
            frames(&outs, c),
            vec![Frame::Registered { name: name.into() }]
        );
        (s, c)
    }

    fn register(s: &mut Server, now: Instant, c: ConnId, name: &str) -> Vec<Frame> {
        let reg = Frame::Register {
            version: 1,
            name: name.into(),
        };
        s.handle_bytes(now, c, &reg.to_bytes().unwrap());
        frames(&drain(s), c)
    }

    #[test]
    fn test_users_limit_refuses_new_names_only() {
        let mut cfg = ServerConfig::new("s1:1");
        cfg.max_users = 2;
        let mut s = Server::new(cfg);
        let t0 = Instant::ZERO;
        s.handle_timeout(t0);
        for (i, n) in ["ann", "bob"].iter().enumerate() {
            s.handle_accepted(t0, ConnId(i as u64 + 1));
            assert_eq!(
                register(&mut s, t0, ConnId(i as u64 + 1), n),
                vec![Frame::Registered { name: (*n).into() }]
            );
        }
        s.handle_accepted(t0, ConnId(3));
        match &register(&mut s, t0, ConnId(3), "cy")[..] {
            [Frame::RegisterRefused { name, reason }] => {
                assert_eq!(name, "cy");
                assert!(reason.contains("limit of 2 users"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(s.counters().users_limit, 1);
        assert_eq!(s.local_users(), 2);
        // At the limit, a user moving to a new connection and a rename still work.
        s.handle_accepted(t0, ConnId(4));
        assert_eq!(
            register(&mut s, t0, ConnId(4), "ann"),
            vec![Frame::Registered { name: "ann".into() }]
        );
        assert_eq!(
            register(&mut s, t0, ConnId(2), "bo"),
            vec![Frame::Registered { name: "bo".into() }]
        );
        assert_eq!(s.local_users(), 2);
        assert_eq!(s.counters().users_limit, 1);
        // A flood of refusals costs one log line a second.
        for k in 0..100u64 {
            s.handle_accepted(t0, ConnId(10 + k));
            let _ = register(&mut s, t0, ConnId(10 + k), &format!("u{k}"));
        }
        assert_eq!(s.counters().users_limit, 101);
        assert_eq!(s.limit_log_lines(), 1);
        s.handle_timeout(Instant::from_millis(500));
        assert_eq!(s.limit_log_lines(), 1, "not twice within a second");
        s.handle_timeout(Instant::from_millis(1000));
        assert_eq!(s.limit_log_lines(), 2, "the rest reported by the next tick");
        s.handle_timeout(Instant::from_millis(2000));
        assert_eq!(s.limit_log_lines(), 2, "nothing new, no line");
    }

    #[test]
    fn test_dialed_server_silent_after_connect_is_redialed() {
        let mut cfg = ServerConfig::new("s1:1");
        cfg.join = vec!["s2:1".into()];
        let (dead_after, redial) = (cfg.dead_after, cfg.redial_interval);
        let mut s = Server::new(cfg);
        let t0 = Instant::ZERO;
        s.handle_timeout(t0);
        let dial = match &drain(&mut s)[..] {
            [Output::Connect(c, a)] if a == "s2:1" => *c,
            other => panic!("expected a dial, got {other:?}"),
        };
        s.handle_connected(t0, dial);
        // Our announcement goes out; s2 never answers (it went dark after the handshake).
        assert!(matches!(
            &frames(&drain(&mut s), dial)[..],
            [Frame::Announce { .. }]
        ));
        let mut t = t0;
        let mut closed_at = None;
        while t < t0 + dead_after + redial * 2 {
            t += Duration::from_millis(1000);
            s.handle_timeout(t);
            for o in drain(&mut s) {
                match o {
                    Output::Close(c) if c == dial => closed_at = Some(t),
                    Output::Connect(c, a) if a == "s2:1" => {
                        assert!(closed_at.is_some(), "redialed while still connected");
                        assert_ne!(c, dial);
                        return;
                    }
                    _ => {}
                }
            }
        }
        panic!("never redialed s2 (closed the silent connection at {closed_at:?})");
    }

    #[test]
    fn test_stale_gossip_early_in_a_run_is_ignored() {
        let mut s = Server::new(ServerConfig::new("s1:1"));
        let t = Instant::from_millis(1000);
        s.handle_timeout(t);
        s.handle_accepted(t, ConnId(1));
        let a = Frame::Announce {
            me: "s2:1".into(),
            known: vec![ServerEntry {
                addr: "s9:1".into(),
                age_ms: 3_600_000,
            }],
        };
        s.handle_bytes(t, ConnId(1), &a.to_bytes().unwrap());
        assert_eq!(
            s.servers(),
            vec!["s2:1".to_string()],
            "s9 was heard an hour ago"
        );
    }

    #[test]
    fn test_dedup_bounded_and_expiring() {
        let mut d = Dedup::new(2, Duration::from_secs(10));
        let k = |b| (Uuid([b; 16]), 0, MsgKind::Data);
        let t0 = Instant::ZERO;
        assert!(d.insert(t0, k(1)));
        assert!(!d.insert(t0, k(1)));
        assert!(d.insert(t0, k(2)));
        assert!(d.insert(t0, k(3)));
        assert_eq!(d.len(), 2);
        assert!(d.insert(t0, k(1)), "evicted by capacity");
        assert!(d.insert(Instant::from_secs(11), k(3)), "expired");
    }

    #[test]
    fn test_registered_garbage_gets_error_not_crash() {
        let (mut s, c) = server_with_client("ann");
        s.handle_bytes(Instant::ZERO, c, &[9, 9, 0, 2, 0, 0, 1, 2]);
        let f = frames(&drain(&mut s), c);
        assert!(matches!(
            f[0],
            Frame::Error {
                code: ErrorCode::Malformed,
                ..
            }
        ));
    }

    #[test]
    fn test_unknown_user_answered() {
        let (mut s, c) = server_with_client("ann");
        let m = Routed {
            kind: MsgKind::Data,
            uuid: Uuid([7; 16]),
            attempt: 0,
            hops: 0,
            from: "ann".into(),
            to: "nobody".into(),
            body: b"hi".to_vec(),
        };
        s.handle_bytes(Instant::ZERO, c, &Frame::Message(m).to_bytes().unwrap());
        let f = frames(&drain(&mut s), c);
        match &f[0] {
            Frame::Message(a) => {
                assert_eq!(a.kind, MsgKind::UnknownUser);
                assert_eq!(a.from, "nobody");
                assert_eq!(a.uuid, Uuid([7; 16]));
            }
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn test_unregistered_message_refused() {
        let mut s = Server::new(ServerConfig::new("s1:1"));
        s.handle_accepted(Instant::ZERO, ConnId(1));
        let m = Routed {
            kind: MsgKind::Data,
            uuid: Uuid([7; 16]),
            attempt: 0,
            hops: 3,
            from: "x".into(),
            to: "y".into(),
            body: vec![],
        };
        s.handle_bytes(
            Instant::ZERO,
            ConnId(1),
            &Frame::Message(m).to_bytes().unwrap(),
        );
        let f = frames(&drain(&mut s), ConnId(1));
        assert!(matches!(
            f[0],
            Frame::Error {
                code: ErrorCode::NotRegistered,
                ..
            }
        ));
    }
}
