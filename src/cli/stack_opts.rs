//! The options every network subcommand shares (`--tun`, `--addr`, `--mtu`, ...), and starting a
//! node from them: opening the device, the capture and the control socket, with an error message
//! for each way that can fail.

use super::CliError;
use crate::device::{DeviceError, PcapWriter, TunDevice};
use crate::driver::Driver;
use crate::impair::ImpairSpec;
use crate::ip::IpConfig;
use crate::node::clock::Clock;
use crate::node::{Node, NodeHandle};
use crate::stack::{Stack, StackConfig};
use clap::Args;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// `A.B.C.D/P`: the node's address and the prefix of its subnet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AddrPrefix {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::str::FromStr for AddrPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<AddrPrefix, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' needs a prefix length, e.g. 198.18.0.2/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let prefix_len: u8 = p
            .parse()
            .ok()
            .filter(|n| *n <= 32)
            .ok_or_else(|| format!("prefix length '{p}' must be a number from 0 to 32"))?;
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
            return Err(format!("{addr} cannot be a node's address"));
        }
        Ok(AddrPrefix { addr, prefix_len })
    }
}

fn parse_mtu(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(IpConfig::MIN_MTU..=IpConfig::MAX_MTU).contains(&n) {
        return Err(format!(
            "{n} is out of range: the MTU must be from {} (the IPv4 minimum) to {}",
            IpConfig::MIN_MTU,
            IpConfig::MAX_MTU
        ));
    }
    Ok(n)
}

fn parse_impair(s: &str) -> Result<ImpairSpec, String> {
    ImpairSpec::parse(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug, Clone)]
pub struct StackOpts {
    /// TUN device to attach to (created if it does not exist; the lab script makes tun0)
    #[arg(long, value_name = "NAME", default_value = "tun0")]
    pub tun: String,

    /// The node's own address and subnet, e.g. 198.18.0.2/24 (the kernel end of the TUN has another address in it)
    #[arg(long, value_name = "A.B.C.D/P")]
    pub addr: AddrPrefix,

    /// Largest IP packet the node sends or accepts, header included (576..65535); match the TUN device's MTU
    #[arg(long, value_name = "N", default_value = "1500", value_parser = parse_mtu)]
    pub mtu: usize,

    /// Name of the node, used for the default control socket /run/tunstack/NAME.sock [default: node-ADDR]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Write every packet the node reads and writes to FILE (pcap, LINKTYPE_RAW), for Wireshark or tshark
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Control socket path for `tunstack ctl` [default: /run/tunstack/NAME.sock]
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Impair packets both ways at the device, e.g. loss=2%,dup=1%,reorder=5%:20ms,delay=30ms~5ms,corrupt=0.1%,rate=20mbit,seed=7
    #[arg(long, value_name = "SPEC", value_parser = parse_impair)]
    pub impair: Option<ImpairSpec>,

    /// Impair only packets read from the device (overrides --impair for that direction)
    #[arg(long, value_name = "SPEC", value_parser = parse_impair)]
    pub impair_in: Option<ImpairSpec>,

    /// Impair only packets the node writes to the device (overrides --impair for that direction)
    #[arg(long, value_name = "SPEC", value_parser = parse_impair)]
    pub impair_out: Option<ImpairSpec>,

    /// Seed for the stack's random choices (identifiers, ISN clock offsets); random if not given
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

impl StackOpts {
    pub fn node_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("node-{}", self.addr.addr))
    }

    pub fn control_path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| default_control_path(&self.node_name()))
    }

    /// The stack's configuration from these options; callers adjust transport settings before
    /// building the stack.
    pub fn stack_config(&self) -> StackConfig {
        let seed = self.seed.unwrap_or_else(os_random_u64);
        StackConfig::new(self.addr.addr, self.addr.prefix_len, self.mtu, seed)
    }
}

pub fn default_control_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/tunstack/{name}.sock"))
}

/// 64 bits from the OS's randomness (std's hasher keys are drawn from it).
pub fn os_random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

fn device_error_hint(e: &DeviceError) -> String {
    let hint = match e {
        DeviceError::TunMissing => {
            "load the tun module (modprobe tun) or run where /dev/net/tun exists"
        }
        DeviceError::PermissionDenied { .. } => {
            "run as root (sudo) or give the binary CAP_NET_ADMIN"
        }
        DeviceError::Busy { .. } => {
            "another process has this TUN device open: stop it, or use another --tun"
        }
        DeviceError::NameTooLong { .. } | DeviceError::InvalidName { .. } => {
            "pick a name of at most 15 letters, digits, '-' or '_'"
        }
        DeviceError::Incompatible { .. } => "delete it (ip link del NAME) or use another --tun",
        DeviceError::Io { .. } => "check the device with 'ip link show' and the kernel log",
    };
    format!("{e}\n  hint: {hint}")
}

/// A node ready to run: its handle, and the driver that runs its event loop.
pub struct Prepared {
    pub handle: NodeHandle,
    pub driver: Driver<TunDevice>,
}

/// Opens the device, capture and control socket and builds the node. `configure` adjusts the
/// stack configuration; `setup` installs apps on the node before the loop starts.
pub fn prepare(
    opts: &StackOpts,
    configure: impl FnOnce(&mut StackConfig),
    setup: impl FnOnce(&mut Node) -> Result<(), CliError>,
) -> Result<Prepared, CliError> {
    let device = TunDevice::open(&opts.tun).map_err(|e| CliError(device_error_hint(&e)))?;
    let pcap = match &opts.pcap {
        Some(path) => {
            let f = std::fs::File::create(path).map_err(|e| {
                CliError(format!(
                    "cannot create capture file {}: {e}",
                    path.display()
                ))
            })?;
            Some(PcapWriter::new(BufWriter::new(f))?)
        }
        None => None,
    };
    let control_path = opts.control_path();
    let listener = bind_control(&control_path)?;
    let mut cfg = opts.stack_config();
    configure(&mut cfg);
    let clock = Clock::new();
    let mut node = Node::new(opts.node_name(), Stack::new(cfg), clock.now());
    node.tun_name = device.name().to_string();
    let inbound = opts.impair_in.clone().or_else(|| opts.impair.clone());
    let outbound = opts.impair_out.clone().or_else(|| {
        opts.impair.clone().map(|mut s| {
            // The same seed both ways would drop correlated packets in each direction.
            s.seed = s.seed.wrapping_add(0x9e37_79b9);
            s
        })
    });
    node.set_impairment(inbound, outbound);
    setup(&mut node)?;
    Ok(Prepared {
        handle: NodeHandle::new(node, clock),
        driver: Driver {
            device,
            pcap,
            control: Some((listener, control_path)),
        },
    })
}

fn bind_control(path: &std::path::Path) -> Result<mio::net::UnixListener, CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError(format!(
                "cannot create {} for the control socket: {e}\n  hint: run as root, or pass --control PATH in a writable directory",
                dir.display()
            ))
        })?;
    }
    if path.exists() {
        // A live node answers; a dead one left a stale socket we may replace.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(CliError(format!(
                "a node is already running with control socket {}\n  hint: give this node another --name or --control",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    mio::net::UnixListener::bind(path).map_err(|e| {
        CliError(format!(
            "cannot create control socket {}: {e}\n  hint: pass --control PATH in a writable directory",
            path.display()
        ))
    })
}

/// Stops the node on SIGINT or SIGTERM.
pub fn stop_on_signals(handle: &NodeHandle) -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let h = handle.clone();
    std::thread::Builder::new()
        .name("tunstack-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: stopping");
                h.stop();
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_addr_prefix_parse() {
        let a: AddrPrefix = "198.18.0.2/24".parse().unwrap();
        assert_eq!(a.addr, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(a.prefix_len, 24);
        assert!("198.18.0.2"
            .parse::<AddrPrefix>()
            .unwrap_err()
            .contains("prefix"));
        assert!("198.18.0.300/24".parse::<AddrPrefix>().is_err());
        assert!("198.18.0.2/33".parse::<AddrPrefix>().is_err());
        assert!("0.0.0.0/0".parse::<AddrPrefix>().is_err());
    }

    #[test]
    fn test_mtu_bounds() {
        assert_eq!(parse_mtu("1500"), Ok(1500));
        assert!(parse_mtu("100").unwrap_err().contains("576"));
        assert!(parse_mtu("70000").is_err());
        assert!(parse_mtu("x").is_err());
    }
}
