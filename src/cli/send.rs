//! `edgeflow send`: a recording to a node, resending what was not
//! acknowledged after a reconnect.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use edgeflow::ingest::client::{self, SendOptions, SendReport};
use edgeflow::log::Encoding;

/// Arguments of `send`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: super::Target,
    /// Sender id; batch numbers are per sender. Default: the file name.
    #[arg(long)]
    sender: Option<String>,
    /// Wire encoding.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Lines per batch.
    #[arg(long, default_value_t = 1000)]
    batch_lines: usize,
    /// Batches in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Pace batches at this multiple of event time (default: as fast as
    /// the node acknowledges).
    #[arg(long)]
    speed: Option<f64>,
    /// The recording.
    file: PathBuf,
}

/// Wire encoding of `send`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    /// JSON Lines.
    Jsonl,
    /// CBOR.
    Binary,
}

/// Sends the file and prints what the node answered.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::check_speed(args.speed)?;
    let (addr, server_name) = args.target.resolve()?;
    let token = args.target.token()?;
    let encoding = match args.format {
        Format::Jsonl => Encoding::JsonLines,
        Format::Binary => Encoding::Cbor,
    };
    let opts = SendOptions {
        sender: args.sender.unwrap_or_else(|| sender_of(&args.file)),
        encoding,
        batch_lines: args.batch_lines,
        window: args.window,
        max_reconnects: 30,
        pace: args.speed,
        identity: args.target.identity(),
        ..SendOptions::new(addr, server_name, args.target.ca.clone(), token)
    };
    let mut report = SendReport::default();
    let batches = client::batches(&args.file, encoding, args.batch_lines, &mut report)?;
    let bar = super::progress_bar(batches.len() as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sent = runtime.block_on(client::send(&opts, batches, |done, _| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    }))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (batch, index, message) in &sent.rejections {
        eprintln!("batch {batch} record {index}: {message}");
    }
    eprintln!(
        "sent {} batches: {} records accepted, {} rejected, {} not convertible, {} reconnects{}",
        sent.batches,
        sent.accepted,
        sent.rejected,
        report.unconvertible,
        sent.reconnects,
        [
            (sent.already_durable, "the node had from an earlier run"),
            (
                sent.durable_unanswered,
                "were durable but their answer was lost"
            ),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("; {n} batches {what} (their records are not counted above)"))
        .collect::<String>()
    );
    Ok(ExitCode::SUCCESS)
}

/// The default sender id: the file name, with what a sender id may not
/// hold replaced by `-`, at most 64 characters.
fn sender_of(file: &Path) -> String {
    let stem = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("sender");
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:#-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}
