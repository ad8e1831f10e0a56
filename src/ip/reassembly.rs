//! Fragment reassembly (RFC 791, with RFC 815's idea of tracking what is still missing), bounded in
//! memory and in time so that a fragment flood cannot exhaust the node.

use super::counters::{DropCounts, DropReason};
use crate::time::{Duration, Instant};
use crate::wire::ipv4::{self, Ipv4Repr};
use std::net::Ipv4Addr;

#[derive(Clone, Debug)]
pub struct ReassemblyConfig {
    /// Bytes held across all partial datagrams; the oldest is evicted past it.
    pub max_bytes: usize,
    pub max_datagrams: usize,
    /// A datagram not complete this long after its first fragment is dropped.
    pub timeout: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> ReassemblyConfig {
        ReassemblyConfig {
            max_bytes: 4 << 20,
            max_datagrams: 256,
            timeout: Duration::from_secs(30),
        }
    }
}

type Key = (Ipv4Addr, Ipv4Addr, u8, u16);

#[derive(Debug)]
struct Partial {
    key: Key,
    data: Vec<u8>,
    /// Byte ranges received, sorted and merged.
    have: Vec<(usize, usize)>,
    /// Known once the last fragment (MF clear) arrives.
    total: Option<usize>,
    /// The header of the fragment at offset 0, once seen.
    first: Option<Ipv4Repr>,
    deadline: Instant,
}

impl Partial {
    fn insert_range(&mut self, start: usize, end: usize) {
        self.have.push((start, end));
        self.have.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.have.len());
        for &(s, e) in &self.have {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.have = merged;
    }

    fn is_complete(&self) -> bool {
        matches!(self.total, Some(t) if self.have.len() == 1 && self.have[0] == (0, t) && self.first.is_some())
    }
}

pub(super) enum Outcome<'a> {
    Incomplete,
    Dropped,
    Complete(Ipv4Repr, &'a [u8]),
}

#[derive(Debug)]
pub(super) struct Reassembler {
    cfg: ReassemblyConfig,
    partials: Vec<Partial>,
    bytes: usize,
    /// The last completed datagram; handed out by reference until the next call.
    done: Vec<u8>,
}

impl Reassembler {
    pub(super) fn new(cfg: ReassemblyConfig) -> Reassembler {
        Reassembler {
            cfg,
            partials: Vec::new(),
            bytes: 0,
            done: Vec::new(),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    fn remove(&mut self, i: usize) -> Partial {
        let p = self.partials.swap_remove(i);
        self.bytes -= p.data.len();
        p
    }

    fn evict_oldest(&mut self, drops: &mut DropCounts) -> bool {
        let oldest = (0..self.partials.len()).min_by_key(|&i| self.partials[i].deadline);
        match oldest {
            Some(i) => {
                self.remove(i);
                drops.add(DropReason::ReassemblyLimit);
                true
            }
            None => false,
        }
    }

    pub(super) fn add(
        &mut self,
        now: Instant,
        h: &Ipv4Repr,
        payload: &[u8],
        drops: &mut DropCounts,
    ) -> Outcome<'_> {
        let start = h.frag_offset;
        let end = start + payload.len();
        // Non-final fragments carry multiples of 8 bytes; nothing may reach past 64 KiB.
        let malformed = (h.more_fragments && (payload.is_empty() || payload.len() % 8 != 0))
            || end + ipv4::HEADER_LEN > ipv4::MAX_DATAGRAM;
        if malformed {
            drops.add(DropReason::BadFragment);
            return Outcome::Dropped;
        }
        let key = (h.src, h.dst, h.protocol, h.ident);
        let idx = match self.partials.iter().position(|p| p.key == key) {
            Some(i) => i,
            None => {
                while self.partials.len() >= self.cfg.max_datagrams {
                    self.evict_oldest(drops);
                }
                self.partials.push(Partial {
                    key,
                    data: Vec::new(),
                    have: Vec::new(),
                    total: None,
                    first: None,
                    deadline: now + self.cfg.timeout,
                });
                self.partials.len() - 1
            }
        };
        if !h.more_fragments {
            let p = &self.partials[idx];
            let conflicting =
                matches!(p.total, Some(t) if t != end) || p.have.last().is_some_and(|r| r.1 > end);
            if conflicting {
                self.remove(idx);
                drops.add(DropReason::BadFragment);
                return Outcome::Dropped;
            }
        } else if matches!(self.partials[idx].total, Some(t) if end > t) {
            self.remove(idx);
            drops.add(DropReason::BadFragment);
            return Outcome::Dropped;
        }
        // Grow the buffer within the memory bound, evicting older datagrams first.
        let grow = end.saturating_sub(self.partials[idx].data.len());
        if grow > self.cfg.max_bytes {
            self.remove(idx);
            drops.add(DropReason::ReassemblyLimit);
            return Outcome::Dropped;
        }
        while self.bytes + grow > self.cfg.max_bytes {
            // Evict others, never the one being filled.
            let victim = (0..self.partials.len())
                .filter(|&i| i != idx)
                .min_by_key(|&i| self.partials[i].deadline);
            match victim {
                Some(v) => {
                    let last = self.partials.len() - 1;
                    self.remove(v);
                    drops.add(DropReason::ReassemblyLimit);
                    // swap_remove moved the last element into `v`.
                    if idx == last {
                        return self.add_at(v, h, payload, grow);
                    }
                }
                None => break,
            }
        }
        self.add_at(idx, h, payload, grow)
    }

    fn add_at(&mut self, idx: usize, h: &Ipv4Repr, payload: &[u8], grow: usize) -> Outcome<'_> {
        let start = h.frag_offset;
        let end = start + payload.len();
        self.bytes += grow;
        let p = &mut self.partials[idx];
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[start..end].copy_from_slice(payload);
        if !payload.is_empty() {
            p.insert_range(start, end);
        }
        if !h.more_fragments {
            p.total = Some(end);
        }
        if start == 0 {
            p.first = Some(*h);
        }
        if !p.is_complete() {
            return Outcome::Incomplete;
        }
        let p = self.remove(idx);
        let mut whole = p.first.expect("complete implies first fragment");
        whole.more_fragments = false;
        whole.frag_offset = 0;
        whole.header_len = ipv4::HEADER_LEN;
        whole.payload_len = p.data.len();
        self.done = p.data;
        Outcome::Complete(whole, &self.done)
    }

    pub(super) fn expire(&mut self, now: Instant, drops: &mut DropCounts) {
        let mut i = 0;
        while i < self.partials.len() {
            if self.partials[i].deadline <= now {
                self.remove(i);
                drops.add(DropReason::ReassemblyTimeout);
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn poll_at(&self) -> Option<Instant> {
        self.partials.iter().map(|p| p.deadline).min()
    }
}
