//! The built-in browser client (`web/`) end to end: the real daemon, Debian's headless Chromium
//! driven by Playwright (`tests/browser/e2e.mjs`), two users on two pages, and a daemon restart
//! on the same port in the middle that both pages must ride out by themselves.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`), Node.js 20+ and `npm ci` in
//! `tests/browser`. A missing piece fails the test with the command that installs it: it is
//! never skipped. `ROOMCAST_SCREENSHOT=docs/screenshot.png` also refreshes the README picture.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Daemon, token_with};
use serde_json::{Value, json};

/// The whole script, browser start to finish; it normally takes well under a minute.
const TIMEOUT: Duration = Duration::from_secs(180);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium_path() -> String {
    std::env::var("ROOMCAST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Fails, never skips, when something the browser test needs is not installed.
fn require_tools() {
    let chromium = chromium_path();
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} not found: the browser test needs Debian's Chromium (`apt-get install -y chromium`)"
    );
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(playwright.is_file(), "playwright-core is not installed: run `npm ci` in tests/browser");
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "`node --version` failed ({node:?}): the browser test needs Node.js 20 or later on PATH"
    );
}

/// The node process; if the test ends early it is stopped, and Playwright closes Chromium.
struct Script {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Script {
    fn output(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "e2e.mjs did not exit in time; its output:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: `kill` on the pid of our own child, which has not been reaped yet. SIGTERM
        // first, because Playwright closes the browser on it; SIGKILL if that does not do.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the daemon's data directory however the test ends (a killed daemon leaves it).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn reply(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("write to e2e.mjs");
}

fn client_as(daemon: &Daemon, user: &str, name: &str) -> Client {
    let token = token_with(user, None, None, Some(name));
    let mut client = Client::connect_with(daemon, "/ws", &[("Authorization", &format!("Bearer {token}"))])
        .unwrap_or_else(|status| panic!("{user} refused with HTTP {status}"));
    assert_eq!(client.recv_type("welcome")["user"], user);
    client
}

/// Every message seq in a room, as the server's history has it (deleted ones included).
fn history_seqs(client: &mut Client, room: &str) -> Vec<u64> {
    let page = client.request(json!({"type": "history", "room": room, "limit": 500}), "history");
    assert_eq!(page["more"], false, "{room} has more than one page");
    page["messages"].as_array().expect("messages").iter().map(|m: &Value| m["seq"].as_u64().expect("seq")).collect()
}

#[test]
fn two_pages_chat_and_ride_out_a_daemon_restart() {
    require_tools();
    let first = Daemon::start();
    let data_dir = first.dir.clone();
    let _cleanup = RemoveDir(data_dir.clone());
    let addr = first.addr;
    let mut daemon = Some(first);
    let screenshot = match std::env::var_os("ROOMCAST_SCREENSHOT") {
        Some(path) => std::path::absolute(path).expect("absolute screenshot path"),
        None => data_dir.join("screenshot.png"),
    };

    let mut child = Command::new("node")
        .arg(browser_dir().join("e2e.mjs"))
        .arg(format!("http://{addr}"))
        .arg(token_with("alice", None, None, Some("Alice")))
        .arg(token_with("bob", None, None, Some("Bob")))
        .arg("--screenshot")
        .arg(&screenshot)
        .env("ROOMCAST_CHROMIUM", chromium_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let (stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut script = Script { child, log: Arc::default() };
    let log = script.log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Serve the script's requests until it closes its stdout (it has finished).
    let deadline = Instant::now() + TIMEOUT;
    let mut shown: Vec<(String, Vec<u64>)> = Vec::new();
    let mut carol = None;
    loop {
        let line = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("e2e.mjs timed out; its output:\n{}", script.output()),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["KILL"] => {
                daemon.take().expect("a daemon to kill").kill();
                reply(&mut stdin, "KILLED");
            }
            ["START"] => {
                // First an interlude on another port, where the pages cannot reach it: carol
                // posts, so the message is surely stored while both pages are disconnected and
                // only their `since` resume can bring it.
                let interlude = Daemon::start_in(data_dir.clone(), &[]);
                assert_ne!(interlude.addr, addr);
                let mut c = client_as(&interlude, "carol", "Carol");
                c.join("lobby");
                let ack = c.say("lobby", json!({"text": "Back online after the restart."}));
                drop(c);
                interlude.kill();
                // Then the daemon proper, back on the pages' address.
                let listen = format!("listen = \"127.0.0.1:{}\"", addr.port());
                let restarted = Daemon::start_in(data_dir.clone(), &[("server", &listen)]);
                assert_eq!(restarted.addr, addr, "the daemon came back on another address");
                let mut c = client_as(&restarted, "carol", "Carol");
                c.join("lobby");
                carol = Some(c); // stays in the room, so the pages list three people
                daemon = Some(restarted);
                reply(&mut stdin, &format!("STARTED {}", ack["seq"]));
            }
            ["ROOM", room, seqs @ ..] => {
                let seqs = seqs.iter().map(|s| s.parse().expect("seq")).collect();
                shown.push((room.to_string(), seqs));
            }
            _ => panic!("unexpected line from e2e.mjs: {line:?}; its output:\n{}", script.output()),
        }
    }
    let status = script.wait(deadline);
    let output = script.output();
    assert!(status.success(), "e2e.mjs failed ({status}); its output:\n{output}");
    eprintln!("{output}");

    // What both pages showed must be exactly what the server stored: nothing lost, nothing extra.
    let daemon = daemon.expect("the daemon is running again");
    let rooms: Vec<&str> = shown.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rooms, ["lobby", "random", "dm:alice:bob"]);
    let mut alice = client_as(&daemon, "alice", "Alice");
    for (room, seqs) in &shown {
        assert_eq!(seqs, &history_seqs(&mut alice, room), "the pages and the history of {room} differ");
    }
    assert!(shown[0].1.len() >= 4, "lobby should hold at least four messages: {:?}", shown[0].1);

    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a real screenshot: {} bytes", png.len());
    drop(carol);
}
