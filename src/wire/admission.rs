//! Admission of QUIC connections: who may take a slot, before and after
//! authentication. Pure bookkeeping, no sockets.
//!
//! Two pools, so that strangers cannot keep fleets out:
//! - *unauthenticated*: from the handshake until the HELLO's token (or the
//!   first SUBSCRIBE's) is checked; at most `max_unauthenticated` node-wide
//!   and `max_unauthenticated_per_source` per IP address. Past half of the
//!   node-wide limit, a client must first prove its address (QUIC Retry),
//!   so spoofed sources cannot fill the pool.
//! - *live*: authenticated sessions, at most `max_connections`.
//!
//! A connection holds an [`Unauthenticated`] ticket, trades it for a
//! [`Live`] one with [`Unauthenticated::authenticate`], and gives its slot
//! back when the ticket is dropped, whatever happens.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

/// The limits of admission (from `[ingest]`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Authenticated connections.
    pub max_connections: usize,
    /// Unauthenticated connections, node-wide.
    pub max_unauthenticated: usize,
    /// Unauthenticated connections per source address.
    pub max_unauthenticated_per_source: usize,
}

#[derive(Debug)]
struct State {
    limits: Limits,
    unauthenticated: usize,
    per_source: FxHashMap<IpAddr, usize>,
    live: usize,
}

/// The node's connection slots.
#[derive(Debug)]
pub struct Admission {
    state: Mutex<State>,
}

/// What to do with a new connection.
#[derive(Debug)]
pub enum Admit {
    /// Let it in, holding this ticket.
    Yes(Unauthenticated),
    /// Ask it to prove its address first (QUIC Retry).
    Retry,
    /// Refuse it, for this reason.
    Refuse(&'static str),
}

/// A connection not yet authenticated.
#[derive(Debug)]
pub struct Unauthenticated {
    admission: Arc<Admission>,
    source: IpAddr,
}

/// An authenticated connection's slot.
#[derive(Debug)]
pub struct Live {
    admission: Arc<Admission>,
}

impl Admission {
    /// Empty pools with these limits.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            state: Mutex::new(State {
                limits,
                unauthenticated: 0,
                per_source: FxHashMap::default(),
                live: 0,
            }),
        })
    }

    /// New limits (a reload): connections over a lowered limit stay;
    /// new ones wait until enough have gone.
    pub fn set_limits(&self, limits: Limits) {
        if let Ok(mut st) = self.state.lock() {
            st.limits = limits;
        }
    }

    /// A connection from `source` arrives; `validated` says whether it has
    /// proved its address (it answered a Retry).
    pub fn arrive(self: &Arc<Self>, source: IpAddr, validated: bool) -> Admit {
        let Ok(mut st) = self.state.lock() else {
            return Admit::Refuse("the node is failing");
        };
        let l = st.limits;
        if st.unauthenticated >= l.max_unauthenticated {
            return Admit::Refuse("too many connections waiting to authenticate");
        }
        let from_source = st.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= l.max_unauthenticated_per_source {
            return Admit::Refuse("too many unauthenticated connections from this address");
        }
        if !validated && st.unauthenticated >= l.max_unauthenticated / 2 {
            return Admit::Retry;
        }
        st.unauthenticated += 1;
        *st.per_source.entry(source).or_default() += 1;
        Admit::Yes(Unauthenticated {
            admission: self.clone(),
            source,
        })
    }

    /// Authenticated connections now.
    pub fn live(&self) -> usize {
        self.state.lock().map_or(0, |s| s.live)
    }

    /// Unauthenticated connections now.
    pub fn unauthenticated(&self) -> usize {
        self.state.lock().map_or(0, |s| s.unauthenticated)
    }
}

impl Unauthenticated {
    /// The token checked out: trades this ticket for a live slot, or
    /// `None` when all `max_connections` are taken.
    pub fn authenticate(self) -> Option<Live> {
        let admission = self.admission.clone();
        let mut st = admission.state.lock().ok()?;
        if st.live >= st.limits.max_connections {
            return None;
        }
        st.live += 1;
        drop(st);
        drop(self);
        Some(Live { admission })
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        if let Ok(mut st) = self.admission.state.lock() {
            st.unauthenticated -= 1;
            if let Some(n) = st.per_source.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    st.per_source.remove(&self.source);
                }
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(mut st) = self.admission.state.lock() {
            st.live -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_fill_their_own_pool_not_the_fleets_slots() {
        let adm = Admission::new(Limits {
            max_connections: 2,
            max_unauthenticated: 8,
            max_unauthenticated_per_source: 3,
        });
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let held: Vec<_> = (0..3)
            .map(|_| match adm.arrive(a, false) {
                Admit::Yes(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            matches!(adm.arrive(a, true), Admit::Refuse(_)),
            "per source"
        );
        let b1 = match adm.arrive(b, false) {
            Admit::Yes(t) => t,
            other => panic!("{other:?}"),
        };
        // Half the pool is in use: unproven addresses are asked to retry.
        assert!(matches!(adm.arrive(b, false), Admit::Retry));
        let b2 = match adm.arrive(b, true) {
            Admit::Yes(t) => t,
            other => panic!("{other:?}"),
        };
        let live1 = b1.authenticate().expect("a slot");
        let _live2 = b2.authenticate().expect("a slot");
        assert_eq!((adm.live(), adm.unauthenticated()), (2, 3));
        drop(held);
        assert_eq!(adm.unauthenticated(), 0);
        let c = match adm.arrive(a, false) {
            Admit::Yes(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(c.authenticate().is_none(), "max_connections");
        drop(live1);
        assert_eq!((adm.live(), adm.unauthenticated()), (1, 0));
    }
}
