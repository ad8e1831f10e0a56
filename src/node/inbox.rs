//! The inbox: messages received over protocol 170, kept in memory (bounded) and, with a data
//! directory, in an append-only log (`inbox.log`, one JSON object per line).
//!
//! Durability: a message is appended when the stack hands it over, and the event loop calls
//! [`Inbox::commit`] (one `fdatasync` for the whole batch) before it writes the turn's packets,
//! the ACKs included, to the device. So a message whose ACK left is on disk: group commit keeps
//! the message rate high while a SIGKILL loses nothing that was acknowledged.
//!
//! Exactly once across a crash: each protocol-170 entry records its origin (sender node id,
//! sender boot epoch, the sender's message id). [`Inbox::open`] rebuilds from the whole log the
//! highest origin per sender, and the node hands them to the endpoint before any packet arrives,
//! so a message logged just before a crash, whose ACK never left, is recognised when the sender
//! sends it again under a new sequence number. Lines written before origins were logged lack
//! them and are read as before.

use crate::msg::{DeliveredMarks, Message, Origin};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InboxEntry {
    /// Position in the inbox, from 1; stable across restarts.
    pub index: u64,
    pub from: Ipv4Addr,
    /// When this node received it (RFC 3339 UTC).
    pub received_at: String,
    #[serde(flatten)]
    pub msg: Message,
    /// The protocol-170 sender's identity for the message; none for file notes and for lines
    /// written before it was logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Senders whose last delivered message the inbox remembers: far more than a lab's nodes, and a
/// bound however many sender identities a long-lived log has seen.
const MARK_MEMORY: usize = 65_536;

pub struct Inbox {
    entries: VecDeque<InboxEntry>,
    capacity: usize,
    next_index: u64,
    log: Option<BufWriter<File>>,
    path: Option<PathBuf>,
    dirty: bool,
    /// The origin of the last message logged per sender, kept up to date as messages arrive.
    marks: DeliveredMarks,
    /// Failures to write the log (the message stays in memory; logged once per failure).
    pub write_errors: u64,
}

impl Inbox {
    /// An inbox in memory only.
    pub fn in_memory(capacity: usize) -> Inbox {
        Inbox {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            next_index: 1,
            log: None,
            path: None,
            dirty: false,
            marks: DeliveredMarks::new(MARK_MEMORY),
            write_errors: 0,
        }
    }

    /// Opens (or creates) `dir/inbox.log`, loading the last `capacity` entries and the delivery
    /// marks of all of them. A torn last line from a crash is skipped.
    pub fn open(dir: &Path, capacity: usize) -> io::Result<Inbox> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("inbox.log");
        let mut inbox = Inbox::in_memory(capacity);
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                if let Ok(e) = serde_json::from_str::<InboxEntry>(&line) {
                    inbox.next_index = inbox.next_index.max(e.index + 1);
                    if let Some(o) = e.origin {
                        inbox.marks.admit(o);
                    }
                    inbox.remember(e);
                }
            }
        }
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        // A torn line would glue onto the next entry: start on a fresh line.
        let len = f.metadata()?.len();
        let mut w = BufWriter::new(f);
        if len > 0 && !ends_with_newline(&path)? {
            w.write_all(b"\n")?;
        }
        inbox.log = Some(w);
        inbox.path = Some(path);
        Ok(inbox)
    }

    fn remember(&mut self, e: InboxEntry) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Adds a message that has no protocol-170 origin (a file note); durable after the next
    /// `commit`.
    pub fn push(&mut self, from: Ipv4Addr, received_at: String, msg: Message) -> u64 {
        self.append(from, received_at, msg, None)
    }

    /// Adds a message protocol 170 delivered, with its origin so that a restart can restore the
    /// endpoint's marks; durable after the next `commit`, which comes before its ACK leaves.
    pub fn push_delivered(
        &mut self,
        from: Ipv4Addr,
        received_at: String,
        msg: Message,
        origin: Origin,
    ) -> u64 {
        self.marks.admit(origin);
        self.append(from, received_at, msg, Some(origin))
    }

    fn append(
        &mut self,
        from: Ipv4Addr,
        received_at: String,
        msg: Message,
        origin: Option<Origin>,
    ) -> u64 {
        let e = InboxEntry {
            index: self.next_index,
            from,
            received_at,
            msg,
            origin,
        };
        self.next_index += 1;
        if let Some(w) = self.log.as_mut() {
            let ok = serde_json::to_writer(&mut *w, &e).is_ok() && w.write_all(b"\n").is_ok();
            if ok {
                self.dirty = true;
            } else {
                self.write_errors += 1;
                log::warn!("inbox: cannot append message {} to the log", e.index);
            }
        }
        let index = e.index;
        self.remember(e);
        index
    }

    /// Flushes and syncs everything pushed since the last commit (one fsync for the batch).
    pub fn commit(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if let Some(w) = self.log.as_mut() {
            if w.flush().and_then(|_| w.get_ref().sync_data()).is_err() {
                self.write_errors += 1;
                log::warn!("inbox: sync of the log failed");
            }
        }
    }

    /// Entries with an index above `after`, oldest first.
    pub fn since(&self, after: u64) -> impl Iterator<Item = &InboxEntry> {
        self.entries.iter().filter(move |e| e.index > after)
    }

    /// The origin of the last message logged per sender, oldest first: what
    /// `MsgEndpoint::restore_delivered` takes.
    pub fn delivered_marks(&self) -> Vec<Origin> {
        self.marks.marks()
    }

    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(c: &str) -> Message {
        Message {
            content: c.into(),
            sender: "a".into(),
            channel_id: "general".into(),
            timestamp: "2026-11-21T00:00:00.000Z".into(),
            is_file: false,
        }
    }

    #[test]
    fn test_inbox_survives_reopen_and_torn_line() {
        let dir = std::env::temp_dir().join(format!("tunstack-inbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let from = Ipv4Addr::new(198, 18, 0, 1);
        {
            let mut ib = Inbox::open(&dir, 100).unwrap();
            ib.push(from, "t".into(), msg("one"));
            ib.push(from, "t".into(), msg("two"));
            ib.commit();
        }
        // A crash in the middle of a write leaves half a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("inbox.log"))
            .unwrap();
        f.write_all(b"{\"index\":3,\"fro").unwrap();
        drop(f);
        let mut ib = Inbox::open(&dir, 100).unwrap();
        let got: Vec<_> = ib.since(0).map(|e| e.msg.content.clone()).collect();
        assert_eq!(got, vec!["one", "two"]);
        assert_eq!(ib.push(from, "t".into(), msg("three")), 3);
        ib.commit();
        let ib = Inbox::open(&dir, 2).unwrap();
        let got: Vec<_> = ib
            .since(0)
            .map(|e| (e.index, e.msg.content.clone()))
            .collect();
        assert_eq!(got, vec![(2, "two".to_string()), (3, "three".to_string())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn origin(node_id: u64, epoch: u64, id: u64) -> Origin {
        Origin {
            node_id,
            epoch,
            id: crate::msg::MessageId(id),
        }
    }

    #[test]
    fn test_delivery_marks_survive_reopen_beyond_memory_and_old_lines() {
        let dir = std::env::temp_dir().join(format!("tunstack-marks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A line from before origins were logged: still read, contributes no mark.
        std::fs::write(
            dir.join("inbox.log"),
            concat!(
                r#"{"index":1,"from":"198.18.0.1","received_at":"t","content":"old","#,
                r#""sender":"a","channel_id":"general","timestamp":"t","is_file":false}"#,
                "\n"
            ),
        )
        .unwrap();
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        {
            let mut ib = Inbox::open(&dir, 2).unwrap();
            assert_eq!(ib.since(0).next().unwrap().origin, None);
            assert!(ib.delivered_marks().is_empty());
            ib.push_delivered(a, "t".into(), msg("a1"), origin(7, 100, 1));
            ib.push_delivered(b, "t".into(), msg("b1"), origin(9, 50, 4));
            ib.push_delivered(a, "t".into(), msg("a2"), origin(7, 100, 2));
            // A file note has no origin and leaves the marks alone.
            ib.push(a, "t".into(), msg("file note"));
            ib.commit();
        }
        // Memory holds two entries, but the marks come from the whole log.
        let mut ib = Inbox::open(&dir, 2).unwrap();
        assert_eq!(ib.len(), 2);
        assert_eq!(
            ib.delivered_marks(),
            vec![origin(9, 50, 4), origin(7, 100, 2)]
        );
        let a2 = ib.since(0).next().unwrap();
        assert_eq!(
            (a2.msg.content.as_str(), a2.origin),
            ("a2", Some(origin(7, 100, 2)))
        );
        // The sender restarted (a new epoch): its mark moves to the new life.
        ib.push_delivered(a, "t".into(), msg("a1 again"), origin(7, 101, 1));
        ib.commit();
        let ib = Inbox::open(&dir, 2).unwrap();
        assert_eq!(
            ib.delivered_marks(),
            vec![origin(9, 50, 4), origin(7, 101, 1)]
        );
        assert_eq!(ib.last_index(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
