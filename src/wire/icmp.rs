//! ICMPv4 (RFC 792): the messages the stack answers, sends and interprets.

use super::checksum;

pub const HEADER_LEN: usize = 8;

pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Destination-unreachable codes (RFC 792, RFC 1191).
pub mod unreachable {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    pub const FRAG_NEEDED: u8 = 4;
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    TooShort,
    BadChecksum,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IcmpRepr<'a> {
    EchoRequest {
        ident: u16,
        seq: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq: u16,
        data: &'a [u8],
    },
    /// `original` is the offending packet's IP header and at least 8 bytes of its payload.
    DstUnreachable {
        code: u8,
        next_hop_mtu: u16,
        original: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        original: &'a [u8],
    },
    /// Any other type: parsed far enough to be counted, never answered.
    Other {
        kind: u8,
        code: u8,
    },
}

impl<'a> IcmpRepr<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<IcmpRepr<'a>, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if !checksum::verify(buf) {
            return Err(ParseError::BadChecksum);
        }
        let (kind, code) = (buf[0], buf[1]);
        let w1 = u16::from_be_bytes([buf[4], buf[5]]);
        let w2 = u16::from_be_bytes([buf[6], buf[7]]);
        let rest = &buf[HEADER_LEN..];
        Ok(match kind {
            kind::ECHO_REQUEST if code == 0 => IcmpRepr::EchoRequest {
                ident: w1,
                seq: w2,
                data: rest,
            },
            kind::ECHO_REPLY if code == 0 => IcmpRepr::EchoReply {
                ident: w1,
                seq: w2,
                data: rest,
            },
            kind::DST_UNREACHABLE => IcmpRepr::DstUnreachable {
                code,
                next_hop_mtu: w2,
                original: rest,
            },
            kind::TIME_EXCEEDED => IcmpRepr::TimeExceeded {
                code,
                original: rest,
            },
            _ => IcmpRepr::Other { kind, code },
        })
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                IcmpRepr::EchoRequest { data, .. } | IcmpRepr::EchoReply { data, .. } => data.len(),
                IcmpRepr::DstUnreachable { original, .. }
                | IcmpRepr::TimeExceeded { original, .. } => original.len(),
                IcmpRepr::Other { .. } => 0,
            }
    }

    /// Writes the message with its checksum into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) {
        let buf = &mut buf[..self.buffer_len()];
        let (kind, code, w1, w2, body): (u8, u8, u16, u16, &[u8]) = match *self {
            IcmpRepr::EchoRequest { ident, seq, data } => (kind::ECHO_REQUEST, 0, ident, seq, data),
            IcmpRepr::EchoReply { ident, seq, data } => (kind::ECHO_REPLY, 0, ident, seq, data),
            IcmpRepr::DstUnreachable {
                code,
                next_hop_mtu,
                original,
            } => (kind::DST_UNREACHABLE, code, 0, next_hop_mtu, original),
            IcmpRepr::TimeExceeded { code, original } => {
                (kind::TIME_EXCEEDED, code, 0, 0, original)
            }
            IcmpRepr::Other { kind, code } => (kind, code, 0, 0, &[]),
        };
        buf[0] = kind;
        buf[1] = code;
        buf[2..4].copy_from_slice(&[0, 0]);
        buf[4..6].copy_from_slice(&w1.to_be_bytes());
        buf[6..8].copy_from_slice(&w2.to_be_bytes());
        buf[HEADER_LEN..].copy_from_slice(body);
        let c = checksum::checksum(buf);
        buf[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_echo_request_bytes() {
        let repr = IcmpRepr::EchoRequest {
            ident: 0x0102,
            seq: 3,
            data: b"abcd",
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf);
        // type 8, code 0, checksum, ident 0x0102, seq 3, payload.
        assert_eq!(&buf[..2], &[8, 0]);
        assert_eq!(&buf[4..8], &[1, 2, 0, 3]);
        assert_eq!(&buf[8..], b"abcd");
        assert_eq!(checksum::checksum(&buf), 0);
        // Hand-computed: 0x0800 + 0x0102 + 0x0003 + 0x6162 + 0x6364 = 0xcdcb, complement 0x3234.
        assert_eq!(&buf[2..4], &[0x32, 0x34]);
        assert_eq!(IcmpRepr::parse(&buf).unwrap(), repr);
    }

    #[test]
    fn test_unreachable_round_trip_and_errors() {
        let orig = [0x45u8; 28];
        let repr = IcmpRepr::DstUnreachable {
            code: unreachable::PROTOCOL,
            next_hop_mtu: 0,
            original: &orig,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf);
        assert_eq!(IcmpRepr::parse(&buf).unwrap(), repr);
        assert_eq!(IcmpRepr::parse(&buf[..7]), Err(ParseError::TooShort));
        buf[9] ^= 1;
        assert_eq!(IcmpRepr::parse(&buf), Err(ParseError::BadChecksum));
    }
}
