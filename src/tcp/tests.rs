//! Endpoint-level unit tests; end-to-end behaviour is in `tests/tcp_sim.rs`.

use super::*;

#[test]
fn test_state_names_match_ss() {
    assert_eq!(TcpState::Established.to_string(), "ESTAB");
    assert_eq!(TcpState::SynReceived.to_string(), "SYN-RECV");
    assert_eq!(TcpState::TimeWait.to_string(), "TIME-WAIT");
    assert_eq!(
        serde_json::to_string(&TcpState::FinWait1).unwrap(),
        "\"FIN-WAIT-1\""
    );
}

#[test]
fn test_listen_twice_is_addr_in_use_and_stale_handles_refused() {
    let mut t = Tcp::new(
        TcpConfig::default(),
        Ipv4Addr::new(10, 0, 0, 1),
        Rng::new(1),
    );
    let l = t.listen(80).unwrap();
    assert_eq!(t.listen(80), Err(TcpError::AddrInUse));
    t.unlisten(l);
    assert!(!t.listener_ready(l));
    let l2 = t.listen(80).unwrap();
    assert_ne!(l, l2);
    assert_eq!(t.accept(l), None);
    let c = t
        .connect(
            Instant::ZERO,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
        )
        .unwrap();
    assert_eq!(t.state(c), Some(TcpState::SynSent));
    assert_eq!(t.poll_at(), Some(Instant::ZERO));
    t.close(c);
    assert_eq!(t.state(c), None);
    assert_eq!(t.send(c, b"x"), Err(TcpError::InvalidHandle));
}
