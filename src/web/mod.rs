//! The live map: a web page served by the node (`[web] listen`), showing
//! the city's congestion, charging demand and zones as they change.
//!
//! Everything the page needs is in the binary ([`assets`]): no CDN, no
//! tiles fetched unless the topology names a basemap. The page asks for
//! an operator token and signs in ([`session`]); it then loads the
//! geometry it may draw once ([`geometry`]) and follows the node's
//! changes over Server-Sent Events fed by the subscription hub ([`feed`]),
//! so it shows exactly what the operator's subscription would.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /assets/<name>` | the page's script and style, from the binary |
//! | `POST /api/login` (body: the token) | a session cookie and the operator's kinds; 401 for an unknown token |
//! | `POST /api/logout` | the session ends |
//! | `GET /api/config` | the node, the kinds, window and retention, the basemap |
//! | `GET /api/geometry` | segments, chargers, zones and H3 cells in scope, the zones' generation (JSON) |
//! | `GET /api/feed` | the live feed (`text/event-stream`) |
//!
//! Anything else is 404 (there is no file system behind the paths: a
//! traversal finds nothing); another method 405; a request head or body
//! over `[web] max_request_bytes` 431 or 413; an `/api/` request without
//! a session in force 401. At most `[web] max_connections` connections are
//! served at once (more wait in the kernel's backlog); a connection's
//! request head must arrive within [`HEAD_TIMEOUT`].

pub mod assets;
pub mod feed;
pub mod geometry;
pub mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use thiserror::Error;
use tokio::sync::watch;

use crate::subscribe::server::SubContext;
use crate::topology::Web;

pub use session::Sessions;

/// How long a client has to send a request's head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the web listener cannot start.
#[derive(Debug, Error)]
pub enum WebError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} for [web]: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key could not be loaded (`[web] tls`).
    #[error("[web] tls: {0}")]
    Tls(#[from] crate::wire::tls::TlsError),
    /// The node has no operators: nobody could sign in.
    #[error(
        "[web] needs at least one [[operator]]: the page shows what an operator's token may see"
    )]
    NoOperators,
}

/// What the web server shares between its connections.
pub struct WebContext {
    /// The subscription server's context: the hub, the operators in force,
    /// the reference data.
    pub subs: Arc<SubContext>,
    /// `[web]`.
    pub settings: Web,
    /// Sign-ins.
    pub sessions: Sessions,
    /// The node's id (shown on the page).
    pub node_id: String,
    /// The window size and retention, ms.
    pub window_ms: u64,
    /// Retention, ms.
    pub retention_ms: u64,
}

/// A bound listener, not yet serving.
pub struct Bound {
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The bound address.
    pub addr: SocketAddr,
}

/// Binds `[web] listen` (with TLS, loads the node's certificate and key).
pub fn bind(settings: &Web, ingest: Option<&crate::topology::Ingest>) -> Result<Bound, WebError> {
    let addr = settings.listen;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| WebError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr, source })?;
    let tls = match (settings.tls, ingest) {
        (true, Some(i)) => {
            let config = crate::wire::tls::tcp_server_config(&i.cert, &i.key, &[b"http/1.1"])?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        _ => None,
    };
    Ok(Bound {
        listener,
        tls,
        addr: bound,
    })
}

type Body = BoxBody<Bytes, Infallible>;

/// Longest a stopping node waits for its pages' feeds to end.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Serves `bound` until `stop` turns true (on the runtime it is called
/// on), then lets the connections finish (their feeds end with the hub),
/// for at most [`DRAIN`].
pub async fn serve(bound: Bound, ctx: Arc<WebContext>, mut stop: watch::Receiver<bool>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(bound.listener) else {
        tracing::error!("[web]: the listener could not join the runtime");
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(ctx.settings.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Finished connections are let go of as new ones come.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            () = async { drop(stop.wait_for(|s| *s).await) } => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = async { drop(stop.wait_for(|s| *s).await) } => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = bound.tls.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        connection(stream, ctx, stop).await;
                    }
                }
                None => connection(stream, ctx, stop).await,
            }
            drop(permit);
        });
    }
    drop(listener);
    let all = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN, all).await;
}

/// Serves one connection's requests until it closes or the node stops.
async fn connection<S>(stream: S, ctx: Arc<WebContext>, mut stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = service_ctx.clone();
        let runtime = runtime.clone();
        async move { Ok::<_, Infallible>(answer(req, &ctx, &runtime).await) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(ctx.settings.max_request_bytes.max(8192))
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = async { drop(stop.wait_for(|s| *s).await) } => {
            // A feed in progress ends with the hub; then the connection.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    reply(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn json(body: String) -> Response<Body> {
    reply(StatusCode::OK, "application/json", body)
}

/// The page's Content-Security-Policy: its own script and style only;
/// images from itself and the basemap's origin, if any.
fn csp(basemap: Option<&str>) -> String {
    let tiles = basemap
        .and_then(|b| {
            let rest = b.split_once("://")?;
            let host = rest.1.split('/').next()?;
            Some(format!(" {}://{host}", rest.0))
        })
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{tiles}; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
}

/// The session's token, if the request carries a session in force.
fn signed_in(req: &Request<hyper::body::Incoming>, ctx: &WebContext) -> Option<String> {
    let cookie = req.headers().get(header::COOKIE)?.to_str().ok()?;
    ctx.sessions.token(session::from_cookie(cookie)?)
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    ctx: &WebContext,
    runtime: &tokio::runtime::Handle,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let post = matches!(path.as_str(), "/api/login" | "/api/logout");
    let allowed = if post {
        method == Method::POST
    } else {
        method == Method::GET || method == Method::HEAD
    };
    if !allowed {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        let allow = if post { "POST" } else { "GET, HEAD" };
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return r;
    }
    let limit = ctx.settings.max_request_bytes;
    let declared = (req.headers().get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a request body is at most {limit} bytes ([web] max_request_bytes)"),
        );
    }
    if path == "/" || path == "/index.html" {
        let mut r = reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            assets::INDEX_HTML,
        );
        if let Ok(v) = HeaderValue::from_str(&csp(ctx.settings.basemap.as_deref())) {
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
        return r;
    }
    if let Some(name) = path.strip_prefix("/assets/") {
        return match assets::get(name) {
            Some((content_type, body)) => reply(StatusCode::OK, content_type, body),
            None => text(StatusCode::NOT_FOUND, "no such asset"),
        };
    }
    match path.as_str() {
        "/api/login" => {
            let body = Limited::new(req.into_body(), limit).collect().await;
            let Ok(body) = body else {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a request body is at most {limit} bytes ([web] max_request_bytes)"),
                );
            };
            let token = String::from_utf8_lossy(&body.to_bytes()).trim().to_owned();
            login(ctx, &token)
        }
        "/api/logout" => {
            let id = (req.headers().get(header::COOKIE))
                .and_then(|c| c.to_str().ok())
                .and_then(session::from_cookie)
                .map(str::to_owned);
            if let Some(id) = id {
                ctx.sessions.close(&id);
            }
            let mut r = text(StatusCode::OK, "signed out");
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
                session::COOKIE
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        "/api/config" | "/api/geometry" | "/api/feed" => {
            let Some(token) = signed_in(&req, ctx) else {
                return text(StatusCode::UNAUTHORIZED, "sign in first (POST /api/login)");
            };
            let interests = match geometry::interests(&ctx.subs, &token) {
                Ok(i) => i,
                Err(_) => {
                    return text(
                        StatusCode::UNAUTHORIZED,
                        "the session's token is no longer an operator's: sign in again",
                    )
                }
            };
            match path.as_str() {
                "/api/config" => json(config(ctx, &interests)),
                "/api/geometry" => json(geometry::json(&ctx.subs, &interests)),
                _ => match feed::start(&ctx.subs, &token, ctx.settings.feed_interval, runtime) {
                    Ok(rx) => sse(rx),
                    Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.1),
                },
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `POST /api/login`: a session for a known operator token.
fn login(ctx: &WebContext, token: &str) -> Response<Body> {
    let interests = match geometry::interests(&ctx.subs, token) {
        Ok(i) if !token.is_empty() => i,
        _ => return text(StatusCode::UNAUTHORIZED, "unknown operator token"),
    };
    let Some(id) = ctx.sessions.open(token) else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no session could be made");
    };
    let secure = if ctx.settings.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        session::COOKIE,
        ctx.sessions.ttl().as_secs()
    );
    let mut r = json(config(ctx, &interests));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// What the page needs to know besides the geometry.
fn config(ctx: &WebContext, interests: &[crate::subscribe::queue::Interest]) -> String {
    let kinds: Vec<&str> = interests.iter().map(|i| i.kind.as_str()).collect();
    serde_json::json!({
        "node": ctx.node_id,
        "kinds": kinds,
        "window_ms": ctx.window_ms,
        "retention_ms": ctx.retention_ms,
        "basemap": ctx.settings.basemap,
    })
    .to_string()
}

/// A `text/event-stream` response whose events come from `rx`; when the
/// page goes away, hyper drops the body and with it the receiver, which
/// ends the feed's tasks.
fn sse(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Events(rx)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The feed's events as a response body.
struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
