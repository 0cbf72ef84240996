//! A problem found in a configuration or reference file: which file, where
//! in it, what is wrong. Validation collects them all and reports them at
//! once (topology, road network, chargers, zones).

use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration or reference file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Where in it (`features[3].properties.id`, `windows.size`).
    pub place: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.place,
                self.message
            )
        }
    }
}
