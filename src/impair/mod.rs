//! Seeded, reproducible path impairment: loss, duplication, reordering, delay with jitter,
//! corruption and a rate limit. This kernel has no netem, so the same engine serves the driver (at
//! the device boundary, `--impair`) and the simulator's links.
//!
//! Sans-IO: `push(now, packet)` takes a packet, `pop(now)` returns those whose time has come,
//! `poll_at()` says when the next one will be.

pub mod rules;

use crate::rand::Rng;
use crate::time::{Duration, Instant};
use rules::{Action, RuleSet, Verdict};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

/// What to do to packets, as written on the command line:
/// `loss=2%,dup=1%,reorder=5%:20ms,delay=30ms~5ms,corrupt=0.1%,rate=20mbit,seed=7`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImpairSpec {
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    /// Extra delay of a reordered packet, so that later packets overtake it.
    pub reorder_delay: Duration,
    pub delay: Duration,
    /// Uniform jitter added to the delay, in `[-jitter, +jitter]`.
    pub jitter: Duration,
    pub corrupt: f64,
    /// Bottleneck rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    pub seed: u64,
}

impl Default for ImpairSpec {
    fn default() -> ImpairSpec {
        ImpairSpec {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            corrupt: 0.0,
            rate_bps: None,
            seed: 1,
        }
    }
}

/// Why an impairment spec did not parse; the message names the offending part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for SpecError {}

fn parse_percent(key: &str, v: &str) -> Result<f64, SpecError> {
    let num = v.strip_suffix('%').unwrap_or(v);
    let p: f64 = num.parse().map_err(|_| {
        SpecError(format!(
            "{key}={v}: expected a percentage such as 2% or 0.5%"
        ))
    })?;
    if !(0.0..=100.0).contains(&p) {
        return Err(SpecError(format!("{key}={v}: must be between 0% and 100%")));
    }
    Ok(p / 100.0)
}

/// Parses `30ms`, `1.5s`, `200us`; a bare number is milliseconds.
pub fn parse_duration(v: &str) -> Result<Duration, SpecError> {
    let err = || {
        SpecError(format!(
            "{v}: expected a duration such as 30ms, 1s or 500us"
        ))
    };
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v, 1e-3)
    };
    let x: f64 = num.parse().map_err(|_| err())?;
    if !(0.0..=3600.0).contains(&(x * scale)) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(x * scale))
}

fn parse_rate(v: &str) -> Result<u64, SpecError> {
    let lower = v.to_ascii_lowercase();
    let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(suf, m)| lower.strip_suffix(suf).map(|n| (n.to_string(), *m)))
        .unwrap_or((lower.clone(), 1.0));
    let x: f64 = num.parse().map_err(|_| {
        SpecError(format!(
            "rate={v}: expected a rate such as 20mbit, 512kbit or 1gbit"
        ))
    })?;
    if x <= 0.0 {
        return Err(SpecError(format!("rate={v}: must be positive")));
    }
    Ok((x * mult) as u64)
}

impl ImpairSpec {
    pub fn parse(s: &str) -> Result<ImpairSpec, SpecError> {
        let mut spec = ImpairSpec::default();
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(spec);
        }
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| SpecError(format!("'{part}': expected key=value")))?;
            match k.trim() {
                "loss" => spec.loss = parse_percent(k, v)?,
                "dup" | "duplicate" => spec.duplicate = parse_percent(k, v)?,
                "corrupt" => spec.corrupt = parse_percent(k, v)?,
                "reorder" => {
                    let (p, d) = match v.split_once(':') {
                        Some((p, d)) => (p, Some(d)),
                        None => (v, None),
                    };
                    spec.reorder = parse_percent(k, p)?;
                    if let Some(d) = d {
                        spec.reorder_delay = parse_duration(d)?;
                    }
                }
                "delay" => {
                    let (d, j) = match v.split_once('~') {
                        Some((d, j)) => (d, Some(j)),
                        None => (v, None),
                    };
                    spec.delay = parse_duration(d)?;
                    if let Some(j) = j {
                        spec.jitter = parse_duration(j)?;
                    }
                }
                "rate" => spec.rate_bps = Some(parse_rate(v)?),
                "seed" => {
                    spec.seed = v
                        .parse()
                        .map_err(|_| SpecError(format!("seed={v}: expected a whole number")))?
                }
                other => {
                    return Err(SpecError(format!(
                        "unknown impairment '{other}' (known: loss, dup, reorder, delay, corrupt, rate, seed)"
                    )))
                }
            }
        }
        Ok(spec)
    }

    /// True when packets pass untouched and undelayed.
    pub fn is_noop(&self) -> bool {
        self.loss == 0.0
            && self.duplicate == 0.0
            && self.reorder == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.corrupt == 0.0
            && self.rate_bps.is_none()
    }
}

impl fmt::Display for ImpairSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_noop() {
            return write!(f, "none");
        }
        let mut parts = Vec::new();
        if self.loss > 0.0 {
            parts.push(format!("loss={}%", self.loss * 100.0));
        }
        if self.duplicate > 0.0 {
            parts.push(format!("dup={}%", self.duplicate * 100.0));
        }
        if self.reorder > 0.0 {
            parts.push(format!(
                "reorder={}%:{:?}",
                self.reorder * 100.0,
                self.reorder_delay
            ));
        }
        if !self.delay.is_zero() || !self.jitter.is_zero() {
            parts.push(format!("delay={:?}~{:?}", self.delay, self.jitter));
        }
        if self.corrupt > 0.0 {
            parts.push(format!("corrupt={}%", self.corrupt * 100.0));
        }
        if let Some(r) = self.rate_bps {
            parts.push(format!("rate={r}bit"));
        }
        parts.push(format!("seed={}", self.seed));
        write!(f, "{}", parts.join(","))
    }
}

/// What the impairment layer did, for `ctl status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImpairCounters {
    pub packets: u64,
    pub passed: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    pub delayed: u64,
    /// Dropped because the rate-limited queue was full.
    pub queue_overflow: u64,
    /// Packets a scripted rule acted on.
    pub rule_actions: u64,
}

struct Scheduled {
    at: Instant,
    order: u64,
    packet: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// One direction of an impaired path.
pub struct Impairment {
    spec: ImpairSpec,
    rules: RuleSet,
    /// Whether this impairment sits on the outbound path (rules name a direction).
    outbound: bool,
    rng: Rng,
    heap: BinaryHeap<Reverse<Scheduled>>,
    order: u64,
    /// When the rate-limited link is next free to start sending.
    link_free_at: Instant,
    pool: Vec<Vec<u8>>,
    counters: ImpairCounters,
}

impl fmt::Debug for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Impairment")
            .field("spec", &self.spec)
            .field("queued", &self.heap.len())
            .finish()
    }
}

/// The most a rate-limited queue holds, in time to drain: beyond this packets are tail-dropped, as
/// a router's bounded buffer would.
const MAX_QUEUE_DELAY: Duration = Duration::from_millis(200);

impl Impairment {
    pub fn new(spec: ImpairSpec) -> Impairment {
        Impairment::with_rules(spec, RuleSet::default(), false)
    }

    /// An impairment that first applies scripted `rules` for its direction.
    pub fn with_rules(spec: ImpairSpec, rules: RuleSet, outbound: bool) -> Impairment {
        Impairment {
            rng: Rng::new(spec.seed),
            rules,
            outbound,
            spec,
            heap: BinaryHeap::new(),
            order: 0,
            link_free_at: Instant::ZERO,
            pool: Vec::new(),
            counters: ImpairCounters::default(),
        }
    }

    pub fn spec(&self) -> &ImpairSpec {
        &self.spec
    }

    pub fn counters(&self) -> &ImpairCounters {
        &self.counters
    }

    pub fn is_noop(&self) -> bool {
        self.spec.is_noop() && self.rules.is_empty()
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Packets waiting for their departure time.
    pub fn queued(&self) -> usize {
        self.heap.len()
    }

    fn schedule(&mut self, at: Instant, packet: Vec<u8>) {
        self.order += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            order: self.order,
            packet,
        }));
    }

    fn copy_of(&mut self, pkt: &[u8]) -> Vec<u8> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(pkt);
        v
    }

    /// Offers a packet to the path at `now`.
    pub fn push(&mut self, now: Instant, pkt: &[u8]) {
        self.counters.packets += 1;
        if !self.rules.is_empty() {
            if let Verdict::Act(action) = self.rules.apply(now, self.outbound, pkt) {
                self.counters.rule_actions += 1;
                match action {
                    Action::Drop => {
                        self.counters.dropped += 1;
                        return;
                    }
                    Action::Duplicate => {
                        self.counters.duplicated += 1;
                        self.impair(now, pkt);
                    }
                    Action::Delay(d) => {
                        self.counters.delayed += 1;
                        let copy = self.copy_of(pkt);
                        self.schedule(now + d, copy);
                        return;
                    }
                    Action::Corrupt(at) => {
                        let mut copy = self.copy_of(pkt);
                        if let Some(b) = copy.get_mut(at) {
                            *b ^= 0xff;
                            self.counters.corrupted += 1;
                        }
                        self.schedule(now, copy);
                        return;
                    }
                }
            }
        }
        self.impair(now, pkt);
    }

    /// The random impairments of the spec.
    fn impair(&mut self, now: Instant, pkt: &[u8]) {
        let s = &self.spec;
        if self.rng.chance(s.loss) {
            self.counters.dropped += 1;
            return;
        }
        // The bottleneck serialises packets one after another; propagation delay comes after it.
        let mut depart = now;
        if let Some(rate) = s.rate_bps {
            let start = self.link_free_at.max(now);
            if start - now > MAX_QUEUE_DELAY {
                self.counters.queue_overflow += 1;
                return;
            }
            let tx_time = Duration::from_nanos(
                (pkt.len() as u64 * 8).saturating_mul(1_000_000_000) / rate.max(1),
            );
            depart = start + tx_time;
            self.link_free_at = depart;
        }
        let copies = if self.rng.chance(s.duplicate) {
            self.counters.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let s = &self.spec;
            let mut at = depart + s.delay;
            if !s.jitter.is_zero() {
                let j = s.jitter.as_micros() as u64;
                let offset = self.rng.below(2 * j + 1);
                at = (at + Duration::from_micros(offset)) - Duration::from_micros(j);
                at = at.max(depart);
            }
            if self.rng.chance(s.reorder) {
                self.counters.reordered += 1;
                at += s.reorder_delay;
            }
            if at > now {
                self.counters.delayed += 1;
            }
            let mut copy = self.copy_of(pkt);
            if !copy.is_empty() && self.rng.chance(self.spec.corrupt) {
                let i = self.rng.below(copy.len() as u64) as usize;
                let bit = self.rng.below(8) as u8;
                copy[i] ^= 1 << bit;
                self.counters.corrupted += 1;
            }
            self.schedule(at, copy);
        }
    }

    /// The next packet whose time has come. Give the buffer back with `recycle`.
    pub fn pop(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.heap.peek().is_some_and(|Reverse(s)| s.at <= now) {
            self.counters.passed += 1;
            self.heap.pop().map(|Reverse(s)| s.packet)
        } else {
            None
        }
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 256 {
            self.pool.push(buf);
        }
    }

    pub fn poll_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(s)| s.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_full_spec() {
        let s = ImpairSpec::parse(
            "loss=2%,dup=1%,reorder=5%:20ms,delay=30ms~5ms,corrupt=0.1%,rate=20mbit,seed=7",
        )
        .unwrap();
        assert_eq!(s.loss, 0.02);
        assert_eq!(s.duplicate, 0.01);
        assert_eq!(s.reorder, 0.05);
        assert_eq!(s.reorder_delay, Duration::from_millis(20));
        assert_eq!(s.delay, Duration::from_millis(30));
        assert_eq!(s.jitter, Duration::from_millis(5));
        assert!((s.corrupt - 0.001).abs() < 1e-12);
        assert_eq!(s.rate_bps, Some(20_000_000));
        assert_eq!(s.seed, 7);
        assert!(!s.is_noop());
        assert!(ImpairSpec::parse("none").unwrap().is_noop());
    }

    #[test]
    fn test_parse_errors_name_the_part() {
        for bad in [
            "loss",
            "loss=abc",
            "loss=150%",
            "delay=fast",
            "rate=-1mbit",
            "jitter=1ms",
        ] {
            let e = ImpairSpec::parse(bad).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
        assert!(ImpairSpec::parse("wobble=1")
            .unwrap_err()
            .0
            .contains("wobble"));
    }

    #[test]
    fn test_noop_passes_everything_in_order() {
        let mut imp = Impairment::new(ImpairSpec::default());
        for i in 0..100u8 {
            imp.push(Instant::ZERO, &[i]);
        }
        for i in 0..100u8 {
            assert_eq!(imp.pop(Instant::ZERO).unwrap(), vec![i]);
        }
        assert!(imp.pop(Instant::ZERO).is_none());
    }

    #[test]
    fn test_loss_rate_is_close_and_reproducible() {
        let spec = ImpairSpec::parse("loss=10%,seed=3").unwrap();
        let run = || {
            let mut imp = Impairment::new(spec.clone());
            let mut got = Vec::new();
            for i in 0..10_000u32 {
                imp.push(Instant::ZERO, &i.to_be_bytes());
                while let Some(p) = imp.pop(Instant::ZERO) {
                    got.push(p);
                }
            }
            got
        };
        let a = run();
        assert_eq!(a, run());
        assert!((8800..9200).contains(&a.len()), "{}", a.len());
    }

    #[test]
    fn test_delay_and_rate() {
        // 1000-byte packets at 8 Mbit/s take 1 ms each; 10 ms propagation delay on top.
        let mut imp = Impairment::new(ImpairSpec::parse("delay=10ms,rate=8mbit").unwrap());
        imp.push(Instant::ZERO, &[0; 1000]);
        imp.push(Instant::ZERO, &[0; 1000]);
        assert_eq!(imp.poll_at(), Some(Instant::from_millis(11)));
        assert!(imp.pop(Instant::from_millis(10)).is_none());
        assert!(imp.pop(Instant::from_millis(11)).is_some());
        assert_eq!(imp.poll_at(), Some(Instant::from_millis(12)));
    }

    #[test]
    fn test_rate_queue_overflow_drops() {
        let mut imp = Impairment::new(ImpairSpec::parse("rate=1mbit").unwrap());
        for _ in 0..1000 {
            imp.push(Instant::ZERO, &[0; 1000]);
        }
        // 200 ms of queue at 1 Mbit/s holds about 25 packets of 1000 bytes.
        assert!(imp.counters().queue_overflow > 900);
    }

    #[test]
    fn test_rules_act_before_random_impairments() {
        let rules =
            RuleSet::parse("out any nth=2 drop\nout any nth=3 corrupt=1\nout any nth=4 delay=5ms")
                .unwrap();
        let mut imp = Impairment::with_rules(ImpairSpec::default(), rules, true);
        for i in 1..=5u8 {
            let mut pkt = [0u8; 20];
            pkt[0] = 0x45;
            pkt[1] = i;
            imp.push(Instant::ZERO, &pkt);
        }
        let mut got = Vec::new();
        while let Some(p) = imp.pop(Instant::ZERO) {
            got.push(p[1]);
        }
        assert_eq!(got, vec![1, !3u8, 5]);
        assert_eq!(imp.poll_at(), Some(Instant::from_millis(5)));
        assert_eq!(imp.counters().rule_actions, 3);
        // Rules for the other direction do nothing here.
        let rules = RuleSet::parse("in any always drop").unwrap();
        let mut imp = Impairment::with_rules(ImpairSpec::default(), rules, true);
        let mut pkt = [0u8; 20];
        pkt[0] = 0x45;
        imp.push(Instant::ZERO, &pkt);
        assert!(imp.pop(Instant::ZERO).is_some());
    }

    #[test]
    fn test_corrupt_flips_one_bit() {
        let mut imp = Impairment::new(ImpairSpec::parse("corrupt=100%").unwrap());
        imp.push(Instant::ZERO, &[0u8; 64]);
        let p = imp.pop(Instant::ZERO).unwrap();
        assert_eq!(p.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }

    #[test]
    fn test_reorder_lets_later_packets_overtake() {
        let mut imp = Impairment::new(ImpairSpec::parse("reorder=50%:5ms,seed=9").unwrap());
        for i in 0..20u8 {
            imp.push(Instant::ZERO, &[i]);
        }
        let mut order = Vec::new();
        let mut t = Instant::ZERO;
        while let Some(at) = imp.poll_at() {
            t = t.max(at);
            while let Some(p) = imp.pop(t) {
                order.push(p[0]);
            }
        }
        assert_eq!(order.len(), 20);
        assert!(order.windows(2).any(|w| w[0] > w[1]), "{order:?}");
    }
}
