//! The command line: `tunstack node`, `tunstack ctl`, and the subcommands later features add.
//! Errors reach the user as one readable line that says what to do, and a non-zero exit.

mod app_net;
mod cat;
mod console;
mod ctl;
mod node;
mod relay;
mod session;
pub mod stack_opts;
pub mod tcp;

use clap::{Parser, Subcommand};
use std::fmt;

/// An error for a person: what went wrong and what to do about it.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError(e.to_string())
    }
}

impl From<crate::cat::handshake::HandshakeError> for CliError {
    fn from(e: crate::cat::handshake::HandshakeError) -> CliError {
        CliError(e.to_string())
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> CliError {
        CliError(e.to_string())
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "tunstack",
    version,
    about = "A userspace TCP/IP stack on a Linux TUN device",
    long_about = "tunstack runs a whole IPv4 stack in userspace on a TUN device: IPv4 and ICMP, \
its own TCP, reliable messages (IP protocol 170) and file transfer (IP protocol 171). \
Every packet it sends or receives crosses the TUN device, so `tcpdump -ni tun0` shows all of it.\n\n\
Quick start (as root):\n  netns-scripts/setup-netns.sh up pair\n  \
ip netns exec ts-a tunstack node --tun tun0 --addr 198.18.0.2/24\n  \
ip netns exec ts-a ping 198.18.0.2\n\nLogging: RUST_LOG=debug tunstack ...",
    after_help = "Run 'tunstack <COMMAND> --help' for the options of each command."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node on a TUN device: answers ping, runs services, offers a console
    Node(Box<node::NodeArgs>),
    /// Talk to a running node through its control socket
    Ctl(ctl::CtlArgs),
    /// Netcat over our own TCP: `tcp connect HOST PORT` or `tcp listen PORT`
    Tcp(Box<tcp::TcpArgs>),
    /// Session protocol: framed, acknowledged messages in step or burst mode (serve | connect)
    Session(Box<session::SessionArgs>),
    /// Encrypted netcat: chat or send files (-l PORT to listen, HOST PORT to connect)
    Cat(Box<cat::CatArgs>),
    /// The relay mesh: run a relay server, or chat as a user through the mesh
    Relay(relay::RelayArgs),
}

/// Parses the command line, with `-fs`/`-fr` spelled as netcat does.
pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(cat::normalize_args(args))
}

/// Parses the command line and runs; returns the process exit code.
pub fn main() -> i32 {
    let cli = match parse(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Node(a) => node::run(*a),
        Command::Ctl(a) => ctl::run(a),
        Command::Tcp(a) => tcp::run(*a),
        Command::Session(a) => session::run(*a),
        Command::Cat(a) => cat::run(*a),
        Command::Relay(a) => relay::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tunstack: error: {e}");
            1
        }
    }
}
