//! The session protocol over the kernel's TCP on 127.0.0.1 (ephemeral ports): our session code
//! against real sockets, both ends in this process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;
use tunstack::session::conn::{ClientConfig, ServerConfig, Timing};
use tunstack::session::run::{self, RunError};
use tunstack::session::{wire, Mode, SessionError};

fn timing() -> Timing {
    Timing {
        rto: Duration::from_millis(300),
        max_rto: Duration::from_secs(2),
        keepalive: Duration::from_millis(300),
        dead_after: Duration::from_millis(1500),
    }
}

fn server_cfg() -> ServerConfig {
    ServerConfig {
        max_size: 1024,
        window: 64,
        min_size: 16,
        modes: vec![Mode::Step, Mode::Burst],
        isn: 0xffff_ff00,
        session_id: 42,
        timing: timing(),
    }
}

fn client_cfg(mode: Mode) -> ClientConfig {
    ClientConfig {
        mode,
        max_size: 512,
        window: 64,
        client_id: format!("test-{mode}"),
        isn: 0xffff_fff0, // wraps within the first messages
        timing: timing(),
    }
}

/// Runs one server session in a thread; returns the port and a handle to what it received.
type Received = std::thread::JoinHandle<Result<Vec<Vec<u8>>, RunError>>;

fn spawn_server() -> (u16, Received) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        run::serve_connection(s, server_cfg(), move |_, m| {
            g.lock().unwrap().push(m.to_vec())
        })?;
        let v = got.lock().unwrap().clone();
        Ok(v)
    });
    (port, h)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn test_10000_messages_each_mode_in_order() {
    let n = 10_000;
    for mode in [Mode::Step, Mode::Burst] {
        let (port, server) = spawn_server();
        let input: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("message {i}").into_bytes())
            .collect();
        let rep = run::run_client(connect(port), client_cfg(mode), input).unwrap();
        let got = server.join().unwrap().unwrap();
        assert_eq!(got.len(), n);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m, format!("message {i}").as_bytes());
        }
        assert_eq!(rep.stats.sent, n as u64);
        assert_eq!(rep.stats.acked, n as u64);
        println!("kernel TCP loopback: {}", rep.summary());
    }
}

#[test]
fn test_refusal_is_reported_to_the_client() {
    let (port, server) = spawn_server();
    let mut c = client_cfg(Mode::Step);
    c.max_size = 8;
    let e = run::run_client(connect(port), c, Vec::<Vec<u8>>::new()).unwrap_err();
    assert!(
        matches!(&e, RunError::Refused(r) if r.contains("too small")),
        "{e}"
    );
    assert!(matches!(server.join().unwrap(), Err(RunError::Refused(_))));
}

#[test]
fn test_keepalive_detects_a_dead_peer() {
    // A server that completes the handshake and then never answers again (but keeps the
    // connection open), like a hung process.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _silent = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let syn = match wire::parse(&buf[..n], 1024) {
            wire::Parsed::Frame(f, _) => f,
            other => panic!("{other:?}"),
        };
        let sa = wire::SynAckRepr {
            status: 0,
            session_id: 7,
            max_size: 512,
            mode: Mode::Burst,
            window: 8,
        };
        let _ = syn;
        s.write_all(&wire::frame_bytes(wire::FrameType::SynAck, 1, &sa.emit()))
            .unwrap();
        // Swallow everything, answer nothing.
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    // Input that never ends: the client is idle, so only keep-alives are in the air.
    let idle = std::iter::from_fn(|| {
        std::thread::sleep(Duration::from_secs(3600));
        None
    });
    let t = std::time::Instant::now();
    let e = run::run_client(connect(port), client_cfg(Mode::Burst), idle).unwrap_err();
    assert!(
        matches!(e, RunError::Session(SessionError::DeadPeer(_))),
        "{e}"
    );
    assert!(e.to_string().contains("peer is dead"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// Forwards a TCP connection, holding every chunk for `delay` (each direction), to give the
/// loopback a round-trip time like a real path.
fn delaying_proxy(upstream: u16, delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (a, _) = l.accept().unwrap();
        let b = connect(upstream);
        a.set_nodelay(true).unwrap();
        for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
            let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0
                        || tx
                            .send((std::time::Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                    {
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                while let Ok((at, data)) = rx.recv() {
                    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
                    if to.write_all(&data).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn test_burst_is_faster_than_step_over_a_delayed_path() {
    let n = 300;
    let mut rates = vec![];
    for mode in [Mode::Step, Mode::Burst] {
        let (port, server) = spawn_server();
        let proxy = delaying_proxy(port, Duration::from_millis(5));
        let input: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("message {i}").into_bytes())
            .collect();
        let rep = run::run_client(connect(proxy), client_cfg(mode), input).unwrap();
        assert_eq!(server.join().unwrap().unwrap().len(), n);
        println!("kernel TCP via 5 ms-each-way proxy: {}", rep.summary());
        rates.push(rep.messages_per_sec());
    }
    println!(
        "burst/step ratio over the delayed path: {:.1}",
        rates[1] / rates[0]
    );
    assert!(rates[1] > 3.0 * rates[0], "{rates:?}");
}

/// One server, five clients at once (burst and step mixed), each with its own client id: every
/// session is served in parallel and every message reaches the right session, in order.
#[test]
fn test_five_concurrent_clients_all_received() {
    const CLIENTS: usize = 5;
    let n = 2000;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got: Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>> = Arc::default();
    // Sessions running at the same moment, and the most there ever were.
    let active = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let server = {
        let (got, active, most) = (got.clone(), active.clone(), most.clone());
        std::thread::spawn(move || {
            let mut sessions = Vec::new();
            for k in 0..CLIENTS {
                let (s, _) = l.accept().unwrap();
                s.set_nodelay(true).unwrap();
                let mut cfg = server_cfg();
                cfg.session_id = 100 + k as u32;
                let (got, active, most) = (got.clone(), active.clone(), most.clone());
                sessions.push(std::thread::spawn(move || {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let r = run::serve_connection(s, cfg, |neg, m| {
                        got.lock()
                            .unwrap()
                            .entry(neg.client_id.clone())
                            .or_default()
                            .push(m.to_vec())
                    });
                    active.fetch_sub(1, Ordering::SeqCst);
                    r
                }));
            }
            sessions
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mode = if k % 2 == 0 { Mode::Burst } else { Mode::Step };
                let mut cfg = client_cfg(mode);
                cfg.client_id = format!("client-{k}");
                let input: Vec<Vec<u8>> = (0..n)
                    .map(|i| format!("client {k} message {i}").into_bytes())
                    .collect();
                start.wait();
                run::run_client(connect(port), cfg, input)
            })
        })
        .collect();
    for (k, c) in clients.into_iter().enumerate() {
        let rep = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("client {k}: {e}"));
        assert_eq!(rep.stats.acked, n as u64, "client {k}: {}", rep.summary());
        println!("client {k}: {}", rep.summary());
    }
    let reports = server.join().unwrap();
    let mut ids: Vec<u32> = Vec::new();
    for r in reports {
        let r = r.expect("a server session failed");
        assert_eq!(r.stats.delivered, n as u64, "{:?}", r.negotiated);
        ids.push(r.negotiated.session_id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS, "sessions shared an id");
    let got = got.lock().unwrap();
    assert_eq!(got.len(), CLIENTS, "clients seen: {:?}", got.keys());
    for k in 0..CLIENTS {
        let msgs = &got[&format!("client-{k}")];
        assert_eq!(msgs.len(), n, "client {k}");
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(
                m,
                format!("client {k} message {i}").as_bytes(),
                "client {k}"
            );
        }
    }
    let most = most.load(Ordering::SeqCst);
    println!("{CLIENTS} clients x {n} messages; at most {most} sessions at once");
    assert!(
        most >= 2,
        "the sessions never overlapped: the server served them one by one"
    );
}
