//! Relay frames: a 6-byte header (type, subtype, data length, reserved) and a body whose layout
//! depends on the type. `Frame::parse` never panics: every way a frame can be wrong is a typed
//! [`WireError`] that the server turns into an error frame for the peer.
//!
//! ```text
//!  0        1        2        3        4        5        6 ...
//! +--------+--------+--------+--------+--------+--------+---------------+
//! |  type  |subtype |  length (BE u16) | reserved (0)    | data (length) |
//! +--------+--------+--------+--------+--------+--------+---------------+
//! ```
//! Strings are UTF-8 with a one-byte length; the message body has a two-byte length; integers are
//! big-endian. `docs/protocols.md` has every body byte by byte.

use std::fmt;

pub const HEADER_LEN: usize = 6;
/// The header's length field is 16 bits.
pub const MAX_DATA_LEN: usize = u16::MAX as usize;
/// Longest user name or server address, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest echo payload: probes carry a token, not data.
pub const MAX_ECHO_LEN: usize = 64;

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const SUBTYPE: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const RESERVED: Range<usize> = 4..6;
}

pub mod kind {
    pub const INFO: u8 = 1;
    pub const SERVER: u8 = 2;
    pub const USER: u8 = 3;
    pub const MESSAGE: u8 = 4;
    pub const ECHO: u8 = 5;
    pub const DISCONNECT: u8 = 6;
    pub const ERROR: u8 = 0x7f;
}

/// A message identifier: 16 random bytes shaped as a version-4 UUID.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub fn random(rng: &mut crate::rand::Rng) -> Uuid {
        let mut b = [0u8; 16];
        rng.fill(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One entry of a server list: a server's address and how long ago someone heard from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    pub addr: String,
    pub age_ms: u32,
}

/// What a routed message frame means (its subtype).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MsgKind {
    /// A user's message.
    Data,
    /// The recipient's client got it (end-to-end acknowledgement).
    Delivered,
    /// No such user anywhere in the mesh.
    UnknownUser,
    /// The user exists but is not connected now.
    UserOffline,
}

impl MsgKind {
    fn code(self) -> u8 {
        match self {
            MsgKind::Data => 0,
            MsgKind::Delivered => 1,
            MsgKind::UnknownUser => 2,
            MsgKind::UserOffline => 3,
        }
    }
    fn from_code(c: u8) -> Option<MsgKind> {
        Some(match c {
            0 => MsgKind::Data,
            1 => MsgKind::Delivered,
            2 => MsgKind::UnknownUser,
            3 => MsgKind::UserOffline,
            _ => return None,
        })
    }
}

/// A routed frame. `from` and `to` are user names; for answers (`Delivered`, `UnknownUser`,
/// `UserOffline`) `from` is the user the answer is about and `to` the original sender, so every
/// kind is routed by `to` the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub kind: MsgKind,
    pub uuid: Uuid,
    /// Sender's try number: a re-send after failover is a new try, so servers that dropped the
    /// first try as a duplicate still forward it; the recipient's client suppresses the copy.
    pub attempt: u8,
    /// Hops left before servers drop it (bounds flooding in a partial mesh).
    pub hops: u8,
    pub from: String,
    pub to: String,
    pub body: Vec<u8>,
}

/// Error codes carried as the subtype of an error frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Malformed,
    UnknownType,
    NotRegistered,
    Refused,
    Unknown(u8),
}

impl ErrorCode {
    pub fn code(self) -> u8 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnknownType => 2,
            ErrorCode::NotRegistered => 3,
            ErrorCode::Refused => 4,
            ErrorCode::Unknown(c) => c,
        }
    }
    pub fn from_code(c: u8) -> ErrorCode {
        match c {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnknownType,
            3 => ErrorCode::NotRegistered,
            4 => ErrorCode::Refused,
            c => ErrorCode::Unknown(c),
        }
    }
}

/// Every frame of the protocol, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// 1/0: "which servers are there?"
    InfoRequest,
    /// 1/1: the live servers, the answering one first.
    InfoResponse(Vec<ServerEntry>),
    /// 2/0: a server introduces itself (and repeats this as its heartbeat) with what it knows.
    Announce {
        me: String,
        known: Vec<ServerEntry>,
    },
    /// 2/1: the answer to the first announcement on a connection.
    AnnounceResponse {
        me: String,
        known: Vec<ServerEntry>,
    },
    /// 3/0: client to server: "I am NAME"; the version orders sessions of one user.
    Register {
        version: u64,
        name: String,
    },
    /// 3/1: server to client.
    Registered {
        name: String,
    },
    /// 3/2: server to client, with the reason.
    RegisterRefused {
        name: String,
        reason: String,
    },
    /// 3/3: server to server: where a user is.
    Directory {
        name: String,
        home: String,
        online: bool,
        version: u64,
    },
    /// 4/*: user messages and their answers.
    Message(Routed),
    /// 5/0 and 5/1: round-trip probes; the reply echoes the data.
    EchoRequest(Vec<u8>),
    EchoReply(Vec<u8>),
    /// 6/0: client leaves on purpose.
    UserBye,
    /// 6/1: a server is stopping (to peers and to its clients).
    ServerBye {
        addr: String,
    },
    /// 0x7f/code: what was wrong with the peer's frame.
    Error {
        code: ErrorCode,
        text: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header, or than the header's length says.
    Truncated {
        have: usize,
        need: usize,
    },
    ReservedNotZero(u16),
    UnknownType {
        kind: u8,
        subtype: u8,
    },
    /// The data does not have the layout the type requires.
    BadBody {
        kind: u8,
        subtype: u8,
        why: &'static str,
    },
    /// Emit: the data would not fit the 16-bit length.
    TooLong(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { have, need } => {
                write!(f, "truncated frame: {have} bytes of {need}")
            }
            WireError::ReservedNotZero(v) => write!(f, "reserved header bytes are {v:#06x}, not 0"),
            WireError::UnknownType { kind, subtype } => {
                write!(f, "unknown frame type {kind}/{subtype}")
            }
            WireError::BadBody { kind, subtype, why } => {
                write!(f, "bad body for frame type {kind}/{subtype}: {why}")
            }
            WireError::TooLong(n) => write!(f, "frame data of {n} bytes exceeds {MAX_DATA_LEN}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A zero-copy view of a frame's header.
pub struct Header<'a> {
    buf: &'a [u8],
}

impl<'a> Header<'a> {
    /// Checks there is a whole header; the data may still be incomplete.
    pub fn new_checked(buf: &'a [u8]) -> Result<Header<'a>, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                have: buf.len(),
                need: HEADER_LEN,
            });
        }
        Ok(Header { buf })
    }
    pub fn kind(&self) -> u8 {
        self.buf[field::TYPE]
    }
    pub fn subtype(&self) -> u8 {
        self.buf[field::SUBTYPE]
    }
    pub fn data_len(&self) -> usize {
        u16::from_be_bytes([
            self.buf[field::LENGTH.start],
            self.buf[field::LENGTH.start + 1],
        ]) as usize
    }
    pub fn reserved(&self) -> u16 {
        u16::from_be_bytes([
            self.buf[field::RESERVED.start],
            self.buf[field::RESERVED.start + 1],
        ])
    }
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.data_len()
    }
}

/// Reads fields from a body; every getter checks the length first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: u8,
    subtype: u8,
}

impl<'a> Reader<'a> {
    fn bad(&self, why: &'static str) -> WireError {
        WireError::BadBody {
            kind: self.kind,
            subtype: self.subtype,
            why,
        }
    }
    fn bytes(&mut self, n: usize, why: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.bad(why))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.bad(why))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, why: &'static str) -> Result<u8, WireError> {
        Ok(self.bytes(1, why)?[0])
    }
    fn u16(&mut self, why: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, why)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, why: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, why)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, why: &'static str) -> Result<u64, WireError> {
        let b = self.bytes(8, why)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// A name: one length byte, 1..=MAX_NAME_LEN bytes of UTF-8 without whitespace or controls.
    fn name(&mut self, why: &'static str) -> Result<String, WireError> {
        let n = self.u8(why)? as usize;
        let b = self.bytes(n, why)?;
        let s = std::str::from_utf8(b).map_err(|_| self.bad("name is not UTF-8"))?;
        if !valid_name(s) {
            return Err(self.bad("name is empty, too long, or has spaces or control characters"));
        }
        Ok(s.to_string())
    }
    fn text(&mut self) -> Result<String, WireError> {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        Ok(String::from_utf8_lossy(rest).into_owned())
    }
    fn servers(&mut self) -> Result<Vec<ServerEntry>, WireError> {
        let n = self.u16("server count")? as usize;
        let mut v = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let addr = self.name("server address")?;
            let age_ms = self.u32("server age")?;
            v.push(ServerEntry { addr, age_ms });
        }
        Ok(v)
    }
    fn end(&self) -> Result<(), WireError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

/// A user name or server address: 1..=64 bytes, no whitespace, no control characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn put_name(out: &mut Vec<u8>, s: &str) {
    // Names are validated where they enter the program; clamp anyway so emit cannot desync.
    let b = &s.as_bytes()[..s.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

fn put_servers(out: &mut Vec<u8>, v: &[ServerEntry]) {
    let n = v.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for e in &v[..n] {
        put_name(out, &e.addr);
        out.extend_from_slice(&e.age_ms.to_be_bytes());
    }
}

impl Frame {
    /// (type, subtype) of this frame.
    pub fn kind(&self) -> (u8, u8) {
        use kind::*;
        match self {
            Frame::InfoRequest => (INFO, 0),
            Frame::InfoResponse(_) => (INFO, 1),
            Frame::Announce { .. } => (SERVER, 0),
            Frame::AnnounceResponse { .. } => (SERVER, 1),
            Frame::Register { .. } => (USER, 0),
            Frame::Registered { .. } => (USER, 1),
            Frame::RegisterRefused { .. } => (USER, 2),
            Frame::Directory { .. } => (USER, 3),
            Frame::Message(m) => (MESSAGE, m.kind.code()),
            Frame::EchoRequest(_) => (ECHO, 0),
            Frame::EchoReply(_) => (ECHO, 1),
            Frame::UserBye => (DISCONNECT, 0),
            Frame::ServerBye { .. } => (DISCONNECT, 1),
            Frame::Error { code, .. } => (ERROR, code.code()),
        }
    }

    fn emit_data(&self, out: &mut Vec<u8>) {
        match self {
            Frame::InfoRequest | Frame::UserBye => {}
            Frame::InfoResponse(v) => put_servers(out, v),
            Frame::Announce { me, known } | Frame::AnnounceResponse { me, known } => {
                put_name(out, me);
                put_servers(out, known);
            }
            Frame::Register { version, name } => {
                out.extend_from_slice(&version.to_be_bytes());
                put_name(out, name);
            }
            Frame::Registered { name } => put_name(out, name),
            Frame::RegisterRefused { name, reason } => {
                put_name(out, name);
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::Directory {
                name,
                home,
                online,
                version,
            } => {
                put_name(out, name);
                put_name(out, home);
                out.push(u8::from(*online));
                out.extend_from_slice(&version.to_be_bytes());
            }
            Frame::Message(m) => {
                out.extend_from_slice(&m.uuid.0);
                out.push(m.attempt);
                out.push(m.hops);
                put_name(out, &m.from);
                put_name(out, &m.to);
                out.extend_from_slice(&(m.body.len().min(u16::MAX as usize) as u16).to_be_bytes());
                out.extend_from_slice(&m.body[..m.body.len().min(u16::MAX as usize)]);
            }
            Frame::EchoRequest(d) | Frame::EchoReply(d) => out.extend_from_slice(d),
            Frame::ServerBye { addr } => put_name(out, addr),
            Frame::Error { text, .. } => out.extend_from_slice(text.as_bytes()),
        }
    }

    /// Appends the frame's bytes to `out`. Fails only when the data exceeds 65535 bytes, and
    /// then leaves `out` as it was.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        let (k, s) = self.kind();
        out.extend_from_slice(&[k, s, 0, 0, 0, 0]);
        self.emit_data(out);
        let n = out.len() - start - HEADER_LEN;
        if n > MAX_DATA_LEN {
            out.truncate(start);
            return Err(WireError::TooLong(n));
        }
        out[start + 2..start + 4].copy_from_slice(&(n as u16).to_be_bytes());
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut v = Vec::new();
        self.emit(&mut v)?;
        Ok(v)
    }

    /// Parses one whole frame (`buf` holds exactly one: header plus `length` bytes).
    pub fn parse(buf: &[u8]) -> Result<Frame, WireError> {
        let h = Header::new_checked(buf)?;
        if buf.len() < h.frame_len() {
            return Err(WireError::Truncated {
                have: buf.len(),
                need: h.frame_len(),
            });
        }
        let (k, s) = (h.kind(), h.subtype());
        if h.reserved() != 0 {
            return Err(WireError::ReservedNotZero(h.reserved()));
        }
        let mut r = Reader {
            buf: &buf[HEADER_LEN..h.frame_len()],
            pos: 0,
            kind: k,
            subtype: s,
        };
        use kind::*;
        let f = match (k, s) {
            (INFO, 0) => Frame::InfoRequest,
            (INFO, 1) => Frame::InfoResponse(r.servers()?),
            (SERVER, 0 | 1) => {
                let me = r.name("server address")?;
                let known = r.servers()?;
                if s == 0 {
                    Frame::Announce { me, known }
                } else {
                    Frame::AnnounceResponse { me, known }
                }
            }
            (USER, 0) => {
                let version = r.u64("version")?;
                let name = r.name("user name")?;
                Frame::Register { version, name }
            }
            (USER, 1) => Frame::Registered {
                name: r.name("user name")?,
            },
            (USER, 2) => Frame::RegisterRefused {
                name: r.name("user name")?,
                reason: r.text()?,
            },
            (USER, 3) => {
                let name = r.name("user name")?;
                let home = r.name("home server")?;
                let online = match r.u8("online flag")? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.bad("online flag is not 0 or 1")),
                };
                let version = r.u64("version")?;
                Frame::Directory {
                    name,
                    home,
                    online,
                    version,
                }
            }
            (MESSAGE, s) if MsgKind::from_code(s).is_some() => {
                let kind = MsgKind::from_code(s).unwrap_or(MsgKind::Data);
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(r.bytes(16, "uuid")?);
                let attempt = r.u8("attempt")?;
                let hops = r.u8("hops")?;
                let from = r.name("sender")?;
                let to = r.name("recipient")?;
                let n = r.u16("body length")? as usize;
                let body = r.bytes(n, "body")?.to_vec();
                Frame::Message(Routed {
                    kind,
                    uuid: Uuid(uuid),
                    attempt,
                    hops,
                    from,
                    to,
                    body,
                })
            }
            (ECHO, 0 | 1) => {
                let d = r.bytes(r.buf.len(), "echo data")?.to_vec();
                if d.len() > MAX_ECHO_LEN {
                    return Err(r.bad("echo data longer than 64 bytes"));
                }
                if s == 0 {
                    Frame::EchoRequest(d)
                } else {
                    Frame::EchoReply(d)
                }
            }
            (DISCONNECT, 0) => Frame::UserBye,
            (DISCONNECT, 1) => Frame::ServerBye {
                addr: r.name("server address")?,
            },
            (ERROR, code) => Frame::Error {
                code: ErrorCode::from_code(code),
                text: r.text()?,
            },
            _ => {
                return Err(WireError::UnknownType {
                    kind: k,
                    subtype: s,
                })
            }
        };
        r.end()?;
        Ok(f)
    }
}

/// Splits a byte stream into frames. Framing never loses sync: every header has a valid length,
/// so a bad frame is skipped whole and reported, and the next one is read normally.
#[derive(Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, parsed, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Option<Result<Frame, WireError>> {
        let h = Header::new_checked(&self.buf).ok()?;
        let len = h.frame_len();
        if self.buf.len() < len {
            return None;
        }
        let r = Frame::parse(&self.buf[..len]);
        self.buf.drain(..len);
        Some(r)
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn roundtrip(f: Frame, bytes: &[u8]) {
        assert_eq!(f.to_bytes().unwrap(), bytes, "emit of {f:?}");
        assert_eq!(Frame::parse(bytes).unwrap(), f, "parse");
    }

    #[test]
    fn test_info_request_bytes() {
        roundtrip(Frame::InfoRequest, &[1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn test_info_response_bytes() {
        roundtrip(
            Frame::InfoResponse(vec![ServerEntry {
                addr: "a:1".into(),
                age_ms: 258,
            }]),
            &[1, 1, 0, 10, 0, 0, 0, 1, 3, b'a', b':', b'1', 0, 0, 1, 2],
        );
    }

    #[test]
    fn test_announce_bytes() {
        roundtrip(
            Frame::Announce {
                me: "s:9".into(),
                known: vec![],
            },
            &[2, 0, 0, 6, 0, 0, 3, b's', b':', b'9', 0, 0],
        );
    }

    #[test]
    fn test_register_bytes() {
        roundtrip(
            Frame::Register {
                version: 0x0102,
                name: "bo".into(),
            },
            &[3, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, b'b', b'o'],
        );
    }

    #[test]
    fn test_directory_bytes() {
        roundtrip(
            Frame::Directory {
                name: "u".into(),
                home: "h".into(),
                online: true,
                version: 7,
            },
            &[
                3, 3, 0, 13, 0, 0, 1, b'u', 1, b'h', 1, 0, 0, 0, 0, 0, 0, 0, 7,
            ],
        );
    }

    #[test]
    fn test_message_bytes() {
        let mut b = vec![4, 0, 0, 26, 0, 0];
        b.extend_from_slice(&[0xaa; 16]);
        b.extend_from_slice(&[2, 16, 1, b'a', 1, b'b', 0, 2, b'h', b'i']);
        roundtrip(
            Frame::Message(Routed {
                kind: MsgKind::Data,
                uuid: Uuid([0xaa; 16]),
                attempt: 2,
                hops: 16,
                from: "a".into(),
                to: "b".into(),
                body: b"hi".to_vec(),
            }),
            &b,
        );
    }

    #[test]
    fn test_echo_bye_error_bytes() {
        roundtrip(Frame::EchoRequest(vec![9, 8]), &[5, 0, 0, 2, 0, 0, 9, 8]);
        roundtrip(Frame::EchoReply(vec![]), &[5, 1, 0, 0, 0, 0]);
        roundtrip(Frame::UserBye, &[6, 0, 0, 0, 0, 0]);
        roundtrip(
            Frame::ServerBye { addr: "x".into() },
            &[6, 1, 0, 2, 0, 0, 1, b'x'],
        );
        roundtrip(
            Frame::Error {
                code: ErrorCode::Malformed,
                text: "no".into(),
            },
            &[0x7f, 1, 0, 2, 0, 0, b'n', b'o'],
        );
    }

    #[test]
    fn test_bad_frames_are_typed_errors() {
        assert!(matches!(
            Frame::parse(&[1, 0, 0]),
            Err(WireError::Truncated { have: 3, need: 6 })
        ));
        assert!(matches!(
            Frame::parse(&[1, 0, 0, 4, 0, 0, 1]),
            Err(WireError::Truncated { have: 7, need: 10 })
        ));
        assert_eq!(
            Frame::parse(&[1, 0, 0, 0, 0, 1]),
            Err(WireError::ReservedNotZero(1))
        );
        assert_eq!(
            Frame::parse(&[9, 9, 0, 0, 0, 0]),
            Err(WireError::UnknownType {
                kind: 9,
                subtype: 9
            })
        );
        assert!(matches!(
            Frame::parse(&[1, 0, 0, 1, 0, 0, 5]),
            Err(WireError::BadBody {
                why: "trailing bytes",
                ..
            })
        ));
        // A name with a space, and a name length past the end.
        assert!(matches!(
            Frame::parse(&[3, 1, 0, 3, 0, 0, 2, b'a', b' ']),
            Err(WireError::BadBody { .. })
        ));
        assert!(matches!(
            Frame::parse(&[3, 1, 0, 1, 0, 0, 200]),
            Err(WireError::BadBody { .. })
        ));
    }

    #[test]
    fn test_emit_too_long_leaves_buffer() {
        let mut out = vec![1, 2, 3];
        let f = Frame::Error {
            code: ErrorCode::Refused,
            text: "x".repeat(70_000),
        };
        assert_eq!(f.emit(&mut out), Err(WireError::TooLong(70_000)));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn test_deframer_splits_and_skips_bad_frames() {
        let mut d = Deframer::default();
        let mut bytes = Frame::InfoRequest.to_bytes().unwrap();
        bytes.extend_from_slice(&[9, 9, 0, 1, 0, 0, 0]);
        bytes.extend(Frame::EchoRequest(vec![1]).to_bytes().unwrap());
        for b in &bytes {
            d.push(std::slice::from_ref(b));
        }
        assert_eq!(d.next_frame(), Some(Ok(Frame::InfoRequest)));
        assert!(matches!(
            d.next_frame(),
            Some(Err(WireError::UnknownType { .. }))
        ));
        assert_eq!(d.next_frame(), Some(Ok(Frame::EchoRequest(vec![1]))));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn test_uuid_is_v4_and_formats() {
        let u = Uuid::random(&mut crate::rand::Rng::new(1));
        assert_eq!(u.0[6] >> 4, 4);
        assert_eq!(u.0[8] >> 6, 2);
        assert_eq!(u.to_string().len(), 36);
    }

    proptest::proptest! {
        #[test]
        fn prop_parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Frame::parse(&bytes);
            let mut d = Deframer::default();
            d.push(&bytes);
            while let Some(_f) = d.next_frame() {}
        }
    }
}
