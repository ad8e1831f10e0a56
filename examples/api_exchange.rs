//! Two nodes driven through the library API (`tunstack::api::node::TunstackNode`) instead of the
//! CLI: one sends a message and a file, the other answers; each checks what it received and its
//! own counters. `tests/netns/test-api.sh` runs it in the `line` lab.
//!
//! ```text
//! api_exchange send    --tun tun0 --addr 198.18.1.2/24 --data-dir DIR --to 198.18.2.2 --file PATH
//! api_exchange receive --tun tun0 --addr 198.18.2.2/24 --data-dir DIR --file-name NAME
//! ```
//!
//! Prints one line per checked step and exits 0, or prints what went wrong and exits 1.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tunstack::api::node::TunstackNode;
use tunstack::node::files::TransferOutcome;
use tunstack::node::inbox::InboxEntry;
use tunstack::node::launch::LaunchConfig;

const GREETING: &str = "hello from the library API";
const REPLY: &str = "reply from the library API";

struct Args {
    role: String,
    tun: String,
    addr: Ipv4Addr,
    prefix_len: u8,
    data_dir: PathBuf,
    to: Option<Ipv4Addr>,
    file: Option<PathBuf>,
    file_name: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let role = it.next().ok_or("say send or receive")?;
    let mut a = Args {
        role,
        tun: "tun0".into(),
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 24,
        data_dir: PathBuf::new(),
        to: None,
        file: None,
        file_name: None,
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tun" => a.tun = v,
            "--addr" => {
                let (ip, p) = v.split_once('/').ok_or("--addr A.B.C.D/P")?;
                a.addr = ip.parse().map_err(|e| format!("--addr: {e}"))?;
                a.prefix_len = p.parse().map_err(|e| format!("--addr: {e}"))?;
            }
            "--data-dir" => a.data_dir = v.into(),
            "--to" => a.to = Some(v.parse().map_err(|e| format!("--to: {e}"))?),
            "--file" => a.file = Some(v.into()),
            "--file-name" => a.file_name = Some(v),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn start(a: &Args, peers: Vec<Ipv4Addr>) -> Result<TunstackNode, String> {
    let mut cfg = LaunchConfig::new(&a.tun, a.addr, a.prefix_len);
    cfg.name = format!("api-{}", a.role);
    cfg.data_dir = Some(a.data_dir.clone());
    cfg.peers = peers;
    TunstackNode::start(cfg).map_err(|e| format!("start: {e}"))
}

/// Collects inbox entries until `done` is satisfied or `limit` passes.
fn collect(
    node: &TunstackNode,
    limit: Duration,
    done: impl Fn(&[InboxEntry]) -> bool,
) -> Result<Vec<InboxEntry>, String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while !done(&got) {
        if Instant::now() >= deadline {
            return Err(format!("timed out; received so far: {got:?}"));
        }
        got.extend(node.received_messages(Duration::from_millis(500)));
    }
    Ok(got)
}

fn counter(status: &serde_json::Value, path: &str) -> u64 {
    path.split('.')
        .fold(status, |v, k| &v[k])
        .as_u64()
        .unwrap_or(0)
}

fn send(a: &Args) -> Result<(), String> {
    let to = a.to.ok_or("send needs --to")?;
    let file = a.file.as_ref().ok_or("send needs --file")?;
    let node = start(a, vec![to])?;
    let id = node
        .send_message(to, GREETING, "alice", "lab")
        .map_err(|e| format!("send_message: {e}"))?;
    node.wait_delivered(id, Duration::from_secs(20))
        .map_err(|e| format!("message not delivered: {e}"))?;
    println!("sender: message {} delivered", id.0);
    let ids = node
        .send_file(&[to], file, "lab", "alice")
        .map_err(|e| format!("send_file: {e}"))?;
    if ids.len() != 1 {
        return Err(format!("one recipient, {} transfers", ids.len()));
    }
    match node.wait_transfer(ids[0], Duration::from_secs(60)) {
        Ok(TransferOutcome::Completed { bytes, sha256, .. }) => {
            println!("sender: file sent, {bytes} bytes, sha256 {sha256}")
        }
        other => return Err(format!("file transfer: {other:?}")),
    }
    let got = collect(&node, Duration::from_secs(30), |v| {
        v.iter().any(|e| e.msg.content == REPLY)
    })?;
    let reply = got.iter().find(|e| e.msg.content == REPLY).expect("found");
    if reply.from != to || reply.msg.sender != "bob" || reply.msg.channel_id != "lab" {
        return Err(format!("reply has the wrong origin: {reply:?}"));
    }
    println!(
        "sender: reply received from {} ({})",
        reply.from, reply.msg.sender
    );
    let s = node.status();
    let delivered = counter(&s, "msg.messages_delivered");
    let file_out = counter(&s, "file.data_bytes_out");
    println!(
        "sender: status node.addr={} msg.messages_delivered={delivered} file.data_bytes_out={file_out} inbox.messages={}",
        s["node"]["addr"].as_str().unwrap_or("?"),
        counter(&s, "inbox.messages")
    );
    if delivered != 1 || file_out < std::fs::metadata(file).map_err(|e| e.to_string())?.len() {
        return Err(format!("status counters are off: {s}"));
    }
    node.stop();
    println!("sender: stopped");
    Ok(())
}

fn receive(a: &Args) -> Result<(), String> {
    let name = a.file_name.as_ref().ok_or("receive needs --file-name")?;
    let node = start(a, Vec::new())?;
    println!("receiver: started");
    let needle = format!("file {name} (");
    let got = collect(&node, Duration::from_secs(60), |v| {
        v.iter().any(|e| e.msg.content == GREETING)
            && v.iter()
                .any(|e| e.msg.is_file && e.msg.content.starts_with(&needle))
    })?;
    let greeting = got
        .iter()
        .find(|e| e.msg.content == GREETING)
        .expect("found");
    if greeting.msg.sender != "alice" || greeting.msg.channel_id != "lab" {
        return Err(format!("greeting has the wrong fields: {greeting:?}"));
    }
    if got.iter().filter(|e| e.msg.content == GREETING).count() != 1 {
        return Err(format!("the greeting arrived more than once: {got:?}"));
    }
    println!(
        "receiver: message from {} ({}, channel {})",
        greeting.from, greeting.msg.sender, greeting.msg.channel_id
    );
    let file = got.iter().find(|e| e.msg.is_file).expect("found");
    println!("receiver: {}", file.msg.content);
    // Everything was returned once: another call finds nothing new.
    let again = node.received_messages(Duration::from_millis(300));
    if !again.is_empty() {
        return Err(format!(
            "received_messages returned entries twice: {again:?}"
        ));
    }
    let id = node
        .send_message(greeting.from, REPLY, "bob", "lab")
        .map_err(|e| format!("send_message: {e}"))?;
    node.wait_delivered(id, Duration::from_secs(20))
        .map_err(|e| format!("reply not delivered: {e}"))?;
    let s = node.status();
    println!(
        "receiver: status msg.messages_delivered={} file.data_in={} inbox.messages={}",
        counter(&s, "msg.messages_delivered"),
        counter(&s, "file.data_in"),
        counter(&s, "inbox.messages")
    );
    if counter(&s, "inbox.messages") != 2 || counter(&s, "file.data_in") == 0 {
        return Err(format!("status counters are off: {s}"));
    }
    node.stop();
    println!("receiver: stopped");
    Ok(())
}

fn main() {
    let r = parse_args().and_then(|a| match a.role.as_str() {
        "send" => send(&a),
        "receive" => receive(&a),
        other => Err(format!("unknown role {other}: say send or receive")),
    });
    if let Err(e) = r {
        eprintln!("api_exchange: {e}");
        std::process::exit(1);
    }
}
