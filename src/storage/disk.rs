//! A [`FileStore`] on disk: incoming data goes to `<dir>/received/.partial/<sha256>.part` with a
//! `<sha256>.progress` sidecar listing the durable byte ranges; a file is renamed into
//! `<dir>/received/<name>` only after its SHA-256 matched.
//!
//! Speed: chunks are ~1.4 KB. Contiguous chunks are gathered into one write of up to
//! [`WRITE_BATCH`] bytes (a write of part of a page makes the kernel zero the rest first), the
//! SHA-256 of the in-order prefix is kept up as data arrives (so `finish` reads back only what
//! arrived out of order or before a restart), and sources are read ahead [`READ_AHEAD`] bytes
//! at a time. Nothing buffered counts as held until `checkpoint` has written and synced it.

use crate::file::name;
use crate::file::store::{
    sha256_hex, FileStore, Finished, Handle, IncomingMeta, SourceInfo, StoreError,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Largest run of contiguous incoming bytes held in memory before it is written.
pub const WRITE_BATCH: usize = 1 << 20;
/// Bytes read from a source at once when it is read in order.
pub const READ_AHEAD: usize = 256 << 10;

struct Open {
    file: File,
    key: String,
    meta: IncomingMeta,
    /// Bytes accepted by `write_at` and not yet written: one run starting at `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    /// SHA-256 of the file's first `hashed` bytes.
    hasher: Sha256,
    hashed: u64,
    /// Runs written beyond `hashed` (start -> end), hashed when the gap before them fills.
    ahead: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("key", &self.key)
            .field("pending", &self.pending.len())
            .field("hashed", &self.hashed)
            .finish()
    }
}

impl Open {
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all_at(&self.pending, self.pending_at)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Hashes runs that the bytes just hashed made contiguous, reading them back.
    fn catch_up(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        while let Some((&start, &end)) = self.ahead.first_key_value() {
            if start > self.hashed {
                break;
            }
            self.ahead.remove(&start);
            if end <= self.hashed {
                continue;
            }
            self.flush()?;
            buf.resize((end - self.hashed) as usize, 0);
            self.file.read_exact_at(&mut buf, self.hashed)?;
            self.hasher.update(&buf);
            self.hashed = end;
        }
        Ok(())
    }

    fn note_written(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        if offset == self.hashed {
            self.hasher.update(data);
            self.hashed = end;
            if !self.ahead.is_empty() {
                self.catch_up()?;
            }
        } else if offset > self.hashed {
            // Extend the run this one continues, if any, so the map stays small.
            match self.ahead.range_mut(..offset).next_back() {
                Some((_, e)) if *e == offset => *e = end,
                _ => {
                    self.ahead.insert(offset, end);
                }
            }
        } else {
            // Bytes already hashed written again: only a full read-back can tell what is there.
            self.hashed = 0;
            self.hasher = Sha256::new();
            self.ahead.clear();
            self.ahead.insert(u64::MAX, u64::MAX);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Source {
    file: File,
    cache: Vec<u8>,
    cache_at: u64,
}

impl Source {
    fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let n = file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let cache_end = self.cache_at + self.cache.len() as u64;
        let end = offset + buf.len() as u64;
        if offset >= self.cache_at && end <= cache_end {
            let i = (offset - self.cache_at) as usize;
            buf.copy_from_slice(&self.cache[i..i + buf.len()]);
            return Ok(buf.len());
        }
        // Read ahead only when reading forward; a retransmission of an old chunk reads alone.
        if offset < self.cache_at || buf.len() > READ_AHEAD {
            return Self::read_full(&self.file, buf, offset);
        }
        self.cache.resize(READ_AHEAD, 0);
        let n = Self::read_full(&self.file, &mut self.cache, offset)?;
        self.cache.truncate(n);
        self.cache_at = offset;
        let n = n.min(buf.len());
        buf[..n].copy_from_slice(&self.cache[..n]);
        Ok(n)
    }
}

#[derive(Debug)]
pub struct DiskStore {
    received: PathBuf,
    partial: PathBuf,
    sources: HashMap<Handle, Source>,
    incoming: HashMap<Handle, Open>,
    next: Handle,
}

impl DiskStore {
    pub fn new(data_dir: &Path) -> Result<DiskStore, StoreError> {
        let received = data_dir.join("received");
        let partial = received.join(".partial");
        fs::create_dir_all(&partial).map_err(io)?;
        Ok(DiskStore {
            received,
            partial,
            sources: HashMap::new(),
            incoming: HashMap::new(),
            next: 0,
        })
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.partial.join(format!("{key}.part")),
            self.partial.join(format!("{key}.progress")),
        )
    }
}

impl FileStore for DiskStore {
    fn open_source(&mut self, source: &str) -> Result<(Handle, SourceInfo), StoreError> {
        let mut f = File::open(source).map_err(|_| StoreError::NotFound(source.into()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        let name = Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        self.next += 1;
        self.sources.insert(
            self.next,
            Source {
                file: f,
                cache: Vec::new(),
                cache_at: 0,
            },
        );
        Ok((
            self.next,
            SourceInfo {
                name,
                size,
                sha256: h.finalize().into(),
            },
        ))
    }

    fn read_at(&mut self, h: Handle, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let s = self.sources.get_mut(&h).ok_or(StoreError::BadHandle)?;
        s.read_at(buf, offset).map_err(io)
    }

    fn close_source(&mut self, h: Handle) {
        self.sources.remove(&h);
    }

    fn begin_incoming(
        &mut self,
        meta: &IncomingMeta,
    ) -> Result<(Handle, Vec<(u64, u64)>), StoreError> {
        let key = sha256_hex(&meta.sha256);
        if let Some((&old, o)) = self.incoming.iter().find(|(_, o)| o.key == key) {
            if o.meta.peer != meta.peer {
                return Err(StoreError::Busy);
            }
            self.incoming.remove(&old);
        }
        let (part, progress) = self.paths(&key);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut held = Vec::new();
        if len == meta.size {
            if let Ok(s) = fs::read_to_string(&progress) {
                held = serde_json::from_str::<Vec<(u64, u64)>>(&s).unwrap_or_default();
            }
        } else {
            file.set_len(meta.size).map_err(io)?;
        }
        // What a previous life left is hashed when the data before it is (or by `finish`).
        let ahead: BTreeMap<u64, u64> = held.iter().copied().filter(|r| r.0 < r.1).collect();
        self.next += 1;
        self.incoming.insert(
            self.next,
            Open {
                file,
                key,
                meta: meta.clone(),
                pending: Vec::new(),
                pending_at: 0,
                hasher: Sha256::new(),
                hashed: 0,
                ahead,
            },
        );
        Ok((self.next, held))
    }

    fn write_at(&mut self, h: Handle, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let o = self.incoming.get_mut(&h).ok_or(StoreError::BadHandle)?;
        if !matches!(offset.checked_add(data.len() as u64), Some(e) if e <= o.meta.size) {
            return Err(StoreError::Io("write beyond the end of the file".into()));
        }
        if !o.pending.is_empty() && o.pending_at + o.pending.len() as u64 != offset {
            o.flush().map_err(io)?;
        }
        if o.pending.is_empty() {
            o.pending_at = offset;
        }
        o.pending.extend_from_slice(data);
        if o.pending.len() >= WRITE_BATCH {
            o.flush().map_err(io)?;
        }
        o.note_written(offset, data).map_err(io)
    }

    fn checkpoint(&mut self, h: Handle, held: &[(u64, u64)]) -> Result<(), StoreError> {
        let o = self.incoming.get_mut(&h).ok_or(StoreError::BadHandle)?;
        // Data first, then the claim about it: a sidecar must never list bytes not on disk.
        o.flush().map_err(io)?;
        o.file.sync_data().map_err(io)?;
        let key = o.key.clone();
        let (_, progress) = self.paths(&key);
        let tmp = progress.with_extension("progress.tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(serde_json::to_string(held).unwrap_or_default().as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &progress).map_err(io)
    }

    fn finish(&mut self, h: Handle) -> Result<Finished, StoreError> {
        let mut o = self.incoming.remove(&h).ok_or(StoreError::BadHandle)?;
        let (part, progress) = self.paths(&o.key);
        o.flush().map_err(io)?;
        // Only what was not hashed on arrival is read back.
        let mut hasher = std::mem::take(&mut o.hasher);
        o.file.seek(SeekFrom::Start(o.hashed)).map_err(io)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = o.file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if digest != o.meta.sha256 {
            let _ = fs::remove_file(&part);
            let _ = fs::remove_file(&progress);
            return Err(StoreError::HashMismatch);
        }
        o.file.sync_all().map_err(io)?;
        let clean = name::sanitize(&o.meta.name);
        let name = name::unique(&clean, |n| self.received.join(n).exists());
        let dest = self.received.join(&name);
        fs::rename(&part, &dest).map_err(io)?;
        let _ = fs::remove_file(&progress);
        if let Ok(d) = File::open(&self.received) {
            let _ = d.sync_all();
        }
        Ok(Finished {
            name,
            path: dest.to_string_lossy().into_owned(),
        })
    }

    fn release(&mut self, h: Handle) {
        // The buffered bytes are kept for a resume only if a later checkpoint lists them; write
        // them anyway, they cost nothing to keep.
        if let Some(mut o) = self.incoming.remove(&h) {
            let _ = o.flush();
        }
    }

    fn abort(&mut self, h: Handle) {
        if let Some(o) = self.incoming.remove(&h) {
            let (part, progress) = self.paths(&o.key);
            let _ = fs::remove_file(part);
            let _ = fs::remove_file(progress);
        }
    }

    fn free_space(&self) -> Option<u64> {
        let path = std::ffi::CString::new(self.received.to_string_lossy().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a writable statvfs.
        let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn test_disk_store_resume_verify_rename() {
        let dir = std::env::temp_dir().join(format!("tunstack-disk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let src = dir.join("src.bin");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&src, &data).unwrap();
        let mut s = DiskStore::new(&dir).unwrap();
        let (hs, info) = s.open_source(src.to_str().unwrap()).unwrap();
        assert_eq!(info.size, 100_000);
        let meta = IncomingMeta {
            peer: Ipv4Addr::new(10, 0, 0, 1),
            name: "../../etc/x".into(),
            size: info.size,
            sha256: info.sha256,
        };
        let (h, held) = s.begin_incoming(&meta).unwrap();
        assert!(held.is_empty());
        let mut buf = vec![0u8; 50_000];
        s.read_at(hs, 0, &mut buf).unwrap();
        s.write_at(h, 0, &buf).unwrap();
        s.checkpoint(h, &[(0, 50_000)]).unwrap();
        drop(s); // a crash
        let mut s = DiskStore::new(&dir).unwrap();
        let (h, held) = s.begin_incoming(&meta).unwrap();
        assert_eq!(held, vec![(0, 50_000)]);
        s.write_at(h, 50_000, &data[50_000..]).unwrap();
        let f = s.finish(h).unwrap();
        assert_eq!(f.name, "etc_x");
        assert_eq!(fs::read(dir.join("received/etc_x")).unwrap(), data);
        assert!(s.free_space().unwrap() > 0);
        // A corrupt file is refused and removed.
        let (h, _) = s.begin_incoming(&meta).unwrap();
        s.write_at(h, 0, &vec![1u8; 100_000]).unwrap();
        assert_eq!(s.finish(h), Err(StoreError::HashMismatch));
        assert!(!dir.join("received/etc_x-1").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_disk_store_out_of_order_writes_hash_and_land() {
        let dir = std::env::temp_dir().join(format!("tunstack-disk-ooo-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
        let sha256: [u8; 32] = Sha256::digest(&data).into();
        let meta = IncomingMeta {
            peer: Ipv4Addr::new(10, 0, 0, 1),
            name: "ooo.bin".into(),
            size: data.len() as u64,
            sha256,
        };
        let mut s = DiskStore::new(&dir).unwrap();
        let (h, _) = s.begin_incoming(&meta).unwrap();
        let chunk = |i: usize| (i as u64 * 1000, &data[i * 1000..(i + 1) * 1000]);
        // In order, then past a gap, then the gap (hashing catches up), then one chunk again
        // (only a full read-back can vouch for the file then).
        let order = (0..40).chain(60..100).chain(40..60).chain([3]);
        for i in order {
            let (off, bytes) = chunk(i);
            s.write_at(h, off, bytes).unwrap();
        }
        assert!(s.write_at(h, 99_500, &[0; 1000]).is_err());
        let f = s.finish(h).unwrap();
        assert_eq!(fs::read(&f.path).unwrap(), data);
        // Gathered writes count as held only after a checkpoint wrote them.
        let meta2 = IncomingMeta {
            name: "two.bin".into(),
            sha256: [9; 32],
            ..meta
        };
        let (h, _) = s.begin_incoming(&meta2).unwrap();
        s.write_at(h, 0, &data[..5000]).unwrap();
        s.checkpoint(h, &[(0, 5000)]).unwrap();
        s.write_at(h, 5000, &data[5000..9000]).unwrap();
        drop(s); // a crash: the unsaved run is not claimed
        let mut s = DiskStore::new(&dir).unwrap();
        let (h, held) = s.begin_incoming(&meta2).unwrap();
        assert_eq!(held, vec![(0, 5000)]);
        let part = dir
            .join("received/.partial")
            .join(format!("{}.part", sha256_hex(&[9; 32])));
        assert_eq!(fs::read(part).unwrap()[..5000], data[..5000]);
        s.abort(h);
        fs::remove_dir_all(&dir).unwrap();
    }
}
