//! The encrypted netcat over the kernel's TCP on 127.0.0.1: file transfer byte-exact, a bit
//! flipped in transit aborts with an integrity error and leaves no file.

use rand_core::OsRng;
use rsa::RsaPrivateKey;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use tunstack::cat::run::{self, CatError, Options, Summary};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tunstack-cat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A proxy that flips one bit at byte `flip_at` of the connector-to-listener direction.
fn flipping_proxy(upstream: u16, flip_at: Option<usize>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (a, _) = l.accept().unwrap();
        let b = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        for (mut from, mut to, flip) in [
            (a.try_clone().unwrap(), b.try_clone().unwrap(), flip_at),
            (b, a, None),
        ] {
            std::thread::spawn(move || {
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
            });
        }
    });
    port
}

fn transfer(
    size: usize,
    flip_at: Option<usize>,
) -> (
    Result<Summary, CatError>,
    Result<Summary, CatError>,
    PathBuf,
    Vec<u8>,
) {
    let dir = tmpdir(&format!("{size}-{flip_at:?}"));
    let src = dir.join("src.bin");
    let dst = dir.join("dst.bin");
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
    }
    std::fs::write(&src, &data).unwrap();
    let key = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = flipping_proxy(l.local_addr().unwrap().port(), flip_at);
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
    let (l, c, dst, _) = transfer(2 << 20, Some(1 << 20));
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
