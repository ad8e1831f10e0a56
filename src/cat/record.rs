//! The record layer: every message after the key exchange is encrypted, then authenticated.
//!
//! ```text
//! +--------------+----------------+---------------------------+-------------------+
//! | length (u32) | counter (u64)  | ciphertext (length bytes) | HMAC-SHA256 (32)  |
//! +--------------+----------------+---------------------------+-------------------+
//! plaintext = type (1) | body
//! ciphertext = plaintext XOR Salsa20(direction key, nonce = counter)
//! tag = HMAC-SHA256(direction MAC key, length | counter | ciphertext)
//! ```
//!
//! Each direction has its own cipher and MAC keys, and its counter starts at 0 and goes up by
//! one per record, so a (key, nonce) pair is never used twice. The receiver checks the tag
//! before anything else (encrypt-then-MAC: a forged record is never decrypted), then requires
//! the counter it expects: an earlier counter is a replay, a later one a reordering or a loss.
//! Either ends the session.

use hmac::{Hmac, Mac};
use salsa20::cipher::{KeyIvInit, StreamCipher};
use salsa20::Salsa20;
use sha2::Sha256;
use std::fmt;

pub const HEADER_LEN: usize = 12;
pub const TAG_LEN: usize = 32;
/// Largest plaintext of one record; bounds the receive buffer.
pub const MAX_PLAINTEXT: usize = 64 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// Cipher and MAC key for one direction.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    pub enc: [u8; 32],
    pub mac: [u8; 32],
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys never reach logs.
        f.write_str("DirectionKeys(..)")
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RecordType {
    /// First record each way: proves both ends derived the same keys.
    Start,
    /// Chat bytes.
    Data,
    /// A file follows: size (u64), then its name.
    FileStart,
    FileChunk,
    /// End of the file: its SHA-256.
    FileEnd,
    /// The receiver's verdict on the file.
    FileOk,
    FileBad,
    /// The sender ends the session.
    Bye,
    Unknown(u8),
}

impl From<u8> for RecordType {
    fn from(b: u8) -> RecordType {
        use RecordType::*;
        match b {
            1 => Start,
            2 => Data,
            3 => FileStart,
            4 => FileChunk,
            5 => FileEnd,
            6 => FileOk,
            7 => FileBad,
            8 => Bye,
            o => Unknown(o),
        }
    }
}

impl From<RecordType> for u8 {
    fn from(t: RecordType) -> u8 {
        use RecordType::*;
        match t {
            Start => 1,
            Data => 2,
            FileStart => 3,
            FileChunk => 4,
            FileEnd => 5,
            FileOk => 6,
            FileBad => 7,
            Bye => 8,
            Unknown(o) => o,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The tag did not match: the record was altered (or forged) in transit.
    Integrity {
        counter: u64,
    },
    Replayed {
        counter: u64,
        expected: u64,
    },
    OutOfOrder {
        counter: u64,
        expected: u64,
    },
    TooLarge {
        length: usize,
    },
    Empty,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Integrity { counter } => write!(
                f,
                "integrity check failed: record {counter} was altered in transit (MAC mismatch)"
            ),
            RecordError::Replayed { counter, expected } => write!(
                f,
                "replayed record rejected: counter {counter} was already received (expected {expected})"
            ),
            RecordError::OutOfOrder { counter, expected } => write!(
                f,
                "reordered or missing record rejected: counter {counter}, expected {expected}"
            ),
            RecordError::TooLarge { length } => {
                write!(f, "record of {length} bytes exceeds the limit (stream corrupted?)")
            }
            RecordError::Empty => f.write_str("record without a type"),
        }
    }
}

impl std::error::Error for RecordError {}

fn keystream(key: &[u8; 32], counter: u64, data: &mut [u8]) {
    let mut c = Salsa20::new(key.into(), &counter.to_be_bytes().into());
    c.apply_keystream(data);
}

fn mac(key: &[u8; 32]) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// The sending half of one direction.
#[derive(Debug)]
pub struct Sealer {
    keys: DirectionKeys,
    counter: u64,
}

impl Sealer {
    pub fn new(keys: DirectionKeys) -> Sealer {
        Sealer { keys, counter: 0 }
    }

    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Appends one record to `out`. `body` must be at most `MAX_PLAINTEXT - 1` bytes.
    pub fn seal(&mut self, kind: RecordType, body: &[u8], out: &mut Vec<u8>) {
        assert!(body.len() < MAX_PLAINTEXT, "record body too large");
        let counter = self.counter;
        // 2^64 records cannot be sent in practice; stopping beats reusing a nonce.
        self.counter = counter.checked_add(1).expect("record counter exhausted");
        let start = out.len();
        out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        let ct = out.len();
        out.push(kind.into());
        out.extend_from_slice(body);
        keystream(&self.keys.enc, counter, &mut out[ct..]);
        let mut m = mac(&self.keys.mac);
        m.update(&out[start..]);
        out.extend_from_slice(&m.finalize().into_bytes());
    }
}

/// The receiving half of one direction: buffers stream bytes, yields verified records.
#[derive(Debug)]
pub struct Opener {
    keys: DirectionKeys,
    expected: u64,
    buf: Vec<u8>,
    start: usize,
}

impl Opener {
    pub fn new(keys: DirectionKeys) -> Opener {
        Opener {
            keys,
            expected: 0,
            buf: Vec::new(),
            start: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 1 << 20 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole record, verified and decrypted; `Ok(None)` until one has arrived.
    pub fn next_record(&mut self) -> Result<Option<(RecordType, Vec<u8>)>, RecordError> {
        let b = &self.buf[self.start..];
        if b.len() < HEADER_LEN {
            return Ok(None);
        }
        let length = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if length > MAX_PLAINTEXT {
            return Err(RecordError::TooLarge { length });
        }
        let total = HEADER_LEN + length + TAG_LEN;
        if b.len() < total {
            return Ok(None);
        }
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&b[4..12]);
        let counter = u64::from_be_bytes(counter_bytes);
        let mut m = mac(&self.keys.mac);
        m.update(&b[..HEADER_LEN + length]);
        if m.verify_slice(&b[HEADER_LEN + length..total]).is_err() {
            return Err(RecordError::Integrity { counter });
        }
        if counter != self.expected {
            let expected = self.expected;
            return Err(if counter < expected {
                RecordError::Replayed { counter, expected }
            } else {
                RecordError::OutOfOrder { counter, expected }
            });
        }
        let mut pt = b[HEADER_LEN..HEADER_LEN + length].to_vec();
        self.start += total;
        self.expected += 1;
        keystream(&self.keys.enc, counter, &mut pt);
        if pt.is_empty() {
            return Err(RecordError::Empty);
        }
        let kind = RecordType::from(pt[0]);
        pt.remove(0);
        Ok(Some((kind, pt)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(x: u8) -> DirectionKeys {
        DirectionKeys {
            enc: [x; 32],
            mac: [x.wrapping_add(1); 32],
        }
    }

    fn sealed(n: usize) -> Vec<Vec<u8>> {
        let mut s = Sealer::new(keys(7));
        (0..n)
            .map(|i| {
                let mut v = vec![];
                s.seal(
                    RecordType::Data,
                    format!("secret line {i}").as_bytes(),
                    &mut v,
                );
                v
            })
            .collect()
    }

    #[test]
    fn test_roundtrip_in_pieces() {
        let recs = sealed(3);
        let all: Vec<u8> = recs.concat();
        let mut o = Opener::new(keys(7));
        let mut got = vec![];
        for b in all.chunks(5) {
            o.push(b);
            while let Some(r) = o.next_record().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], (RecordType::Data, b"secret line 2".to_vec()));
    }

    #[test]
    fn test_layout_and_ciphertext_hides_plaintext() {
        let r = &sealed(1)[0];
        assert_eq!(r.len(), HEADER_LEN + 1 + 13 + TAG_LEN);
        assert_eq!(&r[..12], &[0, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!r.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn test_every_bit_flip_is_rejected() {
        let r = &sealed(1)[0];
        for bit in 0..r.len() * 8 {
            let mut g = r.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            let mut o = Opener::new(keys(7));
            o.push(&g);
            match o.next_record() {
                Ok(Some(rec)) => panic!("flip of bit {bit} delivered {rec:?}"),
                // A flipped length leaves the record incomplete or too large: never delivered.
                Ok(None)
                | Err(RecordError::Integrity { .. })
                | Err(RecordError::TooLarge { .. }) => {}
                Err(e) => panic!("bit {bit}: {e}"),
            }
        }
    }

    #[test]
    fn test_replay_is_rejected() {
        let recs = sealed(2);
        let mut o = Opener::new(keys(7));
        o.push(&recs[0]);
        o.push(&recs[1]);
        o.push(&recs[0]);
        assert!(o.next_record().unwrap().is_some());
        assert!(o.next_record().unwrap().is_some());
        let e = o.next_record().unwrap_err();
        assert_eq!(
            e,
            RecordError::Replayed {
                counter: 0,
                expected: 2
            }
        );
        assert!(e.to_string().starts_with("replayed record rejected"));
    }

    #[test]
    fn test_reorder_and_drop_are_rejected() {
        let recs = sealed(3);
        let mut o = Opener::new(keys(7));
        o.push(&recs[1]);
        assert_eq!(
            o.next_record().unwrap_err(),
            RecordError::OutOfOrder {
                counter: 1,
                expected: 0
            }
        );
        let mut o = Opener::new(keys(7));
        o.push(&recs[0]);
        o.push(&recs[2]);
        assert!(o.next_record().unwrap().is_some());
        assert!(matches!(
            o.next_record(),
            Err(RecordError::OutOfOrder {
                counter: 2,
                expected: 1
            })
        ));
    }

    #[test]
    fn test_wrong_key_is_an_integrity_error() {
        let r = &sealed(1)[0];
        let mut o = Opener::new(keys(8));
        o.push(r);
        assert!(matches!(
            o.next_record(),
            Err(RecordError::Integrity { counter: 0 })
        ));
    }

    #[test]
    fn test_counters_give_distinct_keystreams() {
        // Same plaintext twice: different ciphertext, because the nonce (counter) differs.
        let mut s = Sealer::new(keys(1));
        let (mut a, mut b) = (vec![], vec![]);
        s.seal(RecordType::Data, b"same", &mut a);
        s.seal(RecordType::Data, b"same", &mut b);
        assert_ne!(a[12..17], b[12..17]);
    }
}
