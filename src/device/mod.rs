//! Physical devices: the edge where IP packets enter and leave the stack.
//!
//! A [`Device`] moves whole IPv4 packets (no link header, no packet-info
//! prefix). The real one is [`TunDevice`]; [`MemDevice`] stands in for it in
//! tests. Wrappers compose around any device: [`Tapped`] copies every packet
//! into a pcap capture.
//!
//! Nothing here reads a clock. Capture timestamps are handed in by the driver
//! through [`Tapped::set_time`], so captures from simulated runs carry
//! simulated time.

use std::io::{self, Write};

pub mod mem;
pub mod offload;
pub mod pcap;
pub mod ring;
pub mod tun;

pub use mem::MemDevice;
pub use pcap::{PcapReader, PcapRecord, PcapWriter};
pub use ring::PacketRing;
pub use tun::{DeviceError, TunDevice};

/// A packet-at-a-time, non-blocking network device.
pub trait Device {
    /// Reads one packet into `buf`.
    ///
    /// Returns `Ok(None)` when no packet is waiting (the call would block).
    /// A packet longer than `buf` is truncated to `buf.len()` bytes, as the
    /// TUN driver does, so callers size `buf` for the device MTU.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;

    /// Writes one whole packet. A device may hold it back to join it with the next ones
    /// (segmentation offload) until [`flush`](Self::flush).
    fn send(&mut self, pkt: &[u8]) -> io::Result<()>;

    /// Writes whatever `send` held back. The driver calls it at the end of every turn.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// What the device counted on its own.
    fn stats(&self) -> DeviceStats {
        DeviceStats::default()
    }
}

/// Counters kept by a device itself, below what the driver sees.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Writes the kernel refused because its queue was full (the packet is lost, as on a link).
    pub send_drops: u64,
    /// Super-segments read (a GSO type in the virtio header).
    pub offload_rx_super: u64,
    /// Reads dropped for a malformed virtio header.
    pub offload_rx_bad: u64,
    /// Super-segments written, and the segments they carried.
    pub offload_tx_super: u64,
    pub offload_tx_segments: u64,
}

impl<D: Device + ?Sized> Device for &mut D {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        (**self).recv(buf)
    }

    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        (**self).send(pkt)
    }

    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }

    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }
}

impl<D: Device + ?Sized> Device for Box<D> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        (**self).recv(buf)
    }

    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        (**self).send(pkt)
    }

    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }

    fn stats(&self) -> DeviceStats {
        (**self).stats()
    }
}

/// A device whose received and sent packets are also written to a pcap capture.
///
/// A failing capture never costs a packet: the first capture error is kept
/// (see [`Tapped::capture_error`]), capturing stops, and traffic continues.
pub struct Tapped<D: Device, W: Write> {
    inner: D,
    pcap: PcapWriter<W>,
    now_us: u64,
    error: Option<io::Error>,
}

impl<D: Device, W: Write> Tapped<D, W> {
    /// Wraps `inner`, capturing into `pcap`. Timestamps start at 0 until
    /// [`set_time`](Self::set_time) is called.
    pub fn new(inner: D, pcap: PcapWriter<W>) -> Self {
        Tapped {
            inner,
            pcap,
            now_us: 0,
            error: None,
        }
    }

    /// Sets the timestamp (microseconds since the Unix epoch) stamped on the
    /// packets captured from now on.
    pub fn set_time(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// The first error the capture hit, if any; capturing stopped at that point.
    pub fn capture_error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably (e.g. to queue packets into a [`MemDevice`]).
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Flushes the capture; call before exiting so the file is complete.
    pub fn flush(&mut self) -> io::Result<()> {
        self.pcap.flush()
    }

    /// Takes the wrapper apart, returning the device and the capture writer.
    pub fn into_parts(self) -> (D, PcapWriter<W>) {
        (self.inner, self.pcap)
    }

    fn capture(&mut self, pkt: &[u8]) {
        if self.error.is_none() {
            if let Err(e) = self.pcap.write_packet(self.now_us, pkt) {
                self.error = Some(e);
            }
        }
    }
}

impl<D: Device, W: Write> Device for Tapped<D, W> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let got = self.inner.recv(buf)?;
        if let Some(n) = got {
            self.capture(&buf[..n]);
        }
        Ok(got)
    }

    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        self.inner.send(pkt)?;
        // Only packets the device accepted are captured, so the capture shows
        // what really went out.
        self.capture(pkt);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn stats(&self) -> DeviceStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tapped_captures_both_directions_with_given_time() {
        let mut mem = MemDevice::new();
        mem.push_inbound(vec![0x45, 1, 2]);
        let pcap = PcapWriter::new(Vec::new()).unwrap();
        let mut dev = Tapped::new(mem, pcap);

        dev.set_time(1_000_000);
        let mut buf = [0u8; 64];
        assert_eq!(dev.recv(&mut buf).unwrap(), Some(3));
        assert_eq!(dev.recv(&mut buf).unwrap(), None);
        dev.set_time(2_500_001);
        dev.send(&[0x45, 9]).unwrap();

        let (mem, pcap) = dev.into_parts();
        assert_eq!(mem.outbound(), &[vec![0x45, 9]]);
        let bytes = pcap.into_inner();
        let mut reader = PcapReader::new(&bytes[..]).unwrap();
        let first = reader.next_packet().unwrap().unwrap();
        assert_eq!((first.ts_us, first.data), (1_000_000, vec![0x45, 1, 2]));
        let second = reader.next_packet().unwrap().unwrap();
        assert_eq!((second.ts_us, second.data), (2_500_001, vec![0x45, 9]));
        assert!(reader.next_packet().unwrap().is_none());
    }

    /// Accepts `0` more bytes, then fails every write: lets the pcap header
    /// through and breaks on the first packet.
    struct FailAfter(usize);

    impl Write for FailAfter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = b.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_tapped_capture_failure_keeps_traffic_flowing() {
        let pcap = PcapWriter::new(FailAfter(pcap::GLOBAL_HEADER_LEN)).unwrap();
        let mut mem = MemDevice::new();
        mem.push_inbound(vec![1]);
        let mut dev = Tapped::new(mem, pcap);
        let mut buf = [0u8; 8];
        assert_eq!(dev.recv(&mut buf).unwrap(), Some(1));
        dev.send(&[2]).unwrap();
        assert!(dev.capture_error().is_some());
        assert_eq!(dev.inner().outbound(), &[vec![2]]);
    }
}
