//! The deterministic network simulator: hosts joined by impaired in-memory links and a virtual
//! clock that jumps straight to the next packet arrival or host deadline. Thousands of simulated
//! seconds run in milliseconds, and a seed replays a run exactly.
//!
//! Packets are routed by their IPv4 destination address to the host that owns it. Each directed
//! pair of hosts has its own [`Impairment`], seeded from the simulator's seed.

use crate::impair::{ImpairSpec, Impairment};
use crate::rand::Rng;
use crate::time::{earliest, Duration, Instant};
use crate::wire::icmp::{self, IcmpRepr};
use crate::wire::ipv4::{self, Ipv4Repr};
use crate::wire::IpProtocol;
use std::any::Any;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Anything that speaks IP in the simulator: our stack, a reference stack, a test probe.
pub trait Host: 'static {
    fn address(&self) -> Ipv4Addr;
    fn receive(&mut self, now: Instant, packet: &[u8]);
    /// Runs due timers and lets the host queue what it wants to send.
    fn poll(&mut self, now: Instant);
    fn transmit(&mut self) -> Option<Vec<u8>>;
    fn recycle(&mut self, _buf: Vec<u8>) {}
    fn poll_at(&self) -> Option<Instant>;
}

trait HostObj: Host {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Host> HostObj for T {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub usize);

#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub sent: u64,
    pub delivered: u64,
    /// Packets for an address no host owns.
    pub unroutable: u64,
    /// Packets the test's filter dropped.
    pub filtered: u64,
    /// Packets too big for a path MTU set with [`Sim::set_path_mtu`] that had DF set (dropped).
    pub too_big: u64,
    /// Packets too big for such a path without DF (fragmented on the way).
    pub fragmented: u64,
}

/// A narrow hop on a path: see [`Sim::set_path_mtu`].
#[derive(Copy, Clone, Debug)]
struct NarrowHop {
    mtu: usize,
    router: Ipv4Addr,
    icmp: bool,
}

struct Link {
    to: HostId,
    imp: Impairment,
}

/// A packet observer: `(time, from, to, bytes)` as it enters the link.
pub type Tap = Box<dyn FnMut(Instant, HostId, HostId, &[u8])>;

/// A packet filter: `(time, from, to, bytes)` as it enters the link; `false` drops it. For
/// tests that must lose one particular packet (a tail segment, a retransmission).
pub type Filter = Box<dyn FnMut(Instant, HostId, HostId, &[u8]) -> bool>;

pub struct Sim {
    now: Instant,
    seed: u64,
    hosts: Vec<Box<dyn HostObj>>,
    by_addr: HashMap<Ipv4Addr, HostId>,
    links: Vec<Link>,
    link_index: HashMap<(HostId, HostId), usize>,
    default_link: ImpairSpec,
    stats: SimStats,
    tap: Option<Tap>,
    filter: Option<Filter>,
    narrow: HashMap<(HostId, HostId), NarrowHop>,
}

impl Sim {
    /// A simulator whose links default to 1 ms of delay and nothing else.
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: Instant::ZERO,
            seed,
            hosts: Vec::new(),
            by_addr: HashMap::new(),
            links: Vec::new(),
            link_index: HashMap::new(),
            default_link: ImpairSpec {
                delay: Duration::from_millis(1),
                ..ImpairSpec::default()
            },
            stats: SimStats::default(),
            tap: None,
            filter: None,
            narrow: HashMap::new(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The impairment of links not set explicitly (its seed is replaced per link).
    pub fn set_default_link(&mut self, spec: ImpairSpec) {
        self.default_link = spec;
    }

    pub fn add_host<H: Host>(&mut self, host: H) -> HostId {
        let id = HostId(self.hosts.len());
        self.by_addr.insert(host.address(), id);
        self.hosts.push(Box::new(host));
        id
    }

    /// Replaces a host (a restart), keeping its id and address.
    pub fn replace_host<H: Host>(&mut self, id: HostId, host: H) {
        self.by_addr.insert(host.address(), id);
        self.hosts[id.0] = Box::new(host);
    }

    /// The host as its concrete type. Panics if `T` is not its type: a test bug.
    pub fn host<T: Host>(&mut self, id: HostId) -> &mut T {
        self.hosts[id.0]
            .as_any_mut()
            .downcast_mut::<T>()
            .expect("simulator host has a different type")
    }

    pub fn host_ref<T: Host>(&self, id: HostId) -> &T {
        self.hosts[id.0]
            .as_any()
            .downcast_ref::<T>()
            .expect("simulator host has a different type")
    }

    fn link_seed(&self, from: HostId, to: HostId, spec_seed: u64) -> u64 {
        let mut r = Rng::new(
            self.seed ^ spec_seed.rotate_left(17) ^ ((from.0 as u64) << 32) ^ (to.0 as u64),
        );
        r.next_u64()
    }

    /// Sets the impairment from `from` to `to` (one direction).
    pub fn set_link(&mut self, from: HostId, to: HostId, mut spec: ImpairSpec) {
        spec.seed = self.link_seed(from, to, spec.seed);
        let link = Link {
            to,
            imp: Impairment::new(spec),
        };
        match self.link_index.get(&(from, to)) {
            Some(&i) => self.links[i] = link,
            None => {
                self.link_index.insert((from, to), self.links.len());
                self.links.push(link);
            }
        }
    }

    /// Sets the same impairment both ways between `a` and `b`.
    pub fn set_path(&mut self, a: HostId, b: HostId, spec: ImpairSpec) {
        self.set_link(a, b, spec.clone());
        self.set_link(b, a, spec);
    }

    /// Puts a router on the way from `from` to `to` whose next hop carries at most `mtu` bytes,
    /// as a kernel router does: a larger packet with DF is dropped and, if `icmp`, answered with
    /// ICMP "fragmentation needed" (RFC 1191) from `router`; without `icmp` the hop is a path
    /// MTU black hole. A larger packet without DF is fragmented (RFC 791). `mtu` 0 removes it.
    pub fn set_path_mtu(
        &mut self,
        from: HostId,
        to: HostId,
        mtu: usize,
        router: Ipv4Addr,
        icmp: bool,
    ) {
        if mtu == 0 {
            self.narrow.remove(&(from, to));
        } else {
            let mtu = mtu.max(ipv4::HEADER_LEN + 8);
            self.narrow
                .insert((from, to), NarrowHop { mtu, router, icmp });
        }
    }

    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

    pub fn set_filter(&mut self, filter: Filter) {
        self.filter = Some(filter);
    }

    fn route(&mut self, from: HostId, packet: Vec<u8>) {
        self.stats.sent += 1;
        let dst = match packet.get(16..20) {
            Some(b) => Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            None => {
                self.stats.unroutable += 1;
                return;
            }
        };
        let Some(&to) = self.by_addr.get(&dst) else {
            self.stats.unroutable += 1;
            return;
        };
        if let Some(tap) = self.tap.as_mut() {
            tap(self.now, from, to, &packet);
        }
        if let Some(filter) = self.filter.as_mut() {
            if !filter(self.now, from, to, &packet) {
                self.stats.filtered += 1;
                self.hosts[from.0].recycle(packet);
                return;
            }
        }
        if !self.link_index.contains_key(&(from, to)) {
            self.set_link(from, to, self.default_link.clone());
        }
        let i = self.link_index[&(from, to)];
        match self.narrow.get(&(from, to)).copied() {
            Some(hop) if packet.len() > hop.mtu => self.narrow_hop(from, to, i, hop, &packet),
            _ => self.links[i].imp.push(self.now, &packet),
        }
        self.hosts[from.0].recycle(packet);
    }

    /// What a router before a hop of `hop.mtu` bytes does with a packet too big for it.
    fn narrow_hop(&mut self, from: HostId, to: HostId, link: usize, hop: NarrowHop, packet: &[u8]) {
        let Ok((h, payload)) = Ipv4Repr::parse(packet) else {
            self.stats.too_big += 1;
            return;
        };
        if h.dont_fragment {
            self.stats.too_big += 1;
            if hop.icmp {
                // Quote the header and the first 64 bytes of the payload, as routers do.
                let quote = &packet[..(h.header_len + 64).min(packet.len())];
                let msg = IcmpRepr::DstUnreachable {
                    code: icmp::unreachable::FRAG_NEEDED,
                    next_hop_mtu: hop.mtu as u16,
                    original: quote,
                };
                let mut ip =
                    Ipv4Repr::new(hop.router, h.src, IpProtocol::Icmp.into(), msg.buffer_len());
                ip.ttl = 64;
                let mut out = vec![0u8; ip.total_len()];
                ip.emit(&mut out);
                msg.emit(&mut out[ipv4::HEADER_LEN..]);
                // The report travels back along the reverse link.
                if !self.link_index.contains_key(&(to, from)) {
                    self.set_link(to, from, self.default_link.clone());
                }
                let back = self.link_index[&(to, from)];
                self.links[back].imp.push(self.now, &out);
            }
            return;
        }
        self.stats.fragmented += 1;
        // Fragment payloads are multiples of 8 bytes, except the last (RFC 791).
        let step = (hop.mtu - ipv4::HEADER_LEN) / 8 * 8;
        let mut off = 0;
        while off < payload.len() {
            let n = step.min(payload.len() - off);
            let mut f = h;
            f.header_len = ipv4::HEADER_LEN;
            f.payload_len = n;
            f.frag_offset = h.frag_offset + off;
            f.more_fragments = h.more_fragments || off + n < payload.len();
            let mut out = vec![0u8; ipv4::HEADER_LEN + n];
            f.emit(&mut out);
            out[ipv4::HEADER_LEN..].copy_from_slice(&payload[off..off + n]);
            self.links[link].imp.push(self.now, &out);
            off += n;
        }
    }

    /// Delivers and polls until nothing more happens at the current instant.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut progressed = false;
            for li in 0..self.links.len() {
                while let Some(p) = self.links[li].imp.pop(self.now) {
                    let to = self.links[li].to;
                    self.stats.delivered += 1;
                    self.hosts[to.0].receive(self.now, &p);
                    self.links[li].imp.recycle(p);
                    progressed = true;
                }
            }
            for hi in 0..self.hosts.len() {
                self.hosts[hi].poll(self.now);
                while let Some(p) = self.hosts[hi].transmit() {
                    self.route(HostId(hi), p);
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
        panic!(
            "simulator: hosts keep sending at {:?} without time passing (seed {})",
            self.now, self.seed
        );
    }

    /// The next instant anything is scheduled, if anything is.
    pub fn next_event(&self) -> Option<Instant> {
        let links = self.links.iter().filter_map(|l| l.imp.poll_at()).min();
        let hosts = self.hosts.iter().filter_map(|h| h.poll_at()).min();
        earliest(links, hosts)
    }

    /// Settles the present, then jumps to the next event and settles it. Returns false when
    /// nothing is scheduled at all (the network is idle forever).
    pub fn step(&mut self) -> bool {
        self.settle();
        let Some(next) = self.next_event() else {
            return false;
        };
        // A host that asks to be polled "now" again must not stall the clock.
        self.now = next.max(self.now + Duration::from_micros(1));
        self.settle();
        true
    }

    /// Runs for `d` of simulated time (or until idle).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.settle();
        while let Some(next) = self.next_event() {
            let next = next.max(self.now + Duration::from_micros(1));
            if next > end {
                break;
            }
            self.now = next;
            self.settle();
        }
        self.now = self.now.max(end);
        self.settle();
    }

    /// Runs until `done` holds (checked after every event) or `limit` of simulated time passes.
    /// Returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit;
        self.settle();
        loop {
            if done(self) {
                return true;
            }
            let Some(next) = self.next_event() else {
                return done(self);
            };
            let next = next.max(self.now + Duration::from_micros(1));
            if next > end {
                self.now = end;
                self.settle();
                return done(self);
            }
            self.now = next;
            self.settle();
        }
    }
}

/// Runs `test` once per seed and, when one panics, says which seed so the run can be replayed
/// (`TUNSTACK_SEED=N` runs that seed alone).
pub fn for_each_seed(seeds: impl IntoIterator<Item = u64>, test: impl Fn(u64)) {
    let only: Option<u64> = std::env::var("TUNSTACK_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds: Vec<u64> = match only {
        Some(s) => vec![s],
        None => seeds.into_iter().collect(),
    };
    for seed in seeds {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(seed)));
        if let Err(e) = r {
            eprintln!("simulation failed with seed {seed}; replay with TUNSTACK_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}
