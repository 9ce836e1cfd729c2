//! Counters each shard keeps about itself, readable by any thread without a lock.
//! Every counter has exactly one writer (its shard); readers sum shards. Names live here only.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Upgrade requests refused, for any reason.
    pub handshake_failures: Counter,
    /// Tokens refused (at the upgrade or in an `auth` frame).
    pub auth_failures: Counter,
}

/// Sum of one field over all shards.
pub fn total(shards: &[ShardCounters], field: impl Fn(&ShardCounters) -> &Counter) -> u64 {
    shards.iter().map(|s| field(s).get()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

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
