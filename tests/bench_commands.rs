//! `msgbench` and `filebench` between two real event loops, without root: each node's "device"
//! is one end of a Unix datagram socket pair, so what one node writes the other reads.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use tunstack::device::Device;
use tunstack::driver::Driver;
use tunstack::node::clock::Clock;
use tunstack::node::commands::execute;
use tunstack::node::{Node, NodeHandle};
use tunstack::stack::{Stack, StackConfig};
use tunstack::storage::disk::DiskStore;

struct SockDevice(UnixDatagram);

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
    // A full queue drops, as a TUN device does (waiting could deadlock two loops that both
    // write): the protocols recover.
    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        match self.0.send(pkt) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

struct Pair {
    a: NodeHandle,
    b: NodeHandle,
    loops: Vec<std::thread::JoinHandle<io::Result<()>>>,
    dir: PathBuf,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.a.stop();
        self.b.stop();
        for j in self.loops.drain(..) {
            let _ = j.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node(
    addr: Ipv4Addr,
    seed: u64,
    dir: &std::path::Path,
    dev: UnixDatagram,
) -> (NodeHandle, std::thread::JoinHandle<io::Result<()>>) {
    dev.set_nonblocking(true).unwrap();
    let clock = Clock::new();
    let mut n = Node::new(
        format!("n{seed}"),
        Stack::new(StackConfig::new(addr, 24, 1500, seed)),
        clock.now(),
    );
    n.stack
        .file
        .set_store(Box::new(DiskStore::new(dir).unwrap()));
    n.data_dir = Some(dir.to_path_buf());
    let h = NodeHandle::new(n, clock);
    let driver = Driver {
        device: SockDevice(dev),
        pcap: None,
        control: None,
        rst_dump: None,
    };
    let h2 = h.clone();
    let j = std::thread::spawn(move || driver.run(h2));
    (h, j)
}

fn pair(tag: &str) -> Pair {
    let dir = std::env::temp_dir().join(format!("tunstack-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (x, y) = UnixDatagram::pair().unwrap();
    let (a, ja) = node(A, 1, &dir.join("a"), x);
    let (b, jb) = node(B, 2, &dir.join("b"), y);
    Pair {
        a,
        b,
        loops: vec![ja, jb],
        dir,
    }
}

fn run(h: &NodeHandle, line: &[&str]) -> (Result<(), String>, String) {
    let args: Vec<String> = line.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    let r = execute(h, &args, &mut out).map(|_| ()).map_err(|e| e.0);
    (r, String::from_utf8(out).unwrap())
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn test_msgbench_counts_every_message_acknowledged() {
    let p = pair("msg");
    let (r, out) = run(
        &p.a,
        &[
            "msgbench",
            "198.18.0.3",
            "--count",
            "3000",
            "--window",
            "200",
            "--json",
        ],
    );
    r.unwrap();
    let v = json(&out);
    assert_eq!(v["unit"], "msg/s");
    assert_eq!(v["messages"], 3000);
    assert_eq!(v["window"], 200);
    assert!(v["value"].as_f64().unwrap() > 0.0, "{v}");
    let (med, p99) = (
        v["latency_median_us"].as_f64().unwrap(),
        v["latency_p99_us"].as_f64().unwrap(),
    );
    assert!(med > 0.0 && p99 >= med, "{v}");
    // The warm-up message and the 3000 timed ones are all in the receiver's inbox.
    let got = p.b.with(|n, _| n.messaging.inbox.last_index());
    assert_eq!(got, 3001);
    let bench = p.b.with(|n, _| {
        n.messaging
            .inbox
            .since(0)
            .filter(|e| e.msg.channel_id == "bench")
            .count()
    });
    assert_eq!(bench, 3001);

    // The text form, one at a time.
    let (r, out) = run(
        &p.a,
        &["msgbench", "198.18.0.3", "-n", "20", "-w", "1", "-s", "1K"],
    );
    r.unwrap();
    assert!(out.contains("20 messages of 1024 bytes, window 1"), "{out}");
    assert!(out.contains("acknowledged messages/s"), "{out}");
}

#[test]
fn test_msgbench_fails_loudly() {
    let p = pair("msgfail");
    // Nobody at that address: no outcome within the time limit.
    let (r, _) = run(
        &p.a,
        &[
            "msgbench",
            "198.18.0.9",
            "--count",
            "10",
            "--timeout",
            "0.5",
        ],
    );
    let e = r.unwrap_err();
    assert!(e.contains("time limit"), "{e}");
    for (args, says) in [
        (&["msgbench"][..], "usage"),
        (&["msgbench", "198.18.0.3", "--window", "0"], "--window"),
        (
            &["msgbench", "198.18.0.3", "--window", "100000"],
            "--window",
        ),
        (&["msgbench", "198.18.0.3", "--count", "0"], "--count"),
        (&["msgbench", "198.18.0.3", "--size", "2G"], "--size"),
        (&["msgbench", "nowhere"], "not an IPv4 address"),
    ] {
        let (r, _) = run(&p.a, args);
        let e = r.unwrap_err();
        assert!(e.contains(says), "{args:?}: {e}");
    }
}

#[test]
fn test_filebench_sends_a_verified_file() {
    let p = pair("file");
    let (r, out) = run(
        &p.a,
        &["filebench", "198.18.0.3", "--size", "300K", "--json"],
    );
    r.unwrap();
    let v = json(&out);
    assert_eq!(v["unit"], "Mbit/s");
    assert_eq!(v["bytes"], 300 * 1024);
    assert!(v["value"].as_f64().unwrap() > 0.0, "{v}");
    let stored = PathBuf::from(v["received_as"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), 300 * 1024);
    // The generated source is gone; the sender's data directory holds nothing else of it.
    let left: Vec<_> = std::fs::read_dir(p.dir.join("a"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("filebench-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A given file, text output; a missing one is an error.
    let src = p.dir.join("given.bin");
    std::fs::write(&src, vec![7u8; 5000]).unwrap();
    let (r, out) = run(
        &p.a,
        &["filebench", "198.18.0.3", "--file", src.to_str().unwrap()],
    );
    r.unwrap();
    assert!(out.contains("5000 bytes in"), "{out}");
    assert!(src.exists());
    let (r, _) = run(
        &p.a,
        &["filebench", "198.18.0.3", "--file", "/nonexistent/x"],
    );
    assert!(r.unwrap_err().contains("/nonexistent/x"));
}
