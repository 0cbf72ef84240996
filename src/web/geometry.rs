//! What a page draws before any value arrives, sent once per sign-in: the
//! road segments, chargers, named zones and H3 cells the operator may see
//! (the H3 cells numbered by then: those of segments and chargers; the same
//! kinds and allow lists as its subscriptions; a kind it may not see has
//! no geometry either). Values follow on the feed, keyed by the same ids.
//!
//! The named zones are those in force: a reloaded zone file moves their
//! generation (`zones_generation`), the feed says so (`event: geometry`),
//! and the page loads its geometry again.

use serde::Serialize;

use crate::aggregate::Kind;
use crate::subscribe::hub::Refused;
use crate::subscribe::proto::{SubError, Subscribe};
use crate::subscribe::queue::Interest;
use crate::subscribe::server::SubContext;

/// A subscription request for `kind` as the page's feed makes it: every
/// key in scope, provisional values too.
pub fn request(token: &str, kind: Kind) -> Subscribe {
    Subscribe {
        token: token.to_owned(),
        kind: kind.as_str().to_owned(),
        filter: None,
        mode: "provisional".into(),
        resume: None,
        snapshot_if_unavailable: false,
    }
}

/// The kinds `token` may see with their interests; `Err` when the token
/// is no operator's.
pub fn interests(ctx: &SubContext, token: &str) -> Result<Vec<Interest>, Refused> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        match ctx.interest(&request(token, kind)) {
            Ok(i) => out.push(i),
            Err(Refused(SubError::Forbidden, _)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct Segment<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    free_flow_mps: f64,
    line: Vec<[f64; 2]>,
}

#[derive(Serialize)]
struct Charger<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    max_kw: f64,
    connectors: u32,
    position: [f64; 2],
}

#[derive(Serialize)]
struct Zone<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    polygons: Vec<Vec<Vec<[f64; 2]>>>,
}

#[derive(Serialize)]
struct Cell {
    id: String,
    ring: Vec<[f64; 2]>,
}

#[derive(Serialize)]
struct Geometry<'a> {
    segments: Vec<Segment<'a>>,
    chargers: Vec<Charger<'a>>,
    zones: Vec<Zone<'a>>,
    cells: Vec<Cell>,
    zones_generation: u64,
}

/// The generation of the named zones in force (see
/// [`crate::geo::zones::ZoneRegistry::in_force`]).
pub fn zones_generation(ctx: &SubContext) -> u64 {
    ctx.reference.registry.in_force().0
}

/// Coordinates to 6 decimals (about 0.1 m): smaller to send, nothing a
/// map shows lost.
fn round(p: [f64; 2]) -> [f64; 2] {
    p.map(|v| (v * 1e6).round() / 1e6)
}

/// The geometry `interests` allow, as JSON.
pub fn json(ctx: &SubContext, interests: &[Interest]) -> String {
    let r = &ctx.reference;
    let allowed = |kind: Kind, key: u32| {
        interests
            .iter()
            .any(|i| i.kind == kind && i.keys.as_ref().is_none_or(|k| k.contains(&key)))
    };
    let segments = (r.roads.iter().enumerate())
        .filter(|(n, _)| allowed(Kind::Congestion, *n as u32))
        .map(|(_, road)| Segment {
            id: &road.id,
            name: road.name.as_deref(),
            free_flow_mps: road.free_flow_mps,
            line: road.line.iter().copied().map(round).collect(),
        })
        .collect();
    let chargers = (r.chargers.iter().enumerate())
        .filter(|(n, _)| allowed(Kind::Charging, *n as u32))
        .map(|(_, c)| Charger {
            id: &c.id,
            name: c.name.as_deref(),
            max_kw: c.max_kw,
            connectors: c.connectors,
            position: round(c.position),
        })
        .collect();
    let (zones_generation, in_force) = r.registry.in_force();
    let in_force = in_force.as_deref().unwrap_or(&r.zones);
    let zones = (in_force.iter())
        .filter(|z| {
            r.registry
                .get(&z.id, crate::geo::zones::ZoneKind::Named)
                .is_some_and(|n| allowed(Kind::Zone, n))
        })
        .map(|z| Zone {
            id: &z.id,
            name: z.name.as_deref(),
            polygons: (z.polygons.iter())
                .map(|poly| {
                    (poly.iter())
                        .map(|ring| ring.iter().copied().map(round).collect())
                        .collect()
                })
                .collect(),
        })
        .collect();
    let cells = (r.registry.cells().into_iter())
        .filter(|(n, _)| allowed(Kind::Zone, *n))
        .filter_map(|(_, id)| {
            let ring = crate::geo::zones::h3_boundary(&id)?;
            Some(Cell {
                ring: ring.into_iter().map(round).collect(),
                id,
            })
        })
        .collect();
    serde_json::to_string(&Geometry {
        segments,
        chargers,
        zones,
        cells,
        zones_generation,
    })
    .unwrap_or_else(|_| "{}".into())
}
