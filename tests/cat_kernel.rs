//! The encrypted netcat over the kernel's TCP on 127.0.0.1: file transfer byte-exact; a bit
//! flipped in transit, or a record replayed, aborts with an integrity or replay error and leaves
//! no file.

use rand_core::OsRng;
use rsa::RsaPrivateKey;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use tunstack::cat::record;
use tunstack::cat::run::{self, CatError, Options, Summary};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tunstack-cat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What the proxy in the middle does to the connector-to-listener direction.
#[derive(Copy, Clone, Debug)]
enum Fault {
    /// Flips a bit of the byte at this offset of the stream.
    Flip(usize),
    /// Sends record N-1 again right after record N (counting records after the key exchange).
    Replay(u64),
}

/// Forwards whole units of the connector's stream: the key-exchange blob (length u32, bytes),
/// then records (length u32, counter u64, ciphertext, tag); after record `after` it sends the
/// previous record a second time, as an attacker replaying captured bytes would.
fn replay_pump(mut from: TcpStream, mut to: TcpStream, after: u64) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut handshake_done = false;
    let mut previous: Option<Vec<u8>> = None;
    while let Ok(n) = from.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = buf
            .get(..4)
            .map(|l| u32::from_be_bytes(l.try_into().unwrap()))
        {
            let need = if handshake_done {
                record::HEADER_LEN + len as usize + record::TAG_LEN
            } else {
                4 + len as usize
            };
            if buf.len() < need {
                break;
            }
            let unit: Vec<u8> = buf.drain(..need).collect();
            if to.write_all(&unit).is_err() {
                return;
            }
            if !handshake_done {
                handshake_done = true;
                continue;
            }
            let counter = u64::from_be_bytes(unit[4..12].try_into().unwrap());
            if counter == after {
                if let Some(p) = previous.take() {
                    let _ = to.write_all(&p);
                }
            }
            previous = Some(unit);
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A proxy between the connector and the listener at `upstream` that applies `fault` to the
/// connector-to-listener direction.
fn tampering_proxy(upstream: u16, fault: Option<Fault>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (a, _) = l.accept().unwrap();
        let b = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::spawn(move || match fault {
            Some(Fault::Replay(after)) => replay_pump(a2, b2, after),
            Some(Fault::Flip(at)) => copy_pump(a2, b2, Some(at)),
            None => copy_pump(a2, b2, None),
        });
        std::thread::spawn(move || copy_pump(b, a, None));
    });
    port
}

/// Copies one direction, flipping a bit at byte `flip` if given.
fn copy_pump(mut from: TcpStream, mut to: TcpStream, flip: Option<usize>) {
    let mut buf = vec![0u8; 65536];
    let mut off = 0usize;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(f) = flip {
            if (off..off + n).contains(&f) {
                buf[f - off] ^= 0x10;
            }
        }
        off += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn transfer(
    size: usize,
    fault: Option<Fault>,
) -> (
    Result<Summary, CatError>,
    Result<Summary, CatError>,
    PathBuf,
    Vec<u8>,
) {
    let label = match fault {
        None => "clean".to_string(),
        Some(Fault::Flip(at)) => format!("flip{at}"),
        Some(Fault::Replay(after)) => format!("replay{after}"),
    };
    let dir = tmpdir(&format!("{size}-{label}"));
    let src = dir.join("src.bin");
    let dst = dir.join("dst.bin");
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
    }
    std::fs::write(&src, &data).unwrap();
    let key = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tampering_proxy(l.local_addr().unwrap().port(), fault);
    let dst2 = dst.clone();
    let listener = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let (seal, open) = run::listen_handshake(&mut s, &key)?;
        let opts = Options {
            recv_file: Some(dst2),
            ..Default::default()
        };
        run::session(
            s,
            seal,
            open,
            opts,
            Box::new(std::io::empty()),
            Box::new(std::io::sink()),
        )
    });
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client = run::connect_handshake(&mut s, |_| Ok(())).and_then(|(seal, open, _)| {
        let opts = Options {
            send_file: Some(src),
            ..Default::default()
        };
        run::session(
            s,
            seal,
            open,
            opts,
            Box::new(std::io::empty()),
            Box::new(std::io::sink()),
        )
    });
    (listener.join().unwrap(), client, dst, data)
}

#[test]
fn test_10_mb_file_byte_exact() {
    let (l, c, dst, data) = transfer(10 << 20, None);
    let l = l.unwrap();
    let c = c.unwrap();
    assert_eq!(l.received_file.as_ref().unwrap().0, 10 << 20);
    assert_eq!(l.received_file, c.sent_file);
    assert!(std::fs::read(&dst).unwrap() == data);
}

#[test]
fn test_flipped_bit_aborts_and_writes_nothing() {
    let (l, c, dst, _) = transfer(2 << 20, Some(Fault::Flip(1 << 20)));
    let e = l.unwrap_err();
    assert!(e.0.contains("integrity check failed"), "{e}");
    assert!(c.is_err());
    assert!(!dst.exists(), "a file was left at {}", dst.display());
    let leftovers: Vec<_> = std::fs::read_dir(dst.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}"); // only the source
}

#[test]
fn test_replayed_record_aborts_and_writes_nothing() {
    // Record 0 is START, 1 announces the file, then 32 KiB chunks: 20 is in the middle.
    let (l, c, dst, _) = transfer(2 << 20, Some(Fault::Replay(20)));
    let e = l.unwrap_err();
    assert!(e.0.contains("replayed record rejected: counter 19"), "{e}");
    assert!(c.is_err(), "the sender was told the file arrived");
    assert!(!dst.exists(), "a file was left at {}", dst.display());
    let leftovers: Vec<_> = std::fs::read_dir(dst.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}"); // only the source
}

#[test]
fn test_changed_listener_key_is_refused() {
    // The connector's trust decision refuses a key other than the pinned one.
    use tunstack::cat::known_hosts::KnownHosts;
    let mut kh = KnownHosts::default();
    kh.pin("127.0.0.1:1", "00");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let key = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        run::listen_handshake(&mut s, &key).map(|_| ())
    });
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let e = run::connect_handshake(&mut s, |fp| {
        kh.decide("127.0.0.1:1", fp, None, false)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .unwrap_err();
    assert!(e.0.contains("CHANGED"), "{e}");
    drop(s);
    assert!(h.join().unwrap().is_err());
}
