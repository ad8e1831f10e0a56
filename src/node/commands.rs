//! The node's command set, shared by the interactive console and the control socket
//! (`tunstack ctl`). A command runs on the caller's thread: it may block (ping waits for replies)
//! while the event loop keeps running.

use super::NodeHandle;
use crate::ip::PingEvent;
use crate::time::Duration;
use std::fmt::Write as _;
use std::io::Write;
use std::net::Ipv4Addr;

/// What the caller should do after a command.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// `quit`: stop the node.
    Quit,
}

/// A command that could not run; the message is for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for CommandError {
    fn from(e: std::io::Error) -> CommandError {
        CommandError(format!("output failed: {e}"))
    }
}

pub type CommandResult = Result<Outcome, CommandError>;
type Run = fn(&NodeHandle, &[String], &mut dyn Write) -> CommandResult;

pub struct Verb {
    pub name: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
    pub run: Run,
}

/// Every verb, in the order `help` lists them.
pub const VERBS: &[Verb] = &[
    Verb {
        name: "help",
        usage: "help",
        help: "list the commands",
        run: help,
    },
    Verb {
        name: "status",
        usage: "status [--json]",
        help: "counters: packets, drops by reason, ICMP, impairment, uptime",
        run: status,
    },
    Verb {
        name: "ping",
        usage: "ping IP [-c COUNT] [-s SIZE] [-i SECONDS]",
        help: "send ICMP echo requests from the node and print the round-trip times",
        run: ping,
    },
    Verb {
        name: "sockets",
        usage: "sockets [--json] [--events]",
        help: "TCP connections with state, cwnd, RTT, RTO, queues (like ss -ti); --events adds timelines",
        run: super::tcp_commands::sockets,
    },
    Verb {
        name: "send",
        usage: "send IP TEXT... [-c CHANNEL] [--no-wait]",
        help: "send a reliable message (protocol 170) and wait until it is delivered",
        run: super::msg_commands::send,
    },
    Verb {
        name: "file",
        usage: "file IP[,IP...] PATH [--as NAME] [-c CHANNEL] [--no-wait]",
        help: "send a file (protocol 171) to one or more nodes, with progress",
        run: super::file_commands::file,
    },
    Verb {
        name: "transfers",
        usage: "transfers [--json]",
        help: "file transfers in progress, with progress and rate",
        run: super::file_commands::transfers,
    },
    Verb {
        name: "messages",
        usage: "messages [--json] [--follow] [--since N]",
        help: "messages received, oldest first; --follow keeps printing new ones",
        run: super::msg_commands::messages,
    },
    Verb {
        name: "peers",
        usage: "peers [--json]",
        help: "known nodes with state, RTT and last seen",
        run: super::msg_commands::peers,
    },
    Verb {
        name: "discover",
        usage: "discover [CIDR]",
        help: "probe a range for nodes (default: this node's subnet) at a bounded rate",
        run: super::msg_commands::discover,
    },
    Verb {
        name: "msgbench",
        usage: "msgbench IP [--count N] [--size B] [--window W] [--json]",
        help: "benchmark protocol 170: acknowledged messages/s and latency to a peer",
        run: super::bench_commands::msgbench,
    },
    Verb {
        name: "tcpbench",
        usage: "tcpbench IP [--port P] [--size BYTES] [--json]",
        help: "benchmark our TCP: send BYTES to a sink (a node's --serve discard:9) and report Mbit/s",
        run: super::tcp_bench::tcpbench,
    },
    Verb {
        name: "filebench",
        usage: "filebench IP [--size BYTES | --file PATH] [--json]",
        help: "benchmark protocol 171: send a file to a peer (which keeps it) and report Mbit/s",
        run: super::bench_commands::filebench,
    },
    Verb {
        name: "relay",
        usage: "relay [--json]",
        help: "relay mesh (when a relay server runs here): servers, users, forwarding counters",
        run: relay,
    },
    Verb {
        name: "quit",
        usage: "quit",
        help: "stop the node (console only)",
        run: quit,
    },
];

/// Splits a command line into words; double quotes group words (`send 1.2.3.4 "hi there"`).
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(cur);
    }
    words
}

/// Runs one command given as words (`["ping", "198.18.0.1"]`).
pub fn execute(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let Some(verb) = args.first() else {
        return Ok(Outcome::Continue);
    };
    match VERBS.iter().find(|v| v.name == verb.as_str()) {
        Some(v) => (v.run)(h, &args[1..], out),
        None => Err(CommandError(format!(
            "unknown command '{verb}'; 'help' lists the commands"
        ))),
    }
}

fn help(_: &NodeHandle, _: &[String], out: &mut dyn Write) -> CommandResult {
    for v in VERBS {
        writeln!(out, "  {:<44} {}", v.usage, v.help)?;
    }
    Ok(Outcome::Continue)
}

fn relay(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let provider = h
        .lock()
        .status_providers
        .iter()
        .find(|(n, _)| *n == "relay")
        .map(|(_, p)| p.clone());
    let Some(p) = provider else {
        return Err(CommandError(
            "no relay server runs on this node (start one with 'tunstack relay serve')".into(),
        ));
    };
    let v = p();
    if args.iter().any(|a| a == "--json") {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )?;
    } else {
        out.write_all(crate::relay::run::format_status(&v).as_bytes())?;
    }
    Ok(Outcome::Continue)
}

fn quit(h: &NodeHandle, _: &[String], _: &mut dyn Write) -> CommandResult {
    h.stop();
    Ok(Outcome::Quit)
}

/// Collects the whole node's counters as JSON.
pub fn status_json(h: &NodeHandle) -> serde_json::Value {
    h.with(|node, now| {
        let cfg = node.stack.ip.config();
        serde_json::json!({
            "node": {
                "name": node.name,
                "tun": node.tun_name,
                "addr": cfg.addr.to_string(),
                "prefix_len": cfg.prefix_len,
                "mtu": cfg.mtu,
                "uptime_s": node.uptime(now).as_secs_f64(),
            },
            "ip": node.stack.ip.counters(),
            "tx": node.stack.tx.counters(),
            "tcp": node.stack.tcp.counters(),
            "tcp_connections": node.stack.tcp.connection_count(),
            "msg": node.stack.msg.counters(),
            "file": node.stack.file.counters(),
            "inbox": { "messages": node.messaging.inbox.last_index(), "write_errors": node.messaging.inbox.write_errors },
            "device": node.device,
            "impair": {
                "in": node.impair_in.as_ref().map(|i| serde_json::json!({
                    "spec": i.spec().to_string(), "counters": i.counters(), "rules": i.rules().counters() })),
                "out": node.impair_out.as_ref().map(|i| serde_json::json!({
                    "spec": i.spec().to_string(), "counters": i.counters(), "rules": i.rules().counters() })),
            },
        })
    })
}

fn status(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let v = status_json(h);
    if args.iter().any(|a| a == "--json") {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )?;
        return Ok(Outcome::Continue);
    }
    let n = &v["node"];
    let ip = &v["ip"];
    let icmp = &ip["icmp"];
    let tx = &v["tx"];
    let dev = &v["device"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "node {}  {}/{} on {}  mtu {}  up {:.1}s",
        n["name"].as_str().unwrap_or("?"),
        n["addr"].as_str().unwrap_or("?"),
        n["prefix_len"],
        n["tun"].as_str().unwrap_or("?"),
        n["mtu"],
        n["uptime_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        s,
        "ip      in {} pkts / {} bytes, delivered {}, fragments {} (reassembled {})",
        ip["packets_in"], ip["bytes_in"], ip["delivered"], ip["fragments_in"], ip["reassembled"]
    );
    let drops: Vec<String> = ip["drops"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "drops   {}",
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(" ")
        }
    );
    let _ = writeln!(
        s,
        "icmp    echo in {} / replies out {}; pings out {} / replies in {}; unreachable in {} out {}; rate-limited {}",
        icmp["echo_requests_in"],
        icmp["echo_replies_out"],
        icmp["echo_requests_out"],
        icmp["echo_replies_in"],
        icmp["unreachable_in"],
        icmp["unreachable_out"],
        icmp["errors_rate_limited"]
    );
    let _ = writeln!(
        s,
        "tx      out {} pkts / {} bytes, fragmented {} ({} fragments), queue full {}",
        tx["packets_out"], tx["bytes_out"], tx["fragmented"], tx["fragments_out"], tx["queue_full"]
    );
    let tcp = &v["tcp"];
    let _ = writeln!(
        s,
        "tcp     {} connections; opens active {} passive {}; resets in {} out {}; retransmits {}",
        v["tcp_connections"],
        tcp["active_opens"],
        tcp["passive_opens"],
        tcp["resets_in"],
        tcp["resets_out"],
        tcp["retransmits"]
    );
    let msg = &v["msg"];
    let _ = writeln!(
        s,
        "msg     sent {} delivered {} failed {} received {}; retransmits {} duplicates {}; inbox {}",
        msg["messages_queued"],
        msg["messages_delivered"],
        msg["messages_failed"],
        msg["messages_received"],
        msg["retransmits"],
        msg["duplicates"],
        v["inbox"]["messages"]
    );
    let file = &v["file"];
    let _ = writeln!(
        s,
        "file    completed {} failed {} refused {}; DATA out {} in {}, retransmits {}; path MTU lowered {} (re-chunked {}, black holes {})",
        file["completed"],
        file["failed"],
        file["refused"],
        file["data_out"],
        file["data_in"],
        file["retransmits"],
        file["pmtu_lowered"],
        file["rechunked"],
        file["pmtu_black_holes"]
    );
    let _ = writeln!(
        s,
        "device  read {} pkts, written {} pkts, write drops {}, write errors {}",
        dev["packets_read"], dev["packets_written"], dev["write_drops"], dev["write_errors"]
    );
    if dev["offload_in"].as_u64().unwrap_or(0) + dev["offload_out"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            s,
            "offload TCP super-segments read {}, written {} (carrying {} segments), bad headers {}",
            dev["offload_in"], dev["offload_out"], dev["offload_out_segments"], dev["offload_bad"]
        );
    }
    for dir in ["in", "out"] {
        let i = &v["impair"][dir];
        if !i.is_null() {
            let c = &i["counters"];
            let _ = writeln!(
                s,
                "impair  {dir:<3} {}: {} pkts, dropped {}, duplicated {}, reordered {}, corrupted {}, delayed {}, overflow {}",
                i["spec"].as_str().unwrap_or(""),
                c["packets"],
                c["dropped"],
                c["duplicated"],
                c["reordered"],
                c["corrupted"],
                c["delayed"],
                c["queue_overflow"]
            );
        }
    }
    out.write_all(s.as_bytes())?;
    Ok(Outcome::Continue)
}

pub(super) fn parse_ip(s: &str) -> Result<Ipv4Addr, CommandError> {
    s.parse()
        .map_err(|_| CommandError(format!("'{s}' is not an IPv4 address")))
}

/// The value after a flag (`args[*i]`), parsed; moves `i` past it.
pub(super) fn parse_flag<T: std::str::FromStr>(
    args: &[String],
    i: &mut usize,
    what: &str,
) -> Result<T, CommandError> {
    *i += 1;
    args.get(*i)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CommandError(format!("{} needs a valid {what}", args[*i - 1])))
}

fn ping(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let mut dst: Option<Ipv4Addr> = None;
    let (mut count, mut size, mut interval) = (4u32, 56usize, 1.0f64);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-c" => count = parse_flag(args, &mut i, "count")?,
            "-s" => size = parse_flag(args, &mut i, "size in bytes")?,
            "-i" => interval = parse_flag(args, &mut i, "interval in seconds")?,
            a => {
                dst = Some(
                    a.parse()
                        .map_err(|_| CommandError(format!("'{a}' is not an IPv4 address")))?,
                )
            }
        }
        i += 1;
    }
    let dst =
        dst.ok_or_else(|| CommandError("usage: ping IP [-c COUNT] [-s SIZE] [-i SECONDS]".into()))?;
    if size > 65_507 {
        return Err(CommandError("size must be at most 65507 bytes".into()));
    }
    let count = count.clamp(1, 100_000);
    let interval = Duration::from_secs_f64(interval.clamp(0.001, 60.0));
    writeln!(out, "PING {dst}: {size} data bytes")?;
    let (mut received, mut rtts) = (0u32, Vec::new());
    // Drain stale events from an earlier ping.
    h.with(|n, _| while n.stack.ip.poll_ping_event().is_some() {});
    let mut outstanding = 0u32;
    for k in 0..count {
        let sent = h.with(|n, now| {
            let stack = &mut n.stack;
            stack.ip.ping(now, dst, size, &mut stack.tx)
        });
        match sent {
            Ok(_) => outstanding += 1,
            Err(e) => writeln!(out, "send failed: {e}")?,
        }
        let wait = if k + 1 == count {
            Duration::from_secs(5)
        } else {
            interval
        };
        let deadline = std::time::Instant::now() + wait;
        while outstanding > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ev = h.wait(Some(left), |n, _| n.stack.ip.poll_ping_event());
            match ev {
                Some(PingEvent::Reply(r)) => {
                    outstanding -= 1;
                    received += 1;
                    let ms = r.rtt.as_secs_f64() * 1000.0;
                    rtts.push(ms);
                    writeln!(
                        out,
                        "{} bytes from {}: icmp_seq={} ttl={} time={:.3} ms",
                        r.bytes + 8,
                        r.from,
                        r.seq,
                        r.ttl,
                        ms
                    )?;
                    out.flush()?;
                }
                Some(PingEvent::Timeout { seq, .. }) => {
                    outstanding -= 1;
                    writeln!(out, "no reply for icmp_seq={seq}")?;
                }
                None => break,
            }
        }
        if h.is_stopping() {
            break;
        }
        let rest = deadline.saturating_duration_since(std::time::Instant::now());
        if k + 1 < count && !rest.is_zero() {
            std::thread::sleep(rest);
        }
    }
    let loss = 100.0 * (count - received) as f64 / count as f64;
    writeln!(out, "--- {dst} ping statistics ---")?;
    writeln!(
        out,
        "{count} packets transmitted, {received} received, {loss:.0}% packet loss"
    )?;
    if !rtts.is_empty() {
        let min = rtts.iter().cloned().fold(f64::MAX, f64::min);
        let max = rtts.iter().cloned().fold(0.0, f64::max);
        let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
        writeln!(out, "rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms")?;
    }
    if received == 0 {
        return Err(CommandError(format!("no replies from {dst}")));
    }
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_split_words_quotes() {
        assert_eq!(
            split_words(r#"send 1.2.3.4 "hi there"  x"#),
            vec!["send", "1.2.3.4", "hi there", "x"]
        );
        assert_eq!(split_words("  "), Vec::<String>::new());
        assert_eq!(split_words(r#"send a """#), vec!["send", "a", ""]);
    }
}
