//! Loss recovery that must not wait for the retransmission timeout: a lost tail, a lost
//! retransmission, a lost retransmission after a timeout. Each test drops exactly the
//! packets it names (a simulator filter), so the outcome is deterministic: the transfer ends
//! well inside the RTO floor (200 ms) and the counters say which mechanism repaired it.

mod tcp_common;

use std::cell::RefCell;
use std::rc::Rc;
use tcp_common::*;
use tunstack::sim::Sim;
use tunstack::tcp::TcpConfig;
use tunstack::time::Duration;

/// A TCP segment's sequence number, payload length and flags; `None` for anything else.
fn segment(p: &[u8]) -> Option<(u32, usize, u8)> {
    if p.len() < 40 || p[9] != 6 {
        return None;
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    let t = p.get(ihl..)?;
    let off = (t[12] >> 4) as usize * 4;
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    Some((seq, total.checked_sub(ihl + off)?, t[13]))
}

const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const MSS: u32 = 1448;

/// Drops A's data segments for which `drop(offset_in_stream, copy, flags)` holds; `copy`
/// counts transmissions of the same offset from 1.
fn drop_from_a(sim: &mut Sim, drop: impl Fn(u32, u32, u8) -> bool + 'static) -> Rc<RefCell<u32>> {
    let dropped = Rc::new(RefCell::new(0u32));
    let d = dropped.clone();
    let isn: RefCell<Option<u32>> = RefCell::new(None);
    let seen: RefCell<std::collections::HashMap<u32, u32>> = RefCell::default();
    sim.set_filter(Box::new(move |_, from, _, p| {
        let Some((seq, len, flags)) = segment(p) else {
            return true;
        };
        if from.0 != 0 {
            return true;
        }
        if flags & SYN != 0 {
            *isn.borrow_mut() = Some(seq);
            return true;
        }
        let Some(isn) = *isn.borrow() else {
            return true;
        };
        if len == 0 {
            return true;
        }
        let off = seq.wrapping_sub(isn.wrapping_add(1));
        let mut seen = seen.borrow_mut();
        let n = seen.entry(off).or_insert(0);
        *n += 1;
        if drop(off, *n, flags) {
            *d.borrow_mut() += 1;
            false
        } else {
            true
        }
    }));
    dropped
}

fn cfg() -> TcpConfig {
    TcpConfig::default()
}

#[test]
fn test_lost_tail_is_repaired_by_a_loss_probe() {
    let (mut sim, a, b) = pair(1, "delay=1ms", cfg(), cfg());
    // The write's last segment carries PSH: lose its first copy. No later segment exists to
    // produce duplicate ACKs, so only a probe (or the RTO) can find the loss.
    let dropped = drop_from_a(&mut sim, |_, n, flags| flags & PSH != 0 && n == 1);
    let out = transfer(
        &mut sim,
        a,
        b,
        data(1, 40_000),
        vec![],
        Duration::from_secs(5),
    );
    let c = tcp(&mut sim, a).counters().clone();
    assert_eq!(*dropped.borrow(), 1);
    assert!(c.loss_probes >= 1, "no loss probe: {c:?}");
    assert_eq!(c.rto_timeouts, 0, "the RTO repaired it: {c:?}");
    assert!(
        out.elapsed < Duration::from_millis(100),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn test_lost_retransmission_is_resent_before_the_rto() {
    let (mut sim, a, b) = pair(2, "delay=1ms", cfg(), cfg());
    // The 12th segment and its first retransmission are lost; plenty of data follows, so the
    // SACKs for it show the retransmission missing.
    let dropped = drop_from_a(&mut sim, |off, n, _| off == 11 * MSS && n <= 2);
    let out = transfer(
        &mut sim,
        a,
        b,
        data(2, 400_000),
        vec![],
        Duration::from_secs(5),
    );
    let c = tcp(&mut sim, a).counters().clone();
    assert_eq!(*dropped.borrow(), 2);
    assert!(
        c.lost_retransmits >= 1,
        "lost retransmission not detected: {c:?}"
    );
    assert_eq!(c.rto_timeouts, 0, "the RTO repaired it: {c:?}");
    assert!(
        out.elapsed < Duration::from_millis(150),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn test_segment_lost_three_times_still_avoids_most_timeouts() {
    // Original, fast retransmission and the probe-driven resend all lost: the later probes
    // keep trying, and the data arrives intact in any case.
    let (mut sim, a, b) = pair(3, "delay=1ms", cfg(), cfg());
    let dropped = drop_from_a(&mut sim, |off, n, _| off == 20 * MSS && n <= 3);
    let out = transfer(
        &mut sim,
        a,
        b,
        data(3, 300_000),
        vec![],
        Duration::from_secs(5),
    );
    let c = tcp(&mut sim, a).counters().clone();
    assert_eq!(*dropped.borrow(), 3);
    assert_eq!(c.rto_timeouts, 0, "{c:?}");
    assert!(
        out.elapsed < Duration::from_millis(200),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn test_timeout_whose_retransmission_is_lost_recovers_by_sack() {
    // Everything A sends between 20 ms and 400 ms is lost (a partition), so the RTO fires,
    // and its first retransmission is lost too. Once the path is back, the SACKs for the
    // go-back-N data show SND.UNA missing, and recovery resends it without a second,
    // doubled timeout.
    let (mut sim, a, b) = pair(4, "delay=1ms", cfg(), cfg());
    let resent: RefCell<u32> = RefCell::new(0);
    let una_at_cut: RefCell<Option<u32>> = RefCell::new(None);
    sim.set_filter(Box::new(move |now, from, _, p| {
        let Some((seq, len, flags)) = segment(p) else {
            return true;
        };
        if from.0 != 0 {
            return true;
        }
        if flags & SYN != 0 {
            return true;
        }
        let ms = now.as_millis();
        if (20..400).contains(&ms) {
            if len > 0 && una_at_cut.borrow().is_none() {
                *una_at_cut.borrow_mut() = Some(seq);
            }
            return false;
        }
        // After the partition: lose the first copy of the lowest segment cut off.
        if let Some(first) = *una_at_cut.borrow() {
            if len > 0 && seq == first && *resent.borrow() == 0 {
                *resent.borrow_mut() += 1;
                return false;
            }
        }
        true
    }));
    let out = transfer(
        &mut sim,
        a,
        b,
        data(4, 2_000_000),
        vec![],
        Duration::from_secs(10),
    );
    let c = tcp(&mut sim, a).counters().clone();
    assert!(
        c.rto_timeouts >= 1,
        "the partition must cause a timeout: {c:?}"
    );
    // One timeout during the partition may double into a second before it heals; after
    // it, no third.
    assert!(c.rto_timeouts <= 2, "{c:?}");
    assert!(
        out.elapsed < Duration::from_millis(1500),
        "took {:?}",
        out.elapsed
    );
}

/// The SACK blocks of a TCP segment and its acknowledgment number.
fn sack_blocks(p: &[u8]) -> Option<(u32, Vec<(u32, u32)>)> {
    segment(p)?;
    let ihl = (p[0] & 0x0f) as usize * 4;
    let t = &p[ihl..];
    let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    let off = (t[12] >> 4) as usize * 4;
    let mut opts = &t[20..off];
    let mut blocks = Vec::new();
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => opts = &opts[1..],
            _ => {
                let len = *opts.get(1)? as usize;
                if len < 2 || len > opts.len() {
                    return None;
                }
                if kind == 5 {
                    for b in opts[2..len].chunks_exact(8) {
                        let l = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        let r = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                        blocks.push((l, r));
                    }
                }
                opts = &opts[len..];
            }
        }
    }
    Some((ack, blocks))
}

#[test]
fn test_duplicate_data_is_reported_with_a_dsack_block() {
    // B's ACKs are lost for a while, so A's probe resends data B already holds; B's answer
    // names that data in a first SACK block below its cumulative ACK (RFC 2883), which is how
    // the sender learns the retransmission was spurious.
    let (mut sim, a, b) = pair(5, "delay=1ms", cfg(), cfg());
    let dsacks: Rc<RefCell<u32>> = Rc::default();
    let seen = dsacks.clone();
    sim.set_filter(Box::new(move |now, from, _, p| {
        if from.0 == 1 {
            if let Some((ack, blocks)) = sack_blocks(p) {
                if blocks
                    .first()
                    .is_some_and(|&(l, r)| r.wrapping_sub(ack) as i32 <= 0 && l != r)
                {
                    *seen.borrow_mut() += 1;
                }
            }
            let ms = now.as_millis();
            return !(3..30).contains(&ms);
        }
        true
    }));
    // All of it is in flight before the ACKs start to vanish, so the probes resend old data.
    transfer(
        &mut sim,
        a,
        b,
        data(5, 12_000),
        vec![],
        Duration::from_secs(5),
    );
    // B has everything; A learns it only once the ACKs come through again.
    sim.run_for(Duration::from_millis(300));
    let c = tcp(&mut sim, a).counters().clone();
    assert!(c.retransmits >= 1, "nothing was resent: {c:?}");
    assert!(*dsacks.borrow() >= 1, "no D-SACK block seen");
}

/// Sends 4 MB A->B over 1 ms; one segment near 2 MB, when a full window is in flight, is lost
/// twice: the first copy and its retransmission. Returns the time taken, A's timeouts and B's
/// receive-buffer growths.
fn lossy_bulk(b_cfg: TcpConfig) -> (Duration, u64, u64) {
    let (mut sim, a, b) = pair(7, "delay=1ms", cfg(), b_cfg);
    drop_from_a(&mut sim, |off, n, _| n <= 2 && off == 1381 * MSS);
    let out = transfer(
        &mut sim,
        a,
        b,
        data(7, 4_000_000),
        vec![],
        Duration::from_secs(60),
    );
    let ca = tcp(&mut sim, a).counters().clone();
    let cb = tcp(&mut sim, b).counters().clone();
    (out.elapsed, ca.rto_timeouts, cb.rx_buffer_grown)
}

#[test]
fn test_receive_buffer_grows_for_out_of_order_data() {
    // A hole keeps data waiting beyond it; once that data fills half the buffer, the receiver
    // doubles it so the sender keeps sending new data, which is also what lets a RACK sender
    // see a lost retransmission before its RTO.
    let (t_grow, rto_grow, grown) = lossy_bulk(cfg());
    let fixed = TcpConfig {
        rx_buffer_max: 0,
        ..cfg()
    };
    let (t_fixed, rto_fixed, not_grown) = lossy_bulk(fixed);
    println!(
        "4 MB, one segment lost twice, 1 ms: {t_grow:?} with autotuning ({grown} doublings, {rto_grow} RTOs), \
         {t_fixed:?} with a fixed 256 KiB buffer ({rto_fixed} RTOs)"
    );
    assert!(grown >= 1 && not_grown == 0);
    // Our own sender repairs the twice-lost segment with a probe either way; the kernel's
    // needs new data to flow (netns figures in docs/benchmarks.md). Growth must not cost.
    assert!(t_grow <= t_fixed, "{t_grow:?} vs {t_fixed:?}");
    assert_eq!((rto_grow, rto_fixed), (0, 0));
}

#[test]
fn test_slow_reader_and_budget_do_not_grow_the_buffer() {
    // In-order data that the application leaves unread is not a reason to buffer more.
    let (mut sim, a, b) = pair(8, "delay=1ms", cfg(), cfg());
    transfer_with(
        &mut sim,
        a,
        b,
        data(8, 2_000_000),
        vec![],
        Duration::from_secs(60),
        |now, got| got > 100_000 && now.as_millis() < 2000,
    );
    assert_eq!(tcp(&mut sim, b).counters().rx_buffer_grown, 0);
    // Out-of-order data with no budget left: the growth is refused and counted.
    let tight = TcpConfig {
        max_buffer_total: 2 * 256 * 1024,
        ..cfg()
    };
    let (_, _, grown) = lossy_bulk(tight);
    assert_eq!(grown, 0);
}

#[test]
fn test_out_of_order_run_is_acknowledged_once_per_batch() {
    // One segment of a flight is lost: the segment after the hole opens a SACK block and is
    // answered at once; the rest of the flight only extends that block and shares the ACK at
    // the end of the batch, as GRO would make it. Before, each drew its own ACK.
    let (mut sim, a, b) = pair(9, "delay=1ms", cfg(), cfg());
    drop_from_a(&mut sim, |off, n, _| n == 1 && off == 2 * MSS);
    let acks: Rc<RefCell<u32>> = Rc::default();
    let count = acks.clone();
    sim.set_tap(Box::new(move |_, from, _, p| {
        if from.0 == 1 && segment(p).is_some_and(|(_, len, _)| len == 0) {
            *count.borrow_mut() += 1;
        }
    }));
    let out = transfer(
        &mut sim,
        a,
        b,
        data(9, 14_480),
        vec![],
        Duration::from_secs(5),
    );
    let acks = *acks.borrow();
    println!(
        "10 segments, the third lost: {acks} ACKs from B in {:?}",
        out.elapsed
    );
    assert!(acks <= 6, "{acks} ACKs");
}

#[test]
fn test_bbr_keeps_the_path_busy_through_random_loss() {
    // 5 % random loss both ways: a loss-based window settles near the five segments RFC 5681's
    // arithmetic allows, while the model-based one keeps twice the bandwidth-delay product in
    // flight. Same seed, same path; only the sender's algorithm differs.
    let run = |congestion| {
        let a = TcpConfig {
            congestion,
            ..cfg()
        };
        let (mut sim, ha, hb) = pair(11, "loss=5%,delay=1ms", a, cfg());
        let out = transfer(
            &mut sim,
            ha,
            hb,
            data(11, 4_000_000),
            vec![],
            Duration::from_secs(600),
        );
        let mbit = goodput_mbit(4_000_000, out.elapsed);
        (mbit, tcp(&mut sim, ha).counters().rto_timeouts)
    };
    use tunstack::tcp::Congestion;
    let (bbr, bbr_rto) = run(Congestion::Bbr);
    let (cubic, cubic_rto) = run(Congestion::Cubic);
    let (reno, _) = run(Congestion::NewReno);
    println!(
        "4 MB through 5 % loss, 1 ms each way: bbr {bbr:.1} Mbit/s ({bbr_rto} RTOs), \
         cubic {cubic:.1} ({cubic_rto} RTOs), newreno {reno:.1}"
    );
    assert!(
        bbr > 3.0 * cubic.max(reno),
        "bbr {bbr:.1} vs cubic {cubic:.1}, newreno {reno:.1}"
    );
}
