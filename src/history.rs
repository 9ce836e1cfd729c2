//! The history stage of the publish path: takes room events and ordered room output from home
//! shards, in order, and releases them to member shards. It owns ordering past the home shard;
//! it never reorders, never drops, and never runs on a shard thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::bus::{Downstream, HistoryMsg, Outbox, Reply, ShardMsg};
use crate::server::Shared;

/// Messages taken from the inbox per batch.
const BATCH: usize = 4096;
/// How long to sleep when a shard's inbox is full before retrying.
const BACKOFF: Duration = Duration::from_micros(50);

/// Runs until a `Shutdown` message arrives.
pub fn run(shared: Arc<Shared>) {
    shared.history.register_consumer();
    let mut outboxes: Vec<Outbox<ShardMsg>> = (0..shared.shard_count()).map(|_| Outbox::default()).collect();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        while batch.len() < BATCH {
            match shared.history.pop() {
                Some(msg) => batch.push(msg),
                None => break,
            }
        }
        if batch.is_empty() {
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        }
        let mut stop = false;
        for msg in batch.drain(..) {
            match msg {
                HistoryMsg::Event { record: _, delivery, shards, ack } => {
                    for shard in shards.iter() {
                        outboxes[shard].push(ShardMsg::Down(Downstream::Deliver(delivery.clone())));
                    }
                    if let Some((origin, frame)) = ack {
                        let reply = Downstream::Reply(origin, Reply::Frame(frame));
                        outboxes[origin.shard as usize].push(ShardMsg::Down(reply));
                    }
                }
                HistoryMsg::Relay { shards, msg } => {
                    for shard in shards.iter() {
                        outboxes[shard].push(ShardMsg::Down(msg.clone()));
                    }
                }
                HistoryMsg::Shutdown => stop = true,
            }
        }
        release(&shared, &mut outboxes);
        if stop {
            return;
        }
    }
}

/// Hands everything to the shards, waiting (this is not a shard thread) while an inbox is full.
fn release(shared: &Shared, outboxes: &mut [Outbox<ShardMsg>]) {
    loop {
        let mut waiting = false;
        for (shard, outbox) in outboxes.iter_mut().enumerate() {
            outbox.flush(&shared.shard_inboxes[shard]);
            waiting |= !outbox.is_empty();
        }
        if !waiting {
            return;
        }
        if shared.shards_stopped.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(BACKOFF);
    }
}
