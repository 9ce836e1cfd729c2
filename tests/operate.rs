//! Operating the daemon: every admin command through the CLI, drain and shutdown, the admin
//! socket's safety, and systemd notifications over a real datagram socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Client, Daemon, WAIT, temp_dir};
use serde_json::json;

#[test]
fn admin_commands_answer_json_with_ok() {
    let d = Daemon::start_with(&[("server", "shards = 2")]);
    let mode = std::fs::metadata(d.dir.join("admin.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut alice = d.client("alice");
    let mut alice2 = d.client("alice");
    let mut bob = d.client("bob");
    alice.join("team:a");
    alice2.join("team:a");
    bob.join("team:a");
    bob.join("lobby");

    let (ok, stats) = d.admin("stats");
    assert!(ok);
    assert_eq!(
        (stats["ok"].clone(), stats["connections"].clone(), stats["users"].clone()),
        (json!(true), json!(3), json!(2))
    );
    let (_, rooms) = d.admin("rooms team:");
    assert_eq!(rooms["rooms"], json!([{"name": "team:a", "members": 2, "connections": 3, "seq": 0}]));
    let (_, all) = d.admin("rooms");
    assert_eq!(all["rooms"].as_array().unwrap().len(), 2);
    let (ok, room) = d.admin("room team:a");
    assert!(ok);
    assert_eq!((room["members"].clone(), room["connections"].clone()), (json!(["alice", "bob"]), json!(3)));
    let (ok, missing) = d.admin("room nowhere");
    assert!(!ok);
    assert!(missing["error"].as_str().unwrap().contains("nowhere"));
    let (_, user) = d.admin("user alice");
    let conns = user["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0]["rooms"], json!(["team:a"]));
    assert_eq!(conns[0]["session"].as_str().unwrap().len(), 16);

    let (ok, published) = d.admin("publish team:a maintenance at 5pm");
    assert!(ok);
    assert_eq!(published["seq"], 1);
    let msg = bob.recv_type("message");
    assert_eq!((msg["from"].clone(), msg["body"].clone()), (json!("system"), json!("maintenance at 5pm")));

    let (ok, kicked) = d.admin("kick alice spamming the lobby");
    assert!(ok);
    assert_eq!(kicked["closed"], 2);
    assert_eq!(alice.expect_close(), Some(1008));
    assert_eq!(alice2.expect_close(), Some(1008));
    assert_eq!(bob.request(json!({"type": "ping"}), "pong")["type"], "pong");

    let (ok, level) = d.admin("log-level warn");
    assert!(ok && level["level"] == "warn");
    let (ok, _) = d.admin("log-level loud");
    assert!(!ok);
    let (ok, reloaded) = d.admin("reload");
    assert!(ok, "{reloaded}");
    let (ok, help) = d.admin("help");
    assert!(ok && help["commands"].as_array().unwrap().len() >= 10);
    for bad in ["frobnicate", "room", "kick"] {
        let (ok, reply) = d.admin(bad);
        assert!(!ok, "{bad}");
        assert_eq!(reply["ok"], false);
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

#[test]
fn admin_socket_is_exclusive_and_stale_files_are_replaced() {
    let d = Daemon::start();
    let dir = temp_dir("second");
    let config = dir.join("second.toml");
    let text = common::config_text(&dir, &[])
        .replace(&format!("{:?}", dir.join("admin.sock")), &format!("{:?}", d.dir.join("admin.sock")));
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running roomcast"));

    // A socket file left behind by a crash is replaced.
    let dir = d.kill();
    assert!(dir.join("admin.sock").exists());
    let d = Daemon::start_in(dir, &[]);
    assert!(d.admin("stats").0);
}

#[test]
fn admin_cli_reports_an_unreachable_daemon() {
    let dir = temp_dir("nodaemon");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["admin", "--socket"])
        .arg(dir.join("none.sock"))
        .arg("stats")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is roomcast running?"));
}

#[test]
fn drain_refuses_new_connections_then_closes_the_rest_and_exits_0() {
    let mut d = Daemon::start_with(&[("server", r#"drain_grace = "1s""#)]);
    let mut alice = d.client("alice");
    let mut bob = d.client("bob");
    alice.join("r");
    bob.join("r");
    let (ok, reply) = d.admin("drain");
    assert!(ok);
    assert_eq!(reply["grace_ms"], 1000);
    let started = Instant::now();
    assert_eq!(common::http_get(d.addr, "/healthz").0, 503);
    assert_eq!(Client::connect_with(&d, "/ws", &[]).err(), Some(503));
    // During the grace period existing connections keep working.
    alice.say("r", json!("still open"));
    assert_eq!(bob.recv_type("message")["body"], "still open");
    assert_eq!(alice.expect_close(), Some(1001));
    assert_eq!(bob.expect_close(), Some(1001));
    assert!(started.elapsed() >= Duration::from_millis(900), "closed only after the grace period");
    assert_eq!(d.wait_exit(), Some(0));
}

#[test]
fn shutdown_closes_at_once() {
    let mut d = Daemon::start_with(&[("server", r#"drain_grace = "1h""#)]);
    let mut c = d.client("c");
    assert!(d.admin("shutdown").0);
    assert_eq!(c.expect_close(), Some(1001));
    assert_eq!(d.wait_exit(), Some(0));
    assert!(!d.dir.join("admin.sock").exists(), "the socket file is removed on exit");
}

#[test]
fn systemd_sees_ready_reloading_watchdog_and_stopping() {
    let dir = temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    let env = [("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")];
    let mut d = Daemon::start_env(dir.clone(), &[], &env);
    let mut next = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\nMAINPID="), "{ready}");
    let watchdog = next();
    assert_eq!(watchdog, "WATCHDOG=1", "pinged while every shard turns");
    d.signal(libc::SIGHUP);
    let reload: Vec<String> = std::iter::repeat_with(&mut next).filter(|m| m != "WATCHDOG=1").take(2).collect();
    assert!(reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reload:?}");
    assert_eq!(reload[1], "READY=1");
    d.signal(libc::SIGTERM);
    let stopping = std::iter::repeat_with(&mut next).find(|m| m != "WATCHDOG=1").unwrap();
    assert_eq!(stopping, "STOPPING=1");
    assert_eq!(d.wait_exit(), Some(0));
}
