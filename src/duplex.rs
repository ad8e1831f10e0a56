//! The byte streams the applications (`session`, `cat`) run over: the kernel's TCP, our TCP, or a
//! Unix socket pair in tests. Each needs a second handle to the same connection, so one thread
//! can block reading while another writes.

use std::io::{self, Read, Write};
use std::net::Shutdown;

pub trait Duplex: Read + Write + Send + Sized + 'static {
    /// Another handle to the same connection.
    fn duplicate(&self) -> io::Result<Self>;
    /// Half- or full close, like `shutdown(2)`.
    fn close(&self, how: Shutdown) -> io::Result<()>;
}

impl Duplex for std::net::TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn duplicate(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

// Our TCP: clones share the connection (see `api::tcp`). Switched on at the TCP merge.
impl Duplex for crate::api::tcp::TcpStream {
    fn duplicate(&self) -> io::Result<Self> {
        Ok(self.clone())
    }
    fn close(&self, how: Shutdown) -> io::Result<()> {
        self.shutdown(how)
    }
}

/// Converts the wall clock into the stack's time values; only the drivers read it.
#[derive(Clone, Copy, Debug)]
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(std::time::Instant::now())
    }
    pub fn now(&self) -> crate::time::Instant {
        crate::time::Instant::from_micros(self.0.elapsed().as_micros() as u64)
    }
}
