//! Validation of the sections that say how a node serves and runs beside
//! others: `[web]` (the live map), `[observability]` and `[cluster]`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::runtime::Cluster;

use super::check::Checker;
use super::file::{ClusterSection, ObservabilitySection, WebSection};
use super::Web;

impl Checker<'_> {
    /// `[web]`: an address, limits in range, a sign-in lifetime, and the
    /// `[ingest]` certificate when it serves HTTPS.
    pub(super) fn web(&mut self, w: &WebSection, has_ingest: bool) -> Option<Web> {
        let listen = w
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                self.push(
                    "web.listen",
                    &format!("{:?} is not an address like 0.0.0.0:8080: {e}", w.listen),
                )
            })
            .ok();
        let ttl = self.duration_or(
            w.session_ttl.as_deref(),
            Web::DEFAULT_SESSION_TTL,
            "web.session_ttl",
        );
        let feed_interval = self.duration_or(
            w.feed_interval.as_deref(),
            Web::DEFAULT_FEED_INTERVAL,
            "web.feed_interval",
        );
        if feed_interval.is_some_and(|d| d > Duration::from_secs(1)) {
            self.push(
                "web.feed_interval",
                "at most 1s: a change must reach a page within a second",
            );
        }
        let tls = w.tls.unwrap_or(false);
        if tls && !has_ingest {
            self.push(
                "web.tls",
                "HTTPS uses the node's [ingest] cert and key: add [ingest], or serve plain HTTP behind a TLS proxy",
            );
        }
        let max_connections = w.max_connections.unwrap_or(Web::DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            self.push("web.max_connections", "at least 1");
        }
        let max_request_bytes = w
            .max_request_bytes
            .unwrap_or(Web::DEFAULT_MAX_REQUEST_BYTES);
        if !(1024..=1 << 20).contains(&max_request_bytes) {
            self.push(
                "web.max_request_bytes",
                &format!("{max_request_bytes}: between 1024 and 1048576"),
            );
        }
        if let Some(b) = &w.basemap {
            let ok = (b.starts_with("https://") || b.starts_with("http://"))
                && ["{z}", "{x}", "{y}"].iter().all(|p| b.contains(p));
            if !ok {
                self.push(
                    "web.basemap",
                    &format!("{b:?}: a tile URL template like https://tiles.example.org/{{z}}/{{x}}/{{y}}.png"),
                );
            }
        }
        Some(Web {
            listen: listen?,
            tls,
            max_connections,
            max_request_bytes,
            session_ttl: ttl?,
            basemap: w.basemap.clone(),
            feed_interval: feed_interval?,
        })
    }

    /// `[observability] listen`, when given: an address.
    pub(super) fn observability(&mut self, o: &ObservabilitySection) -> Option<SocketAddr> {
        o.listen.as_deref().and_then(|a| {
            a.parse::<SocketAddr>()
                .map_err(|e| {
                    self.push(
                        "observability.listen",
                        &format!("{a:?} is not an address like 127.0.0.1:9464: {e}"),
                    )
                })
                .ok()
        })
    }

    /// `[cluster]`: every process's address, each once, and a stop wait.
    /// This process's index comes from the command line.
    pub(super) fn cluster(&mut self, s: &ClusterSection) -> Option<Cluster> {
        let stop_wait = self.duration_or(
            s.stop_wait.as_deref(),
            Cluster::DEFAULT_STOP_WAIT,
            "cluster.stop_wait",
        )?;
        let cluster = Cluster {
            stop_wait,
            ..Cluster::new(0, s.processes.clone())
        };
        let mut seen = std::collections::BTreeSet::new();
        let twice = s.processes.iter().find(|a| !seen.insert(a.as_str()));
        match (cluster.check(), twice) {
            (Err(why), _) => self.push("cluster.processes", &why),
            (_, Some(a)) => self.push("cluster.processes", &format!("{a:?} is listed twice")),
            _ => return Some(cluster),
        }
        None
    }
}
