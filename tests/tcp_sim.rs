//! End-to-end tests of our TCP against itself in the deterministic simulator.

mod tcp_common;

use tcp_common::*;
use tunstack::tcp::{TcpConfig, TcpState};
use tunstack::time::Duration;

#[test]
fn test_small_transfer_clean_link() {
    let (mut sim, a, b) = pair(1, "delay=5ms", TcpConfig::default(), TcpConfig::default());
    let out = transfer(
        &mut sim,
        a,
        b,
        data(1, 100_000),
        data(2, 50_000),
        Duration::from_secs(30),
    );
    eprintln!("elapsed {:?}", out.elapsed);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(tcp(&mut sim, a).connection_count(), 0);
    assert_eq!(tcp(&mut sim, b).connection_count(), 0);
    let _ = TcpState::Closed;
}
