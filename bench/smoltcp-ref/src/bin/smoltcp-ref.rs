//! smoltcp-ref: the reference server for `make bench`.
//!
//! smoltcp 0.14 with `Medium::Ip` on a TUN device, serving the same TCP
//! services as `tunstack node --serve`: discard (9), chargen (19), echo (7).
//! ICMP echo requests are answered by the interface itself.
//!
//!   smoltcp-ref --tun tun0 --addr 198.18.0.2/24 [--gateway 198.18.0.1]
//!               [--listeners 16] [--buffer 1048576] [--max-sockets 20000]
//!
//! Every port keeps `--listeners` sockets in LISTEN. When one of them is taken
//! by a connection a fresh one is added, and sockets that reach CLOSED are
//! removed, so connection-rate and concurrency runs are not limited by a fixed
//! socket pool. Stops on SIGINT or SIGTERM.

use std::collections::HashMap;
use std::os::unix::io::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use smoltcp::iface::{Config, Interface, Route, SocketHandle, SocketSet};
use smoltcp::phy::{wait as phy_wait, Device, Medium, TunTapInterface};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr};

/// The TCP services, with their well-known ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Echo,
    Discard,
    Chargen,
}

impl Service {
    const ALL: [Service; 3] = [Service::Echo, Service::Discard, Service::Chargen];

    fn port(self) -> u16 {
        match self {
            Service::Echo => 7,
            Service::Discard => 9,
            Service::Chargen => 19,
        }
    }
}

struct Options {
    tun: String,
    addr: Ipv4Cidr,
    gateway: Option<Ipv4Address>,
    listeners: usize,
    buffer: usize,
    max_sockets: usize,
    ack_delay_ms: Option<u64>,
}

fn usage() -> String {
    "usage: smoltcp-ref --tun NAME --addr A.B.C.D/P [--gateway A.B.C.D] \
     [--listeners N] [--buffer BYTES] [--max-sockets N] [--ack-delay-ms MS]"
        .to_string()
}

fn parse_options() -> Result<Options, String> {
    let mut tun = None;
    let mut addr = None;
    let mut gateway = None;
    let mut listeners = 16;
    let mut buffer = 1 << 20;
    let mut max_sockets = 20_000;
    let mut ack_delay_ms = Some(10);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(usage());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let bad = |what: &str| format!("{flag}: not {what}: {value:?}");
        match flag.as_str() {
            "--tun" => tun = Some(value.clone()),
            "--addr" => {
                let (ip, len) = value.split_once('/').ok_or_else(|| bad("A.B.C.D/P"))?;
                let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad("A.B.C.D/P"))?;
                let len: u8 = len.parse().map_err(|_| bad("A.B.C.D/P"))?;
                if len > 32 {
                    return Err(bad("A.B.C.D/P"));
                }
                addr = Some(Ipv4Cidr::new(ip, len));
            }
            "--gateway" => {
                let ip: std::net::Ipv4Addr = value.parse().map_err(|_| bad("an IPv4 address"))?;
                gateway = Some(ip);
            }
            "--listeners" => listeners = value.parse().map_err(|_| bad("a count"))?,
            "--buffer" => buffer = value.parse().map_err(|_| bad("a byte count"))?,
            "--max-sockets" => max_sockets = value.parse().map_err(|_| bad("a count"))?,
            // 0 turns delayed ACKs off; smoltcp's default is 10 ms.
            "--ack-delay-ms" => {
                let ms: u64 = value.parse().map_err(|_| bad("milliseconds"))?;
                ack_delay_ms = (ms > 0).then_some(ms);
            }
            _ => return Err(format!("unknown option {flag}\n{}", usage())),
        }
    }
    let addr = addr.ok_or_else(|| format!("--addr is required\n{}", usage()))?;
    if listeners == 0 || buffer == 0 {
        return Err("--listeners and --buffer must be positive".to_string());
    }
    Ok(Options {
        tun: tun.unwrap_or_else(|| "tun0".to_string()),
        addr,
        gateway,
        listeners,
        buffer,
        max_sockets,
        ack_delay_ms,
    })
}

/// The RFC 864 line pattern: 72 printable characters and CRLF per line, each
/// line starting one character later. Holds one full period plus one line so
/// any offset can be served as a contiguous slice.
struct Chargen {
    pattern: Vec<u8>,
    period: usize,
}

impl Chargen {
    const LINE: usize = 72;

    fn new() -> Chargen {
        let printable: Vec<u8> = (b' '..=b'~').collect();
        let lines = printable.len();
        let mut pattern = Vec::with_capacity((lines + 1) * (Self::LINE + 2));
        for line in 0..=lines {
            for i in 0..Self::LINE {
                pattern.push(printable[(line + i) % lines]);
            }
            pattern.extend_from_slice(b"\r\n");
        }
        Chargen {
            period: lines * (Self::LINE + 2),
            pattern,
        }
    }

    /// Fills `buf` with the pattern from `offset` and returns the bytes written.
    fn fill(&self, offset: usize, buf: &mut [u8]) -> usize {
        let mut written = 0;
        let mut at = offset % self.period;
        while written < buf.len() {
            let n = (self.period - at).min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&self.pattern[at..at + n]);
            written += n;
            at = (at + n) % self.period;
        }
        written
    }
}

struct Conn {
    service: Service,
    /// Chargen: bytes sent so far (position in the pattern).
    sent: usize,
    /// Left LISTEN at least once (it was counted as a connection).
    accepted: bool,
}

struct Server<'a> {
    sockets: SocketSet<'a>,
    conns: HashMap<SocketHandle, Conn>,
    buffer: usize,
    max_sockets: usize,
    listeners: usize,
    chargen: Chargen,
    scratch: Vec<u8>,
    ack_delay: Option<Duration>,
}

impl<'a> Server<'a> {
    fn add_listener(&mut self, service: Service) {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        if service == Service::Echo {
            socket.set_nagle_enabled(false);
        }
        socket.set_ack_delay(self.ack_delay);
        socket
            .listen(service.port())
            .expect("listening on a fresh socket");
        let handle = self.sockets.add(socket);
        self.conns.insert(
            handle,
            Conn {
                service,
                sent: 0,
                accepted: false,
            },
        );
    }

    /// Runs the services on every socket, drops finished sockets and tops the
    /// listeners back up.
    fn serve(&mut self) {
        let mut listening = [0usize; 3];
        let mut finished = Vec::new();
        for (handle, conn) in self.conns.iter_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            let state = socket.state();
            if state == tcp::State::Listen {
                listening[conn.service as usize] += 1;
                continue;
            }
            conn.accepted = true;
            match state {
                tcp::State::Closed => {
                    finished.push(*handle);
                    continue;
                }
                // Not established yet: may_recv() is still false, which must
                // not read as "the peer is done".
                tcp::State::SynReceived | tcp::State::SynSent => continue,
                _ => {}
            }
            match conn.service {
                Service::Discard => {
                    while socket.can_recv() {
                        let _ = socket.recv(|data| (data.len(), ()));
                    }
                    if !socket.may_recv() && socket.may_send() {
                        socket.close();
                    }
                }
                Service::Chargen => {
                    while socket.can_recv() {
                        let _ = socket.recv(|data| (data.len(), ()));
                    }
                    if !socket.may_recv() {
                        // The peer is done: nothing queued is wanted any more.
                        socket.abort();
                        continue;
                    }
                    let chargen = &self.chargen;
                    while socket.can_send() {
                        let offset = conn.sent;
                        match socket.send(|buf| {
                            let n = chargen.fill(offset, buf);
                            (n, n)
                        }) {
                            Ok(n) if n > 0 => conn.sent += n,
                            _ => break,
                        }
                    }
                }
                Service::Echo => {
                    while socket.can_recv() && socket.can_send() {
                        let room = socket.send_capacity() - socket.send_queue();
                        let want = room.min(self.scratch.len());
                        let n = socket.recv_slice(&mut self.scratch[..want]).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let _ = socket.send_slice(&self.scratch[..n]);
                    }
                    if !socket.may_recv() && socket.may_send() && socket.send_queue() == 0 {
                        socket.close();
                    }
                }
            }
        }
        for handle in finished {
            self.sockets.remove(handle);
            self.conns.remove(&handle);
        }
        for service in Service::ALL {
            for _ in listening[service as usize]..self.listeners {
                if self.conns.len() >= self.max_sockets {
                    break;
                }
                self.add_listener(service);
            }
        }
    }
}

fn run(opts: Options) -> Result<(), String> {
    // A fixed mmap threshold: every 1 MiB socket buffer is its own zero-page
    // mapping, so the RSS counts only buffer bytes really used (glibc would
    // otherwise raise the threshold after the first free and recycle dirty
    // heap memory).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    }

    let mut device = TunTapInterface::new(&opts.tun, Medium::Ip)
        .map_err(|e| format!("cannot open TUN device {}: {e}", opts.tun))?;
    let fd = device.as_raw_fd();
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = u64::from(std::process::id()) ^ 0x5eed_0f_be_7c4;
    let mut iface = Interface::new(config, &mut device, Instant::now());
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::Ipv4(opts.addr))
            .expect("one address fits");
    });
    // Clients outside the TUN's subnet (the loss path through a router
    // namespace) are reached through the TUN's kernel address.
    let gateway = opts.gateway.unwrap_or_else(|| {
        let net = opts.addr.network().address().octets();
        Ipv4Address::new(net[0], net[1], net[2], net[3].wrapping_add(1))
    });
    iface.routes_mut().update(|routes| {
        let _ = routes.push(Route {
            cidr: IpCidr::Ipv4(Ipv4Cidr::new(Ipv4Address::new(198, 18, 0, 0), 15)),
            via_router: IpAddress::Ipv4(gateway),
            preferred_until: None,
            expires_at: None,
        });
    });

    let mtu = device.capabilities().max_transmission_unit;
    let mut server = Server {
        sockets: SocketSet::new(vec![]),
        conns: HashMap::new(),
        buffer: opts.buffer,
        max_sockets: opts.max_sockets,
        listeners: opts.listeners,
        chargen: Chargen::new(),
        scratch: vec![0u8; 64 * 1024],
        ack_delay: opts.ack_delay_ms.map(Duration::from_millis),
    };
    server.serve();
    eprintln!(
        "smoltcp-ref: {} on {} (mtu {mtu}), gateway {gateway}, echo 7, discard 9, chargen 19, \
         {} listeners per port, {} byte buffers",
        opts.addr, opts.tun, opts.listeners, opts.buffer
    );

    let max_wait = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        iface.poll(now, &mut device, &mut server.sockets);
        server.serve();
        // Send what the services just queued before sleeping.
        iface.poll(Instant::now(), &mut device, &mut server.sockets);
        let delay = iface
            .poll_delay(Instant::now(), &server.sockets)
            .map_or(max_wait, |d| d.min(max_wait));
        // EINTR on a signal is fine: the loop condition checks the flag.
        let _ = phy_wait(fd, Some(delay));
    }
    let accepted = server.conns.values().filter(|c| c.accepted).count();
    eprintln!("smoltcp-ref: stopping ({accepted} connections open)");
    Ok(())
}

fn main() -> ExitCode {
    match parse_options().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("smoltcp-ref: {msg}");
            ExitCode::from(2)
        }
    }
}
