//! Serving subscriptions on the node's QUIC endpoint (ALPN
//! `edgeflow-subscribe/1`): each bidirectional stream carries one
//! subscription. The client sends SUBSCRIBE; the node checks the operator's
//! token and scopes, then writes the snapshot, progress markers and changes
//! until the client goes away or the node stops.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use rustc_hash::FxHashSet;

use super::hub::{Hub, Interest, Refused};
use super::proto::{Filter, SubError, SubFrame, Subscribe};
use super::queue::Subscriber;
use crate::aggregate::Kind;
use crate::geo::zones::ZoneKind;
use crate::reference::Reference;
use crate::wire::admission::Unauthenticated;
use crate::wire::budget::Budget;

/// Largest SUBSCRIBE frame, bytes (an id filter of a few thousand keys).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

pub use crate::topology::Operator;

/// What the subscription server needs.
pub struct SubContext {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Operators (swapped by a reload).
    pub operators: ArcSwap<Vec<Operator>>,
    /// Changes at each reload: every subscription checks its request
    /// against the operators in force again, and ends when it is no longer
    /// allowed what it has.
    pub reloads: tokio::sync::watch::Receiver<u64>,
    /// Reference data, to resolve ids.
    pub reference: Arc<Reference>,
    /// How long a client may take to send SUBSCRIBE.
    pub request_timeout: Duration,
    /// The node-wide budget of buffered frame bytes (SUBSCRIBE requests
    /// are read within it).
    pub budget: Budget,
    /// Becomes true when the node has published its last aggregates.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl SubContext {
    fn operator(&self, token: &str) -> Option<Operator> {
        let operators = self.operators.load();
        let hashes = operators.iter().map(|op| op.token_sha256);
        crate::wire::token::find(hashes, token).map(|i| operators[i].clone())
    }

    /// The key number of an id of `kind`.
    fn key(&self, kind: Kind, id: &str) -> Option<u32> {
        let r = &self.reference;
        match kind {
            Kind::Congestion => r.road(id),
            Kind::Charging => r.charger(id),
            Kind::Zone => r
                .registry
                .get(id, ZoneKind::Named)
                .or_else(|| r.registry.get(id, ZoneKind::H3)),
        }
    }

    /// A key's point for bounding-box filters: a segment's midpoint, a
    /// charger's position, a zone's centre (of the zones in force: the
    /// area-weighted centroid of a named zone's outer rings, or the H3
    /// cell's centre).
    fn point(&self, kind: Kind, key: u32) -> Option<[f64; 2]> {
        let r = &self.reference;
        match kind {
            Kind::Congestion => crate::geo::zones::midpoint(&r.roads.get(key as usize)?.line),
            Kind::Charging => Some(r.chargers.get(key as usize)?.position),
            Kind::Zone => r.registry.centre(key),
        }
    }

    /// Every key of a kind (for bounding boxes).
    fn all_keys(&self, kind: Kind) -> Vec<u32> {
        let r = &self.reference;
        match kind {
            Kind::Congestion => (0..r.roads.len() as u32).collect(),
            Kind::Charging => (0..r.chargers.len() as u32).collect(),
            Kind::Zone => (0..).map_while(|n| r.registry.id(n).map(|_| n)).collect(),
        }
    }

    /// After a reload: the subscription `sub` made by `req` goes on only
    /// while the operators in force allow what it has; otherwise it is
    /// closed with the reason and `what` to do.
    pub fn recheck(&self, req: &Subscribe, sub: &Subscriber, what: &str) {
        match self.interest(req) {
            Ok(i) if &i == sub.interest() => {}
            Ok(_) => sub.close(
                SubError::Forbidden,
                format!("the operator's scopes changed in a configuration reload: {what}"),
            ),
            Err(Refused(code, msg)) => {
                sub.close(code, format!("{msg} (since a configuration reload)"));
            }
        }
    }

    /// Checks a request against the operator's scopes.
    pub fn interest(&self, req: &Subscribe) -> Result<Interest, Refused> {
        let refuse = |code, msg: String| Err(Refused(code, msg));
        let Some(op) = self.operator(&req.token) else {
            return refuse(SubError::Unauthorized, "unknown operator token".into());
        };
        let kind = match req.kind.parse::<Kind>() {
            Ok(kind) => kind,
            Err(why) => return refuse(SubError::UnknownKey, format!("unknown kind {why}")),
        };
        if !op.kinds.contains(&kind) {
            return refuse(
                SubError::Forbidden,
                format!(
                    "operator {:?} may not see {:?} aggregates",
                    op.name, req.kind
                ),
            );
        }
        let provisional = match req.mode.as_str() {
            "final" => false,
            "provisional" => true,
            other => {
                return refuse(
                    SubError::BadRequest,
                    format!("mode {other:?}: expected \"final\" or \"provisional\""),
                )
            }
        };
        let scope_ids = match kind {
            Kind::Congestion => &op.segments,
            Kind::Charging => &op.chargers,
            Kind::Zone => &op.zones,
        };
        let scope: Option<FxHashSet<u32>> = scope_ids
            .as_ref()
            .map(|ids| ids.iter().filter_map(|id| self.key(kind, id)).collect());
        let keys = match &req.filter {
            None => scope.clone(),
            Some(Filter {
                ids: Some(ids),
                bbox: None,
            }) => {
                let mut keys = FxHashSet::default();
                for id in ids {
                    let Some(k) = self.key(kind, id) else {
                        return refuse(
                            SubError::UnknownKey,
                            format!("no {} with id {id:?}", req.kind),
                        );
                    };
                    if scope.as_ref().is_some_and(|s| !s.contains(&k)) {
                        return refuse(
                            SubError::Forbidden,
                            format!("operator {:?} may not see {} {id:?}", op.name, req.kind),
                        );
                    }
                    keys.insert(k);
                }
                Some(keys)
            }
            Some(Filter {
                ids: None,
                bbox: Some([x0, y0, x1, y1]),
            }) => {
                if !(x0 <= x1 && y0 <= y1) {
                    return refuse(
                        SubError::BadRequest,
                        "bbox must be [min_lon, min_lat, max_lon, max_lat]".into(),
                    );
                }
                Some(
                    self.all_keys(kind)
                        .into_iter()
                        .filter(|k| scope.as_ref().is_none_or(|s| s.contains(k)))
                        .filter(|k| {
                            self.point(kind, *k).is_some_and(|p| {
                                (*x0..=*x1).contains(&p[0]) && (*y0..=*y1).contains(&p[1])
                            })
                        })
                        .collect(),
                )
            }
            Some(_) => {
                return refuse(
                    SubError::BadRequest,
                    "a filter has exactly one of \"ids\" and \"bbox\"".into(),
                )
            }
        };
        Ok(Interest {
            kind,
            keys,
            provisional,
        })
    }
}

async fn send(stream: &mut quinn::SendStream, frames: &[SubFrame]) -> bool {
    let mut buf = BytesMut::new();
    for f in frames {
        f.encode(&mut buf);
    }
    stream.write_all(&buf).await.is_ok()
}

async fn read_request(
    recv: &mut quinn::RecvStream,
    budget: &Budget,
) -> Result<Subscribe, (SubError, String)> {
    let (mut buf, _held) = budget
        .read_frame(recv, MAX_REQUEST_BYTES)
        .await
        .map_err(|e| (SubError::BadRequest, e.to_string()))?;
    match SubFrame::decode(&mut buf, MAX_REQUEST_BYTES) {
        Ok(Some(SubFrame::Subscribe(s))) => Ok(s),
        Ok(Some(_)) => Err((
            SubError::BadRequest,
            "the first frame must be SUBSCRIBE".into(),
        )),
        Ok(None) => Err((SubError::BadRequest, "incomplete frame".into())),
        Err(e) => Err((SubError::BadRequest, e.to_string())),
    }
}

/// Answers a stream with an ERROR frame and ends it, once the client has
/// it (so that a connection close cannot overtake it), or after a grace.
async fn refuse(mut send_half: quinn::SendStream, code: SubError, message: String) {
    send(&mut send_half, &[SubFrame::error(code, message)]).await;
    let _ = send_half.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send_half.stopped()).await;
}

enum Written {
    Done,
    Gone,
    TooSlow,
}

/// Serves one subscription stream.
async fn stream(
    ctx: Arc<SubContext>,
    conn: quinn::Connection,
    mut send_half: quinn::SendStream,
    mut recv: quinn::RecvStream,
    authenticated: Option<tokio::sync::oneshot::Sender<bool>>,
) {
    let read = read_request(&mut recv, &ctx.budget);
    let mut stopping = ctx.stopping.clone();
    let req = tokio::select! {
        read = tokio::time::timeout(ctx.request_timeout, read) => match read {
            Ok(Ok(r)) => r,
            Ok(Err((code, msg))) => return refuse(send_half, code, msg).await,
            Err(_) => {
                let msg = "no SUBSCRIBE in time".into();
                return refuse(send_half, SubError::BadRequest, msg).await;
            }
        },
        // A request still arriving when the node stops is told so, as an
        // ingest client still in HELLO is.
        () = async { drop(stopping.wait_for(|s| *s).await) } => {
            let msg = "the node is stopping".into();
            return refuse(send_half, SubError::ShuttingDown, msg).await;
        }
    };
    let sub = ctx.interest(&req).and_then(|i| {
        ctx.hub
            .subscribe(i, req.resume, req.snapshot_if_unavailable)
    });
    if let Some(tx) = authenticated {
        let known = !matches!(&sub, Err(Refused(SubError::Unauthorized, _)));
        let _ = tx.send(known);
    }
    let sub = match sub {
        Ok(s) => s,
        Err(Refused(code, msg)) => return refuse(send_half, code, msg).await,
    };
    // Resolves when the connection is lost: the subscription ends then,
    // not at the next change.
    let gone = async move { conn.closed().await };
    tokio::pin!(gone);
    let mut reloads = ctx.reloads.clone();
    reloads.mark_unchanged();
    loop {
        tokio::select! {
            _ = sub.notify.notified() => {}
            _ = &mut gone => {
                sub.close(SubError::ShuttingDown, "client gone".into());
                return;
            }
            Ok(()) = reloads.changed() => {
                ctx.recheck(&req, &sub, "subscribe again");
                continue;
            }
        }
        let drained = sub.drain();
        // Write, but give up on a client that stopped reading once its
        // queue passed the limit (the write may never finish).
        let mut more = false;
        let outcome = {
            let write = send_half.write_all(&drained.bytes);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    ok = &mut write => break if ok.is_ok() { Written::Done } else { Written::Gone },
                    _ = sub.notify.notified() => {
                        if sub.too_slow() {
                            break Written::TooSlow;
                        }
                        more = true;
                    }
                }
            }
        };
        match outcome {
            Written::Done => {}
            Written::Gone => {
                sub.close(SubError::ShuttingDown, "client gone".into());
                return;
            }
            Written::TooSlow => {
                let _ = send_half.reset(quinn::VarInt::from_u32(SubError::TooSlow as u32));
                return;
            }
        }
        if more {
            sub.notify.notify_one();
        }
        if drained.end {
            let _ = send_half.finish();
            // Let the client read to the end before the connection closes.
            let _ = tokio::time::timeout(Duration::from_secs(5), send_half.stopped()).await;
            return;
        }
    }
}

/// Serves one subscription connection: a subscription per bidirectional
/// stream, until the client closes it. Until a SUBSCRIBE with a known
/// operator token arrives, the connection is unauthenticated: it holds a
/// ticket of the unauthenticated pool, has one stream read at a time, and
/// is closed after an unknown token. Then it takes one of the node's
/// `max_connections` slots. A connection without a stream for
/// `request_timeout` (none opened yet, or all ended) is closed: it would
/// hold a slot for nothing.
pub async fn connection(conn: quinn::Connection, ctx: Arc<SubContext>, pending: Unauthenticated) {
    let mut pending = Some(pending);
    let mut _slot = None;
    let mut verdict: Option<tokio::sync::oneshot::Receiver<bool>> = None;
    let mut refused = false;
    let mut streams = tokio::task::JoinSet::new();
    let mut stopping = ctx.stopping.clone();
    loop {
        let idle = tokio::time::sleep(ctx.request_timeout);
        let waiting = verdict.is_some();
        tokio::select! {
            accepted = conn.accept_bi(), if !refused && (pending.is_none() || streams.is_empty()) => match accepted {
                Ok((send_half, recv)) => {
                    let tell = pending.is_some().then(|| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        verdict = Some(rx);
                        tx
                    });
                    streams.spawn(stream(ctx.clone(), conn.clone(), send_half, recv, tell));
                }
                Err(_) => break,
            },
            known = async {
                match verdict.as_mut() {
                    // No answer: the request never got as far as its token.
                    Some(rx) => rx.await.ok(),
                    None => None,
                }
            }, if waiting => {
                verdict = None;
                if known == Some(true) {
                    match pending.take().and_then(Unauthenticated::authenticate) {
                        Some(slot) => _slot = Some(slot),
                        None => {
                            conn.close(
                                quinn::VarInt::from_u32(SubError::Overloaded as u32),
                                b"the node serves max_connections sessions; retry later",
                            );
                            break;
                        }
                    }
                } else if known == Some(false) {
                    refused = true;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = idle, if streams.is_empty() => {
                conn.close(
                    quinn::VarInt::from_u32(SubError::BadRequest as u32),
                    b"no subscription in time",
                );
                break;
            }
            _ = stopping.wait_for(|s| *s) => break,
        }
        if refused && streams.is_empty() {
            conn.close(
                quinn::VarInt::from_u32(SubError::Unauthorized as u32),
                b"unknown operator token",
            );
            break;
        }
    }
    while streams.join_next().await.is_some() {}
}
