//! `edgeflow subscribe`: follow a node's live aggregates as a mobility
//! operator, as a live table or as JSON Lines.

use std::io::Write;
use std::process::ExitCode;

use edgeflow::subscribe::client::{filter, json_line, subscribe, State, SubscribeOptions};
use edgeflow::subscribe::proto::SubFrame;

/// Arguments of `subscribe`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: super::Target,
    /// congestion, charging or zone.
    #[arg(long)]
    kind: String,
    /// Only these ids, comma-separated.
    #[arg(long)]
    ids: Option<String>,
    /// Only keys within min_lon,min_lat,max_lon,max_lat.
    #[arg(long)]
    bbox: Option<String>,
    /// Every update as windows fill (default: final values only).
    #[arg(long)]
    provisional: bool,
    /// table (a live view on a terminal) or jsonl (a frame per line).
    #[arg(long, value_enum, default_value_t = SubFormat::Table)]
    format: SubFormat,
}

/// Output of `subscribe`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SubFormat {
    /// A live view, redrawn at every progress marker.
    Table,
    /// Every frame as a JSON object on its own line.
    Jsonl,
}

/// Follows the subscription until the node ends it (exit 1) or stdout
/// closes (exit 0).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (addr, server_name) = args.target.resolve()?;
    let mut request = SubscribeOptions::request(&args.target.token()?, &args.kind);
    request.filter = filter(args.ids.as_deref(), args.bbox.as_deref())?;
    if args.provisional {
        request.mode = "provisional".into();
    }
    let opts = SubscribeOptions {
        identity: args.target.identity(),
        to: addr,
        server_name,
        ca: args.target.ca,
        request,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The table shows the newest windows: retired rows can go.
    let mut state = State {
        forget_retired: true,
        ..State::default()
    };
    let mut out = std::io::stdout().lock();
    let error = runtime.block_on(subscribe(&opts, |frame| {
        state.apply(frame);
        let text = match args.format {
            SubFormat::Jsonl => Some(json_line(frame) + "\n"),
            SubFormat::Table => {
                matches!(frame, SubFrame::Progress(_)).then(|| table(&state, &args.kind))
            }
        };
        // A closed stdout (a pipe that went away) ends the subscription.
        text.is_none_or(|t| {
            out.write_all(t.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        })
    }))?;
    match error {
        Some(e) => {
            eprintln!("edgeflow: subscription ended: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The live view of a subscription: the newest window's rows.
fn table(state: &State, kind: &str) -> String {
    let newest = state.rows.keys().map(|(_, w)| *w).max();
    let mut out = String::from("\x1b[2J\x1b[H");
    let p = state.progress;
    out.push_str(&format!(
        "edgeflow subscribe {kind}: {} rows, watermark {} ms, revision {}{}\n\n",
        state.rows.len(),
        p.map_or(0, |p| p.watermark_ms),
        p.map_or(0, |p| p.revision),
        if state.coalesced > 0 {
            format!(" (lagged: {} updates coalesced)", state.coalesced)
        } else {
            String::new()
        }
    ));
    for ((key, window), row) in &state.rows {
        if Some(*window) != newest {
            continue;
        }
        let fields: Vec<String> = row
            .value
            .iter()
            .flatten()
            .filter(|(name, _)| !name.ends_with("_id") && !name.starts_with("window"))
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        out.push_str(&format!(
            "{key:<22} {:<11} {}\n",
            row.status.as_deref().unwrap_or(""),
            fields.join(" ")
        ));
    }
    out
}
