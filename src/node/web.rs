//! The node's live map (`[web]`): bound at the start, so that a taken
//! port fails it, and served on the node's runtime until the node stops.

use std::sync::Arc;

use crate::runtime::Cluster;
use crate::subscribe::server::SubContext;
use crate::topology::{Ingest, Topology};
use crate::web::{Bound, WebContext, WebError};

/// The map's listener and what it serves, when the topology has `[web]`.
/// A node with no operators has nobody to show the map to (an error);
/// a site's process other than 0 has no aggregates to show (none, with a
/// warning).
pub(super) fn bind(
    topology: &Topology,
    ingest: &Ingest,
    subs: Option<&Arc<SubContext>>,
    cluster: Option<&Cluster>,
) -> Result<Option<(Bound, Arc<WebContext>)>, WebError> {
    let Some(settings) = &topology.web else {
        return Ok(None);
    };
    match (subs, cluster) {
        (Some(subs), _) => {
            let bound = crate::web::bind(settings, Some(ingest))?;
            let ctx = WebContext {
                subs: subs.clone(),
                settings: settings.clone(),
                sessions: crate::web::Sessions::new(settings.session_ttl),
                node_id: topology.node_id.clone(),
                window_ms: topology.time.size_ms,
                retention_ms: topology.time.retention_ms,
            };
            Ok(Some((bound, Arc::new(ctx))))
        }
        (None, Some(c)) if !c.emits() => {
            tracing::warn!("[web]: process {} of a site serves no map: process 0 has every aggregate and serves it", c.process);
            Ok(None)
        }
        (None, _) => Err(WebError::NoOperators),
    }
}

/// Serves the map until the node's subscriptions stop.
pub(super) async fn serve(bound: Bound, ctx: Arc<WebContext>) {
    let stopping = ctx.subs.stopping.clone();
    crate::web::serve(bound, ctx, stopping).await
}
