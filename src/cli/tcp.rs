//! `tunstack tcp connect HOST PORT` and `tunstack tcp listen PORT`: netcat over our own TCP.
//! Standard input goes to the connection, the connection goes to standard output; end of input
//! half-closes (FIN); the command exits when both directions have ended.

use super::stack_opts::{prepare, stop_on_signals, StackOpts};
use super::CliError;
use crate::api::tcp::{TcpListener, TcpStream};
use crate::node::NodeHandle;
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TcpArgs {
    #[command(subcommand)]
    pub command: TcpCommand,
}

#[derive(Subcommand, Debug)]
pub enum TcpCommand {
    /// Connect to HOST PORT from a node of our own and relay stdin/stdout
    #[command(after_help = "Example (line lab; a kernel listener in ts-b):\n  \
ip netns exec ts-b nc -l 198.18.2.1 5000 &\n  \
echo hello | ip netns exec ts-a tunstack tcp connect 198.18.2.1 5000 --tun tun0 --addr 198.18.1.2/24")]
    Connect {
        host: Ipv4Addr,
        port: u16,
        /// Give up if the handshake takes longer (seconds)
        #[arg(long, default_value = "10")]
        timeout: f64,
        #[command(flatten)]
        stack: StackOpts,
    },
    /// Accept one connection on PORT and relay stdin/stdout
    #[command(after_help = "Example (pair lab):\n  \
ip netns exec ts-a tunstack tcp listen 5000 --tun tun0 --addr 198.18.0.2/24 > received.bin &\n  \
ip netns exec ts-a nc -N 198.18.0.2 5000 < file.bin")]
    Listen {
        port: u16,
        #[command(flatten)]
        stack: StackOpts,
    },
}

pub fn run(args: TcpArgs) -> Result<i32, CliError> {
    let (stack, target) = match &args.command {
        TcpCommand::Connect {
            host,
            port,
            timeout,
            stack,
        } => (stack, Some((SocketAddrV4::new(*host, *port), *timeout))),
        TcpCommand::Listen { stack, .. } => (stack, None),
    };
    let prepared = prepare(stack, |_| {}, |_| Ok(()))?;
    let (handle, join) = prepared.spawn()?;
    stop_on_signals(&handle)?;
    let result = match (&args.command, target) {
        (_, Some((addr, timeout))) => {
            let t = Duration::from_secs_f64(timeout.clamp(0.1, 3600.0));
            match TcpStream::connect(&handle, addr, Some(t)) {
                Ok(s) => relay(&handle, s),
                Err(e) => Err(CliError(format!("cannot connect to {addr}: {e}"))),
            }
        }
        (TcpCommand::Listen { port, .. }, None) => {
            let l = TcpListener::bind(&handle, *port)
                .map_err(|e| CliError(format!("cannot listen on {port}: {e}")))?;
            log::info!("listening on {}:{port}", stack.addr.addr);
            match l.accept() {
                Ok((s, peer)) => {
                    log::info!("connection from {peer}");
                    drop(l);
                    relay(&handle, s)
                }
                Err(e) => Err(CliError(format!("accept failed: {e}"))),
            }
        }
        _ => Ok(()),
    };
    // Let the last segments (our FIN, the final ACK) leave before the stack goes away.
    std::thread::sleep(Duration::from_millis(200));
    handle.stop();
    let _ = join.join();
    result.map(|_| 0)
}

/// Copies stdin to the connection (then half-closes) while copying the connection to stdout.
fn relay(handle: &NodeHandle, stream: TcpStream) -> Result<(), CliError> {
    let writer = stream.clone();
    let h = handle.clone();
    std::thread::Builder::new()
        .name("tunstack-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if (&writer).write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = writer.shutdown(Shutdown::Write);
            drop(h);
        })?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match (&stream).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => stdout.write_all(&buf[..n])?,
            Err(e) => return Err(CliError(format!("connection failed: {e}"))),
        }
    }
    stdout.flush()?;
    // The peer finished sending; wait until what we sent is acknowledged (or give up).
    let _ = stream.flush_acked(Some(Duration::from_secs(30)));
    Ok(())
}
