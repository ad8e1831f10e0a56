//! TUN segmentation offload: the `virtio_net_hdr` that prefixes every packet on a TUN device
//! opened with `IFF_VNET_HDR`, and the work that lets one system call carry up to 64 KiB of TCP.
//!
//! A single-queue TUN moves about 740k packets/s each way, which caps TCP at MTU 1500 near
//! 9 Gbit/s no matter how fast the stack is: the cost is one system call per packet. With
//! `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4)` the kernel hands the node TCP super-segments (its TSO
//! output, up to 64 KiB, with a partial checksum) and accepts them from the node, cutting the
//! packets per byte by up to 44x. The stack's core never sees the difference:
//!
//! - Inbound, [`complete_checksum`] finishes a partial checksum in place, after which the packet
//!   is an ordinary (large) IPv4 packet; TCP accepts any segment that fits its window.
//! - Outbound, [`TsoBatch`] joins the MSS-sized segments the stack wrote in one turn, when they
//!   are consecutive data of one connection with identical headers, into one super-segment
//!   that the kernel cuts back into exactly those segments (the first header's IP ID counts up,
//!   PSH/FIN stay on the last), so the wire sees what the stack produced.
//!
//! The capture (`--pcap`) and the impairment layer sit above the device and keep seeing the
//! stack's own packets; tcpdump on the TUN device shows the super-segments.

use crate::wire::checksum;
use std::net::Ipv4Addr;

/// Length of the legacy `virtio_net_hdr` (no `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the transport checksum is partial; the sum from `csum_start` on goes at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// Set with a GSO type when the segments carry ECN CWR; not produced here.
pub const GSO_ECN: u8 = 0x80;

/// The kernel segments at most this many per super-segment (`GSO_MAX_SEGS` is far higher, but
/// past this the gain is nil and a lost super-segment on the veth path costs more).
const MAX_SEGMENTS: usize = 64;
const IPV4_MAX: usize = 65_535;

const TCP_PROTO: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// A `virtio_net_hdr` in the host's byte order (what TUN uses unless told otherwise).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Why a packet read from the device was unusable.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// The checksum position lies outside the packet.
    BadChecksumOffsets,
}

/// Finishes a partial checksum (`F_NEEDS_CSUM`): the field already holds the pseudo-header sum,
/// so the one's-complement sum of everything from `csum_start` on, complemented, is the checksum.
pub fn complete_checksum(pkt: &mut [u8], hdr: &VnetHdr) -> Result<(), OffloadError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = hdr.csum_start as usize;
    let at = start + hdr.csum_offset as usize;
    if at + 2 > pkt.len() {
        return Err(OffloadError::BadChecksumOffsets);
    }
    let sum = checksum::finish(checksum::accumulate(0, &pkt[start..]));
    pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// What must match between the segments of one super-segment: everything in the headers but
/// the IP length, ID and checksum, the TCP sequence number, flags and checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// IP header length (no options accepted, so 20) plus the TCP header with options.
    hdr_len: usize,
    ttl_tos: [u8; 2],
    ports: [u8; 4],
    ack: [u8; 4],
    window: [u8; 2],
    /// The TCP options, as bytes (at most 40): compared, never interpreted.
    options: ([u8; 40], u8),
}

/// A TCP data segment the batch can take, with what a batch needs of it.
struct Segment<'a> {
    template: Template,
    seq: u32,
    flags: u8,
    payload: &'a [u8],
}

fn parse_segment(pkt: &[u8]) -> Option<Segment<'_>> {
    // IPv4 without options, TCP, not a fragment, DF set (the segments are MTU-sized on purpose).
    if pkt.len() < 40 || pkt[0] != 0x45 || pkt[9] != TCP_PROTO {
        return None;
    }
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    if total != pkt.len() || frag != 0x4000 {
        return None;
    }
    let tcp = &pkt[20..];
    let doff = (tcp[12] >> 4) as usize * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let flags = tcp[13];
    let payload = &tcp[doff..];
    if payload.is_empty() || flags & !(TCP_ACK | TCP_PSH | TCP_FIN) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some(Segment {
        template: Template {
            src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
            dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
            hdr_len: 20 + doff,
            ttl_tos: [pkt[1], pkt[8]],
            ports: tcp[0..4].try_into().ok()?,
            ack: tcp[8..12].try_into().ok()?,
            window: tcp[14..16].try_into().ok()?,
            options: {
                let mut o = [0u8; 40];
                o[..doff - 20].copy_from_slice(&tcp[20..doff]);
                (o, (doff - 20) as u8)
            },
        },
        seq: u32::from_be_bytes(tcp[4..8].try_into().ok()?),
        flags,
        payload,
    })
}

/// Joins consecutive TCP segments of one connection into one TSO super-segment.
///
/// The buffer holds a `virtio_net_hdr` and the packet being built: the first segment as the
/// stack made it, then each further payload appended. A batch of one is written as it came.
#[derive(Debug, Default)]
pub struct TsoBatch {
    buf: Vec<u8>,
    template: Option<Template>,
    next_seq: u32,
    seg_size: usize,
    segments: usize,
    /// The last segment was shorter than the first or carried PSH/FIN: nothing may follow.
    closed: bool,
    last_flags: u8,
}

impl TsoBatch {
    pub fn new() -> TsoBatch {
        TsoBatch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// Takes `pkt` into the batch if it continues it, or starts a batch with it if the batch
    /// is empty. False: the caller must [`finish`](Self::finish) the batch (if any) and write
    /// `pkt` by itself or offer it again.
    pub fn offer(&mut self, pkt: &[u8]) -> bool {
        let Some(seg) = parse_segment(pkt) else {
            return false;
        };
        if self.segments == 0 {
            self.buf.clear();
            self.buf.resize(VNET_HDR_LEN, 0);
            self.buf.extend_from_slice(pkt);
            self.next_seq = seg.seq.wrapping_add(seg.payload.len() as u32);
            self.seg_size = seg.payload.len();
            self.segments = 1;
            self.last_flags = seg.flags;
            self.closed = seg.flags & (TCP_PSH | TCP_FIN) != 0;
            self.template = Some(seg.template);
            return true;
        }
        let fits = !self.closed
            && self.segments < MAX_SEGMENTS
            && seg.seq == self.next_seq
            && seg.payload.len() <= self.seg_size
            && self.buf.len() - VNET_HDR_LEN + seg.payload.len() <= IPV4_MAX
            && self.template.as_ref() == Some(&seg.template);
        if !fits {
            return false;
        }
        self.buf.extend_from_slice(seg.payload);
        self.next_seq = self.next_seq.wrapping_add(seg.payload.len() as u32);
        self.segments += 1;
        self.last_flags = seg.flags;
        self.closed = seg.payload.len() < self.seg_size || seg.flags & (TCP_PSH | TCP_FIN) != 0;
        true
    }

    /// Segments in the batch.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Completes the batch and returns the bytes to write (header included); the batch is
    /// empty afterwards. `None` if it was empty.
    pub fn finish(&mut self) -> Option<&[u8]> {
        if self.segments == 0 {
            return None;
        }
        let segments = std::mem::take(&mut self.segments);
        let template = self.template.take()?;
        let (hdr, pkt) = self.buf.split_at_mut(VNET_HDR_LEN);
        if segments == 1 {
            VnetHdr::default().emit(hdr);
            return Some(&self.buf);
        }
        let total = pkt.len();
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[10..12].fill(0);
        let ip_sum = checksum::checksum(&pkt[..20]);
        pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        // The first segment's flags were plain ACK; the kernel puts PSH/FIN on the last one only.
        pkt[20 + 13] = self.last_flags;
        // A partial checksum: the folded pseudo-header sum, uncomplemented, for the whole length;
        // the kernel fixes the length per segment and sums each one.
        let tcp_len = total - 20;
        let pseudo = checksum::pseudo_header(template.src, template.dst, TCP_PROTO, tcp_len);
        let partial = !checksum::finish(pseudo);
        pkt[20 + 16..20 + 18].copy_from_slice(&partial.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: template.hdr_len as u16,
            gso_size: self.seg_size as u16,
            csum_start: 20,
            csum_offset: 16,
        }
        .emit(hdr);
        Some(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::{accumulate, finish, pseudo_header};

    /// An IPv4/TCP data segment with a correct checksum and a timestamp option.
    fn segment(seq: u32, flags: u8, payload: &[u8], id: u16) -> Vec<u8> {
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
        let opts = [1u8, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];
        let doff = 20 + opts.len();
        let total = 20 + doff + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = TCP_PROTO;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let s = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&s.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&19u16.to_be_bytes());
        t[2..4].copy_from_slice(&40000u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = ((doff / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..doff].copy_from_slice(&opts);
        t[doff..].copy_from_slice(payload);
        let sum = finish(accumulate(pseudo_header(src, dst, TCP_PROTO, t.len()), t));
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn test_vnet_header_round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.emit(&mut b);
        assert_eq!(VnetHdr::parse(&b), h);
    }

    #[test]
    fn test_consecutive_segments_become_one_super_segment_with_a_partial_checksum() {
        let a = vec![1u8; 100];
        let b = vec![2u8; 100];
        let c = vec![3u8; 40];
        let mut batch = TsoBatch::new();
        assert!(batch.offer(&segment(1000, TCP_ACK, &a, 1)));
        assert!(batch.offer(&segment(1100, TCP_ACK, &b, 2)));
        assert!(batch.offer(&segment(1200, TCP_ACK | TCP_PSH, &c, 3)));
        // Closed by the short, pushed segment.
        assert!(!batch.offer(&segment(1240, TCP_ACK, &a, 4)));
        assert_eq!(batch.segments(), 3);
        let out = batch.finish().unwrap().to_vec();
        assert!(batch.is_empty());
        let hdr = VnetHdr::parse(out[..VNET_HDR_LEN].try_into().unwrap());
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!(hdr.gso_size, 100);
        assert_eq!(hdr.hdr_len, 52);
        let mut pkt = out[VNET_HDR_LEN..].to_vec();
        assert_eq!(pkt.len(), 52 + 240);
        assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]) as usize, pkt.len());
        assert!(checksum::verify(&pkt[..20]));
        assert_eq!(pkt[33], TCP_ACK | TCP_PSH);
        assert_eq!(&pkt[52..152], &a[..]);
        assert_eq!(&pkt[252..], &c[..]);
        // What the kernel would do for local delivery: finish the partial sum; then the big
        // segment checks out as an ordinary one.
        complete_checksum(&mut pkt, &hdr).unwrap();
        let src = Ipv4Addr::new(198, 18, 0, 2);
        let dst = Ipv4Addr::new(198, 18, 0, 1);
        let tcp = &pkt[20..];
        assert_eq!(
            finish(accumulate(
                pseudo_header(src, dst, TCP_PROTO, tcp.len()),
                tcp
            )),
            0
        );
    }

    /// What the kernel's GSO does with a TCPV4 super-segment (tcp_gso_segment): cut the payload
    /// into `gso_size` pieces, copy the headers, count the IP ID and sequence number up, keep
    /// PSH/FIN for the last piece, and finish every checksum.
    fn kernel_segments(out: &[u8]) -> Vec<Vec<u8>> {
        let hdr = VnetHdr::parse(out[..VNET_HDR_LEN].try_into().unwrap());
        let pkt = &out[VNET_HDR_LEN..];
        if hdr.gso_type == GSO_NONE {
            return vec![pkt.to_vec()];
        }
        let hl = hdr.hdr_len as usize;
        let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
        let seq0 = u32::from_be_bytes(pkt[24..28].try_into().unwrap());
        let flags = pkt[33];
        let pieces: Vec<&[u8]> = pkt[hl..].chunks(hdr.gso_size as usize).collect();
        let n = pieces.len();
        let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
        let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
        pieces
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let mut p = pkt[..hl].to_vec();
                p.extend_from_slice(body);
                let total = p.len() as u16;
                p[2..4].copy_from_slice(&total.to_be_bytes());
                p[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
                p[10..12].fill(0);
                let s = checksum::checksum(&p[..20]);
                p[10..12].copy_from_slice(&s.to_be_bytes());
                let seq = seq0.wrapping_add((i * hdr.gso_size as usize) as u32);
                p[24..28].copy_from_slice(&seq.to_be_bytes());
                p[33] = if i + 1 == n {
                    flags
                } else {
                    flags & !(TCP_PSH | TCP_FIN)
                };
                p[36..38].fill(0);
                let t = &p[20..];
                let sum = finish(accumulate(pseudo_header(src, dst, TCP_PROTO, t.len()), t));
                p[36..38].copy_from_slice(&sum.to_be_bytes());
                p
            })
            .collect()
    }

    /// Whatever the stack writes, the kernel's segmentation of what the batch makes of it gives
    /// back the very same packets, byte for byte and in order.
    #[test]
    fn test_the_wire_sees_exactly_the_stacks_segments() {
        let mut rng = crate::rand::Rng::new(7);
        let mut joined = 0;
        for round in 0..200 {
            let mss = 200 + rng.below(1200) as usize;
            let mut wrote = Vec::new();
            let mut seq = rng.next_u32();
            let mut id = rng.next_u32() as u16;
            for _ in 0..1 + rng.below(120) {
                let len = match rng.below(10) {
                    0 => 1 + rng.below(mss as u64) as usize,
                    _ => mss,
                };
                let flags = match rng.below(8) {
                    0 => TCP_ACK | TCP_PSH,
                    1 => TCP_ACK | TCP_FIN,
                    _ => TCP_ACK,
                };
                let body: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
                // Now and then a segment out of sequence (a retransmission).
                let s = if rng.below(20) == 0 {
                    seq.wrapping_sub(mss as u32)
                } else {
                    seq
                };
                wrote.push(segment(s, flags, &body, id));
                seq = s.wrapping_add(len as u32);
                id = id.wrapping_add(1);
            }
            let mut batch = TsoBatch::new();
            let mut wire = Vec::new();
            for p in &wrote {
                if !batch.offer(p) {
                    joined += batch.segments().saturating_sub(1);
                    if let Some(out) = batch.finish() {
                        wire.extend(kernel_segments(out));
                    }
                    if !batch.offer(p) {
                        wire.push(p.clone());
                    }
                }
            }
            joined += batch.segments().saturating_sub(1);
            if let Some(out) = batch.finish() {
                wire.extend(kernel_segments(out));
            }
            assert_eq!(wire, wrote, "round {round}, mss {mss}");
        }
        assert!(
            joined > 2_000,
            "only {joined} segments were joined to another"
        );
    }

    #[test]
    fn test_batch_refuses_what_would_change_the_wire() {
        let p = vec![0u8; 100];
        let mut batch = TsoBatch::new();
        assert!(batch.offer(&segment(0, TCP_ACK, &p, 1)));
        // A gap, a longer segment, a different ACK field, a bare ACK, a SYN.
        assert!(!batch.offer(&segment(200, TCP_ACK, &p, 2)));
        assert!(!batch.offer(&segment(100, TCP_ACK, &[0u8; 101], 2)));
        let mut other_ack = segment(100, TCP_ACK, &p, 2);
        other_ack[28] ^= 1;
        assert!(!batch.offer(&other_ack));
        assert!(!batch.offer(&segment(100, TCP_ACK, &[], 2)));
        assert!(!batch.offer(&segment(100, 0x02 | TCP_ACK, &p, 2)));
        // A lone segment goes out untouched, with an empty header.
        let one = segment(0, TCP_ACK, &p, 1);
        let out = batch.finish().unwrap();
        assert_eq!(&out[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
        assert_eq!(&out[VNET_HDR_LEN..], &one[..]);
        assert!(batch.finish().is_none());
    }

    #[test]
    fn test_batch_stops_below_the_ip_length_limit() {
        let p = vec![0u8; 1448];
        let mut batch = TsoBatch::new();
        let mut seq = 0u32;
        let mut taken = 0;
        while batch.offer(&segment(seq, TCP_ACK, &p, 0)) {
            seq += 1448;
            taken += 1;
        }
        assert_eq!(taken, (IPV4_MAX - 52) / 1448);
        assert!(batch.finish().unwrap().len() - VNET_HDR_LEN <= IPV4_MAX);
    }

    #[test]
    fn test_partial_checksum_is_completed_in_place_and_bad_offsets_refused() {
        let mut pkt = segment(5, TCP_ACK, b"hello", 1);
        let good = pkt.clone();
        let src = Ipv4Addr::new(198, 18, 0, 2);
        let dst = Ipv4Addr::new(198, 18, 0, 1);
        let partial = !finish(pseudo_header(src, dst, TCP_PROTO, pkt.len() - 20));
        pkt[36..38].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        complete_checksum(&mut pkt, &hdr).unwrap();
        assert_eq!(pkt, good);
        let bad = VnetHdr {
            csum_start: 60,
            ..hdr
        };
        assert_eq!(
            complete_checksum(&mut pkt, &bad),
            Err(OffloadError::BadChecksumOffsets)
        );
    }
}
