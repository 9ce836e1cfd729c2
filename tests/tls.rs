//! TLS on the listener: wss:// and https:// with a certificate generated here, a certificate
//! rotated by reload while connections stay up, and clear errors for bad PEM files.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use common::{Daemon, WAIT, token};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tungstenite::Message;

/// Writes a fresh self-signed certificate for `localhost` into `dir`; returns its DER form.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
    generated.cert.der().clone()
}

fn tls_daemon() -> (Daemon, CertificateDer<'static>) {
    let dir = common::temp_dir("tls");
    let cert = write_cert(&dir);
    let tls =
        [("tls", format!("cert = {:?}", dir.join("cert.pem"))), ("tls", format!("key = {:?}", dir.join("key.pem")))];
    let tls: Vec<(&str, &str)> = tls.iter().map(|(s, l)| (*s, l.as_str())).collect();
    (Daemon::start_in(dir, &tls), cert)
}

/// A TLS client stream that trusts only `root`; also returns the certificate the server showed.
fn connect(d: &Daemon, root: &CertificateDer<'static>) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(d.addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn wss_client(
    d: &Daemon,
    root: &CertificateDer<'static>,
    user: &str,
) -> tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let url = format!("wss://localhost:{}/ws?token={}", d.addr.port(), token(user));
    let (mut ws, _) = tungstenite::client::client(url, connect(d, root)).expect("wss handshake");
    let welcome = read_json(&mut ws);
    assert_eq!((welcome["type"].clone(), welcome["user"].clone()), (json!("welcome"), json!(user)));
    ws
}

fn read_json<S: std::io::Read + std::io::Write>(ws: &mut tungstenite::WebSocket<S>) -> serde_json::Value {
    loop {
        match ws.read().expect("frame") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn wss_and_https_share_the_listener() {
    let (d, cert) = tls_daemon();
    let mut alice = wss_client(&d, &cert, "alice");
    let mut bob = wss_client(&d, &cert, "bob");
    for ws in [&mut alice, &mut bob] {
        ws.send(Message::text(json!({"type": "join", "room": "secure"}).to_string())).unwrap();
        while read_json(ws)["type"] != "joined" {}
    }
    let big = "x".repeat(7000);
    alice.send(Message::text(json!({"type": "send", "room": "secure", "body": big}).to_string())).unwrap();
    let msg = loop {
        let v = read_json(&mut bob);
        if v["type"] == "message" {
            break v;
        }
    };
    assert_eq!(msg["body"].as_str().unwrap().len(), 7000);

    let mut https = connect(&d, &cert);
    https.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = std::io::Read::read_to_string(&mut https, &mut response);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("ok\n"));

    // Plain HTTP on a TLS listener is refused without disturbing anyone.
    assert_eq!(common::http_get(d.addr, "/healthz").0, 0);
    alice.send(Message::text(json!({"type": "ping", "ref": "still"}).to_string())).unwrap();
    while read_json(&mut alice)["ref"] != "still" {}
}

#[test]
fn reload_rotates_the_certificate_without_dropping_connections() {
    let (mut d, old_cert) = tls_daemon();
    let mut old = wss_client(&d, &old_cert, "old");
    let new_cert = write_cert(&d.dir);
    d.signal(libc::SIGHUP);
    d.wait_for_log("configuration reloaded");
    let mut fresh = connect(&d, &old_cert);
    assert!(fresh.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").is_err(), "the old certificate is no longer served");
    let _new = wss_client(&d, &new_cert, "new");
    old.send(Message::text(json!({"type": "ping"}).to_string())).unwrap();
    assert_eq!(read_json(&mut old)["type"], "pong", "the connection made before the rotation stays");
}

#[test]
fn bad_pem_files_stop_startup_with_a_clear_error() {
    let dir = common::temp_dir("badpem");
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let cases = [("cert.pem", "tls.cert"), ("missing.pem", "tls.cert")];
    for (cert, expected) in cases {
        let config = common::config_text(
            &dir,
            &[("tls", &format!("cert = {:?}", dir.join(cert))), ("tls", &format!("key = {:?}", dir.join("key.pem")))],
        );
        std::fs::write(dir.join("roomcast.toml"), config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--config"])
            .arg(dir.join("roomcast.toml"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected) && err.contains(cert), "{err}");
        assert_eq!(err.trim().lines().last().map(|l| l.starts_with("roomcast: ")), Some(true), "{err}");
    }
}
