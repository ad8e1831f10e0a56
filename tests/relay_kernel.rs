//! The relay mesh over kernel TCP on 127.0.0.1 (ephemeral ports, no root): three servers joined
//! in a cycle, four clients, every user messages every other exactly once; then a server is
//! stopped and its clients fail over without losing a message. A full server (`max_users`)
//! tells a user why it refused him, and he registers with another.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use tunstack::rand::Rng;
use tunstack::relay::client::{Client, ClientConfig, Event};
use tunstack::relay::run::{serve, start_client, KernelTransport, Running};
use tunstack::relay::server::{Server, ServerConfig};

fn kt() -> KernelTransport {
    KernelTransport {
        listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

type Srv = Running<Server, KernelTransport>;
type Cli = Running<Client, KernelTransport>;

/// Three servers on free ports; each joins the next, and the last the first.
fn mesh() -> Vec<Srv> {
    // Reserve ports first so each server can be told its own address before it starts.
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    (0..3)
        .map(|i| {
            let mut cfg = ServerConfig::new(format!("127.0.0.1:{}", ports[i]));
            cfg.join = vec![format!("127.0.0.1:{}", ports[(i + 1) % 3])];
            serve(kt(), ports[i], Server::new(cfg)).unwrap()
        })
        .collect()
}

struct User {
    name: String,
    run: Cli,
    events: Receiver<Event>,
    got: HashMap<(String, String), usize>,
    delivered: Vec<tunstack::relay::wire::Uuid>,
    offline: Vec<tunstack::relay::wire::Uuid>,
}

impl User {
    fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                Event::Message { from, body, .. } => {
                    *self
                        .got
                        .entry((from, String::from_utf8_lossy(&body).into_owned()))
                        .or_default() += 1
                }
                Event::Delivered { uuid, .. } => self.delivered.push(uuid),
                Event::UserOffline { uuid, .. } => self.offline.push(uuid),
                _ => {}
            }
        }
    }
    fn server(&self) -> Option<String> {
        self.run.with(|c, _| c.server().map(str::to_string))
    }
    fn outbox(&self) -> usize {
        self.run.with(|c, _| c.outbox_len())
    }
}

fn user(name: &str, seed: &str, k: u64) -> User {
    let (tx, rx) = channel();
    let tx = std::sync::Mutex::new(tx);
    let run = start_client(
        kt(),
        Client::new(ClientConfig::new(name, vec![seed.to_string()]), Rng::new(k)),
        move |e| {
            let _ = tx.lock().unwrap().send(e);
        },
    );
    User {
        name: name.into(),
        run,
        events: rx,
        got: HashMap::new(),
        delivered: Vec::new(),
        offline: Vec::new(),
    }
}

#[track_caller]
fn wait(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn directory_has(s: &Srv, names: &[&str]) -> bool {
    s.with(|s, _| {
        names
            .iter()
            .all(|n| s.directory().get(*n).is_some_and(|e| e.online))
    })
}

fn all_to_all(users: &mut [User], tag: &str) {
    let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    for u in users.iter() {
        for n in &names {
            if *n != u.name {
                let body = format!("{tag} {}->{n}", u.name);
                u.run
                    .with(|c, now| c.send(now, n, body.as_bytes()))
                    .unwrap();
            }
        }
    }
    wait(30, "every message acknowledged", || {
        users.iter().all(|u| u.outbox() == 0)
    });
    std::thread::sleep(Duration::from_millis(300));
    for u in users.iter_mut() {
        u.drain();
    }
    for u in users.iter() {
        for n in &names {
            if *n != u.name {
                let body = format!("{tag} {n}->{}", u.name);
                assert_eq!(
                    u.got.get(&(n.clone(), body.clone())).copied(),
                    Some(1),
                    "'{body}' must arrive exactly once"
                );
            }
        }
    }
}

#[test]
fn test_kernel_mesh_all_to_all_and_failover() {
    let servers = mesh();
    let names = ["ann", "bob", "cy", "dee"];
    wait(15, "the mesh to form", || {
        servers
            .iter()
            .all(|s| s.with(|s, _| s.servers().len() == 2))
    });
    // Spread the users: each seeds from a different server (all RTTs are alike on loopback,
    // so where they land does not matter to the test).
    let seeds: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    let mut users: Vec<User> = names
        .iter()
        .enumerate()
        .map(|(i, n)| user(n, &seeds[i % 3], i as u64 + 1))
        .collect();
    wait(20, "registration", || {
        users.iter().all(|u| u.server().is_some())
    });
    wait(10, "directory", || {
        servers.iter().all(|s| directory_has(s, &names))
    });
    all_to_all(&mut users, "one");

    // Stop the server of ann while she streams to bob.
    let victim = users[0].server().unwrap();
    let vi = seeds.iter().position(|s| *s == victim).unwrap();
    let mut stream = Vec::new();
    for k in 0..10 {
        let body = format!("stream {k}");
        stream.push(
            users[0]
                .run
                .with(|c, now| c.send(now, "bob", body.as_bytes()))
                .unwrap(),
        );
        if k == 4 {
            servers[vi].stop();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait(30, "failover", || {
        users
            .iter()
            .all(|u| u.server().is_some_and(|s| s != victim))
    });
    let live: Vec<&Srv> = (0..3).filter(|i| *i != vi).map(|i| &servers[i]).collect();
    wait(15, "directory after failover", || {
        live.iter().all(|s| directory_has(s, &names))
    });
    wait(30, "the stream acknowledged", || users[0].outbox() == 0);
    std::thread::sleep(Duration::from_millis(300));
    users[0].drain();
    users[1].drain();
    for (k, uuid) in stream.iter().enumerate() {
        let key = ("ann".to_string(), format!("stream {k}"));
        let got = users[1].got.get(&key).copied().unwrap_or(0);
        // Nothing accepted is lost: each message was delivered exactly once, or (when bob was
        // on the stopped server too and had not re-registered yet) ann was told he is offline.
        if users[0].delivered.contains(uuid) {
            assert_eq!(got, 1, "stream {k}");
        } else {
            assert!(users[0].offline.contains(uuid), "stream {k} got no answer");
            assert!(got <= 1, "stream {k}");
        }
    }
    all_to_all(&mut users, "two");
    for s in &live {
        assert_eq!(s.with(|s, _| s.servers().len()), 1);
    }
    for u in &users {
        u.run.stop();
    }
    for s in &servers {
        s.stop();
    }
}

#[test]
fn test_kernel_users_limit_refused_then_next_server() {
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let p1 = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let mut cfg = ServerConfig::new(format!("127.0.0.1:{p1}"));
    cfg.max_users = 1;
    let s1 = serve(kt(), p1, Server::new(cfg)).unwrap();
    let seed = format!("127.0.0.1:{p1}");
    let ann = user("ann", &seed, 1);
    wait(10, "ann registered", || ann.server().is_some());
    // s1 is the only server and it is full: bob hears why, and keeps trying.
    let bob = user("bob", &seed, 2);
    let end = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        assert!(Instant::now() < end, "bob was never told he was refused");
        match bob.events.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Refused { server, reason }) => {
                assert_eq!(server, seed);
                break reason;
            }
            _ => continue,
        }
    };
    assert!(reason.contains("limit of 1 users"), "reason: {reason}");
    assert!(s1.with(|s, _| s.counters().users_limit) >= 1);
    // A second server joins; bob finds it on his next round and registers there.
    let p2 = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let mut cfg = ServerConfig::new(format!("127.0.0.1:{p2}"));
    cfg.join = vec![seed.clone()];
    let s2 = serve(kt(), p2, Server::new(cfg)).unwrap();
    wait(20, "bob registered with the second server", || {
        bob.server().as_deref() == Some(&format!("127.0.0.1:{p2}")[..])
    });
    wait(10, "directory", || {
        directory_has(&s1, &["ann", "bob"]) && directory_has(&s2, &["ann", "bob"])
    });
    let mut users = vec![ann, bob];
    all_to_all(&mut users, "limit");
    assert_eq!(s1.with(|s, _| s.local_users()), 1);
    for u in &users {
        u.run.stop();
    }
    s1.stop();
    s2.stop();
}
