//! Echo requests the node sends itself (`ping`), matched to their replies.

use crate::time::{Duration, Instant};
use std::collections::VecDeque;
use std::net::Ipv4Addr;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PingReply {
    pub from: Ipv4Addr,
    pub seq: u16,
    pub rtt: Duration,
    /// ICMP payload bytes echoed.
    pub bytes: usize,
    pub ttl: u8,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PingEvent {
    Reply(PingReply),
    Timeout { dst: Ipv4Addr, seq: u16 },
}

#[derive(Debug)]
pub(super) struct Pinger {
    ident: u16,
    next_seq: u16,
    timeout: Duration,
    /// (seq, destination, sent at); bounded so that pings nobody answers cannot pile up.
    outstanding: VecDeque<(u16, Ipv4Addr, Instant)>,
    events: VecDeque<PingEvent>,
}

const MAX_OUTSTANDING: usize = 1024;

impl Pinger {
    pub(super) fn new(ident: u16, timeout: Duration) -> Pinger {
        Pinger {
            ident,
            next_seq: 1,
            timeout,
            outstanding: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub(super) fn ident(&self) -> u16 {
        self.ident
    }

    pub(super) fn next_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    pub(super) fn sent(&mut self, now: Instant, dst: Ipv4Addr, seq: u16) {
        if self.outstanding.len() >= MAX_OUTSTANDING {
            if let Some((seq, dst, _)) = self.outstanding.pop_front() {
                self.push_event(PingEvent::Timeout { dst, seq });
            }
        }
        self.outstanding.push_back((seq, dst, now));
    }

    fn push_event(&mut self, e: PingEvent) {
        if self.events.len() >= MAX_OUTSTANDING {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    pub(super) fn handle_reply(
        &mut self,
        now: Instant,
        from: Ipv4Addr,
        ident: u16,
        seq: u16,
        bytes: usize,
        ttl: u8,
    ) {
        if ident != self.ident {
            return;
        }
        if let Some(i) = self
            .outstanding
            .iter()
            .position(|&(s, d, _)| s == seq && d == from)
        {
            let (_, _, sent) = self.outstanding.remove(i).expect("index from position");
            self.push_event(PingEvent::Reply(PingReply {
                from,
                seq,
                rtt: now - sent,
                bytes,
                ttl,
            }));
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(seq, dst, sent)) = self.outstanding.front() {
            if now - sent < self.timeout {
                break;
            }
            self.outstanding.pop_front();
            self.push_event(PingEvent::Timeout { dst, seq });
        }
    }

    pub(super) fn poll_at(&self) -> Option<Instant> {
        self.outstanding
            .front()
            .map(|&(_, _, sent)| sent + self.timeout)
    }

    pub(super) fn poll_event(&mut self) -> Option<PingEvent> {
        self.events.pop_front()
    }
}
