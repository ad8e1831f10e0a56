//! Resource limits a node is started with (`--max-connections`, `--syn-backlog`, ...), and the
//! rate-limited log line for each limit that is hit.
//!
//! The sans-IO cores only count when a limit refuses something; the event loop calls
//! [`Node::check_limits`](super::Node::check_limits) every turn, which compares a handful of
//! counters with what it last reported and logs the increase, at most once per second per limit,
//! so a flood costs one line a second instead of one per packet.

use crate::stack::{Stack, StackConfig};
use crate::tcp::{Congestion, TcpConfig};
use crate::time::{Duration, Instant};

/// Overrides of the cores' defaults; `None` keeps the default (see docs/reliability.md).
#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub syn_backlog: Option<usize>,
    pub tcp_buffer_total: Option<usize>,
    pub reassembly_bytes: Option<usize>,
    pub max_peers: Option<usize>,
    pub max_pending: Option<usize>,
    pub max_transfers: Option<usize>,
    pub max_file_size: Option<u64>,
    /// TCP behaviour rather than a limit, carried here because every way of starting a node
    /// applies `Limits` (see docs/tcp.md, "Settings").
    pub tcp: TcpTuning,
}

/// TCP settings from the command line (`--congestion`, `--keepalive`, ...); `None` and `false`
/// keep the `TcpConfig` default.
#[derive(Clone, Debug, Default)]
pub struct TcpTuning {
    pub congestion: Option<Congestion>,
    pub time_wait: Option<Duration>,
    /// Idle time before keep-alive probes; setting it switches keep-alive on.
    pub keepalive: Option<Duration>,
    pub nodelay: bool,
    pub no_sack: bool,
    /// Receive and send buffer of each connection.
    pub buffer: Option<usize>,
}

impl TcpTuning {
    pub fn apply(&self, cfg: &mut TcpConfig) {
        if let Some(c) = self.congestion {
            cfg.congestion = c;
        }
        if let Some(d) = self.time_wait {
            cfg.time_wait = d;
        }
        if self.keepalive.is_some() {
            cfg.keepalive = self.keepalive;
        }
        if self.nodelay {
            cfg.nodelay = true;
        }
        if self.no_sack {
            cfg.sack = false;
        }
        if let Some(n) = self.buffer {
            // A size the user chose is kept: no autotuning past it.
            cfg.rx_buffer = n;
            cfg.rx_buffer_max = n;
            cfg.tx_buffer = n;
        }
    }
}

impl Limits {
    pub fn apply(&self, cfg: &mut StackConfig) {
        self.tcp.apply(&mut cfg.tcp);
        if let Some(n) = self.max_connections {
            cfg.tcp.max_connections = n;
        }
        if let Some(n) = self.syn_backlog {
            cfg.tcp.syn_backlog = n;
        }
        if let Some(n) = self.tcp_buffer_total {
            cfg.tcp.max_buffer_total = n;
        }
        if let Some(n) = self.reassembly_bytes {
            cfg.ip.reassembly.max_bytes = n;
        }
        if let Some(n) = self.max_peers {
            cfg.msg.max_peers = n;
        }
        if let Some(n) = self.max_pending {
            cfg.msg.max_pending_total = n;
            cfg.msg.max_pending = cfg.msg.max_pending.min(n);
        }
        if let Some(n) = self.max_transfers {
            cfg.file.max_transfers = n;
        }
        if let Some(n) = self.max_file_size {
            cfg.file.max_file_size = n;
        }
    }
}

/// Reads the counter that says a limit was hit.
type ReadCounter = fn(&Stack) -> u64;

/// The limits watched, with the counter that says each was hit: (name in the log, counter).
pub const WATCHED: &[(&str, ReadCounter)] = &[
    ("max-connections (tcp.cap_connections)", |s| {
        s.tcp.counters().cap_connections
    }),
    ("syn-backlog, SYN cookies sent (tcp.cap_syn_backlog)", |s| {
        s.tcp.counters().cap_syn_backlog
    }),
    ("tcp-buffer-total (tcp.cap_buffer_total)", |s| {
        s.tcp.counters().cap_buffer_total
    }),
    ("out-of-order segments not tracked (tcp.ooo_dropped)", |s| {
        s.tcp.counters().ooo_dropped
    }),
    ("challenge ACK rate (tcp.challenge_acks_limited)", |s| {
        s.tcp.counters().challenge_acks_limited
    }),
    ("reassembly-bytes (ip.drops.reassembly_limit)", |s| {
        s.ip.counters()
            .drops
            .get(crate::ip::DropReason::ReassemblyLimit)
    }),
    ("ICMP error rate (ip.icmp.errors_rate_limited)", |s| {
        s.ip.counters().icmp.errors_rate_limited
    }),
    ("transmit queue (tx.queue_full)", |s| {
        s.tx.counters().queue_full
    }),
    ("max-peers (msg.peer_table_full)", |s| {
        s.msg.counters().peer_table_full
    }),
    ("max-pending (msg.queue_full)", |s| {
        s.msg.counters().queue_full
    }),
    ("max-transfers (file.cap_transfers)", |s| {
        s.file.counters().cap_transfers
    }),
    ("max-file-size (file.cap_file_size)", |s| {
        s.file.counters().cap_file_size
    }),
];

/// Per limit: the counter value last reported and when.
#[derive(Debug)]
pub struct RateLimitedLog {
    interval: Duration,
    reported: Vec<u64>,
    at: Vec<Option<Instant>>,
    /// Lines logged so far (for tests and `status`).
    pub lines: u64,
}

impl RateLimitedLog {
    pub fn new(n: usize, interval: Duration) -> RateLimitedLog {
        RateLimitedLog {
            interval,
            reported: vec![0; n],
            at: vec![None; n],
            lines: 0,
        }
    }

    /// Returns the increase to report for limit `i` now (`Some`), or `None` if nothing new
    /// happened or the last report is too recent (the increase is then reported later).
    pub fn check(&mut self, now: Instant, i: usize, value: u64) -> Option<u64> {
        let delta = value.checked_sub(self.reported[i]).filter(|d| *d > 0)?;
        if self.at[i].is_some_and(|t| now.saturating_since(t) < self.interval) {
            return None;
        }
        self.reported[i] = value;
        self.at[i] = Some(now);
        self.lines += 1;
        Some(delta)
    }

    /// Checks every watched limit of `stack` and logs those hit since their last report.
    pub fn check_stack(&mut self, now: Instant, stack: &Stack) {
        for (i, (name, read)) in WATCHED.iter().enumerate() {
            if let Some(d) = self.check(now, i, read(stack)) {
                log::warn!(
                    "limit hit: {name}: {d} times since the last report, {} in total",
                    self.reported[i]
                );
            }
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> RateLimitedLog {
        RateLimitedLog::new(WATCHED.len(), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rate_limited_log_reports_deltas_once_per_interval() {
        let mut l = RateLimitedLog::new(2, Duration::from_secs(1));
        let t = Instant::from_millis;
        assert_eq!(l.check(t(0), 0, 0), None);
        assert_eq!(l.check(t(10), 0, 5), Some(5));
        // Within the second: held back, then reported as one sum.
        assert_eq!(l.check(t(500), 0, 9), None);
        assert_eq!(l.check(t(900), 0, 12), None);
        assert_eq!(l.check(t(1010), 0, 12), Some(7));
        // Limits are independent.
        assert_eq!(l.check(t(1020), 1, 1), Some(1));
        assert_eq!(l.check(t(1030), 1, 1), None);
        assert_eq!(l.lines, 3);
    }

    #[test]
    fn test_limits_apply_to_the_cores() {
        let mut cfg = StackConfig::new(std::net::Ipv4Addr::new(198, 18, 0, 2), 24, 1500, 1);
        let l = Limits {
            max_connections: Some(10),
            syn_backlog: Some(3),
            max_pending: Some(100),
            max_file_size: Some(1 << 20),
            reassembly_bytes: Some(65_536),
            ..Limits::default()
        };
        l.apply(&mut cfg);
        assert_eq!(cfg.tcp.max_connections, 10);
        assert_eq!(cfg.tcp.syn_backlog, 3);
        assert_eq!(cfg.msg.max_pending_total, 100);
        assert_eq!(cfg.msg.max_pending, 100);
        assert_eq!(cfg.file.max_file_size, 1 << 20);
        assert_eq!(cfg.ip.reassembly.max_bytes, 65_536);
        assert_eq!(cfg.file.max_transfers, 64);
        // No TCP tuning given: the defaults stay.
        let d = crate::tcp::TcpConfig::default();
        assert_eq!(cfg.tcp.congestion, d.congestion);
        assert_eq!(cfg.tcp.keepalive, None);
        assert!(cfg.tcp.sack && !cfg.tcp.nodelay);
    }

    #[test]
    fn test_tcp_tuning_applies() {
        let mut cfg = StackConfig::new(std::net::Ipv4Addr::new(198, 18, 0, 2), 24, 1500, 1);
        let l = Limits {
            tcp: TcpTuning {
                congestion: Some(Congestion::NewReno),
                time_wait: Some(Duration::from_millis(500)),
                keepalive: Some(Duration::from_secs(30)),
                nodelay: true,
                no_sack: true,
                buffer: Some(65_536),
            },
            ..Limits::default()
        };
        l.apply(&mut cfg);
        assert_eq!(cfg.tcp.congestion, Congestion::NewReno);
        assert_eq!(cfg.tcp.time_wait, Duration::from_millis(500));
        assert_eq!(cfg.tcp.keepalive, Some(Duration::from_secs(30)));
        assert!(cfg.tcp.nodelay && !cfg.tcp.sack);
        assert_eq!((cfg.tcp.rx_buffer, cfg.tcp.tx_buffer), (65_536, 65_536));
    }
}
