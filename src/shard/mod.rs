//! A shard: one thread, one `mio::Poll`, a `Slab` of connections it owns outright, the rooms and
//! users it is home to, and its timing wheel. It talks to other threads only through bounded
//! queues; it never blocks, never takes a lock, and never waits for a slow socket.

mod fanout;
mod http_side;
mod queries;
mod requests;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use crate::auth::Verifier;
use crate::bus::{self, AcceptorMsg, ConnRef, Downstream, HistoryMsg, HomeMsg, Outbox, ReadRequest, Reload, ShardMsg};
use crate::config::Config;
use crate::conn::{CLOSE_GRACE_MS, Connection, Ended, JoinState, Membership, Phase, ReadOutcome, TimerAction};
use crate::http::Endpoint;
use crate::metrics::ShardCounters;
use crate::rooms::{HomeOutput, HomeRooms, LocalIndex, OnlineUsers};
use crate::server::Shared;
use crate::timer::{Clock, Millis, TimerEntry, Wheel, unix_millis};
use crate::transport::Transport;
use crate::ws::{self, Scratch};

/// The token of the shard's waker; every other token is a slab key.
pub const WAKER_TOKEN: Token = Token(usize::MAX);
/// Inbox messages handled per loop turn before sockets get their turn again.
const INBOX_BATCH: usize = 4096;
/// How long connections get to finish their close handshakes at shutdown.
const SHUTDOWN_GRACE_MS: Millis = 3_000;
/// Longest sleep of an idle shard.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(1);
/// Retry interval while an outbox waits for room in a full queue.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);

/// Everything a shard starts with.
pub struct ShardSetup {
    pub index: usize,
    pub poll: Poll,
    pub shared: Arc<Shared>,
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    /// Set when the listener speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Last stored seq of each room homed on this shard.
    pub room_seqs: HashMap<Arc<str>, u64>,
}

pub struct Shard {
    index: usize,
    poll: Poll,
    shared: Arc<Shared>,
    config: Arc<Config>,
    verifier: Arc<Verifier>,
    tls: Option<Arc<rustls::ServerConfig>>,
    clock: Clock,
    conns: Slab<Connection>,
    next_generation: u32,
    sessions_started: u32,
    scratch: Scratch,
    wheel: Wheel,
    home: HomeRooms,
    online: OnlineUsers,
    local: LocalIndex,
    /// Per destination shard (our own slot stays empty: we use `local_down`).
    outboxes: Vec<Outbox<ShardMsg>>,
    history_out: Outbox<HistoryMsg>,
    reader_out: Vec<Outbox<ReadRequest>>,
    next_reader: usize,
    acceptor_out: Outbox<AcceptorMsg>,
    /// Downstream messages our own home role produced for our own connections.
    local_down: VecDeque<Downstream>,
    /// Connections with output queued this turn: flushed once each at the end (cork).
    dirty: Vec<u32>,
    /// Connections whose read budget ran out with input possibly left.
    read_again: Vec<u32>,
    /// Server-initiated closes found while iterating; applied after.
    to_close: Vec<(u32, u32, CloseCode, &'static str)>,
    gathers: HashMap<u64, http_side::Gather>,
    next_gather: u64,
    shutdown_deadline: Option<Millis>,
    // Reused buffers, so steady state allocates nothing per turn.
    home_out: Vec<HomeOutput>,
    msgs: Vec<Message>,
    due: Vec<TimerEntry>,
}

impl Shard {
    pub fn new(setup: ShardSetup) -> Shard {
        let clock = Clock::new();
        let shard_count = setup.shared.shard_count();
        let reader_count = setup.shared.readers.len();
        Shard {
            index: setup.index,
            poll: setup.poll,
            home: HomeRooms::new(setup.index, shard_count, setup.config.history.max_replay, setup.room_seqs),
            shared: setup.shared,
            config: setup.config,
            verifier: setup.verifier,
            tls: setup.tls,
            wheel: Wheel::new(clock.now()),
            clock,
            conns: Slab::new(),
            next_generation: 1,
            sessions_started: 0,
            scratch: Scratch::new(),
            online: OnlineUsers::default(),
            local: LocalIndex::default(),
            outboxes: (0..shard_count).map(|_| Outbox::default()).collect(),
            history_out: Outbox::default(),
            reader_out: (0..reader_count).map(|_| Outbox::default()).collect(),
            next_reader: 0,
            acceptor_out: Outbox::default(),
            local_down: VecDeque::new(),
            dirty: Vec::new(),
            read_again: Vec::new(),
            to_close: Vec::new(),
            gathers: HashMap::new(),
            next_gather: 0,
            shutdown_deadline: None,
            home_out: Vec::new(),
            msgs: Vec::new(),
            due: Vec::new(),
        }
    }

    /// The loop: poll, handle readiness, inbox, retries, timers, then hand over and flush.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("shard {}: poll failed, stopping: {e}", self.index);
                break;
            }
            let now = self.clock.now();
            for event in events.iter() {
                if event.token() == WAKER_TOKEN {
                    continue;
                }
                let key = event.token().0 as u32;
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                self.on_ready(key, readable, event.is_writable(), now);
            }
            self.drain_inbox(now);
            self.retry_reads(now);
            self.run_timers(now);
            self.apply_closes(now);
            self.hand_over();
            self.flush_dirty();
            self.counters().last_turn_ms.set(unix_millis());
            if let Some(deadline) = self.shutdown_deadline
                && (self.conns.is_empty() || now >= deadline)
            {
                break;
            }
        }
        self.hand_over();
        log::debug!("shard {} stopped", self.index);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let inbox = &self.shared.shard_inboxes[self.index];
        if !self.read_again.is_empty() || !self.local_down.is_empty() || !inbox.is_empty() {
            return Some(Duration::ZERO);
        }
        let waiting = !self.history_out.is_empty()
            || !self.acceptor_out.is_empty()
            || self.reader_out.iter().any(|o| !o.is_empty())
            || self.outboxes.iter().any(|o| !o.is_empty());
        // Turn at least once a second even when idle, so the watchdog sees the loop alive.
        let timer = self.wheel.next_timeout(self.clock.now()).unwrap_or(MAX_IDLE_WAIT).min(MAX_IDLE_WAIT);
        Some(if waiting { timer.min(OUTBOX_RETRY) } else { timer })
    }

    /// How other threads address connection `key` (generation 0 once the slot is freed: such
    /// a reference reaches nobody, and a leave only needs the shard).
    fn conn_ref(&self, key: u32) -> ConnRef {
        let generation = self.conns.get(key as usize).map_or(0, |c| c.generation);
        ConnRef { shard: self.index as u16, key, generation }
    }

    // ---- readiness -------------------------------------------------------------------------

    fn on_ready(&mut self, key: u32, readable: bool, writable: bool, now: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if writable && conn.write_blocked {
            conn.write_blocked = false;
            mark_dirty(conn, key, &mut self.dirty);
        }
        if !readable {
            return;
        }
        match &conn.phase {
            Phase::Http(_) => self.on_http_readable(key, now),
            Phase::Open(_) => self.on_ws_readable(key, now),
            Phase::Closing(_) => {
                conn.read_closing(&mut self.scratch);
                if !conn.out.is_empty() {
                    mark_dirty(conn, key, &mut self.dirty);
                }
                if conn.is_finished() {
                    self.destroy(key);
                }
            }
        }
    }

    fn retry_reads(&mut self, now: Millis) {
        for key in std::mem::take(&mut self.read_again) {
            if self.conns.get(key as usize).is_some_and(|c| matches!(c.phase, Phase::Open(_))) {
                self.on_ws_readable(key, now);
            }
        }
    }

    fn heartbeat_ms(&self) -> Millis {
        self.config.server.heartbeat.as_millis() as Millis
    }

    fn on_ws_readable(&mut self, key: u32, now: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let mut msgs = std::mem::take(&mut self.msgs);
        let max_frame = self.config.limits.max_frame_bytes;
        let outcome = conn.read_messages(&mut self.scratch, now, max_frame, &mut msgs);
        self.scratch.clear();
        // tungstenite answers pings (and closes) on its own, into our queue; TLS may have
        // records of its own to send (key updates, alerts).
        if !conn.out.is_empty() || conn.transport.has_pending_records() {
            mark_dirty(conn, key, &mut self.dirty);
        }
        for msg in msgs.drain(..) {
            if !self.conns.get(key as usize).is_some_and(|c| matches!(c.phase, Phase::Open(_))) {
                break;
            }
            self.on_message(key, msg, now);
        }
        self.msgs = msgs;
        match outcome {
            ReadOutcome::Drained { more: true } => self.read_again.push(key),
            ReadOutcome::Drained { more: false } => {}
            ReadOutcome::PeerClosed => {
                let conn = &mut self.conns[key as usize];
                if let Some(ended) = conn.finish_after_peer_close(now, &mut self.scratch) {
                    mark_dirty(conn, key, &mut self.dirty);
                    self.retire(key, ended, &"by the client");
                    self.schedule(key, now + CLOSE_GRACE_MS);
                }
            }
            ReadOutcome::Violation(code, why) => {
                log::debug!("{}: protocol violation: {why}", self.conns[key as usize].peer);
                self.close(key, code, "protocol violation", now, false);
            }
            ReadOutcome::Gone => self.destroy(key),
        }
    }

    fn on_message(&mut self, key: u32, msg: Message, now: Millis) {
        let endpoint = match self.conns[key as usize].session() {
            Some(s) => s.endpoint,
            None => return,
        };
        match (msg, endpoint) {
            (Message::Text(text), Endpoint::Chat) => self.on_text(key, text.as_str(), now),
            (Message::Text(text), Endpoint::Echo) => {
                self.send(key, ws::build_frame(OpCode::Data(Data::Text), |b| b.extend_from_slice(text.as_bytes())));
            }
            (Message::Binary(data), Endpoint::Echo) => {
                self.send(key, ws::build_frame(OpCode::Data(Data::Binary), |b| b.extend_from_slice(&data)));
            }
            (Message::Binary(_), Endpoint::Chat) => {
                self.close(key, CloseCode::Unsupported, "binary frames are not supported", now, true);
            }
            // Pings are answered by tungstenite; any frame already counted as liveness.
            _ => {}
        }
    }

    // ---- client requests -------------------------------------------------------------------

    // ---- routing between shards --------------------------------------------------------------

    fn send_home(&mut self, room: &str, msg: HomeMsg) {
        let home = bus::home_shard(room, self.outboxes.len());
        if home == self.index {
            self.handle_home(msg);
        } else {
            self.outboxes[home].push(ShardMsg::Home(msg));
        }
    }

    fn send_user_home(&mut self, msg: ShardMsg) {
        let (ShardMsg::UserOnline(user) | ShardMsg::UserOffline(user)) = &msg else { return };
        let home = bus::home_shard(user, self.outboxes.len());
        if home == self.index {
            self.on_shard_msg(msg, 0);
        } else {
            self.outboxes[home].push(msg);
        }
    }

    fn handle_home(&mut self, msg: HomeMsg) {
        let mut out = std::mem::take(&mut self.home_out);
        self.home.handle(msg, unix_millis(), &mut out);
        self.route_home_output(&mut out);
        self.home_out = out;
    }

    fn route_home_output(&mut self, out: &mut Vec<HomeOutput>) {
        for output in out.drain(..) {
            match output {
                HomeOutput::History(msg) => self.history_out.push(msg),
                HomeOutput::Shard(shard, down) if shard == self.index => self.local_down.push_back(down),
                HomeOutput::Shard(shard, down) => self.outboxes[shard].push(ShardMsg::Down(down)),
            }
        }
    }

    fn drain_inbox(&mut self, now: Millis) {
        let shared = self.shared.clone();
        let inbox = &shared.shard_inboxes[self.index];
        for _ in 0..INBOX_BATCH {
            let Some(msg) = inbox.pop() else { break };
            self.on_shard_msg(msg, now);
        }
        while let Some(down) = self.local_down.pop_front() {
            self.on_downstream(down);
        }
    }

    fn on_shard_msg(&mut self, msg: ShardMsg, now: Millis) {
        match msg {
            ShardMsg::Accepted { stream, peer, over_ip_limit } => self.adopt(stream, peer, !over_ip_limit, now),
            ShardMsg::Home(msg) => self.handle_home(msg),
            ShardMsg::UserOnline(user) => self.online.online(user),
            ShardMsg::UserOffline(user) => self.online.offline(&user),
            ShardMsg::Down(down) => self.on_downstream(down),
            ShardMsg::Query { reply_to, id, query } => self.on_query(reply_to, id, query, now),
            ShardMsg::Answer { id, answer } => self.on_answer(id, answer, now),
            ShardMsg::Looked { room, target: _, info } => {
                let mut out = std::mem::take(&mut self.home_out);
                self.home.looked(&room, info, unix_millis(), &mut out);
                self.route_home_output(&mut out);
                self.home_out = out;
            }
            ShardMsg::Rollback { room, last_seq } => self.home.rollback(&room, last_seq),
            ShardMsg::Reload(reload) => self.reload(*reload),
            ShardMsg::Shutdown => self.begin_shutdown(now),
        }
    }

    fn reload(&mut self, reload: Reload) {
        self.home.set_max_replay(reload.config.history.max_replay);
        self.config = reload.config;
        self.verifier = reload.verifier;
        // Connections keep the TLS session they started with; new ones get the new certificate.
        if reload.tls.is_some() {
            self.tls = reload.tls;
        }
    }

    fn adopt(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr, counted: bool, now: Millis) {
        if self.shutdown_deadline.is_some() {
            self.acceptor_out.push(AcceptorMsg::Closed { ip: peer.ip(), shard: self.index as u16, counted });
            return;
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("{peer}: cannot register connection: {e}");
            self.acceptor_out.push(AcceptorMsg::Closed { ip: peer.ip(), shard: self.index as u16, counted });
            return;
        }
        let transport = match Transport::new(stream, self.tls.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("{peer}: cannot start TLS: {e}");
                self.acceptor_out.push(AcceptorMsg::Closed { ip: peer.ip(), shard: self.index as u16, counted });
                return;
            }
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let deadline = now + self.config.server.handshake_timeout.as_millis() as Millis;
        entry.insert(Connection::new(transport, peer, generation, counted, deadline));
        self.schedule(key as u32, deadline);
    }

    fn on_downstream(&mut self, down: Downstream) {
        match down {
            Downstream::Deliver(delivery) => self.deliver(&delivery),
            Downstream::Reply(to, reply) => self.on_reply(to, reply),
        }
    }

    // ---- closing -----------------------------------------------------------------------------

    /// Closes an open connection with a close frame; `stream_ok` says whether its input can
    /// still be read as frames.
    fn close(&mut self, key: u32, code: CloseCode, reason: &str, now: Millis, stream_ok: bool) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if code == CloseCode::Again {
            conn.out.discard_unstarted();
        }
        let max_frame = self.config.limits.max_frame_bytes;
        let Some(ended) = conn.close_ws(code, reason, now, stream_ok, &mut self.scratch, max_frame) else { return };
        mark_dirty(conn, key, &mut self.dirty);
        self.retire(key, ended, &format_args!("with {} ({reason})", u16::from(code)));
        self.schedule(key, now + CLOSE_GRACE_MS);
    }

    fn apply_closes(&mut self, now: Millis) {
        while let Some((key, generation, code, reason)) = self.to_close.pop() {
            if self.conns.get(key as usize).is_some_and(|c| c.generation == generation) {
                if code == CloseCode::Again {
                    self.counters().slow_consumer_closes.add(1);
                    log::debug!("{}: slow consumer, closing", self.conns[key as usize].peer);
                }
                self.close(key, code, reason, now, true);
            }
        }
    }

    /// Undoes what an ended session held: counts, memberships, user presence.
    fn retire(&mut self, key: u32, ended: Ended, how: &dyn std::fmt::Display) {
        log::debug!("session={} closed {how}", format_session(ended.session));
        let counters = self.counters();
        counters.connections.sub(1);
        self.shared.ws_connections.fetch_sub(1, Ordering::Relaxed);
        let Some(identity) = ended.identity else { return };
        counters.authenticated.sub(1);
        self.local.remove_user(&identity.user, key);
        let conn = self.conn_ref(key);
        for m in ended.rooms {
            self.forget_membership(&m, key);
            let msg = HomeMsg::Leave {
                room: m.room.clone(),
                conn,
                user: identity.user.clone(),
                reply: false,
                reference: None,
            };
            self.send_home(&m.room, msg);
        }
        self.send_user_home(ShardMsg::UserOffline(identity.user));
    }

    /// Removes a connection's membership from the local index.
    fn forget_membership(&mut self, m: &Membership, key: u32) {
        match m.state {
            JoinState::Joined => self.local.leave(&m.room, key),
            JoinState::Replaying { .. } => self.local.end_replay(&m.room, key),
            JoinState::Requested => {}
        }
    }

    /// Drops a connection now: socket closed, slot freed, the acceptor told.
    fn destroy(&mut self, key: u32) {
        let Some(mut conn) = self.conns.try_remove(key as usize) else { return };
        if let Some(ended) = conn.abandon() {
            self.retire(key, ended, &"without a close frame (connection lost)");
        }
        let _ = self.poll.registry().deregister(conn.transport.socket());
        let ip = conn.peer.ip();
        self.acceptor_out.push(AcceptorMsg::Closed { ip, shard: self.index as u16, counted: conn.counted });
    }

    fn begin_shutdown(&mut self, now: Millis) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(now + SHUTDOWN_GRACE_MS);
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            match self.conns[key as usize].phase {
                Phase::Open(_) => self.close(key, CloseCode::Away, "server shutting down", now, true),
                Phase::Http(_) => self.destroy(key),
                Phase::Closing(_) => {}
            }
        }
    }

    // ---- timers and flushing -----------------------------------------------------------------

    fn schedule(&mut self, key: u32, at: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        conn.timer_tick = self.wheel.schedule(key, conn.generation, at);
    }

    fn run_timers(&mut self, now: Millis) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(now, &mut due);
        let heartbeat = self.heartbeat_ms();
        for entry in due.drain(..) {
            let Some(conn) = self.conns.get_mut(entry.key as usize) else { continue };
            if conn.generation != entry.generation || conn.timer_tick != entry.tick {
                continue;
            }
            let queued_before = conn.out.pending();
            match conn.on_timer(now, heartbeat) {
                TimerAction::Next(at) => {
                    if conn.out.pending() != queued_before {
                        mark_dirty(conn, entry.key, &mut self.dirty);
                    }
                    self.schedule(entry.key, at);
                }
                TimerAction::Close(code, reason) => self.close(entry.key, code, reason, now, true),
                TimerAction::Drop => self.destroy(entry.key),
            }
        }
        self.due = due;
    }

    /// Hands every outbox's messages to their queues, waking each destination once.
    fn hand_over(&mut self) {
        let shared = &self.shared;
        for (shard, outbox) in self.outboxes.iter_mut().enumerate() {
            outbox.flush(&shared.shard_inboxes[shard]);
        }
        self.history_out.flush(&shared.history);
        for (outbox, inbox) in self.reader_out.iter_mut().zip(&shared.readers) {
            outbox.flush(inbox);
        }
        self.acceptor_out.flush(&shared.acceptor);
    }

    fn flush_dirty(&mut self) {
        let mut written = 0;
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            conn.dirty = false;
            if conn.write_blocked {
                continue;
            }
            match conn.flush() {
                Ok(n) => written += n,
                Err(_) => {
                    self.destroy(key);
                    continue;
                }
            }
            if conn.is_finished() {
                self.destroy(key);
            }
        }
        let read = self.scratch.take_bytes_read();
        let counters = self.counters();
        counters.bytes_out.add(written as u64);
        counters.bytes_in.add(read);
    }

    // ---- stats ---------------------------------------------------------------------------------

    fn counters(&self) -> &ShardCounters {
        &self.shared.counters[self.index]
    }
}

fn mark_dirty(conn: &mut Connection, key: u32, dirty: &mut Vec<u32>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

/// Session ids as clients see them: 16 hex digits.
pub fn format_session(id: u64) -> String {
    format!("{id:016x}")
}
