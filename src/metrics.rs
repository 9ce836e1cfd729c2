//! Counters each thread keeps about itself, readable by any thread without a lock, and their
//! Prometheus rendering. Every counter has exactly one writer; readers sum. Metric names live here only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bus::StatsPart;
use crate::http::Failure;
use crate::server::Shared;

/// The Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A counter with a single writing thread. Readers on other threads may see a slightly
/// stale value, which is all a statistics page needs; the writer avoids a locked
/// read-modify-write because nobody else ever writes.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    pub fn sub(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.saturating_sub(n), Ordering::Relaxed);
    }

    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One shard's counters. Padded to its own cache lines so shards never false-share.
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct ShardCounters {
    /// Open WebSocket connections (after the upgrade, until closed).
    pub connections: Counter,
    /// Open WebSocket connections that have authenticated.
    pub authenticated: Counter,
    /// Application frames received from clients.
    pub messages_in: Counter,
    /// Application frames queued to clients.
    pub messages_out: Counter,
    /// Connections closed because their unsent output passed `limits.max_outbound_bytes`.
    pub slow_consumer_closes: Counter,
    /// Frames dropped by the per-connection rate limit.
    pub rate_limited: Counter,
    /// WebSocket upgrades completed.
    pub handshakes: Counter,
    /// Upgrade requests refused, indexed by `http::Failure`.
    pub handshake_failures: [Counter; 6],
    /// Bytes read from and written to sockets (TLS records included).
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Wall-clock milliseconds at the end of the shard's last loop turn (for the watchdog).
    pub last_turn_ms: Counter,
    /// Tokens refused (at the upgrade or in an `auth` frame).
    pub auth_failures: Counter,
}

/// Upper bounds, in microseconds, of the commit latency buckets.
const LATENCY_BOUNDS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// A latency histogram with one writing thread (the history writer).
#[derive(Default, Debug)]
pub struct Histogram {
    /// Counts per bucket (not cumulative); the last one is above every bound.
    buckets: [Counter; LATENCY_BOUNDS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        let i = LATENCY_BOUNDS_US.iter().position(|b| micros <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[i].add(1);
        self.sum_us.add(micros);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += self.buckets[i].get();
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        cumulative += self.buckets[LATENCY_BOUNDS_US.len()].get();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.get() as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// `/metrics`: every counter, per shard where it has one writer per shard.
pub fn render(shared: &Shared, parts: &[&StatsPart]) -> String {
    let mut out = String::with_capacity(4096);
    let shards = &shared.counters;
    let per_shard = |out: &mut String, name: &str, kind: &str, help: &str, field: fn(&ShardCounters) -> &Counter| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", field(s).get());
        }
    };
    per_shard(&mut out, "roomcast_connections", "gauge", "Open WebSocket connections.", |c| &c.connections);
    per_shard(&mut out, "roomcast_authenticated_connections", "gauge", "Open authenticated connections.", |c| {
        &c.authenticated
    });
    per_shard(&mut out, "roomcast_handshakes_total", "counter", "WebSocket upgrades completed.", |c| &c.handshakes);
    let _ = writeln!(
        out,
        "# HELP roomcast_handshake_failures_total Upgrade requests refused, by reason.\n# TYPE roomcast_handshake_failures_total counter"
    );
    for failure in Failure::ALL {
        let n: u64 = shards.iter().map(|s| s.handshake_failures[failure as usize].get()).sum();
        let _ = writeln!(out, "roomcast_handshake_failures_total{{reason=\"{}\"}} {n}", failure.label());
    }
    per_shard(&mut out, "roomcast_auth_failures_total", "counter", "Tokens refused.", |c| &c.auth_failures);
    per_shard(&mut out, "roomcast_messages_in_total", "counter", "Frames received from clients.", |c| &c.messages_in);
    per_shard(&mut out, "roomcast_deliveries_total", "counter", "Frames queued to clients.", |c| &c.messages_out);
    per_shard(&mut out, "roomcast_bytes_in_total", "counter", "Bytes read from sockets.", |c| &c.bytes_in);
    per_shard(&mut out, "roomcast_bytes_out_total", "counter", "Bytes written to sockets.", |c| &c.bytes_out);
    per_shard(&mut out, "roomcast_slow_consumer_closes_total", "counter", "Connections closed with 1013.", |c| {
        &c.slow_consumer_closes
    });
    per_shard(&mut out, "roomcast_rate_limited_total", "counter", "Frames dropped by the rate limit.", |c| {
        &c.rate_limited
    });
    let rooms: usize = parts.iter().map(|p| p.rooms).sum();
    let users: usize = parts.iter().map(|p| p.users).sum();
    let _ =
        writeln!(out, "# HELP roomcast_rooms Rooms with members.\n# TYPE roomcast_rooms gauge\nroomcast_rooms {rooms}");
    let _ = writeln!(
        out,
        "# HELP roomcast_users Distinct connected users.\n# TYPE roomcast_users gauge\nroomcast_users {users}"
    );
    let _ = writeln!(
        out,
        "# HELP roomcast_queue_depth Messages waiting in a thread's inbox.\n# TYPE roomcast_queue_depth gauge"
    );
    for (i, inbox) in shared.shard_inboxes.iter().enumerate() {
        let _ = writeln!(out, "roomcast_queue_depth{{queue=\"shard{i}\"}} {}", inbox.len());
    }
    let _ = writeln!(out, "roomcast_queue_depth{{queue=\"history\"}} {}", shared.history.len());
    for (i, inbox) in shared.readers.iter().enumerate() {
        let _ = writeln!(out, "roomcast_queue_depth{{queue=\"reader{i}\"}} {}", inbox.len());
    }
    shared.commit_latency.render("roomcast_history_commit_seconds", "Time to commit one batch of events.", &mut out);
    let uptime = shared.started.elapsed().as_secs();
    let _ = writeln!(
        out,
        "# HELP roomcast_uptime_seconds Seconds since start.\n# TYPE roomcast_uptime_seconds gauge\nroomcast_uptime_seconds {uptime}"
    );
    out
}

/// `/stats` (and the admin `stats` command): counters summed, plus each shard's rooms and users.
pub fn stats_json(shared: &Shared, parts: &[&StatsPart]) -> serde_json::Value {
    let counters = &shared.counters;
    let sum = |f: fn(&ShardCounters) -> &Counter| total(counters, f);
    let mut top: Vec<(std::sync::Arc<str>, usize)> = parts.iter().flat_map(|p| p.top_rooms.iter().cloned()).collect();
    top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(crate::rooms::TOP_ROOMS);
    let top_rooms: serde_json::Map<String, serde_json::Value> =
        top.into_iter().map(|(name, n)| (name.to_string(), n.into())).collect();
    serde_json::json!({
        "connections": sum(|c| &c.connections),
        "authenticated": sum(|c| &c.authenticated),
        "users": parts.iter().map(|p| p.users).sum::<usize>(),
        "rooms": parts.iter().map(|p| p.rooms).sum::<usize>(),
        "shards": counters.iter().map(|c| c.connections.get()).collect::<Vec<_>>(),
        "messages_in": sum(|c| &c.messages_in),
        "messages_out": sum(|c| &c.messages_out),
        "uptime_s": shared.started.elapsed().as_secs(),
        "top_rooms": top_rooms,
    })
}

/// Sum of one field over all shards.
pub fn total(shards: &[ShardCounters], field: impl Fn(&ShardCounters) -> &Counter) -> u64 {
    shards.iter().map(|s| field(s).get()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for us in [50, 120, 120, 3_000, 5_000_000] {
            h.record(us);
        }
        let mut out = String::new();
        h.render("t", "help", &mut out);
        assert!(out.contains("t_bucket{le=\"0.0001\"} 1\n"));
        assert!(out.contains("t_bucket{le=\"0.00025\"} 3\n"));
        assert!(out.contains("t_bucket{le=\"0.005\"} 4\n"));
        assert!(out.contains("t_bucket{le=\"+Inf\"} 5\n"));
        assert!(out.contains("t_count 5\n"));
    }

    #[test]
    fn counters_add_sub_and_sum() {
        let shards: Vec<ShardCounters> = (0..3).map(|_| ShardCounters::default()).collect();
        shards[0].connections.add(2);
        shards[2].connections.add(5);
        shards[2].connections.sub(1);
        shards[1].connections.sub(1); // never below zero
        assert_eq!(total(&shards, |s| &s.connections), 6);
    }
}
