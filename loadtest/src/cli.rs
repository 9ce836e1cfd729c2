//! The command line: scenario subcommands and their options, and their validation into a `RunConfig`
//! (targets outside loopback refused unless --allow-remote). It parses and checks; it runs nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scenario::{ChurnPlan, Kind, Plan, RampBounds, Step};
use crate::server::SpawnOptions;
use crate::worker::AuthMode;

#[derive(Parser, Debug)]
#[command(
    name = "roomcast-loadtest",
    version,
    about = "Load tests for roomcast (WebSocket rooms, v1 contract): latency, loss and server cost",
    after_help = "Exit status: 0 when the run was clean, 2 when it saw loss, failed or dropped connections, 1 on error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(flatten)]
    Scenario(Scenario),
    /// Run one scenario against roomcast and against roomcast-baseline, and compare their cost.
    Compare(CompareArgs),
    /// Internal: a worker process (spec and control on stdin, JSON lines on stdout).
    #[command(name = "__worker", hide = true)]
    Worker,
    /// Internal: measure the receive path (frame parse, JSON scan, histograms) on one core.
    #[command(name = "__bench-recv", hide = true)]
    BenchRecv {
        #[arg(long, default_value_t = 5_000_000)]
        messages: u64,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N connections spread over R rooms, held open (heartbeats answered) for --duration.
    Idle(IdleArgs),
    /// R rooms of M members; P publishers send at a fixed total rate; everyone else receives.
    Fanout(FanoutArgs),
    /// Many small rooms; members take turns sending at a fixed rate per room.
    Chat(ChatArgs),
    /// Fanout at rising rates, step by step, until loss or p99 crosses a bound.
    Ramp(RampArgs),
    /// Connect, authenticate, join, leave and disconnect at a fixed rate.
    Churn(ChurnArgs),
}

impl Scenario {
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Idle(a) => &a.common,
            Scenario::Fanout(a) => &a.common,
            Scenario::Chat(a) => &a.common,
            Scenario::Ramp(a) => &a.common,
            Scenario::Churn(a) => &a.common,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The roomcast server: a path to the binary (a config is generated) or a full command line.
    #[arg(long)]
    pub roomcast: String,
    /// The baseline server (default: roomcast-baseline next to this binary).
    #[arg(long)]
    pub baseline: Option<String>,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 1)]
    pub rooms: u64,
    /// Members per room, publishers included.
    #[arg(long, default_value_t = 100)]
    pub members: u64,
    /// Publishers in all, spread over the rooms (at least one per room).
    #[arg(long, default_value_t = 1)]
    pub publishers: u64,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[arg(long, default_value_t = 100)]
    pub rooms: u64,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub members: u64,
    /// Messages per second in each room.
    #[arg(long, default_value_t = 1.0)]
    pub room_rate: f64,
    /// Members of each room that take turns sending (default: all of them).
    #[arg(long)]
    pub senders_per_room: Option<u64>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct RampArgs {
    #[arg(long, default_value_t = 1)]
    pub rooms: u64,
    #[arg(long, default_value_t = 100)]
    pub members: u64,
    #[arg(long, default_value_t = 1)]
    pub publishers: u64,
    /// Total send rates of the steps, in order.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400,800")]
    pub rates: Vec<f64>,
    /// Length of each step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub step: Duration,
    /// A step is clean while its p99 stays at or under this.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub max_p99: Duration,
    /// ... and its lost fraction of deliveries at or under this (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub max_loss: f64,
    /// Run every step even after one fails.
    #[arg(long)]
    pub no_early_stop: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Cycles per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Time between `joined` and `leave`.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Cycles in flight at most (due cycles beyond it are skipped and counted).
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: u64,
    /// Distinct users the cycles rotate through.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The server's WebSocket endpoint (ignored with --spawn-server).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Permit targets outside loopback (127.0.0.0/8, ::1). Only for servers you run yourself.
    #[arg(long)]
    pub allow_remote: bool,
    /// HS256 secret to mint a token per user.
    #[arg(long, env = "ROOMCAST_LT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Key id put in minted tokens' header.
    #[arg(long)]
    pub kid: Option<String>,
    /// A shell command that prints one token, used by every connection (instead of --secret).
    #[arg(long, conflicts_with = "secret")]
    pub token_cmd: Option<String>,
    /// How connections present their token.
    #[arg(long, value_enum, default_value_t = AuthMode::Header)]
    pub auth: AuthMode,
    /// Lifetime of minted tokens.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// Worker processes (each below the per-process open-file limit).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Event-loop threads per worker.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Source addresses to spread client sockets over: a range `127.0.0.2-127.0.0.9` or a list.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// New connections per second during setup, all workers together.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Handshakes in flight at most during setup, all workers together.
    #[arg(long, default_value_t = 256)]
    pub max_pending: u64,
    /// How long each step of a connection's setup (connect, upgrade, welcome, join) may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub phase_timeout: Duration,
    /// After the last send, how long to wait for outstanding deliveries.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Hard limit for the whole run, setup included (default: derived from the plan).
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Width of the buckets of the latency time series.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Padding added to each message body.
    #[arg(long, default_value_t = 32)]
    pub body_bytes: usize,
    /// Prefix of room names (default: `lt<random>-`, fresh per run).
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Prefix of user ids (`<prefix><n>`).
    #[arg(long, default_value = "lt")]
    pub user_prefix: String,
    /// Start the server: a path to roomcast or roomcast-baseline, or a whole command line
    /// that logs "listening on http://ADDR".
    #[arg(long)]
    pub spawn_server: Option<String>,
    /// Pin the spawned server to this CPU (the harness takes the others).
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Shards for a roomcast started from a bare path.
    #[arg(long, default_value_t = 1)]
    pub server_shards: u32,
    /// Sample this server process's CPU time and RSS (implied by --spawn-server).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (whatever --json says).
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write latency plots (time series and CDF) to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, PartialEq)]
pub enum ArgError {
    Url(String),
    Resolve(String),
    Remote(String),
    SourceIps(String),
    Invalid(String),
    Capacity(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Url(m) => write!(f, "--url: {m}"),
            ArgError::Resolve(m) => write!(f, "cannot resolve the target: {m}"),
            ArgError::Remote(m) => write!(
                f,
                "refusing to load {m}: it is not a loopback address (127.0.0.0/8, ::1); pass --allow-remote \
                 only for a server you run yourself"
            ),
            ArgError::SourceIps(m) => write!(f, "--source-ips: {m}"),
            ArgError::Invalid(m) => write!(f, "{m}"),
            ArgError::Capacity(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ArgError {}

/// Parses `500ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "us" => v / 1e6,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A parsed `ws://host:port/path` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct WsUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<WsUrl, ArgError> {
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("wss://") {
        return Err(ArgError::Url("wss:// (TLS) is not supported; test the plain listener".into()));
    } else {
        return Err(ArgError::Url(format!("{url:?} must start with ws://")));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(|| ArgError::Url("unclosed [ in host".into()))?;
        (h.to_string(), p.strip_prefix(':').unwrap_or(""))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (authority.to_string(), ""),
        }
    };
    if host.is_empty() {
        return Err(ArgError::Url("no host".into()));
    }
    let port =
        if port.is_empty() { 80 } else { port.parse().map_err(|_| ArgError::Url(format!("bad port {port:?}")))? };
    Ok(WsUrl { host, port, path: path.to_string() })
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Every address the target resolves to must be loopback unless remote targets are allowed.
pub fn check_target(addrs: &[SocketAddr], allow_remote: bool) -> Result<(), ArgError> {
    if addrs.is_empty() {
        return Err(ArgError::Resolve("no addresses".into()));
    }
    if !allow_remote && let Some(a) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(ArgError::Remote(a.to_string()));
    }
    Ok(())
}

/// `127.0.0.2-127.0.0.9`, `127.0.0.2,127.0.0.3`, or a mix.
pub fn parse_source_ips(s: &str, allow_remote: bool) -> Result<Vec<IpAddr>, ArgError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr =
                a.trim().parse().map_err(|_| ArgError::SourceIps(format!("{a:?} is not an IPv4 address")))?;
            let b: Ipv4Addr =
                b.trim().parse().map_err(|_| ArgError::SourceIps(format!("{b:?} is not an IPv4 address")))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a >= 65_536 {
                return Err(ArgError::SourceIps(format!("range {part} is empty or larger than 65536 addresses")));
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(part.parse().map_err(|_| ArgError::SourceIps(format!("{part:?} is not an IP address")))?);
        }
    }
    if out.is_empty() {
        return Err(ArgError::SourceIps("no addresses".into()));
    }
    if !allow_remote && let Some(ip) = out.iter().find(|ip| !is_loopback(**ip)) {
        return Err(ArgError::SourceIps(format!("{ip} is not a loopback address")));
    }
    Ok(out)
}

/// Where the load goes.
#[derive(Debug, Clone)]
pub enum Target {
    Url { url: WsUrl, addr: SocketAddr },
    Spawn(SpawnOptions),
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub plan: Plan,
    pub target: Target,
    pub auth: AuthMode,
    pub secret: Option<String>,
    pub kid: Option<String>,
    pub token_cmd: Option<String>,
    pub token_ttl: Duration,
    pub workers: u32,
    pub threads: u32,
    pub source_ips: Vec<IpAddr>,
    pub connect_rate: f64,
    pub max_pending: u64,
    pub phase_timeout: Duration,
    pub drain: Duration,
    pub deadline: Duration,
    pub server_cpu: Option<usize>,
    pub server_pid: Option<u32>,
    pub early_stop: bool,
    pub json: bool,
    pub json_out: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub quiet: bool,
}

fn positive(name: &str, v: f64) -> Result<f64, ArgError> {
    if v.is_finite() && v > 0.0 && v <= 10_000_000.0 {
        Ok(v)
    } else {
        Err(ArgError::Invalid(format!("{name} must be a positive number up to 10,000,000 (got {v})")))
    }
}

fn within(name: &str, v: u64, lo: u64, hi: u64) -> Result<u64, ArgError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ArgError::Invalid(format!("{name} must be between {lo} and {hi} (got {v})")))
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Turns a scenario's arguments into a checked plan and run configuration.
/// `spawn_override` replaces `--spawn-server` (for `compare`).
pub fn resolve(scenario: &Scenario, spawn_override: Option<&str>) -> Result<RunConfig, ArgError> {
    let common = scenario.common();
    let max_conns = 10_000_000;
    let one_step = |rate: f64, d: Duration| vec![Step { rate, duration_ms: ms(d) }];
    let (kind, connections, rooms, publishers, steps, churn, ramp) = match scenario {
        Scenario::Idle(a) => {
            let c = within("--connections", a.connections, 1, max_conns)?;
            let r = within("--rooms", a.rooms, 1, c)?;
            (Kind::Idle, c, r, 0, one_step(0.0, a.duration), None, None)
        }
        Scenario::Fanout(a) => {
            let r = within("--rooms", a.rooms, 1, max_conns)?;
            let m = within("--members", a.members, 2, max_conns)?;
            let c = within("rooms x members", r * m, 2, max_conns)?;
            let p = within("--publishers", a.publishers, r, c)?;
            (Kind::Fanout, c, r, p, one_step(positive("--rate", a.rate)?, a.duration), None, None)
        }
        Scenario::Chat(a) => {
            let r = within("--rooms", a.rooms, 1, max_conns)?;
            let m = within("--members", a.members, 2, max_conns)?;
            let c = within("rooms x members", r * m, 2, max_conns)?;
            let k = within("--senders-per-room", a.senders_per_room.unwrap_or(m), 1, m)?;
            let rate = positive("--room-rate", a.room_rate)? * r as f64;
            (Kind::Chat, c, r, k * r, one_step(rate, a.duration), None, None)
        }
        Scenario::Ramp(a) => {
            let r = within("--rooms", a.rooms, 1, max_conns)?;
            let m = within("--members", a.members, 2, max_conns)?;
            let c = within("rooms x members", r * m, 2, max_conns)?;
            let p = within("--publishers", a.publishers, r, c)?;
            if a.rates.is_empty() || a.rates.len() > 100 {
                return Err(ArgError::Invalid("--rates needs 1 to 100 steps".into()));
            }
            let mut steps = Vec::new();
            for &rate in &a.rates {
                steps.push(Step { rate: positive("--rates", rate)?, duration_ms: ms(a.step) });
            }
            if !(0.0..=1.0).contains(&a.max_loss) {
                return Err(ArgError::Invalid("--max-loss is a fraction between 0 and 1".into()));
            }
            let bounds = RampBounds { max_loss: a.max_loss, max_p99_us: a.max_p99.as_micros() as u64 };
            (Kind::Ramp, c, r, p, steps, None, Some(bounds))
        }
        Scenario::Churn(a) => {
            let r = within("--rooms", a.rooms, 1, max_conns)?;
            let churn = ChurnPlan {
                rate: positive("--rate", a.rate)?,
                hold_ms: ms(a.hold),
                max_inflight: within("--max-inflight", a.max_inflight, 1, 1_000_000)?,
                users: within("--users", a.users, 1, max_conns)?,
            };
            (Kind::Churn, 0, r, 0, one_step(0.0, a.duration), Some(churn), None)
        }
    };
    let total_ms: u64 = steps.iter().map(|s| s.duration_ms).sum();
    if total_ms == 0 {
        return Err(ArgError::Invalid("the duration must be longer than 0".into()));
    }
    if total_ms > 24 * 3600 * 1000 {
        return Err(ArgError::Invalid("a run may last 24 hours at most".into()));
    }
    let workers = within("--workers", u64::from(common.workers), 1, 64)? as u32;
    let threads = within("--threads", u64::from(common.threads), 1, 64)? as u32;
    let connect_rate = positive("--connect-rate", common.connect_rate)?;
    let max_pending = within("--max-pending", common.max_pending, 1, 1_000_000)?;
    let interval_ms = within("--interval", ms(common.interval), 10, 3_600_000)?;
    let body_bytes = within("--body-bytes", common.body_bytes as u64, 0, 60_000)? as usize;
    let valid_name = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "_.:@+-".contains(c));
    let room_prefix = match &common.room_prefix {
        Some(p) => p.clone(),
        None => format!("lt{:04x}-", (crate::sys::now_ns() >> 10) as u16),
    };
    if room_prefix.len() > 100 || !valid_name(&room_prefix) || room_prefix.starts_with("dm:") {
        return Err(ArgError::Invalid("--room-prefix: use up to 100 of [A-Za-z0-9_.:@+-], not dm:".into()));
    }
    if common.user_prefix.len() > 100
        || !common.user_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "_.@+-".contains(c))
    {
        return Err(ArgError::Invalid("--user-prefix: use up to 100 of [A-Za-z0-9_.@+-]".into()));
    }

    let spawn_cmd = spawn_override.map(str::to_string).or_else(|| common.spawn_server.clone());
    let target = match spawn_cmd {
        Some(command) => Target::Spawn(SpawnOptions {
            command,
            cpu: common.server_cpu,
            secret: common.secret.clone().unwrap_or_default(),
            kid: common.kid.clone(),
            shards: within("--server-shards", u64::from(common.server_shards), 1, 256)? as u32,
        }),
        None => {
            let url = parse_url(&common.url)?;
            let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
                .to_socket_addrs()
                .map_err(|e| ArgError::Resolve(format!("{}: {e}", url.host)))?
                .collect();
            check_target(&addrs, common.allow_remote)?;
            Target::Url { addr: addrs[0], url }
        }
    };
    if let Some(cpu) = common.server_cpu
        && cpu >= crate::sys::cpu_count()
    {
        return Err(ArgError::Invalid(format!(
            "--server-cpu {cpu}: this machine has {} CPUs",
            crate::sys::cpu_count()
        )));
    }
    let source_ips = match &common.source_ips {
        Some(s) => parse_source_ips(s, common.allow_remote)?,
        None => Vec::new(),
    };
    if let Target::Url { addr, .. } = &target
        && source_ips.iter().any(|ip| ip.is_ipv4() != addr.is_ipv4())
    {
        return Err(ArgError::SourceIps("source and target addresses must be of the same IP version".into()));
    }

    // Capacity: descriptors per worker process, source ports per source address.
    let per_worker = connections.div_ceil(u64::from(workers));
    let fd_limit = crate::sys::raise_open_file_limit();
    if per_worker + 64 > fd_limit {
        let need = connections.div_ceil(fd_limit.saturating_sub(64).max(1));
        return Err(ArgError::Capacity(format!(
            "{per_worker} connections per worker exceed the open-file limit ({fd_limit}); use --workers {need} or more"
        )));
    }
    let ports = crate::sys::ephemeral_ports();
    let sources = source_ips.len().max(1) as u64;
    if connections.div_ceil(sources) > ports {
        return Err(ArgError::Capacity(format!(
            "{connections} connections need more than {ports} source ports per address; spread them with \
             --source-ips (e.g. 127.0.0.2-127.0.0.{})",
            1 + connections.div_ceil(ports)
        )));
    }
    if matches!(common.auth, AuthMode::Header | AuthMode::Query | AuthMode::Frame)
        && common.secret.is_none()
        && common.token_cmd.is_none()
        && !matches!(target, Target::Spawn(_))
    {
        return Err(ArgError::Invalid("give --secret (or ROOMCAST_LT_SECRET) or --token-cmd, or --auth none".into()));
    }

    let setup_s = connections as f64 / connect_rate;
    let deadline = match common.deadline {
        Some(d) => d,
        None => Duration::from_secs_f64(
            setup_s * 2.0
                + common.phase_timeout.as_secs_f64() * 2.0
                + total_ms as f64 / 1000.0
                + common.drain.as_secs_f64()
                + 60.0,
        ),
    };
    let plan = Plan {
        kind,
        connections,
        rooms,
        publishers,
        steps,
        churn,
        ramp,
        body_bytes,
        room_prefix,
        user_prefix: common.user_prefix.clone(),
        interval_ms,
    };
    Ok(RunConfig {
        plan,
        target,
        auth: common.auth,
        secret: common.secret.clone(),
        kid: common.kid.clone(),
        token_cmd: common.token_cmd.clone(),
        token_ttl: common.token_ttl,
        workers,
        threads,
        source_ips,
        connect_rate,
        max_pending,
        phase_timeout: common.phase_timeout,
        drain: common.drain,
        deadline,
        server_cpu: common.server_cpu,
        server_pid: common.server_pid,
        early_stop: !matches!(scenario, Scenario::Ramp(a) if a.no_early_stop),
        json: common.json,
        json_out: common.json_out.clone(),
        plot: common.plot.clone(),
        quiet: common.quiet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(args: &[&str]) -> Scenario {
        let mut full = vec!["roomcast-loadtest"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Scenario(s) => s,
            _ => panic!("not a scenario"),
        }
    }

    #[test]
    fn remote_targets_are_refused_unless_allowed() {
        let s = scenario(&["fanout", "--url", "ws://10.1.2.3:8080/ws", "--secret", "x"]);
        assert_eq!(resolve(&s, None).unwrap_err(), ArgError::Remote("10.1.2.3:8080".into()));
        let s = scenario(&["idle", "--url", "ws://[2001:db8::1]:80/ws", "--secret", "x"]);
        assert!(matches!(resolve(&s, None), Err(ArgError::Remote(_))));
        let s = scenario(&["idle", "--url", "ws://127.0.0.5:9/ws", "--secret", "x"]);
        assert!(resolve(&s, None).is_ok());
        let s = scenario(&["idle", "--url", "ws://[::1]:9/ws", "--secret", "x"]);
        assert!(resolve(&s, None).is_ok());
        let s = scenario(&["idle", "--url", "ws://localhost:9/ws", "--secret", "x"]);
        assert!(resolve(&s, None).is_ok());
        // Allowed explicitly: no resolution needed beyond the literal address.
        let s = scenario(&["idle", "--url", "ws://10.1.2.3:9/ws", "--secret", "x", "--allow-remote"]);
        assert!(resolve(&s, None).is_ok());
        // Source addresses must be loopback too.
        let s = scenario(&["idle", "--url", "ws://127.0.0.1:9/ws", "--secret", "x", "--source-ips", "192.168.0.1"]);
        assert!(matches!(resolve(&s, None), Err(ArgError::SourceIps(_))));
    }

    #[test]
    fn urls_and_ranges_parse() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8080").unwrap(),
            WsUrl { host: "127.0.0.1".into(), port: 8080, path: "/ws".into() }
        );
        assert_eq!(parse_url("ws://[::1]:1/x?y=1").unwrap().path, "/x?y=1");
        assert!(matches!(parse_url("wss://127.0.0.1/ws"), Err(ArgError::Url(_))));
        assert!(matches!(parse_url("http://127.0.0.1/ws"), Err(ArgError::Url(_))));
        assert!(matches!(parse_url("ws://127.0.0.1:99999/ws"), Err(ArgError::Url(_))));
        let ips = parse_source_ips("127.0.0.2-127.0.0.9", false).unwrap();
        assert_eq!(ips.len(), 8);
        assert_eq!(ips[7], "127.0.0.9".parse::<IpAddr>().unwrap());
        assert!(parse_source_ips("127.0.0.9-127.0.0.2", false).is_err());
        assert!(parse_source_ips("127.0.0.1,::1", false).unwrap().len() == 2);
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn scenario_arguments_are_checked() {
        let bad = [
            vec!["fanout", "--members", "1"],
            vec!["fanout", "--rooms", "3", "--publishers", "2"],
            vec!["fanout", "--rate", "0"],
            vec!["fanout", "--rate", "NaN"],
            vec!["idle", "--connections", "5", "--rooms", "6"],
            vec!["chat", "--senders-per-room", "11"],
            vec!["ramp", "--max-loss", "2"],
            vec!["idle", "--duration", "0s"],
            vec!["idle", "--workers", "0"],
            vec!["idle", "--room-prefix", "bad room"],
        ];
        for args in bad {
            let mut a = args.clone();
            a.extend_from_slice(&["--url", "ws://127.0.0.1:1/ws", "--secret", "s"]);
            assert!(matches!(resolve(&scenario(&a), None), Err(ArgError::Invalid(_))), "{args:?} accepted");
        }
        let s = scenario(&["idle", "--url", "ws://127.0.0.1:1/ws"]);
        assert!(matches!(resolve(&s, None), Err(ArgError::Invalid(_))), "no credentials");
        let s =
            scenario(&["chat", "--rooms", "1000", "--members", "10", "--url", "ws://127.0.0.1:1/ws", "--auth", "none"]);
        let c = resolve(&s, None).unwrap();
        assert_eq!((c.plan.connections, c.plan.publishers, c.plan.steps[0].rate), (10_000, 10_000, 1000.0));
    }
}
