//! TLS configuration: the certificate chain and private key (PEM files) loaded into a rustls
//! server configuration with the ring provider. Loaded at start and on reload; no socket I/O.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug)]
pub enum TlsError {
    Pem { what: &'static str, path: PathBuf, reason: String },
    Rejected(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { what, path, reason } => write!(f, "tls.{what} {}: {reason}", path.display()),
            TlsError::Rejected(e) => write!(f, "tls: the certificate and key do not work together: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Reads the PEM files and builds the server configuration (HTTP/1.1 only: WebSocket and the
/// API share one listener).
pub fn load(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| pem_error("key", &config.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rejected)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error("cert", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("cert", path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "cert",
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    let reason = match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {what} found"),
        other => format!("not a valid PEM {what}: {other:?}"),
    };
    TlsError::Pem { what, path: path.to_path_buf(), reason }
}
