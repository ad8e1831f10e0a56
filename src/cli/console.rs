//! The interactive console: reads commands from the terminal and runs them on the node.

use crate::node::commands::{execute, split_words, Outcome};
use crate::node::NodeHandle;
use std::io::{BufRead, Write};

pub fn run(h: NodeHandle) {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "tunstack console: 'help' lists the commands, 'quit' stops the node"
    );
    loop {
        let _ = write!(out, "tunstack> ");
        let _ = out.flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => {
                h.stop();
                return;
            }
            Ok(_) => {}
        }
        let mut words = split_words(&line);
        if words.first().map(String::as_str) == Some("file") {
            words.push("--progress".into());
        }
        match execute(&h, &words, &mut out) {
            Ok(Outcome::Quit) => return,
            Ok(Outcome::Continue) => {}
            Err(e) => {
                let _ = writeln!(out, "error: {e}");
            }
        }
        if h.is_stopping() {
            return;
        }
    }
}
