//! `tunstack node`: a node on a TUN device, as a console or a quiet daemon.

use super::stack_opts::{stop_on_signals, StackOpts};
use super::{console, CliError};
use crate::node::launch::{launch, MsgTuning};
use crate::services::{ServiceSpec, Services};
use clap::Args;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(
    after_help = "Examples (inside the lab made by netns-scripts/setup-netns.sh up pair):\n  \
ip netns exec ts-a tunstack node --tun tun0 --addr 198.18.0.2/24\n  \
ip netns exec ts-a tunstack node --tun tun0 --addr 198.18.0.2/24 --no-console --pcap node.pcap\n  \
ip netns exec ts-a tunstack node --tun tun0 --addr 198.18.0.2/24 --impair loss=5%,delay=20ms"
)]
pub struct NodeArgs {
    #[command(flatten)]
    pub stack: StackOpts,

    /// Run as a quiet daemon even when stdin is a terminal (no prompt; use `tunstack ctl`)
    #[arg(long)]
    pub no_console: bool,

    /// Serve TCP: KIND:PORT with KIND one of echo, discard, chargen, daytime, hold, greet, hello, http. Repeatable
    #[arg(long = "serve", value_name = "KIND:PORT")]
    pub serve: Vec<ServiceSpec>,

    /// A node to greet at start (protocol 170 HELLO); peers exchange what they know, so one is enough. Repeatable
    #[arg(long = "peer", value_name = "IP")]
    pub peers: Vec<std::net::Ipv4Addr>,

    /// Protocol-170 retransmissions of a message (or greetings to a silent peer) before it fails after N+1 tries (0..=100) [default: 5]
    #[arg(long, value_name = "N")]
    pub msg_retries: Option<u32>,

    /// Protocol-170 backoff: each retransmission waits this many times longer (1..=10) [default: 1.5]
    #[arg(long, value_name = "F")]
    pub msg_backoff: Option<f64>,

    /// Protocol-170 timeout before the first RTT sample, e.g. 500ms [default: 500ms]
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub msg_rto_initial: Option<Duration>,

    /// Protocol-170 floor of the timeout derived from the measured RTT, e.g. 50ms [default: 50ms]
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub msg_rto_min: Option<Duration>,

    /// Protocol-170 ceiling of the timeout, backoff included, e.g. 10s [default: 10s]
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub msg_rto_max: Option<Duration>,
}

fn parse_time(s: &str) -> Result<Duration, String> {
    crate::impair::parse_duration(s).map_err(|e| e.to_string())
}

impl NodeArgs {
    fn msg_tuning(&self) -> Result<MsgTuning, CliError> {
        let t = MsgTuning {
            max_retries: self.msg_retries,
            backoff: self.msg_backoff,
            initial_rto: self.msg_rto_initial,
            min_rto: self.msg_rto_min,
            max_rto: self.msg_rto_max,
        };
        t.check().map_err(|e| CliError(e.to_string()))?;
        Ok(t)
    }
}

pub fn run(args: NodeArgs) -> Result<i32, CliError> {
    let peers = args.peers.clone();
    let serve = args.serve.clone();
    let mut cfg = args.stack.launch_config();
    cfg.msg = args.msg_tuning()?;
    let prepared = launch::<CliError>(
        &cfg,
        |cfg| cfg.msg.peers = peers,
        |node| {
            if !serve.is_empty() {
                let services =
                    Services::new(&mut node.stack, &serve, rfc867_daytime).map_err(CliError)?;
                node.services = serve
                    .iter()
                    .map(|s| format!("{}:{}", s.kind, s.port))
                    .collect();
                node.apps.push(Box::new(services));
            }
            Ok(())
        },
    )?;
    let handle = prepared.handle.clone();
    stop_on_signals(&handle)?;
    let path = args.stack.control_path();
    log::info!(
        "node {} up: {}/{} on {}, mtu {}, control socket {}",
        args.stack.node_name(),
        args.stack.addr.addr,
        args.stack.addr.prefix_len,
        args.stack.tun,
        args.stack.mtu,
        path.display()
    );
    if !args.no_console && std::io::stdin().is_terminal() {
        let h = handle.clone();
        std::thread::Builder::new()
            .name("tunstack-console".into())
            .spawn(move || console::run(h))?;
    }
    prepared.driver.run(handle)?;
    log::info!("node {} stopped", args.stack.node_name());
    Ok(0)
}

/// The daytime line (RFC 867 leaves the format free): e.g. `Saturday, November 21, 2026 12:00:00-UTC`.
fn rfc867_daytime() -> String {
    let t = crate::node::clock::rfc3339_now();
    // 2026-11-21T12:00:00.000Z -> "2026-11-21 12:00:00 UTC"
    format!("{} {} UTC", &t[..10], &t[11..19])
}
