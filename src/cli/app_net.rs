//! The network under `tunstack session` and `tunstack cat`: our stack on a TUN device (the
//! stack options), or with `--kernel` the host's sockets. Both give the same stream type, so the
//! applications do not care which TCP carries them.

use super::stack_opts::StackOpts;
use super::CliError;
use crate::duplex::Duplex;
use clap::Args;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};

/// `--kernel`, or the stack options. Written by hand because the stack options have a required
/// `--addr` that `--kernel` makes unnecessary, which derived flattening cannot express.
#[derive(Debug, Clone)]
pub struct NetOpts {
    pub kernel: bool,
    pub stack: Option<StackOpts>,
}

impl clap::FromArgMatches for NetOpts {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let kernel = m.get_flag("kernel");
        let stack = if kernel {
            None
        } else {
            Some(StackOpts::from_arg_matches(m)?)
        };
        Ok(NetOpts { kernel, stack })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = NetOpts::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for NetOpts {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        StackOpts::augment_args(cmd)
            .mut_arg("addr", |a| a.required(false).required_unless_present("kernel"))
            .arg(
                clap::Arg::new("kernel")
                    .long("kernel")
                    .action(clap::ArgAction::SetTrue)
                    .help("Use the host's TCP (kernel sockets) instead of running our stack on a TUN device; the stack options are then not needed"),
            )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        NetOpts::augment_args(cmd)
    }
}

/// A running network: the kernel's, or our node with its event loop on a background thread.
pub enum Net {
    Kernel,
    Ours {
        handle: crate::node::NodeHandle,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl NetOpts {
    pub fn start(&self) -> Result<Net, CliError> {
        if self.kernel {
            return Ok(Net::Kernel);
        }
        let Some(opts) = &self.stack else {
            return Err(CliError(
                "give the stack options (--tun, --addr ...) to run over our TCP, or --kernel to use the host's TCP".into(),
            ));
        };
        start_ours(opts)
    }
}

fn start_ours(opts: &StackOpts) -> Result<Net, CliError> {
    let prepared = super::stack_opts::prepare(opts, |_cfg| {}, |_node| Ok(()))?;
    let handle = prepared.handle.clone();
    super::stack_opts::stop_on_signals(&handle)?;
    let driver = prepared.driver;
    let h = handle.clone();
    let thread = std::thread::Builder::new()
        .name("tunstack-loop".into())
        .spawn(move || {
            if let Err(e) = driver.run(h) {
                log::error!("event loop: {e}");
            }
        })?;
    Ok(Net::Ours {
        handle,
        thread: Some(thread),
    })
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Net::Ours { handle, thread } = self {
            handle.stop();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn resolve_v4(host: &str, port: u16) -> Result<std::net::SocketAddrV4, CliError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| CliError(format!("cannot resolve {host}: {e}")))?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| CliError(format!("{host} has no IPv4 address")))
}

impl Net {
    pub fn connect(&self, host: &str, port: u16) -> Result<Stream, CliError> {
        let addr = resolve_v4(host, port)?;
        let hint = |e: io::Error| CliError(format!("cannot connect to {addr}: {e}"));
        match self {
            Net::Kernel => {
                let s = std::net::TcpStream::connect(addr).map_err(hint)?;
                // Small messages must not wait for Nagle.
                let _ = s.set_nodelay(true);
                Ok(Stream::Kernel(s))
            }
            Net::Ours { handle, .. } => {
                let s = crate::api::tcp::TcpStream::connect(
                    handle,
                    addr,
                    Some(std::time::Duration::from_secs(15)),
                )
                .map_err(hint)?;
                s.set_nodelay(true);
                Ok(Stream::Ours(s))
            }
        }
    }

    pub fn listen(&self, port: u16) -> Result<Listener, CliError> {
        let hint = |e: io::Error| CliError(format!("cannot listen on port {port}: {e}"));
        match self {
            Net::Kernel => Ok(Listener::Kernel(
                std::net::TcpListener::bind(("0.0.0.0", port)).map_err(hint)?,
            )),
            Net::Ours { handle, .. } => Ok(Listener::Ours(
                crate::api::tcp::TcpListener::bind(handle, port).map_err(hint)?,
            )),
        }
    }
}

pub enum Listener {
    Kernel(std::net::TcpListener),
    Ours(crate::api::tcp::TcpListener),
}

impl Listener {
    pub fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Kernel(l) => {
                let (s, a) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Kernel(s), a))
            }
            Listener::Ours(l) => {
                let (s, a) = l.accept()?;
                s.set_nodelay(true);
                Ok((Stream::Ours(s), SocketAddr::V4(a)))
            }
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Listener::Kernel(l) => l.local_addr().map_or(0, |a| a.port()),
            Listener::Ours(l) => l.port(),
        }
    }
}

/// A connection on either TCP.
pub enum Stream {
    Kernel(std::net::TcpStream),
    Ours(crate::api::tcp::TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Kernel(s) => s.read(buf),
            Stream::Ours(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Kernel(s) => s.write(buf),
            Stream::Ours(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Kernel(s) => s.flush(),
            Stream::Ours(s) => s.flush(),
        }
    }
}

impl Duplex for Stream {
    fn duplicate(&self) -> io::Result<Self> {
        match self {
            Stream::Kernel(s) => s.try_clone().map(Stream::Kernel),
            Stream::Ours(s) => Ok(Stream::Ours(s.clone())),
        }
    }
    fn close(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Kernel(s) => s.shutdown(how),
            Stream::Ours(s) => s.shutdown(how),
        }
    }
}
