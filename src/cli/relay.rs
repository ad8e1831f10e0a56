//! `tunstack relay serve` and `tunstack relay client`: the relay mesh from the command line.

use super::stack_opts::{default_control_path, StackOpts};
use super::CliError;
use crate::relay::client::{Client, ClientConfig, Event};
use crate::relay::run::{self, Running, Transport};
use crate::relay::server::{Server, ServerConfig};
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: RelayCommand,
}

#[derive(Subcommand, Debug)]
pub enum RelayCommand {
    /// Run a relay server that joins the mesh and forwards users' messages
    Serve(Box<ServeArgs>),
    /// Connect a user to the fastest relay server and chat: lines of `<recipient> <message>`
    Client(Box<ClientArgs>),
}

fn parse_host_port(s: &str) -> Result<String, String> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' must be HOST:PORT, e.g. 198.18.1.2:7000"))?;
    if h.is_empty() || p.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!(
            "'{s}' must be HOST:PORT with a port from 1 to 65535"
        ));
    }
    if !crate::relay::wire::valid_name(s) {
        return Err(format!(
            "'{s}' is too long (at most 64 bytes) or has spaces"
        ));
    }
    Ok(s.to_string())
}

fn parse_max_users(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}': give a number of users, at least 1")),
    }
}

fn parse_user(s: &str) -> Result<String, String> {
    if crate::relay::wire::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}': a user name has 1 to 64 bytes and no spaces"
        ))
    }
}

#[derive(Args, Debug)]
#[command(mut_arg("addr", |a| a.required(false).required_unless_present("kernel")))]
#[command(after_help = "Examples:\n  \
# three servers over kernel TCP on one machine, joined in a cycle\n  \
tunstack relay serve --kernel --listen 127.0.0.1 --port 7001 --join 127.0.0.1:7002\n  \
tunstack relay serve --kernel --listen 127.0.0.1 --port 7002 --join 127.0.0.1:7003\n  \
tunstack relay serve --kernel --listen 127.0.0.1 --port 7003 --join 127.0.0.1:7001\n  \
tunstack ctl --control /run/tunstack/relay-7001.sock relay\n\n  \
# on a node of our own stack (star lab; our TCP carries the relay)\n  \
ip netns exec ts-n1 tunstack relay serve --tun tun0 --addr 198.18.1.2/24 --port 7000\n  \
ip netns exec ts-n2 tunstack relay serve --tun tun0 --addr 198.18.2.2/24 --port 7000 --join 198.18.1.2:7000")]
pub struct ServeArgs {
    /// TCP port to listen on for users and servers
    #[arg(long, value_name = "PORT")]
    pub port: u16,

    /// A server of the mesh to join (repeat for several; one member is enough, gossip finds the rest)
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub join: Vec<String>,

    /// The address others reach this server at, and its name in the mesh [default: the node's address, or --listen with --kernel]
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub advertise: Option<String>,

    /// Use the kernel's TCP (std::net) instead of our stack; needs no TUN device
    #[arg(long)]
    pub kernel: bool,

    /// With --kernel: the IP address to listen on
    #[arg(
        long,
        value_name = "IP",
        default_value = "0.0.0.0",
        requires = "kernel"
    )]
    pub listen: IpAddr,

    /// Users registered with this server at once; more are refused with the reason (the client tries its next server)
    #[arg(long, value_name = "N", default_value_t = crate::relay::server::DEFAULT_MAX_USERS, value_parser = parse_max_users)]
    pub max_users: usize,

    /// With --kernel: control socket for `tunstack ctl ... relay` [default: /run/tunstack/relay-PORT.sock]
    #[arg(long = "relay-control", value_name = "PATH", requires = "kernel")]
    pub relay_control: Option<PathBuf>,

    /// Our stack's options (--tun, --addr, ...); not used with --kernel
    #[command(flatten)]
    pub stack: Option<StackOpts>,
}

#[derive(Args, Debug)]
#[command(mut_arg("addr", |a| a.required(false).required_unless_present("kernel")))]
#[command(
    after_help = "Type lines of the form `<recipient> <message>`; what arrives is printed as \
`from NAME: MESSAGE`. At the end of input the client waits until every message it accepted \
is answered (delivered, unknown user, or offline), then leaves.\n\nExamples:\n  \
tunstack relay client --kernel --server 127.0.0.1:7001 --user ann\n  \
printf 'bob hello\\n' | tunstack relay client --kernel --server 127.0.0.1:7002 --user cy\n  \
ip netns exec ts-n4 tunstack relay client --tun tun0 --addr 198.18.4.2/24 --server 198.18.1.2:7000 --user ann"
)]
pub struct ClientArgs {
    /// Any server of the mesh: the client asks it for the list and picks the fastest
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub server: String,

    /// Your user name (1-64 bytes, no spaces)
    #[arg(long, value_name = "NAME", value_parser = parse_user)]
    pub user: String,

    /// Echo probes per server for the RTT measurement
    #[arg(long, value_name = "N", default_value = "3")]
    pub probes: u32,

    /// Use only --server: measure it and register there, never another server of the mesh
    #[arg(long)]
    pub pin: bool,

    /// After the end of input, stay this many seconds to receive (default: leave once answered)
    #[arg(long, value_name = "SECONDS", default_value = "0")]
    pub linger: u64,

    /// Use the kernel's TCP (std::net) instead of our stack; needs no TUN device
    #[arg(long)]
    pub kernel: bool,

    /// Seed for message identifiers [default: random]
    #[arg(long, value_name = "N")]
    pub relay_seed: Option<u64>,

    /// Our stack's options (--tun, --addr, ...); not used with --kernel
    #[command(flatten)]
    pub stack: Option<StackOpts>,
}

pub fn run(args: RelayArgs) -> Result<i32, CliError> {
    match args.command {
        RelayCommand::Serve(a) => serve(*a),
        RelayCommand::Client(a) => client(*a),
    }
}

fn serve(a: ServeArgs) -> Result<i32, CliError> {
    if a.kernel {
        let advertise = match &a.advertise {
            Some(s) => s.clone(),
            None if !a.listen.is_unspecified() => format!("{}:{}", a.listen, a.port),
            None => {
                return Err(CliError(
                    "say how others reach this server: --advertise HOST:PORT (or --listen IP)"
                        .into(),
                ))
            }
        };
        let transport = run::KernelTransport {
            listen_ip: a.listen,
        };
        let control = a
            .relay_control
            .clone()
            .unwrap_or_else(|| default_control_path(&format!("relay-{}", a.port)));
        return serve_on(transport, a, advertise, Some(control), |_| Ok(()));
    }
    let Some(stack) = a.stack.clone() else {
        return Err(CliError(
            "give our stack's options (--tun, --addr ...) or use --kernel".into(),
        ));
    };
    serve_on_stack(a, stack)
}

/// Our stack: the node runs its event loop on this thread's helper; the relay lives beside it
/// and registers a `relay` status provider so the node's `ctl ... relay` verb shows it.
fn serve_on_stack(a: ServeArgs, stack: StackOpts) -> Result<i32, CliError> {
    let prepared = super::stack_opts::prepare(&stack, |_| {}, |_| Ok(()))?;
    let handle = prepared.handle.clone();
    super::stack_opts::stop_on_signals(&handle)?;
    let driver = prepared.driver;
    let h = handle.clone();
    let loop_thread = std::thread::Builder::new()
        .name("tunstack-driver".into())
        .spawn(move || driver.run(h))?;
    let advertise = a
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{}:{}", stack.addr.addr, a.port));
    let transport = run::stack_net::StackTransport {
        node: handle.clone(),
    };
    let h2 = handle.clone();
    let r = serve_on(transport, a, advertise, None, move |status| {
        h2.lock()
            .status_providers
            .push(("relay", Arc::new(move || status())));
        Ok(())
    });
    handle.stop();
    let _ = loop_thread.join();
    r
}

type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

fn serve_on<T: Transport>(
    transport: T,
    a: ServeArgs,
    advertise: String,
    control: Option<PathBuf>,
    install: impl FnOnce(StatusFn) -> Result<(), CliError>,
) -> Result<i32, CliError> {
    let mut cfg = ServerConfig::new(advertise.clone());
    cfg.join = a.join.clone();
    cfg.max_users = a.max_users;
    let r = run::serve(transport, a.port, Server::new(cfg)).map_err(|e| {
        CliError(format!(
            "cannot listen on port {}: {e}\n  hint: is another server on it? pick another --port",
            a.port
        ))
    })?;
    let rs = r.clone();
    let status: StatusFn = Arc::new(move || rs.with(|s, now| s.status_json(now)));
    install(status.clone())?;
    if let Some(path) = &control {
        serve_control(path, status)?;
        log::info!("relay control socket {}", path.display());
    }
    log::info!(
        "relay server {advertise} listening on port {}, joining {:?}",
        r.port(),
        a.join
    );
    wait_for_signal(&r)?;
    // A clean stop: peers and clients hear goodbye and move on at once.
    r.with(|s, _| s.shutdown());
    std::thread::sleep(Duration::from_millis(100));
    r.stop();
    if let Some(path) = &control {
        let _ = std::fs::remove_file(path);
    }
    log::info!("relay server {advertise} stopped");
    Ok(0)
}

fn wait_for_signal<M: crate::relay::Machine + 'static, T: Transport>(
    r: &Running<M, T>,
) -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let r2 = r.clone();
    // Also return when the runner stops by itself.
    std::thread::spawn(move || {
        while !r2.is_stopping() {
            std::thread::sleep(Duration::from_millis(200));
        }
        handle.close();
    });
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: stopping");
    }
    Ok(())
}

/// The control socket of a kernel-TCP relay (it has no node): the same protocol as a node's
/// (one line, a JSON array of words), with the verbs `relay [--json]` and `help`.
fn serve_control(path: &std::path::Path, status: StatusFn) -> Result<(), CliError> {
    use std::os::unix::net::{UnixListener, UnixStream};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError(format!(
                "cannot create {}: {e}\n  hint: pass --relay-control PATH in a writable directory",
                dir.display()
            ))
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(CliError(format!(
                "a relay is already running with control socket {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|e| {
        CliError(format!(
            "cannot create control socket {}: {e}\n  hint: pass --relay-control PATH",
            path.display()
        ))
    })?;
    std::thread::Builder::new()
        .name("relay-control".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let status = status.clone();
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut line = String::new();
                let mut rd = std::io::BufReader::new(&s);
                if rd.read_line(&mut line).is_err() {
                    continue;
                }
                let words: Vec<String> = serde_json::from_str(line.trim())
                    .unwrap_or_else(|_| crate::node::commands::split_words(line.trim()));
                let mut out = &s;
                let _ = match words.first().map(String::as_str) {
                    Some("relay") if words.iter().any(|w| w == "--json") => writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&status()).unwrap_or_default()
                    ),
                    Some("relay") => write!(out, "{}", run::format_status(&status())),
                    Some("help") | None => writeln!(
                        out,
                        "  relay [--json]     servers, users and forwarding counters of this relay"
                    ),
                    Some(v) => writeln!(
                        out,
                        "error: unknown command '{v}'; this relay (kernel TCP) answers 'relay [--json]'"
                    ),
                };
            }
        })?;
    Ok(())
}

fn client(a: ClientArgs) -> Result<i32, CliError> {
    if a.kernel {
        let t = run::KernelTransport {
            listen_ip: IpAddr::from([0, 0, 0, 0]),
        };
        return client_on(t, &a);
    }
    let Some(stack) = a.stack.clone() else {
        return Err(CliError(
            "give our stack's options (--tun, --addr ...) or use --kernel".into(),
        ));
    };
    client_on_stack(&a, stack)
}

fn client_on_stack(a: &ClientArgs, stack: StackOpts) -> Result<i32, CliError> {
    let prepared = super::stack_opts::prepare(&stack, |_| {}, |_| Ok(()))?;
    let handle = prepared.handle.clone();
    let driver = prepared.driver;
    let h = handle.clone();
    let loop_thread = std::thread::Builder::new()
        .name("tunstack-driver".into())
        .spawn(move || driver.run(h))?;
    let t = run::stack_net::StackTransport {
        node: handle.clone(),
    };
    let r = client_on(t, a);
    handle.stop();
    let _ = loop_thread.join();
    r
}

fn print_event(e: Event) {
    let mut o = std::io::stdout().lock();
    let _ = match e {
        Event::Servers(v) => writeln!(o, "servers: {}", v.join(" ")),
        Event::Rtt {
            server,
            rtt: Some(d),
        } => {
            writeln!(o, "rtt {server} {:.3} ms", d.as_secs_f64() * 1000.0)
        }
        Event::Rtt { server, rtt: None } => writeln!(o, "rtt {server} no answer"),
        Event::Connected { server } => writeln!(o, "connected to {server}"),
        Event::ServerLost { server } => writeln!(o, "lost {server}: failing over"),
        Event::Refused { server, reason } => writeln!(o, "{server} refused us: {reason}"),
        Event::Message { from, body, .. } => {
            writeln!(o, "from {from}: {}", String::from_utf8_lossy(&body))
        }
        Event::Delivered { to, .. } => writeln!(o, "delivered to {to}"),
        Event::UnknownUser { to, .. } => writeln!(o, "no such user: {to}"),
        Event::UserOffline { to, .. } => writeln!(o, "{to} is offline"),
        Event::ServerError(t) => writeln!(o, "server error: {t}"),
        Event::NoServer => writeln!(o, "no server answers; retrying"),
    };
    let _ = o.flush();
}

fn client_on<T: Transport>(t: T, a: &ClientArgs) -> Result<i32, CliError> {
    let mut cfg = ClientConfig::new(a.user.clone(), vec![a.server.clone()]);
    cfg.probes = a.probes.clamp(1, 100);
    cfg.pin = a.pin;
    // Wall-clock milliseconds order this session after any earlier one of the same user.
    cfg.version_base = crate::node::clock::unix_micros() / 1000 * 1000;
    let seed = a
        .relay_seed
        .unwrap_or_else(super::stack_opts::os_random_u64);
    let r = run::start_client(
        t,
        Client::new(cfg, crate::rand::Rng::new(seed)),
        print_event,
    );
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((to, msg)) = line.split_once(' ') else {
            println!("usage: <recipient> <message>");
            continue;
        };
        if let Err(e) = r.with(|c, now| c.send(now, to, msg.trim_start().as_bytes())) {
            println!("not sent: {e}");
        }
    }
    // Leave only when everything accepted is answered (or after a generous bound).
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while r.with(|c, _| c.outbox_len()) > 0 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(a.linger));
    let left = r.with(|c, _| {
        c.quit();
        c.outbox_len()
    });
    std::thread::sleep(Duration::from_millis(100));
    r.stop();
    if left > 0 {
        return Err(CliError(format!(
            "{left} messages were not answered within 60 s"
        )));
    }
    Ok(0)
}
