//! `tunstack ctl`: one command to a running node over its control socket.

use super::stack_opts::default_control_path;
use super::CliError;
use crate::node::commands::VERBS;
use clap::Args;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(after_help = after_help())]
pub struct CtlArgs {
    /// Name of the node (its socket is /run/tunstack/NAME.sock)
    #[arg(long, value_name = "NAME", conflicts_with = "control")]
    pub node: Option<String>,

    /// Path of the node's control socket
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// The command and its arguments, e.g. `status --json`
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// Every verb the node's console knows except `quit`, from the same table `help` prints, so the
/// two lists cannot drift apart.
fn after_help() -> String {
    let mut s = String::from("Commands:\n");
    for v in VERBS.iter().filter(|v| v.name != "quit") {
        s.push_str(&format!("  {}\n      {}\n", v.usage, v.help));
    }
    s.push_str(
        "\nExamples:\n  tunstack ctl --node demo status\n  \
tunstack ctl --control /run/tunstack/demo.sock status --json\n  \
tunstack ctl --node demo ping 198.18.0.1 -c 3\n  \
tunstack ctl --node demo send 198.18.2.2 \"hello there\" -c general\n  \
tunstack ctl --node demo file 198.18.2.2 notes.txt\n  \
tunstack ctl --node demo messages --follow --json\n  \
tunstack ctl --node demo peers\n  \
tunstack ctl --node demo discover 198.18.0.0/22",
    );
    s
}

pub fn run(args: CtlArgs) -> Result<i32, CliError> {
    let path = match (&args.control, &args.node) {
        (Some(p), _) => p.clone(),
        (None, Some(n)) => default_control_path(n),
        (None, None) => return Err(CliError(
            "say which node: --node NAME or --control PATH (ls /run/tunstack lists running nodes)"
                .into(),
        )),
    };
    let mut s = UnixStream::connect(&path).map_err(|e| {
        CliError(format!(
            "cannot reach the node at {}: {e}\n  hint: is the node running? (ls /run/tunstack)",
            path.display()
        ))
    })?;
    let mut command = args.command.clone();
    if command.first().map(String::as_str) == Some("file") {
        // The node resolves paths from its own working directory: send an absolute one.
        if let Some(p) = command.iter_mut().skip(2).find(|a| !a.starts_with('-')) {
            if let Ok(abs) = std::fs::canonicalize(&*p) {
                *p = abs.to_string_lossy().into_owned();
            }
        }
        if std::io::stdout().is_terminal() {
            command.push("--progress".into());
        }
    }
    let line = serde_json::to_string(&command)?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    // Stream the answer as it comes (ping prints line by line); remember whether it was an error.
    let mut buf = [0u8; 8192];
    let mut first = Vec::new();
    let mut out = std::io::stdout();
    let mut failed = None;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if failed.is_none() {
            first.extend_from_slice(&buf[..n]);
            if first.len() >= 7 || first.contains(&b'\n') {
                failed = Some(first.starts_with(b"error: "));
            }
        }
        // A reader that stops early (`| head`) is not an error.
        match out.write_all(&buf[..n]).and_then(|_| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
    let failed = failed.unwrap_or_else(|| first.starts_with(b"error: "))
        || first.windows(8).any(|w| w == b"\nerror: ");
    Ok(if failed { 1 } else { 0 })
}
