//! The process's resident memory and open files, read from `/proc` (Linux;
//! elsewhere the gauges are left unset).

use crate::metrics::{PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RSS};

/// Resident memory, bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Open file descriptors (entries of `/proc/self/fd`, less the one
/// reading it).
pub fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// The soft limit of open files (`Max open files` of `/proc/self/limits`).
pub fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Publishes the three gauges (inside [`super::Registry::scope`]).
pub fn collect() {
    if let Some(b) = resident_bytes() {
        metrics::gauge!(PROCESS_RSS).set(b as f64);
    }
    if let Some(n) = open_fds() {
        metrics::gauge!(PROCESS_OPEN_FDS).set(n as f64);
    }
    if let Some(n) = max_fds() {
        metrics::gauge!(PROCESS_MAX_FDS).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_reads_itself() {
        if cfg!(target_os = "linux") {
            assert!(super::resident_bytes().is_some_and(|b| b > 1 << 20));
            assert!(super::open_fds().is_some_and(|n| n >= 3));
            assert!(super::max_fds().is_some_and(|n| n >= 64));
        }
    }
}
