//! HTTP/1.1 on the listener: parsing a request head incrementally, routing it, validating a
//! WebSocket upgrade (version, key, Origin, token) and writing responses. It never touches a socket.

use std::borrow::Cow;

use bytes::Bytes;
use percent_encoding::percent_decode_str;

use crate::auth::{AuthError, Identity, Verifier};
use crate::config::Config;

/// A request head larger than this is refused with 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

/// The parts of a request head roomcast acts on, copied out of the read buffer.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub origin: Option<String>,
    pub authorization: Option<String>,
    pub cookie: Option<String>,
    /// Bytes of the head, including the blank line; anything after it is already WebSocket data.
    pub len: usize,
}

#[derive(Debug)]
pub enum Parsed {
    Partial,
    Complete(Head),
    Invalid(String),
    TooLarge,
}

/// Parses what has arrived so far.
pub fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Parsed::TooLarge,
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Parsed::TooLarge,
        Ok(httparse::Status::Complete(len)) => Parsed::Complete(head_from(&req, len)),
        Err(httparse::Error::TooManyHeaders) => Parsed::TooLarge,
        Err(e) => Parsed::Invalid(e.to_string()),
    }
}

fn head_from(req: &httparse::Request, len: usize) -> Head {
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let mut head =
        Head { method: req.method.unwrap_or("").to_string(), path: path.to_string(), query, len, ..Head::default() };
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else { continue };
        let value = value.trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            head.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("cookie") {
            // Several Cookie headers are joined as one list, as RFC 6265 5.4 would have sent it.
            head.cookie = Some(match head.cookie.take() {
                Some(c) => format!("{c}; {value}"),
                None => value.to_string(),
            });
        }
    }
    head
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode_str(v).decode_utf8_lossy())
    })
}

/// The value of cookie `name` in a Cookie header.
fn cookie_value<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// Which WebSocket endpoint a connection upgraded on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Echo,
}

/// What to do with a complete request head.
#[derive(Debug)]
pub enum Decision {
    /// Upgrade; `identity` is set when the request carried a valid token.
    Upgrade { endpoint: Endpoint, identity: Option<Identity>, accept_key: String },
    /// Answer and close.
    Respond { response: Bytes, failure: Option<Failure> },
    /// `GET /stats`: the answer needs every shard.
    Stats,
}

/// Why a handshake was refused, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    BadUpgrade,
    Origin,
    Auth,
    PerIpLimit,
    Draining,
}

/// What routing needs to know besides the head.
pub struct RouteEnv<'a> {
    pub config: &'a Config,
    pub verifier: &'a Verifier,
    pub now_unix: u64,
    pub draining: bool,
    pub over_ip_limit: bool,
}

pub fn decide(head: &Head, env: &RouteEnv) -> Decision {
    let endpoint = match head.path.as_str() {
        "/ws" => Endpoint::Chat,
        "/echo" if env.config.server.echo => Endpoint::Echo,
        "/healthz" if head.method == "GET" => return respond(healthz(env.draining)),
        "/stats" if head.method == "GET" => return Decision::Stats,
        "/healthz" | "/stats" => return respond(method_not_allowed()),
        _ => return respond(json_error(404, "not_found", "no such endpoint")),
    };
    match check_upgrade(head, endpoint, env) {
        Ok(decision) => decision,
        Err((response, failure)) => Decision::Respond { response, failure: Some(failure) },
    }
}

fn respond(response: Bytes) -> Decision {
    Decision::Respond { response, failure: None }
}

fn method_not_allowed() -> Bytes {
    let body = error_body("bad_request", "method not allowed");
    response(405, "Method Not Allowed", JSON, body.as_bytes(), &[("Allow", "GET")])
}

fn healthz(draining: bool) -> Bytes {
    if draining {
        response(503, "Service Unavailable", TEXT, b"draining\n", &[])
    } else {
        response(200, "OK", TEXT, b"ok\n", &[])
    }
}

type Refusal = (Bytes, Failure);

fn check_upgrade(head: &Head, endpoint: Endpoint, env: &RouteEnv) -> Result<Decision, Refusal> {
    let bad = |status, message| (json_error(status, "bad_request", message), Failure::BadUpgrade);
    if head.method != "GET" {
        return Err(bad(405, "a WebSocket upgrade must be a GET"));
    }
    if !head.upgrade_websocket || !head.connection_upgrade {
        let r = response(
            426,
            "Upgrade Required",
            JSON,
            br#"{"error":"bad_request","message":"this endpoint needs a WebSocket upgrade"}"#,
            &[("Upgrade", "websocket")],
        );
        return Err((r, Failure::BadUpgrade));
    }
    if head.ws_version.as_deref() != Some("13") {
        let r = response(
            426,
            "Upgrade Required",
            JSON,
            br#"{"error":"bad_request","message":"only WebSocket version 13 is supported"}"#,
            &[("Sec-WebSocket-Version", "13")],
        );
        return Err((r, Failure::BadUpgrade));
    }
    let key = head
        .ws_key
        .as_deref()
        .filter(|k| is_valid_ws_key(k))
        .ok_or_else(|| bad(400, "missing or invalid Sec-WebSocket-Key"))?;
    check_origin(head, env.config)?;
    if env.draining {
        return Err((json_error(503, "overloaded", "server is draining"), Failure::Draining));
    }
    if env.over_ip_limit {
        return Err((json_error(429, "rate_limited", "too many connections from this address"), Failure::PerIpLimit));
    }
    let identity = match endpoint {
        Endpoint::Echo => None,
        Endpoint::Chat => authenticate(head, env)?,
    };
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(Decision::Upgrade { endpoint, identity, accept_key })
}

/// RFC 6455 4.2.1: the key is base64 of 16 bytes.
fn is_valid_ws_key(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|k| k.len() == 16)
}

fn check_origin(head: &Head, config: &Config) -> Result<(), Refusal> {
    let allowed = &config.server.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    match &head.origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) => Ok(()),
        _ => Err((json_error(403, "forbidden", "origin not allowed"), Failure::Origin)),
    }
}

/// Picks the token by the contract's precedence (header, cookie, query) and verifies it.
/// No token at all is fine: the client may send an `auth` frame.
fn authenticate(head: &Head, env: &RouteEnv) -> Result<Option<Identity>, Refusal> {
    let auth = &env.config.auth;
    let query_token = head.query.as_deref().and_then(|q| query_param(q, "token"));
    if query_token.is_some() && !auth.allow_query_token {
        return Err(unauthorized("tokens in the URL are disabled (auth.allow_query_token = false)"));
    }
    let token: Cow<str> = if let Some(value) = &head.authorization {
        match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Cow::Borrowed(t.trim()),
            _ => return Err(unauthorized("Authorization must use the Bearer scheme")),
        }
    } else if let Some(c) = auth.cookie.as_deref().and_then(|name| cookie_value(head.cookie.as_deref()?, name)) {
        Cow::Borrowed(c)
    } else if let Some(q) = query_token {
        q
    } else {
        return Ok(None);
    };
    env.verifier.verify(&token, env.now_unix).map(Some).map_err(|e: AuthError| unauthorized(&e.to_string()))
}

fn unauthorized(message: &str) -> Refusal {
    let body = error_body("unauthenticated", message);
    let r = response(401, "Unauthorized", JSON, body.as_bytes(), &[("WWW-Authenticate", "Bearer")]);
    (r, Failure::Auth)
}

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";

/// `{"error": code, "message": message}`
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

pub fn json_error(status: u16, code: &str, message: &str) -> Bytes {
    response(status, reason_phrase(status), JSON, error_body(code, message).as_bytes(), &[])
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete response that closes the connection after it.
pub fn response(status: u16, reason: &str, content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Bytes::from(bytes)
}

pub fn switching_protocols(accept_key: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> Head {
        match parse_head(raw.as_bytes()) {
            Parsed::Complete(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_incrementally() {
        let raw = "GET /ws?token=a%2Eb HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nXYZ";
        for cut in 0..raw.len() - 3 {
            assert!(matches!(parse_head(&raw.as_bytes()[..cut]), Parsed::Partial), "cut {cut}");
        }
        let h = complete(raw);
        assert_eq!(h.path, "/ws");
        assert_eq!(query_param(h.query.as_deref().unwrap(), "token").unwrap(), "a.b");
        assert!(h.upgrade_websocket && h.connection_upgrade);
        assert_eq!(h.len, raw.len() - 3);
        assert!(is_valid_ws_key(h.ws_key.as_deref().unwrap()));
    }

    #[test]
    fn refuses_garbage_and_huge_heads() {
        assert!(matches!(parse_head(b"\x00\x01 nonsense\r\n\r\n"), Parsed::Invalid(_)));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(parse_head(huge.as_bytes()), Parsed::TooLarge));
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        assert!(matches!(parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Parsed::TooLarge));
    }

    #[test]
    fn cookies_and_tokens() {
        assert_eq!(cookie_value("a=1; rc_token=abc; b=2", "rc_token"), Some("abc"));
        assert_eq!(cookie_value("a=1;rc_token=\"q\"", "rc_token"), Some("q"));
        assert_eq!(cookie_value("a=1", "rc_token"), None);
        assert_eq!(query_param("x=1&token=t", "token").unwrap(), "t");
        assert!(query_param("tokenx=1", "token").is_none());
        assert!(!is_valid_ws_key("short"));
        assert!(has_token("keep-alive, Upgrade", "upgrade"));
    }

    #[test]
    fn responses_are_well_formed() {
        let r = json_error(404, "not_found", "nope");
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.ends_with(r#"{"error":"not_found","message":"nope"}"#));
        let body_len = r#"{"error":"not_found","message":"nope"}"#.len();
        assert!(text.contains(&format!("Content-Length: {body_len}\r\n")));
        let s = switching_protocols("k");
        assert!(s.ends_with(b"Sec-WebSocket-Accept: k\r\n\r\n"));
    }
}
