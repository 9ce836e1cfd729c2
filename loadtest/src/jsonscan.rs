//! Allocation-free extraction of the few fields the harness reads from a server frame:
//! `type`, `seq`, `room`, `code`, and `t` inside `body`. It must not build a JSON tree or allocate.

/// What one frame said, borrowed from its payload. String values are raw (escapes not decoded);
/// every value the harness compares is plain ASCII by the contract's name rules.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    pub kind: &'a [u8],
    pub seq: Option<u64>,
    pub room: Option<&'a [u8]>,
    pub code: Option<&'a [u8]>,
    /// `body.t`: the sender's timestamp (unix nanoseconds) when the body is an object carrying it.
    pub t: Option<u64>,
    /// The raw text of the `body` value, whatever it is.
    pub body: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError(pub usize);

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed JSON near byte {}", self.0)
    }
}

impl std::error::Error for ScanError {}

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), ScanError> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(ScanError(self.i))
        }
    }

    /// A string starting at the cursor; returns its raw contents without the quotes.
    fn string(&mut self) -> Result<&'a [u8], ScanError> {
        self.expect(b'"')?;
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(&self.b[start..self.i - 1]);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        Err(ScanError(start))
    }

    fn number_u64(&mut self) -> Result<u64, ScanError> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if c.is_ascii_digit() {
                v = v.checked_mul(10).and_then(|v| v.checked_add(u64::from(c - b'0'))).ok_or(ScanError(start))?;
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i == start {
            return Err(ScanError(start));
        }
        // A fraction or exponent is not an integer we can use; skip it and report none.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            self.skip_scalar();
            return Err(ScanError(start));
        }
        Ok(v)
    }

    /// An unsigned integer, or `None` after skipping whatever other value stands there.
    fn u64_or_skip(&mut self) -> Result<Option<u64>, ScanError> {
        self.ws();
        let start = self.i;
        match self.number_u64() {
            Ok(v) => Ok(Some(v)),
            Err(_) if self.i > start => Ok(None),
            Err(_) => self.skip_value().map(|_| None),
        }
    }

    fn skip_scalar(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    /// Skips any value; returns its raw span.
    fn skip_value(&mut self) -> Result<&'a [u8], ScanError> {
        self.ws();
        let start = self.i;
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(&self.b[start..self.i]);
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                return Err(ScanError(start));
            }
            Some(_) => self.skip_scalar(),
            None => return Err(ScanError(start)),
        }
        if self.i == start { Err(ScanError(start)) } else { Ok(&self.b[start..self.i]) }
    }

    /// Walks the members of an object, calling `f(key, cursor)`; `f` must consume the value.
    fn object(&mut self, mut f: impl FnMut(&[u8], &mut Self) -> Result<(), ScanError>) -> Result<(), ScanError> {
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.expect(b':')?;
            f(key, self)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(ScanError(self.i)),
            }
        }
    }
}

/// Scans a top-level JSON object for the fields in [`Fields`].
pub fn scan(payload: &[u8]) -> Result<Fields<'_>, ScanError> {
    let mut c = Cur { b: payload, i: 0 };
    let mut out = Fields::default();
    c.object(|key, c| {
        match key {
            b"type" => out.kind = c.string()?,
            b"seq" => out.seq = c.u64_or_skip()?,
            b"room" => out.room = Some(c.string()?),
            b"code" => out.code = Some(c.string()?),
            b"body" => {
                c.ws();
                let start = c.i;
                if c.peek() == Some(b'{') {
                    c.object(|k, c| {
                        if k == b"t" {
                            out.t = c.u64_or_skip()?;
                            Ok(())
                        } else {
                            c.skip_value().map(|_| ())
                        }
                    })?;
                    out.body = Some(&c.b[start..c.i]);
                } else {
                    out.body = Some(c.skip_value()?);
                }
            }
            _ => {
                c.skip_value()?;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_message_fields_in_any_order() {
        let p = br#"{"type":"message","room":"r1","seq":42,"from":"u\"1","body":{"p":"x,}{","t":1700000000123456789},"ts":5}"#;
        let f = scan(p).unwrap();
        assert_eq!(f.kind, b"message");
        assert_eq!(f.seq, Some(42));
        assert_eq!(f.room, Some(&b"r1"[..]));
        assert_eq!(f.t, Some(1_700_000_000_123_456_789));
        assert_eq!(f.body, Some(&br#"{"p":"x,}{","t":1700000000123456789}"#[..]));
        let p = br#" { "ts" : 1 , "body" : [1,{"t":2}] , "seq" : 7 , "type" : "ack" } "#;
        let f = scan(p).unwrap();
        assert_eq!((f.kind, f.seq, f.t), (&b"ack"[..], Some(7), None));
        assert_eq!(f.body, Some(&b"[1,{\"t\":2}]"[..]));
    }

    #[test]
    fn tolerates_odd_values_and_rejects_garbage() {
        let f = scan(br#"{"type":"error","code":"rate_limited","seq":1.5,"x":null,"body":{"t":"s"},"y":true,"z":{}}"#)
            .unwrap();
        assert_eq!(f.code, Some(&b"rate_limited"[..]));
        assert_eq!(f.seq, None);
        assert_eq!(f.t, None);
        assert_eq!(scan(br#"{"seq":"7","type":"a"}"#).unwrap().kind, b"a");
        assert!(scan(b"").is_err());
        assert!(scan(b"{\"type\":").is_err());
        assert!(scan(b"{\"type\":\"x\"").is_err());
        assert!(scan(b"[1,2]").is_err());
        assert!(scan(b"{\"a\":{\"b\":[}").is_err());
        assert_eq!(scan(b"{}").unwrap(), Fields::default());
    }
}
