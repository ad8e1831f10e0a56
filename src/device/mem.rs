//! An in-memory device for tests: packets are queued in and collected out.

use std::collections::VecDeque;
use std::io;

use super::Device;

/// A device backed by two queues.
///
/// Tests push what "the network" delivers with [`push_inbound`](Self::push_inbound)
/// and inspect or drain what the stack sent with [`outbound`](Self::outbound)
/// and [`take_outbound`](Self::take_outbound).
#[derive(Debug, Default, Clone)]
pub struct MemDevice {
    inbound: VecDeque<Vec<u8>>,
    outbound: Vec<Vec<u8>>,
}

impl MemDevice {
    /// An empty device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a packet for the stack to receive.
    pub fn push_inbound(&mut self, pkt: impl Into<Vec<u8>>) {
        self.inbound.push_back(pkt.into());
    }

    /// Packets still waiting to be received.
    pub fn inbound_len(&self) -> usize {
        self.inbound.len()
    }

    /// Everything sent so far, oldest first.
    pub fn outbound(&self) -> &[Vec<u8>] {
        &self.outbound
    }

    /// Removes and returns everything sent so far, oldest first.
    pub fn take_outbound(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbound)
    }
}

impl Device for MemDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.inbound.pop_front() {
            None => Ok(None),
            Some(pkt) => {
                // Truncate like the TUN driver does with a short buffer.
                let n = pkt.len().min(buf.len());
                buf[..n].copy_from_slice(&pkt[..n]);
                Ok(Some(n))
            }
        }
    }

    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        self.outbound.push(pkt.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mem_fifo_order_and_would_block() {
        let mut dev = MemDevice::new();
        let mut buf = [0u8; 16];
        assert_eq!(dev.recv(&mut buf).unwrap(), None);
        dev.push_inbound(vec![1, 2, 3]);
        dev.push_inbound(vec![4]);
        assert_eq!(dev.inbound_len(), 2);
        assert_eq!(dev.recv(&mut buf).unwrap(), Some(3));
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert_eq!(dev.recv(&mut buf).unwrap(), Some(1));
        assert_eq!(buf[0], 4);
        assert_eq!(dev.recv(&mut buf).unwrap(), None);
    }

    #[test]
    fn test_mem_truncates_to_buffer() {
        let mut dev = MemDevice::new();
        dev.push_inbound(vec![9; 10]);
        let mut buf = [0u8; 4];
        assert_eq!(dev.recv(&mut buf).unwrap(), Some(4));
    }

    #[test]
    fn test_mem_collects_sent_packets() {
        let mut dev = MemDevice::new();
        dev.send(&[1]).unwrap();
        dev.send(&[2, 2]).unwrap();
        assert_eq!(dev.outbound(), &[vec![1], vec![2, 2]]);
        assert_eq!(dev.take_outbound().len(), 2);
        assert!(dev.outbound().is_empty());
    }
}
