//! The driver of one `tunstack cat` connection. After the key exchange, threads share the work:
//! a reader (opens records; writes chat to stdout and files to disk), a writer (seals and sends
//! what the others queue), a producer (stdin lines or a file), and the caller's thread, which
//! decides when the session ends. The reader never blocks on the writer's queue, so two ends
//! sending files to each other at once cannot deadlock.

use super::handshake::{self, Hello, SessionKeys, NONCE_LEN, SECRET_LEN};
use super::record::{Opener, RecordType, Sealer, MAX_PLAINTEXT};
use crate::duplex::Duplex;
use rand_core::{OsRng, RngCore};
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// File data per record.
const CHUNK: usize = 32 * 1024;
/// Bytes the producers may queue ahead of the writer.
const QUEUE_BYTES: usize = 1 << 20;
/// How long we wait for the peer's BYE after sending ours.
const BYE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatError(pub String);

impl fmt::Display for CatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CatError {}

impl From<io::Error> for CatError {
    fn from(e: io::Error) -> CatError {
        CatError(format!("connection error: {e}"))
    }
}

impl From<handshake::HandshakeError> for CatError {
    fn from(e: handshake::HandshakeError) -> CatError {
        CatError(format!("key exchange failed: {e}"))
    }
}

fn write_blob(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    w.write_all(&(b.len() as u32).to_be_bytes())?;
    w.write_all(b)?;
    w.flush()
}

fn read_blob(r: &mut impl Read) -> Result<Vec<u8>, CatError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CatError("the peer closed the connection during the key exchange".into())
        } else {
            CatError::from(e)
        }
    })?;
    let n = u32::from_be_bytes(len) as usize;
    if n > 8192 {
        return Err(CatError(
            "the peer is not a tunstack cat peer (oversized handshake)".into(),
        ));
    }
    let mut v = vec![0; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Listener side of the key exchange: returns (sealer, opener).
pub fn listen_handshake<S: Duplex>(
    stream: &mut S,
    key: &RsaPrivateKey,
) -> Result<(Sealer, Opener), CatError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let hello = Hello {
        public_der: handshake::public_der(&key.to_public_key())?,
        nonce,
    };
    write_blob(stream, &hello.emit())?;
    let ct = read_blob(stream)?;
    let secret = handshake::decrypt_secret(key, &ct)?;
    let SessionKeys { c2s, s2c } = handshake::derive_keys(&secret, &hello);
    Ok((Sealer::new(s2c), Opener::new(c2s)))
}

/// Connector side: `trust` sees the listener's fingerprint and may refuse it.
pub fn connect_handshake<S: Duplex>(
    stream: &mut S,
    trust: impl FnOnce(&str) -> Result<(), String>,
) -> Result<(Sealer, Opener, String), CatError> {
    let hello = Hello::parse(&read_blob(stream)?)?;
    let pk = hello.public_key()?;
    let fp = handshake::fingerprint(&pk)?;
    trust(&fp).map_err(CatError)?;
    let mut secret = [0u8; SECRET_LEN];
    OsRng.fill_bytes(&mut secret);
    let ct = handshake::encrypt_secret(&mut OsRng, &pk, &secret)?;
    write_blob(stream, &ct)?;
    let SessionKeys { c2s, s2c } = handshake::derive_keys(&secret, &hello);
    Ok((Sealer::new(c2s), Opener::new(s2c), fp))
}

/// What this end does besides chatting.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `-fs`: send this file, then end.
    pub send_file: Option<PathBuf>,
    /// `-fr`: receive one file into this path.
    pub recv_file: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub sent_file: Option<(u64, String)>,
    pub received_file: Option<(u64, String)>,
}

enum Out {
    Rec(RecordType, Vec<u8>),
    Finish,
}

enum Ev {
    PeerStart,
    PeerBye,
    LocalEnd,
    FileSent(u64, String),
    FileReceived(u64, String),
    PeerFileOk,
    PeerFileBad(String),
    Failed(String),
    Eof,
}

/// Byte budget between producers and the writer.
struct Budget {
    used: Mutex<usize>,
    cv: Condvar,
}

impl Budget {
    fn take(&self, n: usize) {
        let mut g = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *g > 0 && *g + n > QUEUE_BYTES {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        *g += n;
    }
    fn give(&self, n: usize) {
        let mut g = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *g = g.saturating_sub(n);
        self.cv.notify_all();
    }
}

struct Progress {
    on: bool,
    what: &'static str,
    total: u64,
    start: Instant,
    last: Option<Instant>,
}

impl Progress {
    fn new(on: bool, what: &'static str, total: u64) -> Progress {
        Progress {
            on,
            what,
            total,
            start: Instant::now(),
            last: None,
        }
    }

    fn show(&mut self, done: u64, finished: bool) {
        if !self.on
            || (!finished
                && self
                    .last
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(200)))
        {
            return;
        }
        self.last = Some(Instant::now());
        let frac = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let filled = (frac * 30.0) as usize;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rate = mib(done) / self.start.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{} [{}{}] {:3.0}% {:.1}/{:.1} MiB {:.1} MiB/s{}",
            self.what,
            "#".repeat(filled.min(30)),
            " ".repeat(30 - filled.min(30)),
            frac * 100.0,
            mib(done),
            mib(self.total),
            rate,
            if finished { "\n" } else { "" }
        );
    }
}

/// The partial file being received, removed on any failure.
type Partial = Arc<Mutex<Option<PathBuf>>>;

fn remove_partial(p: &Partial) {
    if let Some(path) = p.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_file(path);
    }
}

fn part_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tunstack-part"))
}

/// Runs the session after the key exchange; returns when both ends have said BYE.
pub fn session<S: Duplex>(
    stream: S,
    sealer: Sealer,
    opener: Opener,
    opts: Options,
    stdin: Box<dyn Read + Send>,
    stdout: Box<dyn Write + Send>,
) -> Result<Summary, CatError> {
    let (wtx, wrx) = mpsc::channel::<Out>();
    let (etx, erx) = mpsc::channel::<Ev>();
    let budget = Arc::new(Budget {
        used: Mutex::new(0),
        cv: Condvar::new(),
    });
    let partial: Partial = Arc::new(Mutex::new(None));

    let writer = {
        let s = stream.duplicate()?;
        let budget = budget.clone();
        let etx = etx.clone();
        std::thread::spawn(move || writer_loop(s, sealer, wrx, budget, etx))
    };
    let _ = wtx.send(Out::Rec(RecordType::Start, vec![]));
    {
        let s = stream.duplicate()?;
        let (wtx, etx, partial) = (wtx.clone(), etx.clone(), partial.clone());
        let (recv_file, progress) = (opts.recv_file.clone(), opts.progress);
        std::thread::spawn(move || {
            reader_loop(s, opener, stdout, recv_file, progress, partial, wtx, etx)
        });
    }
    if let Some(path) = opts.send_file.clone() {
        let (wtx, etx, budget) = (wtx.clone(), etx.clone(), budget.clone());
        let progress = opts.progress;
        std::thread::spawn(move || {
            if let Err(e) = send_file(&path, progress, &wtx, &budget, &etx) {
                let _ = etx.send(Ev::Failed(format!("cannot send {}: {e}", path.display())));
            }
        });
    } else if opts.recv_file.is_none() {
        let (wtx, etx, budget) = (wtx.clone(), etx.clone(), budget.clone());
        std::thread::spawn(move || chat_input(stdin, &wtx, &budget, &etx));
    }
    drop(etx);

    let mut out_done = opts.send_file.is_none() && opts.recv_file.is_some();
    let mut in_done = opts.recv_file.is_none();
    let mut bye_sent = false;
    let mut summary = Summary::default();
    let result: Result<(), CatError> = loop {
        let wait = if bye_sent {
            BYE_WAIT
        } else {
            Duration::from_secs(24 * 3600)
        };
        let ev = match erx.recv_timeout(wait) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) if bye_sent => break Ok(()),
            Err(_) => continue,
        };
        match ev {
            Ev::PeerStart => {}
            Ev::LocalEnd => out_done = true,
            Ev::FileSent(n, sha) => summary.sent_file = Some((n, sha)),
            Ev::PeerFileOk => out_done = true,
            Ev::PeerFileBad(r) => {
                break Err(CatError(format!("the receiver rejected the file: {r}")))
            }
            Ev::FileReceived(n, sha) => {
                summary.received_file = Some((n, sha));
                in_done = true;
            }
            Ev::PeerBye => {
                if !in_done {
                    break Err(CatError(
                        "the peer ended the session before the file was complete".into(),
                    ));
                }
                if !bye_sent {
                    let _ = wtx.send(Out::Rec(RecordType::Bye, vec![]));
                }
                break Ok(());
            }
            Ev::Failed(e) => break Err(CatError(e)),
            // Our BYE went out; the peer may close without answering.
            Ev::Eof if bye_sent => break Ok(()),
            Ev::Eof => {
                break Err(CatError(
                    "the connection closed without BYE (peer gone?)".into(),
                ))
            }
        }
        if !bye_sent && out_done && in_done {
            bye_sent = true;
            let _ = wtx.send(Out::Rec(RecordType::Bye, vec![]));
        }
    };
    if result.is_err() {
        remove_partial(&partial);
        let _ = stream.close(Shutdown::Both);
        let _ = wtx.send(Out::Finish);
        return result.map(|_| summary);
    }
    let _ = wtx.send(Out::Finish);
    match writer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CatError(format!("connection error: {e}"))),
        Err(_) => return Err(CatError("writer thread panicked".into())),
    }
    Ok(summary)
}

fn writer_loop<S: Duplex>(
    s: S,
    mut sealer: Sealer,
    rx: mpsc::Receiver<Out>,
    budget: Arc<Budget>,
    etx: mpsc::Sender<Ev>,
) -> io::Result<()> {
    let shut = s.duplicate()?;
    let mut w = BufWriter::with_capacity(256 * 1024, s);
    let mut buf = Vec::with_capacity(CHUNK + 64);
    let r = (|| -> io::Result<()> {
        while let Ok(mut msg) = rx.recv() {
            loop {
                match msg {
                    Out::Finish => {
                        w.flush()?;
                        return shut.close(Shutdown::Write);
                    }
                    Out::Rec(kind, body) => {
                        buf.clear();
                        sealer.seal(kind, &body, &mut buf);
                        w.write_all(&buf)?;
                        budget.give(body.len());
                    }
                }
                match rx.try_recv() {
                    Ok(m) => msg = m,
                    Err(_) => break,
                }
            }
            w.flush()?;
        }
        Ok(())
    })();
    if let Err(e) = &r {
        let _ = etx.send(Ev::Failed(format!("connection error: {e}")));
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn reader_loop<S: Duplex>(
    mut s: S,
    mut opener: Opener,
    mut stdout: Box<dyn Write + Send>,
    recv_file: Option<PathBuf>,
    progress: bool,
    partial: Partial,
    wtx: mpsc::Sender<Out>,
    etx: mpsc::Sender<Ev>,
) {
    struct Incoming {
        file: Option<BufWriter<File>>,
        size: u64,
        got: u64,
        hash: Sha256,
        bar: Progress,
    }
    let mut inc: Option<Incoming> = None;
    let mut started = false;
    let mut buf = vec![0u8; 64 * 1024];
    let fail = |e: String| {
        remove_partial(&partial);
        let _ = etx.send(Ev::Failed(e));
    };
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => {
                remove_partial(&partial);
                let _ = etx.send(Ev::Eof);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                remove_partial(&partial);
                let _ = etx.send(Ev::Eof);
                log::debug!("read: {e}");
                return;
            }
        };
        opener.push(&buf[..n]);
        loop {
            let (kind, body) = match opener.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return fail(e.to_string()),
            };
            if !started && kind != RecordType::Start {
                return fail("the peer did not start the session properly".into());
            }
            let r: Result<(), String> = match kind {
                RecordType::Start if !started => {
                    started = true;
                    let _ = etx.send(Ev::PeerStart);
                    Ok(())
                }
                RecordType::Data => stdout
                    .write_all(&body)
                    .and_then(|_| stdout.flush())
                    .map_err(|e| format!("stdout: {e}")),
                RecordType::FileStart if body.len() >= 8 && inc.is_none() => {
                    let size = u64::from_be_bytes(body[..8].try_into().unwrap_or([0; 8]));
                    let file = match &recv_file {
                        Some(dest) => {
                            let part = part_path(dest);
                            match File::create(&part) {
                                Ok(f) => {
                                    *partial.lock().unwrap_or_else(|e| e.into_inner()) = Some(part);
                                    Some(BufWriter::with_capacity(1 << 20, f))
                                }
                                Err(e) => {
                                    return fail(format!("cannot create {}: {e}", part.display()))
                                }
                            }
                        }
                        None => None,
                    };
                    inc = Some(Incoming {
                        file,
                        size,
                        got: 0,
                        hash: Sha256::new(),
                        bar: Progress::new(progress, "receiving", size),
                    });
                    Ok(())
                }
                RecordType::FileChunk if inc.is_some() => {
                    let i = inc.as_mut().unwrap_or_else(|| unreachable!());
                    i.hash.update(&body);
                    i.got += body.len() as u64;
                    i.bar.show(i.got, false);
                    if i.got > i.size {
                        Err("the peer sent more than the announced file size".into())
                    } else {
                        match &mut i.file {
                            Some(f) => f
                                .write_all(&body)
                                .map_err(|e| format!("writing the file: {e}")),
                            None => stdout.write_all(&body).map_err(|e| format!("stdout: {e}")),
                        }
                    }
                }
                RecordType::FileEnd if inc.is_some() => {
                    let mut i = inc.take().unwrap_or_else(|| unreachable!());
                    i.bar.show(i.got, true);
                    let sha = handshake::hex(&i.hash.finalize());
                    let want = handshake::hex(&body);
                    if sha != want || i.got != i.size {
                        let why = format!(
                            "SHA-256 check failed: got {} bytes with {sha}, sender announced {} bytes with {want}",
                            i.got, i.size
                        );
                        let _ = wtx.send(Out::Rec(RecordType::FileBad, why.clone().into_bytes()));
                        Err(why)
                    } else {
                        let done = match (i.file.take(), &recv_file) {
                            (Some(f), Some(dest)) => f
                                .into_inner()
                                .map_err(|e| e.into_error())
                                .and_then(|f| f.sync_all())
                                .and_then(|_| std::fs::rename(part_path(dest), dest))
                                .map_err(|e| format!("saving {}: {e}", dest.display())),
                            _ => Ok(()),
                        };
                        if done.is_ok() {
                            partial.lock().unwrap_or_else(|e| e.into_inner()).take();
                            let _ = wtx.send(Out::Rec(RecordType::FileOk, vec![]));
                            let _ = etx.send(Ev::FileReceived(i.got, sha));
                        }
                        done
                    }
                }
                RecordType::FileOk => {
                    let _ = etx.send(Ev::PeerFileOk);
                    Ok(())
                }
                RecordType::FileBad => {
                    let _ = etx.send(Ev::PeerFileBad(String::from_utf8_lossy(&body).into_owned()));
                    Ok(())
                }
                RecordType::Bye => {
                    let _ = etx.send(Ev::PeerBye);
                    Ok(())
                }
                other => Err(format!("unexpected {other:?} record")),
            };
            if let Err(e) = r {
                return fail(e);
            }
        }
    }
}

fn send_file(
    path: &Path,
    progress: bool,
    wtx: &mpsc::Sender<Out>,
    budget: &Budget,
    etx: &mpsc::Sender<Ev>,
) -> io::Result<()> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut start = size.to_be_bytes().to_vec();
    start.extend_from_slice(name.as_bytes());
    let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "session ended");
    wtx.send(Out::Rec(RecordType::FileStart, start))
        .map_err(|_| closed())?;
    let mut hash = Sha256::new();
    let mut bar = Progress::new(progress, "sending", size);
    let mut sent = 0u64;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = f.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        hash.update(&chunk);
        sent += n as u64;
        budget.take(n);
        wtx.send(Out::Rec(RecordType::FileChunk, chunk))
            .map_err(|_| closed())?;
        bar.show(sent, false);
    }
    bar.show(sent, true);
    let digest = hash.finalize();
    wtx.send(Out::Rec(RecordType::FileEnd, digest.to_vec()))
        .map_err(|_| closed())?;
    let _ = etx.send(Ev::FileSent(sent, handshake::hex(&digest)));
    Ok(())
}

fn chat_input(
    stdin: Box<dyn Read + Send>,
    wtx: &mpsc::Sender<Out>,
    budget: &Budget,
    etx: &mpsc::Sender<Ev>,
) {
    let mut r = BufReader::with_capacity(16 * 1024, stdin);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"BYE!" {
            break;
        }
        for piece in line.chunks(MAX_PLAINTEXT - 1) {
            budget.take(piece.len());
            if wtx
                .send(Out::Rec(RecordType::Data, piece.to_vec()))
                .is_err()
            {
                return;
            }
        }
    }
    let _ = etx.send(Ev::LocalEnd);
}
