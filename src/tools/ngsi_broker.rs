//! A strict NGSI-LD test broker: the batch upsert of a context broker
//! (`POST /ngsi-ld/v1/entityOperations/upsert`), enforcing the rules an
//! NGSI-LD sink must keep, with faults on demand. For tests and
//! `bench-ngsi`; not a broker to run a city on.
//!
//! Rules (a request breaking one is refused as a real broker would, and
//! counted in [`BrokerStats::violations`] with what was broken):
//! - `POST` to the upsert path with `options=update`;
//! - `Content-Type: application/json` with the @context in a `Link`
//!   header and none in the body, or `application/ld+json` with an
//!   `@context` in every entity and no `Link` header (else 415 or 400);
//! - a JSON array of entities, each with a URI `id` and a `type`, no id
//!   twice in a request (400);
//! - at most `max_entities` entities and `max_bytes` bytes (413);
//! - every attribute normalized (`Property` with `value`, `GeoProperty`
//!   with a GeoJSON geometry, `Relationship` with `object`; `observedAt` an
//!   ISO 8601 instant), and the entity, reduced to key-values, valid for
//!   the `validate` hook (the tests give it the Smart Data Models' JSON
//!   schemas): an invalid entity is an error of a 207.
//!
//! Answers: 201 (ids created) or 204 when every entity was applied, 207
//! (`success`, `errors`) otherwise. An upsert with `options=update`
//! merges attributes: the last instance of an attribute wins. Every
//! applied entity is appended to the history; an entity equal to one
//! already in its history is counted in [`BrokerStats::duplicates`].
//!
//! Faults ([`Fault`]) are queued and each taken by the next request:
//! 500, 503 with `Retry-After`, a delay past the client's timeout, a reset
//! connection, 413, or a 207 failing chosen entities. None of them applies
//! the request.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Validates an entity in key-values form; the error says why not.
pub type Validate = dyn Fn(&Value) -> Result<(), String> + Send + Sync;

/// A fault the next request meets.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 500.
    ServerError,
    /// 503 with `Retry-After: <seconds>`.
    Unavailable(u64),
    /// No answer for this long, then 503 (past a client's timeout).
    Delay(Duration),
    /// The connection is dropped without an answer.
    Reset,
    /// 413.
    TooLarge,
    /// 207: the first `transient` entities fail with 503, the next
    /// `permanent` with 400; the rest are applied.
    Partial {
        /// Entities failing with 503.
        transient: usize,
        /// Entities failing with 400.
        permanent: usize,
    },
}

/// What the broker saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerStats {
    /// Requests.
    pub requests: u64,
    /// Entities applied (history entries).
    pub applied: u64,
    /// History entries equal to an earlier one of the same entity.
    pub duplicates: u64,
    /// Rules broken, each with what.
    pub violations: Vec<String>,
    /// Entities refused in 207s because they were invalid.
    pub invalid: Vec<String>,
    /// Faults served.
    pub faults: u64,
}

/// The broker's settings.
pub struct BrokerSettings {
    /// Entities per request at most.
    pub max_entities: usize,
    /// Bytes per request at most.
    pub max_bytes: usize,
    /// Validates each entity (key-values form).
    pub validate: Option<Box<Validate>>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_entities: 1000,
            max_bytes: 1 << 20,
            validate: None,
        }
    }
}

/// An entity parsed one level deep: its attributes as raw JSON text (a
/// broker under load must not build a value tree of every instance).
type Shallow = BTreeMap<String, Box<RawValue>>;

#[derive(Default)]
struct Store {
    entities: BTreeMap<String, Shallow>,
    /// Per entity, every instance applied (as text).
    history: BTreeMap<String, Vec<String>>,
    /// xxh3 of every (id, instance) applied.
    seen: HashSet<u64>,
    faults: VecDeque<Fault>,
    stats: BrokerStats,
}

/// A running test broker.
pub struct Broker {
    /// Its address.
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    /// Starts a broker on `addr` (port 0: any) in a thread of its own.
    pub fn start(addr: SocketAddr, settings: BrokerSettings) -> anyhow::Result<Broker> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let store = Arc::new(Mutex::new(Store::default()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = (store.clone(), Arc::new(settings));
        let thread = std::thread::Builder::new()
            .name("ngsi-test-broker".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    loop {
                        let accepted = tokio::select! {
                            a = listener.accept() => a,
                            _ = &mut stop_rx => return,
                        };
                        let Ok((stream, _)) = accepted else { continue };
                        // Answers leave at once (no Nagle wait for the
                        // client's delayed ACK).
                        let _ = stream.set_nodelay(true);
                        let (store, settings) = (shared.0.clone(), shared.1.clone());
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                handle(req, store.clone(), settings.clone())
                            });
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                });
            })?;
        Ok(Broker {
            addr,
            store,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues faults for the next requests, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        if let Ok(mut s) = self.store.lock() {
            s.faults.extend(faults);
        }
    }

    /// Current entities by id.
    pub fn entities(&self) -> BTreeMap<String, Value> {
        let Ok(s) = self.store.lock() else {
            return BTreeMap::new();
        };
        (s.entities.iter())
            .map(|(id, attrs)| (id.clone(), deep(attrs)))
            .collect()
    }

    /// Every instance applied of entity `id`, oldest first.
    pub fn history(&self, id: &str) -> Vec<Value> {
        let Ok(s) = self.store.lock() else {
            return Vec::new();
        };
        (s.history.get(id).into_iter().flatten())
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect()
    }

    /// What the broker saw.
    pub fn stats(&self) -> BrokerStats {
        self.store
            .lock()
            .map(|s| s.stats.clone())
            .unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

fn answer(status: StatusCode, body: Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    if !body.is_null() {
        let ct = if status.is_success() {
            "application/json"
        } else {
            "application/problem+json"
        };
        if let Ok(v) = hyper::header::HeaderValue::from_str(ct) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
    }
    Ok(r)
}

fn problem(status: StatusCode, kind: &str, detail: &str) -> Answer {
    answer(
        status,
        json!({"type": format!("https://uri.etsi.org/ngsi-ld/errors/{kind}"), "title": kind, "detail": detail}),
    )
}

async fn handle(
    req: Request<Incoming>,
    store: Arc<Mutex<Store>>,
    settings: Arc<BrokerSettings>,
) -> Answer {
    let fault = match store.lock() {
        Ok(mut s) => {
            s.stats.requests += 1;
            let f = s.faults.pop_front();
            s.stats.faults += u64::from(f.is_some());
            f
        }
        Err(_) => None,
    };
    match &fault {
        Some(Fault::ServerError) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "injected",
            )
        }
        Some(Fault::Unavailable(secs)) => {
            let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "InternalError", "injected")?;
            if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return Ok(r);
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(*d).await;
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "InternalError",
                "injected delay",
            );
        }
        Some(Fault::Reset) => return Err(std::io::Error::other("injected reset")),
        Some(Fault::TooLarge) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "injected",
            )
        }
        Some(Fault::Partial { .. }) | None => {}
    }
    let violation = |s: &Arc<Mutex<Store>>, what: String| {
        if let Ok(mut s) = s.lock() {
            s.stats.violations.push(what);
        }
    };
    let (parts, body) = req.into_parts();
    if parts.method != hyper::Method::POST
        || parts.uri.path() != "/ngsi-ld/v1/entityOperations/upsert"
    {
        violation(&store, format!("{} {}", parts.method, parts.uri));
        return problem(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "only the batch upsert is served",
        );
    }
    if !parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "options=update"))
    {
        violation(&store, format!("no options=update in {}", parts.uri));
        return problem(
            StatusCode::BAD_REQUEST,
            "BadRequestData",
            "expected options=update",
        );
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let link = header("link");
    let inline = if content_type.starts_with("application/json") {
        let ok = link.as_deref().is_some_and(|l| {
            l.starts_with('<') && l.contains("rel=\"http://www.w3.org/ns/json-ld#context\"")
        });
        if !ok {
            violation(
                &store,
                format!("application/json without a JSON-LD context Link header ({link:?})"),
            );
            return problem(
                StatusCode::BAD_REQUEST,
                "BadRequestData",
                "application/json needs the @context in a Link header",
            );
        }
        false
    } else if content_type.starts_with("application/ld+json") {
        if link.is_some() {
            violation(&store, "application/ld+json with a Link header".into());
            return problem(
                StatusCode::BAD_REQUEST,
                "BadRequestData",
                "application/ld+json takes no Link header",
            );
        }
        true
    } else {
        violation(&store, format!("content type {content_type:?}"));
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BadRequestData",
            "expected application/json or application/ld+json",
        );
    };
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "BadRequestData",
            "the body could not be read",
        );
    };
    if bytes.len() > settings.max_bytes {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "the body is over the broker's limit",
        );
    }
    // Each entity's own text is kept as history, as it came.
    let raw: Option<Vec<&RawValue>> = serde_json::from_slice(&bytes).ok();
    let entities: Option<Vec<(Shallow, String)>> = raw.and_then(|raw| {
        (raw.into_iter())
            .map(|r| {
                serde_json::from_str::<Shallow>(r.get())
                    .ok()
                    .map(|e| (e, r.get().to_owned()))
            })
            .collect()
    });
    let Some(entities) = entities else {
        violation(&store, "the body is not a JSON array".into());
        return problem(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "expected a JSON array of entities",
        );
    };
    if entities.len() > settings.max_entities {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "too many entities in one request",
        );
    }
    let mut ids = HashSet::new();
    for (e, _) in &entities {
        let id = text_of(e, "id").unwrap_or_default();
        let id = id.as_str();
        if !ids.insert(id.to_owned()) {
            violation(&store, format!("id {id} twice in one request"));
            return problem(
                StatusCode::BAD_REQUEST,
                "BadRequestData",
                "an id appears twice",
            );
        }
        if e.contains_key("@context") != inline {
            violation(
                &store,
                format!("entity {id}: @context inline does not match the content type"),
            );
            return problem(
                StatusCode::BAD_REQUEST,
                "BadRequestData",
                "@context where the content type says otherwise",
            );
        }
    }
    apply(&store, &settings, entities, fault)
}

/// Applies a valid request's entities; a 207 lists what was not applied.
fn apply(
    store: &Arc<Mutex<Store>>,
    settings: &BrokerSettings,
    entities: Vec<(Shallow, String)>,
    fault: Option<Fault>,
) -> Answer {
    let (transient, permanent) = match fault {
        Some(Fault::Partial {
            transient,
            permanent,
        }) => (transient, permanent),
        _ => (0, 0),
    };
    // Validation first, outside the lock: requests validate in parallel.
    let checked: Vec<Option<(u16, String)>> = (entities.iter().enumerate())
        .map(|(i, (e, _))| {
            if i < transient {
                Some((503, "injected".to_owned()))
            } else if i < transient + permanent {
                Some((400, "injected".to_owned()))
            } else {
                check_entity(e, settings).err().map(|why| (400, why))
            }
        })
        .collect();
    let Ok(mut s) = store.lock() else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "poisoned",
        );
    };
    let (mut created, mut success, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for ((i, (mut e, text)), error) in entities.into_iter().enumerate().zip(checked) {
        let id = text_of(&e, "id").unwrap_or_default();
        if let Some((400, why)) = &error {
            if i >= transient + permanent {
                s.stats.invalid.push(format!("{id}: {why}"));
            }
        }
        if let Some((status, why)) = error {
            errors.push(json!({"entityId": id, "error": {"type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData", "title": why, "status": status}}));
            continue;
        }
        e.remove("@context");
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(
            text.as_bytes(),
            xxhash_rust::xxh3::xxh3_64(id.as_bytes()),
        );
        if !s.seen.insert(h) {
            s.stats.duplicates += 1;
        }
        s.history.entry(id.clone()).or_default().push(text);
        s.stats.applied += 1;
        match s.entities.get_mut(&id) {
            // options=update: the last instance of an attribute wins.
            Some(current) => current.extend(e),
            None => {
                s.entities.insert(id.clone(), e);
                created.push(id.clone());
            }
        }
        success.push(id);
    }
    if !errors.is_empty() {
        answer(
            StatusCode::MULTI_STATUS,
            json!({"success": success, "errors": errors}),
        )
    } else if !created.is_empty() {
        answer(StatusCode::CREATED, json!(created))
    } else {
        answer(StatusCode::NO_CONTENT, Value::Null)
    }
}

/// The text of a string attribute (`id`, `type`).
fn text_of(e: &Shallow, name: &str) -> Option<String> {
    e.get(name).and_then(|r| serde_json::from_str(r.get()).ok())
}

/// A shallow entity as a value tree.
fn deep(e: &Shallow) -> Value {
    let attrs = (e.iter())
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_str(v.get()).unwrap_or(Value::Null),
            )
        })
        .collect();
    Value::Object(attrs)
}

/// One attribute, read as far as the rules need.
#[derive(Deserialize)]
struct Attr<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    object: Option<String>,
    #[serde(rename = "observedAt")]
    observed_at: Option<String>,
}

#[derive(Deserialize)]
struct Geometry {
    #[serde(rename = "type")]
    kind: String,
}

const GEOMETRIES: [&str; 6] = [
    "Point",
    "LineString",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
];

/// The normalized form's rules, then the validator on key-values.
fn check_entity(e: &Shallow, settings: &BrokerSettings) -> Result<(), String> {
    let id = text_of(e, "id").ok_or("no id (a string)")?;
    if reqwest::Url::parse(&id).is_err() {
        return Err(format!("id {id:?} is not a URI"));
    }
    text_of(e, "type").ok_or("no type (a string)")?;
    for (name, raw) in e {
        if ["id", "type", "@context"].contains(&name.as_str()) {
            continue;
        }
        let attr: Option<Attr<'_>> = serde_json::from_str(raw.get()).ok();
        let ok = attr.as_ref().is_some_and(|a| match a.kind.as_ref() {
            "Property" => a.value.is_some(),
            "GeoProperty" => a
                .value
                .and_then(|g| serde_json::from_str::<Geometry>(g.get()).ok())
                .is_some_and(|g| GEOMETRIES.contains(&g.kind.as_str())),
            "Relationship" => (a.object.as_deref()).is_some_and(|u| reqwest::Url::parse(u).is_ok()),
            _ => false,
        });
        if !ok {
            return Err(format!(
                "attribute {name} is not a normalized Property, GeoProperty or Relationship"
            ));
        }
        if let Some(t) = attr.and_then(|a| a.observed_at) {
            if humantime::parse_rfc3339(&t).is_err() {
                return Err(format!(
                    "attribute {name}: observedAt {t:?} is not an ISO 8601 instant"
                ));
            }
        }
    }
    match &settings.validate {
        Some(v) => v(&crate::sink::ngsi::key_values(&deep(e))),
        None => Ok(()),
    }
}
