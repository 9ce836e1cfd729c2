//! The HTTP API for app backends and `/metrics`, through the real daemon.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{Client, Daemon, WAIT, read_response, token_with};
use serde_json::{Value, json};

/// A token with `"role": "server"`.
fn server_token() -> String {
    token_with("backend", None, Some("server"), None)
}

/// One API request on a fresh connection: (status, JSON body).
fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api_with(d, method, path, body, Some(&server_token()))
}

fn api_with(d: &Daemon, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = common::http_raw(d.addr, &request);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn publish_is_stored_fanned_out_and_acked_after_commit() {
    let d = Daemon::start();
    let mut alice = d.client("alice");
    alice.join("news");
    let (status, body) = api(&d, "POST", "/api/rooms/news/messages", Some(json!({"body": {"headline": "hi"}})));
    assert_eq!(status, 201, "{body}");
    assert_eq!((body["room"].clone(), body["seq"].clone()), (json!("news"), json!(1)));
    assert!(body["ts"].as_u64().is_some());
    let msg = alice.recv_type("message");
    assert_eq!(
        (msg["from"].clone(), msg["body"].clone(), msg["seq"].clone()),
        (json!("system"), json!({"headline": "hi"}), json!(1))
    );
    let (status, body) = api(&d, "POST", "/api/rooms/news/messages", Some(json!({"body": null, "from": "editor"})));
    assert_eq!((status, body["seq"].clone()), (201, json!(2)));
    assert_eq!(alice.recv_type("message")["from"], "editor");
    let (status, page) = api(&d, "GET", "/api/rooms/news/messages?limit=1", None);
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["messages"][0]["seq"], 2);
    assert_eq!(page["more"], true);
    let (_, page) = api(&d, "GET", "/api/rooms/news/messages?before=2", None);
    assert_eq!(page["messages"][0]["body"], json!({"headline": "hi"}));
    let (_, page) = api(&d, "GET", "/api/rooms/news/messages?after=1&limit=5", None);
    assert_eq!((page["messages"][0]["seq"].clone(), page["more"].clone()), (json!(2), json!(false)));
}

#[test]
fn notify_broadcast_and_disconnect_reach_connections_on_every_shard() {
    let d = Daemon::start_with(&[("server", "shards = 2")]);
    let mut bob1 = d.client("bob");
    let mut bob2 = d.client("bob");
    let mut carol = d.client("carol");
    let _anonymous = Client::anonymous(&d);
    assert_eq!(d.stats()["shards"], json!([2, 2]));
    let (status, body) = api(&d, "POST", "/api/users/bob/notify", Some(json!({"data": {"kind": "ping"}})));
    assert_eq!((status, body), (200, json!({"delivered": 2})));
    for c in [&mut bob1, &mut bob2] {
        let n = c.recv_type("notification");
        assert_eq!(n["data"], json!({"kind": "ping"}));
        assert!(n["ts"].as_u64().is_some());
    }
    let (status, body) = api(&d, "POST", "/api/broadcast", Some(json!({"data": "all"})));
    assert_eq!((status, body), (200, json!({"delivered": 3})), "authenticated connections only");
    assert_eq!(carol.recv_type("notification")["data"], "all");
    let (status, body) = api(&d, "DELETE", "/api/users/bob/connections", None);
    assert_eq!((status, body), (200, json!({"closed": 2})));
    assert_eq!(bob1.expect_close(), Some(1008));
    assert_eq!(bob2.expect_close(), Some(1008));
    assert_eq!(carol.request(json!({"type": "ping"}), "pong")["type"], "pong");
    let (_, body) = api(&d, "POST", "/api/users/nobody/notify", Some(json!({"data": 1})));
    assert_eq!(body, json!({"delivered": 0}));
}

#[test]
fn api_errors() {
    let d = Daemon::start_with(&[("limits", "max_body_bytes = 100")]);
    let user_token = token_with("alice", None, None, None);
    // (method, path, body, token ("S" = a server token), status, error code)
    type Case<'a> = (&'a str, &'a str, Option<Value>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", "/api/broadcast", Some(json!({"data": 1})), None, 401, "unauthenticated"),
        ("POST", "/api/broadcast", Some(json!({"data": 1})), Some(&user_token), 401, "unauthenticated"),
        ("POST", "/api/broadcast", Some(json!({"data": 1})), Some("garbage"), 401, "unauthenticated"),
        ("POST", "/api/rooms/bad%20room/messages", Some(json!({"body": 1})), Some("S"), 400, "bad_request"),
        ("POST", "/api/rooms/dm:b:a/messages", Some(json!({"body": 1})), Some("S"), 400, "bad_request"),
        ("POST", "/api/rooms/r/messages", Some(json!({"nobody": 1})), Some("S"), 400, "bad_request"),
        ("POST", "/api/rooms/r/messages", Some(json!({"body": 1, "from": "a b"})), Some("S"), 400, "bad_request"),
        ("POST", "/api/rooms/r/messages", Some(json!({"body": "x".repeat(200)})), Some("S"), 413, "too_large"),
        ("POST", "/api/users/a:b/notify", Some(json!({"data": 1})), Some("S"), 400, "bad_request"),
        ("GET", "/api/rooms/r/messages?limit=0", None, Some("S"), 400, "bad_request"),
        ("PUT", "/api/broadcast", None, Some("S"), 405, "bad_request"),
        ("GET", "/api/nothing", None, Some("S"), 404, "not_found"),
    ];
    let server = server_token();
    for (method, path, body, token, status, code) in cases {
        let token = token.map(|t| if t == "S" { server.as_str() } else { t });
        let (got, body) = api_with(&d, method, path, body, token);
        assert_eq!((got, body["error"].as_str()), (status, Some(code)), "{method} {path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let raw = format!(
        "POST /api/broadcast HTTP/1.1\r\nAuthorization: Bearer {server}\r\nContent-Length: 9\r\n\r\n{{not json"
    );
    let (status, body) = common::http_raw(d.addr, &raw);
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "bad_json");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection_in_order() {
    let d = Daemon::start();
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let token = server_token();
    let publish = |n: u32| {
        let body = json!({"body": n}).to_string();
        format!(
            "POST /api/rooms/k/messages HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Pipelined: three requests in one write, answered one after the other.
    s.write_all(format!("{}{}GET /healthz HTTP/1.1\r\n\r\n", publish(1), publish(2)).as_bytes()).unwrap();
    for want in [1, 2] {
        let (status, head, body) = read_response(&mut s);
        assert_eq!(status, 201);
        assert!(!head.contains("Connection: close"), "{head}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["seq"], want);
    }
    assert_eq!(read_response(&mut s).0, 200);
    s.write_all(b"GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let (status, head, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close"));
    assert!(serde_json::from_str::<Value>(&body).unwrap()["connections"].is_number());
}

#[test]
fn metrics_are_prometheus_text() {
    let d = Daemon::start();
    let mut a = d.client("alice");
    let mut b = d.client("bob");
    a.join("m");
    b.join("m");
    a.say("m", json!(1));
    b.recv_type("message");
    assert_eq!(Client::connect_with(&d, "/ws", &[("Authorization", "Bearer nope")]).err(), Some(401));
    let (status, text) = common::http_get(d.addr, "/metrics");
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(value("roomcast_connections", None), 2.0);
    assert_eq!(value("roomcast_authenticated_connections", None), 2.0);
    assert_eq!(value("roomcast_handshakes_total", None), 2.0);
    assert_eq!(value("roomcast_handshake_failures_total", Some(("reason", "auth"))), 1.0);
    assert_eq!(value("roomcast_rooms", None), 1.0);
    assert_eq!(value("roomcast_users", None), 2.0);
    assert!(value("roomcast_messages_in_total", None) >= 3.0);
    assert!(value("roomcast_deliveries_total", None) >= 1.0);
    assert!(value("roomcast_bytes_in_total", None) > 0.0);
    assert!(value("roomcast_bytes_out_total", None) > 0.0);
    assert_eq!(value("roomcast_queue_depth", Some(("queue", "history"))), 0.0);
    let commits = scrape.samples.iter().find(|s| s.metric == "roomcast_history_commit_seconds").expect("histogram");
    match &commits.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert!(buckets.last().is_some_and(|b| b.count >= 1.0), "at least one commit recorded");
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
}
