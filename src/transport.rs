//! The bytes under a connection: a plain TCP socket, or TLS over one (rustls). Reads yield
//! plaintext and writes take plaintext; TLS records go to the socket as fast as it takes them.
//! It never blocks and never decides anything about the protocol above it.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;

/// Encrypted bytes rustls may hold for one connection before writes report "would block".
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    sock: TcpStream,
    tls: rustls::ServerConnection,
}

impl Transport {
    pub fn new(sock: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> Result<Transport, rustls::Error> {
        match tls {
            None => Ok(Transport::Plain(sock)),
            Some(config) => {
                let mut tls = rustls::ServerConnection::new(config.clone())?;
                tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                Ok(Transport::Tls(Box::new(TlsStream { sock, tls })))
            }
        }
    }

    /// The socket, for registering with the poller.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(sock) => sock,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Pushes TLS records rustls holds to the socket; returns whether some remain (the
    /// socket is full). Plain sockets hold nothing back.
    pub fn flush_records(&mut self) -> io::Result<bool> {
        let Transport::Tls(t) = self else { return Ok(false) };
        while t.tls.wants_write() {
            match t.tls.write_tls(&mut t.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Whether TLS records wait to be written (a handshake answer, say).
    pub fn has_pending_records(&self) -> bool {
        matches!(self, Transport::Tls(t) if t.tls.wants_write())
    }

    /// Ends our sending side: a TLS close_notify first, then FIN.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.tls.write_tls(&mut t.sock);
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(sock) => return sock.read(buf),
            Transport::Tls(t) => t,
        };
        loop {
            match t.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if t.tls.read_tls(&mut t.sock)? == 0 {
                return Ok(0);
            }
            if let Err(e) = t.tls.process_new_packets() {
                // Tell the peer why (the alert is queued), then fail the connection.
                let _ = t.tls.write_tls(&mut t.sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if let Transport::Plain(sock) = self {
            return sock.write_vectored(bufs);
        }
        // Records already encrypted go first, so rustls's buffer stays short.
        if self.flush_records()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Transport::Tls(t) = self else { return Ok(0) };
        let accepted = t.tls.writer().write_vectored(bufs)?;
        self.flush_records()?;
        if accepted == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records().map(|_| ())
    }
}
