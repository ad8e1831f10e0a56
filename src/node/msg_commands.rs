//! Commands for protocol 170: `send`, `messages`, `peers`, `discover`.

use super::clock::rfc3339_now;
use super::commands::{parse_ip, CommandError, CommandResult, Outcome};
use super::messaging::SendOutcome;
use super::NodeHandle;
use crate::msg::Message;
use crate::time::Duration;
use std::io::Write;

/// `send IP TEXT... [-c CHANNEL] [--no-wait]`: sends a message and, unless told not to, waits
/// for the outcome.
pub fn send(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let mut channel = "general".to_string();
    let mut wait = true;
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-c" | "--channel" => {
                i += 1;
                channel = args
                    .get(i)
                    .cloned()
                    .ok_or_else(|| CommandError("-c needs a channel name".into()))?;
            }
            "--no-wait" => wait = false,
            w => words.push(w.to_string()),
        }
        i += 1;
    }
    if words.len() < 2 {
        return Err(CommandError(
            "usage: send IP TEXT... [-c CHANNEL] [--no-wait]".into(),
        ));
    }
    let dst = parse_ip(&words[0])?;
    let content = words[1..].join(" ");
    let started = std::time::Instant::now();
    let id = h.with(|n, now| {
        let msg = Message {
            content,
            sender: n.name.clone(),
            channel_id: channel,
            timestamp: rfc3339_now(),
            is_file: false,
        };
        let id = n.stack.msg.send_message(now, dst, msg)?;
        n.messaging.track(id);
        Ok::<_, crate::msg::MsgError>(id)
    });
    let id = id.map_err(|e| CommandError(format!("cannot send to {dst}: {e}")))?;
    if !wait {
        writeln!(out, "queued message {} to {dst}", id.0)?;
        return Ok(Outcome::Continue);
    }
    let outcome = h.wait(Some(Duration::from_secs(120)), |n, _| {
        match n.messaging.outcome(id) {
            Some(SendOutcome::Pending) | None => None,
            Some(o) => Some(o.clone()),
        }
    });
    match outcome {
        Some(SendOutcome::Delivered { to }) => {
            writeln!(
                out,
                "delivered to {to} (message {}) in {:.1} ms",
                id.0,
                started.elapsed().as_secs_f64() * 1000.0
            )?;
            Ok(Outcome::Continue)
        }
        Some(SendOutcome::Failed { to, reason }) => {
            Err(CommandError(format!("message to {to} failed: {reason}")))
        }
        _ => Err(CommandError(format!(
            "no outcome for message {} yet; still trying",
            id.0
        ))),
    }
}

/// `messages [--json] [--follow] [--since N]`: the inbox; `--follow` keeps streaming new ones.
pub fn messages(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let json = args.iter().any(|a| a == "--json");
    let follow = args.iter().any(|a| a == "--follow" || a == "-f");
    let mut after: u64 = match args.iter().position(|a| a == "--since") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| CommandError("--since needs a message index".into()))?,
        None => 0,
    };
    loop {
        let batch: Vec<_> = h.with(|n, _| n.messaging.inbox.since(after).cloned().collect());
        for e in &batch {
            if json {
                writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default())?;
            } else {
                writeln!(
                    out,
                    "#{:<5} {}  {} ({}) [{}]{}: {}",
                    e.index,
                    e.msg.timestamp,
                    e.from,
                    e.msg.sender,
                    e.msg.channel_id,
                    if e.msg.is_file { " [file]" } else { "" },
                    e.msg.content
                )?;
            }
            after = e.index;
        }
        out.flush()?;
        if !follow {
            if batch.is_empty() && !json {
                writeln!(out, "no messages")?;
            }
            return Ok(Outcome::Continue);
        }
        // Wait for something new; the write fails once the reader has gone.
        h.wait(Some(Duration::from_secs(1)), |n, _| {
            (n.messaging.inbox.last_index() > after).then_some(())
        });
        if h.is_stopping() {
            return Ok(Outcome::Continue);
        }
    }
}

pub fn peers(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let peers = h.with(|n, now| n.stack.msg.peers(now));
    if args.iter().any(|a| a == "--json") {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&peers).unwrap_or_default()
        )?;
        return Ok(Outcome::Continue);
    }
    if peers.is_empty() {
        writeln!(
            out,
            "no peers yet (add one with --peer IP, or run 'discover')"
        )?;
        return Ok(Outcome::Continue);
    }
    writeln!(
        out,
        "{:<16} {:<16} {:<9} {:>9} {:>10} {:>8}",
        "ADDRESS", "NAME", "STATE", "RTT", "LAST SEEN", "PENDING"
    )?;
    for p in peers {
        writeln!(
            out,
            "{:<16} {:<16} {:<9} {:>9} {:>10} {:>8}",
            p.addr.to_string(),
            p.name,
            format!("{:?}", p.state).to_lowercase(),
            p.rtt_ms
                .map(|r| format!("{r:.2} ms"))
                .unwrap_or_else(|| "-".into()),
            p.last_seen_ms_ago
                .map(|t| format!("{:.1}s ago", t as f64 / 1000.0))
                .unwrap_or_else(|| "never".into()),
            p.pending
        )?;
    }
    Ok(Outcome::Continue)
}

/// `discover [CIDR]`: probes a range (default: the node's own subnet) at a bounded rate.
pub fn discover(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let (net, prefix) = match args.first() {
        Some(c) => {
            let (a, p) = c.split_once('/').ok_or_else(|| {
                CommandError(format!("'{c}': expected a range such as 198.18.0.0/24"))
            })?;
            let p: u8 = p
                .parse()
                .ok()
                .filter(|p| (16..=32).contains(p))
                .ok_or_else(|| {
                    CommandError(
                        "prefix length must be from 16 to 32 (at most 65,536 probes)".into(),
                    )
                })?;
            (parse_ip(a)?, p)
        }
        None => h.with(|n, _| {
            let c = n.stack.ip.config();
            (c.addr, c.prefix_len.max(16))
        }),
    };
    let (rate, count) = h.with(|n, now| {
        n.stack.msg.discover(now, net, prefix);
        (
            n.stack.msg.config().discover_rate,
            1u64 << (32 - prefix as u32),
        )
    });
    writeln!(
        out,
        "probing {count} addresses in {net}/{prefix} at {rate}/s (about {:.0} s); 'peers' shows who answered",
        count as f64 / rate.max(1) as f64
    )?;
    Ok(Outcome::Continue)
}
