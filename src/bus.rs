//! The messages threads send each other and the bounded lock-free queues they travel on
//! (each with a `mio::Waker` or a thread to unpark). It carries data; it decides nothing.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::Thread;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

use crate::auth::Verifier;
use crate::config::Config;
use mio::Waker;
use mio::net::TcpStream;
use serde_json::value::RawValue;

/// Capacity of each shard's inbox.
pub const SHARD_INBOX: usize = 32 * 1024;
/// Capacity of the history stage's inbox.
pub const HISTORY_INBOX: usize = 16 * 1024;
/// Capacity of each history reader's inbox.
pub const READER_INBOX: usize = 8 * 1024;
/// Capacity of the admin thread's inbox.
pub const ADMIN_INBOX: usize = 4 * 1024;
/// Capacity of the acceptor's inbox (close notices).
pub const ACCEPTOR_INBOX: usize = 16 * 1024;
/// A shard refuses new client publishes (error `overloaded`) while this many messages wait
/// in its outbox for one destination.
pub const OUTBOX_SOFT_LIMIT: usize = 8 * 1024;

/// Identifies one connection: its shard, slab slot and the slot's generation, so a late
/// message can never reach the next tenant of a reused slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub shard: u16,
    pub key: u32,
    pub generation: u32,
}

/// A set of shard indexes (at most [`MAX_SHARDS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardSet(u128);

pub const MAX_SHARDS: usize = 128;

impl ShardSet {
    pub fn one(shard: usize) -> ShardSet {
        ShardSet(1 << shard)
    }

    pub fn all(count: usize) -> ShardSet {
        ShardSet(if count >= MAX_SHARDS { u128::MAX } else { (1u128 << count) - 1 })
    }

    pub fn insert(&mut self, shard: usize) {
        self.0 |= 1 << shard;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                i
            })
        })
    }
}

/// Who on a member shard receives a room event.
#[derive(Clone, Debug)]
pub enum Audience {
    /// Connections that joined the room.
    Room,
    /// Every connection of these users (a `dm:` room's two users, joined or not).
    Users(Arc<str>, Arc<str>),
}

/// Who does not receive it.
#[derive(Clone, Debug)]
pub enum Exclude {
    Nobody,
    /// The sender's connection: it gets an `ack` instead.
    Conn(ConnRef),
    /// Every connection of a user (a user is not shown their own typing).
    User(Arc<str>),
}

/// One event frame for the members of a room on one shard: built once, shared by all.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub room: Arc<str>,
    pub frame: Bytes,
    pub audience: Audience,
    pub exclude: Exclude,
}

/// Something for one connection.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The `joined` frame followed by any replayed events; the shard marks the room joined.
    Joined { room: Arc<str>, frames: Vec<Bytes> },
    /// Sent by the history stage when a join needs a replay read: room events that reach the
    /// shard after this one come after the join point and wait for the replay.
    JoinStart { room: Arc<str> },
    /// A ready frame (`ack`, `left`, `presence_list`, `history`, `error`).
    Frame(Bytes),
}

/// What flows from home shards and the history stage down to member shards.
#[derive(Clone, Debug)]
pub enum Downstream {
    Deliver(Delivery),
    Reply(ConnRef, Reply),
}

/// A request to a room's home shard, the one place a room's order and membership are decided.
#[derive(Debug)]
pub enum HomeMsg {
    Join(JoinRequest),
    /// A connection left (`reply`: the client asked and awaits `left`) or closed.
    Leave {
        room: Arc<str>,
        conn: ConnRef,
        user: Arc<str>,
        reply: bool,
        reference: Option<Box<str>>,
    },
    Publish(Publish),
    /// Edit, delete or (un)react: validated against the stored target before it gets a seq.
    Mutate(Mutation),
    Typing {
        room: Arc<str>,
        user: Arc<str>,
        active: bool,
    },
    PresenceQuery {
        room: Arc<str>,
        conn: ConnRef,
        reference: Option<Box<str>>,
    },
}

#[derive(Debug)]
pub struct JoinRequest {
    pub room: Arc<str>,
    pub conn: ConnRef,
    pub user: Arc<str>,
    pub reference: Option<Box<str>>,
    pub since: Option<u64>,
    pub history: Option<u64>,
    /// The connection was already a member: answer, but count nothing twice.
    pub rejoin: bool,
}

#[derive(Debug)]
pub struct Publish {
    pub room: Arc<str>,
    pub from: Arc<str>,
    pub name: Option<Arc<str>>,
    /// Who gets the `ack` (or the error) once the event is stored.
    pub origin: Origin,
    pub body: Box<RawValue>,
    pub reply_to: Option<u64>,
}

/// Who sent an event and waits for the answer.
#[derive(Debug)]
pub enum Origin {
    /// A WebSocket client (`ack` frame, repeating its `ref`) or an HTTP API request on a shard.
    Conn(ConnRef, Option<Box<str>>),
    /// A command on the admin socket.
    Admin(u64),
}

#[derive(Debug)]
pub struct Mutation {
    pub room: Arc<str>,
    pub from: Arc<str>,
    /// The sender's token has role `admin` (may delete anyone's message).
    pub admin: bool,
    pub origin: ConnRef,
    pub reference: Option<Box<str>>,
    pub target: u64,
    pub op: MutationOp,
}

#[derive(Debug)]
pub enum MutationOp {
    Edit(Box<RawValue>),
    Delete,
    React { emoji: Box<str>, add: bool },
}

/// What a stored event is, with what the history tables need to fold it.
#[derive(Debug)]
pub enum EventKind {
    Message { name: Option<Arc<str>>, body: Box<RawValue>, reply_to: Option<u64> },
    Edited { target: u64, body: Box<RawValue> },
    Deleted { target: u64 },
    Reaction { target: u64, emoji: Box<str>, add: bool },
}

/// A stored room event as the history stage sees it.
#[derive(Debug)]
pub struct EventRecord {
    pub room: Arc<str>,
    pub seq: u64,
    pub ts: u64,
    pub from: Arc<str>,
    pub kind: EventKind,
    /// The event's WebSocket frame; its payload is the event JSON that is stored and replayed.
    pub frame: Bytes,
}

/// What a join asked to see besides the `joined` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Events after this seq, at most `max` (the newest).
    Since { since: u64, max: usize },
    /// The last `n` message events.
    Last(u64),
}

/// The home shard's answer to a join, completed by the history stage (and a reader when
/// there is something to replay) so that it leaves in order with the room's events.
#[derive(Debug, Clone)]
pub struct JoinAnswer {
    pub conn: ConnRef,
    pub room: Arc<str>,
    pub reference: Option<Box<str>>,
    /// The room's last seq at the join point.
    pub seq: u64,
    pub members: usize,
    pub replay: Option<ReplayMode>,
}

/// A stored message, as far as permission checks for edits, deletes and reactions care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub author: Box<str>,
    pub deleted: bool,
}

/// Work for the history stage, in the order the home shards decided.
#[derive(Debug)]
pub enum HistoryMsg {
    /// A new room event: make it durable, then deliver it to `shards` and ack `origin`.
    Event {
        record: EventRecord,
        delivery: Delivery,
        shards: ShardSet,
        origin: Origin,
    },
    /// Room output that must stay behind every earlier event of its room (presence, leave
    /// replies), forwarded unchanged.
    Relay {
        shards: ShardSet,
        msg: Downstream,
    },
    Join(JoinAnswer),
    /// What is stored at `target`, as of every event queued before this message.
    Lookup {
        room: Arc<str>,
        target: u64,
        home: u16,
    },
    Shutdown,
}

/// Work for a history reader thread.
#[derive(Debug)]
pub enum ReadRequest {
    /// Build the `joined` answer and the replay it asked for.
    Replay(JoinAnswer),
    History {
        conn: ConnRef,
        room: Arc<str>,
        reference: Option<Box<str>>,
        before: Option<u64>,
        after: Option<u64>,
        limit: u64,
    },
    Shutdown,
}

/// Where the answers to a `Query` go.
#[derive(Debug, Clone, Copy)]
pub enum ReplyTo {
    Shard(u16),
    Admin,
}

/// A question asked of every shard (or of one room's home), answered with an `Answer`.
#[derive(Debug, Clone)]
pub enum Query {
    Stats,
    /// Send `frame` to every connection of `user`; answers how many got it.
    Notify {
        user: Arc<str>,
        frame: Bytes,
    },
    /// Send `frame` to every authenticated connection; answers how many got it.
    Broadcast {
        frame: Bytes,
    },
    /// Close every connection of `user` with 1008; answers how many.
    Disconnect {
        user: Arc<str>,
        reason: Arc<str>,
    },
    /// Rooms homed here whose name starts with `prefix`.
    Rooms {
        prefix: Arc<str>,
    },
    /// One room, asked of its home shard only.
    Room {
        name: Arc<str>,
    },
    /// This shard's connections of one user.
    User {
        name: Arc<str>,
    },
}

#[derive(Debug)]
pub enum Answer {
    Stats(StatsPart),
    Count(usize),
    Rooms(Vec<RoomSummary>),
    Room(Option<RoomDetail>),
    User(Vec<ConnSummary>),
}

#[derive(Debug, Clone)]
pub struct RoomSummary {
    pub name: Arc<str>,
    pub members: usize,
    pub connections: u64,
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct RoomDetail {
    pub summary: RoomSummary,
    pub users: Vec<Arc<str>>,
}

#[derive(Debug, Clone)]
pub struct ConnSummary {
    pub session: String,
    pub shard: u16,
    pub peer: SocketAddr,
    pub rooms: Vec<Arc<str>>,
    pub connected_s: u64,
}

/// What the admin thread receives: answers to its queries, and the outcome of its publishes.
#[derive(Debug)]
pub enum AdminMsg {
    Answer { id: u64, answer: Answer },
    Published { id: u64, result: Result<(Arc<str>, u64, u64), &'static str> },
}

/// Per-shard numbers for `/stats` that only the shard itself can compute.
#[derive(Debug, Default, Clone)]
pub struct StatsPart {
    /// Rooms whose home is this shard and that have members.
    pub rooms: usize,
    /// Distinct online users whose home is this shard.
    pub users: usize,
    /// The largest rooms homed here: (name, distinct members).
    pub top_rooms: Vec<(Arc<str>, usize)>,
}

#[derive(Debug)]
pub enum ShardMsg {
    /// A new TCP connection from the acceptor.
    Accepted {
        stream: TcpStream,
        peer: SocketAddr,
        over_ip_limit: bool,
    },
    Home(HomeMsg),
    /// A user's connection count changed on some shard; sent to the user's home shard.
    UserOnline(Arc<str>),
    UserOffline(Arc<str>),
    Down(Downstream),
    Query {
        reply_to: ReplyTo,
        id: u64,
        query: Query,
    },
    Answer {
        id: u64,
        answer: Answer,
    },
    /// The history stage's answer to a `Lookup`; `Err` when it could not be read reliably.
    Looked {
        room: Arc<str>,
        target: u64,
        info: Result<Option<TargetInfo>, ()>,
    },
    /// Storing failed: seqs after `last_seq` in `room` were not stored and are to be reissued.
    Rollback {
        room: Arc<str>,
        last_seq: u64,
    },
    /// A re-read configuration (auth keys, limits, TLS certificate) to use from now on.
    Reload(Box<Reload>),
    Shutdown,
}

#[derive(Debug)]
pub enum AcceptorMsg {
    /// A connection the acceptor admitted has closed.
    Closed {
        ip: IpAddr,
        shard: u16,
        counted: bool,
    },
    Shutdown,
}

#[derive(Debug)]
pub struct Reload {
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    /// A re-read certificate and key, when TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A bounded lock-free queue and the way to wake its consumer.
pub struct Inbox<T> {
    queue: ArrayQueue<T>,
    wake: Wake,
}

enum Wake {
    Poll(Waker),
    /// The consumer is a plain thread that parks; it registers itself when it starts.
    Thread(OnceLock<Thread>),
}

impl<T> Inbox<T> {
    pub fn with_waker(capacity: usize, waker: Waker) -> Inbox<T> {
        Inbox { queue: ArrayQueue::new(capacity), wake: Wake::Poll(waker) }
    }

    pub fn with_parking(capacity: usize) -> Inbox<T> {
        Inbox { queue: ArrayQueue::new(capacity), wake: Wake::Thread(OnceLock::new()) }
    }

    /// Called by the consuming thread before it first parks.
    pub fn register_consumer(&self) {
        if let Wake::Thread(t) = &self.wake {
            let _ = t.set(std::thread::current());
        }
    }

    pub fn push(&self, msg: T) -> Result<(), T> {
        self.queue.push(msg)
    }

    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn wake(&self) {
        match &self.wake {
            Wake::Poll(w) => {
                if let Err(e) = w.wake() {
                    log::error!("cannot wake a shard: {e}");
                }
            }
            Wake::Thread(t) => {
                if let Some(t) = t.get() {
                    t.unpark();
                }
            }
        }
    }
}

/// Messages a thread has produced for one destination but not yet handed over. A full
/// destination queue never loses a message: it waits here and is retried next loop turn.
pub struct Outbox<T> {
    pending: VecDeque<T>,
    /// Something was handed over since the last wake.
    needs_wake: bool,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox { pending: VecDeque::new(), needs_wake: false }
    }
}

impl<T> Outbox<T> {
    pub fn push(&mut self, msg: T) {
        self.pending.push_back(msg);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Hands over what the destination takes, in order, and wakes it once.
    pub fn flush(&mut self, inbox: &Inbox<T>) {
        while let Some(msg) = self.pending.pop_front() {
            if let Err(msg) = inbox.push(msg) {
                self.pending.push_front(msg);
                break;
            }
            self.needs_wake = true;
        }
        if self.needs_wake {
            self.needs_wake = false;
            inbox.wake();
        }
    }
}

/// Which shard is home to a name (room or user): a stable hash, so every shard agrees.
pub fn home_shard(name: &str, shards: usize) -> usize {
    // FNV-1a: tiny and stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sets() {
        let mut s = ShardSet::default();
        assert!(s.is_empty());
        s.insert(0);
        s.insert(5);
        s.insert(127);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 5, 127]);
        assert_eq!(ShardSet::all(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(ShardSet::all(128).iter().count(), 128);
        assert_eq!(ShardSet::one(4).iter().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn outbox_keeps_order_when_the_queue_is_full() {
        let inbox: Inbox<u32> = Inbox::with_parking(2);
        let mut out = Outbox::default();
        for i in 0..5 {
            out.push(i);
        }
        out.flush(&inbox);
        assert_eq!(out.len(), 3);
        assert_eq!((inbox.pop(), inbox.pop(), inbox.pop()), (Some(0), Some(1), None));
        out.flush(&inbox);
        out.flush(&inbox);
        assert_eq!(inbox.pop(), Some(2));
        assert_eq!(inbox.pop(), Some(3));
        out.flush(&inbox);
        assert_eq!(inbox.pop(), Some(4));
        assert!(out.is_empty());
    }

    #[test]
    fn home_shard_is_stable_and_in_range() {
        assert_eq!(home_shard("general", 1), 0);
        let a = home_shard("general", 7);
        assert_eq!(a, home_shard("general", 7));
        assert!(a < 7);
        let spread: std::collections::HashSet<usize> = (0..100).map(|i| home_shard(&format!("room{i}"), 4)).collect();
        assert_eq!(spread.len(), 4);
    }
}
