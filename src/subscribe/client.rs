//! The subscriber side: `edgeflow subscribe`, and [`State`], what a client
//! rebuilds from the frames (snapshot, then changes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bytes::BytesMut;

use crate::wire::envelope;

use super::proto::{Filter, Progress, ResumePoint, Row, SubFrame, Subscribe, ALPN};

/// Largest frame a client accepts, bytes.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// What to subscribe to, and where.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// The node.
    pub to: SocketAddr,
    /// Name in the node's certificate.
    pub server_name: String,
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate and key (PEM), for nodes that require mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The request.
    pub request: Subscribe,
}

impl SubscribeOptions {
    /// A request for `kind` with `token`, final values, no filter.
    pub fn request(token: &str, kind: &str) -> Subscribe {
        Subscribe {
            token: token.into(),
            kind: kind.into(),
            filter: None,
            mode: "final".into(),
            resume: None,
            snapshot_if_unavailable: false,
        }
    }
}

/// The rows a subscriber holds: applying every frame in order gives the
/// node's visible rows.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Current rows by (key id, window start).
    pub rows: BTreeMap<(String, u64), Row>,
    /// The last progress marker.
    pub progress: Option<Progress>,
    /// Whether the snapshot marker has arrived.
    pub snapshot_done: bool,
    /// Lag notices, summed.
    pub coalesced: u64,
    /// Forget rows once they retire (a live view with bounded memory);
    /// `false` keeps them as history.
    pub forget_retired: bool,
}

impl State {
    /// Applies one frame.
    pub fn apply(&mut self, frame: &SubFrame) {
        match frame {
            SubFrame::Row(r) => {
                let key = (r.key.clone(), r.window_start_ms);
                if r.op == "retract" {
                    self.rows.remove(&key);
                } else {
                    self.rows.insert(key, r.clone());
                }
            }
            SubFrame::Progress(p) => {
                self.snapshot_done |= p.snapshot;
                self.progress = Some(*p);
                if self.forget_retired {
                    self.rows.retain(|(_, window), _| !p.retired(*window));
                }
            }
            SubFrame::Lagged(l) => self.coalesced += l.coalesced,
            SubFrame::Subscribe(_) | SubFrame::Error(_) => {}
        }
    }

    /// Where to resume from after a reconnect.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        self.progress.map(|p| ResumePoint {
            epoch: p.epoch,
            revision: p.revision,
        })
    }
}

/// Subscribes and calls `on_frame` with every frame until the node ends
/// the stream (or `on_frame` returns false). Returns the error frame's
/// text if the node refused or ended the subscription with an error.
pub async fn subscribe(
    opts: &SubscribeOptions,
    mut on_frame: impl FnMut(&SubFrame) -> bool,
) -> anyhow::Result<Option<String>> {
    let mut error = None;
    let mut bad = None;
    let ended = subscribe_raw(opts, |t, payload| match SubFrame::parse(t, payload) {
        Ok(frame) => {
            if let SubFrame::Error(e) = &frame {
                error = Some(format!("error {}: {}", e.code, e.message));
            }
            on_frame(&frame)
        }
        Err(e) => {
            bad = Some(e);
            false
        }
    })
    .await?;
    if let Some(e) = bad {
        anyhow::bail!("malformed frame from the node: {e}");
    }
    Ok(error.or(ended))
}

/// Subscribes and calls `on_frame` with each frame's type and JSON payload,
/// undecoded (for clients that look at a few frames only). Returns why the
/// stream ended abnormally, if it did.
pub async fn subscribe_raw(
    opts: &SubscribeOptions,
    mut on_frame: impl FnMut(u8, &[u8]) -> bool,
) -> anyhow::Result<Option<String>> {
    let mut endpoint = quinn::Endpoint::client((std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        .or_else(|_| quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into()))?;
    endpoint.set_default_client_config(crate::wire::tls::client_config(
        &opts.ca,
        opts.identity.as_ref(),
        ALPN,
    )?);
    let peer = crate::wire::connect::Peer {
        to: opts.to,
        server_name: opts.server_name.clone(),
        ca: opts.ca.clone(),
        identity: opts.identity.is_some(),
    };
    let conn = crate::wire::connect::connect(&endpoint, &peer).await?;
    // A node refusing the client certificate does so now (TLS 1.3).
    let tls = |e: anyhow::Error| crate::wire::connect::refused(&conn, &peer).map_or(e, Into::into);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| tls(e.into()))?;
    let mut buf = BytesMut::new();
    SubFrame::Subscribe(opts.request.clone()).encode(&mut buf);
    send.write_all(&buf).await.map_err(|e| tls(e.into()))?;
    buf.clear();
    let mut ended = None;
    let mut chunk = vec![0u8; 64 << 10];
    'read: loop {
        while let Some((kind, payload)) = envelope::split(&mut buf, MAX_FRAME_BYTES)? {
            if !on_frame(kind, &payload) {
                break 'read;
            }
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(None) => break,
            Err(e) => {
                ended = Some(match crate::wire::connect::refused(&conn, &peer) {
                    Some(tls) => tls.to_string(),
                    None => format!("stream ended: {e}"),
                });
                break;
            }
        }
    }
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(ended)
}

/// Parses `--ids a,b` / `--bbox x0,y0,x1,y1` into a filter.
pub fn filter(ids: Option<&str>, bbox: Option<&str>) -> anyhow::Result<Option<Filter>> {
    match (ids, bbox) {
        (None, None) => Ok(None),
        (Some(ids), None) => Ok(Some(Filter {
            ids: Some(ids.split(',').map(str::to_owned).collect()),
            bbox: None,
        })),
        (None, Some(b)) => {
            let v: Vec<f64> = b
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .context("--bbox: four numbers: min_lon,min_lat,max_lon,max_lat")?;
            let [a, b, c, d] = v[..] else {
                anyhow::bail!("--bbox: four numbers: min_lon,min_lat,max_lon,max_lat");
            };
            if [a, c].iter().any(|lon| lon.abs() > 180.0)
                || [b, d].iter().any(|lat| lat.abs() > 90.0)
            {
                anyhow::bail!("--bbox {a},{b},{c},{d}: longitudes within ±180 and latitudes within ±90, in the order min_lon,min_lat,max_lon,max_lat (latitude first is a common slip)");
            }
            if a > c || b > d {
                anyhow::bail!("--bbox {a},{b},{c},{d}: a minimum exceeds its maximum (swapped corners?): the order is min_lon,min_lat,max_lon,max_lat, e.g. --bbox {},{},{},{}", a.min(c), b.min(d), a.max(c), b.max(d));
            }
            Ok(Some(Filter {
                ids: None,
                bbox: Some([a, b, c, d]),
            }))
        }
        (Some(_), Some(_)) => anyhow::bail!("give --ids or --bbox, not both"),
    }
}

/// A frame as one JSON line (`{"frame": "row", ...}`).
pub fn json_line(frame: &SubFrame) -> String {
    let (name, body) = match frame {
        SubFrame::Subscribe(s) => ("subscribe", serde_json::to_value(s)),
        SubFrame::Row(r) => ("row", serde_json::to_value(r)),
        SubFrame::Progress(p) => ("progress", serde_json::to_value(p)),
        SubFrame::Lagged(l) => ("lagged", serde_json::to_value(l)),
        SubFrame::Error(e) => ("error", serde_json::to_value(e)),
    };
    let mut v = body.unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("frame".into(), name.into());
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscribe::proto::{Progress, Row};

    #[test]
    fn retired_rows_are_forgotten_at_the_progress_that_retires_them() {
        let mut state = State {
            forget_retired: true,
            ..State::default()
        };
        for window in [0, 60_000] {
            state.apply(&SubFrame::Row(Row {
                op: "upsert".into(),
                key: "s1".into(),
                window_start_ms: window,
                status: Some("final".into()),
                revision: 1,
                value: Some(serde_json::Map::new()),
                name: None,
            }));
        }
        let progress = |watermark_ms| {
            SubFrame::Progress(Progress {
                epoch: 1,
                revision: 2,
                watermark_ms,
                snapshot: false,
                published_unix_us: 0,
                window_ms: 60_000,
                retention_ms: 30_000,
            })
        };
        state.apply(&progress(89_999));
        assert_eq!(state.rows.len(), 2);
        state.apply(&progress(90_000));
        assert_eq!(state.rows.keys().map(|k| k.1).collect::<Vec<_>>(), [60_000]);
    }
}
