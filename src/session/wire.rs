//! Session frames inside the TCP byte stream, and the payloads of the handshake and error frames.
//!
//! ```text
//!  0               4     5               9               13
//! +---------------+-----+---------------+---------------+-----------------+
//! | length (u32)  |type | sequence (u32)| checksum (u32)| payload (length) |
//! +---------------+-----+---------------+---------------+-----------------+
//! ```
//!
//! All integers are big-endian. `length` counts the payload only. The checksum is CRC-32 (IEEE,
//! the one of Ethernet and zip) over the first 9 header bytes and the payload, so a flipped bit
//! anywhere but in the checksum field itself changes it, and a flip there is caught as well.

use std::fmt;

pub const HEADER_LEN: usize = 13;

/// Byte ranges of the header.
mod field {
    use std::ops::Range;
    pub const LENGTH: Range<usize> = 0..4;
    pub const TYPE: usize = 4;
    pub const SEQ: Range<usize> = 5..9;
    pub const CHECKSUM: Range<usize> = 9..13;
}

/// Largest payload any frame may claim before a session negotiates its own limit: handshake and
/// error payloads are small, so a larger length means the stream is out of step.
pub const HANDSHAKE_MAX_PAYLOAD: usize = 1024;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FrameType {
    Data,
    Ack,
    Error,
    KeepAlive,
    Disconnect,
    Syn,
    SynAck,
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(b: u8) -> FrameType {
        match b {
            1 => FrameType::Data,
            2 => FrameType::Ack,
            3 => FrameType::Error,
            4 => FrameType::KeepAlive,
            5 => FrameType::Disconnect,
            6 => FrameType::Syn,
            7 => FrameType::SynAck,
            other => FrameType::Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> u8 {
        match t {
            FrameType::Data => 1,
            FrameType::Ack => 2,
            FrameType::Error => 3,
            FrameType::KeepAlive => 4,
            FrameType::Disconnect => 5,
            FrameType::Syn => 6,
            FrameType::SynAck => 7,
            FrameType::Unknown(b) => b,
        }
    }
}

/// A frame whose checksum matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameType,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// What the start of a receive buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole frame yet.
    Incomplete,
    /// A frame and how many bytes it took.
    Frame(Frame, usize),
    /// A whole frame whose checksum is wrong: its bytes are skipped, its content is not trusted.
    BadChecksum { seq: u32, used: usize },
    /// The length field exceeds the limit: the stream cannot be resynchronised.
    TooLarge { length: usize },
}

/// CRC-32 (reflected polynomial 0xEDB88320), table built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

pub fn crc32(parts: &[&[u8]]) -> u32 {
    let crc = parts.iter().fold(!0u32, |c, p| crc32_update(c, p));
    !crc
}

/// Appends one frame to `out`.
pub fn emit(kind: FrameType, seq: u32, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.push(kind.into());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    let sum = crc32(&[&out[start..start + field::CHECKSUM.start], payload]);
    out[start + field::CHECKSUM.start..start + field::CHECKSUM.end]
        .copy_from_slice(&sum.to_be_bytes());
}

pub fn frame_bytes(kind: FrameType, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    emit(kind, seq, payload, &mut v);
    v
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the frame at the start of `buf`; `max_payload` bounds the length field.
pub fn parse(buf: &[u8], max_payload: usize) -> Parsed {
    if buf.len() < HEADER_LEN {
        return Parsed::Incomplete;
    }
    let length = be32(&buf[field::LENGTH]) as usize;
    if length > max_payload {
        return Parsed::TooLarge { length };
    }
    if buf.len() < HEADER_LEN + length {
        return Parsed::Incomplete;
    }
    let used = HEADER_LEN + length;
    let seq = be32(&buf[field::SEQ]);
    let payload = &buf[HEADER_LEN..used];
    let want = be32(&buf[field::CHECKSUM]);
    if crc32(&[&buf[..field::CHECKSUM.start], payload]) != want {
        return Parsed::BadChecksum { seq, used };
    }
    Parsed::Frame(
        Frame {
            kind: FrameType::from(buf[field::TYPE]),
            seq,
            payload: payload.to_vec(),
        },
        used,
    )
}

/// Transfer mode chosen by the client and confirmed by the server.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each data message waits for its ACK.
    Step,
    /// A sliding window of messages in flight, cumulative ACKs.
    Burst,
    Unknown(u8),
}

impl From<u8> for Mode {
    fn from(b: u8) -> Mode {
        match b {
            1 => Mode::Step,
            2 => Mode::Burst,
            o => Mode::Unknown(o),
        }
    }
}

impl From<Mode> for u8 {
    fn from(m: Mode) -> u8 {
        match m {
            Mode::Step => 1,
            Mode::Burst => 2,
            Mode::Unknown(b) => b,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Step => f.write_str("step"),
            Mode::Burst => f.write_str("burst"),
            Mode::Unknown(b) => write!(f, "unknown mode {b}"),
        }
    }
}

/// A payload that does not have the layout its frame type requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed {}", self.0)
    }
}

/// SYN payload: mode (1), max packet size (4), window (2), client id length (1), client id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynRepr {
    pub mode: Mode,
    pub max_size: u32,
    pub window: u16,
    pub client_id: String,
}

impl SynRepr {
    pub const MAX_CLIENT_ID: usize = 255;

    pub fn emit(&self) -> Vec<u8> {
        let id = self.client_id.as_bytes();
        let id = &id[..id.len().min(Self::MAX_CLIENT_ID)];
        let mut v = vec![u8::from(self.mode)];
        v.extend_from_slice(&self.max_size.to_be_bytes());
        v.extend_from_slice(&self.window.to_be_bytes());
        v.push(id.len() as u8);
        v.extend_from_slice(id);
        v
    }

    pub fn parse(p: &[u8]) -> Result<SynRepr, Malformed> {
        if p.len() < 8 || p.len() != 8 + p[7] as usize {
            return Err(Malformed("SYN"));
        }
        Ok(SynRepr {
            mode: Mode::from(p[0]),
            max_size: be32(&p[1..5]),
            window: u16::from_be_bytes([p[5], p[6]]),
            client_id: String::from_utf8_lossy(&p[8..]).into_owned(),
        })
    }
}

/// SYN-ACK payload: status (1, 0 = accepted), session id (4), negotiated max packet size (4),
/// confirmed mode (1), window (2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynAckRepr {
    pub status: u8,
    pub session_id: u32,
    pub max_size: u32,
    pub mode: Mode,
    pub window: u16,
}

impl SynAckRepr {
    pub const LEN: usize = 12;

    pub fn emit(&self) -> Vec<u8> {
        let mut v = vec![self.status];
        v.extend_from_slice(&self.session_id.to_be_bytes());
        v.extend_from_slice(&self.max_size.to_be_bytes());
        v.push(self.mode.into());
        v.extend_from_slice(&self.window.to_be_bytes());
        v
    }

    pub fn parse(p: &[u8]) -> Result<SynAckRepr, Malformed> {
        if p.len() != Self::LEN {
            return Err(Malformed("SYN-ACK"));
        }
        Ok(SynAckRepr {
            status: p[0],
            session_id: be32(&p[1..5]),
            max_size: be32(&p[5..9]),
            mode: Mode::from(p[9]),
            window: u16::from_be_bytes([p[10], p[11]]),
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame with this sequence number arrived damaged; resend from the first unacknowledged.
    BadChecksum,
    UnsupportedMode,
    SizeTooSmall,
    /// The peer broke the protocol (unexpected frame, oversized frame); the session ends.
    ProtocolViolation,
    Unknown(u8),
}

impl From<u8> for ErrorCode {
    fn from(b: u8) -> ErrorCode {
        match b {
            1 => ErrorCode::BadChecksum,
            2 => ErrorCode::UnsupportedMode,
            3 => ErrorCode::SizeTooSmall,
            4 => ErrorCode::ProtocolViolation,
            o => ErrorCode::Unknown(o),
        }
    }
}

impl From<ErrorCode> for u8 {
    fn from(c: ErrorCode) -> u8 {
        match c {
            ErrorCode::BadChecksum => 1,
            ErrorCode::UnsupportedMode => 2,
            ErrorCode::SizeTooSmall => 3,
            ErrorCode::ProtocolViolation => 4,
            ErrorCode::Unknown(b) => b,
        }
    }
}

/// ERROR payload: code (1), then a reason for people, UTF-8, to the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorRepr {
    pub code: ErrorCode,
    pub reason: String,
}

impl ErrorRepr {
    pub fn emit(&self) -> Vec<u8> {
        let mut v = vec![u8::from(self.code)];
        v.extend_from_slice(self.reason.as_bytes());
        v
    }

    pub fn parse(p: &[u8]) -> Result<ErrorRepr, Malformed> {
        let (&code, reason) = p.split_first().ok_or(Malformed("ERROR"))?;
        Ok(ErrorRepr {
            code: ErrorCode::from(code),
            reason: String::from_utf8_lossy(reason).into_owned(),
        })
    }
}

/// `a` comes before `b` in a sequence space that wraps (RFC 1982 serial number arithmetic).
pub fn seq_lt(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn test_emit_byte_exact() {
        let f = frame_bytes(FrameType::Data, 0x0102_0304, b"hi");
        let sum = crc32(&[&[0, 0, 0, 2, 1, 1, 2, 3, 4], b"hi"]).to_be_bytes();
        let mut want = vec![0, 0, 0, 2, 0x01, 0x01, 0x02, 0x03, 0x04];
        want.extend_from_slice(&sum);
        want.extend_from_slice(b"hi");
        assert_eq!(f, want);
    }

    #[test]
    fn test_parse_literal_ack() {
        // An ACK for sequence 7, no payload, checksum computed by hand with the reference CRC.
        let mut bytes = vec![0, 0, 0, 0, 2, 0, 0, 0, 7];
        let sum = crc32(&[&bytes]);
        bytes.extend_from_slice(&sum.to_be_bytes());
        match parse(&bytes, 100) {
            Parsed::Frame(f, used) => {
                assert_eq!(used, 13);
                assert_eq!(
                    f,
                    Frame {
                        kind: FrameType::Ack,
                        seq: 7,
                        payload: vec![]
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_parse_incomplete_and_roundtrip() {
        let f = frame_bytes(FrameType::KeepAlive, u32::MAX, b"abc");
        for cut in 0..f.len() {
            assert_eq!(parse(&f[..cut], 100), Parsed::Incomplete);
        }
        let mut two = f.clone();
        two.extend_from_slice(&frame_bytes(FrameType::Data, 0, b""));
        match parse(&two, 100) {
            Parsed::Frame(fr, used) => {
                assert_eq!(used, f.len());
                assert_eq!(fr.kind, FrameType::KeepAlive);
                assert_eq!(fr.seq, u32::MAX);
                assert_eq!(fr.payload, b"abc");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_every_single_bit_flip_is_detected() {
        let f = frame_bytes(FrameType::Data, 42, b"the payload");
        for bit in 0..f.len() * 8 {
            let mut g = f.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            match parse(&g, 1 << 20) {
                Parsed::Frame(..) => panic!("flip of bit {bit} not detected"),
                // A flip in the length field shows up as a wrong size, never as a good frame.
                Parsed::BadChecksum { .. } | Parsed::TooLarge { .. } | Parsed::Incomplete => {}
            }
        }
    }

    #[test]
    fn test_length_over_limit_is_too_large() {
        let f = frame_bytes(FrameType::Data, 1, &[0; 50]);
        assert_eq!(parse(&f, 49), Parsed::TooLarge { length: 50 });
    }

    #[test]
    fn test_unknown_type_roundtrips() {
        assert_eq!(FrameType::from(99), FrameType::Unknown(99));
        assert_eq!(u8::from(FrameType::Unknown(99)), 99);
        for b in 1..=7u8 {
            assert_eq!(u8::from(FrameType::from(b)), b);
        }
    }

    #[test]
    fn test_handshake_payloads_byte_exact() {
        let syn = SynRepr {
            mode: Mode::Burst,
            max_size: 1400,
            window: 32,
            client_id: "ab".into(),
        };
        assert_eq!(syn.emit(), vec![2, 0, 0, 0x05, 0x78, 0, 32, 2, b'a', b'b']);
        assert_eq!(SynRepr::parse(&syn.emit()).unwrap(), syn);
        assert!(SynRepr::parse(&[2, 0, 0, 5, 0x78, 0, 32, 3, b'a']).is_err());

        let sa = SynAckRepr {
            status: 0,
            session_id: 0xdead_beef,
            max_size: 512,
            mode: Mode::Step,
            window: 1,
        };
        assert_eq!(
            sa.emit(),
            vec![0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 2, 0, 1, 0, 1]
        );
        assert_eq!(SynAckRepr::parse(&sa.emit()).unwrap(), sa);
        assert!(SynAckRepr::parse(&[0; 11]).is_err());

        let e = ErrorRepr {
            code: ErrorCode::SizeTooSmall,
            reason: "no".into(),
        };
        assert_eq!(e.emit(), vec![3, b'n', b'o']);
        assert_eq!(ErrorRepr::parse(&e.emit()).unwrap(), e);
        assert!(ErrorRepr::parse(&[]).is_err());
    }

    #[test]
    fn test_seq_lt_wraps() {
        assert!(seq_lt(1, 2));
        assert!(!seq_lt(2, 1));
        assert!(!seq_lt(5, 5));
        assert!(seq_lt(u32::MAX, 0));
        assert!(seq_lt(u32::MAX - 3, 2));
        assert!(!seq_lt(2, u32::MAX - 3));
    }
}
