//! The demo follows its node as an operator would: one subscription per
//! kind over QUIC, final values, with the operator's token, each kind's
//! rows held in a [`State`]. Ctrl-C and SIGTERM are noticed here too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::aggregate::Kind;
use crate::subscribe::client::{subscribe, State, SubscribeOptions};

/// What the subscriptions hold: each kind's rows and last progress.
#[derive(Clone, Debug, Default)]
pub struct Held {
    /// Congestion rows.
    pub congestion: State,
    /// Charging rows.
    pub charging: State,
    /// Zone rows.
    pub zones: State,
}

impl Held {
    fn of(&mut self, kind: Kind) -> &mut State {
        match kind {
            Kind::Congestion => &mut self.congestion,
            Kind::Charging => &mut self.charging,
            Kind::Zone => &mut self.zones,
        }
    }
}

/// Three subscriptions on their own runtime, and the watch for Ctrl-C
/// (SIGINT) and SIGTERM.
pub struct Follow {
    runtime: tokio::runtime::Runtime,
    held: Arc<Mutex<Held>>,
    tasks: Vec<(
        Kind,
        tokio::task::JoinHandle<anyhow::Result<Option<String>>>,
    )>,
    interrupted: Arc<AtomicBool>,
}

impl Follow {
    /// Subscribes to every kind of the node at `to` with `token`.
    pub fn start(to: SocketAddr, ca: PathBuf, token: &str) -> anyhow::Result<Follow> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            flag.store(true, Ordering::Release);
        });
        let held = Arc::new(Mutex::new(Held::default()));
        let tasks = Kind::ALL
            .into_iter()
            .map(|kind| {
                let opts = SubscribeOptions {
                    to,
                    server_name: "localhost".into(),
                    ca: ca.clone(),
                    identity: None,
                    request: SubscribeOptions::request(token, kind.as_str()),
                };
                let held = held.clone();
                let task = runtime.spawn(async move {
                    subscribe(&opts, |frame| {
                        if let Ok(mut held) = held.lock() {
                            held.of(kind).apply(frame);
                        }
                        true
                    })
                    .await
                });
                (kind, task)
            })
            .collect();
        Ok(Follow {
            runtime,
            held,
            tasks,
            interrupted,
        })
    }

    /// The rows held now.
    pub fn held(&self) -> Held {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Whether Ctrl-C was pressed (or SIGTERM came).
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    /// Waits up to `within` for the node to end the subscriptions (it
    /// does once it has stopped and sent its last rows); the rows then.
    /// A subscription that ended with an error says so on stderr.
    pub fn finish(self, within: Duration) -> Held {
        let Follow {
            runtime,
            held,
            tasks,
            ..
        } = self;
        runtime.block_on(async {
            for (kind, task) in tasks {
                match tokio::time::timeout(within, task).await {
                    Ok(Ok(Ok(None))) => {}
                    Ok(Ok(Ok(Some(why)))) => {
                        eprintln!("edgeflow demo: the {} subscription ended: {why}", kind.as_str())
                    }
                    Ok(Ok(Err(e))) => {
                        eprintln!("edgeflow demo: the {} subscription failed: {e:#}", kind.as_str())
                    }
                    Ok(Err(e)) => eprintln!("edgeflow demo: the {} subscription: {e}", kind.as_str()),
                    Err(_) => eprintln!(
                        "edgeflow demo: the {} subscription did not end within {} s of the node's stop",
                        kind.as_str(),
                        within.as_secs()
                    ),
                }
            }
        });
        let rows = held.lock().map(|h| h.clone()).unwrap_or_default();
        runtime.shutdown_background();
        rows
    }
}
