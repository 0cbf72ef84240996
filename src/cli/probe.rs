//! `edgeflow probe URL`: one HTTP GET of a node's `/health` or `/ready`
//! (plain HTTP, as `[observability] listen` serves), for a container's
//! health check where no curl is installed. Exit 0 on a 200, 1 otherwise
//! (the answer or the error is printed).

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

/// Arguments of `probe`.
#[derive(clap::Args)]
pub struct Args {
    /// `http://host:port/path`, e.g. `http://127.0.0.1:9464/ready`.
    url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    timeout_s: u64,
}

/// Splits `http://host:port/path` into the address and the path.
fn parse(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url:?}: only http:// URLs (the observability listener speaks plain HTTP)");
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if !host.contains(':') {
        bail!("{url:?}: the address needs a port, like http://127.0.0.1:9464/ready");
    }
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("{url:?}: cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{url:?}: {host} has no address"))?;
    Ok((addr, path.to_owned()))
}

/// Runs the probe.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (addr, path) = parse(&args.url)?;
    let timeout = Duration::from_secs(args.timeout_s.max(1));
    match edgeflow::observe::http::get(addr, &path, timeout) {
        Ok((status, body)) => {
            say!("{} {status} {}", args.url, body.trim());
            Ok(if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(e) => {
            say!("{}: {e}", args.url);
            Ok(ExitCode::from(1))
        }
    }
}
