//! Where file bytes live. The protocol core calls this trait and never touches a filesystem;
//! `MemStore` serves tests, `crate::storage::disk::DiskStore` serves the node.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

pub type Handle = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// The name offered to the receiver (the last path component).
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingMeta {
    pub peer: Ipv4Addr,
    /// Already sanitised by the core.
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The final, unique name.
    pub name: String,
    /// Where it is (a filesystem path for `DiskStore`).
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    /// The same content is already being received (from another peer).
    Busy,
    HashMismatch,
    BadHandle,
    Io(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound(s) => write!(f, "no such file: {s}"),
            StoreError::Busy => write!(f, "the same file is already being received"),
            StoreError::HashMismatch => write!(f, "SHA-256 of the received file does not match"),
            StoreError::BadHandle => write!(f, "unknown file handle"),
            StoreError::Io(s) => write!(f, "storage error: {s}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Storage for outgoing and incoming files. Byte ranges are half-open `[start, end)`.
pub trait FileStore {
    /// Opens a file to send and says what it is (the hash is computed here, once).
    fn open_source(&mut self, source: &str) -> Result<(Handle, SourceInfo), StoreError>;
    fn read_at(&mut self, h: Handle, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError>;
    fn close_source(&mut self, h: Handle);

    /// Starts receiving, or resumes a partial file with the same SHA-256: returns the byte ranges
    /// already held (as of the last checkpoint).
    fn begin_incoming(
        &mut self,
        meta: &IncomingMeta,
    ) -> Result<(Handle, Vec<(u64, u64)>), StoreError>;
    fn write_at(&mut self, h: Handle, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Makes written data and the list of held ranges durable, so a restart resumes from here.
    fn checkpoint(&mut self, h: Handle, held: &[(u64, u64)]) -> Result<(), StoreError>;
    /// Verifies the SHA-256 and moves the file to its final, unique name. On a mismatch the
    /// partial file is discarded.
    fn finish(&mut self, h: Handle) -> Result<Finished, StoreError>;
    /// Closes an incoming file, keeping the partial data for a later resume.
    fn release(&mut self, h: Handle);
    /// Closes an incoming file and deletes its partial data.
    fn abort(&mut self, h: Handle);
    /// Bytes available for new files, if the store can tell.
    fn free_space(&self) -> Option<u64>;
}

pub fn sha256_hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Default)]
struct Partial {
    data: Vec<u8>,
    /// What the last checkpoint made "durable": all a restart gets back.
    durable: Vec<(u64, u64)>,
    meta: Option<IncomingMeta>,
    open: bool,
}

#[derive(Debug, Default)]
struct MemInner {
    sources: HashMap<String, Vec<u8>>,
    open_sources: HashMap<Handle, String>,
    partials: HashMap<String, Partial>,
    handles: HashMap<Handle, String>,
    completed: HashMap<String, Vec<u8>>,
    next: Handle,
    free: Option<u64>,
    checkpoints: u64,
}

/// An in-memory store for tests. Clones share their contents, so a "restarted" stack given a
/// clone sees what the old one checkpointed, as it would on disk.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    pub fn add_source(&self, name: &str, data: Vec<u8>) {
        self.lock().sources.insert(name.to_string(), data);
    }

    pub fn completed(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().completed.get(name).cloned()
    }

    pub fn completed_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().completed.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn partial_count(&self) -> usize {
        self.lock().partials.len()
    }

    pub fn set_free_space(&self, free: Option<u64>) {
        self.lock().free = free;
    }

    pub fn checkpoints(&self) -> u64 {
        self.lock().checkpoints
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FileStore for MemStore {
    fn open_source(&mut self, source: &str) -> Result<(Handle, SourceInfo), StoreError> {
        let mut g = self.lock();
        let data = g
            .sources
            .get(source)
            .ok_or_else(|| StoreError::NotFound(source.to_string()))?;
        let info = SourceInfo {
            name: source.rsplit('/').next().unwrap_or(source).to_string(),
            size: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        };
        g.next += 1;
        let h = g.next;
        g.open_sources.insert(h, source.to_string());
        Ok((h, info))
    }

    fn read_at(&mut self, h: Handle, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        let g = self.lock();
        let name = g.open_sources.get(&h).ok_or(StoreError::BadHandle)?;
        let data = &g.sources[name];
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn close_source(&mut self, h: Handle) {
        self.lock().open_sources.remove(&h);
    }

    fn begin_incoming(
        &mut self,
        meta: &IncomingMeta,
    ) -> Result<(Handle, Vec<(u64, u64)>), StoreError> {
        let mut g = self.lock();
        let key = sha256_hex(&meta.sha256);
        let p = g.partials.entry(key.clone()).or_default();
        // The same peer offering again means its earlier session is gone (a restart on either
        // side): hand the partial file to the new one. Another peer must wait.
        if p.open && p.meta.as_ref().is_some_and(|m| m.peer != meta.peer) {
            return Err(StoreError::Busy);
        }
        if p.data.len() as u64 != meta.size {
            *p = Partial::default();
            p.data = vec![0; meta.size as usize];
        }
        p.open = true;
        p.meta = Some(meta.clone());
        let held = p.durable.clone();
        g.handles.retain(|_, k| *k != key);
        g.next += 1;
        let h = g.next;
        g.handles.insert(h, key);
        Ok((h, held))
    }

    fn write_at(&mut self, h: Handle, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut g = self.lock();
        let key = g.handles.get(&h).ok_or(StoreError::BadHandle)?.clone();
        let p = g.partials.get_mut(&key).ok_or(StoreError::BadHandle)?;
        let end = offset as usize + data.len();
        if end > p.data.len() {
            return Err(StoreError::Io("write beyond the end of the file".into()));
        }
        p.data[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn checkpoint(&mut self, h: Handle, held: &[(u64, u64)]) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.checkpoints += 1;
        let key = g.handles.get(&h).ok_or(StoreError::BadHandle)?.clone();
        let p = g.partials.get_mut(&key).ok_or(StoreError::BadHandle)?;
        p.durable = held.to_vec();
        Ok(())
    }

    fn finish(&mut self, h: Handle) -> Result<Finished, StoreError> {
        let mut g = self.lock();
        let key = g.handles.remove(&h).ok_or(StoreError::BadHandle)?;
        let p = g.partials.remove(&key).ok_or(StoreError::BadHandle)?;
        let meta = p.meta.expect("set by begin_incoming");
        let digest: [u8; 32] = Sha256::digest(&p.data).into();
        if digest != meta.sha256 {
            return Err(StoreError::HashMismatch);
        }
        let name = super::name::unique(&meta.name, |n| g.completed.contains_key(n));
        g.completed.insert(name.clone(), p.data);
        Ok(Finished {
            path: format!("mem:{name}"),
            name,
        })
    }

    fn release(&mut self, h: Handle) {
        let mut g = self.lock();
        if let Some(key) = g.handles.remove(&h) {
            if let Some(p) = g.partials.get_mut(&key) {
                p.open = false;
            }
        }
    }

    fn abort(&mut self, h: Handle) {
        let mut g = self.lock();
        if let Some(key) = g.handles.remove(&h) {
            g.partials.remove(&key);
        }
    }

    fn free_space(&self) -> Option<u64> {
        self.lock().free
    }
}
