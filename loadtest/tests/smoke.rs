//! Smoke test: every scenario at tiny sizes against `roomcast-baseline` and against roomcast (the
//! workspace's own build, or `ROOMCAST_BIN`), asserting a clean, non-empty JSON report.

use std::process::Command;

use serde_json::Value;

const HARNESS: &str = env!("CARGO_BIN_EXE_roomcast-loadtest");
const BASELINE: &str = env!("CARGO_BIN_EXE_roomcast-baseline");

fn run(server: &str, args: &[&str]) -> Value {
    let out = Command::new(HARNESS)
        .args(args)
        .args(["--spawn-server", server, "--json", "--quiet", "--drain", "2s", "--deadline", "25s"])
        .output()
        .expect("harness runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} against {server}: {}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"));
    assert_eq!(report["clean"], true, "{args:?}: {stdout}");
    assert_eq!(report["connections"]["failed"], 0, "{stdout}");
    assert_eq!(report["connections"]["dropped"], 0, "{stdout}");
    assert_eq!(report["traffic"]["lost"], 0, "{stdout}");
    assert_eq!(report["traffic"]["lost_by_seq"], 0, "{stdout}");
    assert_eq!(report["traffic"]["gaps"], 0, "{stdout}");
    assert!(report["server"]["pid"].as_u64().is_some_and(|p| p > 0), "server accounted: {stdout}");
    report
}

fn servers() -> Vec<String> {
    // `cargo test --workspace` builds roomcast next to this harness.
    let sibling = std::path::Path::new(HARNESS).with_file_name("roomcast");
    let roomcast = std::env::var("ROOMCAST_BIN").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| {
        assert!(
            sibling.exists(),
            "no roomcast binary at {}: run `cargo test --workspace` (or set ROOMCAST_BIN)",
            sibling.display()
        );
        sibling.to_string_lossy().into_owned()
    });
    vec![BASELINE.to_string(), roomcast]
}

fn assert_deliveries(r: &Value) {
    let received = r["traffic"]["received"].as_u64().unwrap_or(0);
    assert!(received > 0, "no deliveries: {r}");
    assert_eq!(Some(received), r["traffic"]["expected"].as_u64(), "{r}");
    assert!(r["latency"]["count"].as_u64().unwrap_or(0) > 0);
    assert!(r["latency"]["p99_us"].as_u64().unwrap_or(0) > 0);
    assert!(!r["timeline"].as_array().is_some_and(|t| t.is_empty()), "time series");
    assert!(!r["cdf"].as_array().is_some_and(|c| c.is_empty()), "cdf");
}

#[test]
fn idle() {
    for s in servers() {
        let r = run(&s, &["idle", "--connections", "12", "--rooms", "3", "--duration", "1s"]);
        assert_eq!(r["connections"]["ready"], 12);
        assert_eq!(r["setup"]["join"]["count"], 12);
        assert!(r["server"]["rss_per_connection_kib"].is_number());
    }
}

#[test]
fn fanout_over_two_workers_and_source_ips() {
    for s in servers() {
        let plot = std::env::temp_dir().join(format!("lt-smoke-{}.svg", std::process::id()));
        let plot_arg = plot.to_string_lossy().into_owned();
        let r = run(
            &s,
            &[
                "fanout",
                "--members",
                "10",
                "--publishers",
                "2",
                "--rate",
                "40",
                "--duration",
                "1s",
                "--workers",
                "2",
                "--source-ips",
                "127.0.0.2-127.0.0.3",
                "--plot",
                &plot_arg,
            ],
        );
        assert_deliveries(&r);
        assert!(r["traffic"]["acked"].as_u64().unwrap_or(0) >= 30, "{r}");
        assert!(r["server"]["cpu_us_per_delivery"].is_number());
        let svg = std::fs::read_to_string(&plot).expect("plot written");
        assert!(svg.contains("<svg") && svg.contains("latency"), "svg content");
        let _ = std::fs::remove_file(plot);
    }
}

#[test]
fn chat() {
    for s in servers() {
        let r = run(&s, &["chat", "--rooms", "5", "--members", "4", "--room-rate", "8", "--duration", "1s"]);
        assert_deliveries(&r);
    }
}

#[test]
fn ramp() {
    for s in servers() {
        let r = run(&s, &["ramp", "--members", "5", "--rates", "20,40", "--step", "1s", "--max-p99", "1s"]);
        assert_deliveries(&r);
        let steps = r["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 2);
        assert_eq!(r["last_clean_rate"], 40.0, "{r}");
    }
}

#[test]
fn churn() {
    for s in servers() {
        let r = run(&s, &["churn", "--rate", "20", "--rooms", "2", "--duration", "1s"]);
        let completed = r["churn"]["completed"].as_u64().unwrap_or(0);
        assert!(completed >= 15, "{r}");
        assert_eq!(r["churn"]["started"].as_u64(), Some(completed));
        assert_eq!(r["close_codes"]["1000"].as_u64(), Some(completed), "{r}");
    }
}

#[test]
fn remote_target_is_refused() {
    let out = Command::new(HARNESS)
        .args(["idle", "--url", "ws://192.0.2.1:8080/ws", "--secret", "x", "--quiet"])
        .output()
        .expect("harness runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}
