//! Blocking, std-like TCP sockets on a running node: `TcpListener` and `TcpStream` with `Read`,
//! `Write`, `shutdown` and timeouts, usable from any thread while the event loop runs.
//!
//! Each call locks the node briefly, moves bytes between the caller and the socket's buffers,
//! and sleeps on the node's condition variable until the event loop reports progress.

use crate::node::NodeHandle;
use crate::tcp::{ListenerHandle, SocketHandle, TcpError, TcpState};
use crate::time::Duration;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn io_error(e: TcpError) -> io::Error {
    use io::ErrorKind as K;
    let kind = match e {
        TcpError::ConnectionRefused => K::ConnectionRefused,
        TcpError::ConnectionReset => K::ConnectionReset,
        TcpError::TimedOut => K::TimedOut,
        TcpError::AddrInUse => K::AddrInUse,
        TcpError::NotConnected | TcpError::InvalidHandle => K::NotConnected,
        TcpError::BrokenPipe => K::BrokenPipe,
        TcpError::WouldBlock => K::WouldBlock,
        _ => K::Other,
    };
    io::Error::new(kind, e.to_string())
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the node stopped")
}

pub struct TcpListener {
    node: NodeHandle,
    handle: ListenerHandle,
    port: u16,
}

impl TcpListener {
    pub fn bind(node: &NodeHandle, port: u16) -> io::Result<TcpListener> {
        let handle = node
            .with(|n, _| n.stack.tcp.listen(port))
            .map_err(io_error)?;
        Ok(TcpListener {
            node: node.clone(),
            handle,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next established connection.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddrV4)> {
        self.accept_timeout(None)?.ok_or_else(stopped)
    }

    /// Waits at most `timeout` (`None`: forever); `Ok(None)` when the time runs out.
    pub fn accept_timeout(
        &self,
        timeout: Option<Duration>,
    ) -> io::Result<Option<(TcpStream, SocketAddrV4)>> {
        let got = self.node.wait(timeout, |n, _| {
            let h = n.stack.tcp.accept(self.handle)?;
            let peer = n.stack.tcp.peer_addr(h)?;
            Some((h, peer))
        });
        match got {
            Some((h, peer)) => Ok(Some((TcpStream::from_handle(&self.node, h), peer))),
            None if self.node.is_stopping() => Err(stopped()),
            None => Ok(None),
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.node.with(|n, _| n.stack.tcp.unlisten(self.handle));
    }
}

struct Inner {
    node: NodeHandle,
    handle: SocketHandle,
    /// `shutdown(Read)` was called: reads end at once, on every clone (as `std::net`).
    read_shut: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Like closing a kernel socket: FIN after queued data; the stack finishes the close.
        self.node.with(|n, _| n.stack.tcp.close(self.handle));
    }
}

/// A connection. Clones share it (one thread reads while another writes); the connection closes
/// when the last clone is dropped.
#[derive(Clone)]
pub struct TcpStream {
    inner: Arc<Inner>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl TcpStream {
    fn from_handle(node: &NodeHandle, handle: SocketHandle) -> TcpStream {
        TcpStream {
            inner: Arc::new(Inner {
                node: node.clone(),
                handle,
                read_shut: AtomicBool::new(false),
            }),
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// Opens a connection and waits for the handshake (at most `timeout`, or the stack's own
    /// SYN retry limit).
    pub fn connect(
        node: &NodeHandle,
        addr: SocketAddrV4,
        timeout: Option<Duration>,
    ) -> io::Result<TcpStream> {
        let h = node
            .with(|n, now| n.stack.tcp.connect(now, addr))
            .map_err(io_error)?;
        let stream = TcpStream::from_handle(node, h);
        let outcome = node.wait(timeout, |n, _| {
            let tcp = &n.stack.tcp;
            if let Some(e) = tcp.error(h) {
                return Some(Err(e));
            }
            match tcp.state(h) {
                Some(TcpState::SynSent) | Some(TcpState::SynReceived) => None,
                Some(TcpState::Closed) | None => Some(Err(TcpError::ConnectionRefused)),
                Some(_) => Some(Ok(())),
            }
        });
        match outcome {
            Some(Ok(())) => Ok(stream),
            Some(Err(e)) => Err(io_error(e)),
            None if node.is_stopping() => Err(stopped()),
            None => Err(timed_out("connect")),
        }
    }

    pub fn handle(&self) -> SocketHandle {
        self.inner.handle
    }

    fn node(&self) -> &NodeHandle {
        &self.inner.node
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddrV4> {
        let h = self.inner.handle;
        self.node()
            .with(|n, _| n.stack.tcp.peer_addr(h))
            .ok_or_else(|| io_error(TcpError::NotConnected))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        let h = self.inner.handle;
        self.node()
            .with(|n, _| n.stack.tcp.local_addr(h))
            .ok_or_else(|| io_error(TcpError::NotConnected))
    }

    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.write_timeout = t;
    }

    pub fn set_nodelay(&self, on: bool) {
        let h = self.inner.handle;
        self.node().with(|n, _| n.stack.tcp.set_nodelay(h, on));
    }

    /// `Write` half-closes (FIN after what is queued); `Read` makes current and later reads
    /// return end of stream (TCP has nothing to send for it); `Both` does both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let h = self.inner.handle;
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.node()
                .with(|n, _| n.stack.tcp.shutdown_write(h))
                .map_err(io_error)?;
        }
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            // Set under the node's lock, which readers hold while they check it, so a reader
            // blocked on another thread cannot miss the notification that follows.
            let shut = &self.inner.read_shut;
            self.node().with(|_, _| shut.store(true, Ordering::SeqCst));
            self.node().notify();
        }
        Ok(())
    }

    /// Waits until everything written has been acknowledged by the peer (or the timeout).
    pub fn flush_acked(&self, timeout: Option<Duration>) -> io::Result<()> {
        let h = self.inner.handle;
        let r = self.node().wait(timeout, |n, _| {
            let tcp = &n.stack.tcp;
            if let Some(e) = tcp.error(h) {
                return Some(Err(e));
            }
            let queued = tcp.socket_info(h).map(|i| i.tx_queue).unwrap_or(0);
            (queued == 0).then_some(Ok(()))
        });
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(io_error(e)),
            None => Err(timed_out("flush")),
        }
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let h = self.inner.handle;
        let shut = &self.inner.read_shut;
        let r = self.node().wait(self.read_timeout, |n, _| {
            if shut.load(Ordering::SeqCst) {
                return Some(Ok(0));
            }
            // Ok(0) is the end of the stream; WouldBlock means wait for the loop.
            match n.stack.tcp.recv(h, buf) {
                Ok(k) => Some(Ok(k)),
                Err(TcpError::WouldBlock) => None,
                Err(e) => Some(Err(e)),
            }
        });
        match r {
            Some(Ok(k)) => Ok(k),
            Some(Err(e)) => Err(io_error(e)),
            None if self.node().is_stopping() => Err(stopped()),
            None => Err(timed_out("read")),
        }
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for &TcpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let h = self.inner.handle;
        let r = self.node().wait(self.write_timeout, |n, _| {
            let tcp = &mut n.stack.tcp;
            if let Some(e) = tcp.error(h) {
                return Some(Err(e));
            }
            match tcp.send(h, data) {
                Ok(0) | Err(TcpError::WouldBlock) => None,
                Ok(k) => Some(Ok(k)),
                Err(e) => Some(Err(e)),
            }
        });
        match r {
            Some(Ok(k)) => Ok(k),
            Some(Err(e)) => Err(io_error(e)),
            None if self.node().is_stopping() => Err(stopped()),
            None => Err(timed_out("write")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for TcpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        (&*self).write(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
