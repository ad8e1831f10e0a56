//! A node's identity across restarts, kept in its data directory: a stable 64-bit node id, and a
//! boot epoch that grows with every start so peers can tell a restart from a late packet.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_id: u64,
    pub boot_epoch: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_durably(path: &Path, value: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Loads the identity from `dir` (creating it on first use) and advances the epoch. The new epoch
/// is above both the last one and the current Unix time in seconds, so it grows even if the file
/// is lost.
pub fn load(dir: &Path, fresh_id: u64, unix_secs: u64) -> io::Result<Identity> {
    fs::create_dir_all(dir)?;
    let id_path = dir.join("node-id");
    let node_id = match read_u64(&id_path) {
        Some(id) if id != 0 => id,
        _ => {
            let id = fresh_id.max(1);
            write_durably(&id_path, id)?;
            id
        }
    };
    let epoch_path = dir.join("boot-epoch");
    let last = read_u64(&epoch_path).unwrap_or(0);
    let boot_epoch = (last + 1).max(unix_secs);
    write_durably(&epoch_path, boot_epoch)?;
    Ok(Identity {
        node_id,
        boot_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_identity_is_stable_and_epoch_grows() {
        let dir = std::env::temp_dir().join(format!("tunstack-id-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = load(&dir, 42, 1000).unwrap();
        assert_eq!(
            a,
            Identity {
                node_id: 42,
                boot_epoch: 1000
            }
        );
        let b = load(&dir, 99, 1000).unwrap();
        assert_eq!(b.node_id, 42);
        assert_eq!(b.boot_epoch, 1001);
        let c = load(&dir, 99, 5000).unwrap();
        assert_eq!(c.boot_epoch, 5000);
        fs::remove_dir_all(&dir).unwrap();
    }
}
