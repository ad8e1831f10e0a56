//! `tunstack session serve|connect`: the session protocol as a command.

use super::app_net::NetOpts;
use super::CliError;
use crate::session::conn::{ClientConfig, ServerConfig, Timing, DEFAULT_MIN_SIZE, MAX_MAX_SIZE};
use crate::session::run::{self, RunError};
use crate::session::Mode;
use clap::{Args, Subcommand, ValueEnum};
use rand_core::{OsRng, RngCore};
use std::io::Write;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(
    about = "Session protocol: framed, checksummed, acknowledged messages over TCP",
    long_about = "Session protocol: a handshake (SYN, SYN-ACK, ACK) negotiates the mode, the max packet size and \
the window; then messages flow step by step (each waits for its ACK) or in bursts (a sliding window with \
cumulative ACKs). Damaged frames are reported and resent, idle sessions send keep-alives, and either side \
can disconnect in order. Runs over our TCP on a TUN device, or with --kernel over the host's TCP.",
    after_help = "Examples:\n  tunstack session serve --kernel --port 7000\n  \
printf 'hello\\nworld\\n' | tunstack session connect --kernel 127.0.0.1 7000 --mode burst\n  \
ip netns exec ts-b tunstack session serve --tun tun0 --addr 198.18.2.2/24 --port 7000\n  \
ip netns exec ts-a tunstack session connect --tun tun0 --addr 198.18.1.2/24 198.18.2.2 7000 --mode step < lines.txt"
)]
pub struct SessionArgs {
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Accept sessions (many clients at once) and print every message received
    Serve(ServeArgs),
    /// Open a session, send stdin (lines, or chunks with --chunks), report the counters and throughput
    Connect(ConnectArgs),
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ModeArg {
    /// Each message waits for its ACK
    Step,
    /// A sliding window of messages in flight
    Burst,
}

#[derive(Args, Debug, Clone)]
pub struct TimingArgs {
    /// Send a keep-alive after this many idle seconds
    #[arg(long, value_name = "SECS", default_value = "5")]
    pub keepalive: f64,
    /// Declare the peer dead after this many seconds without hearing from it
    #[arg(long, value_name = "SECS", default_value = "15")]
    pub dead_after: f64,
    /// First resend timeout in milliseconds (doubles on each expiry, up to 3 s)
    #[arg(long, value_name = "MS", default_value = "300")]
    pub rto_ms: u64,
}

impl TimingArgs {
    fn timing(&self) -> Result<Timing, CliError> {
        let secs = |x: f64, what: &str| {
            if x.is_finite() && x > 0.0 {
                Ok(Duration::from_secs_f64(x))
            } else {
                Err(CliError(format!(
                    "{what} must be a positive number of seconds"
                )))
            }
        };
        Ok(Timing {
            rto: Duration::from_millis(self.rto_ms.max(1)),
            max_rto: Duration::from_secs(3),
            keepalive: secs(self.keepalive, "--keepalive")?,
            dead_after: secs(self.dead_after, "--dead-after")?,
        })
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TCP port to listen on
    #[arg(long, value_name = "P")]
    pub port: u16,
    /// Largest message payload the server accepts, in bytes; a client asking for more gets this much
    #[arg(long, value_name = "N", default_value = "1024")]
    pub max_size: u32,
    /// Largest burst window the server grants
    #[arg(long, value_name = "N", default_value = "32")]
    pub window: u16,
    /// Refuse clients whose max packet size is below N bytes
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_SIZE)]
    pub min_size: u32,
    /// Modes the server accepts; others are refused with an ERROR
    #[arg(
        long,
        value_name = "MODE",
        value_delimiter = ',',
        default_value = "step,burst"
    )]
    pub modes: Vec<ModeArg>,
    /// Do not print each message (counters only)
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub timing: TimingArgs,
    #[command(flatten)]
    pub net: NetOpts,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// Server address (IPv4 or a name)
    pub host: String,
    /// Server port
    pub port: u16,
    /// step: each message waits for its ACK; burst: a sliding window
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    /// Window to ask for in burst mode (the server may grant less)
    #[arg(long, value_name = "N", default_value = "32")]
    pub window: u16,
    /// Largest message payload to ask for, in bytes; longer input lines are split
    #[arg(long, value_name = "N", default_value = "1024")]
    pub max_size: u32,
    /// Name the server prints with our messages [default: session-PID]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Send stdin in chunks of the max packet size (a file) instead of line by line
    #[arg(long)]
    pub chunks: bool,
    #[command(flatten)]
    pub timing: TimingArgs,
    #[command(flatten)]
    pub net: NetOpts,
}

fn mode(m: ModeArg) -> Mode {
    match m {
        ModeArg::Step => Mode::Step,
        ModeArg::Burst => Mode::Burst,
    }
}

pub fn run(args: SessionArgs) -> Result<i32, CliError> {
    match args.command {
        SessionCommand::Serve(a) => serve(a),
        SessionCommand::Connect(a) => connect(a),
    }
}

fn serve(a: ServeArgs) -> Result<i32, CliError> {
    if a.max_size == 0 || a.max_size > MAX_MAX_SIZE {
        return Err(CliError(format!(
            "--max-size must be from 1 to {MAX_MAX_SIZE}"
        )));
    }
    let timing = a.timing.timing()?;
    let net = a.net.start()?;
    let listener = net.listen(a.port)?;
    eprintln!("session server listening on port {}", listener.port());
    loop {
        let (stream, peer) = listener.accept()?;
        let cfg = ServerConfig {
            max_size: a.max_size,
            window: a.window.max(1),
            min_size: a.min_size,
            modes: a.modes.iter().map(|m| mode(*m)).collect(),
            isn: OsRng.next_u32(),
            session_id: OsRng.next_u32(),
            timing,
        };
        let quiet = a.quiet;
        std::thread::spawn(move || {
            let r = run::serve_connection(stream, cfg, |n, msg| {
                if !quiet {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(
                        out,
                        "[{} #{:08x}] {}",
                        n.client_id,
                        n.session_id,
                        String::from_utf8_lossy(msg)
                    );
                }
            });
            match r {
                Ok(rep) => eprintln!(
                    "session #{:08x} from {peer} ({}) ended{}: {} messages received",
                    rep.negotiated.session_id,
                    rep.negotiated.client_id,
                    if rep.closed_by_peer {
                        " by the client"
                    } else {
                        ""
                    },
                    rep.stats.delivered
                ),
                Err(RunError::Refused(r)) => eprintln!("refused {peer}: {r}"),
                Err(e) => eprintln!("session from {peer} failed: {e}"),
            }
        });
    }
}

fn connect(a: ConnectArgs) -> Result<i32, CliError> {
    if a.max_size == 0 || a.max_size > MAX_MAX_SIZE {
        return Err(CliError(format!(
            "--max-size must be from 1 to {MAX_MAX_SIZE}"
        )));
    }
    let cfg = ClientConfig {
        mode: mode(a.mode),
        max_size: a.max_size,
        window: a.window.max(1),
        client_id: a
            .client_id
            .clone()
            .unwrap_or_else(|| format!("session-{}", std::process::id())),
        isn: OsRng.next_u32(),
        timing: a.timing.timing()?,
    };
    let net = a.net.start()?;
    let stream = net.connect(&a.host, a.port)?;
    let stdin = std::io::stdin();
    let result = if a.chunks {
        run::run_client(stream, cfg, run::chunks(stdin, a.max_size as usize))
    } else {
        run::run_client(stream, cfg, run::lines(std::io::BufReader::new(stdin)))
    };
    match result {
        Ok(rep) => {
            println!(
                "messages sent {}, acknowledged {}, resent {}",
                rep.stats.sent, rep.stats.acked, rep.stats.resent
            );
            println!("{}", rep.summary());
            Ok(0)
        }
        Err(RunError::Refused(r)) => Err(CliError(format!("the server refused the session: {r}"))),
        Err(e) => Err(CliError(e.to_string())),
    }
}
