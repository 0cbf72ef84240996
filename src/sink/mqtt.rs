//! `[[sink]] type = "mqtt"`: rows published to an MQTT broker (MQTT 5,
//! QoS 1), delivered by the [`super::driver`].
//!
//! **Topics** are `<topic_prefix>/<node>/<kind>/<key>`: kind `congestion`,
//! `charging` or `zone`; key the segment's, charger's or zone's id, with
//! `/`, `+`, `#`, `%` and control characters percent-encoded (a SUMO id
//! `-1234#2` is `-1234%232`).
//!
//! **Payload**: a JSON object: `node`, `kind`, `key`, `status` (final,
//! correction, provisional), `ordering`, then the row's fields as the CSV
//! files carry them (TELEMETRY.md §4; numbers as JSON numbers, an empty
//! field as null). Receivers keep, per topic, the message with the largest
//! `[window_start_ms, ordering]` and drop the rest: `ordering` (the node's
//! watermark when the value was computed) grows with every value of a
//! window, so a resend or a value overtaken is recognised as stale.
//!
//! **Retained**: each window's final value (or its correction) is
//! published retained, with a message expiry of `retain_expiry`, unless a
//! newer window of the same key has already been published (a late
//! correction, or a resend after a newer window went out): so the retained
//! message of a topic is its latest final window. Provisional values
//! (`provisional = true`) are published, not retained.
//!
//! **Delivery**: a row counts as delivered on its PUBACK. The session task
//! below owns the MQTT connection (clean start, so a new connection never
//! replays an old one's packets: the driver resends what was not
//! acknowledged); a broker that fails a publish (a PUBACK with an error
//! reason, an ACL) drops the connection in rumqttc, so the rows wait and
//! the sink retries with backoff, saying why. A restart republishes the
//! windows the node's log replay recomputes (QoS 1 is at least once;
//! receivers drop them by `ordering`).

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::driver::{Add, Outcome, Row, Settings, Target};
use super::SinkContext;
use crate::aggregate::{fields, AggKey, Field, Kind};
use crate::dataflow::emit::Status;
use crate::delivery::backoff::Backoff;
use crate::topology::MqttSink;

/// Publishes queued for the session at most, beyond those in flight.
pub const SESSION_QUEUE: usize = 8192;
/// Longest wait for the broker's CONNACK.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One message to publish, and where its PUBACK is told.
struct Publish {
    topic: String,
    payload: Bytes,
    retain: bool,
    expiry: Option<u32>,
    acked: oneshot::Sender<Result<(), String>>,
}

/// A batch of messages being built.
pub struct Batch {
    messages: Vec<(String, Bytes, bool)>,
}

/// The MQTT transport of a sink.
pub struct Mqtt {
    cfg: MqttSink,
    ctx: SinkContext,
    session: mpsc::UnboundedSender<Publish>,
    /// The session task, until the first batch starts it on the runtime.
    idle: Option<(MqttOptions, mpsc::UnboundedReceiver<Publish>)>,
    /// Per key, the newest window published retained.
    retained: FxHashMap<(Kind, u32), u64>,
}

impl Mqtt {
    /// The transport of sink `cfg`: its session task starts on the current
    /// runtime when the first batch is sent.
    pub fn new(cfg: MqttSink, ctx: SinkContext) -> anyhow::Result<Self> {
        let client_id = (cfg.client_id.clone())
            .unwrap_or_else(|| format!("edgeflow-{}-{}", ctx.node, cfg.name));
        let mut options = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
        options
            .set_clean_start(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_connection_timeout(CONNECT_TIMEOUT.as_secs());
        if let Some((user, password)) = &cfg.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if cfg.tls {
            let Some(ca) = &cfg.ca else {
                anyhow::bail!("mqtts needs `ca` (the broker's CA certificate, PEM)");
            };
            let ca = std::fs::read(ca)?;
            options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            }));
        }
        // Unbounded: the driver bounds it (max_in_flight x max_messages).
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Mqtt {
            cfg,
            ctx,
            session: tx,
            idle: Some((options, rx)),
            retained: FxHashMap::default(),
        })
    }

    /// The topic of a row's key.
    fn topic(&self, key: &AggKey, id: &str) -> String {
        format!(
            "{}/{}/{}/{}",
            self.cfg.topic_prefix,
            topic_level(&self.ctx.node),
            key.kind.as_str(),
            topic_level(id)
        )
    }
}

/// Percent-encodes what may not stand in one topic level.
pub fn topic_level(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if matches!(c, '/' | '+' | '#' | '%') || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The JSON payload of a row (see the module documentation).
pub fn payload(node: &str, row: &Row, fields: &[(&'static str, Field)]) -> Value {
    let mut o = Map::new();
    let status = match row.status {
        Status::Final => "final",
        Status::Correction => "correction",
        Status::Provisional => "provisional",
        Status::Retraction => "retraction",
    };
    o.insert("node".into(), Value::from(node));
    o.insert("kind".into(), Value::from(row.key.kind.as_str()));
    if let Some((_, Field::Text(id))) = fields.first() {
        o.insert("key".into(), Value::from(id.as_str()));
    }
    o.insert("status".into(), Value::from(status));
    o.insert("ordering".into(), Value::from(row.watermark));
    for (name, f) in fields {
        let v = match f {
            Field::Text(t) => Value::from(t.as_str()),
            Field::Number(n) => serde_json::from_str(n).unwrap_or_else(|_| Value::from(n.as_str())),
            Field::Empty => Value::Null,
        };
        o.insert((*name).into(), v);
    }
    Value::Object(o)
}

impl Target for Mqtt {
    type Request = Batch;

    fn what(&self) -> String {
        format!("mqtt sink {}", self.cfg.name)
    }

    fn settings(&self) -> Settings {
        Settings {
            max_rows: self.cfg.max_messages,
            max_in_flight: self.cfg.max_in_flight,
            max_hold: self.cfg.max_hold,
            max_backlog: self.cfg.max_backlog,
            latest_only: false,
            exclusive: false,
            ledger: None,
            provisional: self.cfg.provisional,
            retractions: true,
        }
    }

    fn ledger_id(&self, _key: &AggKey) -> Option<String> {
        None
    }

    fn request(&mut self) -> Batch {
        Batch {
            messages: Vec::with_capacity(self.cfg.max_messages.min(4096)),
        }
    }

    fn add(&mut self, batch: &mut Batch, _rows: usize, row: &Row) -> Add {
        let (reference, window_ms) = (&self.ctx.reference, self.ctx.window_ms);
        let Some(f) = fields(reference, window_ms, &row.key, &row.value) else {
            return Add::Never(format!("{:?} is not in the reference data", row.key));
        };
        let id = f
            .first()
            .map(|(_, v)| v.text().to_owned())
            .unwrap_or_default();
        let body = payload(&self.ctx.node, row, &f).to_string();
        let entity = (row.key.kind, row.key.key);
        let retain = row.status != Status::Provisional
            && self
                .retained
                .get(&entity)
                .is_none_or(|w| *w <= row.key.window);
        if retain {
            self.retained.insert(entity, row.key.window);
        }
        batch
            .messages
            .push((self.topic(&row.key, &id), Bytes::from(body), retain));
        Add::Taken
    }

    fn send(&mut self, batch: Batch) -> impl Future<Output = Outcome> + Send + 'static {
        // The driver runs on the node's runtime: the session starts there.
        if let Some((options, rx)) = self.idle.take() {
            tokio::spawn(session(options, rx, self.what()));
        }
        // Queued now, in the order batches are cut: so the broker sees a
        // key's windows in order, whatever the batches in flight do, and
        // the retained message is the latest.
        let expiry = Some(u32::try_from(self.cfg.retain_expiry.as_secs()).unwrap_or(u32::MAX));
        let total = batch.messages.len();
        let mut acks = Vec::with_capacity(total);
        for (topic, payload, retain) in batch.messages {
            let (tx, rx) = oneshot::channel();
            let p = Publish {
                topic,
                payload,
                retain,
                expiry,
                acked: tx,
            };
            if self.session.send(p).is_err() {
                break;
            }
            acks.push(rx);
        }
        let timeout = self.cfg.timeout;
        async move {
            let deadline = tokio::time::Instant::now() + timeout;
            // What the session did not take failed.
            let mut failed: Vec<usize> = (acks.len()..total).collect();
            let mut why = String::from("the MQTT session stopped");
            for (i, rx) in acks.into_iter().enumerate() {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        why = e;
                        failed.push(i);
                    }
                    Ok(Err(_)) => {
                        why = "the MQTT session ended".into();
                        failed.push(i);
                    }
                    Err(_) => {
                        why = format!("no PUBACK within {timeout:?}");
                        failed.push(i);
                    }
                }
            }
            match failed.len() {
                0 => Outcome::Done,
                n if n == total => Outcome::Retry {
                    why,
                    after: Duration::ZERO,
                },
                _ => Outcome::Partly {
                    retry: failed,
                    refused: Vec::new(),
                },
            }
        }
    }
}

/// What the session learns from its event loop.
enum Learned {
    Connected,
    Sent(u16),
    Acked(u16),
    Lost(String),
}

/// The MQTT session: one connection at a time (clean start), publishes in
/// the order they come, each PUBACK told to its publisher. A lost
/// connection fails every publish not acknowledged; the next connection is
/// tried after a backoff.
async fn session(
    options: MqttOptions,
    mut publishes: mpsc::UnboundedReceiver<Publish>,
    what: String,
) {
    let mut backoff = Backoff::new(super::FIRST_BACKOFF, super::MAX_BACKOFF);
    let mut said = false;
    loop {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), SESSION_QUEUE);
        let (learn_tx, mut learned) = mpsc::unbounded_channel();
        // The event loop polls on a task of its own: its poll is not
        // cancel-safe, so it never races in a select.
        let poller = tokio::spawn(async move {
            loop {
                let l = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Learned::Connected,
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Learned::Sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(a))) => Learned::Acked(a.pkid),
                    Ok(_) => continue,
                    Err(e) => Learned::Lost(e.to_string()),
                };
                let lost = matches!(l, Learned::Lost(_));
                if learn_tx.send(l).is_err() || lost {
                    return;
                }
            }
        });
        // Publishes handed to the client, waiting for their packet id; then
        // in flight by packet id.
        let mut queued: VecDeque<oneshot::Sender<Result<(), String>>> = VecDeque::new();
        let mut in_flight: FxHashMap<u16, oneshot::Sender<Result<(), String>>> =
            FxHashMap::default();
        let mut connected = false;
        let why = loop {
            tokio::select! {
                l = learned.recv() => match l {
                    Some(Learned::Connected) => {
                        connected = true;
                        backoff.reset();
                        if std::mem::take(&mut said) {
                            tracing::info!("{what}: connected to the broker again");
                        }
                    }
                    Some(Learned::Sent(pkid)) => {
                        if let Some(tx) = queued.pop_front() {
                            in_flight.insert(pkid, tx);
                        }
                    }
                    Some(Learned::Acked(pkid)) => {
                        if let Some(tx) = in_flight.remove(&pkid) {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Some(Learned::Lost(why)) => break why,
                    None => break "the MQTT event loop stopped".to_owned(),
                },
                p = publishes.recv(), if connected && queued.len() < SESSION_QUEUE / 2 => {
                    let Some(p) = p else {
                        poller.abort();
                        return;
                    };
                    let props = PublishProperties {
                        payload_format_indicator: Some(1),
                        message_expiry_interval: p.expiry.filter(|_| p.retain),
                        content_type: Some("application/json".into()),
                        ..PublishProperties::default()
                    };
                    match client.publish_with_properties(p.topic, QoS::AtLeastOnce, p.retain, p.payload, props).await {
                        Ok(()) => queued.push_back(p.acked),
                        Err(e) => {
                            let _ = p.acked.send(Err(format!("cannot publish: {e}")));
                        }
                    }
                }
            }
        };
        poller.abort();
        for tx in queued.into_iter().chain(in_flight.into_values()) {
            let _ = tx.send(Err(why.clone()));
        }
        if !std::mem::replace(&mut said, true) {
            tracing::warn!("{what}: {why}; retrying with backoff");
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_escape_what_mqtt_reserves() {
        assert_eq!(topic_level("-1720#2"), "-1720%232");
        assert_eq!(topic_level("a/b+c%"), "a%2Fb%2Bc%25");
        assert_eq!(topic_level("Niittykatu ä"), "Niittykatu ä");
    }
}
