//! Starting on embedded defaults, the command line, configuration errors and shutdown.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Client, Daemon, temp_dir};
use serde_json::json;

fn roomcast(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_roomcast")).args(args).current_dir(dir).output().expect("run roomcast")
}

#[test]
fn embedded_defaults_keep_a_key_in_data_that_token_uses() {
    let dir = temp_dir("defaults");
    let mut d = Daemon::spawn(&dir, &["serve", "--listen", "127.0.0.1:0"]);
    d.wait_until_listening();
    let key = dir.join("data/hs256.key");
    let mode = std::fs::metadata(&key).expect("key file in ./data").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = roomcast(&dir, &["token", "--sub", "alice", "--ttl", "10m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut c = Client::connect_with(&d, "/ws", &[("Authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!(c.recv_type("welcome")["user"], "alice");
    assert_eq!(c.join("lobby")["room"], "lobby");
    // A restart keeps the key, so the same token still works.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
    let mut d = Daemon::spawn(&dir, &["serve", "--listen", "127.0.0.1:0"]);
    d.wait_until_listening();
    let mut c = Client::connect_with(&d, "/ws", &[("Authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!(c.recv_type("welcome")["user"], "alice");
}

#[test]
fn token_command_sets_rooms_role_and_name() {
    let d = Daemon::start();
    let cfg = d.config_path.to_str().unwrap();
    let out = roomcast(
        &d.dir,
        &["token", "--config", cfg, "--sub", "svc", "--rooms", "a,b:*", "--role", "admin", "--name", "Svc"],
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = roomcast::auth::Verifier::new(&roomcast::config::Config::load(&d.config_path).unwrap().auth);
    let id = verifier.verify(token.trim(), common::now_unix()).unwrap();
    assert_eq!(&*id.user, "svc");
    assert_eq!(id.role, roomcast::auth::Role::Admin);
    assert_eq!(id.name.as_deref(), Some("Svc"));
    assert!(id.rooms.allows("b:1") && id.rooms.allows("a") && !id.rooms.allows("c"));
    let out = roomcast(&d.dir, &["token", "--config", cfg, "--sub", "bad user"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid user id"));
}

#[test]
fn check_config_reports_file_line_and_reason() {
    let dir = temp_dir("check");
    let good = dir.join("good.toml");
    std::fs::write(&good, "[server]\nshards = 1\n").unwrap();
    let out = roomcast(&dir, &["check-config", good.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nshards = 1\nlisten_on = \"x\"\n").unwrap();
    let out = roomcast(&dir, &["check-config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:"), "{err}");
    assert!(err.contains("listen_on"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    std::fs::write(&bad, "[auth]\ntimeout = \"5 parsecs\"\n").unwrap();
    let err = String::from_utf8(roomcast(&dir, &["check-config", bad.to_str().unwrap()]).stderr).unwrap();
    assert!(err.contains("bad.toml:2:"), "{err}");
    let out = roomcast(&dir, &["check-config", dir.join("missing.toml").to_str().unwrap()]);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_refuses_a_bad_config_a_busy_port_and_an_unwritable_data_dir() {
    let d = Daemon::start();
    let dir = temp_dir("refuse");
    let busy = dir.join("busy.toml");
    std::fs::write(&busy, format!("[server]\nlisten = \"{}\"\n[history]\npath = {:?}\n", d.addr, dir.join("db")))
        .unwrap();
    let out = roomcast(&dir, &["serve", "--config", busy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("address already in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let unwritable = dir.join("unwritable.toml");
    std::fs::write(&unwritable, "[server]\nlisten = \"127.0.0.1:0\"\n[history]\npath = \"/proc/roomcast/db\"\n")
        .unwrap();
    let out = roomcast(&dir, &["serve", "--config", unwritable.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/proc/roomcast"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let invalid = dir.join("invalid.toml");
    std::fs::write(&invalid, "[limits]\nrate = 0\n").unwrap();
    let out = roomcast(&dir, &["serve", "--config", invalid.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rate"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_closes_every_connection_with_1001_and_exits_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut d = Daemon::start();
        let mut clients: Vec<Client> = (0..4).map(|i| d.client(&format!("u{i}"))).collect();
        clients[0].join("r");
        d.signal(signal);
        for c in clients.iter_mut() {
            assert_eq!(c.expect_close(), Some(1001));
        }
        assert_eq!(d.wait_exit(), Some(0));
        assert!(d.log_text().contains("roomcast stopped"));
        assert!(std::net::TcpStream::connect(d.addr).is_err(), "no longer listening");
    }
}

#[test]
fn sighup_rotates_keys_without_dropping_connections() {
    let mut d = Daemon::start();
    let mut old = d.client("old");
    old.join("r");
    let new_secret = "rotated-secret-rotated-secret-rotated-0001";
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    let rotated = text.replace(
        &format!(r#"keys = [{{ kid = "{}", secret = "{}" }}]"#, common::KID, common::SECRET),
        &format!(r#"keys = [{{ kid = "k2", secret = "{new_secret}" }}]"#),
    );
    assert_ne!(text, rotated);
    std::fs::write(&d.config_path, rotated).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for_log("configuration reloaded");
    let key = roomcast::config::KeyConfig { kid: "k2".into(), secret: new_secret.as_bytes().to_vec() };
    let request = roomcast::auth::MintRequest {
        sub: "new",
        name: None,
        rooms: None,
        role: None,
        ttl: Some(std::time::Duration::from_secs(60)),
        now_unix: common::now_unix(),
    };
    let fresh = roomcast::auth::mint(&key, &request);
    let mut new = Client::connect_with(&d, "/ws", &[("Authorization", &format!("Bearer {fresh}"))]).unwrap();
    assert_eq!(new.recv_type("welcome")["user"], "new");
    let stale = format!("Bearer {}", common::token("late"));
    assert_eq!(Client::connect_with(&d, "/ws", &[("Authorization", &stale)]).err(), Some(401));
    assert_eq!(old.say("r", json!("still here"))["seq"], 1, "the connection made with the old key stays");
}

#[test]
fn healthz_and_stats_answer_plain_http() {
    let d = Daemon::start();
    assert_eq!(common::http_get(d.addr, "/healthz").0, 200);
    let s = d.stats();
    assert_eq!(s["connections"], 0);
    assert_eq!(s["shards"], json!([0, 0]));
}
