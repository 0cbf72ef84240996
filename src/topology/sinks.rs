//! Validation of `[[sink]]` sections: paths resolved, secrets read from
//! their files, addresses and URLs checked, limits bounded, names unique.

use std::path::PathBuf;

use crate::aggregate::Kind;

use super::check::Checker;
use super::file::{
    CentralSinkSection, MqttSinkSection, NgsiSinkSection, PostgresSinkSection, SinkSection,
};
use super::{CentralSink, MqttSink, NgsiSink, PostgresSink, Sink};

/// Largest `max_entities` of an NGSI-LD sink.
pub const MAX_NGSI_ENTITIES: usize = 10_000;
/// Largest `max_bytes` of an NGSI-LD sink.
pub const MAX_NGSI_BYTES: usize = 64 << 20;
/// Largest `max_backlog` of a city sink.
pub const MAX_SINK_BACKLOG: usize = 100_000_000;
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
            let city = matches!(s, Sink::Ngsi(_) | Sink::Mqtt(_) | Sink::Postgres(_));
            if city && !names.insert(s.name()) {
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
            SinkSection::Mqtt(c) => self.mqtt_sink(n, c).map(Sink::Mqtt),
            SinkSection::Postgres(c) => self.postgres_sink(n, c).map(Sink::Postgres),
        }
    }

    /// A sink's name, `default` when not given: letters, digits, '-', '_'.
    fn sink_name(&mut self, n: usize, name: &Option<String>, default: &str) -> String {
        let name = name.clone().unwrap_or_else(|| default.into());
        if name.is_empty()
            || !(name.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.push(
                &format!("sink[{n}].name"),
                "use letters, digits, '-' and '_' only",
            );
        }
        name
    }

    /// A sink's `kinds`: `default` when not given; each one of `allowed`.
    fn kinds(&mut self, n: usize, names: &Option<Vec<String>>, allowed: &[Kind]) -> Vec<Kind> {
        let Some(names) = names else {
            return allowed.to_vec();
        };
        let place = format!("sink[{n}].kinds");
        let mut kinds = Vec::new();
        for name in names {
            match name.parse::<Kind>() {
                Ok(k) if allowed.contains(&k) => kinds.push(k),
                Ok(k) => {
                    let ok: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
                    let why = format!(
                        "{} is not delivered by this sink: use {}",
                        k.as_str(),
                        ok.join(", ")
                    );
                    self.push(&place, &why);
                }
                Err(e) => self.push(&place, &e),
            }
        }
        if names.is_empty() {
            self.push(&place, "name at least one kind");
        }
        kinds
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
        let name = self.sink_name(n, &c.name, "ngsi-ld");
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
        // Zones have no Smart Data Model here.
        let kinds = self.kinds(n, &c.kinds, &[Kind::Congestion, Kind::Charging]);
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
        let max_backlog = self.bounded(
            n,
            "max_backlog",
            c.max_backlog,
            super::DEFAULT_SINK_MAX_BACKLOG,
            MAX_SINK_BACKLOG,
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
            max_backlog,
            state_dir: c.state_dir.as_ref().map(|p| self.base.join(p)),
        })
    }

    /// `[[sink]] type = "mqtt"`: the broker's URL split, the password
    /// read, limits bounded.
    fn mqtt_sink(&mut self, n: usize, c: &MqttSinkSection) -> Option<MqttSink> {
        let place = |key: &str| format!("sink[{n}].{key}");
        let name = self.sink_name(n, &c.name, "mqtt");
        let broker = match reqwest::Url::parse(&c.broker) {
            Ok(u) if ["mqtt", "mqtts"].contains(&u.scheme()) && u.host_str().is_some() => {
                let tls = u.scheme() == "mqtts";
                let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
                Some((u.host_str().unwrap_or_default().to_owned(), port, tls))
            }
            Ok(_) => {
                let why = format!(
                    "{:?}: expected mqtt://host:port or mqtts://host:port",
                    c.broker
                );
                self.push(&place("broker"), &why);
                None
            }
            Err(e) => {
                self.push(
                    &place("broker"),
                    &format!("{:?} is not a URL: {e}", c.broker),
                );
                None
            }
        };
        let password = self.secret(n, ("password", &c.password), &c.password_file, false);
        let credentials = match (&c.username, password) {
            (Some(u), Some(Some(p))) => Some(Some((u.clone(), p))),
            (Some(u), Some(None)) => Some(Some((u.clone(), String::new()))),
            (None, Some(None)) => Some(None),
            (None, Some(Some(_))) => {
                self.push(&place("username"), "a password needs a username");
                None
            }
            (_, None) => None,
        };
        if let Some(ca) = &c.ca {
            self.readable(n, &[("ca", ca)]);
        }
        let prefix = c.topic_prefix.clone().unwrap_or_else(|| "edgeflow".into());
        if prefix.is_empty() || prefix.contains(['+', '#', '\0']) || prefix.starts_with('/') {
            self.push(
                &place("topic_prefix"),
                "a topic level without '+', '#' or a leading '/'",
            );
        }
        let kinds = self.kinds(n, &c.kinds, &Kind::ALL);
        let max_messages = self.bounded(
            n,
            "max_messages",
            c.max_messages,
            super::DEFAULT_MQTT_MAX_MESSAGES,
            MAX_NGSI_ENTITIES,
        );
        let max_in_flight = self.bounded(
            n,
            "max_in_flight",
            c.max_in_flight,
            super::DEFAULT_MQTT_IN_FLIGHT,
            MAX_IN_FLIGHT,
        );
        let timeout = self.duration_or(
            c.timeout.as_deref(),
            super::DEFAULT_MQTT_TIMEOUT,
            &place("timeout"),
        );
        let retain_expiry = self.duration_or(
            c.retain_expiry.as_deref(),
            super::DEFAULT_MQTT_RETAIN_EXPIRY,
            &place("retain_expiry"),
        );
        let max_hold = self.duration_or(
            c.max_hold.as_deref(),
            super::DEFAULT_MAX_HOLD,
            &place("max_hold"),
        );
        let max_backlog = self.bounded(
            n,
            "max_backlog",
            c.max_backlog,
            super::DEFAULT_SINK_MAX_BACKLOG,
            MAX_SINK_BACKLOG,
        );
        let (host, port, tls) = broker?;
        Some(MqttSink {
            client_id: c.client_id.clone(),
            name,
            host,
            port,
            tls,
            topic_prefix: prefix,
            kinds,
            provisional: c.provisional.unwrap_or(false),
            retain_expiry: retain_expiry?,
            credentials: credentials?,
            ca: c.ca.as_ref().map(|p| self.base.join(p)),
            max_messages,
            max_in_flight,
            timeout: timeout?,
            max_hold: max_hold?,
            max_backlog,
        })
    }

    /// `[[sink]] type = "postgres"`: the URL checked (no password in it,
    /// a known `sslmode`), the CA readable, the password read, the schema an identifier, limits bounded.
    fn postgres_sink(&mut self, n: usize, c: &PostgresSinkSection) -> Option<PostgresSink> {
        let place = |key: &str| format!("sink[{n}].{key}");
        let name = self.sink_name(n, &c.name, "postgres");
        match reqwest::Url::parse(&c.url) {
            Ok(u) if ["postgres", "postgresql"].contains(&u.scheme()) => {
                if u.password().is_some() {
                    self.push(
                        &place("url"),
                        "no password in the URL: use password or password_file",
                    );
                }
                let tls = (u.query_pairs()).find(|(k, _)| k == "sslmode");
                if let Some((_, mode)) = &tls {
                    if !["disable", "prefer", "require"].contains(&mode.as_ref()) {
                        let why = format!(
                            "sslmode={mode}: expected disable or require (require verifies \
                             the server's certificate, as libpq's verify-full)"
                        );
                        self.push(&place("url"), &why);
                    }
                }
                if let Some(ca) = &c.ca {
                    self.readable(n, &[("ca", ca)]);
                }
            }
            Ok(_) => self.push(&place("url"), "expected postgres://user@host:port/database"),
            Err(e) => self.push(&place("url"), &format!("{:?} is not a URL: {e}", c.url)),
        }
        let password = self.secret(n, ("password", &c.password), &c.password_file, false);
        let schema = c.schema.clone().unwrap_or_else(|| "edgeflow".into());
        let identifier = schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && schema.len() <= 63;
        if !identifier {
            self.push(
                &place("schema"),
                "a lower-case SQL identifier (letters, digits, '_', at most 63)",
            );
        }
        let kinds = self.kinds(n, &c.kinds, &Kind::ALL);
        let max_rows = self.bounded(
            n,
            "max_rows",
            c.max_rows,
            super::DEFAULT_PG_MAX_ROWS,
            100_000,
        );
        let max_in_flight = self.bounded(
            n,
            "max_in_flight",
            c.max_in_flight,
            super::DEFAULT_PG_IN_FLIGHT,
            MAX_IN_FLIGHT,
        );
        let timeout = self.duration_or(
            c.timeout.as_deref(),
            super::DEFAULT_PG_TIMEOUT,
            &place("timeout"),
        );
        let max_hold = self.duration_or(
            c.max_hold.as_deref(),
            super::DEFAULT_MAX_HOLD,
            &place("max_hold"),
        );
        let max_backlog = self.bounded(
            n,
            "max_backlog",
            c.max_backlog,
            super::DEFAULT_SINK_MAX_BACKLOG,
            MAX_SINK_BACKLOG,
        );
        Some(PostgresSink {
            name,
            url: c.url.clone(),
            password: password?,
            ca: c.ca.as_ref().map(|p| self.base.join(p)),
            schema,
            kinds,
            max_rows,
            max_in_flight,
            timeout: timeout?,
            max_hold: max_hold?,
            max_backlog,
        })
    }
}
