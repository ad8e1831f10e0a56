//! Starting a node on a real TUN device: opens the device, the capture file, the control socket
//! and the data directory, and builds the node. Shared by the CLI and the library API; errors are
//! typed so each caller can word them for its user.

use super::clock::{rfc3339_now, unix_micros, Clock};
use super::inbox::Inbox;
use super::limits::Limits;
use super::messaging::Messaging;
use super::{identity, Node, NodeHandle};
use crate::device::{DeviceError, PcapWriter, TunDevice};
use crate::driver::{Driver, RstDump};
use crate::impair::rules::RuleSet;
use crate::impair::ImpairSpec;
use crate::stack::{Stack, StackConfig};
use crate::storage::disk::DiskStore;
use std::fmt;
use std::io::{self, BufWriter};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct LaunchConfig {
    pub tun: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: usize,
    pub name: String,
    pub pcap: Option<PathBuf>,
    /// `None`: no control socket.
    pub control: Option<PathBuf>,
    /// `None`: nothing persisted (in-memory inbox, fresh identity).
    pub data_dir: Option<PathBuf>,
    pub impair_in: Option<ImpairSpec>,
    pub impair_out: Option<ImpairSpec>,
    /// Scripted impairment rules (see `impair::rules`).
    pub impair_rules: RuleSet,
    pub seed: u64,
    pub peers: Vec<Ipv4Addr>,
    /// Resource limits (`None` fields keep the cores' defaults).
    pub limits: Limits,
    /// Write the recent packets of each reset connection as a pcap into this directory.
    pub rst_dump: Option<PathBuf>,
}

impl LaunchConfig {
    pub fn new(tun: &str, addr: Ipv4Addr, prefix_len: u8) -> LaunchConfig {
        LaunchConfig {
            tun: tun.to_string(),
            addr,
            prefix_len,
            mtu: 1500,
            name: format!("node-{addr}"),
            pcap: None,
            control: None,
            data_dir: None,
            impair_in: None,
            impair_out: None,
            impair_rules: RuleSet::default(),
            seed: os_random_u64(),
            peers: Vec::new(),
            limits: Limits::default(),
            rst_dump: None,
        }
    }
}

#[derive(Debug)]
pub enum LaunchError {
    Device(DeviceError),
    Capture { path: PathBuf, source: io::Error },
    ControlSocket { path: PathBuf, source: io::Error },
    RstDump { path: PathBuf, source: io::Error },
    AlreadyRunning { path: PathBuf },
    DataDir { path: PathBuf, source: io::Error },
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Device(e) => write!(f, "{e}"),
            LaunchError::Capture { path, source } => {
                write!(f, "cannot create capture file {}: {source}", path.display())
            }
            LaunchError::ControlSocket { path, source } => {
                write!(
                    f,
                    "cannot create control socket {}: {source}",
                    path.display()
                )
            }
            LaunchError::RstDump { path, source } => {
                write!(
                    f,
                    "cannot use --rst-dump directory {}: {source}",
                    path.display()
                )
            }
            LaunchError::AlreadyRunning { path } => {
                write!(
                    f,
                    "a node is already running with control socket {}",
                    path.display()
                )
            }
            LaunchError::DataDir { path, source } => {
                write!(f, "cannot use data directory {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for LaunchError {}

/// 64 bits from the OS's randomness (std's hasher keys are drawn from it).
pub fn os_random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// A node ready to run: its handle, and the driver that runs its event loop.
pub struct Prepared {
    pub handle: NodeHandle,
    pub driver: Driver<TunDevice>,
}

impl Prepared {
    /// Runs the event loop on a thread of its own; the handle stays with the caller.
    pub fn spawn(self) -> io::Result<(NodeHandle, std::thread::JoinHandle<io::Result<()>>)> {
        let handle = self.handle.clone();
        let h = self.handle;
        let driver = self.driver;
        let join = std::thread::Builder::new()
            .name("tunstack-loop".into())
            .spawn(move || driver.run(h))?;
        Ok((handle, join))
    }
}

/// Opens everything and builds the node. `configure` adjusts the stack configuration (after the
/// identity is filled in); `setup` installs apps on the node before the loop starts.
pub fn launch<E: From<LaunchError>>(
    cfg: &LaunchConfig,
    configure: impl FnOnce(&mut StackConfig),
    setup: impl FnOnce(&mut Node) -> Result<(), E>,
) -> Result<Prepared, E> {
    let device = TunDevice::open(&cfg.tun).map_err(LaunchError::Device)?;
    let pcap = match &cfg.pcap {
        Some(path) => {
            let capture =
                std::fs::File::create(path).and_then(|f| PcapWriter::new(BufWriter::new(f)));
            Some(capture.map_err(|source| LaunchError::Capture {
                path: path.clone(),
                source,
            })?)
        }
        None => None,
    };
    let control = match &cfg.control {
        Some(path) => Some((bind_control(path)?, path.clone())),
        None => None,
    };
    let rst_dump = match &cfg.rst_dump {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| LaunchError::RstDump {
                path: dir.clone(),
                source,
            })?;
            Some(RstDump::new(dir.clone()))
        }
        None => None,
    };
    let mut stack_cfg = StackConfig::new(cfg.addr, cfg.prefix_len, cfg.mtu, cfg.seed);
    cfg.limits.apply(&mut stack_cfg);
    stack_cfg.tcp.reset_reports = rst_dump.is_some();
    stack_cfg.msg.node_name = cfg.name.clone();
    stack_cfg.msg.peers = cfg.peers.clone();
    // RFC 6528: the ISN secret must be unpredictable to off-path attackers, so it comes from the
    // OS, never from the (possibly user-chosen) seed.
    let (a, b) = (os_random_u64(), os_random_u64());
    stack_cfg.tcp.isn_secret[..8].copy_from_slice(&a.to_le_bytes());
    stack_cfg.tcp.isn_secret[8..].copy_from_slice(&b.to_le_bytes());
    let inbox = match &cfg.data_dir {
        Some(dir) => {
            let data_err = |source| LaunchError::DataDir {
                path: dir.clone(),
                source,
            };
            let id = identity::load(dir, os_random_u64(), unix_micros() / 1_000_000)
                .map_err(data_err)?;
            stack_cfg.msg.node_id = id.node_id;
            stack_cfg.msg.boot_epoch = id.boot_epoch;
            stack_cfg.file.node_id = id.node_id;
            stack_cfg.file.boot_epoch = id.boot_epoch;
            Inbox::open(dir, 10_000).map_err(data_err)?
        }
        None => {
            stack_cfg.msg.boot_epoch = unix_micros() / 1_000_000;
            stack_cfg.file.boot_epoch = stack_cfg.msg.boot_epoch;
            Inbox::in_memory(10_000)
        }
    };
    configure(&mut stack_cfg);
    let clock = Clock::new();
    let mut node = Node::new(cfg.name.clone(), Stack::new(stack_cfg), clock.now());
    node.tun_name = device.name().to_string();
    node.set_impairment_with_rules(
        cfg.impair_in.clone(),
        cfg.impair_out.clone(),
        cfg.impair_rules.clone(),
    );
    node.messaging = Messaging::new(inbox, rfc3339_now);
    if let Some(dir) = &cfg.data_dir {
        let store = DiskStore::new(dir).map_err(|e| LaunchError::DataDir {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        node.stack.file.set_store(Box::new(store));
    }
    node.data_dir = cfg.data_dir.clone();
    setup(&mut node)?;
    Ok(Prepared {
        handle: NodeHandle::new(node, clock),
        driver: Driver {
            device,
            pcap,
            control,
            rst_dump,
        },
    })
}

fn bind_control(path: &Path) -> Result<mio::net::UnixListener, LaunchError> {
    let err = |source| LaunchError::ControlSocket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        // A live node answers; a dead one left a stale socket we may replace.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(LaunchError::AlreadyRunning {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    mio::net::UnixListener::bind(path).map_err(err)
}
