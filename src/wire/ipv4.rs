//! IPv4 header (RFC 791): parse with validation, emit into a caller's buffer.

use super::checksum;
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;
/// The largest datagram IPv4 can describe.
pub const MAX_DATAGRAM: usize = 65_535;
pub const DEFAULT_TTL: u8 = 64;

/// Why a buffer is not a valid IPv4 packet. Each variant is a drop reason the IP layer counts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a minimal header, or than the header length it claims.
    TooShort,
    BadVersion,
    /// IHL below 5 words.
    BadIhl,
    /// Total length smaller than the header, or larger than the buffer.
    BadTotalLength,
    BadChecksum,
}

/// A validated IPv4 header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in bytes (the wire field counts 8-byte units).
    pub frag_offset: usize,
    /// Header length in bytes, options included.
    pub header_len: usize,
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// A header for an unfragmented packet we send.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) -> Ipv4Repr {
        Ipv4Repr {
            src,
            dst,
            protocol,
            ttl: DEFAULT_TTL,
            ident: 0,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            header_len: HEADER_LEN,
            payload_len,
        }
    }

    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }

    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    /// Parses and validates a packet, returning the header and the payload (trailing bytes past
    /// the total length, such as link padding, are cut off).
    pub fn parse(buf: &[u8]) -> Result<(Ipv4Repr, &[u8]), ParseError> {
        use etherparse::err::ipv4::{HeaderError, HeaderSliceError};
        let hdr = match etherparse::Ipv4HeaderSlice::from_slice(buf) {
            Ok(h) => h,
            Err(HeaderSliceError::Len(_)) => {
                // A wrong version byte tells more than the length does, whatever the size.
                if !buf.is_empty() && buf[0] >> 4 != 4 {
                    return Err(ParseError::BadVersion);
                }
                if !buf.is_empty() && buf[0] & 0x0f < 5 {
                    return Err(ParseError::BadIhl);
                }
                return Err(ParseError::TooShort);
            }
            Err(HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. })) => {
                return Err(ParseError::BadVersion)
            }
            Err(HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader {
                ..
            })) => return Err(ParseError::BadIhl),
        };
        let header_len = hdr.slice().len();
        let total_len = hdr.total_len() as usize;
        if total_len < header_len || total_len > buf.len() {
            return Err(ParseError::BadTotalLength);
        }
        if !checksum::verify(hdr.slice()) {
            return Err(ParseError::BadChecksum);
        }
        let repr = Ipv4Repr {
            src: hdr.source_addr(),
            dst: hdr.destination_addr(),
            protocol: hdr.protocol().0,
            ttl: hdr.ttl(),
            ident: hdr.identification(),
            dont_fragment: hdr.dont_fragment(),
            more_fragments: hdr.more_fragments(),
            frag_offset: hdr.fragments_offset().value() as usize * 8,
            header_len,
            payload_len: total_len - header_len,
        };
        Ok((repr, &buf[header_len..total_len]))
    }

    /// Writes a 20-byte header (options are never emitted) with its checksum into `buf[..20]`.
    pub fn emit(&self, buf: &mut [u8]) {
        let total = (HEADER_LEN + self.payload_len) as u16;
        let mut flags_frag = (self.frag_offset / 8) as u16 & 0x1fff;
        if self.dont_fragment {
            flags_frag |= 0x4000;
        }
        if self.more_fragments {
            flags_frag |= 0x2000;
        }
        let h = &mut buf[..HEADER_LEN];
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.ident.to_be_bytes());
        h[6..8].copy_from_slice(&flags_frag.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.protocol;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ICMP echo request 198.18.0.1 -> 198.18.0.2, 4 bytes of payload, ident 0x1234, DF set.
    const PACKET: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 198, 18, 0, 1, 198,
        18, 0, 2, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn packet() -> Vec<u8> {
        let mut p = PACKET.to_vec();
        let c = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn test_parse_known_packet() {
        let p = packet();
        let (repr, payload) = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(repr.src, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(repr.dst, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(repr.protocol, 1);
        assert_eq!(repr.ttl, 64);
        assert_eq!(repr.ident, 0x1234);
        assert!(repr.dont_fragment && !repr.is_fragment());
        assert_eq!(payload, &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn test_emit_matches_known_packet() {
        let p = packet();
        let (repr, _) = Ipv4Repr::parse(&p).unwrap();
        let mut out = [0u8; 20];
        repr.emit(&mut out);
        assert_eq!(&out[..], &p[..20]);
    }

    #[test]
    fn test_trailing_bytes_are_cut() {
        let mut p = packet();
        p.extend_from_slice(&[0; 6]);
        let (_, payload) = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(payload.len(), 4);
    }

    #[test]
    fn test_each_malformed_class() {
        assert_eq!(Ipv4Repr::parse(&[]), Err(ParseError::TooShort));
        assert_eq!(Ipv4Repr::parse(&packet()[..10]), Err(ParseError::TooShort));
        let mut p = packet();
        p[0] = 0x65;
        assert_eq!(Ipv4Repr::parse(&p), Err(ParseError::BadVersion));
        let mut p = packet();
        p[0] = 0x44;
        assert_eq!(Ipv4Repr::parse(&p), Err(ParseError::BadIhl));
        let mut p = packet();
        p[0] = 0x4f; // claims 60 bytes of header, buffer has 24
        assert_eq!(Ipv4Repr::parse(&p), Err(ParseError::TooShort));
        let mut p = packet();
        p[3] = 0x40; // total length 64 > 24
        assert_eq!(Ipv4Repr::parse(&p), Err(ParseError::BadTotalLength));
        let mut p = packet();
        p[3] = 0x10; // total length 16 < header
        assert_eq!(Ipv4Repr::parse(&p), Err(ParseError::BadTotalLength));
        let mut p = packet();
        p[10] ^= 0xff;
        assert_eq!(Ipv4Repr::parse(&p), Err(ParseError::BadChecksum));
    }

    #[test]
    fn test_fragment_fields_round_trip() {
        let mut r = Ipv4Repr::new(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 17, 8);
        r.more_fragments = true;
        r.frag_offset = 1480;
        r.ident = 77;
        let mut buf = vec![0u8; 28];
        r.emit(&mut buf);
        let (back, _) = Ipv4Repr::parse(&buf).unwrap();
        assert_eq!(back, r);
    }
}
