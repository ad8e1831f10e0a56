//! The Linux TUN device.
//!
//! [`TunDevice::open`] attaches to a persistent TUN device (as made by
//! `ip tuntap add dev tun0 mode tun`, which the lab script does inside a
//! namespace) or, if none of that name exists, creates one that vanishes when
//! this process closes it. A device created here has no address and is down:
//! whoever created it must configure it, e.g.
//! `ip addr add 198.18.0.1/24 dev tun0 && ip link set tun0 up`. The lab script
//! does both for its persistent devices, which is why the stack never
//! configures interfaces itself.
//!
//! The device is opened without the packet-info prefix, so every read and
//! write is exactly one bare IP packet, and in non-blocking mode, so the
//! driver registers [`as_raw_fd`](std::os::fd::AsRawFd::as_raw_fd) with mio
//! (`SourceFd`) and drains it until [`Device::recv`] returns `Ok(None)`.

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use tun_tap::{Iface, Mode};

use super::offload::{complete_checksum, TsoBatch, VnetHdr, GSO_NONE, VNET_HDR_LEN};
use super::{Device, DeviceStats};

/// Where the kernel's TUN clone device lives.
pub const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name Linux accepts (IFNAMSIZ minus the terminating NUL).
pub const MAX_NAME_LEN: usize = 15;

/// Why a TUN device could not be opened.
#[derive(Debug)]
pub enum DeviceError {
    /// `/dev/net/tun` does not exist or has no driver behind it.
    TunMissing,
    /// The process lacks CAP_NET_ADMIN, or the persistent device belongs to
    /// another user.
    PermissionDenied { name: String },
    /// Another process already has the (single-queue) device open.
    Busy { name: String },
    /// The name exceeds [`MAX_NAME_LEN`] bytes; the kernel would silently cut it.
    NameTooLong { name: String },
    /// The name is empty or contains characters Linux forbids in interface names.
    InvalidName { name: String },
    /// A device of that name exists but is not a compatible TUN device
    /// (a TAP device, or a multi-queue one).
    Incompatible { name: String },
    /// Any other failure from the operating system.
    Io {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::TunMissing => write!(
                f,
                "{TUN_PATH} is missing: load the tun module (modprobe tun) or, in a container, \
                 pass the device through (--device {TUN_PATH})"
            ),
            DeviceError::PermissionDenied { name } => write!(
                f,
                "permission denied opening TUN device '{name}': run as root or grant \
                 CAP_NET_ADMIN (a persistent device may also belong to another user)"
            ),
            DeviceError::Busy { name } => write!(
                f,
                "TUN device '{name}' is busy: another process (another tunstack node?) \
                 already has it open"
            ),
            DeviceError::NameTooLong { name } => write!(
                f,
                "interface name '{name}' is {} bytes long; Linux allows at most {MAX_NAME_LEN}",
                name.len()
            ),
            DeviceError::InvalidName { name } => write!(
                f,
                "'{name}' is not a valid interface name (empty, '.', '..', or contains \
                 '/', ':' or whitespace)"
            ),
            DeviceError::Incompatible { name } => write!(
                f,
                "'{name}' exists but is not a single-queue TUN device; recreate it with \
                 'ip tuntap add dev {name} mode tun'"
            ),
            DeviceError::Io { name, what, source } => {
                write!(f, "TUN device '{name}': {what}: {source}")
            }
        }
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeviceError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<DeviceError> for io::Error {
    fn from(e: DeviceError) -> io::Error {
        let kind = match &e {
            DeviceError::TunMissing => io::ErrorKind::NotFound,
            DeviceError::PermissionDenied { .. } => io::ErrorKind::PermissionDenied,
            // ErrorKind::ResourceBusy needs Rust 1.83; the crate supports 1.80.
            DeviceError::Busy { .. } => io::ErrorKind::Other,
            DeviceError::NameTooLong { .. } | DeviceError::InvalidName { .. } => {
                io::ErrorKind::InvalidInput
            }
            DeviceError::Incompatible { .. } => io::ErrorKind::InvalidInput,
            DeviceError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// Checks `name` the way the kernel's `dev_valid_name` does, plus the length
/// limit the tun-tap crate would otherwise enforce by silent truncation.
pub fn validate_name(name: &str) -> Result<(), DeviceError> {
    if name.len() > MAX_NAME_LEN {
        return Err(DeviceError::NameTooLong { name: name.into() });
    }
    let bad_char = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    if name.is_empty() || name == "." || name == ".." || name.contains(bad_char) {
        return Err(DeviceError::InvalidName { name: name.into() });
    }
    Ok(())
}

/// Turns the OS error of the attach step into a [`DeviceError`].
///
/// The tun-tap crate reports opening `/dev/net/tun` and the `TUNSETIFF` ioctl
/// through one `io::Error`, so the errno alone decides.
pub fn classify_open_error(name: &str, err: io::Error) -> DeviceError {
    let name = name.to_string();
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => DeviceError::TunMissing,
        Some(libc::EPERM) | Some(libc::EACCES) => DeviceError::PermissionDenied { name },
        Some(libc::EBUSY) => DeviceError::Busy { name },
        Some(libc::EINVAL) => DeviceError::Incompatible { name },
        _ => DeviceError::Io {
            name,
            what: "attaching to the device failed",
            source: err,
        },
    }
}

/// A TUN device in non-blocking mode, carrying bare IP packets.
#[derive(Debug)]
pub struct TunDevice {
    io: Io,
    stats: DeviceStats,
}

#[derive(Debug)]
enum Io {
    /// One bare IP packet per read and write, through the tun-tap crate.
    Plain(Iface),
    /// `IFF_VNET_HDR` with TSO (see [`super::offload`]): opened here, since the crate has no
    /// way to ask for the header.
    Offload {
        file: File,
        name: String,
        batch: TsoBatch,
    },
}

impl TunDevice {
    /// Attaches to the TUN device `name`, creating it if it does not exist.
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        Self::open_with(name, false)
    }

    /// As [`open`](Self::open); with `offload`, TCP moves through the device in super-segments
    /// of up to 64 KiB (see [`super::offload`]).
    pub fn open_with(name: &str, offload: bool) -> Result<Self, DeviceError> {
        validate_name(name)?;
        if !Path::new(TUN_PATH).exists() {
            return Err(DeviceError::TunMissing);
        }
        let io_err = |what: &'static str| {
            move |source| DeviceError::Io {
                name: name.into(),
                what,
                source,
            }
        };
        let io = if offload {
            let (file, kernel_name) = open_vnet(name)?;
            set_offload(file.as_raw_fd(), libc::TUN_F_CSUM | libc::TUN_F_TSO4)
                .map_err(io_err("enabling TSO on the device failed"))?;
            Io::Offload {
                file,
                name: kernel_name,
                batch: TsoBatch::new(),
            }
        } else {
            let iface = Iface::without_packet_info(name, Mode::Tun)
                .map_err(|e| classify_open_error(name, e))?;
            // A persistent device keeps the offloads an earlier `--offload` run switched on;
            // without the header the kernel would hand this reader super-segments.
            set_offload(iface.as_raw_fd(), 0).map_err(io_err("resetting offloads failed"))?;
            Io::Plain(iface)
        };
        let dev = TunDevice {
            io,
            stats: DeviceStats::default(),
        };
        set_non_blocking(dev.as_raw_fd())
            .map_err(io_err("switching to non-blocking mode failed"))?;
        Ok(dev)
    }

    /// The interface name the kernel settled on.
    pub fn name(&self) -> &str {
        match &self.io {
            Io::Plain(iface) => iface.name(),
            Io::Offload { name, .. } => name,
        }
    }

    /// Packets dropped because the kernel could not take them right away.
    pub fn send_drops(&self) -> u64 {
        self.stats.send_drops
    }

    /// Whether the device moves TCP super-segments.
    pub fn offload(&self) -> bool {
        matches!(self.io, Io::Offload { .. })
    }

    fn write_offload(&mut self, hdr: &[u8], pkt: &[u8]) -> io::Result<()> {
        let Io::Offload { file, .. } = &self.io else {
            unreachable!("write_offload on a plain device");
        };
        // One writev: the TUN driver takes each write as one packet.
        (&*file)
            .write_vectored(&[IoSlice::new(hdr), IoSlice::new(pkt)])
            .map(drop)
    }

    /// Writes the pending super-segment, if any.
    fn flush_batch(&mut self) -> io::Result<()> {
        let Io::Offload { file, batch, .. } = &mut self.io else {
            return Ok(());
        };
        let segments = batch.segments();
        let Some(bytes) = batch.finish() else {
            return Ok(());
        };
        if segments > 1 {
            self.stats.offload_tx_super += 1;
            self.stats.offload_tx_segments += segments as u64;
        }
        let result = loop {
            match (&*file).write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map(drop),
            }
        };
        self.sent(result)
    }

    /// Applies the device's write policy to the outcome of one write.
    fn sent(&mut self, result: io::Result<()>) -> io::Result<()> {
        match result {
            Ok(()) => Ok(()),
            // A full queue is congestion, not a fault: lose the packet as a real link would
            // and let the protocols recover.
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                self.stats.send_drops += 1;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Err(io::Error::new(
                e.kind(),
                format!(
                    "write to TUN device '{}' failed (EIO): is the interface up?",
                    self.name()
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

/// `open` + `TUNSETIFF` with `IFF_VNET_HDR`, as the tun-tap crate does without it. Returns the
/// file and the name the kernel confirmed.
fn open_vnet(name: &str) -> Result<(File, String), DeviceError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(|e| classify_open_error(name, e))?;
    // struct ifreq: the name (IFNAMSIZ bytes), then a union whose first member is the flags.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough for.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(classify_open_error(name, io::Error::last_os_error()));
    }
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(DeviceError::Io {
            name: name.into(),
            what: "setting the virtio header size failed",
            source: io::Error::last_os_error(),
        });
    }
    let end = ifr[..16].iter().position(|&b| b == 0).unwrap_or(16);
    let kernel_name = String::from_utf8_lossy(&ifr[..end]).into_owned();
    Ok((file, kernel_name))
}

fn set_offload(fd: RawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// The crate's own `set_non_blocking` needs a feature we do not enable; the
// fcntl is one line anyway.
fn set_non_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        match &self.io {
            Io::Plain(iface) => iface.as_raw_fd(),
            Io::Offload { file, .. } => file.as_raw_fd(),
        }
    }
}

impl Device for TunDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let got = match &mut self.io {
                Io::Plain(iface) => iface.recv(buf),
                Io::Offload { file, .. } => {
                    let mut hdr = [0u8; VNET_HDR_LEN];
                    let read = (&*file)
                        .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)]);
                    match read {
                        Err(e) => Err(e),
                        Ok(n) if n < VNET_HDR_LEN => {
                            self.stats.offload_rx_bad += 1;
                            continue;
                        }
                        Ok(n) => {
                            let n = n - VNET_HDR_LEN;
                            let hdr = VnetHdr::parse(&hdr);
                            if hdr.gso_type != GSO_NONE {
                                self.stats.offload_rx_super += 1;
                            }
                            if complete_checksum(&mut buf[..n], &hdr).is_err() {
                                self.stats.offload_rx_bad += 1;
                                continue;
                            }
                            Ok(n)
                        }
                    }
                }
            };
            match got {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        loop {
            let result = match &mut self.io {
                Io::Plain(iface) => iface.send(pkt).map(|_| ()),
                Io::Offload { batch, .. } => {
                    if batch.offer(pkt) {
                        return Ok(());
                    }
                    if !batch.is_empty() {
                        self.flush_batch()?;
                        continue;
                    }
                    self.write_offload(&[0u8; VNET_HDR_LEN], pkt)
                }
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return self.sent(other),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_batch()
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_name_limits() {
        assert!(validate_name("tun0").is_ok());
        assert!(validate_name("a23456789012345").is_ok());
        let err = validate_name("a234567890123456").unwrap_err();
        assert!(matches!(err, DeviceError::NameTooLong { .. }));
        assert!(err.to_string().contains("at most 15"));
        for bad in ["", ".", "..", "a/b", "a:b", "a b"] {
            assert!(
                matches!(validate_name(bad), Err(DeviceError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn test_open_errors_are_classified_by_errno() {
        let os = io::Error::from_raw_os_error;
        assert!(matches!(
            classify_open_error("tun0", os(libc::ENOENT)),
            DeviceError::TunMissing
        ));
        assert!(matches!(
            classify_open_error("tun0", os(libc::EPERM)),
            DeviceError::PermissionDenied { .. }
        ));
        assert!(matches!(
            classify_open_error("tun0", os(libc::EACCES)),
            DeviceError::PermissionDenied { .. }
        ));
        let busy = classify_open_error("tun0", os(libc::EBUSY));
        assert!(busy.to_string().contains("busy"));
        assert!(matches!(
            classify_open_error("tun0", os(libc::EINVAL)),
            DeviceError::Incompatible { .. }
        ));
        let other = classify_open_error("tun0", os(libc::EMFILE));
        assert!(matches!(other, DeviceError::Io { .. }));
        assert_eq!(
            io::Error::from(classify_open_error("t", os(libc::EBUSY))).kind(),
            io::ErrorKind::Other
        );
    }

    #[test]
    fn test_messages_name_the_remedy() {
        assert!(DeviceError::TunMissing.to_string().contains("modprobe tun"));
        let perm = DeviceError::PermissionDenied {
            name: "tun0".into(),
        };
        assert!(perm.to_string().contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn test_open_rejects_long_name_before_touching_the_system() {
        let err = TunDevice::open("this-name-is-too-long").unwrap_err();
        assert!(matches!(err, DeviceError::NameTooLong { .. }));
    }
}
