//! A Unix datagram socket standing in for the TUN fd (one packet per datagram, pollable), so the
//! real `Driver` runs without root; and a wire joining two such devices.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tunstack::device::Device;

pub struct SockDevice(pub UnixDatagram);

impl AsRawFd for SockDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Device for SockDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.0.recv(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
    // A Unix datagram queue is only a few packets deep; wait for room instead of dropping, so
    // the test sees a lossless link (the TUN device drops when full, and TCP recovers).
    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        loop {
            match self.0.send(pkt) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Joins two devices with a lossless wire. Two event loops writing straight into each other's
/// 10-datagram queues would deadlock once both wait for room; the wire always reads, queueing
/// in memory what the other side cannot take yet.
pub struct Wire {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Wire {
    pub fn new() -> (Wire, SockDevice, SockDevice) {
        let (a, wa) = UnixDatagram::pair().unwrap();
        let (b, wb) = UnixDatagram::pair().unwrap();
        for s in [&a, &b, &wa, &wb] {
            s.set_nonblocking(true).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let join = std::thread::spawn(move || {
            let mut to_a: VecDeque<Vec<u8>> = VecDeque::new();
            let mut to_b: VecDeque<Vec<u8>> = VecDeque::new();
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                let moved =
                    shuttle(&wa, &wb, &mut to_b, &mut buf) + shuttle(&wb, &wa, &mut to_a, &mut buf);
                if moved == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        });
        (
            Wire {
                stop,
                join: Some(join),
            },
            SockDevice(a),
            SockDevice(b),
        )
    }
}

/// Reads everything `from` has into `queue`, writes as much of `queue` as `to` takes.
fn shuttle(
    from: &UnixDatagram,
    to: &UnixDatagram,
    queue: &mut VecDeque<Vec<u8>>,
    buf: &mut [u8],
) -> usize {
    let mut moved = 0;
    while let Ok(n) = from.recv(buf) {
        queue.push_back(buf[..n].to_vec());
        moved += 1;
    }
    while let Some(p) = queue.front() {
        match to.send(p) {
            Ok(_) => {
                queue.pop_front();
                moved += 1;
            }
            Err(_) => break,
        }
    }
    moved
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}
