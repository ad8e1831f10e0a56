//! `tcpbench`: bulk TCP from this node's own stack to a sink (a peer node's `--serve discard:9`,
//! or any discard server), so protocol 171 can be compared with our TCP on the same path.
//!
//! The sending runs inside the event loop as an [`App`], like a service: the command's thread
//! only starts it and waits for the outcome, so no lock is taken per write and the figure is the
//! stack's, not the control socket's. Timed from the connect until the sink closes after our FIN,
//! i.e. until every byte was acknowledged and consumed.

use super::commands::{parse_flag, parse_ip, CommandError, CommandResult, Outcome};
use super::{App, NodeHandle};
use crate::stack::Stack;
use crate::tcp::{SocketHandle, TcpError};
use crate::time::{Duration, Instant};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

const USAGE: &str = "usage: tcpbench IP [--port P] [--size BYTES] [--timeout SECS] [--json]";

/// What the sender writes: the content does not matter to a sink, only its length.
static BLOCK: [u8; 64 * 1024] = [0x5a; 64 * 1024];

type SharedResult = Arc<Mutex<Option<Result<TcpRun, String>>>>;

#[derive(Clone, Debug)]
struct TcpRun {
    bytes: u64,
    secs: f64,
    retransmits: u64,
}

/// Sends `size` bytes on `sock`, half-closes, and reports when the peer closes too.
struct BulkSender {
    name: String,
    sock: SocketHandle,
    size: u64,
    sent: u64,
    shut: bool,
    started: Instant,
    retransmits_before: u64,
    outcome: SharedResult,
    over: bool,
}

impl BulkSender {
    fn finish(&mut self, stack: &mut Stack, r: Result<TcpRun, String>) {
        self.over = true;
        stack.tcp.close(self.sock);
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }
}

impl App for BulkSender {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, now: Instant, stack: &mut Stack) {
        if self.over {
            return;
        }
        while self.sent < self.size {
            let n = ((self.size - self.sent) as usize).min(BLOCK.len());
            match stack.tcp.send(self.sock, &BLOCK[..n]) {
                Ok(0) => break,
                Ok(w) => self.sent += w as u64,
                Err(e) => return self.finish(stack, Err(format!("send failed: {e}"))),
            }
        }
        if self.sent == self.size && !self.shut {
            if let Err(e) = stack.tcp.shutdown_write(self.sock) {
                return self.finish(stack, Err(format!("shutdown failed: {e}")));
            }
            self.shut = true;
        }
        let mut buf = [0u8; 4096];
        loop {
            match stack.tcp.recv(self.sock, &mut buf) {
                Ok(0) if self.shut => {
                    let retransmits = stack.tcp.counters().retransmits - self.retransmits_before;
                    let run = TcpRun {
                        bytes: self.size,
                        secs: (now - self.started).as_secs_f64(),
                        retransmits,
                    };
                    return self.finish(stack, Ok(run));
                }
                Ok(0) => {
                    return self.finish(stack, Err("the peer closed before all was sent".into()))
                }
                Ok(_) => continue,
                Err(TcpError::WouldBlock) => break,
                Err(e) => return self.finish(stack, Err(format!("connection failed: {e}"))),
            }
        }
    }
}

struct Args {
    dst: Ipv4Addr,
    port: u16,
    size: u64,
    timeout: f64,
    json: bool,
}

fn parse(args: &[String]) -> Result<Args, CommandError> {
    let (mut port, mut size, mut timeout, mut json) = (9u16, 100u64 << 20, 60.0f64, false);
    let mut dst = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-p" | "--port" => port = parse_flag(args, &mut i, "port")?,
            "-s" | "--size" => size = super::bench_commands::parse_bytes(args, &mut i)?,
            "--timeout" => timeout = parse_flag(args, &mut i, "number of seconds")?,
            "--json" => json = true,
            a if dst.is_none() && !a.starts_with('-') => dst = Some(parse_ip(a)?),
            a => return Err(CommandError(format!("unexpected '{a}'; {USAGE}"))),
        }
        i += 1;
    }
    let dst = dst.ok_or_else(|| CommandError(USAGE.into()))?;
    if size == 0 || size > 1 << 40 {
        return Err(CommandError("--size must be from 1 byte to 1T".into()));
    }
    if port == 0 {
        return Err(CommandError("--port must be from 1 to 65535".into()));
    }
    if !(timeout > 0.0 && timeout <= 3600.0) {
        return Err(CommandError(
            "--timeout must be from 0 to 3600 seconds".into(),
        ));
    }
    Ok(Args {
        dst,
        port,
        size,
        timeout,
        json,
    })
}

pub fn tcpbench(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let a = parse(args)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "tcpbench-{}",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let outcome: SharedResult = Arc::default();
    let to = SocketAddrV4::new(a.dst, a.port);
    let sock = h
        .with(|n, now| {
            let sock = n.stack.tcp.connect(now, to)?;
            n.apps.push(Box::new(BulkSender {
                name: name.clone(),
                sock,
                size: a.size,
                sent: 0,
                shut: false,
                started: now,
                retransmits_before: n.stack.tcp.counters().retransmits,
                outcome: outcome.clone(),
                over: false,
            }));
            Ok(sock)
        })
        .map_err(|e: TcpError| CommandError(format!("cannot connect to {to}: {e}")))?;
    let done = h.wait(Some(Duration::from_secs_f64(a.timeout)), |_, _| {
        outcome.lock().unwrap_or_else(|e| e.into_inner()).take()
    });
    // The sender is done (or given up on): take it out of the loop, aborting a connection that
    // is still open.
    h.with(|n, _| {
        n.apps.retain(|app| app.name() != name);
        if done.is_none() {
            n.stack.tcp.abort(sock);
        }
    });
    let r = match done {
        Some(r) => r.map_err(|e| CommandError(format!("tcpbench to {to}: {e}")))?,
        None if h.is_stopping() => return Err(CommandError("the node stopped".into())),
        None => {
            return Err(CommandError(format!(
                "time limit of {:.0} s reached; the connection to {to} was abandoned",
                a.timeout
            )))
        }
    };
    let mbit = r.bytes as f64 * 8.0 / r.secs.max(1e-9) / 1e6;
    if a.json {
        let v = serde_json::json!({
            "value": (mbit * 10.0).round() / 10.0,
            "unit": "Mbit/s",
            "bytes": r.bytes,
            "secs": r.secs,
            "retransmits": r.retransmits,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "tcpbench to {to}: {} bytes in {:.3} s = {mbit:.1} Mbit/s ({} segments retransmitted)",
            r.bytes, r.secs, r.retransmits
        )?;
    }
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn test_tcpbench_arguments() {
        let a = parse(&args("198.18.1.2 --port 7 --size 5M --json")).unwrap();
        assert_eq!(
            (a.dst, a.port, a.size, a.json),
            (Ipv4Addr::new(198, 18, 1, 2), 7, 5 << 20, true)
        );
        assert!(parse(&args("")).is_err());
        assert!(parse(&args("198.18.1.2 --port 0")).is_err());
        assert!(parse(&args("198.18.1.2 --size 0")).is_err());
        assert!(parse(&args("198.18.1.2 --bogus")).is_err());
    }
}
