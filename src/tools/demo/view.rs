//! What the demo shows: the newest final window its subscriptions hold,
//! as three tables under a header with the window, the watermark, the
//! map's address and the node's, sized for an 80x24 terminal.
//!
//! The slowest segments are ranked only among those long enough and seen
//! often enough for their speed to mean something ([`Ranking`]): a 0.2 m
//! piece of a junction crossed by one car is not a jam.

use crate::reference::Reference;
use crate::subscribe::client::State;
use crate::subscribe::proto::Row;
use crate::time::local_format;

use super::follow::Held;

/// Which segments the "slowest" table ranks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ranking {
    /// Shortest segment ranked, metres.
    pub min_length_m: f64,
    /// Fewest samples in the window.
    pub min_samples: u64,
}

/// Most segment rows shown.
pub const MAX_SEGMENT_ROWS: usize = 10;

/// One screen: the rows and what the header says.
pub struct Screen<'a> {
    /// The rows the subscriptions hold.
    pub held: &'a Held,
    /// The node's reference data (segment lengths).
    pub reference: &'a Reference,
    /// Which segments are ranked.
    pub ranking: Ranking,
    /// The map's address, with the sign-in token.
    pub map: &'a str,
    /// The node's addresses and the sending's progress.
    pub status: &'a str,
    /// The terminal's (columns, rows); `None`: a file or pipe, nothing cut.
    pub size: Option<(usize, usize)>,
}

/// A field of a row's value as text: numbers as the node wrote them,
/// "" when absent.
fn text(row: &Row, name: &str) -> String {
    match row.value.as_ref().and_then(|v| v.get(name)) {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// A numeric field, when it is one.
fn number(row: &Row, name: &str) -> Option<f64> {
    row.value.as_ref()?.get(name)?.as_f64()
}

/// `x` with `places` decimals, "" when absent.
fn fixed(x: Option<f64>, places: usize) -> String {
    x.map_or_else(String::new, |x| format!("{x:.places$}"))
}

/// The rows of window `window`, by key.
fn in_window(state: &State, window: u64) -> Vec<&Row> {
    (state.rows.iter())
        .filter(|((_, w), _)| *w == window)
        .map(|(_, r)| r)
        .collect()
}

/// The segments of `rows` that `ranking` admits, slowest first (ties by id).
pub fn ranked<'a>(rows: &[&'a Row], reference: &Reference, ranking: Ranking) -> Vec<&'a Row> {
    let mut out: Vec<&Row> = (rows.iter().copied())
        .filter(|r| {
            let length = (reference.road(&r.key))
                .and_then(|i| reference.roads.get(i as usize))
                .map_or(0.0, |road| road.length());
            length >= ranking.min_length_m
                && number(r, "samples").unwrap_or(0.0) >= ranking.min_samples as f64
        })
        .collect();
    let ratio = |r: &Row| number(r, "speed_ratio").unwrap_or(f64::INFINITY);
    out.sort_by(|a, b| {
        ratio(a)
            .total_cmp(&ratio(b))
            .then_with(|| a.key.cmp(&b.key))
    });
    out
}

/// A column: heading, left-aligned, widest cell (longer ones are cut).
type Column = (&'static str, bool, usize);

/// A table's lines: the headings, then a line per row of `cells`, each
/// column as wide as its widest cell.
fn table(columns: &[Column], cells: &[Vec<String>]) -> Vec<String> {
    let widths: Vec<usize> = (columns.iter().enumerate())
        .map(|(i, (heading, _, max))| {
            (cells.iter().map(|c| c[i].chars().count()))
                .max()
                .unwrap_or(0)
                .min(*max)
                .max(heading.chars().count())
        })
        .collect();
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = (cells.into_iter().zip(columns).zip(&widths))
            .map(|((text, (_, left, _)), &w)| {
                let text = if text.chars().count() > w {
                    text.chars().take(w - 1).chain(['…']).collect()
                } else {
                    text
                };
                if *left {
                    format!("{text:<w$}")
                } else {
                    format!("{text:>w$}")
                }
            })
            .collect();
        padded.join(" ").trim_end().to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.0.to_owned()).collect())];
    out.extend(cells.iter().map(|c| line(c.clone())));
    out
}

/// The screen as text, a line per line.
pub fn render(s: &Screen) -> String {
    let held = s.held;
    let newest = held.congestion.rows.keys().map(|(_, w)| *w).max();
    let watermark = held
        .congestion
        .progress
        .map(|p| format!("  watermark {}", local_format(p.watermark_ms, "%H:%M:%S")));
    let mut lines = vec![match newest {
        Some(w) => {
            let size = held.congestion.progress.map_or(60_000, |p| p.window_ms);
            format!(
                "edgeflow demo  window {}-{} {}{}",
                local_format(w, "%H:%M"),
                local_format(w + size, "%H:%M"),
                local_format(w, "%Y-%m-%d (UTC%:z)"),
                watermark.unwrap_or_default()
            )
        }
        None => "edgeflow demo  waiting for the first window to close".into(),
    }];
    lines.push(format!("map  {}", s.map));
    lines.push(s.status.to_owned());
    let Some(window) = newest else {
        return finish(lines, s.size);
    };

    let segments = in_window(&held.congestion, window);
    let ranked = ranked(&segments, s.reference, s.ranking);
    let chargers: Vec<Vec<String>> = (in_window(&held.charging, window).iter())
        .map(|r| {
            vec![
                r.key.clone(),
                text(r, "energy_wh"),
                fixed(number(r, "mean_power_kw"), 1),
                format!("{}/{}", text(r, "occupied"), text(r, "connectors")),
                text(r, "faulted"),
            ]
        })
        .collect();
    let zones: Vec<Vec<String>> = (in_window(&held.zones, window).iter())
        .filter(|r| text(r, "zone_type") == "zone")
        .map(|r| {
            vec![
                r.key.clone(),
                text(r, "samples"),
                text(r, "vehicles"),
                fixed(number(r, "mean_speed_ratio"), 2),
                text(r, "jammed_segments"),
                text(r, "energy_wh"),
                text(r, "low_soc_evs"),
            ]
        })
        .collect();
    // On a terminal, as many segments as fit beside everything else.
    let fixed_lines = lines.len()
        + 3
        + if chargers.is_empty() {
            0
        } else {
            2 + chargers.len()
        }
        + if zones.is_empty() { 0 } else { 2 + zones.len() };
    let room = s.size.map_or(MAX_SEGMENT_ROWS, |(_, h)| {
        h.saturating_sub(fixed_lines + 1).clamp(3, MAX_SEGMENT_ROWS)
    });
    let cells: Vec<Vec<String>> = (ranked.iter().take(room))
        .map(|r| {
            vec![
                r.name.clone().unwrap_or_else(|| "-".into()),
                r.key.clone(),
                text(r, "samples"),
                text(r, "vehicles"),
                fixed(number(r, "mean_speed_mps").map(|v| v * 3.6), 0),
                fixed(number(r, "speed_ratio"), 2),
                text(r, "level"),
            ]
        })
        .collect();
    lines.push(String::new());
    lines.push(format!(
        "slowest segments: {} of {} ranked (at least {} m long, {} samples)",
        ranked.len(),
        segments.len(),
        s.ranking.min_length_m,
        s.ranking.min_samples
    ));
    lines.extend(table(
        &[
            ("street", true, 20),
            ("segment", true, 16),
            ("samples", false, 7),
            ("vehicles", false, 8),
            ("km/h", false, 5),
            ("ratio", false, 5),
            ("level", true, 5),
        ],
        &cells,
    ));
    if !chargers.is_empty() {
        lines.push(String::new());
        lines.extend(table(
            &[
                ("charger", true, 24),
                ("energy Wh", false, 9),
                ("power kW", false, 8),
                ("occupied", false, 8),
                ("faulted", false, 7),
            ],
            &chargers,
        ));
    }
    if !zones.is_empty() {
        lines.push(String::new());
        lines.extend(table(
            &[
                ("zone", true, 18),
                ("samples", false, 7),
                ("vehicles", false, 8),
                ("ratio", false, 5),
                ("jammed", false, 6),
                ("energy Wh", false, 9),
                ("low-SoC EVs", false, 11),
            ],
            &zones,
        ));
    }
    finish(lines, s.size)
}

/// The lines joined, each cut to the terminal's width.
fn finish(lines: Vec<String>, size: Option<(usize, usize)>) -> String {
    let mut out = String::new();
    for line in lines {
        match size {
            Some((w, _)) => out.extend(line.chars().take(w)),
            None => out.push_str(&line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Road;
    use crate::subscribe::proto::Progress;

    const WINDOW: u64 = 1_767_258_000_000;

    fn row(key: &str, name: Option<&str>, value: serde_json::Value) -> Row {
        Row {
            op: "upsert".into(),
            key: key.into(),
            window_start_ms: WINDOW,
            status: Some("final".into()),
            revision: 1,
            value: value.as_object().cloned(),
            name: name.map(str::to_owned),
        }
    }

    fn road(id: &str, length_m: f64) -> Road {
        Road {
            id: id.into(),
            free_flow_mps: 13.9,
            lanes: 1,
            name: Some("Hiidenkirnuntie".into()),
            length_m: Some(length_m),
            line: vec![[26.9, 60.5], [26.9001, 60.5]],
        }
    }

    /// Thirty segments (the first a 0.2 m piece of a junction at a
    /// standstill, the second seen by 3 samples only), four chargers and
    /// five zones in one window.
    fn city() -> (Held, Reference) {
        let mut held = Held::default();
        let mut roads = Vec::new();
        for i in 0..30u32 {
            let id = format!("seg-{i:02}");
            let (length, samples) = match i {
                0 => (0.2, 40),
                1 => (300.0, 3),
                _ => (100.0 + f64::from(i), 10 + u64::from(i)),
            };
            roads.push(road(&id, length));
            let ratio = f64::from(i) / 40.0;
            held.congestion.rows.insert(
                (id.clone(), WINDOW),
                row(
                    &id,
                    Some("Hiidenkirnuntie"),
                    serde_json::json!({"samples": samples, "vehicles": 4,
                        "mean_speed_mps": ratio * 13.9, "speed_ratio": ratio, "level": "jam"}),
                ),
            );
        }
        for i in 0..4 {
            let id = format!("cs-hiidenkirnuntie-{i}");
            held.charging.rows.insert(
                (id.clone(), WINDOW),
                row(
                    &id,
                    None,
                    serde_json::json!({"energy_wh": 792, "mean_power_kw": 47.52,
                        "occupied": 1, "connectors": 2, "faulted": 0}),
                ),
            );
        }
        for i in 0..5 {
            let id = format!("karhula-{i}");
            held.zones.rows.insert(
                (id.clone(), WINDOW),
                row(
                    &id,
                    None,
                    serde_json::json!({"zone_type": "zone", "samples": 383, "vehicles": 35,
                        "mean_speed_ratio": 0.7812, "jammed_segments": 1, "energy_wh": 792,
                        "low_soc_evs": 0}),
                ),
            );
        }
        held.congestion.progress = Some(Progress {
            epoch: 1,
            revision: 1,
            watermark_ms: WINDOW + 90_000,
            snapshot: true,
            published_unix_us: 0,
            window_ms: 60_000,
            retention_ms: 900_000,
        });
        (held, Reference::new(roads, Vec::new()))
    }

    const RANKING: Ranking = Ranking {
        min_length_m: 20.0,
        min_samples: 5,
    };

    fn screen<'a>(
        held: &'a Held,
        reference: &'a Reference,
        size: Option<(usize, usize)>,
    ) -> String {
        render(&Screen {
            held,
            reference,
            ranking: RANKING,
            map: "http://127.0.0.1:8080/#token=0123456789abcdef0123456789abcdef",
            status: "node 127.0.0.1:40123 (QUIC)  512/1150 batches acknowledged at 10x",
            size,
        })
    }

    #[test]
    fn on_an_80x24_terminal_the_header_and_every_table_fit() {
        let (held, reference) = city();
        let text = screen(&held, &reference, Some((80, 24)));
        let lines: Vec<&str> = text.lines().collect();
        // 23 lines and the cursor on the 24th: nothing scrolls away.
        assert!(lines.len() <= 23, "{} lines:\n{text}", lines.len());
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        assert!(lines[0].starts_with("edgeflow demo  window "), "{text}");
        assert!(lines[1].contains("#token=0123456789abcdef"), "{text}");
        assert!(lines[2].starts_with("node 127.0.0.1:40123"), "{text}");
        assert!(
            text.contains("cs-hiidenkirnuntie-3"),
            "every charger: {text}"
        );
        assert!(text.contains("karhula-4"), "every zone: {text}");
        assert!(text.contains("seg-02"), "some segments: {text}");
        // Without a terminal, ten segments.
        let all = screen(&held, &reference, None);
        assert!(all.contains("seg-11") && !all.contains("seg-12"), "{all}");
    }

    #[test]
    fn a_short_segment_or_one_seen_rarely_is_not_ranked_a_jam() {
        let (held, reference) = city();
        let rows = in_window(&held.congestion, WINDOW);
        let ranked: Vec<&str> = ranked(&rows, &reference, RANKING)
            .iter()
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(ranked.len(), 28);
        assert_eq!(&ranked[..3], ["seg-02", "seg-03", "seg-04"]);
        let text = screen(&held, &reference, None);
        assert!(
            text.contains("slowest segments: 28 of 30 ranked (at least 20 m long, 5 samples)"),
            "{text}"
        );
        assert!(
            !text.contains("seg-00") && !text.contains("seg-01"),
            "{text}"
        );
        // Speeds in km/h, ratios to two places, a readable window.
        let seg = text.lines().find(|l| l.contains("seg-02")).expect("seg-02");
        let cells: Vec<&str> = seg.split_whitespace().collect();
        assert_eq!(
            cells,
            ["Hiidenkirnuntie", "seg-02", "12", "4", "3", "0.05", "jam"]
        );
        assert!(
            !text.contains(&WINDOW.to_string()),
            "no epoch milliseconds: {text}"
        );
    }
}
