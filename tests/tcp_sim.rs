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

fn lossy(seed: u64, spec: &str, n: usize, limit_s: u64) -> f64 {
    let (mut sim, a, b) = pair(seed, spec, TcpConfig::default(), TcpConfig::default());
    let out = transfer(
        &mut sim,
        a,
        b,
        data(seed, n),
        data(seed + 1, n / 4),
        Duration::from_secs(limit_s),
    );
    let g = goodput_mbit(n, out.elapsed);
    eprintln!(
        "{spec}: {n} bytes in {:?}, {g:.1} Mbit/s, a: {:?}",
        out.elapsed,
        tcp(&mut sim, a).counters()
    );
    g
}

#[test]
fn test_loss_1pct() {
    lossy(3, "loss=1%,delay=10ms,rate=50mbit", 2_000_000, 120);
}

#[test]
fn test_loss_5pct_reorder_dup_corrupt() {
    lossy(
        4,
        "loss=5%,reorder=5%:10ms,dup=1%,corrupt=0.5%,delay=10ms~2ms,rate=50mbit",
        1_000_000,
        300,
    );
}

#[test]
fn test_loss_20pct() {
    lossy(5, "loss=20%,delay=10ms,rate=50mbit", 200_000, 600);
}
