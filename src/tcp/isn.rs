//! Initial sequence numbers (RFC 6528) and SYN cookies (RFC 4987 section 3.6), both built on
//! SipHash-2-4 keyed with the stack's secret.
//!
//! SipHash is a keyed pseudo-random function, which is what RFC 6528 section 3 asks of F(); it is
//! implemented here from its specification (Aumasson and Bernstein, 2012) to avoid a dependency.

use super::seq::SeqNumber;
use crate::time::Instant;
use std::net::SocketAddrV4;

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of `msg` under `key`.
pub fn siphash24(key: &[u8; 16], msg: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes(key[..8].try_into().unwrap());
    let k1 = u64::from_le_bytes(key[8..].try_into().unwrap());
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        let m = u64::from_le_bytes(c.try_into().unwrap());
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn tuple_hash(key: &[u8; 16], local: SocketAddrV4, remote: SocketAddrV4, extra: &[u8]) -> u64 {
    let mut m = [0u8; 24];
    m[..4].copy_from_slice(&local.ip().octets());
    m[4..6].copy_from_slice(&local.port().to_be_bytes());
    m[6..10].copy_from_slice(&remote.ip().octets());
    m[10..12].copy_from_slice(&remote.port().to_be_bytes());
    let n = extra.len().min(12);
    m[12..12 + n].copy_from_slice(&extra[..n]);
    siphash24(key, &m[..12 + n])
}

/// RFC 6528 section 3: ISN = M + F(localip, localport, remoteip, remoteport, secretkey), where M
/// ticks every 4 microseconds. Each 4-tuple gets its own offset, so ISNs of one connection tell
/// nothing about another's, while a reincarnation of the same tuple still starts ahead.
pub fn isn(key: &[u8; 16], now: Instant, local: SocketAddrV4, remote: SocketAddrV4) -> SeqNumber {
    let m = (now.as_micros() / 4) as u32;
    SeqNumber(m.wrapping_add(tuple_hash(key, local, remote, b"isn") as u32))
}

/// MSS values a cookie can encode in three bits; the server picks the largest not above the
/// client's (the values cover the common paths: tunnels, PPPoE, Ethernet, jumbo).
pub const COOKIE_MSS: [u16; 8] = [536, 1200, 1300, 1360, 1400, 1440, 1460, 8960];

/// Cookie time slots are 64 seconds; a cookie is good for the current and the previous slot.
const SLOT_SECS: u64 = 64;

/// A SYN cookie (RFC 4987 section 3.6): 5 bits of time slot, 3 bits of MSS index and 24 bits of
/// keyed hash over the 4-tuple, the slot and the client's ISN. Returned as our ISN.
pub fn cookie(
    key: &[u8; 16],
    now: Instant,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    client_isn: SeqNumber,
    mss_index: u8,
) -> SeqNumber {
    let slot = now.as_micros() / 1_000_000 / SLOT_SECS;
    make_cookie(key, slot, local, remote, client_isn, mss_index)
}

fn make_cookie(
    key: &[u8; 16],
    slot: u64,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    client_isn: SeqNumber,
    mss_index: u8,
) -> SeqNumber {
    let t = (slot % 32) as u32;
    let mut extra = [0u8; 9];
    extra[..4].copy_from_slice(&client_isn.0.to_be_bytes());
    extra[4..8].copy_from_slice(&(slot as u32).to_be_bytes());
    extra[8] = mss_index;
    let h = tuple_hash(key, local, remote, &extra) as u32 & 0x00ff_ffff;
    SeqNumber(t << 27 | ((mss_index as u32 & 7) << 24) | h)
}

/// Checks the cookie acknowledged by a handshake-completing ACK (`ack - 1` is our ISN,
/// `seq - 1` the client's). Returns the MSS index when it is genuine and fresh.
pub fn check_cookie(
    key: &[u8; 16],
    now: Instant,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    client_isn: SeqNumber,
    cookie: SeqNumber,
) -> Option<u8> {
    let slot_now = now.as_micros() / 1_000_000 / SLOT_SECS;
    let t = (cookie.0 >> 27) as u64;
    let mss_index = ((cookie.0 >> 24) & 7) as u8;
    [slot_now, slot_now.wrapping_sub(1)]
        .into_iter()
        .filter(|s| s % 32 == t)
        .any(|s| make_cookie(key, s, local, remote, client_isn, mss_index) == cookie)
        .then_some(mss_index)
}

/// The largest encodable MSS not above `mss`.
pub fn cookie_mss_index(mss: u16) -> u8 {
    COOKIE_MSS.iter().rposition(|&m| m <= mss).unwrap_or(0) as u8
}

/// Handshake options squeezed into the low bits of our SYN-ACK's TSval, so that a cookie
/// connection keeps window scaling and SACK (the peer echoes it back in TSecr). Bits 0-3: the
/// peer's window shift, 15 for none; bit 4: SACK permitted.
pub fn encode_ts_options(now_ms: u32, wscale: Option<u8>, sack: bool) -> u32 {
    // Step back a whole slot of 32 ms so the encoded value never runs ahead of the clock later
    // segments carry; otherwise the peer's PAWS check would drop them.
    let base = (now_ms & !0x1f).wrapping_sub(0x20);
    base | wscale.map_or(15, |w| w.min(14)) as u32 | (sack as u32) << 4
}

pub fn decode_ts_options(tsecr: u32) -> (Option<u8>, bool) {
    let w = (tsecr & 0xf) as u8;
    ((w != 15).then_some(w), tsecr & 0x10 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn test_siphash_reference_vector() {
        // From the SipHash paper, appendix A: key 00..0f, message 00..0e.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
        // And the empty message, from the reference implementation's vectors.
        assert_eq!(siphash24(&key, &[]), 0x726f_db47_dd0e_0e31);
    }

    fn addrs() -> (SocketAddrV4, SocketAddrV4) {
        (
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
        )
    }

    #[test]
    fn test_isn_advances_with_time_and_differs_per_tuple() {
        let key = [7u8; 16];
        let (l, r) = addrs();
        let a = isn(&key, Instant::from_micros(0), l, r);
        let b = isn(&key, Instant::from_micros(400), l, r);
        assert_eq!(b - a, 100);
        let other = SocketAddrV4::new(*r.ip(), r.port() + 1);
        assert_ne!(isn(&key, Instant::ZERO, l, other), a);
        assert_ne!(isn(&[8u8; 16], Instant::ZERO, l, r), a);
    }

    #[test]
    fn test_cookie_round_trip_and_expiry() {
        let key = [3u8; 16];
        let (l, r) = addrs();
        let cisn = SeqNumber(12345);
        let now = Instant::from_secs(1000);
        let c = cookie(&key, now, l, r, cisn, 6);
        assert_eq!(check_cookie(&key, now, l, r, cisn, c), Some(6));
        assert_eq!(
            check_cookie(
                &key,
                now + crate::time::Duration::from_secs(64),
                l,
                r,
                cisn,
                c
            ),
            Some(6)
        );
        assert_eq!(
            check_cookie(
                &key,
                now + crate::time::Duration::from_secs(200),
                l,
                r,
                cisn,
                c
            ),
            None
        );
        assert_eq!(check_cookie(&key, now, l, r, SeqNumber(12346), c), None);
        assert_eq!(check_cookie(&key, now, l, r, cisn, c + 1), None);
        assert_eq!(cookie_mss_index(1460), 6);
        assert_eq!(cookie_mss_index(100), 0);
        assert_eq!(cookie_mss_index(9000), 7);
    }

    #[test]
    fn test_ts_option_encoding() {
        let v = encode_ts_options(1_000_123, Some(7), true);
        assert!(v < 1_000_123);
        assert_eq!(decode_ts_options(v), (Some(7), true));
        assert_eq!(
            decode_ts_options(encode_ts_options(99, None, false)),
            (None, false)
        );
    }
}
