//! The observability listener: `GET /metrics`, `/health`, `/ready` over
//! HTTP/1.1 on a thread of its own (so it answers while the node recovers
//! its log, before the rest of the node runs).
//!
//! Nothing else is served: another path is 404, another method 405, a
//! request with a body 413. At most [`MAX_CONNECTIONS`] connections are
//! served at once (more wait in the kernel's backlog), each for at most
//! [`CONNECTION_TIMEOUT`]: a scraper that stalls holds nothing up.
//!
//! [`get`] is the one client of it the binary has (`edgeflow probe`, the
//! scrapes of `bench-ingest --metrics`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::{Method, Request, Response, StatusCode};
use thiserror::Error;

use super::Registry;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest a connection is served (a scrape takes milliseconds).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the listener cannot start.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} for [observability]: {source}{}", super::bind_hint(.source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Its thread or runtime could not start.
    #[error("cannot start the [observability] listener: {0}")]
    Start(std::io::Error),
}

/// A running listener; stops when dropped.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` and serves `registry` until the returned [`Server`] is
/// dropped.
pub fn serve(addr: SocketAddr, registry: Arc<Registry>) -> Result<Server, HttpError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| HttpError::Bind { addr, source })?;
    listener.set_nonblocking(true).map_err(HttpError::Start)?;
    let bound = listener.local_addr().map_err(HttpError::Start)?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Start)?;
    let thread = std::thread::Builder::new()
        .name("edgeflow-observe".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
                loop {
                    let permit = tokio::select! {
                        p = slots.clone().acquire_owned() => p,
                        _ = &mut stop_rx => return,
                    };
                    let Ok(permit) = permit else { return };
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = &mut stop_rx => return,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let registry = registry.clone();
                            async move { Ok::<_, Infallible>(answer(req, &registry).await) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let conn = hyper::server::conn::http1::Builder::new()
                            .max_buf_size(16 * 1024)
                            .serve_connection(io, service);
                        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                        drop(permit);
                    });
                }
            });
        })
        .map_err(HttpError::Start)?;
    Ok(Server {
        addr: bound,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer(req: Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let path = req.uri().path().to_owned();
    // A GET has no body: one that sends some is refused unread.
    let (_, mut body) = req.into_parts();
    if !body.is_end_stream() {
        match tokio::time::timeout(Duration::from_millis(100), body.frame()).await {
            Ok(None) => {}
            _ => return text(StatusCode::PAYLOAD_TOO_LARGE, "a GET has no body\n"),
        }
    }
    match path.as_str() {
        "/metrics" => {
            let body = registry.render();
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            let missing = registry.ready.missing();
            if missing.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", missing.join(", ")),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /health and /ready are served\n",
        ),
    }
}

/// Largest answer [`get`] reads, bytes.
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// One plain `GET path` of the listener at `addr` (HTTP/1.0, so the
/// answer ends with the connection), each step within `timeout`: the
/// status code and the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.take(MAX_ANSWER_BYTES).read_to_string(&mut out)?;
    let status = (out.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    Ok((status, body))
}
