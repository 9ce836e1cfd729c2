//! The server under test as a process: start (pinned), find its address, sample CPU and RSS from /proc,
//! stop; it never speaks WebSocket and touches no process it did not start beyond reading /proc.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Lines of server output kept for the report.
const LOG_TAIL: usize = 20;
/// How long a started server may take to show its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// After this long without the "listening on" line, look the port up in /proc instead.
const PROC_FALLBACK_AFTER: Duration = Duration::from_millis(1500);

#[derive(Debug)]
pub enum ServerError {
    Spawn(String, std::io::Error),
    Exited { status: String, log: Vec<String> },
    NoAddress(Vec<String>),
    Config(std::io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Spawn(cmd, e) => write!(f, "cannot start server `{cmd}`: {e}"),
            ServerError::Exited { status, log } => {
                write!(f, "server exited during startup ({status}); its last output:\n{}", log.join("\n"))
            }
            ServerError::NoAddress(log) => write!(
                f,
                "server did not report a listening address within {START_TIMEOUT:?}; its last output:\n{}",
                log.join("\n")
            ),
            ServerError::Config(e) => write!(f, "cannot write a server config: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    /// A path to `roomcast` or `roomcast-baseline` (configured for you), or a whole command line.
    pub command: String,
    pub cpu: Option<usize>,
    /// HS256 secret and kid written into a generated roomcast config.
    pub secret: String,
    pub kid: Option<String>,
    pub shards: u32,
}

/// A server process this harness started.
pub struct Spawned {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub label: String,
    log: Arc<Mutex<VecDeque<String>>>,
    warnings: Arc<AtomicU64>,
    workdir: Option<PathBuf>,
}

/// What became of a started server.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerExit {
    /// How it ended after we asked it to stop: "exit 0", "signal 9", ...
    pub status: String,
    /// It had already ended before we asked (a crash).
    pub died_early: bool,
    /// Lines with WARN/ERROR it logged.
    pub warnings: u64,
    pub log_tail: Vec<String>,
}

fn is_baseline(cmd: &str) -> bool {
    Path::new(cmd).file_name().is_some_and(|n| n.to_string_lossy().contains("baseline"))
}

/// Builds the command line for `opts`: a lone path gets a generated config (roomcast) or a
/// loopback listen address (baseline); anything else runs as given through `sh -c exec`.
fn command_for(opts: &SpawnOptions) -> Result<(Command, Option<PathBuf>, String), ServerError> {
    let cmd = opts.command.trim();
    let lone_path = !cmd.contains(char::is_whitespace) && Path::new(cmd).is_file();
    if lone_path && is_baseline(cmd) {
        let mut c = Command::new(cmd);
        c.args(["--listen", "127.0.0.1:0"]);
        return Ok((c, None, "baseline".into()));
    }
    if lone_path {
        let dir =
            std::env::temp_dir().join(format!("roomcast-loadtest-{}-{}", std::process::id(), crate::sys::now_ns()));
        std::fs::create_dir_all(&dir).map_err(ServerError::Config)?;
        let kid = opts.kid.as_deref().map(|k| format!("kid = {}, ", toml_string(k))).unwrap_or_default();
        let config = format!(
            r#"[server]
listen = "127.0.0.1:0"
shards = {shards}
max_connections = {max_conns}
max_connections_per_ip = 1000000
heartbeat = "30s"
[auth]
keys = [{{ {kid}secret = {secret} }}]
[limits]
rate = 1000000
burst = 1000000
[history]
path = {db}
[admin]
socket = {sock}
[log]
level = "info"
"#,
            shards = opts.shards,
            // What one process can hold here (roomcast warns above its descriptor budget).
            max_conns = crate::sys::raise_open_file_limit().saturating_sub(100).max(1000),
            secret = toml_string(&opts.secret),
            db = toml_string(&dir.join("roomcast.db").to_string_lossy()),
            sock = toml_string(&dir.join("admin.sock").to_string_lossy()),
        );
        let path = dir.join("roomcast.toml");
        std::fs::write(&path, config).map_err(ServerError::Config)?;
        let mut c = Command::new(cmd);
        c.arg("serve").arg("--config").arg(&path);
        return Ok((c, Some(dir), "roomcast".into()));
    }
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("exec {cmd}"));
    let label = if is_baseline(cmd.split_whitespace().next().unwrap_or("")) { "baseline" } else { "server" };
    Ok((c, None, label.into()))
}

fn toml_string(s: &str) -> String {
    // TOML basic strings share JSON's escapes for everything we write.
    serde_json::Value::from(s).to_string()
}

/// Parses `... listening on http://ADDR (...)` from a log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let rest = rest.strip_prefix("http://").or_else(|| rest.strip_prefix("ws://")).unwrap_or(rest);
    let addr = rest.split(|c: char| c.is_whitespace() || c == '/').next()?;
    addr.parse().ok()
}

impl Spawned {
    pub fn start(opts: &SpawnOptions) -> Result<Spawned, ServerError> {
        let (mut cmd, workdir, label) = command_for(opts)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(cpu) = opts.cpu {
            // SAFETY: the hook only calls sched_setaffinity, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || crate::sys::set_affinity(&[cpu]));
            }
        }
        let mut child = cmd.spawn().map_err(|e| ServerError::Spawn(opts.command.clone(), e))?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let warnings = Arc::new(AtomicU64::new(0));
        let (addr_tx, addr_rx) = mpsc::channel();
        // Drain both pipes for the server's whole life so it never blocks on a full pipe.
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let warnings = warnings.clone();
            let addr_tx = addr_tx.clone();
            let _ = std::thread::Builder::new().name("lt-server-log".into()).spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = parse_listening(&line) {
                        let _ = addr_tx.send(addr);
                    }
                    if line.contains("WARN") || line.contains("ERROR") || line.contains("panicked") {
                        warnings.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut l) = log.lock() {
                        if l.len() == LOG_TAIL {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                }
            });
        }
        drop(addr_tx);
        let tail =
            |log: &Arc<Mutex<VecDeque<String>>>| log.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default();
        let started = Instant::now();
        let addr = loop {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(100)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(ServerError::Exited { status: describe(status), log: tail(&log) });
            }
            if started.elapsed() > PROC_FALLBACK_AFTER
                && let Some(addr) = listening_socket_of(pid)
            {
                break addr;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ServerError::NoAddress(tail(&log)));
            }
        };
        Ok(Spawned { child, pid, addr, label, log, warnings, workdir })
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after `grace`; reports how it ended.
    pub fn stop(mut self, grace: Duration) -> ServerExit {
        let died_early = !self.is_running();
        if !died_early {
            // SAFETY: kill(2) on the pid of a child we have not yet reaped.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break describe(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    break self
                        .child
                        .wait()
                        .map(|s| format!("{} (killed after {grace:?})", describe(s)))
                        .unwrap_or_default();
                }
            }
        };
        std::thread::sleep(Duration::from_millis(50));
        if let Some(dir) = self.workdir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        ServerExit {
            status,
            died_early,
            warnings: self.warnings.load(Ordering::Relaxed),
            log_tail: self.log.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default(),
        }
    }
}

fn describe(s: std::process::ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => s.to_string(),
    }
}

/// Finds a TCP socket in LISTEN state owned by `pid`, through /proc.
pub fn listening_socket_of(pid: u32) -> Option<SocketAddr> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                return parse_proc_addr(f[1], v6);
            }
        }
    }
    None
}

fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !v6 {
        let v = u32::from_str_radix(ip, 16).ok()?;
        return Some(SocketAddr::new(std::net::Ipv4Addr::from(v.swap_bytes()).into(), port));
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.swap_bytes().to_be_bytes());
    }
    Some(SocketAddr::new(std::net::Ipv6Addr::from(bytes).into(), port))
}

/// CPU time and memory of a process at one instant.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcSample {
    /// utime + stime, in microseconds.
    pub cpu_us: u64,
    pub rss_kib: u64,
    /// Unix ns when sampled.
    pub at_ns: u64,
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let cpu_us = ticks * 1_000_000 / crate::sys::clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { cpu_us, rss_kib, at_ns: crate::sys::now_ns() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_is_parsed() {
        let l = "2026-11-22T01:00:00.000Z INFO  roomcast listening on http://127.0.0.1:40123 (1 shards, pid 77)";
        assert_eq!(parse_listening(l), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(
            parse_listening("roomcast listening on http://[::1]:8080 (2 shards, pid 1)"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(parse_listening("nothing here"), None);
    }

    #[test]
    fn proc_addresses_decode() {
        assert_eq!(parse_proc_addr("0100007F:1F90", false), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0050", true), Some("[::1]:80".parse().unwrap()));
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
