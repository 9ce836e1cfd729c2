//! The built-in browser client, embedded in the binary: its files, their content types, a strict
//! Content-Security-Policy and ETag revalidation. It serves bytes; it knows nothing of the protocol.

use std::sync::OnceLock;

use crate::http::Response;

/// Only our own files and our own origin (`connect-src 'self'` covers ws:// and wss://).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_bytes!("../web/index.html") },
    Asset {
        path: "/client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/client.js"),
    },
    Asset { path: "/client.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../web/client.css") },
];

/// The response for a GET of an embedded file, or `None` if `path` is not one.
pub fn response(path: &str, if_none_match: Option<&str>) -> Option<Response> {
    let (i, asset) = ASSETS.iter().enumerate().find(|(_, a)| a.path == path)?;
    let etag = &etags()[i];
    let fresh = if_none_match.is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let response = if fresh {
        Response::new(304, asset.content_type, Vec::new())
    } else {
        Response::new(200, asset.content_type, asset.body)
    };
    Some(
        response
            .with("ETag", etag.as_str())
            // Revalidate every time: a new daemon version serves new files under the same names.
            .with("Cache-Control", "no-cache")
            .with("Content-Security-Policy", CSP)
            .with("X-Content-Type-Options", "nosniff")
            .with("Referrer-Policy", "no-referrer"),
    )
}

/// A strong ETag per file: a prefix of its SHA-256, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = ring::digest::digest(&ring::digest::SHA256, a.body);
                let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_files_with_csp_and_revalidates() {
        let page = response("/", None).unwrap().encode(true);
        let text = String::from_utf8_lossy(&page);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/html"));
        assert!(text.contains("Content-Security-Policy: default-src 'none'"));
        let etag = text.lines().find_map(|l| l.strip_prefix("ETag: ")).unwrap().to_string();
        let again = response("/", Some(&etag)).unwrap().encode(true);
        assert!(again.starts_with(b"HTTP/1.1 304 Not Modified\r\n"));
        assert!(response("/client.js", None).is_some());
        assert!(response("/nope", None).is_none());
    }
}
