//! Drives a relay state machine over real byte streams: a thread per connection reads and feeds
//! the machine behind a mutex, a timer thread calls `handle_timeout`, and whatever the machine
//! outputs is carried out right away (writes, dials on their own thread, closes).
//!
//! The transport is a trait so the same runner works over kernel TCP (`std::net`, `--kernel`)
//! and over our own stack (`tunstack::api::tcp`, see [`stack_net`]).
//!
//! Writes happen under the machine's lock, which keeps frames of one connection in the order the
//! machine produced them. A peer that stops reading could hold the lock until the write timeout;
//! relay traffic is small next to socket buffers, so that is accepted.

use super::server::Server;
use super::{ConnId, Machine, Output};
use crate::node::clock::Clock;
use crate::time::Instant;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A connected byte stream the runner can share between a reader thread and writers.
pub trait Stream: Read + Write + Send + 'static {
    fn try_clone_stream(&self) -> io::Result<Self>
    where
        Self: Sized;
    /// Ends the connection both ways; a blocked reader sees the end or its timeout.
    fn shutdown_both(&self);
    /// Readers wake at least this often to notice a stop.
    fn set_timeouts(&mut self, read: Duration, write: Duration);
}

/// Opening streams: listening and dialing.
pub trait Transport: Send + Sync + 'static {
    type Stream: Stream;
    type Listener: Send + 'static;
    fn listen(&self, port: u16) -> io::Result<Self::Listener>;
    fn local_port(&self, l: &Self::Listener) -> u16;
    /// Waits at most `timeout` for one connection; `Ok(None)` when none came.
    fn accept(&self, l: &Self::Listener, timeout: Duration) -> io::Result<Option<Self::Stream>>;
    fn connect(&self, addr: &str, timeout: Duration) -> io::Result<Self::Stream>;
}

/// Kernel TCP through `std::net`.
pub struct KernelTransport {
    /// Address to listen on, e.g. 0.0.0.0 or 127.0.0.1.
    pub listen_ip: std::net::IpAddr,
}

impl Stream for std::net::TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn set_timeouts(&mut self, read: Duration, write: Duration) {
        let _ = self.set_read_timeout(Some(read));
        let _ = self.set_write_timeout(Some(write));
    }
}

impl Transport for KernelTransport {
    type Stream = std::net::TcpStream;
    type Listener = std::net::TcpListener;

    fn listen(&self, port: u16) -> io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind((self.listen_ip, port))?;
        // Non-blocking so the accept loop can notice a stop.
        l.set_nonblocking(true)?;
        Ok(l)
    }

    fn local_port(&self, l: &std::net::TcpListener) -> u16 {
        l.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn accept(
        &self,
        l: &std::net::TcpListener,
        timeout: Duration,
    ) -> io::Result<Option<std::net::TcpStream>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    let _ = s.set_nodelay(true);
                    return Ok(Some(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn connect(&self, addr: &str, timeout: Duration) -> io::Result<std::net::TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
        for a in addr.to_socket_addrs()? {
            match std::net::TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Our own TCP (`tunstack::api::tcp`) on a node of this process.
pub mod stack_net {
    use super::{Stream, Transport};
    use crate::api::tcp::{TcpListener, TcpStream};
    use crate::node::NodeHandle;
    use std::io;
    use std::net::SocketAddrV4;
    use std::time::Duration;

    pub struct StackTransport {
        pub node: NodeHandle,
    }

    impl Stream for TcpStream {
        fn try_clone_stream(&self) -> io::Result<Self> {
            Ok(self.clone())
        }
        fn shutdown_both(&self) {
            let _ = self.shutdown(std::net::Shutdown::Both);
        }
        fn set_timeouts(&mut self, read: Duration, write: Duration) {
            self.set_read_timeout(Some(read));
            self.set_write_timeout(Some(write));
        }
    }

    impl Transport for StackTransport {
        type Stream = TcpStream;
        type Listener = TcpListener;

        fn listen(&self, port: u16) -> io::Result<TcpListener> {
            TcpListener::bind(&self.node, port)
        }
        fn local_port(&self, l: &TcpListener) -> u16 {
            l.port()
        }
        fn accept(&self, l: &TcpListener, timeout: Duration) -> io::Result<Option<TcpStream>> {
            Ok(l.accept_timeout(Some(timeout))?.map(|(s, _)| s))
        }
        fn connect(&self, addr: &str, timeout: Duration) -> io::Result<TcpStream> {
            // Our stack has no resolver: servers are named by IPv4:port.
            let a: SocketAddrV4 = addr.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("'{addr}' is not IPv4:PORT (our stack does not resolve names)"),
                )
            })?;
            TcpStream::connect(&self.node, a, Some(timeout))
        }
    }
}

const READ_SLICE: Duration = Duration::from_millis(200);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The timer thread sleeps at most this long even when the machine has no deadline.
const TICK: Duration = Duration::from_millis(20);

type Hook<M> = Box<dyn Fn(&mut M) + Send + Sync>;

struct Inner<M: Machine, T: Transport> {
    machine: Mutex<M>,
    transport: T,
    conns: Mutex<HashMap<ConnId, T::Stream>>,
    clock: Clock,
    stopping: AtomicBool,
    next_inbound: AtomicU64,
    /// Called under the lock after every input (the client runner drains events with it).
    after: Option<Hook<M>>,
}

/// A running state machine. Clones share it.
pub struct Running<M: Machine, T: Transport> {
    inner: Arc<Inner<M, T>>,
    port: u16,
}

impl<M: Machine, T: Transport> Clone for Running<M, T> {
    fn clone(&self) -> Self {
        Running {
            inner: self.inner.clone(),
            port: self.port,
        }
    }
}

impl<M: Machine + 'static, T: Transport> Running<M, T> {
    fn new(machine: M, transport: T, after: Option<Hook<M>>) -> Running<M, T> {
        let r = Running {
            inner: Arc::new(Inner {
                machine: Mutex::new(machine),
                transport,
                conns: Mutex::new(HashMap::new()),
                clock: Clock::new(),
                stopping: AtomicBool::new(false),
                next_inbound: AtomicU64::new(1),
                after,
            }),
            port: 0,
        };
        let t = r.clone();
        std::thread::Builder::new()
            .name("relay-timer".into())
            .spawn(move || t.timer_loop())
            .expect("spawning the relay timer thread");
        r
    }

    fn lock(&self) -> MutexGuard<'_, M> {
        self.inner.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listening port (servers).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Runs `f` on the machine with the current time, then carries out what it asked for.
    pub fn with<R>(&self, f: impl FnOnce(&mut M, Instant) -> R) -> R {
        let mut m = self.lock();
        let now = self.inner.clock.now();
        let r = f(&mut m, now);
        self.pump(&mut m);
        r
    }

    /// Stops at once, like a crash: every connection is cut, the threads end.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let conns: Vec<T::Stream> = {
            let mut c = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
            c.drain().map(|(_, s)| s).collect()
        };
        for s in conns {
            s.shutdown_both();
        }
    }

    fn pump(&self, m: &mut MutexGuard<'_, M>) {
        if let Some(h) = &self.inner.after {
            h(m);
        }
        while let Some(o) = m.poll_output() {
            if self.is_stopping() {
                continue;
            }
            match o {
                Output::Send(c, bytes) => {
                    let mut conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(s) = conns.get_mut(&c) {
                        if let Err(e) = s.write_all(&bytes) {
                            log::debug!("relay: write to {c:?} failed: {e}");
                            // The reader sees the end and reports the close.
                            s.shutdown_both();
                        }
                    }
                }
                Output::Close(c) => {
                    let s = self
                        .inner
                        .conns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&c);
                    if let Some(s) = s {
                        s.shutdown_both();
                    }
                }
                Output::Connect(c, addr) => {
                    let r = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("relay-dial".into())
                        .spawn(move || r.dial(c, addr));
                    if spawned.is_err() {
                        m.handle_connect_failed(self.inner.clock.now(), c);
                    }
                }
            }
        }
        if let Some(h) = &self.inner.after {
            h(m);
        }
    }

    fn dial(&self, c: ConnId, addr: String) {
        match self.inner.transport.connect(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                if self.adopt(c, s).is_ok() {
                    self.with(|m, now| m.handle_connected(now, c));
                } else {
                    self.with(|m, now| m.handle_connect_failed(now, c));
                }
            }
            Err(e) => {
                log::debug!("relay: connect to {addr} failed: {e}");
                self.with(|m, now| m.handle_connect_failed(now, c));
            }
        }
    }

    /// Registers a stream and starts its reader thread.
    fn adopt(&self, c: ConnId, mut s: T::Stream) -> io::Result<()> {
        s.set_timeouts(READ_SLICE, WRITE_TIMEOUT);
        let reader = s.try_clone_stream()?;
        if self.is_stopping() {
            s.shutdown_both();
            return Err(io::Error::other("stopping"));
        }
        self.inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c, s);
        let r = self.clone();
        std::thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || r.read_loop(c, reader))?;
        Ok(())
    }

    fn read_loop(&self, c: ConnId, mut s: T::Stream) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let live = || {
                self.inner
                    .conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&c)
            };
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !live() || self.is_stopping() {
                        return;
                    }
                    self.with(|m, now| m.handle_bytes(now, c, &buf[..n]));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if !live() || self.is_stopping() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        // The peer closed or the connection broke; tell the machine unless we closed it.
        let ours = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c);
        if ours.is_some() && !self.is_stopping() {
            self.with(|m, now| m.handle_closed(now, c));
        }
    }

    fn timer_loop(&self) {
        while !self.is_stopping() {
            let wait = {
                let mut m = self.lock();
                let now = self.inner.clock.now();
                if m.poll_at().is_some_and(|t| t <= now) {
                    m.handle_timeout(now);
                    self.pump(&mut m);
                }
                m.poll_at()
                    .map(|t| t.saturating_since(self.inner.clock.now()))
                    .unwrap_or(TICK)
                    .min(TICK)
            };
            std::thread::sleep(wait.max(Duration::from_millis(1)));
        }
    }

    fn accept_loop(&self, l: T::Listener) {
        while !self.is_stopping() {
            match self.inner.transport.accept(&l, Duration::from_millis(100)) {
                Ok(Some(s)) => {
                    let c = ConnId(self.inner.next_inbound.fetch_add(1, Ordering::SeqCst));
                    // Known to the machine before any byte of it is read.
                    self.with(|m, now| m.handle_accepted(now, c));
                    if self.adopt(c, s).is_err() {
                        self.with(|m, now| m.handle_closed(now, c));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("relay: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// Starts a relay server listening on `port` (0: any free port, see [`Running::port`]).
pub fn serve<T: Transport>(
    transport: T,
    port: u16,
    server: Server,
) -> io::Result<Running<Server, T>> {
    let l = transport.listen(port)?;
    let mut r = Running::new(server, transport, None);
    r.port = r.inner.transport.local_port(&l);
    let a = r.clone();
    std::thread::Builder::new()
        .name("relay-accept".into())
        .spawn(move || a.accept_loop(l))?;
    Ok(r)
}

/// Starts a relay client; `on_event` gets each event as it happens (under the client's lock:
/// keep it quick, e.g. print or send on a channel).
pub fn start_client<T: Transport>(
    transport: T,
    client: super::client::Client,
    on_event: impl Fn(super::client::Event) + Send + Sync + 'static,
) -> Running<super::client::Client, T> {
    let hook: Hook<super::client::Client> = Box::new(move |c| {
        while let Some(e) = c.poll_event() {
            on_event(e);
        }
    });
    Running::new(client, transport, Some(hook))
}

/// The relay status as text, for `ctl ... relay`.
pub fn format_status(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "relay {}  connections {} (clients {})  users here {} (limit {})  dedup entries {}",
        v["addr"].as_str().unwrap_or("?"),
        v["connections"],
        v["clients"],
        v["users_here"],
        v["max_users"],
        v["dedup_entries"]
    );
    let _ = writeln!(s, "servers:");
    for sv in v["servers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<24} heard {} ms ago{}",
            sv["addr"].as_str().unwrap_or("?"),
            sv["heard_ms_ago"],
            if sv["connected"].as_bool() == Some(true) {
                ", connected"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(s, "users:");
    for u in v["users"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<16} {:<8} at {}{}",
            u["name"].as_str().unwrap_or("?"),
            if u["online"].as_bool() == Some(true) {
                "online"
            } else {
                "offline"
            },
            u["home"].as_str().unwrap_or("?"),
            if u["local"].as_bool() == Some(true) {
                " (here)"
            } else {
                ""
            }
        );
    }
    let c = &v["counters"];
    let _ = writeln!(
        s,
        "messages: in {}, delivered here {}, forwarded {}, flooded {}, duplicates dropped {}, hop limit {}",
        c["messages_in"], c["delivered_local"], c["forwarded_direct"], c["flooded"],
        c["duplicates_dropped"], c["hop_limit_dropped"]
    );
    let _ = writeln!(
        s,
        "answers: unknown user {}, offline {}, undeliverable answers {}; registrations {} (refused {}, at the user limit {})",
        c["unknown_user_answers"], c["offline_answers"], c["answers_undeliverable"],
        c["registrations"], c["registrations_refused"], c["users_limit"]
    );
    let _ = writeln!(
        s,
        "mesh: discovered {}, dropped {}, dials {} (failed {}); frames in {} out {}, bad {}",
        c["servers_discovered"],
        c["servers_dropped"],
        c["dials"],
        c["dial_failures"],
        c["frames_in"],
        c["frames_out"],
        c["bad_frames"]
    );
    s
}
