//! The options every network subcommand shares (`--tun`, `--addr`, `--mtu`, ...), and starting a
//! node from them: opening the device, the capture and the control socket, with an error message
//! for each way that can fail.

use super::CliError;
use crate::device::DeviceError;
use crate::impair::rules::RuleSet;
use crate::impair::ImpairSpec;
use crate::ip::IpConfig;
use crate::node::launch::{launch, LaunchConfig, LaunchError};
use crate::node::{Node, NodeHandle};
use crate::stack::StackConfig;
use crate::tcp::Congestion;
use crate::time::Duration;
use clap::Args;
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

/// A byte count with an optional K, M or G suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a size (a number, optionally with K, M or G)"))
}

fn parse_congestion(s: &str) -> Result<Congestion, String> {
    match s.to_ascii_lowercase().as_str() {
        "cubic" => Ok(Congestion::Cubic),
        "newreno" | "reno" => Ok(Congestion::NewReno),
        "bbr" => Ok(Congestion::Bbr),
        _ => Err(format!(
            "'{s}' is not a congestion control: use cubic, newreno or bbr"
        )),
    }
}

fn parse_time(s: &str) -> Result<Duration, String> {
    crate::impair::parse_duration(s).map_err(|e| e.to_string())
}

/// Keep-alive idle time: a zero or sub-second value would probe a healthy peer constantly.
fn parse_keepalive(s: &str) -> Result<Duration, String> {
    let d = parse_time(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s}: keep-alive idle time must be at least 1s"));
    }
    Ok(d)
}

/// Per-connection buffer: at least a few segments, at most what window scaling can announce.
fn parse_tcp_buffer(s: &str) -> Result<usize, String> {
    const MIN: u64 = 4 << 10;
    const MAX: u64 = 1 << 30;
    let n = parse_size(s)?;
    if !(MIN..=MAX).contains(&n) {
        return Err(format!(
            "{s}: a TCP buffer must be from 4K to 1G (window scaling announces at most 1 GiB)"
        ));
    }
    Ok(n as usize)
}

fn parse_rules(path: &str) -> Result<RuleSet, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read rules file {path}: {e}"))?;
    RuleSet::parse(&text).map_err(|e| format!("{path}: {e}"))
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

    /// Scripted impairment: a rules file (drop the Nth SYN, partition for a while, corrupt a byte; see docs/reliability.md)
    #[arg(long, value_name = "FILE", value_parser = parse_rules)]
    pub impair_rules: Option<RuleSet>,

    /// Where the node keeps its identity, inbox and received files [default: /var/lib/tunstack/NAME]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// When a TCP connection is reset (RST sent or received), write its recent packets to DIR/rst-<unix ms>-<local>-<remote>.pcap (at most 10 files a second)
    #[arg(long, value_name = "DIR")]
    pub rst_dump: Option<PathBuf>,

    /// TCP segmentation offload on the TUN device (IFF_VNET_HDR, TSO4): the kernel and the node exchange TCP super-segments of up to 64 KiB, one system call each instead of one per MTU-sized packet; tcpdump on the device shows the super-segments, --pcap the node's own segments. Not with inbound impairment, which must see wire-sized packets
    #[arg(long, conflicts_with_all = ["impair", "impair_in", "impair_rules"])]
    pub offload: bool,

    /// TCP connections in any state, TIME-WAIT included [default: 16384]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Half-open plus not-yet-accepted connections per listener before SYN cookies answer instead [default: 128]
    #[arg(long, value_name = "N")]
    pub syn_backlog: Option<usize>,

    /// Bytes of TCP send and receive buffers all connections together may reserve (each connection reserves its full buffer sizes; memory is used only while data is queued) [default: 8G]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub tcp_buffer_total: Option<u64>,

    /// Bytes held for IP reassembly across all partial datagrams [default: 4M]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub reassembly_bytes: Option<u64>,

    /// Protocol-170 peers remembered [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_peers: Option<usize>,

    /// Protocol-170 messages queued and not yet delivered, all peers together [default: 65536]
    #[arg(long, value_name = "N")]
    pub max_pending: Option<usize>,

    /// Protocol-171 transfers in progress, each direction [default: 64]
    #[arg(long, value_name = "N")]
    pub max_transfers: Option<usize>,

    /// Largest file accepted or sent over protocol 171, e.g. 100M [default: 4G]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_file_size: Option<u64>,

    /// TCP congestion control for new connections: cubic (RFC 9438), newreno (RFC 6582) or bbr (model-based: bottleneck bandwidth x min RTT, keeps a path busy through random loss) [default: bbr]
    #[arg(long, value_name = "ALGO", value_parser = parse_congestion)]
    pub congestion: Option<Congestion>,

    /// How long a closed TCP connection stays in TIME-WAIT (2 x MSL) to absorb late segments, e.g. 60s or 500ms; the lab default is short [default: 2s]
    #[arg(long, value_name = "DURATION", value_parser = parse_time)]
    pub time_wait: Option<Duration>,

    /// Turn TCP keep-alive on: after this long without traffic, probe the peer (every 75s, 9 times) and reset the connection if it never answers, e.g. 600s (at most 3600s) [default: off]
    #[arg(long, value_name = "DURATION", value_parser = parse_keepalive)]
    pub keepalive: Option<Duration>,

    /// Disable Nagle's algorithm on every connection: send small writes at once instead of holding them until earlier data is acknowledged
    #[arg(long)]
    pub nodelay: bool,

    /// Do not offer or accept selective acknowledgements (RFC 2018); recovery falls back to NewReno (RFC 6582)
    #[arg(long)]
    pub no_sack: bool,

    /// Receive and send buffer of each TCP connection, e.g. 64K or 4M; the receive buffer bounds the advertised window, so throughput is at most BYTES per round trip. Without this option the receive buffer starts at 256K and doubles up to 4M while out-of-order data (loss) fills it [default: 256K]
    #[arg(long, value_name = "BYTES", value_parser = parse_tcp_buffer)]
    pub tcp_buffer: Option<usize>,

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

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/tunstack/{}", self.node_name())))
    }

    pub fn control_path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| default_control_path(&self.node_name()))
    }
}

pub fn default_control_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/tunstack/{name}.sock"))
}

pub use crate::node::launch::{os_random_u64, Prepared};

fn launch_error_hint(e: &LaunchError) -> String {
    let hint = match e {
        LaunchError::Device(d) => match d {
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
        },
        LaunchError::Capture { .. } => "pass --pcap a path in a writable directory",
        LaunchError::ControlSocket { .. } => {
            "run as root, or pass --control PATH in a writable directory"
        }
        LaunchError::AlreadyRunning { .. } => "give this node another --name or --control",
        LaunchError::DataDir { .. } => "pass --data-dir DIR in a writable place",
        LaunchError::RstDump { .. } => "pass --rst-dump DIR in a writable place",
    };
    format!("{e}\n  hint: {hint}")
}

impl From<LaunchError> for CliError {
    fn from(e: LaunchError) -> CliError {
        CliError(launch_error_hint(&e))
    }
}

impl StackOpts {
    /// The launch configuration these options describe.
    pub fn launch_config(&self) -> LaunchConfig {
        let mut cfg = LaunchConfig::new(&self.tun, self.addr.addr, self.addr.prefix_len);
        cfg.mtu = self.mtu;
        cfg.name = self.node_name();
        cfg.pcap = self.pcap.clone();
        cfg.control = Some(self.control_path());
        cfg.data_dir = Some(self.data_dir());
        cfg.seed = self.seed.unwrap_or_else(os_random_u64);
        cfg.impair_rules = self.impair_rules.clone().unwrap_or_default();
        cfg.rst_dump = self.rst_dump.clone();
        cfg.offload = self.offload;
        let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        cfg.limits = crate::node::limits::Limits {
            max_connections: self.max_connections,
            syn_backlog: self.syn_backlog,
            tcp_buffer_total: self.tcp_buffer_total.map(usize_of),
            reassembly_bytes: self.reassembly_bytes.map(usize_of),
            max_peers: self.max_peers,
            max_pending: self.max_pending,
            max_transfers: self.max_transfers,
            max_file_size: self.max_file_size,
            tcp: crate::node::limits::TcpTuning {
                congestion: self.congestion,
                time_wait: self.time_wait,
                keepalive: self.keepalive,
                nodelay: self.nodelay,
                no_sack: self.no_sack,
                buffer: self.tcp_buffer,
            },
        };
        cfg.impair_in = self.impair_in.clone().or_else(|| self.impair.clone());
        cfg.impair_out = self.impair_out.clone().or_else(|| {
            self.impair.clone().map(|mut s| {
                // The same seed both ways would drop correlated packets in each direction.
                s.seed = s.seed.wrapping_add(0x9e37_79b9);
                s
            })
        });
        cfg
    }
}

/// Opens the device, capture, control socket and data directory and builds the node.
/// `configure` adjusts the stack configuration; `setup` installs apps on the node.
pub fn prepare(
    opts: &StackOpts,
    configure: impl FnOnce(&mut StackConfig),
    setup: impl FnOnce(&mut Node) -> Result<(), CliError>,
) -> Result<Prepared, CliError> {
    launch(&opts.launch_config(), configure, setup)
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
    fn test_parse_size_suffixes() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn test_tcp_option_parsers() {
        assert_eq!(parse_congestion("cubic"), Ok(Congestion::Cubic));
        assert_eq!(parse_congestion("NewReno"), Ok(Congestion::NewReno));
        assert_eq!(parse_congestion("BBR"), Ok(Congestion::Bbr));
        assert!(parse_congestion("vegas")
            .unwrap_err()
            .contains("cubic, newreno or bbr"));
        assert_eq!(parse_time("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_keepalive("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_keepalive("0").is_err());
        assert!(parse_keepalive("100ms").is_err());
        assert_eq!(parse_tcp_buffer("64K"), Ok(65_536));
        assert!(parse_tcp_buffer("100").is_err());
        assert!(parse_tcp_buffer("2G").is_err());
    }

    /// The options reach `TcpConfig` through `launch_config`, whichever subcommand parsed them.
    #[test]
    fn test_tcp_options_reach_the_stack_config() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            stack: StackOpts,
        }
        let cmd = Cmd::try_parse_from([
            "t",
            "--addr",
            "198.18.0.2/24",
            "--congestion",
            "newreno",
            "--time-wait",
            "100ms",
            "--keepalive",
            "10s",
            "--nodelay",
            "--no-sack",
            "--tcp-buffer",
            "1M",
        ])
        .unwrap();
        let mut cfg = StackConfig::new(cmd.stack.addr.addr, 24, 1500, 1);
        cmd.stack.launch_config().limits.apply(&mut cfg);
        assert_eq!(cfg.tcp.congestion, Congestion::NewReno);
        assert_eq!(cfg.tcp.time_wait, Duration::from_millis(100));
        assert_eq!(cfg.tcp.keepalive, Some(Duration::from_secs(10)));
        assert!(cfg.tcp.nodelay && !cfg.tcp.sack);
        assert_eq!(cfg.tcp.rx_buffer, 1 << 20);
        assert_eq!(cfg.tcp.tx_buffer, 1 << 20);
        let plain = Cmd::try_parse_from(["t", "--addr", "198.18.0.2/24"]).unwrap();
        let mut cfg = StackConfig::new(plain.stack.addr.addr, 24, 1500, 1);
        plain.stack.launch_config().limits.apply(&mut cfg);
        assert_eq!(cfg.tcp.keepalive, None);
        assert!(cfg.tcp.sack && !cfg.tcp.nodelay);
    }

    #[test]
    fn test_mtu_bounds() {
        assert_eq!(parse_mtu("1500"), Ok(1500));
        assert!(parse_mtu("100").unwrap_err().contains("576"));
        assert!(parse_mtu("70000").is_err());
        assert!(parse_mtu("x").is_err());
    }
}
