//! Random and mutated input through every parser and state machine entry (issue 8), on stable
//! Rust: the same harnesses as the cargo-fuzz targets (`fuzz/src/lib.rs`), driven by proptest
//! with random bytes and with the committed seeds (`fuzz/seeds/`) mutated. Each harness asserts
//! its own invariants; a failure prints the shrunk input, which `cargo fuzz run <target> FILE`
//! replays once written to a file.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use proptest::prelude::*;
use std::path::Path;

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 9] = [
    ("ip_input", harness::ip_input),
    ("tcp_listen", harness::tcp_listen),
    ("tcp_established", harness::tcp_established),
    ("msg_decode", harness::msg_decode),
    ("file_decode", harness::file_decode),
    ("file_receiver", harness::file_receiver),
    ("session_frame", harness::session_frame),
    ("cat_record", harness::cat_record),
    ("relay_frame", harness::relay_frame),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One edit of a seed, as a fuzzer makes them.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Edit::Set(i, v)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Remove(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(i, b) => {
                if !v.is_empty() {
                    v[i % n] ^= 1 << b;
                }
            }
            Edit::Set(i, x) => {
                if !v.is_empty() {
                    v[i % n] = *x;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, b.iter().copied());
            }
            Edit::Remove(i, k) => {
                if !v.is_empty() {
                    let at = i % n;
                    let end = (at + k).min(v.len());
                    v.drain(at..end);
                }
            }
            Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
        }
    }
    v
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with the input; no files written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn test_seeds_run_clean() {
    for (name, f) in TARGETS {
        let s = seeds(name);
        assert!(!s.is_empty(), "no seeds for {name} in fuzz/seeds/{name}");
        for seed in s {
            f(&seed);
        }
    }
}

#[test]
fn test_regressions_run_clean() {
    // Issue 8: inputs that once crashed a target stay in fuzz/regressions/<target>/. The first,
    // file_receiver/oom-memstore-4gib-offer, offered a 3.7 GB file that MemStore allocated whole.
    for (name, f) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(name);
        let Ok(d) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in d.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                f(&b);
            }
        }
    }
}

macro_rules! random_and_mutated {
    ($random:ident, $mutated:ident, $target:literal, $f:path, $cases:expr, $max:expr) => {
        proptest! {
            #![proptest_config(config($cases))]

            #[test]
            fn $random(data in proptest::collection::vec(any::<u8>(), 0..$max)) {
                $f(&data);
            }

            #[test]
            fn $mutated(
                pick in any::<usize>(),
                edits in proptest::collection::vec(edit(), 1..8),
            ) {
                let s = seeds($target);
                prop_assume!(!s.is_empty());
                let base = s[pick % s.len()].clone();
                $f(&apply(base, &edits));
            }
        }
    };
}

random_and_mutated!(
    test_ip_input_random,
    test_ip_input_mutated,
    "ip_input",
    harness::ip_input,
    2000,
    2048
);
random_and_mutated!(
    test_tcp_listen_random,
    test_tcp_listen_mutated,
    "tcp_listen",
    harness::tcp_listen,
    2000,
    1024
);
random_and_mutated!(
    test_tcp_established_random,
    test_tcp_established_mutated,
    "tcp_established",
    harness::tcp_established,
    2000,
    1024
);
random_and_mutated!(
    test_msg_decode_random,
    test_msg_decode_mutated,
    "msg_decode",
    harness::msg_decode,
    4000,
    512
);
random_and_mutated!(
    test_file_decode_random,
    test_file_decode_mutated,
    "file_decode",
    harness::file_decode,
    4000,
    512
);
random_and_mutated!(
    test_file_receiver_random,
    test_file_receiver_mutated,
    "file_receiver",
    harness::file_receiver,
    2000,
    1024
);
random_and_mutated!(
    test_session_frame_random,
    test_session_frame_mutated,
    "session_frame",
    harness::session_frame,
    3000,
    1024
);
random_and_mutated!(
    test_cat_record_random,
    test_cat_record_mutated,
    "cat_record",
    harness::cat_record,
    2000,
    1024
);
random_and_mutated!(
    test_relay_frame_random,
    test_relay_frame_mutated,
    "relay_frame",
    harness::relay_frame,
    3000,
    1024
);

/// An input on which a segment begins before the peer's ISN + 1 and its tail lands at stream
/// offset 0. The harness once computed that segment's start as an unsigned offset, so it
/// wrapped and the harness reported a byte "no peer sent" although the stack delivered the
/// right one (found about one run in ten by the random test, and by the fuzzer in CI).
#[test]
fn test_tcp_segment_starting_before_the_stream_regression() {
    let input = include_bytes!("regressions/tcp_established_before_isn.bin");
    harness::tcp_established(input);
}
