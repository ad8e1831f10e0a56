//! The TCP segment format (RFC 9293 section 3.1) and the options this stack speaks: MSS,
//! window scale and timestamps (RFC 7323), SACK-permitted and SACK blocks (RFC 2018).
//!
//! `TcpHeader::parse` validates the checksum and the data offset and never panics;
//! `TcpHeader::emit` writes header and options into a buffer the caller owns (the IP layer's
//! transmit buffer), lets the caller fill the payload in place, then checksums the whole.

use super::seq::SeqNumber;
use crate::wire::checksum;
use std::fmt;
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;
pub const MAX_OPTIONS_LEN: usize = 40;
pub const PROTOCOL: u8 = 6;
/// At most four SACK blocks fit in 40 bytes of options; three when timestamps ride along.
pub const MAX_SACK_BLOCKS: usize = 4;

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

mod opt {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WSCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMPS: u8 = 8;
}

/// The control bits. ECE and CWR are parsed and carried but never acted upon (no ECN).
#[derive(Copy, Clone, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: Flags = Flags(0x01);
    pub const SYN: Flags = Flags(0x02);
    pub const RST: Flags = Flags(0x04);
    pub const PSH: Flags = Flags(0x08);
    pub const ACK: Flags = Flags(0x10);
    pub const URG: Flags = Flags(0x20);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn fin(self) -> bool {
        self.contains(Flags::FIN)
    }
    pub fn syn(self) -> bool {
        self.contains(Flags::SYN)
    }
    pub fn rst(self) -> bool {
        self.contains(Flags::RST)
    }
    pub fn ack(self) -> bool {
        self.contains(Flags::ACK)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, o: Flags) -> Flags {
        Flags(self.0 | o.0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tcpdump's letters, so traces read the same.
        let names = [
            (Flags::SYN, 'S'),
            (Flags::FIN, 'F'),
            (Flags::RST, 'R'),
            (Flags::PSH, 'P'),
            (Flags::ACK, '.'),
            (Flags::URG, 'U'),
        ];
        for (flag, c) in names {
            if self.contains(flag) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Why a segment was refused. The caller counts these; it never answers them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    TooShort,
    BadDataOffset,
    BadChecksum,
    BadOption,
}

/// Options as parsed or to be emitted. Unknown options are skipped on parse.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    /// `(TSval, TSecr)`.
    pub timestamps: Option<(u32, u32)>,
    pub sack_blocks: [(SeqNumber, SeqNumber); MAX_SACK_BLOCKS],
    pub sack_count: u8,
}

impl TcpOptions {
    pub fn sack(&self) -> &[(SeqNumber, SeqNumber)] {
        &self.sack_blocks[..self.sack_count as usize]
    }

    /// Appends a SACK block; false when there is no room left.
    pub fn push_sack(&mut self, block: (SeqNumber, SeqNumber)) -> bool {
        let room = if self.timestamps.is_some() { 3 } else { 4 };
        if (self.sack_count as usize) >= room {
            return false;
        }
        self.sack_blocks[self.sack_count as usize] = block;
        self.sack_count += 1;
        true
    }

    /// Encodes the options, padded to a 32-bit boundary; returns the length written. The order
    /// on a SYN matches what common stacks send so that middleboxes see nothing unusual.
    fn write(&self, out: &mut [u8; MAX_OPTIONS_LEN]) -> usize {
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            out[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        };
        if let Some(mss) = self.mss {
            let m = mss.to_be_bytes();
            put(&[opt::MSS, 4, m[0], m[1]]);
        }
        if let Some((val, ecr)) = self.timestamps {
            if self.sack_permitted {
                put(&[opt::SACK_PERMITTED, 2]);
            } else {
                put(&[opt::NOP, opt::NOP]);
            }
            put(&[opt::TIMESTAMPS, 10]);
            put(&val.to_be_bytes());
            put(&ecr.to_be_bytes());
        }
        if let Some(ws) = self.wscale {
            put(&[opt::NOP, opt::WSCALE, 3, ws]);
        }
        if self.sack_permitted && self.timestamps.is_none() {
            put(&[opt::NOP, opt::NOP, opt::SACK_PERMITTED, 2]);
        }
        if self.sack_count > 0 {
            put(&[opt::NOP, opt::NOP, opt::SACK, 2 + 8 * self.sack_count]);
            for &(l, r) in self.sack() {
                put(&l.0.to_be_bytes());
                put(&r.0.to_be_bytes());
            }
        }
        let body = n;
        let padded = body.div_ceil(4) * 4;
        out[body..padded].fill(opt::END);
        padded
    }

    fn parse(mut data: &[u8]) -> Result<TcpOptions, ParseError> {
        let mut o = TcpOptions::default();
        while let Some(&kind) = data.first() {
            match kind {
                opt::END => break,
                opt::NOP => {
                    data = &data[1..];
                    continue;
                }
                _ => {}
            }
            let len = *data.get(1).ok_or(ParseError::BadOption)? as usize;
            if len < 2 || len > data.len() {
                return Err(ParseError::BadOption);
            }
            let body = &data[2..len];
            match (kind, body.len()) {
                (opt::MSS, 2) => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                // RFC 7323 section 2.3: a shift above 14 is treated as 14.
                (opt::WSCALE, 1) => o.wscale = Some(body[0].min(14)),
                (opt::SACK_PERMITTED, 0) => o.sack_permitted = true,
                (opt::TIMESTAMPS, 8) => {
                    let v = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let e = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    o.timestamps = Some((v, e));
                }
                (opt::SACK, l) if l % 8 == 0 => {
                    for b in body.chunks_exact(8).take(MAX_SACK_BLOCKS) {
                        let l = SeqNumber(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        let r = SeqNumber(u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
                        o.sack_blocks[o.sack_count as usize] = (l, r);
                        o.sack_count += 1;
                    }
                }
                (opt::MSS | opt::WSCALE | opt::SACK_PERMITTED | opt::TIMESTAMPS | opt::SACK, _) => {
                    return Err(ParseError::BadOption)
                }
                // Unknown options are skipped by their length (RFC 9293 section 3.1).
                _ => {}
            }
            data = &data[len..];
        }
        Ok(o)
    }
}

/// A segment's header, parsed and validated, or about to be emitted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TcpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNumber,
    pub ack: SeqNumber,
    pub flags: Flags,
    /// As on the wire: not yet scaled.
    pub window: u16,
    pub urgent: u16,
    pub options: TcpOptions,
}

impl TcpHeader {
    /// Parses a segment carried from `src` to `dst`, checking the checksum over the
    /// pseudo-header. Returns the header and the payload.
    pub fn parse(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        seg: &[u8],
    ) -> Result<(TcpHeader, &[u8]), ParseError> {
        if seg.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        let hlen = (seg[field::DATA_OFFSET] >> 4) as usize * 4;
        if hlen < HEADER_LEN || hlen > seg.len() {
            return Err(ParseError::BadDataOffset);
        }
        let sum = checksum::accumulate(checksum::pseudo_header(src, dst, PROTOCOL, seg.len()), seg);
        if checksum::finish(sum) != 0 {
            return Err(ParseError::BadChecksum);
        }
        let be16 = |r: std::ops::Range<usize>| u16::from_be_bytes([seg[r.start], seg[r.start + 1]]);
        let be32 = |r: std::ops::Range<usize>| {
            u32::from_be_bytes([
                seg[r.start],
                seg[r.start + 1],
                seg[r.start + 2],
                seg[r.start + 3],
            ])
        };
        let header = TcpHeader {
            src_port: be16(field::SRC_PORT),
            dst_port: be16(field::DST_PORT),
            seq: SeqNumber(be32(field::SEQ)),
            ack: SeqNumber(be32(field::ACK)),
            flags: Flags(seg[field::FLAGS]),
            window: be16(field::WINDOW),
            urgent: be16(field::URGENT),
            options: TcpOptions::parse(&seg[HEADER_LEN..hlen])?,
        };
        Ok((header, &seg[hlen..]))
    }

    /// Header length with options, a multiple of four.
    pub fn header_len(&self) -> usize {
        let mut scratch = [0u8; MAX_OPTIONS_LEN];
        HEADER_LEN + self.options.write(&mut scratch)
    }

    /// Writes the segment into `buf`, which must be exactly `header_len() + payload_len` long:
    /// the header, then `fill` writes the payload in place, then the checksum.
    pub fn emit(&self, src: Ipv4Addr, dst: Ipv4Addr, buf: &mut [u8], fill: impl FnOnce(&mut [u8])) {
        let mut opts = [0u8; MAX_OPTIONS_LEN];
        let olen = self.options.write(&mut opts);
        let hlen = HEADER_LEN + olen;
        buf[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        buf[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[field::SEQ].copy_from_slice(&self.seq.0.to_be_bytes());
        buf[field::ACK].copy_from_slice(&self.ack.0.to_be_bytes());
        buf[field::DATA_OFFSET] = ((hlen / 4) as u8) << 4;
        buf[field::FLAGS] = self.flags.0;
        buf[field::WINDOW].copy_from_slice(&self.window.to_be_bytes());
        buf[field::CHECKSUM].copy_from_slice(&[0, 0]);
        buf[field::URGENT].copy_from_slice(&self.urgent.to_be_bytes());
        buf[HEADER_LEN..hlen].copy_from_slice(&opts[..olen]);
        fill(&mut buf[hlen..]);
        let sum = checksum::accumulate(checksum::pseudo_header(src, dst, PROTOCOL, buf.len()), buf);
        buf[field::CHECKSUM].copy_from_slice(&checksum::finish(sum).to_be_bytes());
    }
}

/// Reads the ports and sequence number from the first 8 bytes of a segment, as quoted in an
/// ICMP error (RFC 792 guarantees exactly that much).
pub fn quoted_ports_seq(quote: &[u8]) -> Option<(u16, u16, SeqNumber)> {
    let q = quote.get(..8)?;
    Some((
        u16::from_be_bytes([q[0], q[1]]),
        u16::from_be_bytes([q[2], q[3]]),
        SeqNumber(u32::from_be_bytes([q[4], q[5], q[6], q[7]])),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    // A SYN from 192.168.1.1:49152 to 192.168.1.2:80, seq 0x01020304, window 64240, with
    // MSS 1460, SACK-permitted, timestamps (1, 0), NOP, window scale 7. Checksum worked by hand
    // with the 16-bit definition in the test below.
    fn syn_bytes() -> Vec<u8> {
        let mut b = vec![
            0xc0, 0x00, 0x00, 0x50, // ports
            0x01, 0x02, 0x03, 0x04, // seq
            0x00, 0x00, 0x00, 0x00, // ack
            0xa0, 0x02, 0xfa, 0xf0, // offset 10 words, SYN, window 64240
            0x00, 0x00, 0x00, 0x00, // checksum, urgent
            0x02, 0x04, 0x05, 0xb4, // MSS 1460
            0x04, 0x02, // SACK-permitted
            0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // TS
            0x01, 0x03, 0x03, 0x07, // NOP, WS 7
        ];
        let c = reference_checksum(&b);
        b[16..18].copy_from_slice(&c.to_be_bytes());
        b
    }

    fn reference_checksum(seg: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for a in [SRC.octets(), DST.octets()] {
            s += u16::from_be_bytes([a[0], a[1]]) as u32 + u16::from_be_bytes([a[2], a[3]]) as u32;
        }
        s += 6 + seg.len() as u32;
        for c in seg.chunks(2) {
            s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    fn syn_header() -> TcpHeader {
        TcpHeader {
            src_port: 49152,
            dst_port: 80,
            seq: SeqNumber(0x01020304),
            ack: SeqNumber(0),
            flags: Flags::SYN,
            window: 64240,
            urgent: 0,
            options: TcpOptions {
                mss: Some(1460),
                wscale: Some(7),
                sack_permitted: true,
                timestamps: Some((1, 0)),
                ..TcpOptions::default()
            },
        }
    }

    #[test]
    fn test_parse_syn_with_options() {
        let b = syn_bytes();
        let (h, payload) = TcpHeader::parse(SRC, DST, &b).unwrap();
        assert_eq!(h, syn_header());
        assert!(payload.is_empty());
    }

    #[test]
    fn test_emit_syn_is_byte_exact() {
        let h = syn_header();
        assert_eq!(h.header_len(), 40);
        let mut buf = vec![0xffu8; 40];
        h.emit(SRC, DST, &mut buf, |_| {});
        assert_eq!(buf, syn_bytes());
    }

    #[test]
    fn test_emit_parse_data_with_sack() {
        let mut o = TcpOptions {
            timestamps: Some((0xdead_beef, 7)),
            ..TcpOptions::default()
        };
        assert!(o.push_sack((SeqNumber(100), SeqNumber(200))));
        assert!(o.push_sack((SeqNumber(300), SeqNumber(400))));
        assert!(o.push_sack((SeqNumber(500), SeqNumber(600))));
        assert!(!o.push_sack((SeqNumber(700), SeqNumber(800))));
        let h = TcpHeader {
            src_port: 1,
            dst_port: 2,
            seq: SeqNumber(u32::MAX),
            ack: SeqNumber(5),
            flags: Flags::ACK | Flags::PSH,
            window: 1000,
            urgent: 0,
            options: o,
        };
        // 12 bytes of timestamps, 4 + 24 of SACK.
        assert_eq!(h.header_len(), 20 + 12 + 28);
        let mut buf = vec![0u8; h.header_len() + 5];
        h.emit(SRC, DST, &mut buf, |p| p.copy_from_slice(b"hello"));
        assert_eq!(&buf[20..24], &[1, 1, 8, 10]);
        assert_eq!(&buf[32..36], &[1, 1, 5, 26]);
        let c = u16::from_be_bytes([buf[16], buf[17]]);
        buf[16] = 0;
        buf[17] = 0;
        assert_eq!(c, reference_checksum(&buf));
        buf[16..18].copy_from_slice(&c.to_be_bytes());
        let (p, payload) = TcpHeader::parse(SRC, DST, &buf).unwrap();
        assert_eq!(p, h);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn test_parse_rejects_bad_input() {
        let b = syn_bytes();
        assert_eq!(
            TcpHeader::parse(SRC, DST, &b[..19]),
            Err(ParseError::TooShort)
        );
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert_eq!(
            TcpHeader::parse(SRC, DST, &bad),
            Err(ParseError::BadChecksum)
        );
        // Wrong pseudo-header: the segment was not for this address.
        assert_eq!(
            TcpHeader::parse(SRC, Ipv4Addr::new(10, 0, 0, 1), &b),
            Err(ParseError::BadChecksum)
        );
        let mut off = b.clone();
        off[12] = 0x40; // 16 bytes: shorter than the fixed header
        assert_eq!(
            TcpHeader::parse(SRC, DST, &off),
            Err(ParseError::BadDataOffset)
        );
        off[12] = 0xf0; // 60 bytes: longer than the segment
        assert_eq!(
            TcpHeader::parse(SRC, DST, &off),
            Err(ParseError::BadDataOffset)
        );
    }

    #[test]
    fn test_parse_never_panics_on_garbage_options() {
        let mut r = crate::rand::Rng::new(9);
        for _ in 0..20_000 {
            let mut b = syn_bytes();
            let n = 20 + r.below(21) as usize;
            r.fill(&mut b[20..n]);
            b.truncate(n.max(20));
            b[12] = (((b.len() / 4) as u8) << 4) & 0xf0;
            b[16] = 0;
            b[17] = 0;
            let c = reference_checksum(&b);
            b[16..18].copy_from_slice(&c.to_be_bytes());
            let _ = TcpHeader::parse(SRC, DST, &b);
        }
    }

    #[test]
    fn test_quoted_ports() {
        let b = syn_bytes();
        assert_eq!(
            quoted_ports_seq(&b),
            Some((49152, 80, SeqNumber(0x01020304)))
        );
        assert_eq!(quoted_ports_seq(&b[..7]), None);
    }
}
