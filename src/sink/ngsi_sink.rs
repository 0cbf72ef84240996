//! `[[sink]] type = "ngsi-ld"`: upserts entities to an NGSI-LD context
//! broker (`POST /ngsi-ld/v1/entityOperations/upsert?options=update`,
//! `Content-Type: application/json`, the @context in a `Link` header,
//! `NGSILD-Tenant` when set).
//!
//! One entity per segment and per charger ([`super::ngsi`]), delivered by
//! the [`super::driver`] keyed by entity (latest only, exclusive, with a
//! ledger): a request never holds one id twice, an entity waits while a
//! request holding it is in flight (several requests may be in flight,
//! `max_in_flight`), and a row of an older window than the entity's latest
//! is never sent: the broker's entity only moves forward. Requests hold at
//! most `max_entities` entities and `max_bytes` bytes.
//!
//! The broker's answers, as the driver's outcomes:
//! - 201, 204: every entity acknowledged.
//! - 207: the ids in `success` are acknowledged; of those in `errors`, an
//!   error with status 5xx or 429 (or none) is retried, any other is
//!   dead-lettered (counted, the broker's answer said in the log).
//! - 413: too large (requests are cut smaller).
//! - 408, 429, 5xx, a timeout or a lost connection: retry after a
//!   backoff (at least what a `Retry-After` asks).
//! - 401, 403, 404: the same (a configuration to fix: said once per outage).
//! - 400 and other 4xx: the request's entities are dead-lettered.
//!
//! Brokers keep every write as history, so the sink keeps a ledger: a
//! restarted node never resends what a broker acknowledged.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

use super::driver::{Add, Outcome, Row, Settings, Target};
use super::SinkContext;
use crate::aggregate::AggKey;
use crate::topology::NgsiSink;

/// The upsert path under the broker's base URL.
pub const UPSERT_PATH: &str = "/ngsi-ld/v1/entityOperations/upsert?options=update";

/// A 207 body (NGSI-LD BatchOperationResult).
#[derive(Deserialize)]
struct BatchResult {
    #[serde(default)]
    errors: Vec<BatchError>,
}

#[derive(Deserialize)]
struct BatchError {
    #[serde(rename = "entityId")]
    entity_id: String,
    #[serde(default)]
    error: serde_json::Value,
}

/// An upsert request being built: its body and its entities' ids.
pub struct Upsert {
    body: Vec<u8>,
    ids: Vec<String>,
}

/// The NGSI-LD transport of a sink.
pub struct Ngsi {
    cfg: NgsiSink,
    ctx: SinkContext,
    client: reqwest::Client,
}

impl Ngsi {
    /// The transport of sink `cfg`; an error if its CA cannot be read.
    pub fn new(cfg: NgsiSink, ctx: SinkContext) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(cfg.max_in_flight);
        if let Some(ca) = &cfg.ca {
            let pem = std::fs::read(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Ngsi {
            client: b.build()?,
            cfg,
            ctx,
        })
    }
}

impl Target for Ngsi {
    type Request = Upsert;

    fn what(&self) -> String {
        format!("ngsi-ld sink {}", self.cfg.name)
    }

    fn settings(&self) -> Settings {
        let dir = (self.cfg.state_dir.clone())
            .unwrap_or_else(|| self.ctx.log_dir.join(format!("sink-{}", self.cfg.name)));
        Settings {
            max_rows: self.cfg.max_entities,
            max_in_flight: self.cfg.max_in_flight,
            max_hold: self.cfg.max_hold,
            max_backlog: self.cfg.max_backlog,
            latest_only: true,
            exclusive: true,
            ledger: Some(dir.join("ledger")),
            provisional: false,
            // An entity is a segment or a charger, which keep their rows.
            retractions: false,
        }
    }

    fn ledger_id(&self, key: &AggKey) -> Option<String> {
        super::ngsi::entity_id(&self.ctx.reference, &self.ctx.node, key)
    }

    fn request(&mut self) -> Upsert {
        Upsert {
            body: b"[".to_vec(),
            ids: Vec::new(),
        }
    }

    fn add(&mut self, request: &mut Upsert, rows: usize, row: &Row) -> Add {
        let (reference, node) = (&self.ctx.reference, &self.ctx.node);
        let Some(id) = self.ledger_id(&row.key) else {
            return Add::Never(format!("{:?} has no entity", row.key));
        };
        let before = request.body.len();
        if rows > 0 {
            request.body.push(b',');
        }
        let window_ms = self.ctx.window_ms;
        if !super::ngsi::write_entity(
            &mut request.body,
            reference,
            node,
            window_ms,
            &row.key,
            &row.value,
        ) {
            request.body.truncate(before);
            return Add::Never(format!("{:?} has no entity", row.key));
        }
        if request.body.len() + 1 > self.cfg.max_bytes {
            request.body.truncate(before);
            if rows == 0 {
                let max = self.cfg.max_bytes;
                return Add::Never(format!(
                    "entity {id} alone is larger than max_bytes ({max})"
                ));
            }
            return Add::Full;
        }
        request.ids.push(id);
        Add::Taken
    }

    fn send(&mut self, request: Upsert) -> impl Future<Output = Outcome> + Send + 'static {
        let Upsert { mut body, ids } = request;
        body.push(b']');
        let mut req = (self.client)
            .post(format!("{}{UPSERT_PATH}", self.cfg.url))
            .header("Content-Type", "application/json")
            .header(
                "Link",
                format!(
                    "<{}>; rel=\"http://www.w3.org/ns/json-ld#context\"; type=\"application/ld+json\"",
                    self.cfg.context
                ),
            )
            .body(body);
        if let Some(t) = &self.cfg.tenant {
            req = req.header("NGSILD-Tenant", t);
        }
        if let Some(t) = &self.cfg.token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Retry {
                        why: format!("{e}"),
                        after: Duration::ZERO,
                    }
                }
            };
            let code = resp.status().as_u16();
            let after = (resp.headers().get("Retry-After"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_secs);
            let text = resp.text().await.unwrap_or_default();
            let said: String = text.chars().take(300).collect();
            match code {
                200 | 201 | 204 => Outcome::Done,
                207 => match serde_json::from_str::<BatchResult>(&text) {
                    Ok(r) => partly(&ids, r),
                    Err(e) => Outcome::Retry {
                        why: format!("a 207 whose body is not a batch result ({e}): {said}"),
                        after,
                    },
                },
                413 => Outcome::TooLarge,
                401 | 403 | 404 | 408 | 429 | 500..=599 => Outcome::Retry {
                    why: format!("the broker answered {code}: {said}"),
                    after,
                },
                _ => Outcome::Refused(format!("the broker answered {code}: {said}")),
            }
        }
    }
}

/// A 207's errors by place in the request: 5xx, 429, 408 (or no status)
/// are retried, the rest refused for good.
fn partly(ids: &[String], r: BatchResult) -> Outcome {
    let (mut retry, mut refused) = (Vec::new(), Vec::new());
    for e in r.errors {
        let Some(i) = ids.iter().position(|id| *id == e.entity_id) else {
            continue;
        };
        let status = e.error.get("status").and_then(|s| s.as_u64());
        if status.is_none_or(|s| s >= 500 || s == 429 || s == 408) {
            retry.push(i);
        } else {
            refused.push((i, format!("{}: {}", e.entity_id, e.error)));
        }
    }
    Outcome::Partly { retry, refused }
}
