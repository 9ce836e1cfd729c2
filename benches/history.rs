//! The history writer alone. Run with `cargo bench --bench history`.
//!
//! 1. Throughput: events committed per second in batches, `synchronous = normal` and `full`.
//! 2. Commit wait at a steady 10,000 events/s through the real writer thread, with the
//!    background checkpointer running as in the daemon: the time from an event entering the
//!    history queue to its delivery reaching the shard's inbox (queueing, group commit,
//!    release), as percentiles. For comparison, the same with SQLite's own auto-checkpoint,
//!    which runs inside the committing thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use mio::{Poll, Waker};
use roomcast::bus::{
    Audience, ConnRef, Delivery, Downstream, EventKind, EventRecord, Exclude, HistoryMsg, Inbox, Origin, ShardMsg,
    ShardSet,
};
use roomcast::config::Synchronous;
use roomcast::history::{self, Retention, Writer};
use roomcast::metrics::ShardCounters;
use roomcast::protocol::ServerFrame;
use roomcast::server::Shared;
use roomcast::store::{self, Batch};
use serde_json::value::RawValue;

const THROUGHPUT_EVENTS: u64 = 300_000;
const BATCH: usize = 4096;
const STEADY_RATE: u64 = 10_000;
const STEADY_SECONDS: u64 = 5;

fn main() {
    for sync in [Synchronous::Normal, Synchronous::Full] {
        throughput(sync);
    }
    for sync in [Synchronous::Normal, Synchronous::Full] {
        steady_latency(sync, Checkpoints::Background);
    }
    steady_latency(Synchronous::Normal, Checkpoints::InCommit);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Checkpoints {
    /// The daemon's way: a separate thread, PASSIVE, every second.
    Background,
    /// SQLite's default: the committing connection checkpoints every 1000 WAL pages.
    InCommit,
}

fn db_path(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("roomcast-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("history.db")
}

/// A message of about 100 bytes of body, in one of 100 rooms, as the home shard builds it.
fn event(seq: u64) -> (EventRecord, Delivery) {
    let room: Arc<str> = format!("room-{}", seq % 100).into();
    let body =
        RawValue::from_string(format!(r#"{{"text":"message number {seq} with some padding to 100 bytes....."}}"#))
            .expect("valid JSON");
    let ts = 1_795_000_000_000 + seq;
    let room_seq = seq / 100 + 1;
    let frame =
        ServerFrame::Message { room: &room, seq: room_seq, from: "bench", name: None, body: &body, reply_to: None, ts }
            .to_frame();
    let delivery =
        Delivery { room: room.clone(), frame: frame.clone(), audience: Audience::Room, exclude: Exclude::Nobody };
    let kind = EventKind::Message { name: None, body, reply_to: None };
    (EventRecord { room, seq: room_seq, ts, from: "bench".into(), kind, frame }, delivery)
}

fn throughput(sync: Synchronous) {
    let path = db_path("throughput");
    let mut conn = store::open_writer(&path, sync).expect("open");
    let events: Vec<EventRecord> = (0..THROUGHPUT_EVENTS).map(|s| event(s).0).collect();
    let started = Instant::now();
    for chunk in events.chunks(BATCH) {
        let mut batch = Batch::begin(&mut conn).expect("begin");
        for e in chunk {
            batch.append(e).expect("append");
        }
        batch.commit().expect("commit");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "throughput  synchronous={sync:?}: {THROUGHPUT_EVENTS} events in batches of {BATCH}: {:.0} events/s ({:.2} us/event)",
        THROUGHPUT_EVENTS as f64 / secs,
        secs * 1e6 / THROUGHPUT_EVENTS as f64
    );
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

fn steady_latency(sync: Synchronous, checkpoints: Checkpoints) {
    let path = db_path("steady");
    let conn = store::open_writer(&path, sync).expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let checkpointer = if checkpoints == Checkpoints::InCommit {
        conn.pragma_update(None, "wal_autocheckpoint", 1000).expect("pragma");
        None
    } else {
        let (path, stop) = (path.clone(), stop.clone());
        Some(std::thread::spawn(move || history::run_checkpointer(path, stop)))
    };
    let poll = Poll::new().expect("poll");
    let waker = Waker::new(poll.registry(), mio::Token(0)).expect("waker");
    let shared = Arc::new(Shared {
        shard_inboxes: vec![Inbox::with_waker(1 << 16, waker)],
        history: Inbox::with_parking(1 << 16),
        readers: vec![Inbox::with_parking(16)],
        admin: Inbox::with_parking(16),
        acceptor: Inbox::with_parking(16),
        counters: vec![ShardCounters::default()],
        commit_latency: Default::default(),
        ws_connections: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        shards_stopped: AtomicBool::new(false),
        started: Instant::now(),
        boot_nonce: 0,
    });
    let writer = Writer::new(conn, shared.clone(), Retention { per_room: 0, days: 0 });
    let writer = std::thread::spawn(move || writer.run());

    let total = STEADY_RATE * STEADY_SECONDS;
    let events: Vec<(EventRecord, Delivery)> = (0..total).map(event).collect();
    let mut sent_at = Vec::with_capacity(total as usize);
    let mut waits_us = Vec::with_capacity(total as usize);
    let origin = ConnRef { shard: 0, key: 0, generation: 0 };
    let started = Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / STEADY_RATE);
    let mut events = events.into_iter();
    let mut next = 0u64;
    while (waits_us.len() as u64) < total {
        // Produce on schedule (paced, not bursted), consume whatever has been released.
        while next < total && started.elapsed() >= interval * next as u32 {
            let (record, delivery) = events.next().expect("event");
            let msg =
                HistoryMsg::Event { record, delivery, shards: ShardSet::one(0), origin: Origin::Conn(origin, None) };
            sent_at.push(Instant::now());
            assert!(shared.history.push(msg).is_ok(), "history queue full");
            shared.history.wake();
            next += 1;
        }
        while let Some(msg) = shared.shard_inboxes[0].pop() {
            if let ShardMsg::Down(Downstream::Deliver(_)) = msg {
                let i = waits_us.len();
                waits_us.push(sent_at[i].elapsed().as_micros() as u64);
            }
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    assert!(shared.history.push(HistoryMsg::Shutdown).is_ok());
    shared.history.wake();
    let _ = writer.join();
    stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(c) = checkpointer {
        c.thread().unpark();
        let _ = c.join();
    }
    waits_us.sort_unstable();
    let pct = |p: f64| waits_us[((waits_us.len() as f64 * p) as usize).min(waits_us.len() - 1)] as f64 / 1000.0;
    println!(
        "commit wait synchronous={sync:?} checkpoints={checkpoints:?} at {STEADY_RATE} events/s for {STEADY_SECONDS}s: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}
