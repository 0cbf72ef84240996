//! Geography: map matching of positions to road segments, and zones
//! (named polygons and H3 cells) that aggregates roll up into.

pub mod hmm;
pub mod matcher;
mod pieces;

pub use matcher::{MatchSettings, Matcher, Unmatched};
pub mod zones;
