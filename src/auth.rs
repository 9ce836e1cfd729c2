//! Verifies and mints HMAC-signed JWTs (HS256/HS384/HS512) and owns room-permission patterns.
//! No I/O and no clock reads: `now` is always a parameter, so it is testable without sleeping.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::config::{AuthConfig, KeyConfig};
use crate::names::{RoomKind, is_valid_room_name, is_valid_user_id, room_kind};

/// Tokens are minted on other hosts, so `nbf`/`iat` tolerate this much clock disagreement.
pub const CLOCK_SKEW_LEEWAY_SECS: u64 = 30;
/// Longer tokens are refused before any decoding, bounding the work an anonymous client can cause.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest `name` (display name) claim, in bytes.
pub const MAX_DISPLAY_NAME_LEN: usize = 256;
/// HS512 tags are the longest we accept; a bigger signature cannot be valid.
const MAX_SIGNATURE_LEN: usize = 64;

/// Why a token was refused. `Display` is a short reason that is safe to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Not a well-formed JWS; the detail is for server logs only.
    Malformed(&'static str),
    UnsupportedAlg,
    UnknownKeyId,
    BadSignature,
    Expired,
    MissingExp,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    MissingSub,
    InvalidSub,
    /// The named claim has the wrong type or an out-of-range value.
    BadClaim(&'static str),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self {
            AuthError::Malformed(_) => "malformed token",
            AuthError::UnsupportedAlg => "unsupported alg",
            AuthError::UnknownKeyId => "unknown key id",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "token expired",
            AuthError::MissingExp => "missing exp",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::IssuedInFuture => "token issued in the future",
            AuthError::WrongIssuer => "wrong issuer",
            AuthError::WrongAudience => "wrong audience",
            AuthError::MissingSub => "missing sub",
            AuthError::InvalidSub => "invalid sub",
            AuthError::BadClaim(claim) => return write!(f, "bad claim: {claim}"),
        };
        f.write_str(reason)
    }
}

impl std::error::Error for AuthError {}

/// What the `role` claim grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Server,
    Admin,
}

/// Room-name patterns from a token: exact names, or prefixes written with a trailing `*`.
#[derive(Debug)]
pub struct RoomPatterns {
    any: bool,
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl RoomPatterns {
    /// Exact names, or a prefix ending in `*` (`"*"` alone allows every room).
    pub fn new(patterns: &[String]) -> RoomPatterns {
        RoomPatterns::from_strs(patterns.iter().map(String::as_str))
    }

    fn from_strs<'s>(patterns: impl IntoIterator<Item = &'s str>) -> RoomPatterns {
        let mut out = RoomPatterns { any: false, exact: Vec::new(), prefixes: Vec::new() };
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some("") => out.any = true,
                Some(prefix) => out.prefixes.push(prefix.into()),
                None => out.exact.push(pattern.into()),
            }
        }
        out
    }

    /// Whether some pattern matches `room` (the name's validity is checked elsewhere).
    pub fn allows(&self, room: &str) -> bool {
        self.any
            || self.exact.iter().any(|name| **name == *room)
            || self.prefixes.iter().any(|prefix| room.starts_with(&**prefix))
    }
}

/// Whether an identity may join a room, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAccess {
    Allowed,
    Malformed(&'static str),
    Forbidden(&'static str),
}

/// A verified token: `user` is `sub`, `name` the optional display name, `rooms` the `rooms` claim
/// or the configured default, `role` the `role` claim, `exp` the expiry if the token had one.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    pub name: Option<Arc<str>>,
    pub rooms: Arc<RoomPatterns>,
    pub role: Role,
    pub exp: Option<u64>,
}

impl Identity {
    /// Whether this identity may join/read `room`. A `dm:` room needs both: being one of its two
    /// users AND a pattern allowing the name, so a token scoped to `["support:*"]` cannot DM.
    pub fn room_access(&self, room: &str) -> RoomAccess {
        if !is_valid_room_name(room) {
            return RoomAccess::Malformed("invalid room name");
        }
        match room_kind(room) {
            RoomKind::MalformedDirect => {
                return RoomAccess::Malformed("dm room must be dm:<a>:<b> with ids in byte order");
            }
            RoomKind::Direct(a, b) if *self.user != *a && *self.user != *b => {
                return RoomAccess::Forbidden("not a participant of this dm room");
            }
            RoomKind::Direct(..) | RoomKind::Group => {}
        }
        if self.rooms.allows(room) { RoomAccess::Allowed } else { RoomAccess::Forbidden("room not allowed by token") }
    }
}

#[derive(Clone, Copy)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
}

impl Alg {
    fn from_name(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "HS384" => Some(Alg::Hs384),
            "HS512" => Some(Alg::Hs512),
            _ => None,
        }
    }
}

/// One configured secret, keyed once per algorithm so `verify` never re-derives HMAC state.
struct VerifyKey {
    kid: String,
    hs256: hmac::Key,
    hs384: hmac::Key,
    hs512: hmac::Key,
}

impl VerifyKey {
    fn new(cfg: &KeyConfig) -> VerifyKey {
        VerifyKey {
            kid: cfg.kid.clone(),
            hs256: hmac::Key::new(hmac::HMAC_SHA256, &cfg.secret),
            hs384: hmac::Key::new(hmac::HMAC_SHA384, &cfg.secret),
            hs512: hmac::Key::new(hmac::HMAC_SHA512, &cfg.secret),
        }
    }

    fn for_alg(&self, alg: Alg) -> &hmac::Key {
        match alg {
            Alg::Hs256 => &self.hs256,
            Alg::Hs384 => &self.hs384,
            Alg::Hs512 => &self.hs512,
        }
    }
}

/// Checks tokens against the configured keys and claim rules; built once, shared by all connections.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    require_exp: bool,
    issuer: Option<String>,
    audience: Option<String>,
    default_rooms: Arc<RoomPatterns>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material stays out of logs: only how many keys there are.
        f.debug_struct("Verifier").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

/// A JSON string that borrows from the decoded segment unless it contains escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Str<'a>,
    #[serde(borrow)]
    kid: Option<Str<'a>>,
}

/// Claims are kept raw so a wrong type can be reported per claim, and so an explicit `null`
/// counts as a bad value rather than silently meaning "absent".
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    sub: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    exp: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    nbf: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    iat: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    iss: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    aud: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    rooms: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    role: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    name: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn claim<'a, T: Deserialize<'a>>(raw: &'a RawValue, name: &'static str) -> Result<T, AuthError> {
    serde_json::from_str(raw.get()).map_err(|_| AuthError::BadClaim(name))
}

/// RFC 7519 NumericDate: integer or float seconds. Fractions are truncated, which errs toward
/// expiry for `exp` and is noise next to the leeway for `nbf`/`iat`.
fn numeric_date(raw: &RawValue, name: &'static str) -> Result<u64, AuthError> {
    let n: serde_json::Number = claim(raw, name)?;
    if let Some(secs) = n.as_u64() {
        return Ok(secs);
    }
    match n.as_f64() {
        // `as` saturates, so integers beyond u64 (parsed as floats) become "the far future".
        Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs as u64),
        _ => Err(AuthError::BadClaim(name)),
    }
}

fn optional_str<'a>(raw: Option<&'a RawValue>, name: &'static str) -> Result<Option<Cow<'a, str>>, AuthError> {
    raw.map(|raw| claim(raw, name).map(|Str(s)| s)).transpose()
}

fn audience_contains(raw: &RawValue, wanted: &str) -> Result<bool, AuthError> {
    if let Ok(Str(one)) = serde_json::from_str::<Str>(raw.get()) {
        return Ok(one == wanted);
    }
    let many: Vec<Str> = claim(raw, "aud")?;
    Ok(many.iter().any(|aud| aud.0 == wanted))
}

fn decode_segment(segment: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::Malformed(what))
}

/// serde_json would also fill a struct from a JSON array by position; JWS requires objects.
fn parse_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Option<T> {
    if !json.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    serde_json::from_slice(json).ok()
}

fn check_signature(key: &hmac::Key, signing_input: &[u8], signature_b64: &str) -> Result<(), AuthError> {
    let mut buf = [0u8; MAX_SIGNATURE_LEN];
    let len = match URL_SAFE_NO_PAD.decode_slice(signature_b64, &mut buf) {
        Ok(len) => len,
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => return Err(AuthError::BadSignature),
        Err(base64::DecodeSliceError::DecodeError(_)) => {
            return Err(AuthError::Malformed("signature is not base64url"));
        }
    };
    let signature = buf.get(..len).ok_or(AuthError::BadSignature)?;
    hmac::verify(key, signing_input, signature).map_err(|_| AuthError::BadSignature)
}

impl Verifier {
    /// `cfg.keys` is non-empty here (the caller resolved a generated key if the file had none).
    pub fn new(cfg: &AuthConfig) -> Verifier {
        Verifier {
            keys: cfg.keys.iter().map(VerifyKey::new).collect(),
            require_exp: cfg.require_exp,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            default_rooms: Arc::new(RoomPatterns::new(&cfg.default_rooms)),
        }
    }

    /// Verifies signature and claims at `now_unix` (seconds since the epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token too long"));
        }
        let segments = AuthError::Malformed("expected header.payload.signature");
        let (signing_input, signature) = token.rsplit_once('.').ok_or(segments)?;
        let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(segments)?;
        if payload_b64.contains('.') {
            return Err(segments);
        }

        let header_json = decode_segment(header_b64, "header is not base64url")?;
        let header: Header =
            parse_object(&header_json).ok_or(AuthError::Malformed("header is not a JWS header object"))?;
        let alg = Alg::from_name(&header.alg.0).ok_or(AuthError::UnsupportedAlg)?;
        let key = match header.kid {
            Some(kid) => self.keys.iter().find(|k| k.kid == kid.0),
            None => self.keys.first(),
        }
        .ok_or(AuthError::UnknownKeyId)?;
        check_signature(key.for_alg(alg), signing_input.as_bytes(), signature)?;

        let payload = decode_segment(payload_b64, "payload is not base64url")?;
        let claims: RawClaims = parse_object(&payload).ok_or(AuthError::Malformed("payload is not a JSON object"))?;
        self.check_claims(&claims, now_unix)
    }

    fn check_claims(&self, claims: &RawClaims, now: u64) -> Result<Identity, AuthError> {
        let raw_sub = claims.sub.ok_or(AuthError::MissingSub)?;
        let Str(sub) = serde_json::from_str(raw_sub.get()).map_err(|_| AuthError::InvalidSub)?;
        if !is_valid_user_id(&sub) {
            return Err(AuthError::InvalidSub);
        }

        let exp = claims.exp.map(|raw| numeric_date(raw, "exp")).transpose()?;
        match exp {
            Some(exp) if now >= exp => return Err(AuthError::Expired),
            None if self.require_exp => return Err(AuthError::MissingExp),
            _ => {}
        }
        let skewed_now = now.saturating_add(CLOCK_SKEW_LEEWAY_SECS);
        let nbf = claims.nbf.map(|raw| numeric_date(raw, "nbf")).transpose()?;
        if nbf.is_some_and(|nbf| skewed_now < nbf) {
            return Err(AuthError::NotYetValid);
        }
        let iat = claims.iat.map(|raw| numeric_date(raw, "iat")).transpose()?;
        if iat.is_some_and(|iat| iat > skewed_now) {
            return Err(AuthError::IssuedInFuture);
        }

        if let Some(issuer) = &self.issuer {
            let Str(iss) = claim(claims.iss.ok_or(AuthError::WrongIssuer)?, "iss")?;
            if iss != issuer.as_str() {
                return Err(AuthError::WrongIssuer);
            }
        }
        if let Some(audience) = &self.audience {
            let aud = claims.aud.ok_or(AuthError::WrongAudience)?;
            if !audience_contains(aud, audience)? {
                return Err(AuthError::WrongAudience);
            }
        }

        let rooms = match claims.rooms {
            Some(raw) => {
                let patterns: Vec<Str> = claim(raw, "rooms")?;
                Arc::new(RoomPatterns::from_strs(patterns.iter().map(|p| &*p.0)))
            }
            None => Arc::clone(&self.default_rooms),
        };
        let role = match optional_str(claims.role, "role")?.as_deref() {
            Some("server") => Role::Server,
            Some("admin") => Role::Admin,
            _ => Role::User,
        };
        let name = optional_str(claims.name, "name")?;
        if name.as_ref().is_some_and(|name| name.len() > MAX_DISPLAY_NAME_LEN) {
            return Err(AuthError::BadClaim("name"));
        }

        Ok(Identity { user: Arc::from(&*sub), name: name.map(|name| Arc::from(&*name)), rooms, role, exp })
    }
}

/// What to put in a token made by [`mint`].
pub struct MintRequest<'a> {
    pub sub: &'a str,
    pub name: Option<&'a str>,
    pub rooms: Option<&'a [String]>,
    pub role: Option<&'a str>,
    pub ttl: Option<Duration>,
    pub now_unix: u64,
}

/// HS256 token signed with `key`; header {"alg":"HS256","typ":"JWT"} plus "kid" when key.kid is non-empty;
/// claims sub, iat=now, exp=now+ttl (omitted when ttl is None), name/rooms/role when given.
pub fn mint(key: &KeyConfig, req: &MintRequest) -> String {
    use serde_json::{Map, Value};
    // Built as `Value`s because their `Display` cannot fail, unlike `serde_json::to_string`.
    let mut header = Map::new();
    header.insert("alg".into(), "HS256".into());
    header.insert("typ".into(), "JWT".into());
    if !key.kid.is_empty() {
        header.insert("kid".into(), key.kid.as_str().into());
    }
    let mut claims = Map::new();
    claims.insert("sub".into(), req.sub.into());
    claims.insert("iat".into(), req.now_unix.into());
    if let Some(ttl) = req.ttl {
        claims.insert("exp".into(), req.now_unix.saturating_add(ttl.as_secs()).into());
    }
    if let Some(name) = req.name {
        claims.insert("name".into(), name.into());
    }
    if let Some(rooms) = req.rooms {
        claims.insert("rooms".into(), rooms.into());
    }
    if let Some(role) = req.role {
        claims.insert("role".into(), role.into());
    }

    let mut token = URL_SAFE_NO_PAD.encode(Value::Object(header).to_string());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(Value::Object(claims).to_string(), &mut token);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key.secret), token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthError as E;

    const NOW: u64 = 1000;
    const SECRET: &[u8] = b"first-secret";
    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    const ALICE: &str = r#"{"sub":"alice","exp":2000}"#;

    /// Rows of `claims => expected outcome`, each signed with `SECRET` and verified at `NOW`.
    macro_rules! check {
        ($v:expr, { $($claims:literal => $want:expr,)* }) => {
            for (claims, want) in [$(($claims, $want)),*] {
                assert_eq!($v.verify(&hs256(claims), NOW).map(|_| ()), want, "{claims}");
            }
        };
    }

    fn key(kid: &str, secret: &[u8]) -> KeyConfig {
        KeyConfig { kid: kid.into(), secret: secret.to_vec() }
    }

    fn config(keys: Vec<KeyConfig>) -> AuthConfig {
        AuthConfig {
            keys,
            timeout: Duration::from_secs(5),
            require_exp: true,
            issuer: None,
            audience: None,
            default_rooms: vec!["*".into()],
            allow_query_token: false,
            cookie: None,
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(&config(vec![key("", SECRET)]))
    }

    fn b64(data: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(data)
    }

    /// Signs arbitrary header/claims JSON with ring directly, independently of `mint`.
    fn sign(alg: hmac::Algorithm, secret: &[u8], header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let tag = hmac::sign(&hmac::Key::new(alg, secret), input.as_bytes());
        format!("{input}.{}", b64(tag))
    }

    fn hs256(claims: &str) -> String {
        sign(hmac::HMAC_SHA256, SECRET, HS256, claims)
    }

    fn identity(v: &Verifier, claims: &str) -> Identity {
        v.verify(&hs256(claims), NOW).unwrap()
    }

    #[test]
    fn rfc7515_appendix_a1_hs256() {
        let k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        let token = concat!(
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.",
            "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
        let secret = URL_SAFE_NO_PAD.decode(k).unwrap();
        let hkey = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let (input, sig) = token.rsplit_once('.').unwrap();
        assert_eq!(check_signature(&hkey, input.as_bytes(), sig), Ok(()));
        let v = Verifier::new(&config(vec![key("", &secret)]));
        assert_eq!(v.verify(token, 1_300_000_000).unwrap_err(), E::MissingSub);

        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[7] ^= 0x01;
        let flipped = b64(&raw);
        let sig_check = check_signature(&hkey, input.as_bytes(), &flipped);
        assert_eq!(sig_check, Err(E::BadSignature));
        let forged = format!("{input}.{flipped}");
        assert_eq!(v.verify(&forged, 1_300_000_000).unwrap_err(), E::BadSignature);
    }

    #[test]
    fn algorithms_and_key_ids() {
        let v = Verifier::new(&config(vec![key("one", SECRET), key("two", b"two")]));
        let (sha256, sha384, sha512) = (hmac::HMAC_SHA256, hmac::HMAC_SHA384, hmac::HMAC_SHA512);
        let cases = [
            (sha384, SECRET, r#"{"alg":"HS384"}"#, Ok(())),
            (sha512, SECRET, r#"{"alg":"HS512"}"#, Ok(())),
            (sha256, b"two", r#"{"alg":"HS256","kid":"two"}"#, Ok(())),
            (sha256, SECRET, r#"{"alg":"HS256","kid":"one"}"#, Ok(())),
            (sha256, b"two", r#"{"alg":"HS256"}"#, Err(E::BadSignature)),
            (sha256, SECRET, r#"{"alg":"HS256","kid":"three"}"#, Err(E::UnknownKeyId)),
            (sha384, SECRET, r#"{"alg":"HS256"}"#, Err(E::BadSignature)),
            (sha256, SECRET, r#"{"alg":"RS256"}"#, Err(E::UnsupportedAlg)),
            (sha256, SECRET, r#"{"alg":"ES256"}"#, Err(E::UnsupportedAlg)),
            (sha256, SECRET, r#"{"alg":"hs256"}"#, Err(E::UnsupportedAlg)),
        ];
        for (alg, secret, header, want) in cases {
            let got = v.verify(&sign(alg, secret, header, ALICE), NOW);
            assert_eq!(got.map(|_| ()), want, "{header}");
        }
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(ALICE));
        assert_eq!(v.verify(&none, NOW).unwrap_err(), E::UnsupportedAlg);
    }

    #[test]
    fn claim_rules() {
        check!(verifier(), {
            r#"{"sub":"a","exp":1001}"# => Ok(()),
            r#"{"sub":"a","exp":1000}"# => Err(E::Expired),
            r#"{"sub":"a","exp":1000.9}"# => Err(E::Expired),
            r#"{"sub":"a","exp":1e3}"# => Err(E::Expired),
            r#"{"sub":"a"}"# => Err(E::MissingExp),
            r#"{"exp":2000}"# => Err(E::MissingSub),
            r#"{"sub":"a","exp":2000,"nbf":1030}"# => Ok(()),
            r#"{"sub":"a","exp":2000,"nbf":1031}"# => Err(E::NotYetValid),
            r#"{"sub":"a","exp":2000,"iat":1030.0}"# => Ok(()),
            r#"{"sub":"a","exp":2000,"iat":1031}"# => Err(E::IssuedInFuture),
            r#"{"sub":"a","exp":2000,"nbf":0,"iat":0}"# => Ok(()),
            r#"{"sub":"a","exp":-1}"# => Err(E::BadClaim("exp")),
            r#"{"sub":"a","exp":"2000"}"# => Err(E::BadClaim("exp")),
            r#"{"sub":"a","exp":null}"# => Err(E::BadClaim("exp")),
            r#"{"sub":"a","exp":1e400}"# => Err(E::BadClaim("exp")),
            r#"{"sub":"a","exp":2000,"nbf":[1]}"# => Err(E::BadClaim("nbf")),
            r#"{"sub":"a","exp":2000,"iat":-0.5}"# => Err(E::BadClaim("iat")),
            r#"{"sub":"","exp":2000}"# => Err(E::InvalidSub),
            r#"{"sub":"a:b","exp":2000}"# => Err(E::InvalidSub),
            r#"{"sub":5,"exp":2000}"# => Err(E::InvalidSub),
            r#"{"sub":null,"exp":2000}"# => Err(E::InvalidSub),
            r#"{"sub":"\u0061","exp":2000}"# => Ok(()),
            r#"{"sub":"a","exp":2000,"rooms":"*"}"# => Err(E::BadClaim("rooms")),
            r#"{"sub":"a","exp":2000,"rooms":["a",1]}"# => Err(E::BadClaim("rooms")),
            r#"{"sub":"a","exp":2000,"rooms":null}"# => Err(E::BadClaim("rooms")),
            r#"{"sub":"a","exp":2000,"role":1}"# => Err(E::BadClaim("role")),
            r#"{"sub":"a","exp":2000,"name":["x"]}"# => Err(E::BadClaim("name")),
            r#"{"sub":"a","exp":2000,"iss":7,"aud":false,"other":{}}"# => Ok(()),
        });
        // Integers beyond u64 saturate to "never expires" instead of wrapping.
        let far = identity(&verifier(), r#"{"sub":"a","exp":1234567890123456789012345}"#);
        assert_eq!(far.exp, Some(u64::MAX));
        let late = verifier().verify(&hs256(r#"{"sub":"a","exp":5,"nbf":5}"#), u64::MAX);
        assert_eq!(late.unwrap_err(), E::Expired);

        let mut cfg = config(vec![key("", SECRET)]);
        cfg.require_exp = false;
        let lenient = Verifier::new(&cfg);
        assert_eq!(identity(&lenient, r#"{"sub":"a"}"#).exp, None);
        check!(lenient, { r#"{"sub":"a","exp":1}"# => Err(E::Expired), });
    }

    #[test]
    fn issuer_and_audience() {
        let mut cfg = config(vec![key("", SECRET)]);
        cfg.issuer = Some("idp".into());
        cfg.audience = Some("rc".into());
        check!(Verifier::new(&cfg), {
            r#"{"sub":"a","exp":2000,"iss":"idp","aud":"rc"}"# => Ok(()),
            r#"{"sub":"a","exp":2000,"iss":"idp","aud":["x","rc"]}"# => Ok(()),
            r#"{"sub":"a","exp":2000,"iss":"evil","aud":"rc"}"# => Err(E::WrongIssuer),
            r#"{"sub":"a","exp":2000,"aud":"rc"}"# => Err(E::WrongIssuer),
            r#"{"sub":"a","exp":2000,"iss":7,"aud":"rc"}"# => Err(E::BadClaim("iss")),
            r#"{"sub":"a","exp":2000,"iss":"idp","aud":"x"}"# => Err(E::WrongAudience),
            r#"{"sub":"a","exp":2000,"iss":"idp","aud":["x"]}"# => Err(E::WrongAudience),
            r#"{"sub":"a","exp":2000,"iss":"idp"}"# => Err(E::WrongAudience),
            r#"{"sub":"a","exp":2000,"iss":"idp","aud":[1]}"# => Err(E::BadClaim("aud")),
        });
    }

    #[test]
    fn rooms_roles_and_names() {
        let p = RoomPatterns::new(&["lobby".into(), "support:*".into()]);
        assert!(p.allows("lobby") && p.allows("support:1"));
        assert!(!p.allows("lobby2") && !p.allows("support"));
        assert!(RoomPatterns::new(&["*".into()]).allows("anything"));
        assert!(!RoomPatterns::new(&[]).allows("lobby"));

        let mut cfg = config(vec![key("", SECRET)]);
        cfg.default_rooms = vec!["lobby".into()];
        let v = Verifier::new(&cfg);
        let scoped = identity(&v, r#"{"sub":"a","exp":2000,"rooms":["team:*"]}"#);
        assert!(scoped.rooms.allows("team:x") && !scoped.rooms.allows("lobby"));
        let (first, second) = (identity(&v, ALICE), identity(&v, ALICE));
        assert!(first.rooms.allows("lobby") && !first.rooms.allows("team:x"));
        assert!(Arc::ptr_eq(&first.rooms, &second.rooms));

        let with = |extra: &str| identity(&v, &format!(r#"{{"sub":"a","exp":2000{extra}}}"#));
        assert_eq!(with("").role, Role::User);
        assert_eq!(with(r#","role":"server""#).role, Role::Server);
        assert_eq!(with(r#","role":"admin""#).role, Role::Admin);
        assert_eq!(with(r#","role":"Admin""#).role, Role::User);
        assert_eq!(with("").name, None);
        assert_eq!(with(r#","name":"Zo\u00eb""#).name.as_deref(), Some("Zoë"));
        let longest = "n".repeat(MAX_DISPLAY_NAME_LEN);
        let named = with(&format!(r#","name":"{longest}""#));
        assert_eq!(named.name.as_deref(), Some(&*longest));
        let too_long = hs256(&format!(r#"{{"sub":"a","exp":2000,"name":"{longest}x"}}"#));
        assert_eq!(v.verify(&too_long, NOW).unwrap_err(), E::BadClaim("name"));
    }

    #[test]
    fn room_access_rules() {
        let alice = identity(&verifier(), ALICE);
        let scoped = identity(&verifier(), r#"{"sub":"alice","exp":2000,"rooms":["support:*"]}"#);
        let denied = RoomAccess::Forbidden("room not allowed by token");
        let cases = [
            (&alice, "lobby", RoomAccess::Allowed),
            (&alice, "dm:alice:bob", RoomAccess::Allowed),
            (&alice, "dm:alice:alice", RoomAccess::Allowed),
            (&alice, "no spaces", RoomAccess::Malformed("invalid room name")),
            (&scoped, "support:42", RoomAccess::Allowed),
            (&scoped, "dm:alice:bob", denied),
            (&scoped, "lobby", denied),
        ];
        for (who, room, want) in cases {
            assert_eq!(who.room_access(room), want, "{room}");
        }
        assert!(matches!(alice.room_access("dm:bob:carol"), RoomAccess::Forbidden(_)));
        assert!(matches!(alice.room_access("dm:bob:alice"), RoomAccess::Malformed(_)));
        assert!(matches!(alice.room_access("dm:alice"), RoomAccess::Malformed(_)));
    }

    #[test]
    fn mint_round_trip() {
        let rooms = vec!["team:*".to_string(), "dm:*".to_string()];
        let req = MintRequest {
            sub: "bob",
            name: Some("Bob \"B\""),
            rooms: Some(&rooms),
            role: Some("admin"),
            ttl: Some(Duration::from_secs(60)),
            now_unix: NOW,
        };
        let signer = key("k2", b"second");
        let token = mint(&signer, &req);
        let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header, serde_json::json!({"alg":"HS256","typ":"JWT","kid":"k2"}));

        let v = Verifier::new(&config(vec![key("k1", SECRET), signer.clone()]));
        let id = v.verify(&token, NOW).unwrap();
        assert_eq!((&*id.user, id.name.as_deref()), ("bob", Some("Bob \"B\"")));
        assert_eq!((id.role, id.exp), (Role::Admin, Some(NOW + 60)));
        assert!(id.rooms.allows("team:x") && !id.rooms.allows("lobby"));
        assert_eq!(v.verify(&token, NOW + 60).unwrap_err(), E::Expired);

        let bare = MintRequest { sub: "carol", name: None, rooms: None, role: None, ttl: None, now_unix: NOW };
        let token = mint(&key("", SECRET), &bare);
        assert!(token.starts_with(&b64(r#"{"alg":"HS256","typ":"JWT"}"#)));
        assert_eq!(verifier().verify(&token, NOW).unwrap_err(), E::MissingExp);
    }

    #[test]
    fn malformed_input_never_panics() {
        let v = verifier();
        let good = hs256(ALICE);
        let (input, sig) = good.rsplit_once('.').unwrap();
        let mut tokens = vec![
            format!("{good}."),
            format!("{input}.{sig}="),
            format!("{input}.{}+/", sig.replace(['-', '_'], "A")),
            format!("{input}.{}", "A".repeat(200)),
            format!("{input}.A"),
            format!("{input}=.{sig}"),
            format!("{}.!!!.{sig}", b64(HS256)),
            format!("{}.{}.", b64(HS256), "A".repeat(MAX_TOKEN_LEN)),
        ];
        tokens.extend(["", ".", "..", "...", "....", "a.b", "a.b.c.d", "é.é.é"].map(String::from));
        let headers = ["", "null", "[]", "[\"HS256\"]", "{", "{\"alg\":5}", "\u{ff}"];
        let more_headers = [r#"{"alg":null}"#, r#"{"alg":"HS256","kid":7}"#];
        for header in headers.iter().chain(&more_headers) {
            tokens.push(format!("{}.{}.{sig}", b64(header), b64(ALICE)));
        }
        // Correctly signed payloads that are not acceptable claim sets.
        let payloads = ["", "null", "[]", "[\"a\",2000]", "1", "{", "{}", "\u{0}"];
        let more_payloads = [r#"{"sub":"a","sub":"b"}"#, r#"{"sub":"a","exp":{}}"#, "{\"sub\":1e400}"];
        tokens.extend(payloads.iter().chain(&more_payloads).map(|p| hs256(p)));
        // Deep nesting inside an ignored claim must hit serde_json's depth limit, not the stack.
        let deep = format!(r#"{{"sub":"a","exp":2000,"x":{}}}"#, "[".repeat(5000));
        tokens.push(hs256(&deep));
        let not_utf8 = format!("{}.{}", b64(HS256), b64([0xff, 0xfe, b'{']));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET), not_utf8.as_bytes());
        tokens.push(format!("{not_utf8}.{}", b64(tag)));
        for token in &tokens {
            for now in [0, NOW, u64::MAX] {
                assert!(v.verify(token, now).is_err(), "{token:?} accepted");
            }
        }
        for token in [format!("{input}.{sig}="), format!("{input}.{}+/", &sig[2..])] {
            assert!(matches!(v.verify(&token, NOW), Err(E::Malformed(_))), "{token}");
        }
        let too_long = format!("{good}{}", " ".repeat(MAX_TOKEN_LEN));
        assert!(matches!(v.verify(&too_long, NOW), Err(E::Malformed(_))));
        let no_keys = Verifier::new(&config(Vec::new()));
        assert_eq!(no_keys.verify(&good, NOW).unwrap_err(), E::UnknownKeyId);
        assert_eq!(E::Malformed("header is not base64url").to_string(), "malformed token");
        assert_eq!(E::BadClaim("rooms").to_string(), "bad claim: rooms");
    }
}
