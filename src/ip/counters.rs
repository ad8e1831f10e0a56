//! What the IP layer counts, by name, for `ctl status`.

use crate::wire::ipv4;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Why an inbound packet was dropped. The names (`as_str`) are what `ctl status --json` shows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    TooShort,
    BadVersion,
    BadIhl,
    BadTotalLength,
    BadChecksum,
    TtlExpired,
    NotForUs,
    BadSource,
    BadFragment,
    ReassemblyTimeout,
    ReassemblyLimit,
    IcmpTooShort,
    IcmpBadChecksum,
    BroadcastEcho,
    UnknownProtocol,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::TooShort,
        DropReason::BadVersion,
        DropReason::BadIhl,
        DropReason::BadTotalLength,
        DropReason::BadChecksum,
        DropReason::TtlExpired,
        DropReason::NotForUs,
        DropReason::BadSource,
        DropReason::BadFragment,
        DropReason::ReassemblyTimeout,
        DropReason::ReassemblyLimit,
        DropReason::IcmpTooShort,
        DropReason::IcmpBadChecksum,
        DropReason::BroadcastEcho,
        DropReason::UnknownProtocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::BadVersion => "bad_version",
            DropReason::BadIhl => "bad_ihl",
            DropReason::BadTotalLength => "bad_total_length",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NotForUs => "not_for_us",
            DropReason::BadSource => "bad_source",
            DropReason::BadFragment => "bad_fragment",
            DropReason::ReassemblyTimeout => "reassembly_timeout",
            DropReason::ReassemblyLimit => "reassembly_limit",
            DropReason::IcmpTooShort => "icmp_too_short",
            DropReason::IcmpBadChecksum => "icmp_bad_checksum",
            DropReason::BroadcastEcho => "broadcast_echo",
            DropReason::UnknownProtocol => "unknown_protocol",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl From<ipv4::ParseError> for DropReason {
    fn from(e: ipv4::ParseError) -> DropReason {
        match e {
            ipv4::ParseError::TooShort => DropReason::TooShort,
            ipv4::ParseError::BadVersion => DropReason::BadVersion,
            ipv4::ParseError::BadIhl => DropReason::BadIhl,
            ipv4::ParseError::BadTotalLength => DropReason::BadTotalLength,
            ipv4::ParseError::BadChecksum => DropReason::BadChecksum,
        }
    }
}

/// One counter per drop reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn add(&mut self, r: DropReason) {
        self.0[r.index()] += 1;
    }
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.index()]
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

impl Serialize for DropCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(DropReason::ALL.len()))?;
        for (r, n) in self.iter() {
            m.serialize_entry(r.as_str(), &n)?;
        }
        m.end()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IcmpCounters {
    pub echo_requests_in: u64,
    pub echo_replies_out: u64,
    pub echo_requests_out: u64,
    pub echo_replies_in: u64,
    pub unreachable_in: u64,
    pub unreachable_out: u64,
    pub time_exceeded_in: u64,
    pub other_in: u64,
    /// Errors we did not send because the ICMP error rate limit was spent.
    pub errors_rate_limited: u64,
    /// Echo replies that could not be queued (transmit queue full).
    pub replies_not_sent: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IpCounters {
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Datagrams handed to a transport (after reassembly).
    pub delivered: u64,
    pub fragments_in: u64,
    pub reassembled: u64,
    pub drops: DropCounts,
    pub icmp: IcmpCounters,
}
