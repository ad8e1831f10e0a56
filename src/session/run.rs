//! Drivers: a session state machine joined to a blocking stream. One thread reads the stream,
//! one (client) reads the input; the calling thread owns the state machine, writes frames and
//! keeps the clock, sleeping on a channel until the next input or deadline.

use super::conn::{ClientConfig, Event, Negotiated, ServerConfig, Session, SessionError, Stats};
use crate::duplex::{Clock, Duplex};
use std::fmt;
use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub enum RunError {
    Io(io::Error),
    Refused(String),
    Session(SessionError),
    /// The stream ended before the session did.
    PeerVanished,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Io(e) => write!(f, "connection error: {e}"),
            RunError::Refused(r) => write!(f, "the server refused the session: {r}"),
            RunError::Session(e) => write!(f, "{e}"),
            RunError::PeerVanished => f.write_str("the connection closed before the session ended"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(e: io::Error) -> RunError {
        RunError::Io(e)
    }
}

/// How a session ended, with its counters.
#[derive(Clone, Debug)]
pub struct Report {
    pub negotiated: Negotiated,
    pub stats: Stats,
    /// From established to closed.
    pub elapsed: Duration,
    pub payload_bytes: u64,
    pub closed_by_peer: bool,
}

impl Report {
    pub fn messages_per_sec(&self) -> f64 {
        self.stats.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary line the client prints.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "{} mode (window {}, max size {}): {} sent, {} acknowledged, {} resent in {:.3} s: {:.0} msg/s, {:.1} KiB/s",
            self.negotiated.mode,
            self.negotiated.window,
            self.negotiated.max_size,
            s.sent,
            s.acked,
            s.resent,
            self.elapsed.as_secs_f64(),
            self.messages_per_sec(),
            self.payload_bytes as f64 / 1024.0 / self.elapsed.as_secs_f64().max(1e-9),
        )
    }
}

enum Input {
    Net(Vec<u8>),
    NetEnd(Option<io::Error>),
    Msg(Vec<u8>),
    MsgEnd,
}

/// Bounds how many messages wait in memory: the input thread stops reading while the session
/// has this many unacknowledged.
struct Credit {
    state: Mutex<(usize, usize)>, // (in the channel, in the session)
    cv: Condvar,
    cap: usize,
}

impl Credit {
    fn acquire(&self) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while g.0 + g.1 >= self.cap {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.0 += 1;
    }

    fn update(&self, taken: usize, in_session: usize) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(taken);
        g.1 = in_session;
        self.cv.notify_all();
    }
}

fn spawn_reader<S: Duplex>(mut stream: S, tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Input::NetEnd(None));
                    return;
                }
                Ok(n) => {
                    if tx.send(Input::Net(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Input::NetEnd(Some(e)));
                    return;
                }
            }
        }
    });
}

/// Runs the client end: handshake, then every message `input` yields (split to the negotiated
/// size), then an orderly disconnect.
pub fn run_client<S, I>(stream: S, cfg: ClientConfig, input: I) -> Result<Report, RunError>
where
    S: Duplex,
    I: IntoIterator<Item = Vec<u8>> + Send + 'static,
    I::IntoIter: Send,
{
    let clock = Clock::start();
    let session = Session::connect(cfg, clock.now());
    drive(stream, session, clock, Some(input.into_iter()), |_, _| {})
}

/// Runs the server end of one connection; `on_message` sees each delivered message.
pub fn serve_connection<S: Duplex>(
    stream: S,
    cfg: ServerConfig,
    on_message: impl FnMut(&Negotiated, &[u8]),
) -> Result<Report, RunError> {
    let clock = Clock::start();
    let session = Session::accept(cfg, clock.now());
    drive::<S, std::iter::Empty<Vec<u8>>>(stream, session, clock, None, on_message)
}

fn drive<S, I>(
    stream: S,
    mut sess: Session,
    clock: Clock,
    mut input: Option<I>,
    mut on_message: impl FnMut(&Negotiated, &[u8]),
) -> Result<Report, RunError>
where
    S: Duplex,
    I: Iterator<Item = Vec<u8>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    spawn_reader(stream.duplicate()?, tx.clone());
    let mut out = stream;
    let credit = Arc::new(Credit {
        state: Mutex::new((0, 0)),
        cv: Condvar::new(),
        cap: 256,
    });
    let mut started: Option<std::time::Instant> = None;
    let mut payload_bytes = 0u64;
    let result = loop {
        let now = clock.now();
        // Frames out, coalesced into one write.
        let mut buf = Vec::new();
        while let Some(f) = sess.poll_transmit() {
            buf.extend_from_slice(&f);
        }
        if !buf.is_empty() {
            if let Err(e) = out.write_all(&buf) {
                break Err(RunError::Io(e));
            }
        }
        let mut end = None;
        while let Some(ev) = sess.poll_event() {
            match ev {
                Event::Established(n) => {
                    started = Some(std::time::Instant::now());
                    if let Some(it) = input.take() {
                        spawn_input(it, n.max_size as usize, tx.clone(), credit.clone());
                    }
                }
                Event::Message(m) => {
                    if let Some(n) = sess.negotiated() {
                        on_message(n, &m);
                    }
                }
                Event::Refused(r) => end = Some(Err(RunError::Refused(r))),
                Event::Failed(e) => end = Some(Err(RunError::Session(e))),
                Event::Closed { by_peer } => end = Some(Ok(by_peer)),
            }
        }
        if let Some(e) = end {
            // The last ACK or ERROR still goes out.
            let mut buf = Vec::new();
            while let Some(f) = sess.poll_transmit() {
                buf.extend_from_slice(&f);
            }
            let _ = out.write_all(&buf);
            break e;
        }
        credit.update(0, sess.unacked());
        let wait = sess
            .poll_at()
            .map_or(Duration::from_secs(3600), |t| t.saturating_since(now));
        match rx.recv_timeout(wait) {
            Ok(Input::Net(b)) => sess.handle_bytes(clock.now(), &b),
            Ok(Input::NetEnd(e)) => {
                break Err(e.map_or(RunError::PeerVanished, RunError::Io));
            }
            Ok(Input::Msg(m)) => {
                payload_bytes += m.len() as u64;
                if let Err(e) = sess.send(clock.now(), m) {
                    break Err(RunError::Io(io::Error::other(e.to_string())));
                }
                credit.update(1, sess.unacked());
            }
            Ok(Input::MsgEnd) => sess.close(clock.now()),
            Err(RecvTimeoutError::Timeout) => sess.handle_timeout(clock.now()),
            Err(RecvTimeoutError::Disconnected) => break Err(RunError::PeerVanished),
        }
    };
    let _ = out.flush();
    let _ = out.close(Shutdown::Both);
    let closed_by_peer = result?;
    Ok(Report {
        negotiated: sess.negotiated().cloned().ok_or(RunError::PeerVanished)?,
        stats: sess.stats(),
        elapsed: started.map_or(Duration::ZERO, |t| t.elapsed()),
        payload_bytes,
        closed_by_peer,
    })
}

fn spawn_input<I>(it: I, max: usize, tx: mpsc::Sender<Input>, credit: Arc<Credit>)
where
    I: Iterator<Item = Vec<u8>> + Send + 'static,
{
    std::thread::spawn(move || {
        for msg in it {
            // An empty line is still a message; longer ones become several.
            let pieces: Vec<&[u8]> = if msg.is_empty() {
                vec![&[][..]]
            } else {
                msg.chunks(max.max(1)).collect()
            };
            for p in pieces {
                credit.acquire();
                if tx.send(Input::Msg(p.to_vec())).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Input::MsgEnd);
    });
}

/// Lines of a reader (without their line ends), for the client's default input.
pub fn lines<R: io::BufRead + Send + 'static>(r: R) -> impl Iterator<Item = Vec<u8>> + Send {
    r.split(b'\n').map_while(Result::ok).map(|mut l| {
        if l.last() == Some(&b'\r') {
            l.pop();
        }
        l
    })
}

/// Fixed-size chunks of a reader, for sending a file as messages.
pub fn chunks<R: Read + Send + 'static>(
    mut r: R,
    size: usize,
) -> impl Iterator<Item = Vec<u8>> + Send {
    std::iter::from_fn(move || {
        let mut buf = vec![0u8; size];
        let mut got = 0;
        while got < size {
            match r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf.truncate(got);
        (got > 0).then_some(buf)
    })
}
