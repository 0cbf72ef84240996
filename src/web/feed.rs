//! A page's live feed: Server-Sent Events fed by the subscription hub.
//!
//! One hub subscription per kind the operator may see, provisional mode,
//! exactly as `edgeflow subscribe` would make it, so the page shows what
//! the operator's subscription shows (kinds, allow lists, the k-vehicle
//! threshold; never a raw position). Each time a subscription has
//! something, its frames become one event:
//!
//! ```text
//! event: update
//! data: {"kind":"congestion","rows":[...],"progress":{...},"lagged":0}
//! ```
//!
//! Updates come at most once per `[web] feed_interval` per kind (rows that
//! change meanwhile are coalesced by the hub, the latest value per row),
//! each as events of at most [`MAX_EVENT_ROWS`] rows, the progress marker
//! and the lag count on the last (`null` and 0 on the others).
//! `rows` are the subscription's ROW frames as JSON (`op`, `key`,
//! `window_start_ms`, `status`, `revision`, `value`, `name`), `progress`
//! its last progress marker (the watermark, window and retention). A page
//! that reads slowly has its rows coalesced by the hub (latest value per
//! row, counted in `lagged`); one that stops reading for the hub's
//! `max_lag` gets `event: error` and its feed ends (the browser's
//! EventSource reconnects and starts from a fresh snapshot). A comment
//! line every [`HEARTBEAT`] keeps proxies from closing a quiet feed and
//! finds pages that went away.
//!
//! After `kinds`, and again whenever a reloaded zone file changes the
//! named zones in force (seen with the zone kind's next update, or its
//! next heartbeat), an operator who may see zones gets
//!
//! ```text
//! event: geometry
//! data: {"zones_generation":1}
//! ```
//!
//! and a page whose geometry is of another generation loads it again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::aggregate::Kind;
use crate::subscribe::hub::Refused;
use crate::subscribe::proto::{SubError, SubFrame};
use crate::subscribe::queue::Subscriber;
use crate::subscribe::server::SubContext;

/// How often a quiet feed sends a comment line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events buffered per page before the hub's own coalescing takes over.
const BUFFERED_EVENTS: usize = 4;
/// Largest frame taken from a subscription's queue.
const MAX_FRAME: usize = 1 << 24;
/// Most rows in one `update` event: a page parses and applies an event in
/// one task, so a city's worth of rows (20,000 segments) comes as several
/// events, and the page draws frames between them.
pub const MAX_EVENT_ROWS: usize = 2_000;

#[derive(Serialize)]
struct Ended<'a> {
    kind: &'a str,
    code: u16,
    message: String,
}

/// One SSE event.
fn event(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// Starts the feed of `token`: its events arrive on the returned receiver
/// (the response body), until the page goes away, the node stops or the
/// operator's scopes change. `Err` when the token is no operator's.
pub fn start(
    ctx: &Arc<SubContext>,
    token: &str,
    every: Duration,
    runtime: &tokio::runtime::Handle,
) -> Result<mpsc::Receiver<Bytes>, Refused> {
    let interests = super::geometry::interests(ctx, token)?;
    let (tx, rx) = mpsc::channel(BUFFERED_EVENTS);
    let mut subs = Vec::new();
    for interest in interests {
        match ctx.hub.subscribe(interest, None, false) {
            Ok(sub) => subs.push(sub),
            Err(e) => {
                for s in &subs {
                    s.close(SubError::ShuttingDown, "feed refused".into());
                }
                return Err(e);
            }
        }
    }
    // The first event says which kinds follow (none: nothing to show),
    // the next the zones' generation (to an operator who sees zones).
    let kinds: Vec<&str> = subs.iter().map(|s| s.kind().as_str()).collect();
    let generation = super::geometry::zones_generation(ctx);
    let mut hello = vec![event("kinds", &kinds)];
    if kinds.contains(&Kind::Zone.as_str()) {
        hello.push(geometry_event(generation));
    }
    for e in hello {
        if tx.try_send(e).is_err() {
            return Err(Refused(SubError::ShuttingDown, "feed closed".into()));
        }
    }
    for sub in subs {
        let zones = (sub.kind() == Kind::Zone).then_some(generation);
        runtime.spawn(follow(
            ctx.clone(),
            token.to_owned(),
            sub,
            tx.clone(),
            every,
            zones,
        ));
    }
    Ok(rx)
}

/// The `geometry` event of the named zones' `generation`.
fn geometry_event(generation: u64) -> Bytes {
    event(
        "geometry",
        &serde_json::json!({ "zones_generation": generation }),
    )
}

/// Sends one subscription's changes as events until it ends; `zones`, the
/// zones' generation the page was told (the zone kind's feed only), is
/// followed too.
async fn follow(
    ctx: Arc<SubContext>,
    token: String,
    sub: Arc<Subscriber>,
    tx: mpsc::Sender<Bytes>,
    every: Duration,
    mut zones: Option<u64>,
) {
    let kind = sub.kind().as_str();
    let mut reloads = ctx.reloads.clone();
    reloads.mark_unchanged();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        let beat = tokio::select! {
            _ = sub.notify.notified() => false,
            _ = heartbeat.tick() => true,
            _ = tx.closed() => {
                sub.close(SubError::ShuttingDown, "page gone".into());
                return;
            }
            Ok(()) = reloads.changed() => {
                // As a QUIC subscription: it goes on only while the
                // operators in force allow what it has.
                let req = super::geometry::request(&token, sub.kind());
                ctx.recheck(&req, &sub, "sign in again");
                continue;
            }
        };
        if let Some(told) = zones.as_mut() {
            let now = super::geometry::zones_generation(&ctx);
            if now != *told {
                *told = now;
                if tx.send(geometry_event(now)).await.is_err() {
                    sub.close(SubError::ShuttingDown, "page gone".into());
                    return;
                }
            }
        }
        if beat {
            if tx
                .send(Bytes::from_static(b": heartbeat\n\n"))
                .await
                .is_err()
            {
                sub.close(SubError::ShuttingDown, "page gone".into());
                return;
            }
            continue;
        }
        let drained = sub.drain();
        let mut bytes = drained.bytes;
        let (update, ended) = splice(kind, &mut bytes);
        let sent = !update.is_empty();
        for event in update {
            if tx.send(event).await.is_err() {
                sub.close(SubError::ShuttingDown, "page gone".into());
                return;
            }
        }
        if sent && !drained.end {
            // What changes meanwhile waits in the hub's queue, the latest
            // value per row: a page gets at most one update per `every`
            // however often the dataflow emits.
            tokio::time::sleep(every).await;
        }
        if drained.end {
            let end = ended.unwrap_or(Ended {
                kind,
                code: SubError::ShuttingDown as u16,
                message: "the node is stopping".into(),
            });
            let _ = tx.send(event("end", &end)).await;
            return;
        }
    }
}

/// The `update` events of a subscription's drained frames (none when
/// there is nothing to say), their rows' JSON payloads spliced in as the
/// hub encoded them (once for every subscriber: nothing is parsed or
/// encoded again per page), at most [`MAX_EVENT_ROWS`] an event; and the
/// closing error, if the frames end with one.
fn splice<'k>(kind: &'k str, frames: &mut bytes::BytesMut) -> (Vec<Bytes>, Option<Ended<'k>>) {
    use crate::subscribe::proto::kind as frame;
    let head = |capacity: usize| {
        let mut out = Vec::with_capacity(capacity + 128);
        out.extend_from_slice(b"event: update\ndata: {\"kind\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"rows\":[");
        out
    };
    let tail = |mut out: Vec<u8>, progress: Option<&[u8]>, lagged: u64| {
        out.extend_from_slice(b"],\"progress\":");
        out.extend_from_slice(progress.unwrap_or(b"null"));
        out.extend_from_slice(format!(",\"lagged\":{lagged}}}\n\n").as_bytes());
        Bytes::from(out)
    };
    let mut events = Vec::new();
    let mut out = head(frames.len());
    let (mut rows, mut lagged) = (0usize, 0u64);
    let mut progress: Option<Bytes> = None;
    let mut ended = None;
    while let Ok(Some((t, payload))) = crate::wire::envelope::split(frames, MAX_FRAME) {
        match t {
            frame::ROW => {
                if rows == MAX_EVENT_ROWS {
                    // The next event is about as long as this one.
                    let next = head(out.len().min(frames.len()));
                    let full = std::mem::replace(&mut out, next);
                    events.push(tail(full, None, 0));
                    rows = 0;
                }
                if rows > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&payload);
                rows += 1;
            }
            frame::PROGRESS => progress = Some(payload),
            _ => match SubFrame::parse(t, &payload) {
                Ok(SubFrame::Lagged(l)) => lagged += l.coalesced,
                Ok(SubFrame::Error(e)) => {
                    ended = Some(Ended {
                        kind,
                        code: e.code,
                        message: e.message,
                    });
                }
                _ => {}
            },
        }
    }
    if rows > 0 || progress.is_some() || lagged > 0 {
        events.push(tail(out, progress.as_deref(), lagged));
    }
    (events, ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscribe::proto::{Progress, Row};

    /// `rows` row frames and a progress marker, as a hub queues them.
    fn frames(rows: usize) -> bytes::BytesMut {
        let mut buf = bytes::BytesMut::new();
        for i in 0..rows {
            SubFrame::Row(Row {
                op: "upsert".into(),
                key: format!("seg-{i}"),
                window_start_ms: 60_000,
                status: Some("provisional".into()),
                revision: i as u64 + 1,
                value: serde_json::json!({"samples": i}).as_object().cloned(),
                name: None,
            })
            .encode(&mut buf);
        }
        SubFrame::Progress(Progress {
            epoch: 1,
            revision: rows as u64,
            watermark_ms: 90_000,
            snapshot: true,
            published_unix_us: 0,
            window_ms: 60_000,
            retention_ms: 900_000,
        })
        .encode(&mut buf);
        buf
    }

    /// The JSON of an `update` event.
    fn data(event: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(event).expect("UTF-8");
        let json = (text.strip_prefix("event: update\ndata: "))
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("one update event");
        serde_json::from_str(json).expect("JSON")
    }

    #[test]
    fn a_large_update_comes_as_events_of_at_most_max_event_rows_with_the_progress_on_the_last() {
        let (events, ended) = splice("congestion", &mut frames(2 * MAX_EVENT_ROWS + 500));
        assert!(ended.is_none());
        let parsed: Vec<serde_json::Value> = events.iter().map(data).collect();
        let sizes: Vec<usize> = (parsed.iter())
            .map(|e| e["rows"].as_array().expect("rows").len())
            .collect();
        assert_eq!(sizes, [MAX_EVENT_ROWS, MAX_EVENT_ROWS, 500]);
        // Every row once, in order.
        let keys: Vec<&str> = (parsed.iter())
            .flat_map(|e| e["rows"].as_array().expect("rows"))
            .map(|r| r["key"].as_str().expect("key"))
            .collect();
        let want: Vec<String> = (0..2 * MAX_EVENT_ROWS + 500)
            .map(|i| format!("seg-{i}"))
            .collect();
        assert_eq!(keys, want);
        assert!(parsed[..2].iter().all(|e| e["progress"].is_null()));
        assert_eq!(parsed[2]["progress"]["watermark_ms"], 90_000);
        assert!(parsed.iter().all(|e| e["kind"] == "congestion"));
    }

    #[test]
    fn nothing_drained_is_no_event_and_a_progress_alone_is_one() {
        let (events, _) = splice("zone", &mut bytes::BytesMut::new());
        assert!(events.is_empty());
        let (events, _) = splice("zone", &mut frames(0));
        assert_eq!(events.len(), 1);
        assert_eq!(data(&events[0])["rows"], serde_json::json!([]));
    }
}
