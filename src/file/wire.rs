//! Payloads of protocol 171. The 44-byte header is the one protocol 170 uses
//! ([`crate::msg::wire::Header`]); in DATA `seq` is the packet number, in ACK `ack` echoes the
//! largest packet number received.

use crate::msg::wire::{truncate_str, Reader, Writer};
pub use crate::msg::wire::{Header, WireError, HEADER_LEN, VERSION};

pub mod ty {
    pub const OFFER: u8 = 1;
    pub const ACCEPT: u8 = 2;
    pub const REFUSE: u8 = 3;
    pub const DATA: u8 = 4;
    pub const ACK: u8 = 5;
    pub const DONE: u8 = 6;
    pub const RESET: u8 = 7;
    pub const CANCEL: u8 = 8;
}

/// Bytes of a DATA payload before the chunk: transfer id and chunk index.
pub const DATA_OVERHEAD: usize = 12;
/// Ranges in one ACCEPT or ACK.
pub const MAX_RANGES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repr<'a> {
    Offer {
        id: u64,
        size: u64,
        chunk_size: u32,
        sha256: [u8; 32],
        name: &'a str,
        channel: &'a str,
        sender: &'a str,
    },
    /// Chunk ranges the receiver already holds.
    Accept {
        id: u64,
        have: Vec<(u32, u32)>,
    },
    Refuse {
        id: u64,
        reason: &'a str,
    },
    Data {
        id: u64,
        chunk: u32,
        data: &'a [u8],
    },
    /// `cum`: every chunk below is held; `ranges`: held chunks above it.
    Ack {
        id: u64,
        cum: u32,
        ranges: Vec<(u32, u32)>,
    },
    /// status 0: stored and verified; 1: hash mismatch; 2: storage error.
    Done {
        id: u64,
        status: u8,
        reason: &'a str,
    },
    /// "I know no such transfer": the sender offers again.
    Reset {
        id: u64,
    },
    Cancel {
        id: u64,
        reason: &'a str,
    },
}

fn ranges(r: &mut Reader<'_>) -> Result<Vec<(u32, u32)>, WireError> {
    let n = r.u16()? as usize;
    if n > MAX_RANGES {
        return Err(WireError::BadPayload);
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = (r.u32()?, r.u32()?);
        if a >= b {
            return Err(WireError::BadPayload);
        }
        v.push((a, b));
    }
    Ok(v)
}

fn put_ranges(w: &mut Writer<'_>, v: &[(u32, u32)]) {
    let v = &v[..v.len().min(MAX_RANGES)];
    w.u16(v.len() as u16);
    for &(a, b) in v {
        w.u32(a);
        w.u32(b);
    }
}

impl<'a> Repr<'a> {
    pub fn ty(&self) -> u8 {
        match self {
            Repr::Offer { .. } => ty::OFFER,
            Repr::Accept { .. } => ty::ACCEPT,
            Repr::Refuse { .. } => ty::REFUSE,
            Repr::Data { .. } => ty::DATA,
            Repr::Ack { .. } => ty::ACK,
            Repr::Done { .. } => ty::DONE,
            Repr::Reset { .. } => ty::RESET,
            Repr::Cancel { .. } => ty::CANCEL,
        }
    }

    pub fn id(&self) -> u64 {
        match *self {
            Repr::Offer { id, .. }
            | Repr::Accept { id, .. }
            | Repr::Refuse { id, .. }
            | Repr::Data { id, .. }
            | Repr::Ack { id, .. }
            | Repr::Done { id, .. }
            | Repr::Reset { id }
            | Repr::Cancel { id, .. } => id,
        }
    }

    pub fn parse(ty: u8, p: &'a [u8]) -> Result<Repr<'a>, WireError> {
        let mut r = Reader::new(p);
        let id = r.u64()?;
        let repr = match ty {
            ty::OFFER => {
                let size = r.u64()?;
                let chunk_size = r.u32()?;
                let mut sha256 = [0u8; 32];
                sha256.copy_from_slice(r.bytes(32)?);
                if chunk_size == 0 {
                    return Err(WireError::BadPayload);
                }
                Repr::Offer {
                    id,
                    size,
                    chunk_size,
                    sha256,
                    name: r.str16()?,
                    channel: r.str16()?,
                    sender: r.str16()?,
                }
            }
            ty::ACCEPT => Repr::Accept {
                id,
                have: ranges(&mut r)?,
            },
            ty::REFUSE => Repr::Refuse {
                id,
                reason: r.str16()?,
            },
            ty::DATA => Repr::Data {
                id,
                chunk: r.u32()?,
                data: r.rest(),
            },
            ty::ACK => Repr::Ack {
                id,
                cum: r.u32()?,
                ranges: ranges(&mut r)?,
            },
            ty::DONE => Repr::Done {
                id,
                status: r.u8()?,
                reason: r.str16()?,
            },
            ty::RESET => Repr::Reset { id },
            ty::CANCEL => Repr::Cancel {
                id,
                reason: r.str16()?,
            },
            _ => return Err(WireError::UnknownType),
        };
        if !r.is_empty() {
            return Err(WireError::BadPayload);
        }
        Ok(repr)
    }

    pub fn buffer_len(&self) -> usize {
        let s = |x: &str| 2 + truncate_str(x, 1024).len();
        8 + match self {
            Repr::Offer {
                name,
                channel,
                sender,
                ..
            } => 8 + 4 + 32 + s(name) + s(channel) + s(sender),
            Repr::Accept { have, .. } => 2 + 8 * have.len().min(MAX_RANGES),
            Repr::Refuse { reason, .. } | Repr::Cancel { reason, .. } => s(reason),
            Repr::Data { data, .. } => 4 + data.len(),
            Repr::Ack { ranges, .. } => 4 + 2 + 8 * ranges.len().min(MAX_RANGES),
            Repr::Done { reason, .. } => 1 + s(reason),
            Repr::Reset { .. } => 0,
        }
    }

    pub fn emit(&self, buf: &mut [u8]) {
        let mut w = Writer::new(buf);
        w.u64(self.id());
        let s = |w: &mut Writer<'_>, x: &str| w.str16(truncate_str(x, 1024));
        match self {
            Repr::Offer {
                size,
                chunk_size,
                sha256,
                name,
                channel,
                sender,
                ..
            } => {
                w.u64(*size);
                w.u32(*chunk_size);
                w.bytes(sha256);
                s(&mut w, name);
                s(&mut w, channel);
                s(&mut w, sender);
            }
            Repr::Accept { have, .. } => put_ranges(&mut w, have),
            Repr::Refuse { reason, .. } | Repr::Cancel { reason, .. } => s(&mut w, reason),
            Repr::Data { chunk, data, .. } => {
                w.u32(*chunk);
                w.bytes(data);
            }
            Repr::Ack { cum, ranges, .. } => {
                w.u32(*cum);
                put_ranges(&mut w, ranges);
            }
            Repr::Done { status, reason, .. } => {
                w.u8(*status);
                s(&mut w, reason);
            }
            Repr::Reset { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: &Repr<'_>, lit: &[u8]) {
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf);
        assert_eq!(buf, lit);
        assert_eq!(&Repr::parse(r.ty(), lit).unwrap(), r);
        // DATA's chunk length is implied by the packet length, so only the others can be short.
        if r.ty() != ty::DATA && lit.len() > 8 {
            assert!(Repr::parse(r.ty(), &lit[..lit.len() - 1]).is_err());
        }
    }

    #[test]
    fn test_data_literal() {
        let r = Repr::Data {
            id: 0x0102,
            chunk: 3,
            data: b"xy",
        };
        round_trip(&r, &[0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 3, b'x', b'y']);
    }

    #[test]
    fn test_ack_literal() {
        let r = Repr::Ack {
            id: 1,
            cum: 4,
            ranges: vec![(6, 8)],
        };
        round_trip(
            &r,
            &[
                0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 1, 0, 0, 0, 6, 0, 0, 0, 8,
            ],
        );
    }

    #[test]
    fn test_offer_literal() {
        let r = Repr::Offer {
            id: 2,
            size: 5,
            chunk_size: 1024,
            sha256: [0xAA; 32],
            name: "f",
            channel: "c",
            sender: "s",
        };
        let mut lit = vec![0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 4, 0];
        lit.extend_from_slice(&[0xAA; 32]);
        lit.extend_from_slice(&[0, 1, b'f', 0, 1, b'c', 0, 1, b's']);
        round_trip(&r, &lit);
    }

    #[test]
    fn test_done_refuse_reset_literal() {
        round_trip(
            &Repr::Done {
                id: 1,
                status: 1,
                reason: "h",
            },
            &[0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, b'h'],
        );
        round_trip(
            &Repr::Refuse { id: 1, reason: "" },
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        );
        round_trip(&Repr::Reset { id: 9 }, &[0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(Repr::parse(99, &[0; 8]), Err(WireError::UnknownType));
        assert!(Repr::parse(
            ty::ACCEPT,
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 0, 0, 5]
        )
        .is_err());
    }

    #[test]
    fn test_parse_never_panics() {
        let mut rng = crate::rand::Rng::new(9);
        let mut buf = [0u8; 120];
        for _ in 0..20_000 {
            let n = rng.below(120) as usize;
            rng.fill(&mut buf[..n]);
            let t = rng.below(10) as u8;
            let _ = Repr::parse(t, &buf[..n]);
        }
    }
}
