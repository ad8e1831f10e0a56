//! Commands for protocol 171: `file` (send, with progress) and `transfers`.

use super::commands::{CommandError, CommandResult, Outcome};
use super::files::TransferOutcome;
use super::NodeHandle;
use crate::time::Duration;
use std::io::Write;
use std::net::Ipv4Addr;

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `file IP[,IP...] PATH [-c CHANNEL] [--progress] [--no-wait]`: offers a file to one or more
/// nodes and waits until each transfer ends. `--progress` draws a bar (the console and a `ctl`
/// on a terminal ask for it).
pub fn file(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let mut channel = "general".to_string();
    let (mut progress, mut wait) = (false, true);
    let mut send_as: Option<String> = None;
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
            "--as" => {
                i += 1;
                send_as = Some(
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| CommandError("--as needs a file name".into()))?,
                );
            }
            "--progress" => progress = true,
            "--no-wait" => wait = false,
            w => words.push(w.to_string()),
        }
        i += 1;
    }
    if words.len() != 2 {
        return Err(CommandError(
            "usage: file IP[,IP...] PATH [--as NAME] [-c CHANNEL] [--no-wait]".into(),
        ));
    }
    let dsts: Vec<Ipv4Addr> = words[0]
        .split(',')
        .map(|a| {
            a.parse()
                .map_err(|_| CommandError(format!("'{a}' is not an IPv4 address")))
        })
        .collect::<Result<_, _>>()?;
    let path = std::path::Path::new(&words[1]);
    let path = std::fs::canonicalize(path)
        .map_err(|e| CommandError(format!("{}: {e}", path.display())))?;
    let source = path.to_string_lossy().into_owned();
    let mut ids = Vec::new();
    for dst in &dsts {
        // Hashing the file happens here, before the offer: it takes a moment for big files.
        let r = h.with(|n, now| {
            let sender = n.name.clone();
            n.stack
                .file
                .send_file_named(now, *dst, &source, send_as.as_deref(), &channel, &sender)
        });
        let id =
            r.map_err(|e| CommandError(format!("cannot send {} to {dst}: {e}", path.display())))?;
        writeln!(
            out,
            "offering {} to {dst} (transfer {})",
            path.display(),
            id.0
        )?;
        ids.push((id, *dst));
    }
    if !wait {
        return Ok(Outcome::Continue);
    }
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for (id, dst) in ids {
        loop {
            let done = h.wait(Some(Duration::from_millis(500)), |n, _| {
                n.files.outcome(id).cloned()
            });
            if let Some(o) = done {
                if progress {
                    writeln!(out)?;
                }
                match o {
                    TransferOutcome::Completed { bytes, sha256, .. } => {
                        let secs = started.elapsed().as_secs_f64().max(1e-6);
                        writeln!(
                            out,
                            "sent to {dst}: {} in {secs:.1} s ({}/s), sha256 {sha256}",
                            human(bytes as f64),
                            human(bytes as f64 / secs)
                        )?;
                    }
                    TransferOutcome::Failed { reason } => {
                        writeln!(out, "transfer to {dst} failed: {reason}")?;
                        failures.push(dst);
                    }
                }
                break;
            }
            if h.is_stopping() {
                return Err(CommandError("the node stopped".into()));
            }
            if progress {
                let info =
                    h.with(|n, now| n.stack.file.transfers(now).into_iter().find(|t| t.id == id));
                if let Some(t) = info {
                    let frac = if t.size == 0 {
                        1.0
                    } else {
                        t.bytes_done as f64 / t.size as f64
                    };
                    let filled = (frac * 30.0) as usize;
                    write!(
                        out,
                        "\r{dst} [{}{}] {:>3.0}% {} / {} {}/s   ",
                        "#".repeat(filled),
                        ".".repeat(30 - filled.min(30)),
                        frac * 100.0,
                        human(t.bytes_done as f64),
                        human(t.size as f64),
                        human(t.rate)
                    )?;
                    out.flush()?;
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(Outcome::Continue)
    } else {
        Err(CommandError(format!(
            "{} of the transfers failed",
            failures.len()
        )))
    }
}

pub fn transfers(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let list = h.with(|n, now| n.stack.file.transfers(now));
    if args.iter().any(|a| a == "--json") {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        )?;
        return Ok(Outcome::Continue);
    }
    if list.is_empty() {
        writeln!(out, "no transfers in progress")?;
        return Ok(Outcome::Continue);
    }
    writeln!(
        out,
        "{:<18} {:<8} {:<16} {:<24} {:>10} {:>6} {:>12} STATE",
        "ID", "DIR", "PEER", "NAME", "SIZE", "DONE", "RATE"
    )?;
    for t in list {
        let pct = if t.size == 0 {
            100.0
        } else {
            100.0 * t.bytes_done as f64 / t.size as f64
        };
        writeln!(
            out,
            "{:<18} {:<8} {:<16} {:<24} {:>10} {:>5.1}% {:>10}/s {}",
            format!("{:016x}", t.id.0),
            format!("{:?}", t.direction).to_lowercase(),
            t.peer.to_string(),
            t.name,
            human(t.size as f64),
            pct,
            human(t.rate),
            t.state
        )?;
    }
    Ok(Outcome::Continue)
}
