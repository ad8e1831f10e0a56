//! The relay mesh without sockets or root: server and client state machines wired through an
//! in-memory network of byte-stream connections with per-link delay and a virtual clock that
//! jumps to the next arrival or deadline. Killing a server drops all its connections; a
//! blackhole instead cuts a group of nodes off silently (nothing crosses, no close is seen,
//! connects across time out), like a host that lost power or a partition.

use std::collections::{BTreeMap, HashMap};
use tunstack::rand::Rng;
use tunstack::relay::client::{Client, ClientConfig, Event};
use tunstack::relay::server::{Server, ServerConfig};
use tunstack::relay::wire::Uuid;
use tunstack::relay::{ConnId, Machine, Output};
use tunstack::time::{Duration, Instant};

enum Node {
    Server(Box<Server>),
    Client(Box<Client>),
}

impl Node {
    fn m(&mut self) -> &mut dyn Machine {
        match self {
            Node::Server(s) => &mut **s,
            Node::Client(c) => &mut **c,
        }
    }
}

#[derive(Debug)]
enum Ev {
    Accepted(ConnId),
    Connected(ConnId),
    ConnectFailed(ConnId),
    Bytes(ConnId, Vec<u8>),
    Closed(ConnId),
}

type End = (usize, ConnId);

struct Net {
    now: Instant,
    nodes: Vec<Node>,
    alive: Vec<bool>,
    addrs: HashMap<String, usize>,
    /// Each live connection end and the end it talks to.
    links: HashMap<End, End>,
    queue: BTreeMap<(Instant, u64), (usize, Ev)>,
    seq: u64,
    next_inbound: Vec<u64>,
    /// One-way delay between two nodes (either order); default 1 ms.
    delays: HashMap<(usize, usize), Duration>,
    /// What every client has shown its user: (client, from, body).
    received: Vec<(usize, String, String)>,
    events: Vec<(usize, Event)>,
    /// Nodes on the far side of a partition: links between the two sides carry nothing.
    cut: Vec<bool>,
}

/// How long a connect into a blackhole takes to fail (the runner's connect timeout).
const CONNECT_TIMEOUT_MS: u64 = 3000;

impl Net {
    fn new() -> Net {
        Net {
            now: Instant::ZERO,
            nodes: Vec::new(),
            alive: Vec::new(),
            addrs: HashMap::new(),
            links: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            next_inbound: Vec::new(),
            delays: HashMap::new(),
            received: Vec::new(),
            events: Vec::new(),
            cut: Vec::new(),
        }
    }

    fn add(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.alive.push(true);
        self.cut.push(false);
        self.next_inbound.push(1);
        self.nodes.len() - 1
    }

    fn server(&mut self, cfg: ServerConfig) -> usize {
        let addr = cfg.addr.clone();
        let i = self.add(Node::Server(Box::new(Server::new(cfg))));
        self.addrs.insert(addr, i);
        i
    }

    fn client(&mut self, user: &str, seeds: &[&str], seed: u64) -> usize {
        let cfg = ClientConfig::new(user, seeds.iter().map(|s| s.to_string()).collect());
        self.add(Node::Client(Box::new(Client::new(cfg, Rng::new(seed)))))
    }

    fn set_delay(&mut self, a: usize, b: usize, ms: u64) {
        self.delays.insert((a, b), Duration::from_millis(ms));
        self.delays.insert((b, a), Duration::from_millis(ms));
    }

    fn delay(&self, a: usize, b: usize) -> Duration {
        self.delays
            .get(&(a, b))
            .copied()
            .unwrap_or(Duration::from_millis(1))
    }

    fn at(&mut self, t: Instant, node: usize, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), (node, ev));
    }

    fn c(&mut self, i: usize) -> &mut Client {
        match &mut self.nodes[i] {
            Node::Client(c) => c,
            _ => panic!("node {i} is not a client"),
        }
    }

    fn s(&mut self, i: usize) -> &mut Server {
        match &mut self.nodes[i] {
            Node::Server(s) => s,
            _ => panic!("node {i} is not a server"),
        }
    }

    fn send(&mut self, from: usize, to: &str, body: &str) -> Uuid {
        let now = self.now;
        let u = self.c(from).send(now, to, body.as_bytes()).unwrap();
        self.flush(from);
        u
    }

    fn flush(&mut self, i: usize) {
        while let Some(o) = self.nodes[i].m().poll_output() {
            if !self.alive[i] {
                continue;
            }
            match o {
                Output::Send(c, b) => {
                    if let Some(&(j, pc)) = self.links.get(&(i, c)) {
                        if self.cut[i] != self.cut[j] {
                            continue;
                        }
                        let t = self.now + self.delay(i, j);
                        self.at(t, j, Ev::Bytes(pc, b));
                    }
                }
                Output::Close(c) => {
                    if let Some((j, pc)) = self.links.remove(&(i, c)) {
                        self.links.remove(&(j, pc));
                        // Across a cut the far end never hears: its end stays open, silent.
                        if self.cut[i] == self.cut[j] {
                            let t = self.now + self.delay(i, j);
                            self.at(t, j, Ev::Closed(pc));
                        }
                    }
                }
                Output::Connect(c, addr) => match self.addrs.get(&addr).copied() {
                    Some(j) if self.alive[j] && self.cut[i] != self.cut[j] => {
                        let t = self.now + Duration::from_millis(CONNECT_TIMEOUT_MS);
                        self.at(t, i, Ev::ConnectFailed(c));
                    }
                    Some(j) if self.alive[j] => {
                        let pc = ConnId(self.next_inbound[j]);
                        self.next_inbound[j] += 1;
                        self.links.insert((i, c), (j, pc));
                        self.links.insert((j, pc), (i, c));
                        let d = self.delay(i, j);
                        self.at(self.now + d, j, Ev::Accepted(pc));
                        self.at(self.now + d * 2, i, Ev::Connected(c));
                    }
                    _ => {
                        let t = self.now + Duration::from_millis(1);
                        self.at(t, i, Ev::ConnectFailed(c));
                    }
                },
            }
        }
        if let Node::Client(c) = &mut self.nodes[i] {
            while let Some(e) = c.poll_event() {
                if let Event::Message { from, body, .. } = &e {
                    self.received.push((
                        i,
                        from.clone(),
                        String::from_utf8_lossy(body).into_owned(),
                    ));
                }
                self.events.push((i, e));
            }
        }
    }

    /// Kills a node: its connections drop, the far ends see them close.
    fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        let ends: Vec<(End, End)> = self
            .links
            .iter()
            .filter(|(a, _)| a.0 == i)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in ends {
            self.links.remove(&a);
            self.links.remove(&b);
            let t = self.now + self.delay(a.0, b.0);
            self.at(t, b.0, Ev::Closed(b.1));
        }
        self.queue.retain(|_, (n, _)| *n != i);
    }

    /// Cuts `nodes` off from the rest without closing anything: what is in flight across the
    /// cut is lost, nothing crosses it from now on, and neither side sees a connection close.
    fn blackhole(&mut self, nodes: &[usize]) {
        for &n in nodes {
            self.cut[n] = true;
        }
        let links = &self.links;
        let cut = &self.cut;
        self.queue.retain(|_, (j, ev)| {
            let conn = match ev {
                Ev::Accepted(c) | Ev::Connected(c) | Ev::Bytes(c, _) | Ev::Closed(c) => *c,
                Ev::ConnectFailed(_) => return true,
            };
            links
                .get(&(*j, conn))
                .is_none_or(|&(i, _)| cut[i] == cut[*j])
        });
    }

    fn step(&mut self, limit: Instant) -> bool {
        let next_ev = self.queue.keys().next().map(|k| k.0);
        let next_timer = (0..self.nodes.len())
            .filter(|i| self.alive[*i])
            .filter_map(|i| match &self.nodes[i] {
                Node::Server(s) => s.poll_at(),
                Node::Client(c) => c.poll_at(),
            })
            .min();
        let t = match (next_ev, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        if t > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        if next_ev == Some(t) {
            let k = *self.queue.keys().next().unwrap();
            let (i, ev) = self.queue.remove(&k).unwrap();
            if self.alive[i] {
                let m = self.nodes[i].m();
                match ev {
                    Ev::Accepted(c) => m.handle_accepted(now, c),
                    Ev::Connected(c) => m.handle_connected(now, c),
                    Ev::ConnectFailed(c) => m.handle_connect_failed(now, c),
                    Ev::Bytes(c, b) => m.handle_bytes(now, c, &b),
                    Ev::Closed(c) => m.handle_closed(now, c),
                }
                self.flush(i);
            }
        } else {
            for i in 0..self.nodes.len() {
                if self.alive[i] {
                    self.nodes[i].m().handle_timeout(now);
                    self.flush(i);
                }
            }
        }
        true
    }

    fn run_for(&mut self, ms: u64) {
        let limit = self.now + Duration::from_millis(ms);
        while self.step(limit) {}
        self.now = self.now.max(limit);
    }

    /// Runs until `f` holds (checked after each step), failing after `ms` of virtual time.
    #[track_caller]
    fn run_until(&mut self, ms: u64, what: &str, mut f: impl FnMut(&mut Net) -> bool) {
        let limit = self.now + Duration::from_millis(ms);
        while !f(self) {
            assert!(
                self.step(limit),
                "timed out waiting for {what} at {:?}",
                self.now
            );
        }
    }

    fn server_of(&mut self, c: usize) -> Option<String> {
        self.c(c).server().map(str::to_string)
    }

    fn all_registered(&mut self, clients: &[usize]) -> bool {
        clients.iter().all(|&c| self.server_of(c).is_some())
    }

    /// Every server's directory lists every given user online.
    fn directory_converged(&mut self, servers: &[usize], users: &[&str]) -> bool {
        servers.iter().all(|&s| {
            !self.alive[s] || {
                let d = self.s(s).directory();
                users.iter().all(|u| d.get(*u).is_some_and(|e| e.online))
            }
        })
    }

    fn count(&self, to: usize, from: &str, body: &str) -> usize {
        self.received
            .iter()
            .filter(|(c, f, b)| *c == to && f == from && b == body)
            .count()
    }
}

fn ring(net: &mut Net, n: usize, full_mesh: bool) -> Vec<usize> {
    (1..=n)
        .map(|i| {
            let mut cfg = ServerConfig::new(format!("s{i}:7000"));
            // Each joins the previous one, and the first the last: a cycle.
            let prev = if i == 1 { n } else { i - 1 };
            cfg.join = vec![format!("s{prev}:7000")];
            cfg.full_mesh = full_mesh;
            net.server(cfg)
        })
        .collect()
}

/// Clients placed near one server each: 1 ms to it, 30 ms to the others.
fn place(net: &mut Net, servers: &[usize], users: &[(&str, usize)]) -> Vec<usize> {
    users
        .iter()
        .enumerate()
        .map(|(k, (name, home))| {
            let c = net.client(name, &["s1:7000"], 100 + k as u64);
            for (j, s) in servers.iter().enumerate() {
                net.set_delay(c, *s, if j == *home { 1 } else { 30 });
            }
            c
        })
        .collect()
}

fn all_to_all(net: &mut Net, clients: &[usize], names: &[&str], tag: &str) {
    for (i, &c) in clients.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            if i != j {
                net.send(c, to, &format!("{tag} {}->{to}", names[i]));
            }
        }
    }
    let cl = clients.to_vec();
    net.run_until(20_000, "all acknowledged", |n| {
        cl.iter().all(|&c| n.c(c).outbox_len() == 0)
    });
    net.run_for(2000);
    for (i, &c) in clients.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            if i != j {
                let body = format!("{tag} {}->{to}", names[i]);
                assert_eq!(
                    net.count(clients[j], names[i], &body),
                    1,
                    "'{body}' must arrive exactly once"
                );
            }
        }
        let _ = c;
    }
}

#[test]
fn test_sim_three_server_cycle_all_to_all_exactly_once() {
    let mut net = Net::new();
    let servers = ring(&mut net, 3, true);
    let names = ["ann", "bob", "cy", "dee"];
    let clients = place(
        &mut net,
        &servers,
        &[("ann", 0), ("bob", 1), ("cy", 2), ("dee", 0)],
    );
    net.run_until(10_000, "registration", |n| n.all_registered(&clients));
    for (k, home) in [(0, "s1"), (1, "s2"), (2, "s3"), (3, "s1")] {
        assert!(net.server_of(clients[k]).unwrap().starts_with(home));
    }
    net.run_until(5000, "directory", |n| {
        n.directory_converged(&servers, &names)
    });
    all_to_all(&mut net, &clients, &names, "m");
    // Every server knows the other two.
    for &s in &servers {
        assert_eq!(net.s(s).servers().len(), 2);
    }
    let fwd: u64 = servers
        .iter()
        .map(|&s| net.s(s).counters().forwarded_direct)
        .sum();
    assert!(fwd >= 10, "messages between servers were forwarded ({fwd})");
}

#[test]
fn test_sim_partial_ring_floods_exactly_once() {
    let mut net = Net::new();
    // Four servers in a ring, each connected only to its neighbours: s1 and s3 are two hops
    // apart both ways round, so every message to them crosses a cycle.
    let servers = ring(&mut net, 4, false);
    // Gossip needs a few rounds to carry s3 to s1 two hops away.
    net.run_for(3000);
    for &s in &servers {
        assert_eq!(net.s(s).servers().len(), 3);
    }
    let names = ["ann", "cy"];
    let clients = place(&mut net, &servers, &[("ann", 0), ("cy", 2)]);
    net.run_until(10_000, "registration", |n| n.all_registered(&clients));
    net.run_until(5000, "directory", |n| {
        n.directory_converged(&servers, &names)
    });
    for k in 0..20 {
        net.send(clients[0], "cy", &format!("x{k}"));
        net.send(clients[1], "ann", &format!("y{k}"));
    }
    net.run_until(10_000, "acks", |n| {
        n.c(clients[0]).outbox_len() == 0 && n.c(clients[1]).outbox_len() == 0
    });
    net.run_for(2000);
    for k in 0..20 {
        assert_eq!(net.count(clients[1], "ann", &format!("x{k}")), 1);
        assert_eq!(net.count(clients[0], "cy", &format!("y{k}")), 1);
    }
    let dups: u64 = servers
        .iter()
        .map(|&s| net.s(s).counters().duplicates_dropped)
        .sum();
    let flooded: u64 = servers.iter().map(|&s| net.s(s).counters().flooded).sum();
    assert!(
        flooded > 0 && dups > 0,
        "flooded {flooded}, duplicates dropped {dups}"
    );
}

#[test]
fn test_sim_unknown_and_offline_user_answers() {
    let mut net = Net::new();
    let servers = ring(&mut net, 3, true);
    let clients = place(&mut net, &servers, &[("ann", 0), ("bob", 1)]);
    net.run_until(10_000, "registration", |n| n.all_registered(&clients));
    net.run_until(5000, "directory", |n| {
        n.directory_converged(&servers, &["ann", "bob"])
    });
    let u1 = net.send(clients[0], "nobody", "hello?");
    net.run_until(2000, "unknown answer", |n| {
        n.events.iter().any(|(c, e)| {
            *c == clients[0]
                && *e
                    == Event::UnknownUser {
                        uuid: u1,
                        to: "nobody".into(),
                    }
        })
    });
    net.c(clients[1]).quit();
    net.flush(clients[1]);
    net.run_for(500);
    let u2 = net.send(clients[0], "bob", "are you there?");
    net.run_until(2000, "offline answer", |n| {
        n.events.iter().any(|(c, e)| {
            *c == clients[0]
                && *e
                    == Event::UserOffline {
                        uuid: u2,
                        to: "bob".into(),
                    }
        })
    });
    assert_eq!(net.c(clients[0]).outbox_len(), 0);
}

#[test]
fn test_sim_failover_loses_nothing() {
    let mut net = Net::new();
    let servers = ring(&mut net, 3, true);
    let names = ["ann", "bob", "cy", "dee"];
    let clients = place(
        &mut net,
        &servers,
        &[("ann", 0), ("bob", 1), ("cy", 2), ("dee", 0)],
    );
    net.run_until(10_000, "registration", |n| n.all_registered(&clients));
    net.run_until(5000, "directory", |n| {
        n.directory_converged(&servers, &names)
    });
    // ann streams to bob; s1 (ann's and dee's server) dies in the middle.
    for k in 0..10 {
        net.send(clients[0], "bob", &format!("a{k}"));
        net.run_for(3);
    }
    net.kill(servers[0]);
    for k in 10..20 {
        net.send(clients[0], "bob", &format!("a{k}"));
        net.run_for(50);
    }
    net.run_until(20_000, "ann failed over and flushed", |n| {
        n.server_of(clients[0]).is_some() && n.c(clients[0]).outbox_len() == 0
    });
    let s = net.server_of(clients[0]).unwrap();
    assert_ne!(s, "s1:7000");
    for k in 0..20 {
        assert_eq!(net.count(clients[1], "ann", &format!("a{k}")), 1, "a{k}");
    }
    assert!(net
        .events
        .iter()
        .any(|(c, e)| *c == clients[0] && matches!(e, Event::ServerLost { .. })));
    // Survivors keep messaging each other, failed-over users included.
    let live = [servers[1], servers[2]];
    net.run_until(10_000, "directory after failover", |n| {
        n.directory_converged(&live, &names)
    });
    all_to_all(&mut net, &clients, &names, "after");
    for &s in &live {
        assert_eq!(
            net.s(s).servers(),
            vec![if s == servers[1] {
                "s3:7000"
            } else {
                "s2:7000"
            }]
        );
    }
}

#[test]
fn test_sim_client_picks_lowest_rtt() {
    let mut net = Net::new();
    let servers = ring(&mut net, 3, true);
    let c = net.client("ann", &["s1:7000"], 5);
    net.set_delay(c, servers[0], 40);
    net.set_delay(c, servers[1], 5);
    net.set_delay(c, servers[2], 20);
    net.run_until(10_000, "registration", |n| n.server_of(c).is_some());
    assert_eq!(net.server_of(c).as_deref(), Some("s2:7000"));
    let r = net.c(c).ranking().to_vec();
    let order: Vec<&str> = r.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(order, ["s2:7000", "s3:7000", "s1:7000"]);
    // Round trip = twice the one-way delay.
    assert_eq!(r[0].1, Some(Duration::from_millis(10)));
    assert_eq!(r[2].1, Some(Duration::from_millis(80)));
    // Failover goes to the next best.
    net.kill(servers[1]);
    net.run_until(10_000, "failover", |n| {
        n.server_of(c).is_some_and(|s| s != "s2:7000")
    });
    assert_eq!(net.server_of(c).as_deref(), Some("s3:7000"));
}

#[test]
fn test_sim_users_limit_refuses_and_client_moves_on() {
    let mut net = Net::new();
    let mut servers = Vec::new();
    for i in 1..=2 {
        let mut cfg = ServerConfig::new(format!("s{i}:7000"));
        cfg.join = vec![format!("s{}:7000", 3 - i)];
        // s1 takes one user; a second one must be refused there.
        cfg.max_users = if i == 1 { 1 } else { 100 };
        servers.push(net.server(cfg));
    }
    // Both users are closest to s1.
    let clients: Vec<usize> = ["ann", "bob"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let c = net.client(name, &["s1:7000"], 40 + k as u64);
            net.set_delay(c, servers[0], 1);
            net.set_delay(c, servers[1], 20);
            c
        })
        .collect();
    net.run_until(10_000, "ann registered", |n| {
        n.server_of(clients[0]).is_some()
    });
    assert_eq!(net.server_of(clients[0]).as_deref(), Some("s1:7000"));
    net.run_until(10_000, "bob registered", |n| {
        n.server_of(clients[1]).is_some()
    });
    assert_eq!(
        net.server_of(clients[1]).as_deref(),
        Some("s2:7000"),
        "s1 is full: bob goes to his next best server"
    );
    let refusal = net.events.iter().find_map(|(c, e)| match e {
        Event::Refused { server, reason } if *c == clients[1] => Some((server.clone(), reason)),
        _ => None,
    });
    let (server, reason) = refusal.expect("bob was told why s1 refused him");
    assert_eq!(server, "s1:7000");
    assert!(reason.contains("limit of 1 users"), "reason: {reason}");
    let c = net.s(servers[0]).counters().clone();
    assert!(c.users_limit >= 1 && c.registrations_refused >= c.users_limit);
    assert_eq!(net.s(servers[0]).local_users(), 1);
    let st = net.s(servers[0]).status_json(Instant::ZERO);
    assert_eq!(st["max_users"], 1);
    assert_eq!(st["users_here"], 1);
    assert_eq!(st["counters"]["users_limit"], c.users_limit);
    // The refused user still gets through the mesh, both ways.
    net.run_until(5000, "directory", |n| {
        n.directory_converged(&servers, &["ann", "bob"])
    });
    all_to_all(&mut net, &clients, &["ann", "bob"], "full");
}

#[test]
fn test_sim_silent_server_dropped_after_dead_after() {
    let mut net = Net::new();
    let servers = ring(&mut net, 3, true);
    let names = ["ann", "bob", "cy", "dee"];
    // cy runs on s3's host and vanishes with it; dee uses s3 from elsewhere.
    let clients = place(
        &mut net,
        &servers,
        &[("ann", 0), ("bob", 1), ("cy", 2), ("dee", 2)],
    );
    net.run_until(10_000, "registration", |n| n.all_registered(&clients));
    assert_eq!(net.server_of(clients[2]).as_deref(), Some("s3:7000"));
    assert_eq!(net.server_of(clients[3]).as_deref(), Some("s3:7000"));
    net.run_until(5000, "directory", |n| {
        n.directory_converged(&servers, &names)
    });
    let cfg = ServerConfig::new("x");
    let (dead_after, tick) = (cfg.dead_after, cfg.gossip_interval);
    let live = [servers[0], servers[1]];
    let t0 = net.now;
    // s3's host goes dark: no FIN, no RST, nothing; only silence tells.
    net.blackhole(&[servers[2], clients[2]]);
    // It was last heard at most one gossip interval before the cut, so until dead_after minus
    // that has passed, the others must still list it (silence alone, not a close).
    let early = (dead_after - tick).as_millis() as u64 - 100;
    net.run_for(early);
    for &s in &live {
        assert!(
            net.s(s).servers().contains(&"s3:7000".to_string()),
            "s{} dropped s3 before dead_after",
            s + 1
        );
    }
    net.run_until(
        (tick * 2).as_millis() as u64 + 200,
        "s3 dropped everywhere",
        |n| {
            live.iter()
                .all(|&s| !n.s(s).servers().contains(&"s3:7000".to_string()))
        },
    );
    let took = net.now.saturating_since(t0);
    eprintln!("silent s3 dropped by both survivors {took:?} after it went dark");
    assert!(
        took >= dead_after - tick && took <= dead_after + tick * 2,
        "dropped after {took:?}"
    );
    for &s in &live {
        assert_eq!(net.s(s).servers().len(), 1, "only the other survivor");
        assert!(net.s(s).counters().servers_dropped >= 1);
        let cy = net.s(s).directory()["cy"].clone();
        assert_eq!(cy.home, "s3:7000");
        assert!(!cy.online, "cy went dark with s3: offline at s{}", s + 1);
    }
    // Its user outside the cut failed over; the one inside is answered as offline.
    net.run_until(10_000, "dee failed over", |n| {
        n.server_of(clients[3])
            .is_some_and(|s| s == "s1:7000" || s == "s2:7000")
    });
    net.run_until(5000, "directory after the cut", |n| {
        n.directory_converged(&live, &["ann", "bob", "dee"])
    });
    let u = net.send(clients[0], "cy", "are you there?");
    net.run_until(3000, "offline answer", |n| {
        n.events.iter().any(|(c, e)| {
            *c == clients[0]
                && *e
                    == Event::UserOffline {
                        uuid: u,
                        to: "cy".into(),
                    }
        })
    });
    let reachable = [clients[0], clients[1], clients[3]];
    all_to_all(&mut net, &reachable, &["ann", "bob", "dee"], "dark");
    // The survivors keep redialing s3 (it is in s1's --join) without bringing it back.
    net.run_for(10_000);
    for &s in &live {
        assert!(!net.s(s).servers().contains(&"s3:7000".to_string()));
    }
}

#[test]
fn test_sim_pinned_client_stays_on_its_server() {
    let mut net = Net::new();
    let servers = ring(&mut net, 3, true);
    let cfg = {
        let mut c = ClientConfig::new("ann", vec!["s1:7000".into()]);
        c.pin = true;
        c
    };
    let c = net.add(Node::Client(Box::new(Client::new(cfg, Rng::new(9)))));
    net.set_delay(c, servers[0], 40);
    net.set_delay(c, servers[1], 5);
    net.set_delay(c, servers[2], 5);
    net.run_until(10_000, "registration", |n| n.server_of(c).is_some());
    assert_eq!(
        net.server_of(c).as_deref(),
        Some("s1:7000"),
        "slower, but pinned"
    );
    assert_eq!(
        net.c(c).ranking().len(),
        1,
        "only the pinned server is measured"
    );
    // The periodic server list does not widen the choice either.
    net.run_for(12_000);
    assert_eq!(net.c(c).ranking().len(), 1);
    assert_eq!(net.server_of(c).as_deref(), Some("s1:7000"));
}
