//! `tunstack node`: a node on a TUN device, as a console or a quiet daemon.

use super::stack_opts::{prepare, stop_on_signals, StackOpts};
use super::{console, CliError};
use clap::Args;
use std::io::IsTerminal;

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
}

pub fn run(args: NodeArgs) -> Result<i32, CliError> {
    let prepared = prepare(&args.stack, |_| {}, |_| Ok(()))?;
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
