//! `edgeflow certs`: development certificates for local nodes.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `certs`.
#[derive(clap::Args)]
pub struct Args {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Names the server certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    names: Vec<String>,
    /// Issue a client certificate named NAME (client-NAME.pem and .key)
    /// from the CA already in --out.
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// Replace existing files (a new CA breaks every client that
    /// trusts the old one).
    #[arg(long)]
    force: bool,
}

/// Makes a CA with server and client certificates, or with `--client`
/// one more client certificate from the CA already there.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(name) = &args.client {
        let (cert, key) = edgeflow::node::issue_client_cert(&args.out, name, args.force)?;
        say!("client certificate: {}", cert.display());
        say!("client key: {}", key.display());
        return Ok(ExitCode::SUCCESS);
    }
    let paths = edgeflow::node::make_certs_in(&args.out, &args.names, args.force)?;
    say!("CA (give to clients): {}", paths.ca.display());
    say!(
        "CA key (keep it safe; issues client certificates): {}",
        paths.ca_key.display()
    );
    say!("server certificate: {}", paths.cert.display());
    say!("server key: {}", paths.key.display());
    say!(
        "client certificate: {} (key {})",
        paths.client_cert.display(),
        paths.client_key.display()
    );
    Ok(ExitCode::SUCCESS)
}
