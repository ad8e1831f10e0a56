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
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use tun_tap::{Iface, Mode};

use super::Device;

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
    iface: Iface,
    /// Packets the kernel refused because its queue was full (EAGAIN/ENOBUFS).
    send_drops: u64,
}

impl TunDevice {
    /// Attaches to the TUN device `name`, creating it if it does not exist.
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        validate_name(name)?;
        if !Path::new(TUN_PATH).exists() {
            return Err(DeviceError::TunMissing);
        }
        let iface = Iface::without_packet_info(name, Mode::Tun)
            .map_err(|e| classify_open_error(name, e))?;
        set_non_blocking(iface.as_raw_fd()).map_err(|source| DeviceError::Io {
            name: name.into(),
            what: "switching to non-blocking mode failed",
            source,
        })?;
        Ok(TunDevice {
            iface,
            send_drops: 0,
        })
    }

    /// The interface name the kernel settled on.
    pub fn name(&self) -> &str {
        self.iface.name()
    }

    /// Packets dropped because the kernel could not take them right away.
    pub fn send_drops(&self) -> u64 {
        self.send_drops
    }
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
        self.iface.as_raw_fd()
    }
}

impl Device for TunDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.iface.recv(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, pkt: &[u8]) -> io::Result<()> {
        loop {
            match self.iface.send(pkt) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A full queue is congestion, not a fault: lose the packet as
                // a real link would and let the protocols recover.
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    self.send_drops += 1;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "write to TUN device '{}' failed (EIO): is the interface up?",
                            self.name()
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
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
