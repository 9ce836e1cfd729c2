//! Lifecycle control shared by the signal thread and the admin socket: reload the configuration,
//! drain (stop taking new WebSocket connections, close the rest with 1001 after a grace period),
//! shut down, change the log level. It reaches shards only through their queues.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use log::LevelFilter;

use crate::auth::Verifier;
use crate::bus::{AcceptorMsg, Inbox, Reload, ShardMsg};
use crate::config::Config;
use crate::logging;
use crate::server::{Overrides, Shared, load_config};
use crate::systemd::Notifier;

/// How long SIGTERM/SIGINT keep serving before closing connections (`drain` uses
/// `server.drain_grace`): long enough for in-flight messages, short enough for a quick stop.
pub const SIGNAL_GRACE: Duration = Duration::from_millis(500);

pub struct Controller {
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    /// The running configuration; only reloads touch it, never a shard.
    config: Mutex<Arc<Config>>,
    notifier: Arc<Notifier>,
    stopping: AtomicBool,
}

impl Controller {
    pub fn new(
        shared: Arc<Shared>,
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        overrides: Overrides,
        notifier: Arc<Notifier>,
    ) -> Controller {
        Controller {
            shared,
            config_path,
            overrides,
            config: Mutex::new(config),
            notifier,
            stopping: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Re-reads the configuration file and hands keys, limits and log level to every shard.
    /// Returns the keys that changed but need a restart.
    pub fn reload(&self) -> Result<Vec<&'static str>, String> {
        self.notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", crate::sys::monotonic_micros()));
        let result = self.apply_reload();
        self.notifier.notify("READY=1");
        match &result {
            Ok(restart) => {
                for key in restart {
                    log::warn!("reload: {key} changed but only takes effect after a restart");
                }
                log::info!("configuration reloaded");
            }
            Err(e) => log::error!("reload failed, keeping the running configuration: {e}"),
        }
        result
    }

    fn apply_reload(&self) -> Result<Vec<&'static str>, String> {
        let new = load_config(self.config_path.as_deref(), &self.overrides).map_err(|e| e.to_string())?;
        let mut current = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let restart = restart_only_changes(&current, &new);
        // Turning TLS on or off changes what the listener speaks: that waits for a restart.
        let tls = match (&current.tls, &new.tls) {
            (Some(_), Some(tls)) => Some(crate::tls::load(tls).map_err(|e| e.to_string())?),
            _ => None,
        };
        logging::set_level(new.log.level);
        let config = Arc::new(new);
        let verifier = Arc::new(Verifier::new(&config.auth));
        for inbox in &self.shared.shard_inboxes {
            let reload = Reload { config: config.clone(), verifier: verifier.clone(), tls: tls.clone() };
            push_until_taken(inbox, ShardMsg::Reload(Box::new(reload)));
            inbox.wake();
        }
        *current = config;
        Ok(restart)
    }

    /// `/healthz` turns 503 and upgrades are refused at once; after `grace` every connection
    /// is closed with 1001 and the daemon exits. A second call changes nothing.
    pub fn drain(self: &Arc<Self>, grace: Duration) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        log::info!("draining: closing connections in {grace:?}");
        self.notifier.notify("STOPPING=1");
        self.shared.draining.store(true, Ordering::Relaxed);
        let this = self.clone();
        let spawned = std::thread::Builder::new().name("roomcast-drain".into()).spawn(move || {
            std::thread::sleep(grace);
            this.close_all();
        });
        if spawned.is_err() {
            self.close_all();
        }
    }

    pub fn shutdown(self: &Arc<Self>) {
        self.drain(Duration::ZERO);
    }

    /// Whether a stop is under way (a second SIGTERM then means "now").
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn set_log_level(&self, level: LevelFilter) {
        logging::set_level(level);
        log::info!("log level set to {level}");
    }

    /// Stops accepting and asks every shard to close its connections (1001) and exit.
    fn close_all(&self) {
        let shared = &self.shared;
        push_until_taken(&shared.acceptor, AcceptorMsg::Shutdown);
        shared.acceptor.wake();
        for inbox in &shared.shard_inboxes {
            push_until_taken(inbox, ShardMsg::Shutdown);
            inbox.wake();
        }
    }
}

/// Waits (on a control thread, never a shard) until the inbox takes the message.
pub fn push_until_taken<T>(inbox: &Inbox<T>, mut msg: T) {
    while let Err(back) = inbox.push(msg) {
        msg = back;
        inbox.wake();
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let checks: [(&'static str, bool); 10] = [
        ("tls (on/off)", old.tls.is_some() != new.tls.is_some()),
        ("history.retention_per_room", old.history.retention_per_room != new.history.retention_per_room),
        ("history.retention_days", old.history.retention_days != new.history.retention_days),
        ("server.listen", old.server.listen != new.server.listen),
        ("server.shards", old.shard_count() != new.shard_count()),
        ("server.max_connections_per_ip", old.server.max_connections_per_ip != new.server.max_connections_per_ip),
        ("history.path", old.history.path != new.history.path),
        ("history.synchronous", old.history.synchronous != new.history.synchronous),
        ("admin.socket", old.admin.socket != new.admin.socket),
        ("log.format", old.log.format != new.log.format),
    ];
    checks.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}
