//! Writes a pcap (LINKTYPE_RAW) of protocols 170 and 171 with known contents, for testing the
//! Wireshark dissector in `tools/wireshark/tunstack.lua`.
//!
//! ```text
//! cargo run --release --example capture_protocols -- OUT.pcap
//! ```
//!
//! Two stacks in the deterministic simulator, 10.0.0.1 ("alpha", node id 0x1001) and 10.0.0.2
//! ("beta", node id 0x1002), over a clean 1 ms link:
//! * alpha sends beta "hello dissector" (sender "alice", channel "lab"), then a second short
//!   message and a long one that needs several DATA segments; beta answers with one message.
//! * alpha offers beta the file "notes.txt": `NOTES_SIZE` bytes of a repeated text line, so
//!   several DATA chunks, the last one short.
//!
//! Every packet either host sends is written, timestamped from 2026-01-01T00:00:00Z plus the
//! simulated time. The run is deterministic: the same capture every time.

use std::cell::RefCell;
use std::fs::File;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::rc::Rc;
use tunstack::device::PcapWriter;
use tunstack::file::store::MemStore;
use tunstack::file::FileEvent;
use tunstack::msg::{Message, MsgEvent};
use tunstack::sim::{HostId, Sim};
use tunstack::stack::{Stack, StackConfig};
use tunstack::time::{Duration, Instant};

/// 2026-01-01T00:00:00Z in microseconds since the Unix epoch.
const BASE_US: u64 = 1_767_225_600_000_000;
const TIMESTAMP: &str = "2026-01-01T00:00:00Z";
const NOTES_SIZE: usize = 4000;
const NOTES_LINE: &[u8] = b"notes for the dissector test\n";

fn addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}

fn stack(i: u8, name: &str, store: &MemStore) -> Stack {
    let mut cfg = StackConfig::new(addr(i), 24, 1500, 170 + i as u64);
    cfg.msg.node_name = name.to_string();
    cfg.msg.node_id = 0x1000 + i as u64;
    cfg.msg.boot_epoch = 7;
    cfg.file.node_id = 0x1000 + i as u64;
    cfg.file.boot_epoch = 7;
    let mut s = Stack::new(cfg);
    s.file.set_store(Box::new(store.clone()));
    s
}

fn message(content: &str, sender: &str, channel: &str) -> Message {
    Message {
        content: content.to_string(),
        sender: sender.to_string(),
        channel_id: channel.to_string(),
        timestamp: TIMESTAMP.to_string(),
        is_file: false,
    }
}

/// The file's bytes: `NOTES_LINE` repeated and cut at `NOTES_SIZE`.
fn notes() -> Vec<u8> {
    NOTES_LINE
        .iter()
        .copied()
        .cycle()
        .take(NOTES_SIZE)
        .collect()
}

/// One packet as the tap saw it: microseconds since the Unix epoch, IP bytes.
type Captured = (u64, Vec<u8>);

#[derive(Default)]
struct Outcomes {
    delivered: usize,
    received: Vec<String>,
    file_sent: bool,
    file_received: bool,
}

fn drain(sim: &mut Sim, a: HostId, b: HostId, o: &mut Outcomes) {
    for h in [a, b] {
        while let Some(ev) = sim.host::<Stack>(h).msg.poll_event() {
            match ev {
                MsgEvent::Delivered { .. } => o.delivered += 1,
                MsgEvent::Received { msg, .. } => o.received.push(msg.content),
                MsgEvent::Failed { reason, .. } => panic!("message failed: {reason}"),
                _ => {}
            }
        }
        while let Some(ev) = sim.host::<Stack>(h).file.poll_event() {
            match ev {
                FileEvent::Completed { .. } if h == a => o.file_sent = true,
                FileEvent::Completed { .. } => o.file_received = true,
                FileEvent::Failed { .. } => panic!("file transfer failed: {ev:?}"),
                _ => {}
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: capture_protocols OUT.pcap")?;

    let (sa, sb) = (MemStore::new(), MemStore::new());
    sa.add_source("notes.txt", notes());
    let mut sim = Sim::new(1);
    let a = sim.add_host(stack(1, "alpha", &sa));
    let b = sim.add_host(stack(2, "beta", &sb));

    let packets: Rc<RefCell<Vec<Captured>>> = Rc::default();
    let sink = packets.clone();
    sim.set_tap(Box::new(move |now: Instant, _from, _to, bytes: &[u8]| {
        let us = now.as_micros();
        sink.borrow_mut().push((BASE_US + us, bytes.to_vec()));
    }));

    let long: String = "0123456789abcdef".repeat(200); // 3200 bytes: three segments at MTU 1500
    let now = sim.now();
    let msgs = [
        message("hello dissector", "alice", "lab"),
        message("second message", "alice", "lab"),
        message(&long, "alice", "bulk"),
    ];
    let n_msgs = msgs.len() + 1;
    for m in msgs {
        sim.host::<Stack>(a).msg.send_message(now, addr(2), m)?;
    }
    sim.host::<Stack>(b)
        .msg
        .send_message(now, addr(1), message("hi alice", "bob", "lab"))?;
    sim.host::<Stack>(a)
        .file
        .send_file(now, addr(2), "notes.txt", "lab", "alice")?;

    let mut o = Outcomes::default();
    let done = sim.run_until(Duration::from_secs(60), |sim| {
        drain(sim, a, b, &mut o);
        o.delivered == n_msgs && o.received.len() == n_msgs && o.file_sent && o.file_received
    });
    if !done {
        return Err(format!(
            "the exchange did not finish: {} delivered, {} received, file sent {}, received {}",
            o.delivered,
            o.received.len(),
            o.file_sent,
            o.file_received
        )
        .into());
    }
    // Let the last ACKs go out.
    sim.run_for(Duration::from_millis(20));
    if sb.completed("notes.txt").as_deref() != Some(&notes()[..]) {
        return Err("notes.txt arrived with different bytes".into());
    }

    let mut w = PcapWriter::new(BufWriter::new(File::create(&out)?))?;
    let packets = packets.borrow();
    for (ts, p) in packets.iter() {
        w.write_packet(*ts, p)?;
    }
    w.flush()?;
    println!(
        "capture_protocols: wrote {} packets to {out} ({} messages, notes.txt {} bytes)",
        packets.len(),
        n_msgs,
        NOTES_SIZE
    );
    Ok(())
}
