//! The history stage of the publish path. The writer thread takes room events in the order home
//! shards decided, commits each batch to SQLite in one transaction, and only then releases it to
//! member shards and senders; reader threads answer replays and history pages; a checkpointer
//! keeps the WAL short. None of them runs on a shard, and nothing unstored is ever acked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::Connection;
use serde_json::value::RawValue;

use crate::bus::{
    AdminMsg, ConnRef, Downstream, EventRecord, HistoryMsg, Inbox, JoinAnswer, Origin, Outbox, ReadRequest, ReplayMode,
    Reply, ShardMsg, TargetInfo,
};
use crate::protocol::{ErrorCode, HistoryItem, Reactions, ServerFrame};
use crate::server::Shared;
use crate::store::{self, Batch, HistoryEntry};
use crate::ws;

/// Messages taken from the inbox per transaction.
const BATCH: usize = 4096;
/// How long to sleep when a destination inbox is full before retrying.
const BACKOFF: Duration = Duration::from_micros(50);
/// An idle thread checks for work (and shutdown) at least this often.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Retention pruning: how often, and how many events per step.
const PRUNE_INTERVAL: Duration = Duration::from_secs(2);
const PRUNE_STEP: u64 = 1000;
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// A storage failure is logged at most this often while it lasts.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What retention keeps; both zero keeps everything.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub per_room: u64,
    pub days: u64,
}

impl Retention {
    fn active(self) -> bool {
        self.per_room > 0 || self.days > 0
    }
}

/// Hands messages to shard inboxes, waiting (never on a shard thread) while one is full.
struct Downlink {
    shared: Arc<Shared>,
    shards: Vec<Outbox<ShardMsg>>,
}

impl Downlink {
    fn new(shared: Arc<Shared>) -> Downlink {
        let shards = (0..shared.shard_count()).map(|_| Outbox::default()).collect();
        Downlink { shared, shards }
    }

    fn send(&mut self, shard: usize, msg: ShardMsg) {
        self.shards[shard].push(msg);
    }

    fn reply(&mut self, conn: ConnRef, reply: Reply) {
        self.send(conn.shard as usize, ShardMsg::Down(Downstream::Reply(conn, reply)));
    }

    fn release(&mut self) {
        let stopped = || self.shared.shards_stopped.load(Ordering::Acquire);
        flush_all(&mut self.shards, &self.shared.shard_inboxes, stopped);
    }
}

/// Hands every outbox to its inbox, sleeping while a destination is full, until all are
/// empty or `consumers_gone` says nobody will take them any more.
fn flush_all<T>(outboxes: &mut [Outbox<T>], inboxes: &[Inbox<T>], consumers_gone: impl Fn() -> bool) {
    loop {
        let mut waiting = false;
        for (outbox, inbox) in outboxes.iter_mut().zip(inboxes) {
            outbox.flush(inbox);
            waiting |= !outbox.is_empty();
        }
        if !waiting || consumers_gone() {
            return;
        }
        std::thread::sleep(BACKOFF);
    }
}

/// Waits for the next message on a parking inbox, up to `IDLE_WAIT`.
fn next_or_park<T>(inbox: &Inbox<T>) -> Option<T> {
    inbox.pop().or_else(|| {
        std::thread::park_timeout(IDLE_WAIT);
        inbox.pop()
    })
}

pub struct Writer {
    conn: Connection,
    down: Downlink,
    readers: Vec<Outbox<ReadRequest>>,
    next_reader: usize,
    /// Rooms whose last batch failed: the seq the home shard will reissue next. Events of
    /// such a room with any other seq were assigned before the home shard heard, and are refused.
    failed: HashMap<Arc<str>, u64>,
    retention: Retention,
    prune_cursor: store::PruneCursor,
    next_prune: Instant,
    last_failure_log: Option<Instant>,
}

/// How one message of a batch fared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Write,
    Refuse,
    Pass,
}

impl Writer {
    pub fn new(conn: Connection, shared: Arc<Shared>, retention: Retention) -> Writer {
        let readers = (0..shared.readers.len()).map(|_| Outbox::default()).collect();
        Writer {
            conn,
            down: Downlink::new(shared),
            readers,
            next_reader: 0,
            failed: HashMap::new(),
            retention,
            prune_cursor: store::PruneCursor::default(),
            next_prune: Instant::now(),
            last_failure_log: None,
        }
    }

    /// Runs until a `Shutdown` message arrives, committing everything queued before it.
    pub fn run(mut self) {
        let shared = self.down.shared.clone();
        shared.history.register_consumer();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            while batch.len() < BATCH {
                match shared.history.pop() {
                    Some(msg) => batch.push(msg),
                    None => break,
                }
            }
            if batch.is_empty() {
                self.prune_if_due();
                if let Some(msg) = next_or_park(&shared.history) {
                    batch.push(msg);
                }
                continue;
            }
            let stop = batch.iter().any(|m| matches!(m, HistoryMsg::Shutdown));
            self.process(&mut batch);
            if stop {
                return;
            }
        }
    }

    fn process(&mut self, batch: &mut Vec<HistoryMsg>) {
        let before = self.failed.clone();
        let fates: Vec<Fate> = batch.iter().map(|m| self.fate(m)).collect();
        let mut lookups = Vec::new();
        let touches_storage =
            fates.contains(&Fate::Write) || batch.iter().any(|m| matches!(m, HistoryMsg::Lookup { .. }));
        let written = if touches_storage {
            let started = Instant::now();
            let written = self.write(batch, &fates, &mut lookups);
            self.down.shared.commit_latency.record(started.elapsed().as_micros() as u64);
            written
        } else {
            // Joins, presence and replies only pass through: no transaction to open.
            Ok(())
        };
        match written {
            Ok(()) => {
                for (msg, fate) in batch.iter().zip(&fates) {
                    if let (HistoryMsg::Event { record, .. }, Fate::Write) = (msg, fate) {
                        self.failed.remove(&record.room);
                    }
                }
                self.release(batch.drain(..), &fates, Some(lookups), ErrorCode::Internal);
            }
            Err(e) => {
                self.failed = before;
                self.note_failure(batch, &fates, &e);
                let refused: Vec<Fate> =
                    fates.iter().map(|f| if *f == Fate::Write { Fate::Refuse } else { *f }).collect();
                let code = if is_disk_full(&e) { ErrorCode::Overloaded } else { ErrorCode::Internal };
                self.release(batch.drain(..), &refused, None, code);
            }
        }
        self.down.release();
        self.flush_readers();
    }

    /// Whether an event may be written: always, unless its room is recovering from a failed
    /// batch and this is not the seq the home shard reissues next.
    fn fate(&mut self, msg: &HistoryMsg) -> Fate {
        let HistoryMsg::Event { record, .. } = msg else { return Fate::Pass };
        match self.failed.get_mut(&record.room) {
            None => Fate::Write,
            Some(expected) if *expected == record.seq => {
                *expected += 1;
                Fate::Write
            }
            Some(_) => Fate::Refuse,
        }
    }

    fn write(
        &mut self,
        batch: &[HistoryMsg],
        fates: &[Fate],
        lookups: &mut Vec<Option<TargetInfo>>,
    ) -> rusqlite::Result<()> {
        let mut tx = Batch::begin(&mut self.conn)?;
        for (msg, fate) in batch.iter().zip(fates) {
            match msg {
                HistoryMsg::Event { record, .. } if *fate == Fate::Write => tx.append(record)?,
                HistoryMsg::Lookup { room, target, .. } => lookups.push(tx.target(room, *target)?),
                _ => {}
            }
        }
        tx.commit()
    }

    /// A batch could not be stored: every room in it resumes at its first unstored seq.
    fn note_failure(&mut self, batch: &[HistoryMsg], fates: &[Fate], e: &rusqlite::Error) {
        let mut count = 0;
        for (msg, fate) in batch.iter().zip(fates) {
            let (HistoryMsg::Event { record, .. }, Fate::Write) = (msg, fate) else { continue };
            count += 1;
            let expected = self.failed.entry(record.room.clone()).or_insert(record.seq);
            if *expected == record.seq {
                let home = crate::bus::home_shard(&record.room, self.down.shards.len());
                let rollback = ShardMsg::Rollback { room: record.room.clone(), last_seq: record.seq - 1 };
                self.down.send(home, rollback);
            }
        }
        let now = Instant::now();
        if self.last_failure_log.is_none_or(|t| now.duration_since(t) >= FAILURE_LOG_INTERVAL) {
            self.last_failure_log = Some(now);
            log::error!("history: cannot store events ({e}); {count} refused, sends fail until storage recovers");
        }
    }

    /// Sends every message of a processed batch on, in order. `lookups` holds the answers to
    /// its lookups, or `None` when the batch failed; refused events get `refuse_code`.
    fn release(
        &mut self,
        batch: impl Iterator<Item = HistoryMsg>,
        fates: &[Fate],
        lookups: Option<Vec<Option<TargetInfo>>>,
        refuse_code: ErrorCode,
    ) {
        let mut lookups = lookups.map(Vec::into_iter);
        for (msg, fate) in batch.zip(fates) {
            match msg {
                HistoryMsg::Event { record, delivery, shards, origin } => {
                    let stored = *fate == Fate::Write;
                    // The ack goes first: the sender's socket is then written before the
                    // (possibly thousands of) members' in the same loop turn.
                    self.answer_origin(origin, &record, stored.then_some(()).ok_or(refuse_code));
                    if stored {
                        for shard in shards.iter() {
                            self.down.send(shard, ShardMsg::Down(Downstream::Deliver(delivery.clone())));
                        }
                    }
                }
                HistoryMsg::Relay { shards, msg } => {
                    for shard in shards.iter() {
                        self.down.send(shard, ShardMsg::Down(msg.clone()));
                    }
                }
                HistoryMsg::Join(mut answer) => {
                    if let Some(next) = self.failed.get(&answer.room) {
                        answer.seq = answer.seq.min(next - 1);
                    }
                    self.answer_join(answer);
                }
                HistoryMsg::Lookup { room, target, home } => {
                    let info = match &mut lookups {
                        Some(found) => Ok(found.next().flatten()),
                        None => Err(()),
                    };
                    self.down.send(home as usize, ShardMsg::Looked { room, target, info });
                }
                HistoryMsg::Shutdown => {}
            }
        }
    }

    /// Tells the sender how its event fared: an `ack` after the commit, or an error.
    fn answer_origin(&mut self, origin: Origin, record: &EventRecord, outcome: Result<(), ErrorCode>) {
        match (origin, outcome) {
            (Origin::Conn(conn, reference), Ok(())) => {
                let ack = ServerFrame::Ack {
                    reference: reference.as_deref(),
                    room: &record.room,
                    seq: record.seq,
                    ts: record.ts,
                };
                self.down.reply(conn, Reply::Frame(ack.to_frame()));
            }
            (Origin::Conn(conn, reference), Err(code)) => {
                let message = "the event could not be stored; it was not sent";
                let frame = ServerFrame::Error { reference: reference.as_deref(), code, message };
                self.down.reply(conn, Reply::Frame(frame.to_frame()));
            }
            (Origin::Admin(id), outcome) => {
                let result = outcome
                    .map(|()| (record.room.clone(), record.seq, record.ts))
                    .map_err(|_| "the event could not be stored");
                let shared = &self.down.shared;
                if shared.admin.push(AdminMsg::Published { id, result }).is_ok() {
                    shared.admin.wake();
                }
            }
        }
    }

    /// A join with nothing to replay is answered here, in order; one with a replay tells the
    /// member shard to hold the room's later events, and a reader builds the answer.
    fn answer_join(&mut self, answer: JoinAnswer) {
        let conn = answer.conn;
        if answer.replay.is_none() {
            let frames = vec![joined_frame(&answer, false)];
            self.down.reply(conn, Reply::Joined { room: answer.room, frames });
            return;
        }
        self.down.reply(conn, Reply::JoinStart { room: answer.room.clone() });
        let reader = self.next_reader;
        self.next_reader = (self.next_reader + 1) % self.readers.len();
        self.readers[reader].push(ReadRequest::Replay(answer));
    }

    /// Readers outlive the writer, so this always drains.
    fn flush_readers(&mut self) {
        flush_all(&mut self.readers, &self.down.shared.readers, || false);
    }

    fn prune_if_due(&mut self) {
        if !self.retention.active() || Instant::now() < self.next_prune {
            return;
        }
        let older_than = (self.retention.days > 0)
            .then(|| crate::timer::unix_millis().saturating_sub(self.retention.days * 86_400_000));
        let cursor = &mut self.prune_cursor;
        match store::prune_step(&mut self.conn, cursor, self.retention.per_room, older_than, PRUNE_STEP) {
            // Not done: the next step runs as soon as the writer is idle again.
            Ok((n, done)) => {
                if n > 0 {
                    log::debug!("history: pruned {n} events");
                }
                if done {
                    self.next_prune = Instant::now() + PRUNE_INTERVAL;
                }
            }
            Err(e) => {
                log::warn!("history: pruning failed: {e}");
                self.next_prune = Instant::now() + PRUNE_INTERVAL;
            }
        }
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

fn joined_frame(answer: &JoinAnswer, truncated: bool) -> Bytes {
    ServerFrame::Joined {
        reference: answer.reference.as_deref(),
        room: &answer.room,
        seq: answer.seq,
        members: answer.members,
        truncated,
    }
    .to_frame()
}

/// A reader thread: replays and history pages from its own read-only connection.
pub struct Reader {
    conn: Connection,
    down: Downlink,
    index: usize,
}

impl Reader {
    pub fn new(conn: Connection, shared: Arc<Shared>, index: usize) -> Reader {
        Reader { conn, down: Downlink::new(shared), index }
    }

    pub fn run(mut self) {
        let shared = self.down.shared.clone();
        let inbox = &shared.readers[self.index];
        inbox.register_consumer();
        loop {
            let Some(request) = next_or_park(inbox) else { continue };
            match request {
                ReadRequest::Replay(answer) => self.replay(answer),
                ReadRequest::History { conn, room, reference, before, after, limit } => {
                    let frame = self.history_page(&room, reference.as_deref(), before, after, limit);
                    self.down.reply(conn, Reply::Frame(frame));
                }
                ReadRequest::Shutdown => return,
            }
            self.down.release();
        }
    }

    fn replay(&mut self, answer: JoinAnswer) {
        let read = match answer.replay {
            Some(ReplayMode::Since { since, max }) => store::replay(&self.conn, &answer.room, since, answer.seq, max)
                .map(|(events, truncated)| {
                    let frames = events.iter().map(|json| ws::text_frame(|b| b.extend_from_slice(json.as_bytes())));
                    (frames.collect(), truncated)
                }),
            Some(ReplayMode::Last(n)) => store::last_messages(&self.conn, &answer.room, n, answer.seq)
                .map(|entries| (entries.into_iter().map(|e| message_frame(&answer.room, e)).collect(), false)),
            None => Ok((Vec::new(), false)),
        };
        let (replayed, truncated): (Vec<Bytes>, bool) = read.unwrap_or_else(|e| {
            // The client still joins; `truncated` tells it to page with `history`.
            log::warn!("history: replay of {} failed: {e}", answer.room);
            (Vec::new(), true)
        });
        let mut frames = Vec::with_capacity(1 + replayed.len());
        frames.push(joined_frame(&answer, truncated));
        frames.extend(replayed);
        self.down.reply(answer.conn, Reply::Joined { room: answer.room, frames });
    }

    fn history_page(
        &self,
        room: &str,
        reference: Option<&str>,
        before: Option<u64>,
        after: Option<u64>,
        limit: u64,
    ) -> Bytes {
        match store::history(&self.conn, room, before, after, limit) {
            Ok((entries, more)) => {
                let messages: Vec<HistoryItem> = entries.into_iter().map(history_item).collect();
                ServerFrame::History { reference, room, messages: &messages, more }.to_frame()
            }
            Err(e) => {
                log::warn!("history: page of {room} failed: {e}");
                let message = "history is unavailable right now";
                ServerFrame::Error { reference, code: ErrorCode::Internal, message }.to_frame()
            }
        }
    }
}

/// A stored message as a `message` frame carrying its current body.
fn message_frame(room: &str, e: HistoryEntry) -> Bytes {
    let body = e.body.and_then(|b| RawValue::from_string(b).ok());
    let frame = ServerFrame::Message {
        room,
        seq: e.seq,
        from: &e.from,
        name: e.name.as_deref(),
        body: body.as_deref().unwrap_or(RawValue::NULL),
        reply_to: e.reply_to,
        ts: e.ts,
    };
    frame.to_frame()
}

fn history_item(e: HistoryEntry) -> HistoryItem {
    HistoryItem {
        seq: e.seq,
        from: e.from,
        name: e.name,
        // Bodies were valid JSON when stored; a damaged one reads as null rather than failing the page.
        body: e.body.and_then(|b| RawValue::from_string(b).ok()),
        reply_to: e.reply_to,
        ts: e.ts,
        edited_ts: e.edited_ts,
        deleted: e.deleted,
        reactions: Reactions(e.reactions),
    }
}

/// Copies the WAL back into the database in the background (PASSIVE: never blocks the writer
/// or readers), so commits on the publish path never pay for a checkpoint.
pub fn run_checkpointer(path: PathBuf, stop: Arc<AtomicBool>) {
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("history: checkpointer cannot open {}: {e}", path.display());
            return;
        }
    };
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(CHECKPOINT_INTERVAL);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::warn!("history: checkpoint failed: {e}");
        }
    }
    // Shutting down: the writer is done, so a full checkpoint leaves a compact file behind.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        log::warn!("history: final checkpoint failed: {e}");
    }
}
