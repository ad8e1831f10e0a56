//! Classic pcap capture files (the libpcap format, not pcapng).
//!
//! Packets are bare IP datagrams, so the link type is `LINKTYPE_RAW` (101):
//! Wireshark and tcpdump decode them without a fake Ethernet header.
//! Everything is written little-endian with microsecond timestamps; readers
//! recognise the byte order from the magic number.
//!
//! The writer takes each packet's time from the caller and never reads a clock,
//! so a simulated run produces the same file every time.

use std::io::{self, Read, Write};

/// `LINKTYPE_RAW`: each record starts directly with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// The largest packet a record keeps; longer packets are cut to this length.
pub const SNAPLEN: u32 = 65535;
/// Bytes in the file header.
pub const GLOBAL_HEADER_LEN: usize = 24;
/// Bytes in each record header.
pub const RECORD_HEADER_LEN: usize = 16;

/// Magic number for microsecond-resolution files.
const MAGIC_US: u32 = 0xa1b2_c3d4;
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;

/// Writes a pcap capture to any [`Write`].
///
/// Wrap files in a [`std::io::BufWriter`]; the writer issues one small write
/// per header. Call [`flush`](Self::flush) before the program exits.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header and returns the writer.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut hdr = [0u8; GLOBAL_HEADER_LEN];
        hdr[0..4].copy_from_slice(&MAGIC_US.to_le_bytes());
        hdr[4..6].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        hdr[6..8].copy_from_slice(&VERSION_MINOR.to_le_bytes());
        // thiszone (8..12) and sigfigs (12..16) stay 0: timestamps are UTC.
        hdr[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        hdr[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&hdr)?;
        Ok(PcapWriter { out })
    }

    /// Appends one packet seen at `ts_us` microseconds since the Unix epoch.
    pub fn write_packet(&mut self, ts_us: u64, pkt: &[u8]) -> io::Result<()> {
        let kept = pkt.len().min(SNAPLEN as usize);
        // The format has 32-bit seconds; that lasts until 2106.
        let secs = (ts_us / 1_000_000) as u32;
        let usecs = (ts_us % 1_000_000) as u32;
        let orig_len = u32::try_from(pkt.len()).unwrap_or(u32::MAX);
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        hdr[0..4].copy_from_slice(&secs.to_le_bytes());
        hdr[4..8].copy_from_slice(&usecs.to_le_bytes());
        hdr[8..12].copy_from_slice(&(kept as u32).to_le_bytes());
        hdr[12..16].copy_from_slice(&orig_len.to_le_bytes());
        self.out.write_all(&hdr)?;
        self.out.write_all(&pkt[..kept])
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Returns the underlying writer (unflushed).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One packet read back from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    /// Length of the packet on the wire; more than `data.len()` if cut.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// A minimal reader for microsecond pcap files, enough to check captures in
/// tests. Either byte order is accepted.
#[derive(Debug)]
pub struct PcapReader<R: Read> {
    input: R,
    big_endian: bool,
    linktype: u32,
    snaplen: u32,
}

impl<R: Read> PcapReader<R> {
    /// Reads and checks the file header.
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut hdr = [0u8; GLOBAL_HEADER_LEN];
        input.read_exact(&mut hdr)?;
        let magic = [hdr[0], hdr[1], hdr[2], hdr[3]];
        let big_endian = if u32::from_le_bytes(magic) == MAGIC_US {
            false
        } else if u32::from_be_bytes(magic) == MAGIC_US {
            true
        } else {
            return Err(invalid("not a microsecond pcap file (bad magic)"));
        };
        let mut reader = PcapReader {
            input,
            big_endian,
            linktype: 0,
            snaplen: 0,
        };
        if reader.u16_at(&hdr, 4) != VERSION_MAJOR {
            return Err(invalid("unsupported pcap major version"));
        }
        reader.snaplen = reader.u32_at(&hdr, 16);
        reader.linktype = reader.u32_at(&hdr, 20);
        Ok(reader)
    }

    /// The link type from the file header (101 for files this module writes).
    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    /// The snapshot length from the file header.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// The next record, or `None` at a clean end of file.
    pub fn next_packet(&mut self) -> io::Result<Option<PcapRecord>> {
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        // Distinguish a clean end (no bytes) from a record cut in half.
        let mut filled = 0;
        while filled < hdr.len() {
            match self.input.read(&mut hdr[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(invalid("capture ends inside a record header")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let secs = u64::from(self.u32_at(&hdr, 0));
        let usecs = u64::from(self.u32_at(&hdr, 4));
        let incl_len = self.u32_at(&hdr, 8);
        let orig_len = self.u32_at(&hdr, 12);
        if incl_len > self.snaplen.max(SNAPLEN) {
            return Err(invalid("record longer than the snapshot length"));
        }
        let mut data = vec![0u8; incl_len as usize];
        self.input.read_exact(&mut data)?;
        Ok(Some(PcapRecord {
            ts_us: secs * 1_000_000 + usecs,
            orig_len,
            data,
        }))
    }

    fn u16_at(&self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        if self.big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    }

    fn u32_at(&self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Worked out by hand from the libpcap file format description.
    const HEADER: [u8; 24] = [
        0xd4, 0xc3, 0xb2, 0xa1, // magic, little-endian, microseconds
        0x02, 0x00, 0x04, 0x00, // version 2.4
        0x00, 0x00, 0x00, 0x00, // thiszone
        0x00, 0x00, 0x00, 0x00, // sigfigs
        0xff, 0xff, 0x00, 0x00, // snaplen 65535
        0x65, 0x00, 0x00, 0x00, // linktype 101 (raw IP)
    ];

    #[test]
    fn test_writer_file_header_bytes() {
        let w = PcapWriter::new(Vec::new()).unwrap();
        assert_eq!(w.into_inner(), HEADER);
    }

    #[test]
    fn test_writer_record_bytes() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        // 1_700_000_000 s = 0x6553_f100, 123_456 us = 0x0001_e240.
        w.write_packet(1_700_000_000_123_456, &[0x45, 0x00, 0x00, 0x14])
            .unwrap();
        let bytes = w.into_inner();
        let expected_record: [u8; 20] = [
            0x00, 0xf1, 0x53, 0x65, // ts_sec
            0x40, 0xe2, 0x01, 0x00, // ts_usec
            0x04, 0x00, 0x00, 0x00, // incl_len
            0x04, 0x00, 0x00, 0x00, // orig_len
            0x45, 0x00, 0x00, 0x14, // packet
        ];
        assert_eq!(&bytes[..24], &HEADER);
        assert_eq!(&bytes[24..], &expected_record);
    }

    #[test]
    fn test_writer_cuts_packets_at_snaplen() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let big = vec![0xabu8; SNAPLEN as usize + 10];
        w.write_packet(0, &big).unwrap();
        let bytes = w.into_inner();
        assert_eq!(bytes.len(), 24 + 16 + SNAPLEN as usize);
        assert_eq!(&bytes[32..36], &SNAPLEN.to_le_bytes());
        assert_eq!(&bytes[36..40], &(SNAPLEN + 10).to_le_bytes());
        let rec = PcapReader::new(&bytes[..])
            .unwrap()
            .next_packet()
            .unwrap()
            .unwrap();
        assert_eq!(rec.orig_len, SNAPLEN + 10);
        assert_eq!(rec.data.len(), SNAPLEN as usize);
    }

    #[test]
    fn test_reader_round_trip() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(5, &[]).unwrap();
        w.write_packet(1_000_000, &[1, 2, 3]).unwrap();
        let bytes = w.into_inner();
        let mut r = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.linktype(), LINKTYPE_RAW);
        assert_eq!(r.snaplen(), SNAPLEN);
        let a = r.next_packet().unwrap().unwrap();
        assert_eq!((a.ts_us, a.orig_len, a.data.len()), (5, 0, 0));
        let b = r.next_packet().unwrap().unwrap();
        assert_eq!((b.ts_us, b.orig_len, b.data), (1_000_000, 3, vec![1, 2, 3]));
        assert_eq!(r.next_packet().unwrap(), None);
    }

    #[test]
    fn test_reader_big_endian_file() {
        let mut bytes = vec![
            0xa1, 0xb2, 0xc3, 0xd4, 0x00, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00,
            0xff, 0xff, 0x00, 0x00, 0x00, 0x65,
        ];
        bytes.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 1, 0x99]);
        let mut r = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.linktype(), LINKTYPE_RAW);
        let rec = r.next_packet().unwrap().unwrap();
        assert_eq!((rec.ts_us, rec.data), (2_000_007, vec![0x99]));
    }

    #[test]
    fn test_reader_rejects_bad_magic_and_cut_records() {
        let err = PcapReader::new(&[0u8; 24][..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(0, &[1, 2, 3, 4]).unwrap();
        let bytes = w.into_inner();
        let mut r = PcapReader::new(&bytes[..30]).unwrap();
        assert!(r.next_packet().is_err());
        let mut r = PcapReader::new(&bytes[..bytes.len() - 1]).unwrap();
        assert!(r.next_packet().is_err());
    }
}
