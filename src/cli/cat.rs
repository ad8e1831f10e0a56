//! `tunstack cat`: an encrypted netcat. Files and key handling live here; the protocol is in
//! `crate::cat`.

use super::app_net::NetOpts;
use super::CliError;
use crate::cat::handshake;
use crate::cat::known_hosts::{Decision, KnownHosts};
use crate::cat::run::{self, Options};
use clap::Args;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::RsaPrivateKey;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(
    about = "Encrypted netcat: chat or send files, RSA key exchange, Salsa20 + HMAC-SHA256",
    long_about = "Encrypted netcat. `-l PORT` listens for one connection, `HOST PORT` connects. Without file options, \
what you type goes to the other side and what it types appears here, both at once; a line `BYE!` or end of \
input ends the session on both sides. `-fs FILE` sends a file and exits; `-fr FILE` receives one into FILE \
(either side may do either); the SHA-256 is checked at the end, and a failed check leaves no FILE.\n\n\
The listener has a persistent RSA-3072 key in --key-dir (made on first use) and prints its fingerprint; the \
connector pins it on first use in a known-hosts file and refuses a changed key unless told otherwise.",
    after_help = "Examples:\n  tunstack cat --kernel -l 9000                      # listener, prints its fingerprint\n  \
tunstack cat --kernel 127.0.0.1 9000               # chat; type BYE! to end\n  \
tunstack cat --kernel -l 9000 -fr backup.tar       # receive a file\n  \
tunstack cat --kernel 127.0.0.1 9000 -fs backup.tar\n  \
tunstack cat --kernel 127.0.0.1 9000 --fingerprint 3f5a...   # require a known key\n  \
ip netns exec ts-b tunstack cat --tun tun0 --addr 198.18.2.2/24 -l 9000"
)]
pub struct CatArgs {
    /// Listen on PORT for one connection
    #[arg(
        short = 'l',
        long = "listen",
        value_name = "PORT",
        conflicts_with = "host"
    )]
    pub listen: Option<u16>,
    /// Host to connect to
    #[arg(value_name = "HOST", requires = "port")]
    pub host: Option<String>,
    /// Port to connect to
    #[arg(value_name = "PORT")]
    pub port: Option<u16>,
    /// Send FILE's contents, then end the session (also spelled -fs)
    #[arg(long = "fs", value_name = "FILE")]
    pub send_file: Option<PathBuf>,
    /// Receive one file into FILE (also spelled -fr); nothing is left there if the check fails
    #[arg(long = "fr", value_name = "FILE")]
    pub recv_file: Option<PathBuf>,
    /// Where the listener keeps its key pair and the connector its known-hosts file
    #[arg(long, value_name = "DIR", default_value = "/var/lib/tunstack/cat")]
    pub key_dir: PathBuf,
    /// Known-hosts file of pinned listener fingerprints [default: KEY_DIR/known_hosts]
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Connect only if the listener's key has this SHA-256 fingerprint (hex; colons allowed)
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<String>,
    /// Accept and pin a listener key that differs from the pinned one
    #[arg(long)]
    pub accept_new_key: bool,
    /// No progress bar, even on a terminal
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub net: NetOpts,
}

/// netcat spells the file options `-fs`/`-fr`; clap reads `-fs` as `-f -s`, so they are
/// rewritten to `--fs`/`--fr` before parsing, and only after the `cat` subcommand.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut in_cat = false;
    args.into_iter()
        .map(|a| {
            if a == "cat" {
                in_cat = true;
            }
            match a.to_str() {
                Some("-fs") if in_cat => OsString::from("--fs"),
                Some("-fr") if in_cat => OsString::from("--fr"),
                _ => a,
            }
        })
        .collect()
}

const KEY_FILE: &str = "cat_rsa_key.pem";
const KEY_BITS: usize = 3072;

/// Loads the listener's key, or makes one (mode 0600) on first use.
pub fn load_or_create_key(dir: &Path) -> Result<RsaPrivateKey, CliError> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| CliError(format!("cannot read {}: {e}", path.display())))?;
        return RsaPrivateKey::from_pkcs8_pem(&pem)
            .map_err(|e| CliError(format!("{} is not a PKCS#8 RSA key: {e}", path.display())));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError(format!(
            "cannot create {}: {e}\n  hint: pass --key-dir DIR in a writable place",
            dir.display()
        ))
    })?;
    eprintln!(
        "making a new {KEY_BITS}-bit RSA key in {} (first use)",
        path.display()
    );
    let key = RsaPrivateKey::new(&mut rand_core::OsRng, KEY_BITS)
        .map_err(|e| CliError(format!("key generation failed: {e}")))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| CliError(format!("cannot encode the key: {e}")))?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(pem.as_bytes())?;
    Ok(key)
}

pub fn run(a: CatArgs) -> Result<i32, CliError> {
    let opts = Options {
        send_file: a.send_file.clone(),
        recv_file: a.recv_file.clone(),
        progress: !a.no_progress && std::io::stderr().is_terminal(),
    };
    if let Some(f) = &opts.send_file {
        std::fs::metadata(f).map_err(|e| CliError(format!("cannot send {}: {e}", f.display())))?;
    }
    let stdin: Box<dyn std::io::Read + Send> = Box::new(std::io::stdin());
    let stdout: Box<dyn std::io::Write + Send> = Box::new(std::io::stdout());
    let summary = match (a.listen, &a.host, a.port) {
        (Some(port), None, _) => {
            let key = load_or_create_key(&a.key_dir)?;
            let fp = handshake::fingerprint(&key.to_public_key())?;
            let net = a.net.start()?;
            let listener = net.listen(port)?;
            eprintln!(
                "listening on port {}; key fingerprint (SHA-256): {fp}",
                listener.port()
            );
            let (mut stream, peer) = listener.accept()?;
            eprintln!("connection from {peer}");
            let (sealer, opener) =
                run::listen_handshake(&mut stream, &key).map_err(|e| CliError(e.0))?;
            eprintln!("encrypted session established");
            run::session(stream, sealer, opener, opts, stdin, stdout).map_err(|e| CliError(e.0))?
        }
        (None, Some(host), Some(port)) => {
            let kh_path = a
                .known_hosts
                .clone()
                .unwrap_or_else(|| a.key_dir.join("known_hosts"));
            let net = a.net.start()?;
            let mut stream = net.connect(host, port)?;
            let name = format!("{host}:{port}");
            let trust = |fp: &str| -> Result<(), String> {
                let text = std::fs::read_to_string(&kh_path).unwrap_or_default();
                let mut kh = KnownHosts::parse(&text);
                let d = kh
                    .decide(&name, fp, a.fingerprint.as_deref(), a.accept_new_key)
                    .map_err(|e| e.to_string())?;
                match &d {
                    Decision::Trusted => return Ok(()),
                    Decision::PinNew => eprintln!(
                        "new listener {name}: pinning key fingerprint {fp} in {}",
                        kh_path.display()
                    ),
                    Decision::Replace { old } => {
                        eprintln!("listener {name}: replacing pinned key {old} with {fp}")
                    }
                }
                kh.pin(&name, fp);
                if let Some(dir) = kh_path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                std::fs::write(&kh_path, kh.to_text())
                    .map_err(|e| format!("cannot write {}: {e}", kh_path.display()))
            };
            let (sealer, opener, fp) =
                run::connect_handshake(&mut stream, trust).map_err(|e| CliError(e.0))?;
            eprintln!("encrypted session established; listener key {fp}");
            run::session(stream, sealer, opener, opts, stdin, stdout).map_err(|e| CliError(e.0))?
        }
        _ => {
            return Err(CliError(
                "give -l PORT to listen, or HOST PORT to connect".into(),
            ))
        }
    };
    if let Some((n, sha)) = summary.sent_file {
        eprintln!("sent {n} bytes, SHA-256 {sha}: verified by the receiver");
    }
    if let Some((n, sha)) = summary.received_file {
        let to = a
            .recv_file
            .as_deref()
            .map_or("stdout".into(), |p| p.display().to_string());
        eprintln!("received {n} bytes into {to}, SHA-256 {sha}: verified");
    }
    Ok(0)
}
