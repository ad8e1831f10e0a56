//! The command line as a user meets it: help that explains, and one readable error line with a
//! non-zero exit for each mistake. None of these need root.

use std::process::Command;

fn tunstack(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tunstack"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run tunstack");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn test_help_explains_every_node_option() {
    let (code, out, _) = tunstack(&["node", "--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--tun",
        "--addr",
        "--mtu",
        "--name",
        "--pcap",
        "--control",
        "--impair ",
        "--impair-in",
        "--impair-out",
        "--seed",
        "--no-console",
    ] {
        assert!(out.contains(opt), "node --help lacks {opt}:\n{out}");
    }
    let (code, out, _) = tunstack(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("node") && out.contains("ctl"));
}

#[test]
fn test_bad_address_is_one_clear_line() {
    for (addr, says) in [
        ("198.18.0.2", "prefix"),
        ("198.18.0.300/24", "not an IPv4 address"),
        ("198.18.0.2/40", "0 to 32"),
    ] {
        let (code, _, err) = tunstack(&["node", "--addr", addr]);
        assert_ne!(code, 0);
        assert!(err.contains(says), "{addr}: {err}");
    }
}

#[test]
fn test_bad_mtu_and_impairment_are_refused() {
    let (code, _, err) = tunstack(&["node", "--addr", "198.18.0.2/24", "--mtu", "100"]);
    assert_ne!(code, 0);
    assert!(err.contains("576"), "{err}");
    let (code, _, err) = tunstack(&["node", "--addr", "198.18.0.2/24", "--impair", "loss=200%"]);
    assert_ne!(code, 0);
    assert!(err.contains("between 0% and 100%"), "{err}");
    let (code, _, err) = tunstack(&["node", "--addr", "198.18.0.2/24", "--impair", "wobble=3"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown impairment 'wobble'"), "{err}");
}

#[test]
fn test_bad_device_name_gets_a_hint() {
    let (code, _, err) = tunstack(&[
        "node",
        "--addr",
        "198.18.0.2/24",
        "--tun",
        "a-name-much-too-long-for-linux",
        "--control",
        "/tmp/tunstack-cli-test.sock",
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("tunstack: error:"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn test_ctl_without_a_node_says_what_to_do() {
    let (code, _, err) = tunstack(&["ctl", "--control", "/nonexistent/tunstack.sock", "status"]);
    assert_eq!(code, 1);
    assert!(err.contains("is the node running"), "{err}");
    let (code, _, err) = tunstack(&["ctl", "status"]);
    assert_eq!(code, 1);
    assert!(err.contains("--node NAME or --control PATH"), "{err}");
}
