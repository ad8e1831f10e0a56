//! A running node: one [`Stack`] plus what runs on it (services, impairment at the device edge,
//! counters of the device), shared between the event-loop thread and its callers (the console,
//! the control socket, the library API, blocking sockets on other threads).
//!
//! Callers lock the node briefly through a [`NodeHandle`], and wake the event loop so whatever
//! they queued leaves at once. Waiting callers sleep on a condition variable the loop signals after
//! every batch of packets.

mod bench_commands;
pub mod clock;
pub mod commands;
mod file_commands;
pub mod files;
pub mod identity;
pub mod inbox;
pub mod launch;
pub mod limits;
pub mod messaging;
mod msg_commands;
mod tcp_bench;
mod tcp_commands;

use crate::device::DeviceStats;
use crate::impair::rules::RuleSet;
use crate::impair::{ImpairSpec, Impairment};
use crate::stack::Stack;
use crate::time::{earliest, Duration, Instant};
use clock::Clock;
use files::FileTracking;
use inbox::Inbox;
use limits::RateLimitedLog;
use messaging::Messaging;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Something that runs inside the event loop on top of the stack (a TCP service, a message pump).
/// Sans-IO like the stack: it gets `now` and the stack, and says when it next needs a poll.
pub trait App: Send {
    fn name(&self) -> &str;
    fn poll(&mut self, now: Instant, stack: &mut Stack);
    fn poll_at(&self) -> Option<Instant> {
        None
    }
}

/// Counters of the device edge, filled in by the driver.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeviceCounters {
    pub packets_read: u64,
    pub bytes_read: u64,
    pub packets_written: u64,
    pub bytes_written: u64,
    pub write_errors: u64,
    /// Packets the kernel refused (its queue was full).
    pub write_drops: u64,
    pub wakeups: u64,
    pub pcap_errors: u64,
    /// `--rst-dump` captures written, and resets not dumped (rate limit, file cap, write error).
    pub rst_dumps_written: u64,
    pub rst_dumps_skipped: u64,
    /// `--offload`: TCP super-segments read and written, and the segments those written held.
    pub offload_in: u64,
    pub offload_out: u64,
    pub offload_out_segments: u64,
    /// Reads dropped for a malformed virtio header.
    pub offload_bad: u64,
}

impl DeviceCounters {
    /// Takes over what the device counts itself.
    pub fn absorb(&mut self, s: DeviceStats) {
        self.write_drops = s.send_drops;
        self.offload_in = s.offload_rx_super;
        self.offload_out = s.offload_tx_super;
        self.offload_out_segments = s.offload_tx_segments;
        self.offload_bad = s.offload_rx_bad;
    }
}

/// Status of something running beside the node (the relay), as JSON, for `ctl`.
pub type StatusProvider = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

pub struct Node {
    pub name: String,
    pub stack: Stack,
    pub apps: Vec<Box<dyn App>>,
    /// Impairment of packets read from the device, before the stack sees them.
    pub impair_in: Option<Impairment>,
    /// Impairment of packets the stack sends, before they reach the device.
    pub impair_out: Option<Impairment>,
    pub device: DeviceCounters,
    pub tun_name: String,
    /// Protocol 170 as the node sees it: the inbox and the outcome of each message sent.
    pub messaging: Messaging,
    /// Protocol 171 as the node sees it: how each transfer ended.
    pub files: FileTracking,
    /// What `--serve` started, as `kind:port`, for `sockets`.
    pub services: Vec<String>,
    /// Identity, inbox and received files live here (none in tests).
    pub data_dir: Option<std::path::PathBuf>,
    /// Named status providers of programs that run beside the node and keep their state outside
    /// it (`relay`). Commands clone one out and call it after releasing the node's lock, since a
    /// provider takes its own program's lock.
    pub status_providers: Vec<(&'static str, StatusProvider)>,
    /// One log line per second at most for each limit that refuses work.
    pub limit_log: RateLimitedLog,
    started: Instant,
}

impl Node {
    pub fn new(name: String, stack: Stack, now: Instant) -> Node {
        Node {
            name,
            stack,
            apps: Vec::new(),
            impair_in: None,
            impair_out: None,
            device: DeviceCounters::default(),
            tun_name: String::new(),
            messaging: Messaging::new(Inbox::in_memory(10_000), clock::rfc3339_now),
            files: FileTracking::new(clock::rfc3339_now),
            data_dir: None,
            services: Vec::new(),
            status_providers: Vec::new(),
            limit_log: RateLimitedLog::default(),
            started: now,
        }
    }

    pub fn set_impairment(&mut self, inbound: Option<ImpairSpec>, outbound: Option<ImpairSpec>) {
        self.set_impairment_with_rules(inbound, outbound, RuleSet::default());
    }

    /// Random impairments per direction, plus scripted rules (each names its direction).
    pub fn set_impairment_with_rules(
        &mut self,
        inbound: Option<ImpairSpec>,
        outbound: Option<ImpairSpec>,
        rules: RuleSet,
    ) {
        let make = |spec: Option<ImpairSpec>, out: bool| {
            let imp = Impairment::with_rules(spec.unwrap_or_default(), rules.clone(), out);
            (!imp.is_noop()).then_some(imp)
        };
        self.impair_in = make(inbound, false);
        self.impair_out = make(outbound, true);
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now - self.started
    }

    /// Runs the stack's timers and every app.
    pub fn poll(&mut self, now: Instant) {
        // Apps first: they read what this turn's packets delivered and write their answers, so
        // the one pass of the transports that follows sends a single ACK per connection that
        // carries the answer and the reopened window.
        for app in &mut self.apps {
            app.poll(now, &mut self.stack);
        }
        self.stack.poll(now);
        self.messaging.pump(&mut self.stack);
        self.files.pump(&mut self.stack, &mut self.messaging.inbox);
        // What the pumps queued (file chunks, messages) leaves in this same wake-up.
        self.stack.poll(now);
    }

    /// Makes durable what this turn received (one fsync for the batch). The driver calls it
    /// before it writes the turn's packets, so no ACK leaves for a message not yet on disk.
    pub fn commit(&mut self) {
        self.messaging.inbox.commit();
    }

    /// Logs the limits hit since their last report (rate-limited); cheap enough for every turn.
    pub fn check_limits(&mut self, now: Instant) {
        self.limit_log.check_stack(now, &self.stack);
    }

    /// When the node next needs attention: stack timers, apps, impairment queues.
    pub fn poll_at(&self) -> Option<Instant> {
        let mut t = self.stack.poll_at();
        for app in &self.apps {
            t = earliest(t, app.poll_at());
        }
        t = earliest(t, self.impair_in.as_ref().and_then(|i| i.poll_at()));
        earliest(t, self.impair_out.as_ref().and_then(|i| i.poll_at()))
    }
}

struct Shared {
    node: Mutex<Node>,
    changed: Condvar,
    clock: Clock,
    waker: OnceLock<mio::Waker>,
    stopping: AtomicBool,
}

/// A cheap, clonable reference to a running node, usable from any thread.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
}

impl NodeHandle {
    pub fn new(node: Node, clock: Clock) -> NodeHandle {
        NodeHandle {
            shared: Arc::new(Shared {
                node: Mutex::new(node),
                changed: Condvar::new(),
                clock,
                waker: OnceLock::new(),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    pub fn now(&self) -> Instant {
        self.shared.clock.now()
    }

    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    /// Locks the node. A panic on another thread while it held the lock does not make the node
    /// unusable: the state machines stay consistent between calls.
    pub fn lock(&self) -> MutexGuard<'_, Node> {
        self.shared.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the node, then wakes the event loop so anything queued goes out now.
    pub fn with<R>(&self, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        let r = {
            let mut node = self.lock();
            let now = self.now();
            f(&mut node, now)
        };
        self.wake();
        r
    }

    /// Calls `f` each time the node changes until it returns `Some`, or `timeout` passes
    /// (`None` waits without limit), or the node stops.
    pub fn wait<R>(
        &self,
        timeout: Option<Duration>,
        mut f: impl FnMut(&mut Node, Instant) -> Option<R>,
    ) -> Option<R> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut node = self.lock();
        loop {
            let now = self.now();
            if let Some(r) = f(&mut node, now) {
                drop(node);
                self.wake();
                return Some(r);
            }
            if self.is_stopping() {
                return None;
            }
            // Sleep in short slices so a stop is noticed even without a notification.
            let mut slice = std::time::Duration::from_millis(100);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                slice = slice.min(left);
            }
            node = match self.shared.changed.wait_timeout(node, slice) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Called by the event loop after each batch: wakes every waiter.
    pub fn notify(&self) {
        self.shared.changed.notify_all();
    }

    /// Installs the event loop's waker (once).
    pub fn set_waker(&self, waker: mio::Waker) {
        let _ = self.shared.waker.set(waker);
    }

    pub fn wake(&self) {
        if let Some(w) = self.shared.waker.get() {
            let _ = w.wake();
        }
    }

    /// Asks the event loop to stop; it releases the device and the control socket.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.wake();
        self.notify();
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}
