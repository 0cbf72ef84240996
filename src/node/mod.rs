//! The node: the parts of a running edge (and, later, central) node that
//! compose the layers below: its listener serving both protocols.
//!
//! - [`listener`]: the QUIC endpoint, admission, dispatch by ALPN.

pub mod listener;
