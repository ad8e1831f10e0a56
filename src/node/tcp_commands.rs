//! `sockets`: every TCP connection, like `ss -ti`; with `--events`, each connection's timeline
//! and the timelines of the connections that closed last.

use super::commands::{CommandResult, Outcome};
use super::NodeHandle;
use std::io::Write;

pub fn sockets(h: &NodeHandle, args: &[String], out: &mut dyn Write) -> CommandResult {
    let events = args.iter().any(|a| a == "--events");
    let (socks, closed, services) = h.with(|n, _| {
        let tcp = &n.stack.tcp;
        if events {
            (
                tcp.sockets_with_events(),
                tcp.closed_timelines(),
                n.services.clone(),
            )
        } else {
            (tcp.sockets(), Vec::new(), n.services.clone())
        }
    });
    if args.iter().any(|a| a == "--json") {
        let mut v = serde_json::json!({ "services": services, "connections": socks });
        if events {
            v["closed"] = serde_json::json!(closed);
        }
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )?;
        return Ok(Outcome::Continue);
    }
    if !services.is_empty() {
        writeln!(out, "serving: {}", services.join(" "))?;
    }
    writeln!(
        out,
        "{:<12} {:<22} {:<22} {:>8} {:>8}",
        "STATE", "LOCAL", "PEER", "RECV-Q", "SEND-Q"
    )?;
    for s in socks {
        writeln!(
            out,
            "{:<12} {:<22} {:<22} {:>8} {:>8}",
            s.state.to_string(),
            s.local,
            s.remote,
            s.rx_queue,
            s.tx_queue
        )?;
        if s.state.to_string() == "LISTEN" {
            continue;
        }
        writeln!(
            out,
            "    {} mss:{} wscale:{},{} sack:{} ts:{} cwnd:{} ssthresh:{} rtt:{:.3}/{:.3} ms rto:{} ms \
             inflight:{} retrans:{} snd_wnd:{} rcv_wnd:{} sent:{} received:{}{}",
            format!("{:?}", s.congestion).to_lowercase(),
            s.mss,
            s.snd_wscale,
            s.rcv_wscale,
            s.sack,
            s.timestamps,
            s.cwnd,
            s.ssthresh,
            s.srtt_us as f64 / 1000.0,
            s.rttvar_us as f64 / 1000.0,
            s.rto_ms,
            s.bytes_in_flight,
            s.retransmits,
            s.snd_wnd,
            s.rcv_wnd,
            s.bytes_sent,
            s.bytes_received,
            if s.in_recovery { " recovering" } else { "" }
        )?;
        for e in s.events.iter().flatten() {
            writeln!(out, "      {e}")?;
        }
    }
    if events {
        writeln!(out, "recently closed ({}, oldest first):", closed.len())?;
        for c in &closed {
            let err = c.error.map(|e| format!(" ({e})")).unwrap_or_default();
            writeln!(
                out,
                "  {} -> {} closed at {:.3} ms{err}",
                c.local,
                c.remote,
                c.closed_at_us as f64 / 1000.0
            )?;
            if c.overwritten > 0 {
                writeln!(
                    out,
                    "      ... {} earlier events overwritten",
                    c.overwritten
                )?;
            }
            for e in &c.events {
                writeln!(out, "      {e}")?;
            }
        }
    }
    Ok(Outcome::Continue)
}
