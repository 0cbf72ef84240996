//! Validation of `[[sink]]` sections: paths resolved, secrets read from
//! their files, addresses and URLs checked, limits bounded, names unique.

use std::path::PathBuf;

use crate::aggregate::Kind;

use super::check::Checker;
use super::file::{CentralSinkSection, NgsiSinkSection, SinkSection};
use super::{CentralSink, NgsiSink, Sink};

/// Largest `max_entities` of an NGSI-LD sink.
pub const MAX_NGSI_ENTITIES: usize = 10_000;
/// Largest `max_bytes` of an NGSI-LD sink.
pub const MAX_NGSI_BYTES: usize = 64 << 20;
/// Largest `max_in_flight` of a sink.
pub const MAX_IN_FLIGHT: usize = 64;

impl Checker<'_> {
    /// `[[sink]]`, paths resolved; every sink's name unique.
    pub(super) fn sinks(&mut self, sections: &[SinkSection]) -> Vec<Sink> {
        let sinks: Vec<Sink> = (sections.iter().enumerate())
            .filter_map(|(n, s)| self.sink(n, s))
            .collect();
        let mut names = std::collections::BTreeSet::new();
        for (n, s) in sinks.iter().enumerate() {
            if matches!(s, Sink::Ngsi(_)) && !names.insert(s.name()) {
                let why = format!("{:?} names another sink too", s.name());
                self.push(&format!("sink[{n}].name"), &why);
            }
        }
        sinks
    }

    fn sink(&mut self, n: usize, s: &SinkSection) -> Option<Sink> {
        match s {
            SinkSection::Files { dir } => Some(Sink::Files {
                dir: self.base.join(dir),
            }),
            SinkSection::Central(c) => self.central_sink(n, c).map(Sink::Central),
            SinkSection::Ngsi(c) => self.ngsi_sink(n, c).map(Sink::Ngsi),
        }
    }

    /// A secret given inline or in a file (relative to the topology): at
    /// most one of them; `Some(None)` when neither is given and `required`
    /// is false.
    fn secret(
        &mut self,
        n: usize,
        (key, inline): (&str, &Option<String>),
        file: &Option<PathBuf>,
        required: bool,
    ) -> Option<Option<String>> {
        let place = |k: &str| format!("sink[{n}].{k}");
        match (inline, file) {
            (Some(t), None) => Some(Some(t.clone())),
            (None, Some(file)) => match std::fs::read_to_string(self.base.join(file)) {
                Ok(t) if !t.trim().is_empty() => Some(Some(t.trim().to_owned())),
                Ok(_) => {
                    self.push(&place(&format!("{key}_file")), "is empty");
                    None
                }
                Err(e) => {
                    let path = self.base.join(file);
                    let why = format!("cannot read {}: {e}", path.display());
                    self.push(&place(&format!("{key}_file")), &why);
                    None
                }
            },
            (None, None) if !required => Some(None),
            _ => {
                let why = format!("give exactly one of {key} and {key}_file");
                self.push(&place(key), &why);
                None
            }
        }
    }

    /// Each path must be a readable file, relative to the topology.
    fn readable(&mut self, n: usize, files: &[(&str, &PathBuf)]) {
        for (key, p) in files {
            if !self.base.join(p).is_file() {
                let why = format!("{} is not a readable file", self.base.join(p).display());
                self.push(&format!("sink[{n}].{key}"), &why);
            }
        }
    }

    /// A count with a default, within `1..=max`.
    fn bounded(
        &mut self,
        n: usize,
        key: &str,
        v: Option<usize>,
        default: usize,
        max: usize,
    ) -> usize {
        let v = v.unwrap_or(default);
        if v == 0 || v > max {
            let why = format!("must be between 1 and {max}");
            self.push(&format!("sink[{n}].{key}"), &why);
        }
        v
    }

    /// `[[sink]] type = "central"`: the address resolved, the token read,
    /// paths resolved and checked.
    fn central_sink(&mut self, n: usize, c: &CentralSinkSection) -> Option<CentralSink> {
        let place = |key: &str| format!("sink[{n}].{key}");
        let to = match std::net::ToSocketAddrs::to_socket_addrs(c.to.as_str()) {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                self.push(
                    &place("to"),
                    &format!("{:?} is not a host:port that resolves: {e}", c.to),
                );
                None
            }
        };
        let host = c.to.rsplit_once(':').map_or(c.to.as_str(), |(h, _)| h);
        let server_name = c
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
        let token = self.secret(n, ("token", &c.token), &c.token_file, true);
        let mut files = vec![("ca", &c.ca)];
        files.extend(c.cert.as_ref().map(|p| ("cert", p)));
        files.extend(c.key.as_ref().map(|p| ("key", p)));
        self.readable(n, &files);
        let identity = match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => Some((self.base.join(cert), self.base.join(key))),
            (None, None) => None,
            _ => {
                self.push(&place("cert"), "give both cert and key, or neither");
                None
            }
        };
        let max_hold = self.duration_or(
            c.max_hold.as_deref(),
            super::DEFAULT_MAX_HOLD,
            &place("max_hold"),
        );
        Some(CentralSink {
            to: to?,
            server_name,
            ca: self.base.join(&c.ca),
            token: token??,
            identity,
            max_hold: max_hold?,
        })
    }

    /// `[[sink]] type = "ngsi-ld"`: the URLs checked, the token read, the
    /// kinds those with a Smart Data Model, limits bounded.
    fn ngsi_sink(&mut self, n: usize, c: &NgsiSinkSection) -> Option<NgsiSink> {
        let place = |key: &str| format!("sink[{n}].{key}");
        let name = c.name.clone().unwrap_or_else(|| "ngsi-ld".into());
        if name.is_empty()
            || !(name.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.push(&place("name"), "use letters, digits, '-' and '_' only");
        }
        for (key, url) in [("url", Some(&c.url)), ("context", c.context.as_ref())] {
            let Some(url) = url else { continue };
            match reqwest::Url::parse(url) {
                Ok(u) if ["http", "https"].contains(&u.scheme()) => {}
                Ok(u) => {
                    let why = format!("{url:?}: expected http or https, found {}", u.scheme());
                    self.push(&place(key), &why);
                }
                Err(e) => self.push(&place(key), &format!("{url:?} is not a URL: {e}")),
            }
        }
        let token = self.secret(n, ("token", &c.token), &c.token_file, false);
        if let Some(ca) = &c.ca {
            self.readable(n, &[("ca", ca)]);
        }
        let kinds: Vec<Kind> = match &c.kinds {
            None => vec![Kind::Congestion, Kind::Charging],
            Some(names) => names
                .iter()
                .filter_map(|k| match k.parse::<Kind>() {
                    Ok(Kind::Zone) => {
                        let why = "zones have no Smart Data Model here: use congestion or charging";
                        self.push(&place("kinds"), why);
                        None
                    }
                    Ok(kind) => Some(kind),
                    Err(e) => {
                        self.push(&place("kinds"), &e);
                        None
                    }
                })
                .collect(),
        };
        let max_entities = self.bounded(
            n,
            "max_entities",
            c.max_entities,
            super::DEFAULT_NGSI_MAX_ENTITIES,
            MAX_NGSI_ENTITIES,
        );
        let max_bytes = self.bounded(
            n,
            "max_bytes",
            c.max_bytes,
            super::DEFAULT_NGSI_MAX_BYTES,
            MAX_NGSI_BYTES,
        );
        let max_in_flight = self.bounded(
            n,
            "max_in_flight",
            c.max_in_flight,
            super::DEFAULT_NGSI_IN_FLIGHT,
            MAX_IN_FLIGHT,
        );
        let timeout = self.duration_or(
            c.timeout.as_deref(),
            super::DEFAULT_NGSI_TIMEOUT,
            &place("timeout"),
        );
        let max_hold = self.duration_or(
            c.max_hold.as_deref(),
            super::DEFAULT_MAX_HOLD,
            &place("max_hold"),
        );
        Some(NgsiSink {
            name,
            url: c.url.trim_end_matches('/').to_owned(),
            context: (c.context.clone()).unwrap_or_else(|| super::DEFAULT_NGSI_CONTEXT.into()),
            tenant: c.tenant.clone(),
            token: token?,
            ca: c.ca.as_ref().map(|p| self.base.join(p)),
            kinds,
            max_entities,
            max_bytes,
            max_in_flight,
            timeout: timeout?,
            max_hold: max_hold?,
            state_dir: c.state_dir.as_ref().map(|p| self.base.join(p)),
        })
    }
}
