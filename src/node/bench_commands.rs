//! Benchmark commands for protocols 170 and 171: `msgbench` (acknowledged messages per second
//! and queue-to-acknowledgement latency) and `filebench` (file throughput). Both run on the
//! caller's thread against a live node, like `send` and `file`, and fail loudly when anything
//! they sent did not arrive: a benchmark that counts failures as speed measures nothing.

use super::clock::rfc3339_now;
use super::commands::{parse_flag, parse_ip, CommandError, CommandResult, Outcome};
use super::files::TransferOutcome;
use super::messaging::SendOutcome;
use super::NodeHandle;
use crate::msg::{Message, MessageId};
use crate::time::Duration;
use std::collections::VecDeque;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Instant as WallInstant;

const MSGBENCH_USAGE: &str =
    "usage: msgbench IP [--count N] [--size BYTES] [--window W] [--timeout SECS] [--json]";
const FILEBENCH_USAGE: &str =
    "usage: filebench IP [--size BYTES | --file PATH] [--timeout SECS] [--keep] [--json]";

/// A byte count with an optional K, M or G suffix (powers of 1024).
pub(super) fn parse_bytes(args: &[String], i: &mut usize) -> Result<u64, CommandError> {
    *i += 1;
    let s = args
        .get(*i)
        .ok_or_else(|| CommandError(format!("{} needs a size in bytes", args[*i - 1])))?;
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            CommandError(format!(
                "'{s}' is not a size (a number, optionally with K, M or G)"
            ))
        })
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct MsgBench {
    dst: Ipv4Addr,
    count: u64,
    size: usize,
    window: usize,
    timeout: std::time::Duration,
}

/// What a run of messages came to.
#[derive(Default)]
struct MsgRun {
    delivered: u64,
    failed: u64,
    first_failure: Option<String>,
    /// Queue-to-acknowledgement times in microseconds, in completion order.
    latencies_us: Vec<f64>,
    secs: f64,
    timed_out: bool,
}

/// Queues `count` messages to `dst`, never more than `window` undelivered, and waits for every
/// outcome. The latency of a message runs from the moment it is queued to the moment this
/// thread sees its acknowledgement (after the turn of the event loop that processed it).
fn run_messages(h: &NodeHandle, b: &MsgBench, warmup: bool) -> Result<MsgRun, CommandError> {
    let content = "x".repeat(b.size);
    let mut run = MsgRun {
        latencies_us: Vec::with_capacity(b.count.min(10_000_000) as usize),
        ..MsgRun::default()
    };
    let mut queue: VecDeque<(MessageId, WallInstant)> = VecDeque::with_capacity(b.window);
    let mut sent = 0u64;
    let mut send_error: Option<String> = None;
    let started = WallInstant::now();
    let deadline = started + b.timeout;
    loop {
        let left = deadline.saturating_duration_since(WallInstant::now());
        if left.is_zero() {
            run.timed_out = true;
            break;
        }
        let slice = Duration::from_micros(left.as_micros().min(100_000) as u64);
        // One lock per turn of the event loop: collect what completed, top the window up.
        let done = h.wait(Some(slice), |n, now| {
            let t = WallInstant::now();
            let mut progressed = false;
            while let Some(&(id, at)) = queue.front() {
                match n.messaging.outcome(id) {
                    Some(SendOutcome::Pending) => break,
                    Some(SendOutcome::Delivered { .. }) => {
                        run.delivered += 1;
                        run.latencies_us.push((t - at).as_secs_f64() * 1e6);
                    }
                    Some(SendOutcome::Failed { reason, .. }) => {
                        run.failed += 1;
                        run.first_failure.get_or_insert_with(|| reason.clone());
                    }
                    None => {
                        run.failed += 1;
                        run.first_failure.get_or_insert_with(|| {
                            "outcome forgotten (too many messages tracked)".into()
                        });
                    }
                }
                queue.pop_front();
                progressed = true;
            }
            if run.failed == 0 && send_error.is_none() && sent < b.count && queue.len() < b.window {
                let timestamp = rfc3339_now();
                let sender = n.name.clone();
                while sent < b.count && queue.len() < b.window {
                    let msg = Message {
                        content: content.clone(),
                        sender: sender.clone(),
                        channel_id: "bench".into(),
                        timestamp: timestamp.clone(),
                        is_file: false,
                    };
                    match n.stack.msg.send_message(now, b.dst, msg) {
                        Ok(id) => {
                            n.messaging.track(id);
                            queue.push_back((id, WallInstant::now()));
                            sent += 1;
                            progressed = true;
                        }
                        Err(e) => {
                            send_error = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            if queue.is_empty() && (sent == b.count || run.failed > 0 || send_error.is_some()) {
                return Some(true);
            }
            // Returning wakes the event loop, so what was just queued leaves in this turn.
            progressed.then_some(false)
        });
        if done == Some(true) {
            break;
        }
        if h.is_stopping() {
            return Err(CommandError("the node stopped".into()));
        }
    }
    run.secs = started.elapsed().as_secs_f64();
    let what = if warmup {
        "warm-up message"
    } else {
        "messages"
    };
    if let Some(e) = send_error {
        return Err(CommandError(format!(
            "cannot queue {what} to {}: {e}",
            b.dst
        )));
    }
    if run.failed > 0 {
        return Err(CommandError(format!(
            "{} of {sent} {what} to {} failed (first: {}); {} delivered",
            run.failed,
            b.dst,
            run.first_failure.as_deref().unwrap_or("?"),
            run.delivered
        )));
    }
    if run.timed_out {
        return Err(CommandError(format!(
            "time limit of {:.0} s reached: {} of {} {what} to {} delivered, {} still pending",
            b.timeout.as_secs_f64(),
            run.delivered,
            b.count,
            b.dst,
            queue.len()
        )));
    }
    Ok(run)
}

/// `msgbench IP [--count N] [--size BYTES] [--window W] [--timeout SECS] [--json]`.
pub fn msgbench(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let (mut count, mut size, mut window, mut timeout) = (10_000u64, 64u64, 1024usize, 60.0f64);
    let mut json = false;
    let mut dst = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-n" | "--count" => count = parse_flag(args, &mut i, "message count")?,
            "-s" | "--size" => size = parse_bytes(args, &mut i)?,
            "-w" | "--window" => window = parse_flag(args, &mut i, "number of messages")?,
            "--timeout" => timeout = parse_flag(args, &mut i, "number of seconds")?,
            "--json" => json = true,
            a if dst.is_none() && !a.starts_with('-') => dst = Some(parse_ip(a)?),
            a => return Err(CommandError(format!("unexpected '{a}'; {MSGBENCH_USAGE}"))),
        }
        i += 1;
    }
    let dst = dst.ok_or_else(|| CommandError(MSGBENCH_USAGE.into()))?;
    if !(1..=10_000_000).contains(&count) {
        return Err(CommandError("--count must be from 1 to 10,000,000".into()));
    }
    if !(timeout > 0.0 && timeout <= 3600.0) {
        return Err(CommandError(
            "--timeout must be from 0 to 3600 seconds".into(),
        ));
    }
    let (max_len, max_pending, max_total, pending_now) = h.with(|n, _| {
        let c = n.stack.msg.config();
        (
            c.max_message_len,
            c.max_pending,
            c.max_pending_total,
            n.stack.msg.pending(),
        )
    });
    if size > max_len as u64 {
        return Err(CommandError(format!(
            "--size must be at most {max_len} bytes (the largest message)"
        )));
    }
    let room = max_pending.min(max_total.saturating_sub(pending_now));
    if window == 0 || window > room {
        return Err(CommandError(format!(
            "--window must be from 1 to {room} (undelivered messages allowed for one peer now)"
        )));
    }
    let mut bench = MsgBench {
        dst,
        count: 1,
        size: size as usize,
        window: 1,
        timeout: std::time::Duration::from_secs_f64(timeout),
    };
    // One message first, untimed: it makes the nodes greet each other (HELLO) and seeds the RTT.
    run_messages(h, &bench, true)?;
    bench.count = count;
    bench.window = window;
    let before = h.with(|n, _| n.stack.msg.counters().clone());
    let mut run = run_messages(h, &bench, false)?;
    let after = h.with(|n, _| n.stack.msg.counters().clone());
    run.latencies_us
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let lat = &run.latencies_us;
    let rate = run.delivered as f64 / run.secs.max(1e-9);
    let (median, p99, max) = (
        percentile(lat, 50.0),
        percentile(lat, 99.0),
        lat.last().copied().unwrap_or(0.0),
    );
    let retransmits = after.retransmits - before.retransmits;
    let packets_out = after.packets_out - before.packets_out;
    let acks_in = after.acks_in - before.acks_in;
    if json {
        let v = serde_json::json!({
            "value": (rate * 10.0).round() / 10.0,
            "unit": "msg/s",
            "messages": run.delivered,
            "size_bytes": size,
            "window": window,
            "secs": run.secs,
            "latency_median_us": median,
            "latency_p99_us": p99,
            "latency_max_us": max,
            "retransmits": retransmits,
            "packets_out": packets_out,
            "acks_in": acks_in,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "msgbench to {dst}: {} messages of {size} bytes, window {window}, in {:.3} s",
            run.delivered, run.secs
        )?;
        writeln!(out, "rate     {rate:.0} acknowledged messages/s")?;
        writeln!(
            out,
            "latency  median {median:.1} µs, p99 {p99:.1} µs, max {max:.1} µs (queued to acknowledged)"
        )?;
        writeln!(
            out,
            "packets  {packets_out} out, {acks_in} ACKs in, {retransmits} retransmits"
        )?;
    }
    Ok(Outcome::Continue)
}

/// Writes `size` bytes that do not compress (xorshift), so the file is a fair sample.
fn write_bench_file(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ size;
    let mut block = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        for c in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n])?;
        left -= n as u64;
    }
    w.flush()
}

/// `filebench IP [--size BYTES | --file PATH] [--timeout SECS] [--keep] [--json]`: sends a file
/// (by default a fresh one of `--size` bytes in the node's data directory, deleted afterwards)
/// and reports the throughput from the offer to the receiver's confirmation that the file is
/// stored and verified (DONE). Hashing the file before the offer is timed separately.
pub fn filebench(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let (mut size, mut timeout) = (100u64 << 20, 120.0f64);
    let (mut json, mut keep) = (false, false);
    let mut file: Option<String> = None;
    let mut dst = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-s" | "--size" => size = parse_bytes(args, &mut i)?,
            "--file" => {
                i += 1;
                file = Some(
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| CommandError("--file needs a path".into()))?,
                );
            }
            "--timeout" => timeout = parse_flag(args, &mut i, "number of seconds")?,
            "--keep" => keep = true,
            "--json" => json = true,
            a if dst.is_none() && !a.starts_with('-') => dst = Some(parse_ip(a)?),
            a => return Err(CommandError(format!("unexpected '{a}'; {FILEBENCH_USAGE}"))),
        }
        i += 1;
    }
    let dst = dst.ok_or_else(|| CommandError(FILEBENCH_USAGE.into()))?;
    if !(timeout > 0.0 && timeout <= 3600.0) {
        return Err(CommandError(
            "--timeout must be from 0 to 3600 seconds".into(),
        ));
    }
    let (path, made) = match file {
        Some(p) => {
            let p = std::fs::canonicalize(&p).map_err(|e| CommandError(format!("{p}: {e}")))?;
            (p, false)
        }
        None => {
            if size == 0 || size > 64 << 30 {
                return Err(CommandError("--size must be from 1 byte to 64G".into()));
            }
            let dir = h.lock().data_dir.clone().unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&dir)
                .map_err(|e| CommandError(format!("{}: {e}", dir.display())))?;
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = dir.join(format!("filebench-{}-{n}.bin", std::process::id()));
            write_bench_file(&p, size)
                .map_err(|e| CommandError(format!("cannot write {}: {e}", p.display())))?;
            (p, true)
        }
    };
    let result = time_transfer(h, dst, &path, timeout);
    if made && !keep {
        let _ = std::fs::remove_file(&path);
    }
    let r = result?;
    let mbit = r.bytes as f64 * 8.0 / r.secs.max(1e-9) / 1e6;
    if json {
        let v = serde_json::json!({
            "value": (mbit * 10.0).round() / 10.0,
            "unit": "Mbit/s",
            "bytes": r.bytes,
            "secs": r.secs,
            "hash_secs": r.hash_secs,
            "retransmits": r.retransmits,
            "timeouts": r.timeouts,
            "data_packets": r.data_packets,
            "received_as": r.received_as,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "filebench to {dst}: {} bytes in {:.3} s = {mbit:.1} Mbit/s (hashing before the offer: {:.3} s)",
            r.bytes, r.secs, r.hash_secs
        )?;
        writeln!(
            out,
            "packets  {} data, {} retransmitted, {} timeouts; stored by the receiver as {}",
            r.data_packets, r.retransmits, r.timeouts, r.received_as
        )?;
    }
    Ok(Outcome::Continue)
}

struct FileRun {
    bytes: u64,
    secs: f64,
    hash_secs: f64,
    retransmits: u64,
    timeouts: u64,
    data_packets: u64,
    received_as: String,
}

fn time_transfer(
    h: &NodeHandle,
    dst: Ipv4Addr,
    path: &std::path::Path,
    timeout: f64,
) -> Result<FileRun, CommandError> {
    let source = path.to_string_lossy().into_owned();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "filebench.bin".into());
    let hash_start = WallInstant::now();
    let (id, before) = h.with(|n, now| {
        let sender = n.name.clone();
        let before = n.stack.file.counters().clone();
        let id = n
            .stack
            .file
            .send_file_named(now, dst, &source, Some(&name), "bench", &sender);
        (id, before)
    });
    let id = id.map_err(|e| CommandError(format!("cannot send {source} to {dst}: {e}")))?;
    let started = WallInstant::now();
    let hash_secs = (started - hash_start).as_secs_f64();
    let deadline = started + std::time::Duration::from_secs_f64(timeout);
    loop {
        let left = deadline.saturating_duration_since(WallInstant::now());
        if left.is_zero() {
            h.with(|n, _| n.stack.file.cancel(id));
            return Err(CommandError(format!(
                "time limit of {timeout:.0} s reached; transfer to {dst} cancelled"
            )));
        }
        let slice = Duration::from_micros(left.as_micros().min(500_000) as u64);
        let done = h.wait(Some(slice), |n, _| {
            n.files
                .outcome(id)
                .cloned()
                .map(|o| (o, WallInstant::now(), n.stack.file.counters().clone()))
        });
        if let Some((o, at, after)) = done {
            return match o {
                TransferOutcome::Completed { bytes, path, .. } => Ok(FileRun {
                    bytes,
                    secs: (at - started).as_secs_f64(),
                    hash_secs,
                    retransmits: after.retransmits - before.retransmits,
                    timeouts: after.timeouts - before.timeouts,
                    data_packets: after.data_out - before.data_out,
                    received_as: path,
                }),
                TransferOutcome::Failed { reason } => {
                    Err(CommandError(format!("transfer to {dst} failed: {reason}")))
                }
            };
        }
        if h.is_stopping() {
            return Err(CommandError("the node stopped".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn test_bench_file_has_the_size_asked_for() {
        let p = std::env::temp_dir().join(format!("tunstack-fb-{}", std::process::id()));
        write_bench_file(&p, 100_003).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 100_003);
        assert_ne!(data[..8], data[8..16]);
        std::fs::remove_file(&p).unwrap();
    }
}
