//! Classic TCP services a node runs with `--serve KIND:PORT`: echo (RFC 862), discard (RFC 863),
//! chargen (RFC 864), daytime (RFC 867), hold, greet and hello. One [`App`] serves every listener
//! and connection inside the event loop, driven by the TCP layer's readiness list, so thousands of
//! idle connections cost nothing per poll.

use crate::node::App;
use crate::stack::Stack;
use crate::tcp::{ListenerHandle, SocketHandle, TcpError, TcpState};
use crate::time::Instant;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Sends back every byte (RFC 862).
    Echo,
    /// Reads and throws away (RFC 863).
    Discard,
    /// Sends the rotating character pattern until the peer closes (RFC 864).
    Chargen,
    /// Sends one line with the date and time, then closes (RFC 867).
    Daytime,
    /// Accepts and never reads: the receive window fills and stays shut.
    Hold,
    /// Answers each line with `Server received: <line>`.
    Greet,
    /// Answers a `hello` line with `world`.
    Hello,
    /// A minimal HTTP/1.0 responder: `GET /bytes/N` returns N bytes of a fixed pattern (for
    /// downloads checked by hash), any other GET a short text page. One request per connection.
    Http,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 8] = [
        ServiceKind::Echo,
        ServiceKind::Discard,
        ServiceKind::Chargen,
        ServiceKind::Daytime,
        ServiceKind::Hold,
        ServiceKind::Greet,
        ServiceKind::Hello,
        ServiceKind::Http,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Echo => "echo",
            ServiceKind::Discard => "discard",
            ServiceKind::Chargen => "chargen",
            ServiceKind::Daytime => "daytime",
            ServiceKind::Hold => "hold",
            ServiceKind::Greet => "greet",
            ServiceKind::Hello => "hello",
            ServiceKind::Http => "http",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `KIND:PORT`, as given to `--serve`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub kind: ServiceKind,
    pub port: u16,
}

impl FromStr for ServiceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<ServiceSpec, String> {
        let names: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        let (k, p) = s.split_once(':').ok_or_else(|| {
            format!(
                "'{s}': expected KIND:PORT, e.g. echo:7 (kinds: {})",
                names.join(", ")
            )
        })?;
        let kind = ServiceKind::ALL
            .iter()
            .copied()
            .find(|x| x.name() == k)
            .ok_or_else(|| format!("unknown service '{k}' (kinds: {})", names.join(", ")))?;
        let port: u16 = p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{p}' is not a port number (1-65535)"))?;
        Ok(ServiceSpec { kind, port })
    }
}

/// Bytes a connection may have waiting to be sent before the service stops reading from it:
/// back-pressure reaches the peer through our receive window.
const OUT_LIMIT: usize = 64 * 1024;
/// The longest line greet and hello buffer before answering what they have.
const LINE_LIMIT: usize = 4096;

struct Conn {
    kind: ServiceKind,
    out: VecDeque<u8>,
    line: Vec<u8>,
    chargen_pos: usize,
    /// Close once `out` drains.
    closing: bool,
    /// HTTP body bytes still to generate (`GET /bytes/N`).
    http_left: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServiceCounters {
    pub accepted: u64,
    pub closed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Formats the wall-clock time for daytime; injected so the service itself reads no clock.
pub type WallClock = fn() -> String;

pub struct Services {
    listeners: Vec<(ListenerHandle, ServiceSpec)>,
    conns: HashMap<SocketHandle, Conn>,
    /// Connections with output waiting (chargen always): visited every poll until drained.
    pending: HashSet<SocketHandle>,
    ready: Vec<SocketHandle>,
    scratch: Vec<u8>,
    wall_clock: WallClock,
    pub counters: ServiceCounters,
}

impl Services {
    /// Opens a listener per spec.
    pub fn new(
        stack: &mut Stack,
        specs: &[ServiceSpec],
        wall_clock: WallClock,
    ) -> Result<Services, String> {
        let mut listeners = Vec::new();
        for s in specs {
            let l = stack
                .tcp
                .listen(s.port)
                .map_err(|e| format!("cannot serve {} on port {}: {e}", s.kind, s.port))?;
            listeners.push((l, *s));
        }
        Ok(Services {
            listeners,
            conns: HashMap::new(),
            pending: HashSet::new(),
            ready: Vec::new(),
            scratch: vec![0u8; 64 * 1024],
            wall_clock,
            counters: ServiceCounters::default(),
        })
    }

    pub fn specs(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.listeners.iter().map(|(_, s)| s)
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn accept_all(&mut self, stack: &mut Stack) {
        for (l, spec) in &self.listeners {
            while let Some(h) = stack.tcp.accept(*l) {
                self.counters.accepted += 1;
                let mut c = Conn {
                    kind: spec.kind,
                    out: VecDeque::new(),
                    line: Vec::new(),
                    chargen_pos: 0,
                    closing: false,
                    http_left: 0,
                };
                if spec.kind == ServiceKind::Daytime {
                    c.out.extend((self.wall_clock)().as_bytes());
                    c.out.extend(b"\r\n");
                    c.closing = true;
                }
                self.conns.insert(h, c);
                self.pending.insert(h);
            }
        }
    }

    /// Serves one connection as far as it can go now. Returns false once it is finished.
    fn serve(&mut self, stack: &mut Stack, h: SocketHandle) -> bool {
        let Some(c) = self.conns.get_mut(&h) else {
            return false;
        };
        let tcp = &mut stack.tcp;
        let state = tcp.state(h);
        if state.is_none() || matches!(state, Some(TcpState::Closed)) || tcp.error(h).is_some() {
            tcp.close(h);
            self.counters.closed += 1;
            self.conns.remove(&h);
            return false;
        }
        // Read, unless the service holds or its output is backed up.
        let mut peer_done = false;
        if c.kind != ServiceKind::Hold {
            while c.out.len() < OUT_LIMIT {
                let room = (OUT_LIMIT - c.out.len()).min(self.scratch.len());
                // Ok(0) is the peer's FIN; WouldBlock means nothing more for now.
                let n = match tcp.recv(h, &mut self.scratch[..room]) {
                    Ok(0) => {
                        peer_done = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(TcpError::WouldBlock) => break,
                    Err(_) => {
                        peer_done = true;
                        break;
                    }
                };
                self.counters.bytes_in += n as u64;
                let data = &self.scratch[..n];
                match c.kind {
                    ServiceKind::Echo => c.out.extend(data),
                    ServiceKind::Greet | ServiceKind::Hello => answer_lines(c, data),
                    ServiceKind::Http if !c.closing => http_request(c, data),
                    _ => {}
                }
            }
        } else {
            peer_done = matches!(state, Some(TcpState::CloseWait));
        }
        if peer_done && c.kind != ServiceKind::Chargen && !c.line.is_empty() {
            let rest = std::mem::take(&mut c.line);
            answer_line(c, &rest);
        }
        if c.kind == ServiceKind::Chargen && !peer_done {
            fill_chargen(c, tcp.send_capacity(h));
        }
        if c.http_left > 0 {
            fill_http_body(c, tcp.send_capacity(h));
        }
        // Write what is waiting.
        while !c.out.is_empty() {
            let (a, b) = c.out.as_slices();
            let chunk = if a.is_empty() { b } else { a };
            let n = tcp.send(h, chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            self.counters.bytes_out += n as u64;
            c.out.drain(..n);
        }
        if (peer_done || c.closing) && c.out.is_empty() && c.http_left == 0 {
            tcp.close(h);
            self.counters.closed += 1;
            self.conns.remove(&h);
            return false;
        }
        !c.out.is_empty() || c.kind == ServiceKind::Chargen || c.http_left > 0
    }
}

/// Largest body `GET /bytes/N` serves.
const HTTP_MAX_BODY: u64 = 16 << 30;

/// Collects the request head; once the blank line arrives, queues the response.
fn http_request(c: &mut Conn, data: &[u8]) {
    c.line
        .extend_from_slice(&data[..data.len().min(LINE_LIMIT.saturating_sub(c.line.len()))]);
    let head_done =
        c.line.windows(4).any(|w| w == b"\r\n\r\n") || c.line.windows(2).any(|w| w == b"\n\n");
    if !head_done && c.line.len() < LINE_LIMIT {
        return;
    }
    let head = String::from_utf8_lossy(&c.line).into_owned();
    c.line.clear();
    c.closing = true;
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let respond = |c: &mut Conn, status: &str, body: &[u8]| {
        c.out.extend(
            format!(
                "HTTP/1.0 {status}\r\nServer: tunstack\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        c.out.extend(body);
    };
    if method != "GET" && method != "HEAD" {
        respond(c, "405 Method Not Allowed", b"only GET\n");
        return;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse::<u64>() {
            Ok(n) if n <= HTTP_MAX_BODY => {
                c.out.extend(
                    format!(
                        "HTTP/1.0 200 OK\r\nServer: tunstack\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
                if method == "GET" {
                    c.http_left = n;
                }
            }
            _ => respond(c, "400 Bad Request", b"use /bytes/N with N up to 16 GiB\n"),
        }
        return;
    }
    respond(
        c,
        "200 OK",
        b"hello from tunstack, a userspace TCP/IP stack\n",
    );
}

/// The body of `GET /bytes/N`: byte i is `i % 251`, so a client can check it without a copy.
fn fill_http_body(c: &mut Conn, capacity: usize) {
    static CYCLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let cycle = CYCLE.get_or_init(|| (0..251u32).map(|i| i as u8).collect());
    let mut want =
        (capacity.min(OUT_LIMIT).saturating_sub(c.out.len()) as u64).min(c.http_left) as usize;
    c.http_left -= want as u64;
    while want > 0 {
        let at = c.chargen_pos % cycle.len();
        let run = (cycle.len() - at).min(want);
        c.out.extend(&cycle[at..at + run]);
        c.chargen_pos = at + run;
        want -= run;
    }
}

fn answer_lines(c: &mut Conn, data: &[u8]) {
    for &b in data {
        if b == b'\n' {
            let line = std::mem::take(&mut c.line);
            answer_line(c, &line);
        } else if c.line.len() < LINE_LIMIT {
            c.line.push(b);
        } else {
            let line = std::mem::take(&mut c.line);
            answer_line(c, &line);
            c.line.push(b);
        }
    }
}

fn answer_line(c: &mut Conn, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match c.kind {
        ServiceKind::Greet => {
            c.out.extend(b"Server received: ");
            c.out.extend(line);
            c.out.extend(b"\n");
        }
        ServiceKind::Hello => {
            if line.trim_ascii().eq_ignore_ascii_case(b"hello") {
                c.out.extend(b"world\n");
            } else {
                c.out.extend(b"say hello\n");
            }
        }
        _ => {}
    }
}

/// One full cycle of RFC 864's pattern: 95 lines of 72 printable characters and CRLF, each
/// line starting one character further along the 95-character ASCII ring.
fn chargen_cycle() -> &'static [u8] {
    static CYCLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CYCLE.get_or_init(|| {
        let mut v = Vec::with_capacity(95 * 74);
        for line in 0..95 {
            v.extend((0..72).map(|col| b' ' + ((line + col) % 95) as u8));
            v.extend_from_slice(b"\r\n");
        }
        v
    })
}

/// Queues pattern bytes up to what the connection can take, copying whole runs of the
/// precomputed cycle (byte-at-a-time generation capped chargen at a few hundred Mbit/s).
fn fill_chargen(c: &mut Conn, capacity: usize) {
    let cycle = chargen_cycle();
    let mut want = capacity.min(OUT_LIMIT).saturating_sub(c.out.len());
    while want > 0 {
        let at = c.chargen_pos % cycle.len();
        let run = (cycle.len() - at).min(want);
        c.out.extend(&cycle[at..at + run]);
        c.chargen_pos = (at + run) % cycle.len();
        want -= run;
    }
}

impl App for Services {
    fn name(&self) -> &str {
        "services"
    }

    fn poll(&mut self, _now: Instant, stack: &mut Stack) {
        self.accept_all(stack);
        self.ready.clear();
        stack.tcp.take_ready(&mut self.ready);
        let mut visit = std::mem::take(&mut self.ready);
        visit.extend(self.pending.iter().copied());
        for h in visit.drain(..) {
            // A handle can be both ready and pending; serving it twice in a row is harmless but
            // wasted, so the second visit finds nothing new and returns quickly.
            if !self.conns.contains_key(&h) {
                continue;
            }
            if self.serve(stack, h) {
                self.pending.insert(h);
            } else {
                self.pending.remove(&h);
            }
        }
        self.ready = visit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_service_spec_parse() {
        assert_eq!(
            "echo:7".parse::<ServiceSpec>(),
            Ok(ServiceSpec {
                kind: ServiceKind::Echo,
                port: 7
            })
        );
        assert!("echo"
            .parse::<ServiceSpec>()
            .unwrap_err()
            .contains("KIND:PORT"));
        assert!("ftp:21"
            .parse::<ServiceSpec>()
            .unwrap_err()
            .contains("unknown service"));
        assert!("echo:0".parse::<ServiceSpec>().is_err());
        assert!("echo:70000".parse::<ServiceSpec>().is_err());
    }

    #[test]
    fn test_chargen_pattern() {
        let mut c = Conn {
            kind: ServiceKind::Chargen,
            out: VecDeque::new(),
            line: Vec::new(),
            chargen_pos: 0,
            closing: false,
            http_left: 0,
        };
        fill_chargen(&mut c, 148);
        let v: Vec<u8> = c.out.into_iter().collect();
        assert_eq!(&v[..3], b" !\"");
        assert_eq!(&v[72..74], b"\r\n");
        assert_eq!(&v[74..76], b"!\"");
        assert_eq!(v.len(), 148);
    }
}
