//! The common header of protocols 170 and 171 and the payloads of protocol 170.
//!
//! Every packet of either protocol starts with the same 44-byte header (all integers big-endian):
//!
//! ```text
//!  0      1      2      3      4              8
//! +------+------+------+------+--------------+
//! | ver  | type | flags| rsvd |  CRC-32C     |
//! +------+------+------+------+--------------+
//!  8: sender node id (u64)
//! 16: sender boot epoch (u64)
//! 24: receiver boot epoch as the sender knows it (u64, 0 = unknown)
//! 32: seq (u32)      36: ack (u32)
//! 40: payload length (u16)   42: reserved (u16, zero)
//! 44: payload
//! ```
//!
//! The CRC-32C (Castagnoli) covers the whole packet with the checksum field read as zero: IP
//! protects only its own header, so without it a flipped payload bit would reach the application.

use std::net::Ipv4Addr;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 44;

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const FLAGS: usize = 2;
    pub const RESERVED: usize = 3;
    pub const CHECKSUM: Range<usize> = 4..8;
    pub const NODE_ID: Range<usize> = 8..16;
    pub const EPOCH: Range<usize> = 16..24;
    pub const PEER_EPOCH: Range<usize> = 24..32;
    pub const SEQ: Range<usize> = 32..36;
    pub const ACK: Range<usize> = 36..40;
    pub const LEN: Range<usize> = 40..42;
    pub const RESERVED2: Range<usize> = 42..44;
}

/// Why bytes are not a packet. Each variant has its own counter.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header, or than the payload length it claims.
    Truncated,
    BadVersion,
    BadChecksum,
    /// A payload that does not match its type's layout.
    BadPayload,
    UnknownType,
}

/// The validated common header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub ty: u8,
    pub flags: u8,
    pub node_id: u64,
    pub epoch: u64,
    pub peer_epoch: u64,
    pub seq: u32,
    pub ack: u32,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// CRC-32C of a whole packet, reading its checksum field as zero.
pub fn packet_crc(buf: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&buf[..field::CHECKSUM.start]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &buf[field::CHECKSUM.end..])
}

impl Header {
    /// Validates version, lengths and checksum; returns the header and exactly the payload.
    /// Trailing bytes beyond the stated payload length are rejected: IP already gave us the
    /// exact datagram length, so extra bytes mean a broken sender.
    pub fn parse(buf: &[u8]) -> Result<(Header, &[u8]), WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf[field::VERSION] != VERSION {
            return Err(WireError::BadVersion);
        }
        let len = be_u16(&buf[field::LEN]) as usize;
        if HEADER_LEN + len != buf.len() {
            return Err(WireError::Truncated);
        }
        if packet_crc(buf) != be_u32(&buf[field::CHECKSUM]) {
            return Err(WireError::BadChecksum);
        }
        let h = Header {
            ty: buf[field::TYPE],
            flags: buf[field::FLAGS],
            node_id: be_u64(&buf[field::NODE_ID]),
            epoch: be_u64(&buf[field::EPOCH]),
            peer_epoch: be_u64(&buf[field::PEER_EPOCH]),
            seq: be_u32(&buf[field::SEQ]),
            ack: be_u32(&buf[field::ACK]),
        };
        Ok((h, &buf[HEADER_LEN..]))
    }

    /// Writes the header into `buf[..HEADER_LEN]` and seals the packet. The payload must already
    /// be in `buf[HEADER_LEN..]`, because the checksum covers it; `buf` is the whole packet.
    pub fn emit(&self, buf: &mut [u8]) {
        debug_assert!(buf.len() >= HEADER_LEN && buf.len() - HEADER_LEN <= u16::MAX as usize);
        buf[field::VERSION] = VERSION;
        buf[field::TYPE] = self.ty;
        buf[field::FLAGS] = self.flags;
        buf[field::RESERVED] = 0;
        buf[field::NODE_ID].copy_from_slice(&self.node_id.to_be_bytes());
        buf[field::EPOCH].copy_from_slice(&self.epoch.to_be_bytes());
        buf[field::PEER_EPOCH].copy_from_slice(&self.peer_epoch.to_be_bytes());
        buf[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        buf[field::ACK].copy_from_slice(&self.ack.to_be_bytes());
        let len = (buf.len() - HEADER_LEN) as u16;
        buf[field::LEN].copy_from_slice(&len.to_be_bytes());
        buf[field::RESERVED2].copy_from_slice(&[0, 0]);
        let crc = packet_crc(buf);
        buf[field::CHECKSUM].copy_from_slice(&crc.to_be_bytes());
    }
}

/// A cursor that reads big-endian fields and fails instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::BadPayload);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(be_u16(self.bytes(2)?))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(be_u32(self.bytes(4)?))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(be_u64(self.bytes(8)?))
    }
    /// A UTF-8 string preceded by a u8 length.
    pub fn str8(&mut self) -> Result<&'a str, WireError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| WireError::BadPayload)
    }
    /// A UTF-8 string preceded by a u16 length.
    pub fn str16(&mut self) -> Result<&'a str, WireError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| WireError::BadPayload)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A cursor that writes big-endian fields into a buffer sized in advance.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Writer<'a> {
        Writer { buf, pos: 0 }
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
    /// The caller has already truncated `s` to 255 bytes.
    pub fn str8(&mut self, s: &str) {
        self.u8(s.len() as u8);
        self.bytes(s.as_bytes());
    }
    pub fn str16(&mut self, s: &str) {
        self.u16(s.len() as u16);
        self.bytes(s.as_bytes());
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
}

/// The longest prefix of `s` that fits in `max` bytes without splitting a character.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Packet types of protocol 170.
pub mod ty {
    pub const DATA: u8 = 1;
    pub const ACK: u8 = 2;
    pub const HELLO: u8 = 3;
}

/// Flag bits of protocol 170.
pub mod flags {
    /// DATA: the first segment of a stream; the receiver starts (or jumps) its expectation here.
    pub const SYN: u8 = 0x01;
    /// DATA: the first segment of a message.
    pub const FIRST: u8 = 0x02;
    /// DATA: the last segment of a message.
    pub const LAST: u8 = 0x04;
    /// HELLO: the sender wants a HELLO back.
    pub const REQUEST: u8 = 0x01;
    /// HELLO: `ack` echoes the `seq` of the HELLO this one answers (an RTT sample).
    pub const ECHO: u8 = 0x02;
}

/// At most this many SACK ranges go in one ACK: enough to describe a window of 1024 segments
/// with moderate loss, and 4 + 8·32 bytes keeps ACKs small.
pub const MAX_SACK_RANGES: usize = 32;
/// Peers listed in one HELLO.
pub const MAX_HELLO_PEERS: usize = 64;

/// The payload of an ACK: ranges `[start, end)` of sequence numbers held above the cumulative ack.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AckRepr {
    pub ranges: Vec<(u32, u32)>,
}

impl AckRepr {
    pub fn parse(p: &[u8]) -> Result<AckRepr, WireError> {
        let mut r = Reader::new(p);
        let n = r.u8()? as usize;
        if n > MAX_SACK_RANGES {
            return Err(WireError::BadPayload);
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            ranges.push((r.u32()?, r.u32()?));
        }
        if !r.is_empty() {
            return Err(WireError::BadPayload);
        }
        Ok(AckRepr { ranges })
    }
    pub fn buffer_len(&self) -> usize {
        1 + 8 * self.ranges.len().min(MAX_SACK_RANGES)
    }
    pub fn emit(&self, buf: &mut [u8]) {
        let mut w = Writer::new(buf);
        let n = self.ranges.len().min(MAX_SACK_RANGES);
        w.u8(n as u8);
        for &(a, b) in &self.ranges[..n] {
            w.u32(a);
            w.u32(b);
        }
    }
}

/// The payload of a HELLO: who we are and whom we know.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HelloRepr {
    pub name: String,
    pub peers: Vec<Ipv4Addr>,
}

impl HelloRepr {
    pub fn parse(p: &[u8]) -> Result<HelloRepr, WireError> {
        let mut r = Reader::new(p);
        let name = r.str8()?.to_string();
        let n = r.u8()? as usize;
        if n > MAX_HELLO_PEERS {
            return Err(WireError::BadPayload);
        }
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            peers.push(Ipv4Addr::from(r.u32()?));
        }
        if !r.is_empty() {
            return Err(WireError::BadPayload);
        }
        Ok(HelloRepr { name, peers })
    }
    pub fn buffer_len(&self) -> usize {
        1 + truncate_str(&self.name, 255).len() + 1 + 4 * self.peers.len().min(MAX_HELLO_PEERS)
    }
    pub fn emit(&self, buf: &mut [u8]) {
        let mut w = Writer::new(buf);
        w.str8(truncate_str(&self.name, 255));
        let n = self.peers.len().min(MAX_HELLO_PEERS);
        w.u8(n as u8);
        for p in &self.peers[..n] {
            w.u32(u32::from(*p));
        }
    }
}

/// A message as it travels: the bytes that DATA segments carry, split wherever the MTU says.
///
/// ```text
/// u64 message id | u16 channel length, channel | u16 sender length, sender |
/// u8 timestamp length, timestamp | u8 is_file (0/1) | u32 content length, content
/// ```
///
/// The message id is the sender's own (`MessageId`, increasing per sender life). Sequence
/// numbers change when the sender renumbers a stream after the receiver restarted; the id does
/// not, so with the header's node id and boot epoch it names the message across that restart and
/// the receiver can refuse one it delivered in its previous life.
pub mod message {
    use super::{Reader, WireError, Writer};

    /// A message's fields as they are on the wire, borrowed from the bytes or from the caller.
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub struct Fields<'a> {
        pub id: u64,
        pub content: &'a str,
        pub sender: &'a str,
        pub channel: &'a str,
        pub timestamp: &'a str,
        pub is_file: bool,
    }

    pub fn encoded_len(m: &Fields<'_>) -> usize {
        8 + 2
            + m.channel.len()
            + 2
            + m.sender.len()
            + 1
            + m.timestamp.len()
            + 1
            + 4
            + m.content.len()
    }

    /// The caller has checked that the strings fit their length fields.
    pub fn encode(out: &mut Vec<u8>, m: &Fields<'_>) {
        let start = out.len();
        out.resize(start + encoded_len(m), 0);
        let mut w = Writer::new(&mut out[start..]);
        w.u64(m.id);
        w.str16(m.channel);
        w.str16(m.sender);
        w.str8(m.timestamp);
        w.u8(m.is_file as u8);
        w.u32(m.content.len() as u32);
        w.bytes(m.content.as_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<Fields<'_>, WireError> {
        let mut r = Reader::new(b);
        let id = r.u64()?;
        let channel = r.str16()?;
        let sender = r.str16()?;
        let timestamp = r.str8()?;
        let is_file = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(WireError::BadPayload),
        };
        let n = r.u32()? as usize;
        let content = std::str::from_utf8(r.bytes(n)?).map_err(|_| WireError::BadPayload)?;
        if !r.is_empty() {
            return Err(WireError::BadPayload);
        }
        Ok(Fields {
            id,
            content,
            sender,
            channel,
            timestamp,
            is_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crc32c_check_value() {
        // The catalogue check value of CRC-32C: proves we use Castagnoli, not IEEE.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    const HDR: Header = Header {
        ty: ty::DATA,
        flags: flags::SYN | flags::FIRST | flags::LAST,
        node_id: 0x0102_0304_0506_0708,
        epoch: 9,
        peer_epoch: 10,
        seq: 0x11,
        ack: 0x22,
    };

    fn literal() -> Vec<u8> {
        let mut p = vec![
            0x01, 0x01, 0x07, 0x00, // version, type, flags, reserved
            0x00, 0x00, 0x00, 0x00, // checksum, patched below
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // node id
            0, 0, 0, 0, 0, 0, 0, 9, // epoch
            0, 0, 0, 0, 0, 0, 0, 10, // peer epoch
            0, 0, 0, 0x11, // seq
            0, 0, 0, 0x22, // ack
            0x00, 0x03, 0x00, 0x00, // payload length, reserved
            b'a', b'b', b'c',
        ];
        // Fixed value, computed once: it pins the checksum definition.
        p[4..8].copy_from_slice(&CRC.to_be_bytes());
        p
    }
    const CRC: u32 = 0x2EA2_4749;

    #[test]
    fn test_header_emit_matches_literal() {
        let mut buf = vec![0u8; HEADER_LEN + 3];
        buf[HEADER_LEN..].copy_from_slice(b"abc");
        HDR.emit(&mut buf);
        assert_eq!(buf, literal());
    }

    #[test]
    fn test_header_parse_literal() {
        let p = literal();
        let (h, payload) = Header::parse(&p).unwrap();
        assert_eq!(h, HDR);
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn test_header_rejects_damage() {
        let p = literal();
        assert_eq!(Header::parse(&p[..10]), Err(WireError::Truncated));
        assert_eq!(Header::parse(&p[..p.len() - 1]), Err(WireError::Truncated));
        let mut v = p.clone();
        v[0] = 2;
        assert_eq!(Header::parse(&v), Err(WireError::BadVersion));
        for i in 1..p.len() {
            let mut v = p.clone();
            v[i] ^= 0x10;
            assert!(Header::parse(&v).is_err(), "flip in byte {i} accepted");
        }
    }

    #[test]
    fn test_parse_never_panics_on_garbage() {
        let mut rng = crate::rand::Rng::new(5);
        let mut buf = [0u8; 200];
        for i in 0..20_000 {
            let n = rng.below(200) as usize;
            rng.fill(&mut buf[..n]);
            if i % 2 == 0 && n >= HEADER_LEN {
                // Make some of them pass the outer checks so the payload parsers get exercised.
                buf[0] = VERSION;
                buf[40..42].copy_from_slice(&((n - HEADER_LEN) as u16).to_be_bytes());
                let crc = packet_crc(&buf[..n]);
                buf[4..8].copy_from_slice(&crc.to_be_bytes());
            }
            if let Ok((_, p)) = Header::parse(&buf[..n]) {
                let _ = AckRepr::parse(p);
                let _ = HelloRepr::parse(p);
                let _ = message::decode(p);
            }
        }
    }

    #[test]
    fn test_ack_payload_literal() {
        let a = AckRepr {
            ranges: vec![(5, 7), (0x0100, 0x0102)],
        };
        let lit = [2, 0, 0, 0, 5, 0, 0, 0, 7, 0, 0, 1, 0, 0, 0, 1, 2];
        let mut buf = vec![0u8; a.buffer_len()];
        a.emit(&mut buf);
        assert_eq!(buf, lit);
        assert_eq!(AckRepr::parse(&lit).unwrap(), a);
        assert!(AckRepr::parse(&lit[..5]).is_err());
    }

    #[test]
    fn test_hello_payload_literal() {
        let h = HelloRepr {
            name: "ab".into(),
            peers: vec![Ipv4Addr::new(10, 0, 0, 2)],
        };
        let lit = [2, b'a', b'b', 1, 10, 0, 0, 2];
        let mut buf = vec![0u8; h.buffer_len()];
        h.emit(&mut buf);
        assert_eq!(buf, lit);
        assert_eq!(HelloRepr::parse(&lit).unwrap(), h);
        assert!(HelloRepr::parse(&[2, b'a']).is_err());
    }

    #[test]
    fn test_message_encoding_literal() {
        let m = message::Fields {
            id: 0x0102_0304_0506_0708,
            content: "hi",
            sender: "al",
            channel: "c",
            timestamp: "T",
            is_file: true,
        };
        let mut out = Vec::new();
        message::encode(&mut out, &m);
        let lit = [
            1, 2, 3, 4, 5, 6, 7, 8, // message id
            0, 1, b'c', // channel
            0, 2, b'a', b'l', // sender
            1, b'T', // timestamp
            1,    // is_file
            0, 0, 0, 2, b'h', b'i', // content
        ];
        assert_eq!(out, lit);
        assert_eq!(message::encoded_len(&m), lit.len());
        assert_eq!(message::decode(&lit).unwrap(), m);
        let mut bad = lit;
        bad[17] = 7;
        assert!(message::decode(&bad).is_err(), "is_file 7 accepted");
        assert!(
            message::decode(&lit[..7]).is_err(),
            "a cut message id accepted"
        );
    }
}
