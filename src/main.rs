//! The `edgeflow` binary: the command line ([`cli`]) over the library. An
//! error ends the process with exit code 2 and a message a person can act
//! on; each subcommand chooses its other exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Exit code of a cluster process that lost another process of its site.
const SITE_LOST: i32 = 3;

fn main() -> ExitCode {
    on_site_lost_exit();
    match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeflow: error: {}", said_once(&e));
            ExitCode::from(2)
        }
    }
}

/// A process of a cluster ([`edgeflow::runtime::Cluster`]) whose
/// connection to another process breaks cannot go on: timely's
/// communication threads panic, and its workers after them. Say so once,
/// with what to do, and exit with [`SITE_LOST`] rather than print every
/// thread's panic (and abort on the panics in their destructors). What was
/// acknowledged is in the log already: exiting here is a crash the log is
/// built for.
fn on_site_lost_exit() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = (payload.downcast_ref::<&str>().copied())
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("");
        let lost = message.starts_with("timely communication error")
            || message.starts_with("MergeQueue poisoned")
            || message.starts_with("Send thread panic");
        if !lost {
            return default(info);
        }
        eprintln!(
            "edgeflow: error: this process lost its connection to another process of the site ({message}). A site runs as one dataflow: restart every process of it; each replays its own log (docs/SCALING.md, \"Restarting a site\"). Exit code {SITE_LOST}."
        );
        std::process::exit(SITE_LOST);
    }));
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
