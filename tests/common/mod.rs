//! Helpers every integration test shares: start the real `roomcast` binary on an ephemeral port
//! with a temporary data directory, mint tokens, and talk to it through real sockets.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use roomcast::auth::{self, MintRequest};
use roomcast::config::KeyConfig;
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const KID: &str = "test";
/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Config sections a test adds, e.g. `&[("server", "shards = 1"), ("limits", "rate = 5")]`.
pub type Overrides<'a> = &'a [(&'a str, &'a str)];

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

/// A fresh empty directory under the target dir, removed by `Daemon`'s drop.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The test configuration: ephemeral port, files in `dir`, a known key, plus `extra`.
pub fn config_text(dir: &Path, extra: Overrides) -> String {
    let mut sections: Vec<(String, Vec<String>)> = vec![
        ("server".into(), vec![r#"listen = "127.0.0.1:0""#.into(), "shards = 2".into()]),
        ("auth".into(), vec![format!(r#"keys = [{{ kid = "{KID}", secret = "{SECRET}" }}]"#)]),
        ("history".into(), vec![format!("path = {:?}", dir.join("roomcast.db"))]),
        ("admin".into(), vec![format!("socket = {:?}", dir.join("admin.sock"))]),
        ("log".into(), vec![r#"level = "debug""#.into()]),
    ];
    for (section, line) in extra {
        let key = line.split('=').next().unwrap_or("").trim();
        match sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, lines)) => {
                lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
                lines.push(line.to_string());
            }
            None => sections.push((section.to_string(), vec![line.to_string()])),
        }
    }
    sections.iter().map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n"))).collect::<Vec<_>>().join("\n")
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    pub fn start_with(extra: Overrides) -> Daemon {
        let dir = temp_dir("daemon");
        Daemon::start_in(dir, extra)
    }

    /// Starts on an existing data directory (e.g. after a restart).
    pub fn start_in(dir: PathBuf, extra: Overrides) -> Daemon {
        Daemon::start_env(dir, extra, &[])
    }

    /// Starts with extra environment variables (e.g. NOTIFY_SOCKET).
    pub fn start_env(dir: PathBuf, extra: Overrides, env: &[(&str, &str)]) -> Daemon {
        let config_path = dir.join("roomcast.toml");
        std::fs::write(&config_path, config_text(&dir, extra)).expect("write config");
        let config = config_path.to_str().expect("utf-8 path").to_string();
        let mut d = Daemon::spawn_env(&dir, &["serve", "--config", &config], env);
        d.config_path = config_path;
        d.wait_until_listening();
        d
    }

    /// Runs `roomcast <args>` in `dir` without waiting for anything.
    pub fn spawn(dir: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn_env(dir, args, &[])
    }

    pub fn spawn_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start roomcast");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, cond) = &*sink;
                lines.lock().unwrap().push(line);
                cond.notify_all();
            }
        });
        let addr = "0.0.0.0:0".parse().expect("placeholder address");
        Daemon { child, addr, dir: dir.to_path_buf(), config_path: PathBuf::new(), log }
    }

    /// Waits for the "listening on" line and records the address.
    pub fn wait_until_listening(&mut self) {
        let line = self.wait_for_log("listening on http");
        let addr = line.split("://").nth(1).and_then(|s| s.split_whitespace().next()).expect("address");
        self.addr = addr.parse().expect("socket address");
    }

    /// Waits until a log line contains `needle`; panics with the log on timeout.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let (lines, cond) = &*self.log;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(l) = guard.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("no log line containing {needle:?}; log:\n{}", guard.join("\n"));
            }
            guard = cond.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.0.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY-free: `kill` from libc on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "daemon did not exit; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects with a token in the Authorization header and reads the welcome.
    pub fn client(&self, user: &str) -> Client {
        let mut c = Client::connect_with(self, "/ws", &[("Authorization", &format!("Bearer {}", token(user)))])
            .expect("connect");
        let welcome = c.recv_type("welcome");
        assert_eq!(welcome["user"], user);
        c
    }

    /// Runs `roomcast admin --config <ours> <command>`: (exit success, reply JSON).
    pub fn admin(&self, command: &str) -> (bool, Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["admin", "--config"])
            .arg(&self.config_path)
            .args(command.split(' '))
            .output()
            .expect("run roomcast admin");
        let reply = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("admin {command}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), reply)
    }

    /// `/stats` as JSON.
    pub fn stats(&self) -> Value {
        let (status, body) = http_get(self.addr, "/stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("stats JSON")
    }

    /// Keeps the data directory (for a restart) and stops the process with SIGKILL.
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::take(&mut self.dir);
        std::mem::forget(self);
        dir
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn key() -> KeyConfig {
    KeyConfig { kid: KID.into(), secret: SECRET.as_bytes().to_vec() }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A one-hour token for `user` with default rooms.
pub fn token(user: &str) -> String {
    token_with(user, None, None, None)
}

pub fn token_with(user: &str, rooms: Option<&[String]>, role: Option<&str>, name: Option<&str>) -> String {
    let req = MintRequest { sub: user, name, rooms, role, ttl: Some(Duration::from_secs(3600)), now_unix: now_unix() };
    auth::mint(&key(), &req)
}

pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Opens a WebSocket with extra request headers; Err carries the HTTP status on refusal.
    pub fn connect_with(d: &Daemon, path: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let stream = TcpStream::connect(d.addr).expect("tcp connect");
        Client::connect_over(stream, d, path, headers)
    }

    /// Like `connect_with`, over a socket the test prepared (e.g. with a tiny receive buffer).
    pub fn connect_over(stream: TcpStream, d: &Daemon, path: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let mut req = d.url(path).into_client_request().unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .insert(tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        stream.set_read_timeout(Some(WAIT)).unwrap();
        match tungstenite::client::client(req, MaybeTlsStream::Plain(stream)) {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
            Err(e) => panic!("handshake: {e}"),
        }
    }

    /// Connects without a token; the welcome has `user: null`.
    pub fn anonymous(d: &Daemon) -> Client {
        let mut c = Client::connect_with(d, "/ws", &[]).expect("connect");
        let welcome = c.recv_type("welcome");
        assert!(welcome["user"].is_null());
        c
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next JSON text frame (skipping pings); panics on timeout or close.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).expect("server sent JSON"),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(e) => panic!("expected a text frame, got error {e}"),
            }
        }
    }

    /// Skips frames until one of `type`; panics after WAIT.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Sends a request and returns the next frame of `reply_type`, skipping events; an
    /// `error` frame when something else was expected fails the test.
    pub fn request(&mut self, v: Value, reply_type: &str) -> Value {
        self.send(v.clone());
        loop {
            let reply = self.recv();
            if reply["type"] == reply_type {
                return reply;
            }
            assert!(reply["type"] != "error", "{v} got {reply}");
        }
    }

    pub fn join(&mut self, room: &str) -> Value {
        self.request(json!({"type": "join", "room": room}), "joined")
    }

    /// Sends a message and returns its ack.
    pub fn say(&mut self, room: &str, body: Value) -> Value {
        let ack = self.request(json!({"type": "send", "room": room, "body": body}), "ack");
        assert!(ack["seq"].as_u64().is_some(), "{ack}");
        ack
    }

    /// Reads until the server closes; returns the close code (None if the socket just dropped).
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|f: CloseFrame| u16::from(f.code)),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return None,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("timed out waiting for close")
                }
                Err(_) => return None,
            }
        }
    }

    /// Asserts nothing arrives within `d` (used only where absence is the point).
    pub fn expect_silence(&mut self, d: Duration) {
        if let MaybeTlsStream::Plain(s) = self.ws.get_mut() {
            s.set_read_timeout(Some(d)).unwrap();
        }
        match self.ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(m) => panic!("expected silence, got {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("expected silence, got error {e}"),
        }
        if let MaybeTlsStream::Plain(s) = self.ws.get_mut() {
            s.set_read_timeout(Some(WAIT)).unwrap();
        }
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
}

/// Sends raw request bytes on a new connection and reads one response; returns (status, body).
pub fn http_raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut s);
    (status, body)
}

/// Reads one HTTP response (head, then a Content-Length body): (status, head, body).
pub fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return (0, String::from_utf8_lossy(&head).into_owned(), String::new()),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("response body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `f` until it returns Some, or panics after WAIT.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
