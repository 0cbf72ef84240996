//! The `edgeflow` binary: the command line ([`cli`]) over the library. An
//! error ends the process with exit code 2 and a message a person can act
//! on; each subcommand chooses its other exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeflow: error: {}", said_once(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, each said once: a cause whose text the
/// message already holds is left out.
fn said_once(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
