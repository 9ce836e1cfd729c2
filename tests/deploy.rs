//! The deployment artifacts: `conf/roomcast.toml` validates with this binary and fits the unit's
//! sandbox, and `systemd-analyze verify` finds nothing wrong with `systemd/roomcast.service`.

use std::process::Command;

#[test]
fn unit_and_production_config_verify() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/systemd/verify.sh"))
        .arg(env!("CARGO_BIN_EXE_roomcast"))
        // CI installs systemd; without systemd-analyze this test fails rather than skips.
        .env("REQUIRE_SYSTEMD_ANALYZE", "1")
        .output()
        .expect("run systemd/verify.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd/verify.sh failed (install `systemd` for systemd-analyze):\n{text}");
    assert!(text.contains("conf/roomcast.toml: ok"), "{text}");
}
