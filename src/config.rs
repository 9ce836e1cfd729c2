//! Owns the TOML configuration: parsing, defaults, validation, and the local HS256 key file.
//! Does no network I/O beyond resolving a `listen` host name, starts nothing, never logs a secret.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{LevelFilter, warn};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// 0 = one shard per CPU core, the right size for most hosts.
const DEFAULT_SHARDS: usize = 0;
/// Contract ceiling; also bounds what `available_parallelism` reports on huge hosts.
const MAX_SHARDS: usize = 128;
const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 10_000;
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Below this the shards would spend their time pinging instead of relaying.
const MIN_HEARTBEAT_MS: u64 = 10;
/// A zero timeout would expire every handshake or auth step before it could start.
const MIN_TIMEOUT_MS: u64 = 1;
const DEFAULT_ECHO: bool = false;
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUIRE_EXP: bool = true;
const DEFAULT_ALLOW_QUERY_TOKEN: bool = true;
/// "*" grants every room, so a fresh install works before rooms are planned.
const DEFAULT_ROOM: &str = "*";
/// RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output.
const MIN_SECRET_BYTES: usize = 32;
const DEFAULT_MAX_FRAME_BYTES: usize = 65_536;
/// Smaller frames could not carry a protocol envelope plus any body.
const MIN_FRAME_BYTES: u16 = 128;
const DEFAULT_MAX_BODY_BYTES: usize = 8_192;
const DEFAULT_RATE: u32 = 50;
const DEFAULT_BURST: u32 = 100;
const DEFAULT_MAX_OUTBOUND_BYTES: usize = 1_048_576;
/// Below this one full control reply could overflow a healthy client's queue.
const MIN_OUTBOUND_BYTES: u16 = 4_096;
const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 100;
const DEFAULT_HISTORY_PATH: &str = "./data/roomcast.db";
const DEFAULT_SYNCHRONOUS: Synchronous = Synchronous::Normal;
const DEFAULT_MAX_REPLAY: usize = 1_000;
/// 0 turns that retention rule off: history is kept.
const DEFAULT_RETENTION: u64 = 0;
const DEFAULT_ADMIN_SOCKET: &str = "./data/admin.sock";
/// `sun_path` is 108 bytes on Linux including the NUL; longer paths would only fail at bind.
const MAX_SOCKET_PATH_BYTES: usize = 107;
const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;
const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
const SYNCHRONOUS_NAMES: [(&str, Synchronous); 2] = [("normal", Synchronous::Normal), ("full", Synchronous::Full)];
const LOG_FORMAT_NAMES: [(&str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];
/// Lowercase only, like the other choices; log's own parser would also take "INFO".
const LOG_LEVEL_NAMES: [(&str, LevelFilter); 6] = [
    ("off", LevelFilter::Off),
    ("error", LevelFilter::Error),
    ("warn", LevelFilter::Warn),
    ("info", LevelFilter::Info),
    ("debug", LevelFilter::Debug),
    ("trace", LevelFilter::Trace),
];
const KEY_FILE_NAME: &str = "hs256.key";
const LOCAL_KID: &str = "local";
const GENERATED_KEY_BYTES: usize = 32;
/// Anyone who can read the key can mint tokens.
const KEY_FILE_MODE: u32 = 0o600;
/// Another process may have created the key file but not yet written it.
const KEY_RACE_RETRIES: u32 = 50;
const KEY_RACE_PAUSE: Duration = Duration::from_millis(10);
/// Keeps a key file replaced by something huge (a log, a device) from being slurped.
const MAX_KEY_FILE_BYTES: u64 = 4_096;

/// The validated configuration of one roomcast process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    /// `None` when the file has no `[tls]` section: plain TCP.
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub history: HistoryConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// `[server]`: where clients connect and how many may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// 0 = one per CPU core; [`Config::shard_count`] resolves it.
    pub shards: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    pub heartbeat: Duration,
    /// Empty = any Origin.
    pub allowed_origins: Vec<String>,
    pub echo: bool,
    /// How long `drain` keeps serving existing connections before closing them with 1001.
    pub drain_grace: Duration,
}

/// `[tls]`: PEM files; both are required once the section is present.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(deserialize_with = "path")]
    pub cert: PathBuf,
    #[serde(deserialize_with = "path")]
    pub key: PathBuf,
}

/// `[auth]`: how connections prove who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Empty until [`Config::resolve_keys`] supplies the generated local key.
    pub keys: Vec<KeyConfig>,
    pub timeout: Duration,
    pub require_exp: bool,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub default_rooms: Vec<String>,
    pub allow_query_token: bool,
    /// Name of a cookie that carries the token.
    pub cookie: Option<String>,
}

/// One HS256 verification key; kid "" is the key for tokens without a `kid` header.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default)]
    pub kid: String,
    #[serde(deserialize_with = "secret")]
    pub secret: Vec<u8>,
}

// Configs get logged; a secret must never reach a log line.
impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = format_args!("<redacted>");
        f.debug_struct("KeyConfig").field("kid", &self.kid).field("secret", &redacted).finish()
    }
}

/// `[limits]`: per-connection ceilings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub rate: u32,
    pub burst: u32,
    pub max_outbound_bytes: usize,
    pub max_rooms_per_connection: usize,
}

/// `[history]`: the message store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub max_replay: usize,
    /// 0 = keep all.
    pub retention_per_room: u64,
    /// 0 = keep all.
    pub retention_days: u64,
}

/// SQLite `synchronous`: `Full` fsyncs every commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    Normal,
    Full,
}

/// `[admin]`: the local control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub socket: PathBuf,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: LevelFilter,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        RawConfig::default().into_config()
    }
}

/// Why a configuration could not be loaded; `Display` is always one line.
#[derive(Debug)]
pub enum ConfigError {
    /// The configuration file could not be read.
    Read { file: String, source: io::Error },
    /// A problem at a known place in the file: syntax, unknown key, wrong type, bad value.
    At { file: String, line: usize, col: usize, reason: String },
    /// A problem with no single position, such as a check across several keys.
    Invalid { file: String, reason: String },
    /// A filesystem step of [`Config::resolve_keys`] failed.
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The key file is unusable, or no key could be generated.
    KeyFile { path: PathBuf, reason: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { file, source } => write!(f, "{file}: cannot read: {source}"),
            Self::At { file, line, col, reason } => write!(f, "{file}:{line}:{col}: {reason}"),
            Self::Invalid { file, reason } => write!(f, "{file}: {reason}"),
            Self::Io { action, path, source } => {
                write!(f, "cannot {action} {}: {source}", path.display())
            }
            Self::KeyFile { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

// No `source()`: Display already carries the cause, and chain printers would repeat it.
impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates TOML text; `source` names the file in error messages.
    pub fn from_toml(text: &str, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(source, text, e))?;
        let config = raw.into_config();
        cross_check(&config).map_err(|reason| invalid(source, reason))?;
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, &file),
            Err(source) => Err(ConfigError::Read { file, source }),
        }
    }

    /// `server.shards`, with 0 resolved to the number of CPU cores (capped at 128).
    pub fn shard_count(&self) -> usize {
        let wanted = match self.server.shards {
            // One shard always works when the core count cannot be learned.
            0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => n,
        };
        wanted.min(MAX_SHARDS)
    }

    /// Directory holding the history database (parent of `history.path`; "." when it has none).
    pub fn data_dir(&self) -> PathBuf {
        match self.history.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// When `auth.keys` is empty, uses `<data_dir>/hs256.key` (created with a random key if
    /// missing) as the single key, kid "local".
    pub fn resolve_keys(&mut self) -> Result<(), ConfigError> {
        if !self.auth.keys.is_empty() {
            return Ok(());
        }
        let dir = self.data_dir();
        fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
        let path = dir.join(KEY_FILE_NAME);
        let secret = match path.try_exists() {
            Ok(true) => read_key_file(&path)?,
            Ok(false) => create_key_file(&path)?,
            Err(e) => return Err(io_error("inspect", &path, e)),
        };
        warn_if_exposed(&path);
        self.auth.keys = vec![KeyConfig { kid: LOCAL_KID.to_owned(), secret }];
        Ok(())
    }

    /// Applies `serve --listen`; every address is valid.
    pub fn set_listen(&mut self, addr: SocketAddr) {
        self.server.listen = addr;
    }
}

/// "500ms", "5s", "2m", "1h", "1d": an unsigned integer followed by a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let expected = "expected an integer followed by ms, s, m, h or d, like \"5s\"";
    if digits.is_empty() || unit.is_empty() {
        return Err(format!("invalid duration {s:?}: {expected}"));
    }
    let too_large = || format!("duration {s:?} is too large");
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    let seconds_per_unit: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!("invalid duration {s:?}: unknown unit {unit:?}; {expected}"));
        }
    };
    n.checked_mul(seconds_per_unit).map(Duration::from_secs).ok_or_else(too_large)
}

fn invalid(file: &str, reason: String) -> ConfigError {
    let file = file.to_owned();
    ConfigError::Invalid { file, reason }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> ConfigError {
    ConfigError::Io { action, path: path.to_path_buf(), source }
}

/// Reduces toml's multi-line report (with a code snippet) to `FILE:LINE:COL: key: message`.
fn toml_error(file: &str, text: &str, mut e: toml::de::Error) -> ConfigError {
    // Without the input, toml's Display drops the snippet and names the key path instead:
    // "message\nin `server.heartbeat`". Only that text exposes the path.
    e.set_input(None);
    let shown = e.to_string();
    let mut lines = shown.lines();
    let message = lines.next().unwrap_or_default();
    let reason = match lines.find_map(|l| l.strip_prefix("in `")?.strip_suffix('`')) {
        Some(key) => format!("{key}: {message}"),
        None => message.to_owned(),
    };
    let Some(span) = e.span() else {
        return invalid(file, reason);
    };
    let (line, col) = line_col(text, span.start);
    let file = file.to_owned();
    ConfigError::At { file, line, col, reason }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (before.matches('\n').count() + 1, col)
}

/// Checks that involve more than one key, so no single position fits.
fn cross_check(config: &Config) -> Result<(), String> {
    let limits = &config.limits;
    if limits.max_body_bytes > limits.max_frame_bytes {
        return Err(format!(
            "limits.max_body_bytes ({}) must not exceed limits.max_frame_bytes ({})",
            limits.max_body_bytes, limits.max_frame_bytes
        ));
    }
    let keys = &config.auth.keys;
    for (second, key) in keys.iter().enumerate() {
        if let Some(first) = keys[..second].iter().position(|k| k.kid == key.kid) {
            let kid = &key.kid;
            return Err(format!(
                "auth.keys[{first}] and auth.keys[{second}] both have kid {kid:?}; kids must be \
                 unique"
            ));
        }
    }
    Ok(())
}

/// RFC 6265 cookie-name = RFC 2616 token: visible ASCII except separators.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

// Phase 1: the file as written. Every key is optional and unknown keys are refused. Values that
// can be judged alone are checked here, while toml still knows their position and key path.

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    tls: Option<TlsConfig>,
    auth: RawAuth,
    limits: RawLimits,
    history: RawHistory,
    admin: RawAdmin,
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawServer {
    #[serde(deserialize_with = "listen")]
    listen: Option<SocketAddr>,
    #[serde(deserialize_with = "shards")]
    shards: Option<usize>,
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    max_connections: Option<usize>,
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    max_connections_per_ip: Option<usize>,
    #[serde(deserialize_with = "duration::<_, MIN_TIMEOUT_MS>")]
    handshake_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration::<_, MIN_HEARTBEAT_MS>")]
    heartbeat: Option<Duration>,
    allowed_origins: Option<Vec<String>>,
    echo: Option<bool>,
    #[serde(deserialize_with = "duration::<_, 0>")]
    drain_grace: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAuth {
    keys: Option<Vec<KeyConfig>>,
    #[serde(deserialize_with = "duration::<_, MIN_TIMEOUT_MS>")]
    timeout: Option<Duration>,
    require_exp: Option<bool>,
    issuer: Option<String>,
    audience: Option<String>,
    default_rooms: Option<Vec<String>>,
    allow_query_token: Option<bool>,
    #[serde(deserialize_with = "cookie")]
    cookie: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawLimits {
    #[serde(deserialize_with = "at_least::<_, _, MIN_FRAME_BYTES>")]
    max_frame_bytes: Option<usize>,
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    max_body_bytes: Option<usize>,
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    rate: Option<u32>,
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    burst: Option<u32>,
    #[serde(deserialize_with = "at_least::<_, _, MIN_OUTBOUND_BYTES>")]
    max_outbound_bytes: Option<usize>,
    #[serde(deserialize_with = "at_least::<_, _, 1>")]
    max_rooms_per_connection: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawHistory {
    #[serde(deserialize_with = "optional_path")]
    path: Option<PathBuf>,
    #[serde(deserialize_with = "synchronous")]
    synchronous: Option<Synchronous>,
    max_replay: Option<usize>,
    retention_per_room: Option<u64>,
    retention_days: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAdmin {
    #[serde(deserialize_with = "socket_path")]
    socket: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    #[serde(deserialize_with = "log_level")]
    level: Option<LevelFilter>,
    #[serde(deserialize_with = "log_format")]
    format: Option<LogFormat>,
}

// Phase 2: defaults fill whatever the file left out. An empty issuer, audience or cookie means
// unset, which is also their default.
impl RawConfig {
    fn into_config(self) -> Config {
        let RawConfig { server: s, tls, auth: a, limits: l, history: h, admin, log } = self;
        Config {
            server: ServerConfig {
                listen: s.listen.unwrap_or(DEFAULT_LISTEN),
                shards: s.shards.unwrap_or(DEFAULT_SHARDS),
                max_connections: s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
                max_connections_per_ip: s.max_connections_per_ip.unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
                handshake_timeout: s.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
                heartbeat: s.heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
                allowed_origins: s.allowed_origins.unwrap_or_default(),
                echo: s.echo.unwrap_or(DEFAULT_ECHO),
                drain_grace: s.drain_grace.unwrap_or(DEFAULT_DRAIN_GRACE),
            },
            tls,
            auth: AuthConfig {
                keys: a.keys.unwrap_or_default(),
                timeout: a.timeout.unwrap_or(DEFAULT_AUTH_TIMEOUT),
                require_exp: a.require_exp.unwrap_or(DEFAULT_REQUIRE_EXP),
                issuer: a.issuer.filter(|s| !s.is_empty()),
                audience: a.audience.filter(|s| !s.is_empty()),
                default_rooms: a.default_rooms.unwrap_or_else(|| vec![DEFAULT_ROOM.to_owned()]),
                allow_query_token: a.allow_query_token.unwrap_or(DEFAULT_ALLOW_QUERY_TOKEN),
                cookie: a.cookie,
            },
            limits: LimitsConfig {
                max_frame_bytes: l.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES),
                max_body_bytes: l.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
                rate: l.rate.unwrap_or(DEFAULT_RATE),
                burst: l.burst.unwrap_or(DEFAULT_BURST),
                max_outbound_bytes: l.max_outbound_bytes.unwrap_or(DEFAULT_MAX_OUTBOUND_BYTES),
                max_rooms_per_connection: l.max_rooms_per_connection.unwrap_or(DEFAULT_MAX_ROOMS_PER_CONNECTION),
            },
            history: HistoryConfig {
                path: h.path.unwrap_or_else(|| DEFAULT_HISTORY_PATH.into()),
                synchronous: h.synchronous.unwrap_or(DEFAULT_SYNCHRONOUS),
                max_replay: h.max_replay.unwrap_or(DEFAULT_MAX_REPLAY),
                retention_per_room: h.retention_per_room.unwrap_or(DEFAULT_RETENTION),
                retention_days: h.retention_days.unwrap_or(DEFAULT_RETENTION),
            },
            admin: AdminConfig { socket: admin.socket.unwrap_or_else(|| DEFAULT_ADMIN_SOCKET.into()) },
            log: LogConfig {
                level: log.level.unwrap_or(DEFAULT_LOG_LEVEL),
                format: log.format.unwrap_or(DEFAULT_LOG_FORMAT),
            },
        }
    }
}

// Single-value checks, called by serde through `deserialize_with`. toml adds the position and
// the key path to their errors, so messages here say only what is wrong with the value.

/// `MIN` is a u16 because that converts losslessly into both usize and u32.
fn at_least<'de, D, T, const MIN: u16>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + From<u16> + fmt::Display,
{
    let value = T::deserialize(d)?;
    if value < T::from(MIN) {
        let msg = format!("must be at least {MIN}, got {value}");
        return Err(de::Error::custom(msg));
    }
    Ok(Some(value))
}

fn shards<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let shards = usize::deserialize(d)?;
    if shards > MAX_SHARDS {
        let msg = format!("must be at most {MAX_SHARDS} (0 = one per CPU core), got {shards}");
        return Err(de::Error::custom(msg));
    }
    Ok(Some(shards))
}

fn duration<'de, D, const MIN_MS: u64>(d: D) -> Result<Option<Duration>, D::Error>
where
    D: Deserializer<'de>,
{
    let value = d.deserialize_str(DurationVisitor)?;
    let min = Duration::from_millis(MIN_MS);
    if value < min {
        return Err(de::Error::custom(format!("must be at least {min:?}, got {value:?}")));
    }
    Ok(Some(value))
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string: an integer followed by ms, s, m, h or d, like \"5s\"")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
        parse_duration(s).map_err(E::custom)
    }
}

/// "host:port"; a host name is resolved and its first address taken.
fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if let Ok(addr) = text.parse() {
        return Ok(Some(addr));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| de::Error::custom(format!("{text:?} is not a usable \"host:port\": {e}")))?;
    let first = addrs.next().ok_or_else(|| format!("{text:?} resolves to no address"));
    first.map(Some).map_err(de::Error::custom)
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let secret = String::deserialize(d)?.into_bytes();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(de::Error::custom(format!(
            "{} bytes is too short; HS256 secrets need at least {MIN_SECRET_BYTES} bytes \
             (RFC 7518 section 3.2)",
            secret.len()
        )));
    }
    Ok(secret)
}

fn cookie<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(d)?;
    if name.is_empty() {
        return Ok(None);
    }
    if !is_cookie_name(&name) {
        return Err(de::Error::custom(format!(
            "{name:?} is not a cookie name (RFC 6265 allows letters, digits and !#$%&'*+-.^_`|~)"
        )));
    }
    Ok(Some(name))
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if path.as_os_str().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(path)
}

fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

fn socket_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = path(d)?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(de::Error::custom(format!(
            "{len} bytes is too long for a Unix socket path (at most {MAX_SOCKET_PATH_BYTES})"
        )));
    }
    Ok(Some(path))
}

fn one_of<'de, D: Deserializer<'de>, T: Copy>(d: D, names: &[(&str, T)]) -> Result<T, D::Error> {
    let name = String::deserialize(d)?;
    if let Some((_, value)) = names.iter().find(|(n, _)| *n == name) {
        return Ok(*value);
    }
    let expected: Vec<String> = names.iter().map(|(n, _)| format!("{n:?}")).collect();
    let msg = format!("{name:?} is not one of {}", expected.join(", "));
    Err(de::Error::custom(msg))
}

fn synchronous<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Synchronous>, D::Error> {
    one_of(d, &SYNCHRONOUS_NAMES).map(Some)
}

fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LogFormat>, D::Error> {
    one_of(d, &LOG_FORMAT_NAMES).map(Some)
}

fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LevelFilter>, D::Error> {
    one_of(d, &LOG_LEVEL_NAMES).map(Some)
}

// The local key file.

/// O_EXCL makes exactly one racing process the creator; the others read what it wrote.
fn create_key_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = [0u8; GENERATED_KEY_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| ConfigError::KeyFile {
        path: path.to_path_buf(),
        reason: "cannot generate a key: the system random source failed".to_owned(),
    })?;
    let secret = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes();
    let opened = OpenOptions::new().write(true).create_new(true).mode(KEY_FILE_MODE).open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return read_key_file(path);
        }
        Err(e) => return Err(io_error("create", path, e)),
    };
    if let Err(e) = file.write_all(&secret).and_then(|()| file.sync_all()) {
        // A truncated key file would fail every later start; let the next one regenerate it.
        let _ = fs::remove_file(path);
        return Err(io_error("write", path, e));
    }
    Ok(secret)
}

/// Reads the key. A short file may be one that a racing process has created but not yet
/// written, so it is read again for a moment before being called bad.
fn read_key_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut retries = KEY_RACE_RETRIES;
    loop {
        let secret = read_trimmed(path).map_err(|e| io_error("read", path, e))?;
        if secret.len() >= MIN_SECRET_BYTES {
            return Ok(secret);
        }
        if retries == 0 {
            let (path, len) = (path.to_path_buf(), secret.len());
            let reason = format!(
                "holds {len} bytes but a key needs at least {MIN_SECRET_BYTES}; delete it to \
                 have a new one generated"
            );
            return Err(ConfigError::KeyFile { path, reason });
        }
        retries -= 1;
        std::thread::sleep(KEY_RACE_PAUSE);
    }
}

/// Trims whitespace so a newline added by an editor does not change the key.
fn read_trimmed(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(MAX_KEY_FILE_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes.trim_ascii().to_vec())
}

/// The key was just read, so a failing stat here is not worth failing the start over.
fn warn_if_exposed(path: &Path) {
    let Ok(meta) = fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & !KEY_FILE_MODE != 0 {
        warn!("{}: mode {mode:03o} lets others read the auth key; chmod 600 it", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"[server]
listen = "127.0.0.1:8080"
shards = 0                  # 0 = one per CPU core
max_connections = 100000
max_connections_per_ip = 10000
handshake_timeout = "10s"
heartbeat = "30s"
allowed_origins = []        # empty = any Origin
echo = false

[tls]                       # absent = plain TCP
cert = "/etc/roomcast/cert.pem"
key = "/etc/roomcast/key.pem"

[auth]
keys = [{ kid = "k1", secret = "change-me-to-32-bytes-or-more" }]
timeout = "5s"
require_exp = true
issuer = ""                 # empty = not checked
audience = ""
default_rooms = ["*"]
allow_query_token = true
cookie = ""                 # name of a cookie that carries the token; empty = off

[limits]
max_frame_bytes = 65536
max_body_bytes = 8192
rate = 50
burst = 100
max_outbound_bytes = 1048576
max_rooms_per_connection = 100

[history]
path = "./data/roomcast.db"
synchronous = "normal"      # "normal" or "full" (fsync every commit)
max_replay = 1000
retention_per_room = 0      # 0 = keep all
retention_days = 0

[admin]
socket = "./data/admin.sock"

[log]
level = "info"
format = "text"             # or "json"
"#;
    const SHORT: &str = "change-me-to-32-bytes-or-more";
    const LONG: &str = "change-me-to-32-bytes-or-more-please";

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, "roomcast.toml").map_err(|e| e.to_string())
    }

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("roomcast-config-{name}-{}", std::process::id()))
    }

    #[test]
    fn defaults_match_the_contract() {
        let contract = Config {
            server: ServerConfig {
                listen: "127.0.0.1:8080".parse().unwrap(),
                shards: 0,
                max_connections: 100_000,
                max_connections_per_ip: 10_000,
                handshake_timeout: Duration::from_secs(10),
                heartbeat: Duration::from_secs(30),
                allowed_origins: vec![],
                echo: false,
                drain_grace: Duration::from_secs(10),
            },
            tls: None,
            auth: AuthConfig {
                keys: vec![],
                timeout: Duration::from_secs(5),
                require_exp: true,
                issuer: None,
                audience: None,
                default_rooms: vec!["*".to_owned()],
                allow_query_token: true,
                cookie: None,
            },
            limits: LimitsConfig {
                max_frame_bytes: 65_536,
                max_body_bytes: 8_192,
                rate: 50,
                burst: 100,
                max_outbound_bytes: 1_048_576,
                max_rooms_per_connection: 100,
            },
            history: HistoryConfig {
                path: "./data/roomcast.db".into(),
                synchronous: Synchronous::Normal,
                max_replay: 1_000,
                retention_per_room: 0,
                retention_days: 0,
            },
            admin: AdminConfig { socket: "./data/admin.sock".into() },
            log: LogConfig { level: LevelFilter::Info, format: LogFormat::Text },
        };
        assert_eq!(Config::default(), contract);
        assert_eq!(parse("").unwrap(), contract);
        assert_eq!(parse("# nothing set\n[server]\n[auth]\n").unwrap(), contract);
    }

    #[test]
    fn example_parses_every_section() {
        let cert = "/etc/roomcast/cert.pem".into();
        let tls = Some(TlsConfig { cert, key: "/etc/roomcast/key.pem".into() });
        let keys = vec![KeyConfig { kid: "k1".into(), secret: LONG.into() }];
        let auth = AuthConfig { keys, ..Config::default().auth };
        let want = Config { tls, auth, ..Config::default() };
        assert_eq!(parse(&EXAMPLE.replace(SHORT, LONG)).unwrap(), want);
    }

    type Took = fn(&Config) -> bool;

    /// A key of the example, a different valid value for it, and a check that it took.
    #[rustfmt::skip]
    const CHANGES: &[(&str, &str, Took)] = &[
        ("listen", "'localhost:9000'", |c| c.server.listen.port() == 9000),
        ("shards", "4", |c| c.server.shards == 4 && c.shard_count() == 4),
        ("max_connections", "7", |c| c.server.max_connections == 7),
        ("max_connections_per_ip", "8", |c| c.server.max_connections_per_ip == 8),
        ("handshake_timeout", "'2m'", |c| c.server.handshake_timeout.as_secs() == 120),
        ("heartbeat", "'10ms'", |c| c.server.heartbeat.as_millis() == 10),
        ("allowed_origins", "['https://a.example']", |c| c.server.allowed_origins.len() == 1),
        ("echo", "true", |c| c.server.echo),
        ("cert", "'c.pem'", |c| c.tls.as_ref().is_some_and(|t| t.cert.ends_with("c.pem"))),
        ("key", "'k.pem'", |c| c.tls.as_ref().is_some_and(|t| t.key.ends_with("k.pem"))),
        ("keys", "[]", |c| c.auth.keys.is_empty()),
        ("timeout", "'1h'", |c| c.auth.timeout.as_secs() == 3_600),
        ("require_exp", "false", |c| !c.auth.require_exp),
        ("issuer", "'me'", |c| c.auth.issuer.as_deref() == Some("me")),
        ("audience", "'you'", |c| c.auth.audience.as_deref() == Some("you")),
        ("default_rooms", "[]", |c| c.auth.default_rooms.is_empty()),
        ("allow_query_token", "false", |c| !c.auth.allow_query_token),
        ("cookie", "'rc_t'", |c| c.auth.cookie.as_deref() == Some("rc_t")),
        ("max_frame_bytes", "9000", |c| c.limits.max_frame_bytes == 9_000),
        ("max_body_bytes", "9", |c| c.limits.max_body_bytes == 9),
        ("rate", "1", |c| c.limits.rate == 1),
        ("burst", "2", |c| c.limits.burst == 2),
        ("max_outbound_bytes", "4096", |c| c.limits.max_outbound_bytes == 4_096),
        ("max_rooms_per_connection", "3", |c| c.limits.max_rooms_per_connection == 3),
        ("path", "'h.db'", |c| c.history.path.ends_with("h.db") && c.data_dir().ends_with(".")),
        ("synchronous", "'full'", |c| c.history.synchronous == Synchronous::Full),
        ("max_replay", "0", |c| c.history.max_replay == 0),
        ("retention_per_room", "5", |c| c.history.retention_per_room == 5),
        ("retention_days", "6", |c| c.history.retention_days == 6),
        ("socket", "'/run/a.sock'", |c| c.admin.socket.ends_with("a.sock")),
        ("level", "'trace'", |c| c.log.level == LevelFilter::Trace),
        ("format", "'json'", |c| c.log.format == LogFormat::Json),
    ];

    #[test]
    fn every_key_is_read() {
        let example = EXAMPLE.replace(SHORT, LONG);
        let lines: Vec<&str> = example.lines().collect();
        let keys = lines.iter().filter(|l| !l.starts_with('[') && l.contains(" = "));
        assert_eq!(CHANGES.len(), keys.count(), "CHANGES must cover every key");
        for (key, value, took) in CHANGES {
            let prefix = format!("{key} = ");
            let at = lines.iter().position(|l| l.starts_with(&prefix)).unwrap();
            let changed = format!("{key} = {value}");
            let mut edited = lines.clone();
            edited[at] = &changed;
            let config = parse(&edited.join("\n")).unwrap();
            assert!(took(&config), "{key} = {value} was not applied");
        }
    }

    /// A bad file, and the start of its one-line error after "roomcast.toml:".
    #[rustfmt::skip]
    const BAD_FILES: &[(&str, &str)] = &[
        ("[server]\n\nbogus = 1", "3:1: server: unknown field `bogus`, expected one of `listen`"),
        ("[server]\n[servr]", "2:2: unknown field `servr`, expected one of `server`"),
        ("[auth]\nkeys = [{ secret = 'x', alg = 1 }]", "2:25: auth.keys: unknown field `alg`"),
        ("[server]\nlisten = ", "2:10: string values must be quoted"),
        ("[server]\n[server]", "2:2: duplicate key"),
        ("server = 5", "1:10: server: invalid type: integer `5`"),
        ("[server]\nlisten = 'localhost'", "2:10: server.listen: \"localhost\" is not a usable"),
        ("[server]\nlisten = 'x.invalid:1'", "2:10: server.listen: \"x.invalid:1\" is not a"),
        ("[server]\nshards = 129", "2:10: server.shards: must be at most 128 (0 = one per CPU"),
        ("[server]\nmax_connections = 0", "2:19: server.max_connections: must be at least 1, got"),
        ("[server]\n\nheartbeat = '5x'", "3:13: server.heartbeat: invalid duration \"5x\""),
        ("[server]\nheartbeat = '5ms'", "2:13: server.heartbeat: must be at least 10ms, got 5ms"),
        ("[server]\nhandshake_timeout = '0s'", "2:21: server.handshake_timeout: must be at"),
        ("[auth]\ntimeout = 5", "2:11: auth.timeout: invalid type: integer `5`, expected a"),
        ("[auth]\ntimeout = '5'", "2:11: auth.timeout: invalid duration \"5\": expected an"),
        ("[auth]\nkeys = [{ kid = 'k1' }]", "2:9: auth.keys: missing field `secret`"),
        ("[auth]\nkeys = [{ secret = 'short' }]", "2:20: auth.keys.secret: 5 bytes is too short"),
        ("[tls]\ncert = 'c.pem'", "1:1: tls: missing field `key`"),
        ("[tls]\ncert = ''\nkey = 'k.pem'", "2:8: tls.cert: must not be empty"),
        ("[limits]\nmax_frame_bytes = 64", "2:19: limits.max_frame_bytes: must be at least 128"),
        ("[limits]\nmax_outbound_bytes = 1", "2:22: limits.max_outbound_bytes: must be at least"),
        ("[limits]\nrate = -1", "2:8: limits.rate: invalid value: integer `-1`, expected u32"),
        ("[limits]\nburst = 'many'", "2:9: limits.burst: invalid type: string \"many\", expected"),
        ("[history]\nsynchronous = 'fsync'", "2:15: history.synchronous: \"fsync\" is not one of"),
        ("[history]\nsynchronous = 1", "2:15: history.synchronous: invalid type: integer `1`"),
        ("[admin]\nsocket = ''", "2:10: admin.socket: must not be empty"),
        ("[log]\nlevel = 'INFO'", "2:9: log.level: \"INFO\" is not one of \"off\", \"error\""),
        ("[log]\nformat = 'xml'", "2:10: log.format: \"xml\" is not one of \"text\", \"json\""),
    ];

    #[test]
    fn bad_values_are_reported_on_one_line_with_their_position() {
        for (text, want) in BAD_FILES {
            let err = parse(text).unwrap_err();
            let want = format!("roomcast.toml:{want}");
            assert!(err.starts_with(&want) && !err.contains('\n'), "{text:?}: {err}");
        }
        let err = parse(&format!("[admin]\nsocket = '/{}'", "s".repeat(200))).unwrap_err();
        assert!(err.contains("admin.socket: 201 bytes is too long for a Unix socket"), "{err}");
    }

    #[test]
    fn cross_field_errors_name_the_keys() {
        let err = parse("[limits]\nmax_body_bytes = 100000\n").unwrap_err();
        let want = "limits.max_body_bytes (100000) must not exceed limits.max_frame_bytes (65536)";
        assert_eq!(err, format!("roomcast.toml: {want}"));
    }

    #[test]
    fn the_example_secret_is_too_short() {
        let err = parse(EXAMPLE).unwrap_err();
        let want = "roomcast.toml:16:32: auth.keys.secret: 29 bytes is too short; HS256 secrets \
                    need at least 32 bytes (RFC 7518 section 3.2)";
        assert_eq!(err, want);
    }

    #[test]
    fn kids_must_be_unique() {
        let key = |kid: &str| format!("[[auth.keys]]\n{kid}secret = '{LONG}'\n");
        let text = [key("kid = 'a'\n"), key(""), key("kid = 'a'\n")].concat();
        let want = "auth.keys[0] and auth.keys[2] both have kid \"a\"; kids must be unique";
        assert_eq!(parse(&text).unwrap_err(), format!("roomcast.toml: {want}"));
        let err = parse(&[key(""), key("")].concat()).unwrap_err();
        assert!(err.contains("auth.keys[0] and auth.keys[1] both have kid \"\""), "{err}");
    }

    #[test]
    fn cookie_names_follow_rfc_6265() {
        for good in ["rc_token", "a", "X-Token.v2", "!#$%&'*+-.^_`|~"] {
            let c = parse(&format!("[auth]\ncookie = {good:?}\n")).unwrap();
            assert_eq!(c.auth.cookie.as_deref(), Some(good));
        }
        for bad in ["bad name", "a;b", "a=b", "tok\"en", "a\tb", "é", "(x)", "a,b"] {
            let err = parse(&format!("[auth]\ncookie = {bad:?}\n")).unwrap_err();
            assert!(err.starts_with("roomcast.toml:2:10: auth.cookie: "), "{bad}: {err}");
        }
        assert_eq!(parse("[auth]\ncookie = ''\n").unwrap().auth.cookie, None);
    }

    #[test]
    fn durations() {
        let good = [("500ms", 500), ("5s", 5_000), ("2m", 120_000), ("1h", 3_600_000)];
        for (text, ms) in good.into_iter().chain([("1d", 86_400_000), ("0s", 0)]) {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        let bad = ["", "5", "5x", "-1s", "s", "+5s", "5 s", "1.5s", "5S", "5s "];
        for text in bad.into_iter().chain(["99999999999999999999s", "213503982334602d"]) {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
        let err = parse_duration("213503982334602d").unwrap_err();
        assert_eq!(err, "duration \"213503982334602d\" is too large");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let mut c = Config::default();
        let secret = b"sup3r-s3cret".to_vec();
        c.auth.keys.push(KeyConfig { kid: "k1".into(), secret });
        let shown = format!("{c:?} {:#?}", c.auth.keys);
        assert!(shown.contains("secret: <redacted>") && shown.contains("\"k1\""), "{shown}");
        assert!(!shown.contains("sup3r") && !shown.contains("115, 117"), "{shown}");
    }

    /// The keys `resolve_keys` settles on for a fresh config sharing `c`'s data dir.
    fn reload(c: &Config) -> Result<Vec<KeyConfig>, String> {
        let mut fresh = Config { history: c.history.clone(), ..Config::default() };
        fresh.resolve_keys().map_err(|e| e.to_string())?;
        Ok(fresh.auth.keys)
    }

    #[test]
    fn resolve_keys_creates_a_private_key_file_once() {
        let dir = temp_dir("keys");
        let mut c = Config::default();
        c.history.path = dir.join("data/roomcast.db");
        c.resolve_keys().unwrap();
        let path = dir.join("data").join(KEY_FILE_NAME);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let key = c.auth.keys[0].clone();
        assert_eq!(key.kid, "local");
        assert_eq!(key.secret.len(), 2 * GENERATED_KEY_BYTES);
        assert!(key.secret.iter().all(u8::is_ascii_hexdigit));
        assert_eq!(fs::read(&path).unwrap(), key.secret);
        assert_eq!(reload(&c), Ok(vec![key.clone()]));

        // A wider mode only warns, and an editor's trailing newline leaves the key as it was.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, [key.secret.as_slice(), b"\n"].concat()).unwrap();
        assert_eq!(reload(&c), Ok(vec![key]));
        fs::write(&path, "short").unwrap();
        let err = reload(&c).unwrap_err();
        let want = "hs256.key: holds 5 bytes but a key needs at least 32; delete it to have a \
                    new one generated";
        assert!(err.ends_with(want), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn racing_resolvers_agree_on_one_key() {
        let dir = temp_dir("race");
        let mut c = Config::default();
        c.history.path = dir.join("h.db");
        let spawn = |c: Config| std::thread::spawn(move || reload(&c));
        let racers: Vec<_> = (0..8).map(|_| spawn(c.clone())).collect();
        let keys: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "racers disagree: {keys:?}");
        let secret = &keys[0].as_ref().unwrap()[0].secret;
        assert_eq!(&fs::read(dir.join(KEY_FILE_NAME)).unwrap(), secret);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolve_keys_keeps_configured_keys_and_names_failing_paths() {
        let mut c = parse(&EXAMPLE.replace(SHORT, LONG)).unwrap();
        c.history.path = "/proc/never/roomcast.db".into();
        c.resolve_keys().unwrap();
        assert_eq!(c.auth.keys[0].kid, "k1");

        let dir = temp_dir("blocked");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("file"), "").unwrap();
        let mut c = Config::default();
        c.history.path = dir.join("file/data/roomcast.db");
        let err = c.resolve_keys().unwrap_err().to_string();
        let want = format!("cannot create {}: Not a directory", dir.join("file/data").display());
        assert!(err.starts_with(&want), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_overrides_and_read_errors() {
        let mut c = Config::default();
        assert_eq!(c.data_dir(), PathBuf::from("./data"));
        c.history.path = "roomcast.db".into();
        assert_eq!(c.data_dir(), PathBuf::from("."));
        assert!((1..=MAX_SHARDS).contains(&c.shard_count()));
        c.set_listen("0.0.0.0:80".parse().unwrap());
        assert_eq!(c.server.listen.port(), 80);
        let missing = temp_dir("missing").join("roomcast.toml");
        let err = Config::load(&missing).unwrap_err().to_string();
        let want = format!("{}: cannot read: No such file", missing.display());
        assert!(err.starts_with(&want), "{err}");
        assert_eq!(line_col("é=1\nab", 5), (2, 1));
        assert_eq!(line_col("é", 1), (1, 1));
        assert_eq!(line_col("x", 9), (1, 2));
    }
}
