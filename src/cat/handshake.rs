//! Key exchange. The listener owns a long-lived RSA key pair; per connection:
//!
//! ```text
//! listener -> connector  HELLO  "TSCAT1" | key length (u16) | RSA public key (PKCS#1 DER) | nonce (32)
//! connector -> listener  KEY    length (u16) | RSA-OAEP-SHA256(public key, secret (32))
//! both                   keys = HMAC-SHA256(secret, label | nonce | SHA-256(public key DER))
//!                        for the labels c2s-enc, c2s-mac, s2c-enc, s2c-mac
//! both                   a START record, the first under the new keys
//! ```
//!
//! The secret is fresh from the connector's OS randomness; the listener's nonce makes every
//! connection's keys new even if an attacker replays an old KEY message, so a recorded session
//! cannot be played back to the listener. Only the holder of the private key learns the
//! secret, so the listener's START record (which verifies only under keys derived from it)
//! proves to the connector that it talks to the key it pinned.

use super::record::DirectionKeys;
use hmac::{Hmac, Mac};
use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use std::fmt;

pub const MAGIC: &[u8; 6] = b"TSCAT1";
pub const NONCE_LEN: usize = 32;
pub const SECRET_LEN: usize = 32;
/// Smallest RSA modulus we accept from a listener.
pub const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    NotTunstackCat,
    Malformed(&'static str),
    WeakKey(usize),
    /// OAEP decryption failed: the connector used another key, or the message was altered.
    Decrypt,
    Rsa(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::NotTunstackCat => {
                f.write_str("the peer is not a tunstack cat listener")
            }
            HandshakeError::Malformed(w) => write!(f, "malformed {w} message"),
            HandshakeError::WeakKey(b) => {
                write!(
                    f,
                    "the listener's RSA key has {b} bits; at least {MIN_RSA_BITS} are required"
                )
            }
            HandshakeError::Decrypt => {
                f.write_str("cannot decrypt the session key (wrong key or altered in transit)")
            }
            HandshakeError::Rsa(e) => write!(f, "RSA: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn public_der(key: &RsaPublicKey) -> Result<Vec<u8>, HandshakeError> {
    key.to_pkcs1_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| HandshakeError::Rsa(e.to_string()))
}

/// SHA-256 of the public key's PKCS#1 DER encoding, in hex: what people compare and pin.
pub fn fingerprint(key: &RsaPublicKey) -> Result<String, HandshakeError> {
    Ok(hex(&Sha256::digest(public_der(key)?)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub public_der: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
}

impl Hello {
    pub fn emit(&self) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&(self.public_der.len() as u16).to_be_bytes());
        v.extend_from_slice(&self.public_der);
        v.extend_from_slice(&self.nonce);
        v
    }

    pub fn parse(b: &[u8]) -> Result<Hello, HandshakeError> {
        if b.len() < MAGIC.len() || &b[..MAGIC.len()] != MAGIC {
            return Err(HandshakeError::NotTunstackCat);
        }
        let b = &b[MAGIC.len()..];
        if b.len() < 2 {
            return Err(HandshakeError::Malformed("HELLO"));
        }
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        if b.len() != 2 + n + NONCE_LEN {
            return Err(HandshakeError::Malformed("HELLO"));
        }
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&b[2 + n..]);
        Ok(Hello {
            public_der: b[2..2 + n].to_vec(),
            nonce,
        })
    }

    pub fn public_key(&self) -> Result<RsaPublicKey, HandshakeError> {
        use rsa::traits::PublicKeyParts;
        let k = RsaPublicKey::from_pkcs1_der(&self.public_der)
            .map_err(|_| HandshakeError::Malformed("HELLO public key"))?;
        let bits = k.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(HandshakeError::WeakKey(bits));
        }
        Ok(k)
    }
}

/// Keys of both directions, from the connector's (c2s) and listener's (s2c) point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub c2s: DirectionKeys,
    pub s2c: DirectionKeys,
}

pub fn derive_keys(secret: &[u8; SECRET_LEN], hello: &Hello) -> SessionKeys {
    let key_hash = Sha256::digest(&hello.public_der);
    let one = |label: &[u8]| -> [u8; 32] {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        m.update(b"tunstack cat v1 ");
        m.update(label);
        m.update(&hello.nonce);
        m.update(&key_hash);
        m.finalize().into_bytes().into()
    };
    SessionKeys {
        c2s: DirectionKeys {
            enc: one(b"c2s-enc"),
            mac: one(b"c2s-mac"),
        },
        s2c: DirectionKeys {
            enc: one(b"s2c-enc"),
            mac: one(b"s2c-mac"),
        },
    }
}

/// The connector's KEY message body: the secret encrypted to the listener.
pub fn encrypt_secret<R: rand_core::CryptoRngCore>(
    rng: &mut R,
    key: &RsaPublicKey,
    secret: &[u8; SECRET_LEN],
) -> Result<Vec<u8>, HandshakeError> {
    key.encrypt(rng, Oaep::new::<Sha256>(), secret)
        .map_err(|e| HandshakeError::Rsa(e.to_string()))
}

pub fn decrypt_secret(key: &RsaPrivateKey, ct: &[u8]) -> Result<[u8; SECRET_LEN], HandshakeError> {
    let pt = key
        .decrypt(Oaep::new::<Sha256>(), ct)
        .map_err(|_| HandshakeError::Decrypt)?;
    pt.try_into().map_err(|_| HandshakeError::Decrypt)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand_core::OsRng;
    use std::sync::OnceLock;

    /// One 2048-bit key for all tests: generating one takes a noticeable moment.
    pub(crate) fn test_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
    }

    #[test]
    fn test_exchange_gives_both_sides_the_same_keys() {
        let sk = test_key();
        let hello = Hello {
            public_der: public_der(&sk.to_public_key()).unwrap(),
            nonce: [9; 32],
        };
        let parsed = Hello::parse(&hello.emit()).unwrap();
        assert_eq!(parsed, hello);
        let secret = [5u8; 32];
        let ct = encrypt_secret(&mut OsRng, &parsed.public_key().unwrap(), &secret).unwrap();
        assert_eq!(decrypt_secret(sk, &ct).unwrap(), secret);
        let k = derive_keys(&secret, &hello);
        assert_ne!(k.c2s, k.s2c);
        assert_ne!(k.c2s.enc, k.c2s.mac);
        // Another nonce, other keys: a replayed KEY message is useless.
        let other = Hello {
            nonce: [8; 32],
            ..hello
        };
        assert_ne!(derive_keys(&secret, &other), k);
    }

    #[test]
    fn test_tampered_key_message_fails_to_decrypt() {
        let sk = test_key();
        let mut ct = encrypt_secret(&mut OsRng, &sk.to_public_key(), &[1; 32]).unwrap();
        ct[10] ^= 1;
        assert_eq!(decrypt_secret(sk, &ct), Err(HandshakeError::Decrypt));
    }

    #[test]
    fn test_hello_rejects_garbage_and_weak_keys() {
        assert_eq!(
            Hello::parse(b"HTTP/1.1"),
            Err(HandshakeError::NotTunstackCat)
        );
        assert!(matches!(
            Hello::parse(b"TSCAT1\x00\x05ab"),
            Err(HandshakeError::Malformed(_))
        ));
        let weak = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let h = Hello {
            public_der: public_der(&weak.to_public_key()).unwrap(),
            nonce: [0; 32],
        };
        assert_eq!(h.public_key(), Err(HandshakeError::WeakKey(1024)));
    }

    #[test]
    fn test_fingerprint_is_sha256_hex() {
        let fp = fingerprint(&test_key().to_public_key()).unwrap();
        assert_eq!(fp.len(), 64);
        assert!(fp
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
