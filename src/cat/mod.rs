//! The encrypted netcat (`tunstack cat`): RSA-OAEP key exchange, Salsa20 + HMAC-SHA256 records,
//! chat and file transfer over any byte stream.
//!
//! - [`record`]: the record layer (encrypt-then-MAC with counters).
//! - [`handshake`]: key exchange messages and key derivation.
//! - [`known_hosts`]: trust-on-first-use pinning of listener keys.
//! - [`run`]: the driver: threads for the stream, stdin and files.

pub mod handshake;
pub mod known_hosts;
pub mod record;
pub mod run;
