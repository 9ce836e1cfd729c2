//! WebSocket wire format for the harness and the baseline: the HTTP upgrade, and frames encoded and
//! decoded with tungstenite's `FrameHeader` (masked from clients). No sockets, no JSON meaning here.

use std::fmt;
use std::io::Cursor;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Largest frame payload either side accepts; anything bigger is a protocol error here.
pub const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;
/// Largest HTTP response (or request) head we wait for.
pub const MAX_HEAD: usize = 16 * 1024;

pub const TEXT: OpCode = OpCode::Data(Data::Text);
pub const PING: OpCode = OpCode::Control(Control::Ping);
pub const PONG: OpCode = OpCode::Control(Control::Pong);
pub const CLOSE: OpCode = OpCode::Control(Control::Close);

#[derive(Debug)]
pub enum FrameError {
    Header(String),
    TooLarge(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Header(e) => write!(f, "bad frame header: {e}"),
            FrameError::TooLarge(n) => write!(f, "frame payload of {n} bytes exceeds {MAX_PAYLOAD}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// One complete frame found at the start of a buffer.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub header: FrameHeader,
    /// Offset of the payload in the buffer that was parsed.
    pub payload_start: usize,
    pub payload_len: usize,
}

impl RawFrame {
    /// Bytes the whole frame occupies.
    pub fn total_len(&self) -> usize {
        self.payload_start + self.payload_len
    }
}

/// Parses the frame at the start of `buf`; `Ok(None)` when it is not complete yet.
pub fn parse_frame(buf: &[u8]) -> Result<Option<RawFrame>, FrameError> {
    let mut cur = Cursor::new(buf);
    let Some((header, len)) = FrameHeader::parse(&mut cur).map_err(|e| FrameError::Header(e.to_string()))? else {
        return Ok(None);
    };
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let payload_start = cur.position() as usize;
    let payload_len = len as usize;
    if buf.len() - payload_start < payload_len {
        return Ok(None);
    }
    Ok(Some(RawFrame { header, payload_start, payload_len }))
}

/// XORs `buf` with the 4-byte `mask` (RFC 6455 5.3); its own inverse.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = buf.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Appends a final frame to `out`, masked with `mask` when given (clients must mask).
pub fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let header = FrameHeader { is_final: true, rsv1: false, rsv2: false, rsv3: false, opcode, mask };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
}

/// A small fast PRNG for masks and handshake keys (not for secrets).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Seeded from the clock, the pid and `salt`.
    pub fn from_entropy(salt: u64) -> Rng {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Rng::new(t ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    /// A `Sec-WebSocket-Key`: 16 random bytes, base64.
    pub fn ws_key(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        STANDARD.encode(bytes)
    }
}

/// Appends a client upgrade request for `path_query` (e.g. `/ws` or `/ws?token=...`).
pub fn upgrade_request(out: &mut Vec<u8>, host: &str, path_query: &str, key: &str, bearer: Option<&str>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    if let Some(token) = bearer {
        out.extend_from_slice(b"\r\nAuthorization: Bearer ");
        out.extend_from_slice(token.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered with this HTTP status instead of 101.
    Status(u16),
    BadAccept,
    Malformed(String),
    TooLong,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Status(s) => write!(f, "upgrade refused with HTTP {s}"),
            HandshakeError::BadAccept => write!(f, "wrong Sec-WebSocket-Accept"),
            HandshakeError::Malformed(e) => write!(f, "malformed upgrade response: {e}"),
            HandshakeError::TooLong => write!(f, "upgrade response head too long"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Checks an upgrade response; returns the head length once complete (frames may follow it).
pub fn parse_upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HandshakeError::TooLong),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let accept = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"));
    let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
    match accept {
        Some(h) if h.value == want.as_bytes() => Ok(Some(len)),
        _ => Err(HandshakeError::BadAccept),
    }
}

/// Server side (baseline): finds the complete request head and its `Sec-WebSocket-Key`.
pub fn parse_upgrade_request(buf: &[u8]) -> Result<Option<(usize, String)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HandshakeError::TooLong),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .ok_or_else(|| HandshakeError::Malformed("no Sec-WebSocket-Key".into()))?;
    Ok(Some((len, key.trim().to_string())))
}

/// Server side (baseline): the 101 response for `key`.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// The close code carried by a close frame's payload (1005 "no status" when empty).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_roundtrip_through_tungstenite_headers() {
        let mut rng = Rng::new(7);
        for len in [0usize, 1, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut out = Vec::new();
            let mask = rng.mask();
            encode(&mut out, TEXT, &payload, Some(mask));
            let f = parse_frame(&out).unwrap().unwrap();
            assert_eq!(f.total_len(), out.len());
            assert_eq!(f.header.mask, Some(mask));
            assert!(f.header.is_final);
            let mut body = out[f.payload_start..].to_vec();
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
            // Truncated input is "not yet", never an error.
            for cut in [0, 1, f.payload_start, out.len() - 1] {
                if cut < out.len() {
                    assert!(parse_frame(&out[..cut]).unwrap().is_none(), "len {len} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn handshake_accept_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut req = Vec::new();
        upgrade_request(&mut req, "127.0.0.1:1", "/ws", key, Some("a.b.c"));
        let (n, k) = parse_upgrade_request(&req).unwrap().unwrap();
        assert_eq!((n, k.as_str()), (req.len(), key));
        let mut resp = upgrade_response(key);
        assert!(String::from_utf8_lossy(&resp).contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        let head = resp.len();
        resp.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_upgrade_response(&resp, key), Ok(Some(head)));
        assert_eq!(parse_upgrade_response(&resp[..10], key), Ok(None));
        assert_eq!(parse_upgrade_response(&resp, "other"), Err(HandshakeError::BadAccept));
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_upgrade_response(refused, key), Err(HandshakeError::Status(401)));
    }
}
