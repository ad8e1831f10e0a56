//! Wire formats: parsing and emitting packets, with no state and no I/O.
//!
//! Each format has a parsed, validated representation (`*Repr`) with `parse` and `emit`. Parsing never
//! panics, whatever the input; emitting writes into a buffer the caller owns.

pub mod checksum;
pub mod icmp;
pub mod ipv4;

/// IP protocol numbers the stack knows by name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    Icmp,
    Tcp,
    Udp,
    /// Protocol 170: tunstack reliable messages.
    Msg,
    /// Protocol 171: tunstack file transfer.
    File,
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(n: u8) -> IpProtocol {
        match n {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            170 => IpProtocol::Msg,
            171 => IpProtocol::File,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(p: IpProtocol) -> u8 {
        match p {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Msg => 170,
            IpProtocol::File => 171,
            IpProtocol::Unknown(n) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_protocol_numbers_round_trip() {
        for n in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(n)), n);
        }
        assert_eq!(IpProtocol::from(170), IpProtocol::Msg);
    }
}
