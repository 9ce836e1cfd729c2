//! systemd integration: `sd_notify` messages (READY, RELOADING, STOPPING) and the watchdog,
//! which only says WATCHDOG=1 while every shard loop is turning. Silent when not under systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use crate::server::Shared;
use crate::timer::unix_millis;

/// A shard counts as stuck only after this long without a loop turn (idle shards turn every
/// second).
const MIN_STALE_MS: u64 = 2_500;

/// The datagram socket systemd listens on (`$NOTIFY_SOCKET`), if any.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_str()?.to_string();
            // A leading '@' names a socket in the abstract namespace.
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { target }
    }

    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            log::warn!("cannot notify systemd ({state}): {e}");
        }
    }
}

/// The watchdog interval systemd asked for, if it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let pid_ok = std::env::var("WATCHDOG_PID").map_or(true, |p| p.parse() == Ok(std::process::id()));
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (pid_ok && usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings systemd at half the watchdog interval, but only while every shard has finished a loop
/// turn recently: a stuck shard stops the pings and systemd restarts the daemon.
pub fn run_watchdog(shared: Arc<Shared>, notifier: Arc<Notifier>, interval: Duration) {
    let period = interval / 2;
    // An idle shard turns once a second, so anything quicker would see healthy shards as stuck.
    let stale_after = (period.as_millis() as u64).max(MIN_STALE_MS);
    while !shared.shards_stopped.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::park_timeout(period);
        let now = unix_millis();
        let stuck = shared.counters.iter().position(|c| now.saturating_sub(c.last_turn_ms.get()) > stale_after);
        match stuck {
            None => notifier.notify("WATCHDOG=1"),
            Some(shard) => {
                log::error!("shard {shard} has not turned for over {stale_after} ms; not pinging the watchdog")
            }
        }
    }
}
