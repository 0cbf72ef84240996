//! `edgeflow subscribe`: follow a node's live aggregates as a mobility
//! operator, as a live table or as JSON Lines.

use std::io::Write;
use std::process::ExitCode;

use edgeflow::subscribe::client::{filter, json_line, subscribe, State, SubscribeOptions};
use edgeflow::subscribe::proto::SubFrame;
use edgeflow::time::{local, local_format};

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
    let view = View {
        terminal: std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let mut out = std::io::stdout().lock();
    let error = runtime.block_on(subscribe(&opts, |frame| {
        state.apply(frame);
        let text = match args.format {
            SubFormat::Jsonl => Some(json_line(frame) + "\n"),
            SubFormat::Table => {
                matches!(frame, SubFrame::Progress(_)).then(|| table(&state, &args.kind, &view))
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

/// Where the table goes: a terminal (redrawn in place, cut to its size)
/// or a file or pipe (one plain table per progress marker, no screen
/// codes).
struct View {
    terminal: bool,
}

impl View {
    /// The terminal's (columns, rows), when stdout is one.
    fn size(&self) -> Option<(usize, usize)> {
        let (rows, cols) = console::Term::stdout().size_checked()?;
        self.terminal
            .then_some((usize::from(cols), usize::from(rows)))
    }
}

/// The live view of a subscription: the newest window's rows as a table
/// (key, name, status and the row's fields as columns), under a header
/// with the window, the watermark and the revision.
fn table(state: &State, kind: &str, view: &View) -> String {
    let newest = state.rows.keys().map(|(_, w)| *w).max();
    let rows: Vec<_> = (state.rows.iter())
        .filter(|((_, w), _)| Some(*w) == newest)
        .map(|((key, _), row)| (key, row))
        .collect();
    let p = state.progress;
    let window_ms = p.map_or(0, |p| p.window_ms);
    let window = match newest {
        Some(w) => format!(
            "window {}-{} ({})",
            local_format(w, "%H:%M"),
            local_format(w + window_ms, "%H:%M"),
            local(w).get(..10).unwrap_or_default()
        ),
        None => "no rows yet".into(),
    };
    let watermark = p.map_or_else(|| "-".into(), |p| local(p.watermark_ms));
    let mut head = format!(
        "edgeflow subscribe {kind}: {window}; {} rows; watermark {watermark}; revision {}",
        rows.len(),
        p.map_or(0, |p| p.revision),
    );
    if state.coalesced > 0 {
        head.push_str(&format!(" (lagged: {} updates coalesced)", state.coalesced));
    }
    // Columns: the key, a name where any row has one, the status, then
    // every field (ids and window bounds are in the key and the header).
    let mut fields: Vec<&str> = Vec::new();
    for (_, row) in &rows {
        for name in row.value.iter().flat_map(|v| v.keys()) {
            if !name.ends_with("_id")
                && !name.starts_with("window")
                && !fields.contains(&name.as_str())
            {
                fields.push(name);
            }
        }
    }
    let named = rows.iter().any(|(_, r)| r.name.is_some());
    let mut header: Vec<String> = vec!["id".into()];
    if named {
        header.push("name".into());
    }
    header.push("status".into());
    header.extend(fields.iter().map(|f| (*f).to_owned()));
    let cells: Vec<Vec<String>> = (rows.iter())
        .map(|(key, row)| {
            let mut line = vec![(*key).clone()];
            if named {
                line.push(row.name.clone().unwrap_or_default());
            }
            line.push(row.status.clone().unwrap_or_default());
            for f in &fields {
                line.push(match row.value.as_ref().and_then(|v| v.get(*f)) {
                    Some(serde_json::Value::String(t)) => t.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                });
            }
            line
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for line in &cells {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count()).min(40);
        }
    }
    let format_line = |line: &[String]| -> String {
        let parts: Vec<String> = (line.iter().zip(&widths))
            .map(|(c, w)| {
                let c: String = c.chars().take(*w).collect();
                format!("{c:<w$}")
            })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let size = view.size();
    // On a terminal: what fits (the header, the column names, the rows
    // that fit, and a line saying how many did not).
    let room = size.map_or(usize::MAX, |(_, h)| h.saturating_sub(4).max(1));
    let mut lines = vec![head, String::new(), format_line(&header)];
    lines.extend(cells.iter().take(room).map(|l| format_line(l)));
    if cells.len() > room {
        lines.push(format!(
            "... and {} more rows (--format jsonl for all)",
            cells.len() - room
        ));
    }
    let mut out = String::new();
    if size.is_some() {
        out.push_str("\x1b[2J\x1b[H"); // clear, home
    }
    for line in lines {
        match size {
            Some((w, _)) => out.extend(line.chars().take(w)),
            None => out.push_str(&line),
        }
        out.push('\n');
    }
    if size.is_none() {
        out.push('\n'); // tables apart in a file
    }
    out
}
