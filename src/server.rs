//! Startup and shutdown: prepares the data directory and keys, binds the listener, starts the
//! shard, history, acceptor and signal threads, and waits for them. It holds no per-connection state.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::{Poll, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Socket, Type};

use crate::acceptor::{self, Acceptor};
use crate::admin::{self, AdminError};
use crate::auth::Verifier;
use crate::bus::{self, AcceptorMsg, AdminMsg, HistoryMsg, Inbox, ReadRequest, ShardMsg};
use crate::config::{Config, ConfigError};
use crate::control::{Controller, SIGNAL_GRACE, push_until_taken};
use crate::history::{Reader, Retention, Writer};
use crate::metrics::{Histogram, ShardCounters};
use crate::shard::{self, Shard, ShardSetup};
use crate::store::{self, StoreError};
use crate::systemd::{self, Notifier};
use crate::{history, logging, sys};

/// File descriptors kept back from connections (history database, admin socket, logs).
const RESERVED_FDS: u64 = 64;
/// Threads answering replays and history pages.
const HISTORY_READERS: usize = 2;
/// The kernel caps this at `net.core.somaxconn`, so that sysctl alone decides.
const LISTEN_BACKLOG: i32 = 65_535;

/// What every thread shares: the queues between them and lock-free counters.
pub struct Shared {
    pub shard_inboxes: Vec<Inbox<ShardMsg>>,
    pub history: Inbox<HistoryMsg>,
    pub readers: Vec<Inbox<ReadRequest>>,
    /// Answers for the admin socket's thread.
    pub admin: Inbox<AdminMsg>,
    pub acceptor: Inbox<AcceptorMsg>,
    pub counters: Vec<ShardCounters>,
    /// Written by the history writer only.
    pub commit_latency: Histogram,
    /// Open WebSocket connections on all shards, for `server.max_connections`.
    pub ws_connections: AtomicUsize,
    /// No new upgrades; `/healthz` answers 503.
    pub draining: AtomicBool,
    /// Every shard has exited; nothing downstream will be read any more.
    pub shards_stopped: AtomicBool,
    pub started: Instant,
    /// Random per start, so session ids do not repeat across restarts.
    pub boot_nonce: u32,
}

impl Shared {
    pub fn shard_count(&self) -> usize {
        self.shard_inboxes.len()
    }
}

/// Command-line settings that override the file, kept so a reload applies them again.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug)]
pub enum ServeError {
    Config(ConfigError),
    Store(StoreError),
    Admin(AdminError),
    DataDir { path: PathBuf, source: io::Error },
    Listen { addr: SocketAddr, source: io::Error },
    Setup(&'static str, io::Error),
    Tls(crate::tls::TlsError),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config(e) => write!(f, "{e}"),
            ServeError::Store(e) => write!(f, "{e}"),
            ServeError::Admin(e) => write!(f, "{e}"),
            ServeError::DataDir { path, source } => {
                write!(f, "data directory {} is not usable: {source}", path.display())
            }
            ServeError::Listen { addr, source } if source.kind() == io::ErrorKind::AddrInUse => {
                write!(f, "cannot listen on {addr}: address already in use (is another roomcast running?)")
            }
            ServeError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServeError::Setup(what, source) => write!(f, "cannot {what}: {source}"),
            ServeError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Loads the configuration the way `serve` does: the file (or the embedded defaults), then
/// the command-line overrides, then the key (generated into the data directory if none).
pub fn load_config(path: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, ServeError> {
    let mut config = match path {
        Some(p) => Config::load(p).map_err(ServeError::Config)?,
        None => Config::default(),
    };
    if let Some(addr) = overrides.listen {
        config.set_listen(addr);
    }
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServeError::DataDir { path: data_dir.clone(), source })?;
    config.resolve_keys().map_err(ServeError::Config)?;
    Ok(config)
}

/// Runs the daemon until SIGTERM or SIGINT; returns once every connection is closed.
pub fn serve(config_path: Option<PathBuf>, overrides: Overrides) -> Result<(), ServeError> {
    let config = load_config(config_path.as_deref(), &overrides)?;
    logging::init(config.log.level, config.log.format);
    let tls = config.tls.as_ref().map(crate::tls::load).transpose().map_err(ServeError::Tls)?;
    check_data_dir_writable(&config)?;
    let admin_listener = admin::bind(&config.admin.socket).map_err(ServeError::Admin)?;
    let writer_conn =
        store::open_writer(&config.history.path, config.history.synchronous).map_err(ServeError::Store)?;
    let mut room_seqs = store::room_seqs(&writer_conn).map_err(ServeError::Store)?;
    let reader_conns = (0..HISTORY_READERS)
        .map(|_| store::open_reader(&config.history.path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServeError::Store)?;
    let fd_budget = open_file_budget(&config);
    let listener = bind(config.server.listen)?;
    let local_addr = listener.local_addr().map_err(|e| ServeError::Setup("read the listening address", e))?;

    let shard_count = config.shard_count();
    let mut shard_polls = Vec::with_capacity(shard_count);
    let mut shard_inboxes = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let poll = Poll::new().map_err(|e| ServeError::Setup("create a poller", e))?;
        let waker =
            Waker::new(poll.registry(), shard::WAKER_TOKEN).map_err(|e| ServeError::Setup("create a waker", e))?;
        shard_inboxes.push(Inbox::with_waker(bus::SHARD_INBOX, waker));
        shard_polls.push(poll);
    }
    let acceptor_poll = Poll::new().map_err(|e| ServeError::Setup("create a poller", e))?;
    let acceptor_waker =
        Waker::new(acceptor_poll.registry(), acceptor::WAKER).map_err(|e| ServeError::Setup("create a waker", e))?;
    let shared = Arc::new(Shared {
        shard_inboxes,
        history: Inbox::with_parking(bus::HISTORY_INBOX),
        readers: (0..HISTORY_READERS).map(|_| Inbox::with_parking(bus::READER_INBOX)).collect(),
        admin: Inbox::with_parking(bus::ADMIN_INBOX),
        acceptor: Inbox::with_waker(bus::ACCEPTOR_INBOX, acceptor_waker),
        counters: (0..shard_count).map(|_| ShardCounters::default()).collect(),
        commit_latency: Histogram::default(),
        ws_connections: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        shards_stopped: AtomicBool::new(false),
        started: Instant::now(),
        boot_nonce: boot_nonce(),
    });

    let config = Arc::new(config);
    let verifier = Arc::new(Verifier::new(&config.auth));
    let retention = Retention { per_room: config.history.retention_per_room, days: config.history.retention_days };
    let writer = Writer::new(writer_conn, shared.clone(), retention);
    let history = spawn("roomcast-history", move || writer.run())?;
    let mut readers = Vec::with_capacity(HISTORY_READERS);
    for (index, conn) in reader_conns.into_iter().enumerate() {
        let reader = Reader::new(conn, shared.clone(), index);
        readers.push(spawn(&format!("roomcast-reader-{index}"), move || reader.run())?);
    }
    let checkpoint_stop = Arc::new(AtomicBool::new(false));
    let checkpointer = spawn("roomcast-checkpoint", {
        let (path, stop) = (config.history.path.clone(), checkpoint_stop.clone());
        move || history::run_checkpointer(path, stop)
    })?;
    let mut shards = Vec::with_capacity(shard_count);
    for (index, poll) in shard_polls.into_iter().enumerate() {
        let mine: HashMap<Arc<str>, u64> =
            room_seqs.extract_if(|room, _| bus::home_shard(room, shard_count) == index).collect();
        let setup = ShardSetup {
            index,
            poll,
            shared: shared.clone(),
            config: config.clone(),
            verifier: verifier.clone(),
            tls: tls.clone(),
            room_seqs: mine,
        };
        shards.push(spawn(&format!("roomcast-shard-{index}"), move || Shard::new(setup).run())?);
    }
    let acceptor =
        Acceptor::new(listener, acceptor_poll, shared.clone(), config.server.max_connections_per_ip, fd_budget);
    let acceptor = spawn("roomcast-acceptor", move || acceptor.run())?;
    let notifier = Arc::new(Notifier::from_env());
    let control = Arc::new(Controller::new(shared.clone(), config.clone(), config_path, overrides, notifier.clone()));
    let signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| ServeError::Setup("install signal handlers", e))?;
    let signal_handle = signals.handle();
    let signal_thread = spawn("roomcast-signals", {
        let control = control.clone();
        move || handle_signals(signals, &control)
    })?;
    // Not joined: it waits in accept() until the process exits.
    spawn("roomcast-admin", {
        let (shared, control) = (shared.clone(), control.clone());
        move || admin::run(admin_listener, shared, control)
    })?;
    if let Some(interval) = systemd::watchdog_interval() {
        let (shared, notifier) = (shared.clone(), notifier.clone());
        spawn("roomcast-watchdog", move || systemd::run_watchdog(shared, notifier, interval))?;
    }

    let scheme = if tls.is_some() { "https" } else { "http" };
    log::info!("roomcast listening on {scheme}://{local_addr} ({shard_count} shards, pid {})", std::process::id());
    notifier.notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    for s in shards {
        let _ = s.join();
    }
    shared.shards_stopped.store(true, Ordering::Release);
    push_until_taken(&shared.history, HistoryMsg::Shutdown);
    shared.history.wake();
    push_until_taken(&shared.acceptor, AcceptorMsg::Shutdown);
    shared.acceptor.wake();
    let _ = history.join();
    for (inbox, reader) in shared.readers.iter().zip(readers) {
        push_until_taken(inbox, ReadRequest::Shutdown);
        inbox.wake();
        let _ = reader.join();
    }
    checkpoint_stop.store(true, Ordering::Release);
    checkpointer.thread().unpark();
    let _ = checkpointer.join();
    let _ = acceptor.join();
    signal_handle.close();
    let _ = signal_thread.join();
    let _ = std::fs::remove_file(&config.admin.socket);
    log::info!("roomcast stopped");
    Ok(())
}

fn handle_signals(mut signals: Signals, control: &Arc<Controller>) {
    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                let _ = control.reload();
            }
            _ if control.is_stopping() => {
                log::warn!("second stop signal: exiting now");
                std::process::exit(1);
            }
            _ => control.drain(SIGNAL_GRACE),
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ServeError> {
    std::thread::Builder::new().name(name.to_string()).spawn(f).map_err(|e| ServeError::Setup("start a thread", e))
}

fn check_data_dir_writable(config: &Config) -> Result<(), ServeError> {
    let dir = config.data_dir();
    let probe = dir.join(format!(".roomcast-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|source| ServeError::DataDir { path: dir, source })
}

/// Connections we can hold before running out of file descriptors, after raising the limit.
fn open_file_budget(config: &Config) -> usize {
    let limit = match sys::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("cannot read the open-file limit ({e}); assuming 1024");
            1024
        }
    };
    let budget = limit.saturating_sub(RESERVED_FDS) as usize;
    if config.server.max_connections > budget {
        log::warn!(
            "server.max_connections ({}) exceeds what the open-file limit ({limit}) allows; accepting pauses at {budget} connections (raise LimitNOFILE / ulimit -n)",
            config.server.max_connections
        );
    }
    budget
}

fn bind(addr: SocketAddr) -> Result<mio::net::TcpListener, ServeError> {
    let err = |source| ServeError::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    // Lets a restarted daemon bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

fn boot_nonce() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    // 24 bits: the session id keeps 8 bits for the shard and 32 for a counter.
    u32::from_le_bytes(bytes) & 0x00ff_ffff
}
