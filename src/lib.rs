//! tunstack: a userspace TCP/IP stack on a Linux TUN device.

pub mod device;
