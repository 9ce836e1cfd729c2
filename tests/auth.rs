//! Every way to present a token, their precedence, and every way to fail.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Client, Daemon, SECRET, now_unix, token};
use roomcast::auth::{MintRequest, mint};
use roomcast::config::KeyConfig;
use serde_json::json;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A token signed with `secret` under `kid`, with the given lifetime (negative: expired).
fn token_signed(kid: &str, secret: &str, user: &str, ttl_secs: i64) -> String {
    let key = KeyConfig { kid: kid.into(), secret: secret.as_bytes().to_vec() };
    let now = now_unix();
    let (now_unix, ttl) = if ttl_secs >= 0 { (now, ttl_secs as u64) } else { (now - 7200, (7200 + ttl_secs) as u64) };
    mint(
        &key,
        &MintRequest { sub: user, name: None, rooms: None, role: None, ttl: Some(Duration::from_secs(ttl)), now_unix },
    )
}

fn welcome_user(c: &mut Client) -> serde_json::Value {
    c.recv_type("welcome")["user"].clone()
}

#[test]
fn header_query_and_cookie_each_authenticate() {
    let d = Daemon::start_with(&[("auth", r#"cookie = "rc_token""#)]);
    let mut by_header = Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&token("h")))]).unwrap();
    assert_eq!(welcome_user(&mut by_header), "h");
    let mut by_query = Client::connect_with(&d, &format!("/ws?x=1&token={}", token("q")), &[]).unwrap();
    assert_eq!(welcome_user(&mut by_query), "q");
    let cookie = format!("theme=dark; rc_token={}", token("c"));
    let mut by_cookie = Client::connect_with(&d, "/ws", &[("Cookie", &cookie)]).unwrap();
    assert_eq!(welcome_user(&mut by_cookie), "c");
    assert_eq!(by_cookie.join("r")["room"], "r", "authenticated connections may join at once");
}

#[test]
fn precedence_is_header_then_cookie_then_query() {
    let d = Daemon::start_with(&[("auth", r#"cookie = "rc_token""#)]);
    let cookie = format!("rc_token={}", token("from-cookie"));
    let path = format!("/ws?token={}", token("from-query"));
    let mut c =
        Client::connect_with(&d, &path, &[("Authorization", &bearer(&token("from-header"))), ("Cookie", &cookie)])
            .unwrap();
    assert_eq!(welcome_user(&mut c), "from-header");
    let mut c = Client::connect_with(&d, &path, &[("Cookie", &cookie)]).unwrap();
    assert_eq!(welcome_user(&mut c), "from-cookie");
    // Only the winner is checked: a bad token further down is not looked at.
    let mut c = Client::connect_with(&d, "/ws?token=garbage", &[("Cookie", &cookie)]).unwrap();
    assert_eq!(welcome_user(&mut c), "from-cookie");
    // ...and a bad winner is refused even when a good one is further down.
    let status = Client::connect_with(&d, &path, &[("Cookie", "rc_token=garbage")]).err();
    assert_eq!(status, Some(401));
}

#[test]
fn the_cookie_is_ignored_while_auth_cookie_is_empty() {
    let d = Daemon::start();
    let cookie = format!("rc_token={}", token("c"));
    let mut c = Client::connect_with(&d, "/ws", &[("Cookie", &cookie)]).unwrap();
    assert!(welcome_user(&mut c).is_null());
}

#[test]
fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let d = Daemon::start_with(&[("auth", r#"cookie = "rc_token""#)]);
    let expired = token_signed(common::KID, SECRET, "old", -10);
    let wrong_key = token_signed(common::KID, "another-secret-another-secret-another!!", "x", 60);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"x","exp":{}}}"#, now_unix() + 60));
    let alg_none = format!("{header}.{claims}.");
    for t in [expired.as_str(), wrong_key.as_str(), alg_none.as_str(), "not.a.jwt", ""] {
        assert_eq!(Client::connect_with(&d, "/ws", &[("Authorization", &bearer(t))]).err(), Some(401), "header {t}");
        assert_eq!(Client::connect_with(&d, &format!("/ws?token={t}"), &[]).err(), Some(401), "query {t}");
        let cookie = format!("rc_token={t}");
        assert_eq!(Client::connect_with(&d, "/ws", &[("Cookie", &cookie)]).err(), Some(401), "cookie {t}");
    }
    assert_eq!(Client::connect_with(&d, "/ws", &[("Authorization", "Basic dXNlcjpwYXNz")]).err(), Some(401));
    let (status, body) = common::http_raw(
        d.addr,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer nope\r\n\r\n",
    );
    assert_eq!(status, 401);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "unauthenticated");
    assert!(d.stats()["connections"] == 0);
}

#[test]
fn query_tokens_can_be_disabled() {
    let d = Daemon::start_with(&[("auth", "allow_query_token = false")]);
    assert_eq!(Client::connect_with(&d, &format!("/ws?token={}", token("q")), &[]).err(), Some(401));
    let mut c = Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&token("h")))]).unwrap();
    assert_eq!(welcome_user(&mut c), "h");
}

#[test]
fn first_frame_auth_and_what_is_allowed_before_it() {
    let d = Daemon::start();
    let mut c = Client::anonymous(&d);
    let err = c.request(json!({"type": "join", "room": "r", "ref": "early"}), "error");
    assert_eq!((err["code"].clone(), err["ref"].clone()), (json!("unauthenticated"), json!("early")));
    assert_eq!(c.request(json!({"type": "ping"}), "pong")["type"], "pong");
    let err = c.request(json!({"type": "auth", "token": "bad.token.here", "ref": "a1"}), "error");
    assert_eq!((err["code"].clone(), err["ref"].clone()), (json!("unauthenticated"), json!("a1")));
    let expired = token_signed(common::KID, SECRET, "old", -10);
    let err = c.request(json!({"type": "auth", "token": expired}), "error");
    assert_eq!(err["message"], "token expired");
    let ok = c.request(json!({"type": "auth", "token": token("late"), "ref": "a2"}), "authenticated");
    assert_eq!((ok["user"].clone(), ok["ref"].clone()), (json!("late"), json!("a2")));
    assert_eq!(ok["session"].as_str().unwrap().len(), 16);
    let err = c.request(json!({"type": "auth", "token": token("other")}), "error");
    assert_eq!(err["code"], "bad_request", "authenticating twice is refused");
    assert_eq!(c.join("r")["room"], "r");
}

#[test]
fn session_ids_in_welcome_and_authenticated_agree() {
    let d = Daemon::start();
    let mut c = Client::connect_with(&d, "/ws", &[]).unwrap();
    let welcome = c.recv_type("welcome");
    assert_eq!(welcome["heartbeat_ms"], 30000);
    let ok = c.request(json!({"type": "auth", "token": token("u")}), "authenticated");
    assert_eq!(ok["session"], welcome["session"]);
}

#[test]
fn auth_timeout_closes_with_1008() {
    let d = Daemon::start_with(&[("auth", r#"timeout = "300ms""#)]);
    let mut idle = Client::anonymous(&d);
    let mut fine = Client::anonymous(&d);
    fine.request(json!({"type": "auth", "token": token("ok")}), "authenticated");
    assert_eq!(idle.expect_close(), Some(1008));
    fine.expect_silence(Duration::from_millis(400));
    assert_eq!(fine.request(json!({"type": "ping"}), "pong")["type"], "pong");
}

#[test]
fn kid_selects_the_key_and_unknown_kids_fail() {
    let second = "second-key-second-key-second-key-second";
    let keys = format!(
        r#"keys = [{{ kid = "{}", secret = "{SECRET}" }}, {{ kid = "k2", secret = "{second}" }}]"#,
        common::KID
    );
    let d = Daemon::start_with(&[("auth", &keys)]);
    let t = token_signed("k2", second, "rotated", 60);
    let mut c = Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&t))]).unwrap();
    assert_eq!(welcome_user(&mut c), "rotated");
    let t = token_signed("k3", second, "x", 60);
    assert_eq!(Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&t))]).err(), Some(401));
    // No kid: the first key.
    let t = token_signed("", SECRET, "nokid", 60);
    let mut c = Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&t))]).unwrap();
    assert_eq!(welcome_user(&mut c), "nokid");
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let d = Daemon::start_with(&[("auth", r#"issuer = "https://app""#), ("auth", r#"audience = "roomcast""#)]);
    let sign = |claims: serde_json::Value| {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, input.as_bytes()));
        format!("{input}.{sig}")
    };
    let exp = now_unix() + 60;
    let good = sign(json!({"sub": "a", "exp": exp, "iss": "https://app", "aud": ["x", "roomcast"]}));
    let mut c = Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&good))]).unwrap();
    assert_eq!(welcome_user(&mut c), "a");
    for bad in [
        json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": "roomcast"}),
        json!({"sub": "a", "exp": exp, "iss": "https://app", "aud": "other"}),
        json!({"sub": "a", "exp": exp, "aud": "roomcast"}),
        json!({"sub": "a", "iss": "https://app", "aud": "roomcast"}),
        json!({"sub": "a", "exp": exp, "nbf": exp + 3600, "iss": "https://app", "aud": "roomcast"}),
    ] {
        assert_eq!(
            Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&sign(bad.clone())))]).err(),
            Some(401),
            "{bad}"
        );
    }
}

#[test]
fn exp_can_be_optional() {
    let d = Daemon::start_with(&[("auth", "require_exp = false")]);
    let key = common::key();
    let t = mint(
        &key,
        &MintRequest { sub: "forever", name: None, rooms: None, role: None, ttl: None, now_unix: now_unix() },
    );
    let mut c = Client::connect_with(&d, "/ws", &[("Authorization", &bearer(&t))]).unwrap();
    assert_eq!(welcome_user(&mut c), "forever");
}

#[test]
fn origins_outside_the_allowed_list_get_403() {
    let d = Daemon::start_with(&[("server", r#"allowed_origins = ["https://app.example"]"#)]);
    let auth = bearer(&token("o"));
    assert_eq!(
        Client::connect_with(&d, "/ws", &[("Authorization", &auth), ("Origin", "https://evil.example")]).err(),
        Some(403)
    );
    assert_eq!(Client::connect_with(&d, "/ws", &[("Authorization", &auth)]).err(), Some(403), "no Origin at all");
    let mut c =
        Client::connect_with(&d, "/ws", &[("Authorization", &auth), ("Origin", "https://app.example")]).unwrap();
    assert_eq!(welcome_user(&mut c), "o");
}
