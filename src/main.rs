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
            eprintln!("edgeflow: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
