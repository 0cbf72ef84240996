//! Sign-ins of the live map: a page sends its operator token once
//! (`POST /api/login`) and gets an opaque session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` over HTTPS), so the token never travels in
//! a URL and scripts of the page cannot read the cookie.
//!
//! A session holds the token itself: every request checks it against the
//! operators in force (a reload that revokes the token ends what its
//! sessions see at once). At most [`MAX_SESSIONS`] sessions live at once;
//! expired ones go first, then the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions held at once (each is a few hundred bytes).
pub const MAX_SESSIONS: usize = 10_000;

/// The cookie's name.
pub const COOKIE: &str = "edgeflow_session";

struct Session {
    token: String,
    expires: Instant,
    created: Instant,
}

/// The sign-ins in force.
pub struct Sessions {
    ttl: Duration,
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Sessions that last `ttl` each.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session for `token` (already checked); its id, or `None` if
    /// no random id could be made.
    pub fn open(&self, token: &str) -> Option<String> {
        let mut raw = [0u8; 32];
        crate::wire::tls::random(&mut raw).ok()?;
        let id = hex::encode(raw);
        let now = Instant::now();
        let mut map = self.by_id.lock().ok()?;
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SESSIONS {
            let oldest = (map.iter())
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            id.clone(),
            Session {
                token: token.to_owned(),
                expires: now + self.ttl,
                created: now,
            },
        );
        Some(id)
    }

    /// The token of the session `id`, if it is in force.
    pub fn token(&self, id: &str) -> Option<String> {
        let mut map = self.by_id.lock().ok()?;
        let s = map.get(id)?;
        if s.expires <= Instant::now() {
            map.remove(id);
            return None;
        }
        Some(s.token.clone())
    }

    /// Ends the session `id`.
    pub fn close(&self, id: &str) {
        if let Ok(mut map) = self.by_id.lock() {
            map.remove(id);
        }
    }
}

/// The session id in a `Cookie` header's value, if any.
pub fn from_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_close_and_cookies_parse() {
        let s = Sessions::new(Duration::from_millis(50));
        let id = s.open("secret").expect("id");
        assert_eq!(s.token(&id).as_deref(), Some("secret"));
        let other = s.open("secret").expect("id");
        assert_ne!(id, other, "ids are random");
        s.close(&other);
        assert_eq!(s.token(&other), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.token(&id), None, "expired");
        let header = format!("a=b; {COOKIE}={id}; c=d");
        assert_eq!(from_cookie(&header), Some(id.as_str()));
        assert_eq!(from_cookie(&format!("{COOKIE}=../../etc")), None);
        assert_eq!(from_cookie("x=y"), None);
    }
}
