//! A [`FileStore`] on disk: incoming data goes to `<dir>/received/.partial/<sha256>.part` with a
//! `<sha256>.progress` sidecar listing the durable byte ranges; a file is renamed into
//! `<dir>/received/<name>` only after its SHA-256 matched.

use crate::file::name;
use crate::file::store::{
    sha256_hex, FileStore, Finished, Handle, IncomingMeta, SourceInfo, StoreError,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

#[derive(Debug)]
struct Open {
    file: File,
    key: String,
    meta: IncomingMeta,
}

#[derive(Debug)]
pub struct DiskStore {
    received: PathBuf,
    partial: PathBuf,
    sources: HashMap<Handle, File>,
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
        self.sources.insert(self.next, f);
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
        let f = self.sources.get(&h).ok_or(StoreError::BadHandle)?;
        let mut done = 0;
        while done < buf.len() {
            let n = f
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(io)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
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
        self.next += 1;
        self.incoming.insert(
            self.next,
            Open {
                file,
                key,
                meta: meta.clone(),
            },
        );
        Ok((self.next, held))
    }

    fn write_at(&mut self, h: Handle, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let o = self.incoming.get(&h).ok_or(StoreError::BadHandle)?;
        o.file.write_all_at(data, offset).map_err(io)
    }

    fn checkpoint(&mut self, h: Handle, held: &[(u64, u64)]) -> Result<(), StoreError> {
        let o = self.incoming.get(&h).ok_or(StoreError::BadHandle)?;
        // Data first, then the claim about it: a sidecar must never list bytes not on disk.
        o.file.sync_data().map_err(io)?;
        let (_, progress) = self.paths(&o.key);
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
        o.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut hasher = Sha256::new();
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
        self.incoming.remove(&h);
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
}
