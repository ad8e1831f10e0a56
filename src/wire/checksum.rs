//! The Internet checksum (RFC 1071), computed 32 bits at a time.
//!
//! The one's-complement sum is independent of word size and byte order up to the final fold, so
//! summing big-endian 32-bit words and folding gives the same result as the 16-bit definition.

use std::net::Ipv4Addr;

/// Adds `data` to a running partial sum. Partial sums can be chained; `finish` folds and inverts.
/// An odd-length `data` is padded with a zero byte, so only the last chunk may be odd.
pub fn accumulate(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        sum += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u32::from_be_bytes(tail) as u64
}

/// Folds a partial sum to 16 bits and returns its complement, the value that goes on the wire.
pub fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of one buffer.
pub fn checksum(data: &[u8]) -> u16 {
    finish(accumulate(0, data))
}

/// The partial sum of the IPv4 pseudo-header used by TCP and UDP (RFC 9293 section 3.1).
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u64 {
    u32::from(src) as u64 + u32::from(dst) as u64 + protocol as u64 + len as u64
}

/// True when a buffer that contains its own checksum field sums to zero, i.e. is intact.
pub fn verify(data: &[u8]) -> bool {
    finish(accumulate(0, data)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2, checksum 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn test_known_ipv4_header() {
        // A classic example header with its checksum field zeroed; the right checksum is b861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
    }

    #[test]
    fn test_odd_length_and_chaining() {
        let data = [1u8, 2, 3, 4, 5, 6, 7];
        let whole = checksum(&data);
        let chained = finish(accumulate(accumulate(0, &data[..4]), &data[4..]));
        assert_eq!(whole, chained);
        // 16-bit reference implementation.
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            s += w as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(whole, !(s as u16));
    }

    #[test]
    fn test_verify_accepts_own_checksum() {
        let mut buf = vec![
            0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        let c = checksum(&buf);
        buf[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(&buf));
        buf[15] ^= 1;
        assert!(!verify(&buf));
    }
}
