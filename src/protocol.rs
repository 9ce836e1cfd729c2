//! The v1 wire messages: parsing client frames into requests (with the contract's error codes) and
//! encoding server frames into ready-to-send WebSocket text frames. No state, no I/O, no permissions.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ws;

/// Longest `ref` a client may attach, in bytes.
pub const MAX_REF_BYTES: usize = 64;
/// Longest emoji (or reaction key) in bytes.
pub const MAX_EMOJI_BYTES: usize = 64;
pub const DEFAULT_HISTORY_LIMIT: u64 = 50;
pub const MAX_HISTORY_LIMIT: u64 = 500;

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotInRoom,
    NotFound,
    TooLarge,
    RateLimited,
    Overloaded,
    Internal,
}

/// A refused request: the code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection { code, message: message.into() }
    }

    fn bad_request(message: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection::new(ErrorCode::BadRequest, message)
    }
}

/// What a client asked for. Strings borrow from the frame unless they contained escapes.
#[derive(Debug)]
pub enum Request<'a> {
    Auth { token: Cow<'a, str> },
    Ping,
    Join { room: Cow<'a, str>, since: Option<u64>, history: Option<u64> },
    Leave { room: Cow<'a, str> },
    Send { room: Cow<'a, str>, body: &'a RawValue, reply_to: Option<u64> },
    Edit { room: Cow<'a, str>, target: u64, body: &'a RawValue },
    Delete { room: Cow<'a, str>, target: u64 },
    React { room: Cow<'a, str>, target: u64, emoji: Cow<'a, str>, add: bool },
    Typing { room: Cow<'a, str>, active: bool },
    Direct { to: Cow<'a, str>, body: &'a RawValue },
    History { room: Cow<'a, str>, before: Option<u64>, after: Option<u64>, limit: u64 },
    Presence { room: Cow<'a, str> },
}

impl Request<'_> {
    /// The JSON body a request carries, whose size `limits.max_body_bytes` caps.
    pub fn body(&self) -> Option<&RawValue> {
        match self {
            Request::Send { body, .. } | Request::Edit { body, .. } | Request::Direct { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// A parsed client frame: its `ref` (echoed on every reply) and the request or why it was refused.
#[derive(Debug)]
pub struct ClientFrame<'a> {
    pub reference: Option<Cow<'a, str>>,
    pub request: Result<Request<'a>, Rejection>,
}

/// Every field any client frame may carry, captured raw so that a bad field is reported
/// precisely and the `ref` survives errors elsewhere in the frame.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    history: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(borrow)]
    reply_to: Option<&'a RawValue>,
    #[serde(borrow)]
    target: Option<&'a RawValue>,
    #[serde(borrow)]
    emoji: Option<&'a RawValue>,
    #[serde(borrow)]
    active: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
}

/// A field for which JSON `null` is a value, not an absence (`"body": null` is a valid body).
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Only the `ref` of a frame, for replies to frames that are not otherwise read.
pub fn frame_ref(text: &str) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct RefOnly<'a> {
        #[serde(rename = "ref", borrow)]
        reference: Option<&'a RawValue>,
    }
    let r: RefOnly = serde_json::from_str(text).ok()?;
    string(r.reference?).filter(|r| r.len() <= MAX_REF_BYTES)
}

/// Parses one text frame.
pub fn parse_client_frame(text: &str) -> ClientFrame<'_> {
    let env: Envelope = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => {
            let rejection = Rejection::new(ErrorCode::BadJson, format!("frame is not a JSON object: {e}"));
            return ClientFrame { reference: None, request: Err(rejection) };
        }
    };
    let reference = match env.reference.map(string) {
        None => None,
        Some(Some(r)) if r.len() <= MAX_REF_BYTES => Some(r),
        Some(Some(_)) => return refused(format!("ref: at most {MAX_REF_BYTES} bytes")),
        Some(None) => return refused("ref: expected a string".into()),
    };
    let request = parse_request(&env);
    ClientFrame { reference, request }
}

fn refused(message: String) -> ClientFrame<'static> {
    ClientFrame { reference: None, request: Err(Rejection::bad_request(message)) }
}

fn parse_request<'a>(env: &Envelope<'a>) -> Result<Request<'a>, Rejection> {
    let kind = match env.kind.map(string) {
        Some(Some(k)) => k,
        Some(None) => return Err(Rejection::new(ErrorCode::UnknownType, "type: expected a string")),
        None => return Err(Rejection::new(ErrorCode::UnknownType, "missing type")),
    };
    let room = || required(env.room, "room", string, "a string");
    let target = || required(env.target, "target", uint, "a non-negative integer");
    let body = || env.body.ok_or_else(|| Rejection::bad_request("body: required"));
    Ok(match kind.as_ref() {
        "auth" => Request::Auth { token: required(env.token, "token", string, "a string")? },
        "ping" => Request::Ping,
        "join" => Request::Join {
            room: room()?,
            since: optional(env.since, "since", uint, "a non-negative integer")?,
            history: optional(env.history, "history", uint, "a non-negative integer")?
                .map(|n| n.min(MAX_HISTORY_LIMIT)),
        },
        "leave" => Request::Leave { room: room()? },
        "send" => Request::Send {
            room: room()?,
            body: body()?,
            reply_to: optional(env.reply_to, "reply_to", uint, "a seq number")?,
        },
        "edit" => Request::Edit { room: room()?, target: target()?, body: body()? },
        "delete" => Request::Delete { room: room()?, target: target()? },
        "react" | "unreact" => {
            Request::React { room: room()?, target: target()?, emoji: emoji(env.emoji)?, add: kind == "react" }
        }
        "typing" => {
            Request::Typing { room: room()?, active: required(env.active, "active", boolean, "true or false")? }
        }
        "direct" => Request::Direct { to: required(env.to, "to", string, "a user id")?, body: body()? },
        "history" => Request::History {
            room: room()?,
            before: optional(env.before, "before", uint, "a seq number")?,
            after: optional(env.after, "after", uint, "a seq number")?,
            limit: history_limit(env.limit)?,
        },
        "presence" => Request::Presence { room: room()? },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(Rejection::new(ErrorCode::UnknownType, format!("unknown type {shown:?}")));
        }
    })
}

fn history_limit(raw: Option<&RawValue>) -> Result<u64, Rejection> {
    match optional(raw, "limit", uint, "a positive integer")? {
        None => Ok(DEFAULT_HISTORY_LIMIT),
        Some(0) => Err(Rejection::bad_request("limit: must be at least 1")),
        Some(n) => Ok(n.min(MAX_HISTORY_LIMIT)),
    }
}

fn emoji<'a>(raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, Rejection> {
    let e = required(raw, "emoji", string, "a string")?;
    if e.is_empty() || e.len() > MAX_EMOJI_BYTES {
        return Err(Rejection::bad_request(format!("emoji: 1 to {MAX_EMOJI_BYTES} bytes")));
    }
    Ok(e)
}

fn required<'a, T>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    convert: fn(&'a RawValue) -> Option<T>,
    expected: &'static str,
) -> Result<T, Rejection> {
    optional(raw, field, convert, expected)?.ok_or_else(|| Rejection::bad_request(format!("{field}: required")))
}

fn optional<'a, T>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    convert: fn(&'a RawValue) -> Option<T>,
    expected: &'static str,
) -> Result<Option<T>, Rejection> {
    match raw {
        None => Ok(None),
        Some(r) => convert(r).map(Some).ok_or_else(|| Rejection::bad_request(format!("{field}: expected {expected}"))),
    }
}

/// A JSON string, borrowed when it has no escapes.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if let Ok(s) = serde_json::from_str::<&str>(raw.get()) {
        return Some(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(raw.get()).ok().map(Cow::Owned)
}

fn uint(raw: &RawValue) -> Option<u64> {
    serde_json::from_str(raw.get()).ok()
}

fn boolean(raw: &RawValue) -> Option<bool> {
    serde_json::from_str(raw.get()).ok()
}

/// Every frame the server sends. Serialized once per event; recipients share the bytes.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        session: &'a str,
        user: Option<&'a str>,
        heartbeat_ms: u64,
    },
    Authenticated {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        user: &'a str,
        session: &'a str,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        ts: u64,
    },
    Joined {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        seq: u64,
        members: usize,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    Left {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
    },
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        seq: u64,
        ts: u64,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    },
    Presence {
        room: &'a str,
        user: &'a str,
        event: &'static str,
    },
    PresenceList {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        users: Vec<&'a str>,
    },
    Typing {
        room: &'a str,
        user: &'a str,
        active: bool,
    },
    Message {
        room: &'a str,
        seq: u64,
        from: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        body: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        ts: u64,
    },
    Edited {
        room: &'a str,
        seq: u64,
        target: u64,
        from: &'a str,
        body: &'a RawValue,
        ts: u64,
    },
    Deleted {
        room: &'a str,
        seq: u64,
        target: u64,
        from: &'a str,
        ts: u64,
    },
    Reaction {
        room: &'a str,
        seq: u64,
        target: u64,
        from: &'a str,
        emoji: &'a str,
        op: &'static str,
        ts: u64,
    },
    History {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        messages: &'a [HistoryItem],
        more: bool,
    },
    Notification {
        data: &'a RawValue,
        ts: u64,
    },
}

/// A message in a `history` page, with its edits, deletion and reactions folded in.
#[derive(Serialize, Debug)]
pub struct HistoryItem {
    pub seq: u64,
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `null` once deleted.
    pub body: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    pub reactions: Reactions,
}

/// `{"<emoji>": ["<user>", ...]}` in the order the reactions were made.
#[derive(Debug, Default)]
pub struct Reactions(pub Vec<(String, Vec<String>)>);

impl Serialize for Reactions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (emoji, users) in &self.0 {
            map.serialize_entry(emoji, users)?;
        }
        map.end()
    }
}

impl ServerFrame<'_> {
    /// The WebSocket text frame carrying this message.
    pub fn to_frame(&self) -> Bytes {
        ws::text_frame(|buf| {
            // Serializing these types into a Vec cannot fail: no maps with non-string keys,
            // no fallible Serialize impls.
            let _ = serde_json::to_writer(buf, self);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Request<'_>, Rejection> {
        parse_client_frame(text).request
    }

    fn code(text: &str) -> ErrorCode {
        req(text).unwrap_err().code
    }

    #[test]
    fn parses_every_type() {
        assert!(matches!(req(r#"{"type":"ping"}"#).unwrap(), Request::Ping));
        assert!(matches!(req(r#"{"type":"auth","token":"t"}"#).unwrap(), Request::Auth { .. }));
        assert!(matches!(
            req(r#"{"type":"join","room":"r","since":5}"#).unwrap(),
            Request::Join { room, since: Some(5), history: None } if room == "r"
        ));
        let Request::Send { room, body, reply_to } =
            req(r#"{"type":"send","room":"r","body":{"a": [1, 2]},"reply_to":3}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((room.as_ref(), body.get(), reply_to), ("r", r#"{"a": [1, 2]}"#, Some(3)));
        assert!(matches!(
            req(r#"{"type":"unreact","room":"r","target":1,"emoji":"👍"}"#).unwrap(),
            Request::React { add: false, .. }
        ));
        assert!(matches!(
            req(r#"{"type":"typing","room":"r","active":true}"#).unwrap(),
            Request::Typing { active: true, .. }
        ));
        assert!(matches!(req(r#"{"type":"direct","to":"bob","body":"hi"}"#).unwrap(), Request::Direct { .. }));
        assert!(matches!(
            req(r#"{"type":"history","room":"r"}"#).unwrap(),
            Request::History { limit: DEFAULT_HISTORY_LIMIT, .. }
        ));
        assert!(matches!(
            req(r#"{"type":"history","room":"r","limit":9999}"#).unwrap(),
            Request::History { limit: MAX_HISTORY_LIMIT, .. }
        ));
        assert!(matches!(req(r#"{"type":"presence","room":"r"}"#).unwrap(), Request::Presence { .. }));
        let Request::Send { body, .. } = req(r#"{"type":"send","room":"r","body":null}"#).unwrap() else { panic!() };
        assert_eq!(body.get(), "null", "null is a body");
        assert_eq!(frame_ref(r#"{"type":"x","ref":"k","pad":[1,2]}"#).as_deref(), Some("k"));
        assert_eq!(frame_ref("not json"), None);
        assert!(matches!(req(r#"{"type":"leave","room":"r"}"#).unwrap(), Request::Leave { .. }));
        assert!(matches!(req(r#"{"type":"edit","room":"r","target":2,"body":1}"#).unwrap(), Request::Edit { .. }));
        assert!(matches!(req(r#"{"type":"delete","room":"r","target":2}"#).unwrap(), Request::Delete { .. }));
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"ping""#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"room":"r"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"fly"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"join","room":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"join","room":"r","since":-1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"send","room":"r"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"typing","room":"r","active":"yes"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"react","room":"r","target":1,"emoji":""}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"history","room":"r","limit":0}"#), ErrorCode::BadRequest);
    }

    #[test]
    fn ref_is_kept_on_errors_and_limited() {
        let f = parse_client_frame(r#"{"type":"join","ref":"a1"}"#);
        assert_eq!(f.reference.as_deref(), Some("a1"));
        assert_eq!(f.request.unwrap_err().code, ErrorCode::BadRequest);
        let f = parse_client_frame(r#"{"type":"fly","ref":"a2"}"#);
        assert_eq!(f.reference.as_deref(), Some("a2"));
        let long = format!(r#"{{"type":"ping","ref":"{}"}}"#, "x".repeat(65));
        let f = parse_client_frame(&long);
        assert_eq!(f.reference, None);
        assert_eq!(f.request.unwrap_err().code, ErrorCode::BadRequest);
        let f = parse_client_frame(r#"{"type":"ping","ref":7}"#);
        assert_eq!(f.reference, None);
        assert!(f.request.is_err());
        let f = parse_client_frame(r#"{"type":"ping","ref":"\u0041"}"#);
        assert_eq!(f.reference.as_deref(), Some("A"));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let Request::Join { room, .. } = req(r#"{"type":"join","room":"a\u003ab"}"#).unwrap() else { panic!() };
        assert_eq!(room, "a:b");
    }

    #[test]
    fn server_frames_encode_to_contract_shapes() {
        let body = RawValue::from_string(r#"{"t":"hi"}"#.into()).unwrap();
        let f =
            ServerFrame::Message { room: "r", seq: 3, from: "alice", name: None, body: &body, reply_to: None, ts: 9 }
                .to_frame();
        let json = ws::frame_payload(&f);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"type":"message","room":"r","seq":3,"from":"alice","body":{"t":"hi"},"ts":9}"#
        );
        let f = ServerFrame::Error { reference: Some("x"), code: ErrorCode::NotInRoom, message: "m" }.to_frame();
        assert_eq!(&ws::frame_payload(&f)[..], br#"{"type":"error","ref":"x","code":"not_in_room","message":"m"}"#);
        let f = ServerFrame::Joined { reference: None, room: "r", seq: 0, members: 1, truncated: false }.to_frame();
        assert_eq!(&ws::frame_payload(&f)[..], br#"{"type":"joined","room":"r","seq":0,"members":1}"#);
    }
}
