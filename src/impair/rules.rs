//! Scripted impairment: rules that pick out particular packets and do one thing to them, so a
//! user can reproduce a precise failure (drop the 3rd data segment, partition for two seconds,
//! corrupt one byte of the SYN-ACK).
//!
//! A rules file has one rule per line, `#` starts a comment:
//!
//! ```text
//! # direction protocol [match ...]   when            action
//! out         tcp      flags=S        nth=1           drop
//! in          tcp      sport=80       nth=3..5        duplicate
//! both        any                     from=2s to=4s   drop          # a partition
//! out         tcp      flags=PA       nth=2           corrupt=40    # flips byte 40 of the IP packet
//! in          170                     every=10        delay=200ms
//! ```
//!
//! - direction: `in` (read from the device), `out` (written to it), `both`;
//! - protocol: `any`, `icmp`, `tcp`, `udp`, `msg` (170), `file` (171) or a number;
//! - matches (all must hold): `sport=N`, `dport=N` (TCP/UDP), `flags=SAFRPU` (TCP: all listed set);
//! - when: `always`, `nth=N`, `nth=A..B`, `every=N` (counting this rule's matches from 1), or
//!   `from=T to=T` (time since the node started; either may be left out);
//! - action: `drop`, `duplicate`, `delay=DURATION`, `corrupt=OFFSET`.
//!
//! The first rule that matches and whose `when` holds decides; later rules still count matches.

use super::{parse_duration, SpecError};
use crate::time::{Duration, Instant};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    Both,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    Nth { from: u64, to: u64 },
    Every(u64),
    Window { from: Duration, to: Duration },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Drop,
    Duplicate,
    Delay(Duration),
    /// Flip every bit of the byte at this offset of the IP packet (if it has one).
    Corrupt(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    pub direction: Direction,
    pub protocol: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP flag bits that must all be set.
    pub flags: u8,
    pub when: When,
    pub action: Action,
}

/// What a rule says to do with one packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Act(Action),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleCounters {
    pub line: usize,
    pub rule: String,
    pub matched: u64,
    pub fired: u64,
}

fn err(line: usize, msg: impl Into<String>) -> SpecError {
    SpecError(format!("rules line {line}: {}", msg.into()))
}

fn tcp_flag_bits(s: &str, line: usize) -> Result<u8, SpecError> {
    let mut bits = 0;
    for c in s.chars() {
        bits |= match c.to_ascii_uppercase() {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            'A' => 0x10,
            'U' => 0x20,
            other => {
                return Err(err(
                    line,
                    format!("unknown TCP flag '{other}' (use F S R P A U)"),
                ))
            }
        };
    }
    Ok(bits)
}

fn parse_protocol(s: &str, line: usize) -> Result<Option<u8>, SpecError> {
    Ok(match s {
        "any" => None,
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        "msg" => Some(170),
        "file" => Some(171),
        n => Some(n.parse().map_err(|_| {
            err(
                line,
                format!("'{n}' is not a protocol (any, icmp, tcp, udp, msg, file, or 0-255)"),
            )
        })?),
    })
}

fn parse_count(v: &str, line: usize) -> Result<u64, SpecError> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| err(line, format!("'{v}' is not a count (1, 2, ...)")))
}

impl Rule {
    fn parse(line_no: usize, text: &str) -> Result<Rule, SpecError> {
        let mut words = text.split_whitespace();
        let direction = match words.next() {
            Some("in") => Direction::In,
            Some("out") => Direction::Out,
            Some("both") => Direction::Both,
            other => {
                return Err(err(
                    line_no,
                    format!("expected in, out or both, found {other:?}"),
                ))
            }
        };
        let protocol = parse_protocol(
            words
                .next()
                .ok_or_else(|| err(line_no, "missing protocol"))?,
            line_no,
        )?;
        let mut rule = Rule {
            line: line_no,
            direction,
            protocol,
            sport: None,
            dport: None,
            flags: 0,
            when: When::Always,
            action: Action::Drop,
        };
        let (mut from, mut to) = (None, None);
        let mut action = None;
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            match k {
                "sport" | "dport" => {
                    let p: u16 = v
                        .parse()
                        .map_err(|_| err(line_no, format!("'{v}' is not a port")))?;
                    if k == "sport" {
                        rule.sport = Some(p);
                    } else {
                        rule.dport = Some(p);
                    }
                }
                "flags" => rule.flags = tcp_flag_bits(v, line_no)?,
                "always" => rule.when = When::Always,
                "nth" => {
                    rule.when = match v.split_once("..") {
                        Some((a, b)) => When::Nth {
                            from: parse_count(a, line_no)?,
                            to: parse_count(b, line_no)?,
                        },
                        None => {
                            let n = parse_count(v, line_no)?;
                            When::Nth { from: n, to: n }
                        }
                    }
                }
                "every" => rule.when = When::Every(parse_count(v, line_no)?),
                "from" => from = Some(parse_duration(v).map_err(|e| err(line_no, e.0))?),
                "to" => to = Some(parse_duration(v).map_err(|e| err(line_no, e.0))?),
                "drop" => action = Some(Action::Drop),
                "duplicate" => action = Some(Action::Duplicate),
                "delay" => {
                    action = Some(Action::Delay(
                        parse_duration(v).map_err(|e| err(line_no, e.0))?,
                    ))
                }
                "corrupt" => {
                    action = Some(Action::Corrupt(v.parse().map_err(|_| {
                        err(line_no, format!("corrupt needs a byte offset, found '{v}'"))
                    })?))
                }
                other => return Err(err(line_no, format!("unknown word '{other}'"))),
            }
        }
        if from.is_some() || to.is_some() {
            rule.when = When::Window {
                from: from.unwrap_or(Duration::ZERO),
                to: to.unwrap_or(Duration::MAX),
            };
        }
        rule.action = action.ok_or_else(|| {
            err(
                line_no,
                "missing action (drop, duplicate, delay=..., corrupt=...)",
            )
        })?;
        if (rule.sport.is_some() || rule.dport.is_some())
            && !matches!(rule.protocol, Some(6) | Some(17))
        {
            return Err(err(line_no, "sport/dport need protocol tcp or udp"));
        }
        if rule.flags != 0 && rule.protocol != Some(6) {
            return Err(err(line_no, "flags= needs protocol tcp"));
        }
        Ok(rule)
    }

    fn matches(&self, outbound: bool, pkt: &[u8]) -> bool {
        let dir_ok = match self.direction {
            Direction::Both => true,
            Direction::In => !outbound,
            Direction::Out => outbound,
        };
        if !dir_ok || pkt.len() < 20 || pkt[0] >> 4 != 4 {
            return false;
        }
        let proto = pkt[9];
        if self.protocol.is_some_and(|p| p != proto) {
            return false;
        }
        let ihl = (pkt[0] & 0x0f) as usize * 4;
        let l4 = pkt.get(ihl..).unwrap_or(&[]);
        let port = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        if self.sport.is_some() && port(0) != self.sport {
            return false;
        }
        if self.dport.is_some() && port(2) != self.dport {
            return false;
        }
        if self.flags != 0 {
            match l4.get(13) {
                Some(f) if f & self.flags == self.flags => {}
                _ => return false,
            }
        }
        true
    }

    fn describe(&self) -> String {
        format!(
            "{:?} {:?} {:?} -> {:?}",
            self.direction, self.protocol, self.when, self.action
        )
    }
}

/// The rules of one file, with per-rule counters.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    counters: Vec<RuleCounters>,
    start: Option<Instant>,
}

impl RuleSet {
    pub fn parse(text: &str) -> Result<RuleSet, SpecError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                rules.push(Rule::parse(i + 1, line)?);
            }
        }
        let counters = rules
            .iter()
            .map(|r| RuleCounters {
                line: r.line,
                rule: r.describe(),
                ..RuleCounters::default()
            })
            .collect();
        Ok(RuleSet {
            rules,
            counters,
            start: None,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn counters(&self) -> &[RuleCounters] {
        &self.counters
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides the fate of one packet. Time windows count from the first packet seen.
    pub fn apply(&mut self, now: Instant, outbound: bool, pkt: &[u8]) -> Verdict {
        let start = *self.start.get_or_insert(now);
        let since = now - start;
        let mut verdict = Verdict::Pass;
        for (rule, c) in self.rules.iter().zip(self.counters.iter_mut()) {
            if !rule.matches(outbound, pkt) {
                continue;
            }
            c.matched += 1;
            let fires = match rule.when {
                When::Always => true,
                When::Nth { from, to } => (from..=to).contains(&c.matched),
                When::Every(n) => c.matched % n == 0,
                When::Window { from, to } => since >= from && since < to,
            };
            if fires && verdict == Verdict::Pass {
                c.fired += 1;
                verdict = Verdict::Act(rule.action);
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[33] = flags;
        p
    }

    #[test]
    fn test_parse_example_file() {
        let text = "# comment\nout tcp flags=S nth=1 drop\nin tcp sport=80 nth=3..5 duplicate\n\
                    both any from=2s to=4s drop # partition\nout tcp flags=PA nth=2 corrupt=40\nin 170 every=10 delay=200ms\n";
        let rs = RuleSet::parse(text).unwrap();
        assert_eq!(rs.rules().len(), 5);
        assert_eq!(rs.rules()[1].when, When::Nth { from: 3, to: 5 });
        assert_eq!(
            rs.rules()[2].when,
            When::Window {
                from: Duration::from_secs(2),
                to: Duration::from_secs(4)
            }
        );
        assert_eq!(rs.rules()[3].action, Action::Corrupt(40));
        assert_eq!(
            rs.rules()[4].action,
            Action::Delay(Duration::from_millis(200))
        );
    }

    #[test]
    fn test_parse_errors_name_the_line() {
        for (text, says) in [
            ("sideways tcp drop", "line 1"),
            ("out tcp nth=0 drop", "count"),
            ("out icmp sport=1 drop", "sport/dport need"),
            ("out tcp flags=X drop", "unknown TCP flag"),
            ("out tcp nth=1", "missing action"),
            ("\nout tcp wobble drop", "line 2: unknown word 'wobble'"),
        ] {
            let e = RuleSet::parse(text).unwrap_err();
            assert!(e.0.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn test_nth_syn_is_dropped_once() {
        let mut rs = RuleSet::parse("out tcp flags=S nth=2 drop").unwrap();
        let syn = tcp(1000, 80, 0x02);
        let t = Instant::ZERO;
        assert_eq!(rs.apply(t, true, &syn), Verdict::Pass);
        assert_eq!(
            rs.apply(t, false, &syn),
            Verdict::Pass,
            "inbound does not count"
        );
        assert_eq!(
            rs.apply(t, true, &tcp(1000, 80, 0x10)),
            Verdict::Pass,
            "not a SYN"
        );
        assert_eq!(rs.apply(t, true, &syn), Verdict::Act(Action::Drop));
        assert_eq!(rs.apply(t, true, &syn), Verdict::Pass);
        assert_eq!(rs.counters()[0].matched, 3);
        assert_eq!(rs.counters()[0].fired, 1);
    }

    #[test]
    fn test_window_partition_and_ports() {
        let mut rs = RuleSet::parse("both tcp dport=80 from=1s to=2s drop").unwrap();
        let p = tcp(5, 80, 0x10);
        assert_eq!(rs.apply(Instant::ZERO, true, &p), Verdict::Pass);
        assert_eq!(
            rs.apply(Instant::from_millis(1500), false, &p),
            Verdict::Act(Action::Drop)
        );
        assert_eq!(
            rs.apply(Instant::from_millis(1500), true, &tcp(5, 81, 0x10)),
            Verdict::Pass
        );
        assert_eq!(rs.apply(Instant::from_secs(2), true, &p), Verdict::Pass);
    }

    #[test]
    fn test_garbage_packets_never_match_or_panic() {
        let mut rs = RuleSet::parse("both tcp sport=1 flags=S always drop").unwrap();
        for len in 0..60 {
            let mut p = vec![0xffu8; len];
            if len > 0 {
                p[0] = 0x4f;
            }
            assert_eq!(rs.apply(Instant::ZERO, true, &p), Verdict::Pass);
        }
    }
}
