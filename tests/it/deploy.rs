//! deploy/: the systemd unit passes `systemd-analyze verify` and rates
//! under 3 on `systemd-analyze security` (offline), when systemd-analyze
//! is there (CI requires it: `EDGEFLOW_REQUIRE_DEPLOY_TOOLS`).

use std::process::Command;

use crate::support::{root, skip};

/// Whether `tool` runs here; if not, the test is skipped (or fails when
/// CI requires the deploy tools).
fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("EDGEFLOW_REQUIRE_DEPLOY_TOOLS").is_none(),
            "{tool} is required (EDGEFLOW_REQUIRE_DEPLOY_TOOLS) but does not run"
        );
        skip(test, &format!("{tool} is not installed"));
    }
    ok
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if !have("systemd-analyze", "the_systemd_unit_verifies_and_is_hardened") {
        return;
    }
    let text = std::fs::read_to_string(root("deploy/edgeflow-edge.service")).expect("unit");
    // The unit names the installed binary; verify checks that it exists,
    // so it is pointed at the one under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("edgeflow-edge.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/edgeflow", env!("CARGO_BIN_EXE_edgeflow")),
    )
    .expect("write");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let out = String::from_utf8_lossy(&security.stdout);
    let level: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for edgeflow-edge.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    assert!(level < 3.0, "exposure {level}: {out}");
    // What the node relies on: readiness by sd_notify, its state directory.
    for line in ["Type=notify", "StateDirectory=edgeflow", "KillSignal=SIGTERM"] {
        assert!(text.lines().any(|l| l == line), "{line}");
    }
}
