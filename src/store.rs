//! The SQLite history database: schema and migrations, the append-only event log, and the reads
//! that replay and history pages need (folding edits, deletes and reactions into messages).
//! Plain synchronous calls: it knows no threads or queues, and it never runs on a shard.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bus::{EventKind, EventRecord, TargetInfo};
use crate::config::Synchronous;
use crate::ws;

/// Marks a file as roomcast's ("RCAS"), so a foreign SQLite database is never written to.
const APPLICATION_ID: i32 = 0x5243_4153;
/// Ordered schema migrations; `user_version` is how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the event log, one row per event exactly as delivered; edits, deletes and reactions
    // are found by their target through a partial index, so appending a message touches one
    // b-tree. `rooms` keeps each room's high-water seq in the same transactions as the events,
    // so pruning never lets a seq be reused.
    "CREATE TABLE events (
        room TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        author TEXT NOT NULL,
        target INTEGER,
        json TEXT NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE INDEX events_by_target ON events (room, target) WHERE target IS NOT NULL;
    CREATE TABLE rooms (
        room TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

const KIND_MESSAGE: i64 = 0;
const KIND_EDITED: i64 = 1;
const KIND_DELETED: i64 = 2;
const KIND_REACTION_ADD: i64 = 3;
const KIND_REACTION_REMOVE: i64 = 4;

/// Page cache of each connection, in KiB (SQLite's negative `cache_size`): a batch of a few
/// thousand events touches many pages, and spilling them mid-transaction costs 2-3x.
const CACHE_KIB: i64 = 64 * 1024;
/// How long a reader waits on a lock before reporting busy (the writer's commits are short).
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum StoreError {
    Open { path: PathBuf, source: rusqlite::Error },
    NotOurs { path: PathBuf },
    TooNew { path: PathBuf, version: i64 },
    Sql(rusqlite::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, source } => {
                write!(f, "cannot open history database {}: {source}", path.display())
            }
            StoreError::NotOurs { path } => write!(
                f,
                "{} is not a roomcast history database (it belongs to another application); point history.path elsewhere",
                path.display()
            ),
            StoreError::TooNew { path, version } => write!(
                f,
                "{} has schema version {version}, newer than this roomcast understands ({}); upgrade roomcast",
                path.display(),
                MIGRATIONS.len()
            ),
            StoreError::Sql(e) => write!(f, "history database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e)
    }
}

/// Opens (creating and migrating if needed) the database for writing.
pub fn open_writer(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
    let sync = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    // Checkpoints run on their own thread so they never stall a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    let ours = app_id == APPLICATION_ID || (app_id == 0 && tables == 0);
    if !ours {
        return Err(StoreError::NotOurs { path: path.to_path_buf() });
    }
    if version > MIGRATIONS.len() as i64 {
        return Err(StoreError::TooNew { path: path.to_path_buf(), version });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        log::info!("history database {}: migrated to schema version {}", path.display(), i + 1);
    }
    Ok(())
}

/// Every room's last seq: where each room continues after a restart.
pub fn room_seqs(conn: &Connection) -> Result<HashMap<Arc<str>, u64>, StoreError> {
    let mut stmt = conn.prepare("SELECT room, last_seq FROM rooms")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut seqs = HashMap::new();
    for row in rows {
        let (room, seq) = row?;
        seqs.insert(Arc::from(room), seq as u64);
    }
    Ok(seqs)
}

/// One writer transaction: events appended and targets looked up see each other in order.
pub struct Batch<'c> {
    tx: Transaction<'c>,
    /// Highest seq appended per room, written to `rooms` on commit.
    high: HashMap<Arc<str>, u64>,
}

impl<'c> Batch<'c> {
    pub fn begin(conn: &'c mut Connection) -> rusqlite::Result<Batch<'c>> {
        Ok(Batch { tx: conn.transaction()?, high: HashMap::new() })
    }

    pub fn append(&mut self, e: &EventRecord) -> rusqlite::Result<()> {
        let payload = ws::frame_payload(&e.frame);
        // The frame was serialized from Rust strings, so it is UTF-8.
        let json = std::str::from_utf8(&payload).unwrap_or_default();
        let (kind, target) = match &e.kind {
            EventKind::Message { .. } => (KIND_MESSAGE, None),
            EventKind::Edited { target, .. } => (KIND_EDITED, Some(*target as i64)),
            EventKind::Deleted { target } => (KIND_DELETED, Some(*target as i64)),
            EventKind::Reaction { target, add: true, .. } => (KIND_REACTION_ADD, Some(*target as i64)),
            EventKind::Reaction { target, add: false, .. } => (KIND_REACTION_REMOVE, Some(*target as i64)),
        };
        self.tx
            .prepare_cached(
                "INSERT INTO events (room, seq, ts, kind, author, target, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![&*e.room, e.seq as i64, e.ts as i64, kind, &*e.from, target, json])?;
        match self.high.get_mut(&e.room) {
            Some(high) => *high = (*high).max(e.seq),
            None => {
                self.high.insert(e.room.clone(), e.seq);
            }
        }
        Ok(())
    }

    /// The stored message at `seq`, if there is one (events earlier in this batch included).
    pub fn target(&self, room: &str, seq: u64) -> rusqlite::Result<Option<TargetInfo>> {
        let author: Option<String> = self
            .tx
            .prepare_cached("SELECT author FROM events WHERE room = ?1 AND seq = ?2 AND kind = 0")?
            .query_row(params![room, seq as i64], |r| r.get(0))
            .optional()?;
        let Some(author) = author else { return Ok(None) };
        let deleted = self
            .tx
            .prepare_cached("SELECT 1 FROM events WHERE room = ?1 AND target = ?2 AND kind = 2 LIMIT 1")?
            .exists(params![room, seq as i64])?;
        Ok(Some(TargetInfo { author: author.into(), deleted }))
    }

    pub fn commit(self) -> rusqlite::Result<()> {
        {
            let mut upsert = self.tx.prepare_cached(
                "INSERT INTO rooms (room, last_seq) VALUES (?1, ?2)
                 ON CONFLICT (room) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?;
            for (room, seq) in &self.high {
                upsert.execute(params![&**room, *seq as i64])?;
            }
        }
        self.tx.commit()
    }
}

/// Opens a read-only connection for a reader thread.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    conn.busy_timeout(READER_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(conn)
}

/// Stored event JSON for `since < seq <= upto`, at most `max` (the newest), oldest first, and
/// whether some of that range is missing (over `max`, or pruned by retention).
pub fn replay(
    conn: &Connection,
    room: &str,
    since: u64,
    upto: u64,
    max: usize,
) -> rusqlite::Result<(Vec<String>, bool)> {
    if since >= upto {
        return Ok((Vec::new(), false));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT json FROM events WHERE room = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT ?4",
    )?;
    let mut events: Vec<String> = stmt
        .query_map(params![room, since as i64, upto as i64, max as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    events.reverse();
    let truncated = (events.len() as u64) < upto - since;
    Ok((events, truncated))
}

/// The newest `n` messages up to `upto` that still exist, with their current (edited) bodies,
/// oldest first: what a client joining with `history: n` should show, never a deleted text.
pub fn last_messages(conn: &Connection, room: &str, n: u64, upto: u64) -> rusqlite::Result<Vec<HistoryEntry>> {
    let mut kept = Vec::new();
    let mut before = upto.saturating_add(1);
    while (kept.len() as u64) < n {
        let page = message_page(conn, room, 0, before, n, false)?;
        let Some(oldest) = page.last().map(|e| e.seq) else { break };
        before = oldest;
        kept.extend(fold(conn, room, page)?.into_iter().filter(|e| !e.deleted));
    }
    kept.truncate(n as usize);
    kept.reverse();
    Ok(kept)
}

/// One message as a history page lists it: with later edits, deletes and reactions folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: u64,
    pub from: String,
    pub name: Option<String>,
    /// Raw JSON; `None` once deleted.
    pub body: Option<String>,
    pub reply_to: Option<u64>,
    pub ts: u64,
    pub edited_ts: Option<u64>,
    pub deleted: bool,
    /// Emoji and the users who reacted with it, in the order they did.
    pub reactions: Vec<(String, Vec<String>)>,
}

/// A page of history: `before` / `after` are exclusive seq bounds; with `after` the page starts
/// there and pages forward, otherwise it ends at `before` (or the newest) and pages backward.
/// Returns the page in ascending seq and whether more messages lie in the paging direction.
pub fn history(
    conn: &Connection,
    room: &str,
    before: Option<u64>,
    after: Option<u64>,
    limit: u64,
) -> rusqlite::Result<(Vec<HistoryEntry>, bool)> {
    let forward = after.is_some();
    let mut page = message_page(conn, room, after.unwrap_or(0), before.unwrap_or(u64::MAX), limit + 1, forward)?;
    let more = page.len() as u64 > limit;
    page.truncate(limit as usize);
    if !forward {
        page.reverse();
    }
    Ok((fold(conn, room, page)?, more))
}

/// Message events with `after < seq < before`, at most `limit`, in the paging direction.
fn message_page(
    conn: &Connection,
    room: &str,
    after: u64,
    before: u64,
    limit: u64,
    forward: bool,
) -> rusqlite::Result<Vec<HistoryEntry>> {
    let sql = if forward {
        "SELECT seq, author, ts, json FROM events
         WHERE room = ?1 AND kind = 0 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4"
    } else {
        "SELECT seq, author, ts, json FROM events
         WHERE room = ?1 AND kind = 0 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
    };
    let before = before.min(i64::MAX as u64) as i64;
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![room, after as i64, before, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64, r.get::<_, String>(3)?))
    })?;
    let mut page = Vec::new();
    for row in rows {
        let (seq, from, ts, json) = row?;
        let m: StoredMessage = serde_json::from_str(&json).unwrap_or_default();
        page.push(HistoryEntry {
            seq,
            from,
            name: m.name.map(Cow::into_owned),
            body: m.body.map(|b| b.get().to_string()),
            reply_to: m.reply_to,
            ts,
            edited_ts: None,
            deleted: false,
            reactions: Vec::new(),
        });
    }
    Ok(page)
}

/// The fields of stored event JSON that folding needs.
#[derive(Deserialize, Default)]
struct StoredMessage<'a> {
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    reply_to: Option<u64>,
    #[serde(borrow)]
    emoji: Option<Cow<'a, str>>,
}

/// Applies, in seq order, every edit, delete and reaction that targets a message of `page`
/// (ascending seq).
fn fold(conn: &Connection, room: &str, mut page: Vec<HistoryEntry>) -> rusqlite::Result<Vec<HistoryEntry>> {
    let (Some(lo), Some(hi)) = (page.iter().map(|e| e.seq).min(), page.iter().map(|e| e.seq).max()) else {
        return Ok(page);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT kind, author, target, ts, json FROM events
         WHERE room = ?1 AND target >= ?2 AND target <= ?3 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![room, lo as i64, hi as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
            r.get::<_, String>(4)?,
        ))
    })?;
    let index: HashMap<u64, usize> = page.iter().enumerate().map(|(i, e)| (e.seq, i)).collect();
    for row in rows {
        let (kind, author, target, ts, json) = row?;
        let Some(entry) = index.get(&target).map(|&i| &mut page[i]) else { continue };
        let event: StoredMessage = serde_json::from_str(&json).unwrap_or_default();
        match kind {
            KIND_EDITED if !entry.deleted => {
                entry.body = event.body.map(|b| b.get().to_string());
                entry.edited_ts = Some(ts);
            }
            KIND_DELETED => {
                entry.deleted = true;
                entry.body = None;
                entry.reactions.clear();
            }
            KIND_REACTION_ADD if !entry.deleted => {
                let emoji = event.emoji.unwrap_or_default().into_owned();
                match entry.reactions.iter_mut().find(|(e, _)| *e == emoji) {
                    Some((_, users)) if users.contains(&author) => {}
                    Some((_, users)) => users.push(author),
                    None => entry.reactions.push((emoji, vec![author])),
                }
            }
            KIND_REACTION_REMOVE => {
                let emoji = event.emoji.unwrap_or_default();
                if let Some(i) = entry.reactions.iter().position(|(e, _)| *e == emoji) {
                    entry.reactions[i].1.retain(|u| *u != author);
                    if entry.reactions[i].1.is_empty() {
                        entry.reactions.remove(i);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(page)
}

/// Rooms one pruning step looks at.
const PRUNE_ROOMS_PER_STEP: i64 = 64;

/// Where pruning goes on from: rooms are visited in name order, a few per step.
#[derive(Debug, Default)]
pub struct PruneCursor {
    after_room: String,
}

/// One small pruning step: looks at the next few rooms after the cursor and removes up to
/// `limit` of their oldest events (with their folded messages) that retention no longer keeps.
/// Returns the events removed and whether the pass over all rooms is complete.
pub fn prune_step(
    conn: &mut Connection,
    cursor: &mut PruneCursor,
    keep_per_room: u64,
    older_than_ms: Option<u64>,
    limit: u64,
) -> rusqlite::Result<(u64, bool)> {
    let tx = conn.transaction()?;
    let mut removed = 0;
    let rooms: Vec<(String, i64)> = tx
        .prepare_cached("SELECT room, last_seq FROM rooms WHERE room > ?1 ORDER BY room LIMIT ?2")?
        .query_map(params![cursor.after_room, PRUNE_ROOMS_PER_STEP], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let pass_done = (rooms.len() as i64) < PRUNE_ROOMS_PER_STEP;
    let mut rooms_finished = true;
    for (room, last_seq) in rooms {
        let (n, finished) = prune_room(&tx, &room, last_seq, keep_per_room, older_than_ms, limit - removed)?;
        removed += n;
        if !finished {
            rooms_finished = false;
            break;
        }
        cursor.after_room = room;
    }
    tx.commit()?;
    let done = pass_done && rooms_finished;
    if done {
        cursor.after_room.clear();
    }
    Ok((removed, done))
}

/// Removes up to `budget` of one room's events that retention no longer keeps; returns how
/// many went and whether the room is now within retention.
fn prune_room(
    tx: &Transaction,
    room: &str,
    last_seq: i64,
    keep_per_room: u64,
    older_than_ms: Option<u64>,
    budget: u64,
) -> rusqlite::Result<(u64, bool)> {
    let mut cutoff = 0i64;
    if keep_per_room > 0 {
        cutoff = cutoff.max(last_seq - keep_per_room as i64);
    }
    let older_than = older_than_ms.map(|ms| ms.min(i64::MAX as u64) as i64);
    if let Some(ms) = older_than {
        // ts grows with seq, so the old events are the first ones: look at no more than a step's worth.
        let newest_old: Option<i64> = tx
            .prepare_cached(
                "SELECT max(seq) FROM (SELECT seq, ts FROM events WHERE room = ?1 ORDER BY seq LIMIT ?3) WHERE ts < ?2",
            )?
            .query_row(params![room, ms, budget.max(1) as i64], |r| r.get(0))?;
        cutoff = cutoff.max(newest_old.unwrap_or(0));
    }
    let oldest: Option<i64> =
        tx.prepare_cached("SELECT min(seq) FROM events WHERE room = ?1")?.query_row([room], |r| r.get(0))?;
    let Some(oldest) = oldest.filter(|o| *o <= cutoff) else { return Ok((0, true)) };
    if budget == 0 {
        return Ok((0, false));
    }
    // Seqs are gap-free, so a seq range of `budget` holds at most `budget` events.
    let upto = cutoff.min(oldest + budget as i64 - 1);
    let n = tx.prepare_cached("DELETE FROM events WHERE room = ?1 AND seq <= ?2")?.execute(params![room, upto])?;
    let still_old: Option<i64> = match older_than {
        Some(ms) => tx
            .prepare_cached("SELECT ts FROM events WHERE room = ?1 ORDER BY seq LIMIT 1")?
            .query_row([room], |r| r.get(0))
            .optional()?
            .filter(|ts: &i64| *ts < ms),
        None => None,
    };
    Ok((n as u64, upto == cutoff && still_old.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::EventKind;
    use serde_json::value::RawValue;

    /// A database path in a fresh directory that is removed when the guard drops.
    struct TempDb(PathBuf);

    impl Drop for TempDb {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    impl std::ops::Deref for TempDb {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TempDb {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    fn temp_db(tag: &str) -> TempDb {
        let dir = std::env::temp_dir().join(format!("roomcast-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDb(dir.join("h.db"))
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    fn record(room: &str, seq: u64, from: &str, kind: EventKind) -> EventRecord {
        let frame = crate::rooms::event_frame(room, seq, from, seq * 10, &kind);
        EventRecord { room: room.into(), seq, ts: seq * 10, from: from.into(), kind, frame }
    }

    fn message(room: &str, seq: u64, from: &str, body: &str) -> EventRecord {
        record(room, seq, from, EventKind::Message { name: None, body: raw(body), reply_to: None })
    }

    #[test]
    fn append_fold_and_page() {
        let path = temp_db("fold");
        let mut w = open_writer(&path, Synchronous::Normal).unwrap();
        let mut b = Batch::begin(&mut w).unwrap();
        for seq in 1..=5 {
            b.append(&message("r", seq, "alice", &format!("{seq}"))).unwrap();
        }
        b.append(&record("r", 6, "alice", EventKind::Edited { target: 2, body: raw(r#""two""#) })).unwrap();
        b.append(&record("r", 7, "bob", EventKind::Reaction { target: 3, emoji: "👍".into(), add: true })).unwrap();
        b.append(&record("r", 8, "carol", EventKind::Reaction { target: 3, emoji: "👍".into(), add: true })).unwrap();
        b.append(&record("r", 9, "bob", EventKind::Reaction { target: 3, emoji: "👍".into(), add: true })).unwrap();
        b.append(&record("r", 10, "alice", EventKind::Deleted { target: 4 })).unwrap();
        assert_eq!(b.target("r", 4).unwrap(), Some(TargetInfo { author: "alice".into(), deleted: true }));
        assert_eq!(b.target("r", 6).unwrap(), None, "an edit is not a message");
        b.commit().unwrap();

        let r = open_reader(&path).unwrap();
        let (page, more) = history(&r, "r", None, None, 3).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(more);
        assert_eq!(page[0].reactions, vec![("👍".to_string(), vec!["bob".to_string(), "carol".to_string()])]);
        assert!(page[1].deleted && page[1].body.is_none());
        let (page, more) = history(&r, "r", Some(3), None, 10).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(!more);
        assert_eq!(page[1].body.as_deref(), Some(r#""two""#));
        assert_eq!(page[1].edited_ts, Some(60));
        let (page, more) = history(&r, "r", None, Some(1), 2).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert!(more);
        let (events, truncated) = replay(&r, "r", 7, 10, 100).unwrap();
        assert_eq!(events.len(), 3);
        assert!(!truncated);
        let (events, truncated) = replay(&r, "r", 0, 10, 4).unwrap();
        assert_eq!(events.len(), 4);
        assert!(truncated);
        let last = last_messages(&r, "r", 2, 10).unwrap();
        assert_eq!(last.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 5], "the deleted 4 is skipped");
        assert_eq!(room_seqs(&w).unwrap().get("r"), Some(&10));
    }

    #[test]
    fn migration_is_recorded_and_foreign_files_are_refused() {
        let path = temp_db("mig");
        drop(open_writer(&path, Synchronous::Full).unwrap());
        let c = Connection::open(&path).unwrap();
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        drop(c);
        drop(open_writer(&path, Synchronous::Normal).unwrap());

        let foreign = temp_db("foreign");
        let c = Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(c);
        assert!(matches!(open_writer(&foreign, Synchronous::Normal), Err(StoreError::NotOurs { .. })));

        let garbage = temp_db("garbage");
        std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
        let err = open_writer(&garbage, Synchronous::Normal).unwrap_err().to_string();
        assert!(err.contains("not a database") || err.contains("cannot open"), "{err}");
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_high_water_mark() {
        let path = temp_db("prune");
        let mut w = open_writer(&path, Synchronous::Normal).unwrap();
        let mut b = Batch::begin(&mut w).unwrap();
        for seq in 1..=20 {
            b.append(&message("r", seq, "a", "1")).unwrap();
        }
        b.commit().unwrap();
        let mut total = 0;
        let mut cursor = PruneCursor::default();
        loop {
            let (n, done) = prune_step(&mut w, &mut cursor, 5, None, 4).unwrap();
            assert!(n <= 4);
            total += n;
            if done {
                break;
            }
        }
        assert_eq!(total, 15);
        let r = open_reader(&path).unwrap();
        let (page, _) = history(&r, "r", None, None, 100).unwrap();
        assert_eq!(page.first().unwrap().seq, 16);
        let (_, truncated) = replay(&r, "r", 0, 20, 100).unwrap();
        assert!(truncated, "pruned events make a replay truncated");
        let everything_is_old = Some(u64::MAX);
        assert_eq!(prune_step(&mut w, &mut cursor, 0, everything_is_old, 100).unwrap(), (5, true));
        assert_eq!(room_seqs(&w).unwrap().get("r"), Some(&20), "the seq high-water mark survives pruning");
    }
}
