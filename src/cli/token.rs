//! `edgeflow token`: a random bearer token for a fleet, an operator or an
//! edge, and the `token_sha256` line the node's topology keeps (the node
//! never stores the token itself).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Arguments of `token`.
#[derive(clap::Args)]
pub struct Args {
    /// Write the token to this file (mode 0600; an existing file is left
    /// alone) instead of printing it; clients read it with --token-file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Random bytes in the token (printed as hex).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(16..))]
    bytes: u8,
}

/// Makes the token; prints it (unless `--out`) and the topology line.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut random = vec![0u8; usize::from(args.bytes)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("cannot read random bytes from /dev/urandom")?;
    let token = hex::encode(&random);
    let sha = hex::encode(Sha256::digest(token.as_bytes()));
    match &args.out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!(
                        "cannot create {} (an existing file is never replaced)",
                        path.display()
                    )
                })?;
            writeln!(f, "{token}")
                .and_then(|_| f.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("token written to {} (mode 0600)", path.display());
        }
        None => say!("{token}"),
    }
    say!("token_sha256 = \"{sha}\"");
    Ok(ExitCode::SUCCESS)
}
