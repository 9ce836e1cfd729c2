//! HTTP/1.1 on the listener: framing requests (head and Content-Length body) as they arrive,
//! routing them, validating a WebSocket upgrade (version, key, Origin, token), and encoding
//! responses with or without keep-alive. It never touches a socket.

use std::borrow::Cow;

use bytes::Bytes;
use percent_encoding::percent_decode_str;

use crate::api;
use crate::auth::{AuthError, Identity, Verifier};
use crate::config::Config;

/// A request head larger than this is refused with 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";

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
    pub if_none_match: Option<String>,
    pub content_length: Option<usize>,
    pub chunked: bool,
    /// HTTP/1.1 without `Connection: close`: the connection may carry another request.
    pub keep_alive: bool,
    /// Bytes of the head, including the blank line; anything after it is body or WebSocket data.
    pub len: usize,
}

/// What the bytes received so far amount to.
#[derive(Debug)]
pub enum Framed {
    NeedMore,
    /// Answer this and close: the stream cannot be read as HTTP any further.
    Bad(Response),
    /// A complete request: its head, and where its body ends in the buffer.
    Request {
        head: Box<Head>,
        body_end: usize,
    },
}

/// Frames the first request in `buf`, whose body may be at most `max_body` bytes.
pub fn frame_request(buf: &[u8], max_body: usize) -> Framed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let too_large = || Framed::Bad(Response::error(431, "bad_request", "request head too large"));
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => return too_large(),
        Ok(httparse::Status::Partial) => return Framed::NeedMore,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => return too_large(),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return too_large(),
        Err(e) => return Framed::Bad(Response::error(400, "bad_request", &format!("malformed HTTP request: {e}"))),
    };
    let head = match head_from(&req, len) {
        Ok(head) => head,
        Err(why) => return Framed::Bad(Response::error(400, "bad_request", why)),
    };
    if head.chunked {
        return Framed::Bad(Response::error(411, "bad_request", "send the body with a Content-Length"));
    }
    let body = head.content_length.unwrap_or(0);
    if body > max_body {
        return Framed::Bad(Response::error(413, "too_large", &format!("request body over {max_body} bytes")));
    }
    if buf.len() < len + body {
        return Framed::NeedMore;
    }
    Framed::Request { body_end: len + body, head: Box::new(head) }
}

fn head_from(req: &httparse::Request, len: usize) -> Result<Head, &'static str> {
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query,
        keep_alive: req.version == Some(1),
        len,
        ..Head::default()
    };
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else { continue };
        let value = value.trim();
        match h.name.to_ascii_lowercase().as_str() {
            "upgrade" => head.upgrade_websocket |= has_token(value, "websocket"),
            "connection" => {
                head.connection_upgrade |= has_token(value, "upgrade");
                head.keep_alive &= !has_token(value, "close");
            }
            "sec-websocket-key" => head.ws_key = Some(value.to_string()),
            "sec-websocket-version" => head.ws_version = Some(value.to_string()),
            "origin" => head.origin = Some(value.to_string()),
            "authorization" => head.authorization = Some(value.to_string()),
            "if-none-match" => head.if_none_match = Some(value.to_string()),
            "transfer-encoding" => head.chunked = true,
            "content-length" => {
                let n = value.parse().map_err(|_| "invalid Content-Length")?;
                if head.content_length.is_some_and(|m| m != n) {
                    return Err("conflicting Content-Length headers");
                }
                head.content_length = Some(n);
            }
            // Several Cookie headers are joined as one list, as RFC 6265 5.4 would have sent it.
            "cookie" => {
                head.cookie = Some(match head.cookie.take() {
                    Some(c) => format!("{c}; {value}"),
                    None => value.to_string(),
                })
            }
            _ => {}
        }
    }
    Ok(head)
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

/// The token of `Authorization: Bearer <token>`; `Err` for another scheme.
pub fn bearer(head: &Head) -> Option<Result<&str, &'static str>> {
    let value = head.authorization.as_deref()?;
    Some(match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Ok(t.trim()),
        _ => Err("Authorization must use the Bearer scheme"),
    })
}

/// An HTTP response, encoded when it is known whether the connection stays open.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, body: body.into(), headers: Vec::new() }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status, JSON, value.to_string())
    }

    /// `{"error": code, "message": message}`
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": code, "message": message }))
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire. Not cached unless a `Cache-Control` header says otherwise.
    pub fn encode(&self, keep_alive: bool) -> Bytes {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        if !self.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("cache-control")) {
            out.push_str("Cache-Control: no-store\r\n");
        }
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        Bytes::from(bytes)
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

pub fn switching_protocols(accept_key: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n"
    ))
}

/// Which WebSocket endpoint a connection upgraded on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Echo,
}

/// Answers that need something from every shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gathered {
    Stats,
    Metrics,
}

/// What to do with a complete request.
#[derive(Debug)]
pub enum Decision {
    /// Upgrade; `identity` is set when the request carried a valid token.
    Upgrade {
        endpoint: Endpoint,
        identity: Option<Identity>,
        accept_key: String,
    },
    Respond {
        response: Response,
        failure: Option<Failure>,
    },
    Gather(Gathered),
    Api(api::Call),
}

/// Why a handshake was refused, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    BadUpgrade,
    Origin,
    Auth,
    PerIpLimit,
    Draining,
    Capacity,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::BadUpgrade,
        Failure::Origin,
        Failure::Auth,
        Failure::PerIpLimit,
        Failure::Draining,
        Failure::Capacity,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::BadUpgrade => "bad_upgrade",
            Failure::Origin => "origin",
            Failure::Auth => "auth",
            Failure::PerIpLimit => "per_ip_limit",
            Failure::Draining => "draining",
            Failure::Capacity => "max_connections",
        }
    }
}

/// What routing needs to know besides the request.
pub struct RouteEnv<'a> {
    pub config: &'a Config,
    pub verifier: &'a Verifier,
    pub now_unix: u64,
    pub draining: bool,
    pub over_ip_limit: bool,
}

pub fn decide(head: &Head, body: &[u8], env: &RouteEnv) -> Decision {
    let get = head.method == "GET";
    let endpoint = match head.path.as_str() {
        "/ws" => Endpoint::Chat,
        "/echo" if env.config.server.echo => Endpoint::Echo,
        "/healthz" if get => return respond(healthz(env.draining)),
        "/stats" if get => return Decision::Gather(Gathered::Stats),
        "/metrics" if get => return Decision::Gather(Gathered::Metrics),
        "/healthz" | "/stats" | "/metrics" => return respond(method_not_allowed("GET")),
        path if path.starts_with("/api/") => {
            return match api::route(head, body, env) {
                Ok(call) => Decision::Api(call),
                Err(response) => respond(response),
            };
        }
        path if get => {
            let page = crate::web::response(path, head.if_none_match.as_deref());
            return respond(page.unwrap_or_else(not_found));
        }
        _ => return respond(not_found()),
    };
    match check_upgrade(head, endpoint, env) {
        Ok(decision) => decision,
        Err((response, failure)) => Decision::Respond { response, failure: Some(failure) },
    }
}

fn respond(response: Response) -> Decision {
    Decision::Respond { response, failure: None }
}

pub fn not_found() -> Response {
    Response::error(404, "not_found", "no such endpoint")
}

pub fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(405, "bad_request", "method not allowed").with("Allow", allow)
}

fn healthz(draining: bool) -> Response {
    if draining { Response::new(503, TEXT, "draining\n") } else { Response::new(200, TEXT, "ok\n") }
}

type Refusal = (Response, Failure);

fn check_upgrade(head: &Head, endpoint: Endpoint, env: &RouteEnv) -> Result<Decision, Refusal> {
    let bad = |status, message| (Response::error(status, "bad_request", message), Failure::BadUpgrade);
    if head.method != "GET" {
        return Err(bad(405, "a WebSocket upgrade must be a GET"));
    }
    if !head.upgrade_websocket || !head.connection_upgrade {
        let r =
            Response::error(426, "bad_request", "this endpoint needs a WebSocket upgrade").with("Upgrade", "websocket");
        return Err((r, Failure::BadUpgrade));
    }
    if head.ws_version.as_deref() != Some("13") {
        let r = Response::error(426, "bad_request", "only WebSocket version 13 is supported")
            .with("Sec-WebSocket-Version", "13");
        return Err((r, Failure::BadUpgrade));
    }
    let key = head
        .ws_key
        .as_deref()
        .filter(|k| is_valid_ws_key(k))
        .ok_or_else(|| bad(400, "missing or invalid Sec-WebSocket-Key"))?;
    check_origin(head, env.config)?;
    if env.draining {
        return Err((Response::error(503, "overloaded", "server is draining"), Failure::Draining));
    }
    if env.over_ip_limit {
        let r = Response::error(429, "rate_limited", "too many connections from this address");
        return Err((r, Failure::PerIpLimit));
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
        _ => Err((Response::error(403, "forbidden", "origin not allowed"), Failure::Origin)),
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
    let token: Cow<str> = if let Some(header) = bearer(head) {
        Cow::Borrowed(header.map_err(unauthorized)?)
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
    (unauthorized_response(message), Failure::Auth)
}

pub fn unauthorized_response(message: &str) -> Response {
    Response::error(401, "unauthenticated", message).with("WWW-Authenticate", "Bearer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> (Box<Head>, usize) {
        match frame_request(raw.as_bytes(), 1024) {
            Framed::Request { head, body_end } => (head, body_end),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_incrementally() {
        let raw = "GET /ws?token=a%2Eb HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nXYZ";
        for cut in 0..raw.len() - 3 {
            assert!(matches!(frame_request(&raw.as_bytes()[..cut], 1024), Framed::NeedMore), "cut {cut}");
        }
        let (h, end) = complete(raw);
        assert_eq!(h.path, "/ws");
        assert_eq!(query_param(h.query.as_deref().unwrap(), "token").unwrap(), "a.b");
        assert!(h.upgrade_websocket && h.connection_upgrade && h.keep_alive);
        assert_eq!((h.len, end), (raw.len() - 3, raw.len() - 3));
        assert!(is_valid_ws_key(h.ws_key.as_deref().unwrap()));
    }

    #[test]
    fn bodies_wait_for_content_length() {
        let raw = "POST /api/broadcast HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello+next";
        assert!(matches!(frame_request(&raw.as_bytes()[..raw.len() - 6], 1024), Framed::NeedMore));
        let (h, end) = complete(raw);
        assert_eq!(&raw[h.len..end], "hello");
        assert!(!h.keep_alive);
        let big = "POST /x HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert!(matches!(frame_request(big.as_bytes(), 1024), Framed::Bad(r) if r.status == 413));
        let chunked = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(frame_request(chunked.as_bytes(), 1024), Framed::Bad(r) if r.status == 411));
        let conflict = "POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(frame_request(conflict.as_bytes(), 1024), Framed::Bad(r) if r.status == 400));
        let old = complete("GET / HTTP/1.0\r\n\r\n").0;
        assert!(!old.keep_alive, "HTTP/1.0 closes by default");
    }

    #[test]
    fn refuses_garbage_and_huge_heads() {
        assert!(matches!(frame_request(b"\x00\x01 nonsense\r\n\r\n", 1024), Framed::Bad(r) if r.status == 400));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(frame_request(huge.as_bytes(), 1024), Framed::Bad(r) if r.status == 431));
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(frame_request(req.as_bytes(), 1024), Framed::Bad(r) if r.status == 431));
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
        let r = Response::error(404, "not_found", "nope");
        let closing = String::from_utf8(r.encode(false).to_vec()).unwrap();
        assert!(closing.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(closing.contains("Connection: close\r\n"));
        assert!(closing.ends_with(r#"{"error":"not_found","message":"nope"}"#));
        let body_len = r#"{"error":"not_found","message":"nope"}"#.len();
        assert!(closing.contains(&format!("Content-Length: {body_len}\r\n")));
        let open = String::from_utf8(r.with("Cache-Control", "no-cache").encode(true).to_vec()).unwrap();
        assert!(!open.contains("Connection:"));
        assert_eq!(open.matches("Cache-Control").count(), 1);
        let s = switching_protocols("k");
        assert!(s.ends_with(b"Sec-WebSocket-Accept: k\r\n\r\n"));
    }
}
