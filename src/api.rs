//! The HTTP API for app backends under `/api/`: the server-role token check, paths and bodies
//! turned into calls, and WebSocket answers turned back into HTTP. It validates and translates;
//! the shard carries calls out like any client's request.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::auth::Role;
use crate::http::{self, Head, Response, RouteEnv};
use crate::names;
use crate::protocol::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT};

/// The user `publish` speaks as when the request names nobody.
pub const SYSTEM_USER: &str = "system";

/// A validated API request.
#[derive(Debug)]
pub enum Call {
    Publish { room: Arc<str>, from: Arc<str>, body: Box<RawValue> },
    History { room: Arc<str>, before: Option<u64>, after: Option<u64>, limit: u64 },
    Notify { user: Arc<str>, data: Box<RawValue> },
    Broadcast { data: Box<RawValue> },
    Disconnect { user: Arc<str> },
}

pub fn route(head: &Head, body: &[u8], env: &RouteEnv) -> Result<Call, Response> {
    authorize(head, env)?;
    let path = head.path.strip_prefix("/api/").unwrap_or_default();
    let segments: Vec<String> =
        path.split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = head.method.as_str();
    match (segments.as_slice(), method) {
        (["rooms", room, "messages"], "POST") => publish(room, body, env),
        (["rooms", room, "messages"], "GET") => history(room, head.query.as_deref().unwrap_or("")),
        (["rooms", _, "messages"], _) => Err(http::method_not_allowed("GET, POST")),
        (["users", user, "notify"], "POST") => Ok(Call::Notify { user: user_id(user)?, data: data(body)? }),
        (["users", _, "notify"], _) => Err(http::method_not_allowed("POST")),
        (["users", user, "connections"], "DELETE") => Ok(Call::Disconnect { user: user_id(user)? }),
        (["users", _, "connections"], _) => Err(http::method_not_allowed("DELETE")),
        (["broadcast"], "POST") => Ok(Call::Broadcast { data: data(body)? }),
        (["broadcast"], _) => Err(http::method_not_allowed("POST")),
        _ => Err(http::not_found()),
    }
}

/// Only a token with `"role": "server"` may use the API.
fn authorize(head: &Head, env: &RouteEnv) -> Result<(), Response> {
    let token = match http::bearer(head) {
        None => return Err(http::unauthorized_response("the API needs Authorization: Bearer <token>")),
        Some(t) => t.map_err(http::unauthorized_response)?,
    };
    let identity = env.verifier.verify(token, env.now_unix).map_err(|e| http::unauthorized_response(&e.to_string()))?;
    if identity.role != Role::Server {
        return Err(http::unauthorized_response("the API needs a token with \"role\": \"server\""));
    }
    Ok(())
}

fn bad_request(message: &str) -> Response {
    Response::error(400, "bad_request", message)
}

fn room_name(room: &str) -> Result<Arc<str>, Response> {
    if names::is_valid_room_name(room) && !matches!(names::room_kind(room), names::RoomKind::MalformedDirect) {
        Ok(room.into())
    } else {
        Err(bad_request("invalid room name"))
    }
}

fn user_id(user: &str) -> Result<Arc<str>, Response> {
    if names::is_valid_user_id(user) { Ok(user.into()) } else { Err(bad_request("invalid user id")) }
}

/// Parses a JSON object body, telling malformed JSON (`bad_json`) from wrong fields (`bad_request`).
fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() { "bad_request" } else { "bad_json" };
        Response::error(400, code, &format!("request body: {e}"))
    })
}

fn publish(room: &str, body: &[u8], env: &RouteEnv) -> Result<Call, Response> {
    #[derive(Deserialize)]
    struct PublishBody<'a> {
        #[serde(borrow, default, deserialize_with = "crate::protocol::present")]
        body: Option<&'a RawValue>,
        from: Option<String>,
    }
    let room = room_name(room)?;
    let parsed: PublishBody = json_body(body)?;
    let message = parsed.body.ok_or_else(|| bad_request("body: required"))?;
    let max = env.config.limits.max_body_bytes;
    if message.get().len() > max {
        return Err(Response::error(413, "too_large", &format!("body larger than {max} bytes")));
    }
    let from = user_id(parsed.from.as_deref().unwrap_or(SYSTEM_USER))?;
    Ok(Call::Publish { room, from, body: message.to_owned() })
}

fn data(body: &[u8]) -> Result<Box<RawValue>, Response> {
    #[derive(Deserialize)]
    struct DataBody<'a> {
        #[serde(borrow, default, deserialize_with = "crate::protocol::present")]
        data: Option<&'a RawValue>,
    }
    let parsed: DataBody = json_body(body)?;
    Ok(parsed.data.ok_or_else(|| bad_request("data: required"))?.to_owned())
}

fn history(room: &str, query: &str) -> Result<Call, Response> {
    let room = room_name(room)?;
    let number = |name: &'static str| -> Result<Option<u64>, Response> {
        http::query_param(query, name)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().map_err(|_| bad_request(&format!("{name}: expected a non-negative integer"))))
            .transpose()
    };
    let limit = match number("limit")? {
        None => DEFAULT_HISTORY_LIMIT,
        Some(0) => return Err(bad_request("limit: must be at least 1")),
        Some(n) => n.min(MAX_HISTORY_LIMIT),
    };
    Ok(Call::History { room, before: number("before")?, after: number("after")?, limit })
}

/// The HTTP answer for a WebSocket frame the daemon produced for an API call: an `ack` becomes
/// `201 {"room","seq","ts"}`, a `history` page is returned as is, an `error` gets its status.
pub fn response_for_frame(payload: &[u8]) -> Response {
    let Ok(value) = serde_json::from_slice::<Value>(payload) else {
        return Response::error(500, "internal", "unreadable answer");
    };
    match value["type"].as_str() {
        Some("ack") => {
            Response::json(201, &serde_json::json!({ "room": value["room"], "seq": value["seq"], "ts": value["ts"] }))
        }
        Some("history") => Response::new(200, http::JSON, payload.to_vec()),
        Some("error") => {
            let code = value["code"].as_str().unwrap_or("internal");
            let status = match code {
                "bad_request" | "bad_json" => 400,
                "forbidden" => 403,
                "not_found" => 404,
                "too_large" => 413,
                "rate_limited" => 429,
                "overloaded" => 503,
                _ => 500,
            };
            Response::error(status, code, value["message"].as_str().unwrap_or(""))
        }
        _ => Response::error(500, "internal", "unexpected answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_http_answers() {
        let ack = response_for_frame(br#"{"type":"ack","room":"r","seq":4,"ts":9}"#);
        assert_eq!(ack.status, 201);
        let text = String::from_utf8(ack.encode(false).to_vec()).unwrap();
        assert!(text.ends_with(r#"{"room":"r","seq":4,"ts":9}"#));
        assert_eq!(response_for_frame(br#"{"type":"error","code":"overloaded","message":"m"}"#).status, 503);
        assert_eq!(response_for_frame(br#"{"type":"history","room":"r","messages":[],"more":false}"#).status, 200);
        assert_eq!(response_for_frame(b"nope").status, 500);
    }

    #[test]
    fn history_query_is_validated() {
        assert!(matches!(history("r", "limit=5&before=9"), Ok(Call::History { limit: 5, before: Some(9), .. })));
        assert!(matches!(history("r", "limit=9999"), Ok(Call::History { limit: MAX_HISTORY_LIMIT, .. })));
        assert_eq!(history("r", "limit=0").unwrap_err().status, 400);
        assert_eq!(history("r", "after=x").unwrap_err().status, 400);
        assert_eq!(history("bad room", "").unwrap_err().status, 400);
    }
}
