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
use crate::msg::MsgConfig;
use crate::stack::{Stack, StackConfig};
use crate::storage::disk::DiskStore;
use std::fmt;
use std::io::{self, BufWriter};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Protocol-170 retransmission settings a user may change (`--msg-retries`, `--msg-backoff`,
/// `--msg-rto-*`); `None` keeps the core's default. [`MsgTuning::check`] says what is out of
/// range; [`MsgTuning::apply`] clamps anyway, so no setting can make the core misbehave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MsgTuning {
    /// Retransmissions of a segment (and HELLOs to a silent peer) before the message fails.
    pub max_retries: Option<u32>,
    /// Each retransmission waits this many times longer than the previous one.
    pub backoff: Option<f64>,
    /// The retransmission timeout before the first RTT sample.
    pub initial_rto: Option<Duration>,
    /// Floor and ceiling of the timeout the RTT estimate gives.
    pub min_rto: Option<Duration>,
    pub max_rto: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MsgTuningError {
    Retries(u32),
    Backoff(f64),
    Rto { what: &'static str, value: Duration },
    MinAboveMax { min: Duration, max: Duration },
}

impl fmt::Display for MsgTuningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgTuningError::Retries(n) => write!(
                f,
                "message retries {n} is out of range (0..={})",
                MsgTuning::MAX_RETRIES
            ),
            MsgTuningError::Backoff(b) => write!(
                f,
                "message backoff factor {b} is out of range ({}..={})",
                MsgTuning::MIN_BACKOFF,
                MsgTuning::MAX_BACKOFF
            ),
            MsgTuningError::Rto { what, value } => write!(
                f,
                "message {what} timeout {value:?} is out of range ({:?}..={:?})",
                MsgTuning::MIN_TIMEOUT,
                MsgTuning::MAX_TIMEOUT
            ),
            MsgTuningError::MinAboveMax { min, max } => write!(
                f,
                "the minimum message timeout {min:?} is above the maximum {max:?}"
            ),
        }
    }
}

impl std::error::Error for MsgTuningError {}

impl MsgTuning {
    pub const MAX_RETRIES: u32 = 100;
    pub const MIN_BACKOFF: f64 = 1.0;
    /// Beyond this the wait after a few tries is hours: a typo, not a setting.
    pub const MAX_BACKOFF: f64 = 10.0;
    pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

    pub fn check(&self) -> Result<(), MsgTuningError> {
        if let Some(n) = self.max_retries.filter(|n| *n > Self::MAX_RETRIES) {
            return Err(MsgTuningError::Retries(n));
        }
        if let Some(b) = self
            .backoff
            .filter(|b| !(Self::MIN_BACKOFF..=Self::MAX_BACKOFF).contains(b))
        {
            return Err(MsgTuningError::Backoff(b));
        }
        for (what, v) in [
            ("initial", self.initial_rto),
            ("minimum", self.min_rto),
            ("maximum", self.max_rto),
        ] {
            if let Some(value) = v.filter(|d| !(Self::MIN_TIMEOUT..=Self::MAX_TIMEOUT).contains(d))
            {
                return Err(MsgTuningError::Rto { what, value });
            }
        }
        let d = MsgConfig::default();
        let (min, max) = (
            self.min_rto.unwrap_or(d.min_rto),
            self.max_rto.unwrap_or(d.max_rto),
        );
        if min > max {
            return Err(MsgTuningError::MinAboveMax { min, max });
        }
        Ok(())
    }

    pub fn apply(&self, cfg: &mut MsgConfig) {
        let t = |d: Duration| d.clamp(Self::MIN_TIMEOUT, Self::MAX_TIMEOUT);
        if let Some(n) = self.max_retries {
            cfg.max_retries = n.min(Self::MAX_RETRIES);
        }
        if let Some(b) = self.backoff {
            // NaN fails both comparisons of `clamp`'s contract, so it is replaced first.
            let b = if b.is_nan() { Self::MIN_BACKOFF } else { b };
            cfg.backoff = b.clamp(Self::MIN_BACKOFF, Self::MAX_BACKOFF);
        }
        if let Some(d) = self.initial_rto {
            cfg.initial_rto = t(d);
        }
        if let Some(d) = self.min_rto {
            cfg.min_rto = t(d);
        }
        if let Some(d) = self.max_rto {
            cfg.max_rto = t(d);
        }
        cfg.max_rto = cfg.max_rto.max(cfg.min_rto);
    }
}

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
    /// TCP segmentation offload on the TUN device (see `device::offload`).
    pub offload: bool,
    /// Protocol-170 retransmission settings.
    pub msg: MsgTuning,
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
            offload: false,
            msg: MsgTuning::default(),
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
    let device = TunDevice::open_with(&cfg.tun, cfg.offload).map_err(LaunchError::Device)?;
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
    cfg.msg.apply(&mut stack_cfg.msg);
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
    // Before the loop reads a packet: a message the previous life logged but never acknowledged
    // must be recognised when the sender sends it again.
    node.stack.msg.restore_delivered(inbox.delivered_marks());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_msg_tuning_applies_only_what_is_set() {
        let mut cfg = MsgConfig::default();
        let t = MsgTuning {
            max_retries: Some(3),
            backoff: Some(2.0),
            min_rto: Some(Duration::from_millis(20)),
            ..MsgTuning::default()
        };
        assert_eq!(t.check(), Ok(()));
        t.apply(&mut cfg);
        assert_eq!(cfg.max_retries, 3);
        assert_eq!(cfg.backoff, 2.0);
        assert_eq!(cfg.min_rto, Duration::from_millis(20));
        let d = MsgConfig::default();
        assert_eq!((cfg.initial_rto, cfg.max_rto), (d.initial_rto, d.max_rto));
    }

    #[test]
    fn test_msg_tuning_refuses_and_clamps_nonsense() {
        let bad = [
            MsgTuning {
                max_retries: Some(1000),
                ..MsgTuning::default()
            },
            MsgTuning {
                backoff: Some(0.5),
                ..MsgTuning::default()
            },
            MsgTuning {
                backoff: Some(f64::NAN),
                ..MsgTuning::default()
            },
            MsgTuning {
                initial_rto: Some(Duration::ZERO),
                ..MsgTuning::default()
            },
            MsgTuning {
                min_rto: Some(Duration::from_secs(20)),
                ..MsgTuning::default()
            },
        ];
        for t in bad {
            assert!(t.check().is_err(), "{t:?} was accepted");
            let mut cfg = MsgConfig::default();
            t.apply(&mut cfg);
            assert!(cfg.max_retries <= MsgTuning::MAX_RETRIES);
            assert!((MsgTuning::MIN_BACKOFF..=MsgTuning::MAX_BACKOFF).contains(&cfg.backoff));
            assert!(cfg.initial_rto >= MsgTuning::MIN_TIMEOUT && cfg.min_rto <= cfg.max_rto);
        }
        let e = MsgTuning {
            min_rto: Some(Duration::from_secs(20)),
            ..MsgTuning::default()
        }
        .check()
        .unwrap_err();
        assert!(e.to_string().contains("above the maximum"), "{e}");
    }
}
