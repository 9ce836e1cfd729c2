//! A shard: one thread, one `mio::Poll`, a `Slab` of connections it owns outright, the rooms and
//! users it is home to, and its timing wheel. It talks to other threads only through bounded
//! queues; it never blocks, never takes a lock, and never waits for a slow socket.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::value::RawValue;
use slab::Slab;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use crate::auth::{Identity, Role, RoomAccess, Verifier};
use crate::bus::{
    self, AcceptorMsg, Audience, ConnRef, Delivery, Downstream, Exclude, HistoryMsg, HomeMsg, JoinRequest, Mutation,
    MutationOp, Outbox, Publish, ReadRequest, Reply, ShardMsg, StatsPart,
};
use crate::config::Config;
use crate::conn::{
    CLOSE_GRACE_MS, Connection, Ended, JoinState, Membership, Phase, ReadOutcome, Session, TimerAction, TokenBucket,
};
use crate::http::{self, Decision, Endpoint, Failure, RouteEnv};
use crate::metrics::ShardCounters;
use crate::names;
use crate::protocol::{self, ErrorCode, Rejection, Request, ServerFrame};
use crate::rooms::{HomeOutput, HomeRooms, LocalIndex, OnlineUsers, TOP_ROOMS};
use crate::server::Shared;
use crate::timer::{Clock, Millis, TimerEntry, Wheel, unix_millis};
use crate::ws::{self, Scratch};

/// The token of the shard's waker; every other token is a slab key.
pub const WAKER_TOKEN: Token = Token(usize::MAX);
/// Inbox messages handled per loop turn before sockets get their turn again.
const INBOX_BATCH: usize = 4096;
/// How long connections get to finish their close handshakes at shutdown.
const SHUTDOWN_GRACE_MS: Millis = 3_000;
/// Retry interval while an outbox waits for room in a full queue.
const OUTBOX_RETRY: Duration = Duration::from_millis(1);

/// Everything a shard starts with.
pub struct ShardSetup {
    pub index: usize,
    pub poll: Poll,
    pub shared: Arc<Shared>,
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    /// Last stored seq of each room homed on this shard.
    pub room_seqs: HashMap<Arc<str>, u64>,
}

pub struct Shard {
    index: usize,
    poll: Poll,
    shared: Arc<Shared>,
    config: Arc<Config>,
    verifier: Arc<Verifier>,
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
    gathers: HashMap<u64, Gather>,
    next_gather: u64,
    shutdown_deadline: Option<Millis>,
    // Reused buffers, so steady state allocates nothing per turn.
    home_out: Vec<HomeOutput>,
    msgs: Vec<Message>,
    due: Vec<TimerEntry>,
}

/// A `/stats` request waiting for every shard's part.
struct Gather {
    key: u32,
    generation: u32,
    parts: Vec<StatsPart>,
    waiting: usize,
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
            self.flush_dirty(now);
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
        let timer = self.wheel.next_timeout(self.clock.now());
        match (waiting, timer) {
            (true, Some(t)) => Some(t.min(OUTBOX_RETRY)),
            (true, None) => Some(OUTBOX_RETRY),
            (false, t) => t,
        }
    }

    fn conn_ref(&self, key: u32, generation: u32) -> ConnRef {
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
            Phase::Http(h) if h.awaiting_stats => {}
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

    fn on_http_readable(&mut self, key: u32, now: Millis) {
        let conn = &mut self.conns[key as usize];
        if conn.read_head(&mut self.scratch).is_err() {
            self.destroy(key);
            return;
        }
        let Phase::Http(h) = &conn.phase else { return };
        match http::parse_head(&h.head) {
            http::Parsed::Partial => {}
            http::Parsed::Invalid(why) => {
                log::debug!("{}: malformed request: {why}", conn.peer);
                self.respond(key, http::json_error(400, "bad_request", "malformed HTTP request"), now);
            }
            http::Parsed::TooLarge => {
                self.respond(key, http::json_error(431, "bad_request", "request head too large"), now);
            }
            http::Parsed::Complete(head) => self.route(key, head, now),
        }
    }

    fn route(&mut self, key: u32, head: http::Head, now: Millis) {
        let conn = &self.conns[key as usize];
        let env = RouteEnv {
            config: &self.config,
            verifier: &self.verifier,
            now_unix: unix_millis() / 1000,
            draining: self.shared.draining.load(Ordering::Relaxed),
            over_ip_limit: !conn.counted,
        };
        match http::decide(&head, &env) {
            Decision::Upgrade { endpoint, identity, accept_key } => {
                self.upgrade(key, &head, endpoint, identity, &accept_key, now);
            }
            Decision::Respond { response, failure } => {
                if let Some(failure) = failure {
                    self.count_handshake_failure(failure);
                    log::debug!("{}: {} refused: {failure:?}", conn.peer, head.path);
                }
                self.respond(key, response, now);
            }
            Decision::Stats => self.start_stats(key),
        }
    }

    fn count_handshake_failure(&self, failure: Failure) {
        let counters = self.counters();
        counters.handshake_failures.add(1);
        if failure == Failure::Auth {
            counters.auth_failures.add(1);
        }
    }

    fn respond(&mut self, key: u32, response: Bytes, now: Millis) {
        let conn = &mut self.conns[key as usize];
        conn.respond_and_close(response, now);
        mark_dirty(conn, key, &mut self.dirty);
        self.schedule(key, now + CLOSE_GRACE_MS);
    }

    fn upgrade(
        &mut self,
        key: u32,
        head: &http::Head,
        endpoint: Endpoint,
        identity: Option<Identity>,
        accept_key: &str,
        now: Millis,
    ) {
        let max = self.config.server.max_connections;
        if self.shared.ws_connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.shared.ws_connections.fetch_sub(1, Ordering::Relaxed);
            self.counters().handshake_failures.add(1);
            self.respond(key, http::json_error(503, "overloaded", "server is at max_connections"), now);
            return;
        }
        let session_id = self.next_session_id();
        let conn = &mut self.conns[key as usize];
        let Phase::Http(h) = &mut conn.phase else { return };
        let leftover = h.head.split_off(head.len);
        conn.out.push(http::switching_protocols(accept_key));
        let limits = &self.config.limits;
        let session = Session {
            ws: ws::server_context(limits.max_frame_bytes, leftover),
            endpoint,
            id: session_id,
            identity: None,
            auth_deadline: now + self.config.auth.timeout.as_millis() as Millis,
            rooms: Vec::new(),
            bucket: TokenBucket::full(limits.burst, now),
            dropped_in_row: 0,
            last_seen: now,
            last_ping: now,
        };
        conn.phase = Phase::Open(Box::new(session));
        mark_dirty(conn, key, &mut self.dirty);
        self.counters().connections.add(1);
        if endpoint == Endpoint::Chat {
            let user = identity.as_ref().map(|i| i.user.clone());
            if let Some(identity) = identity {
                self.authenticate(key, identity);
            }
            let frame = ServerFrame::Welcome {
                session: &format_session(session_id),
                user: user.as_deref(),
                heartbeat_ms: self.heartbeat_ms(),
            }
            .to_frame();
            self.send(key, frame);
        }
        self.schedule(key, now);
        // A client may have sent frames right behind its request; they are already in our
        // buffer and no readiness event will announce them again.
        self.on_ws_readable(key, now);
    }

    fn next_session_id(&mut self) -> u64 {
        self.sessions_started = self.sessions_started.wrapping_add(1);
        (u64::from(self.shared.boot_nonce) << 40) | ((self.index as u64) << 32) | u64::from(self.sessions_started)
    }

    fn heartbeat_ms(&self) -> Millis {
        self.config.server.heartbeat.as_millis() as Millis
    }

    fn on_ws_readable(&mut self, key: u32, now: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let mut msgs = std::mem::take(&mut self.msgs);
        let outcome = conn.read_messages(&mut self.scratch, now, &mut msgs);
        self.scratch.clear();
        // tungstenite answers pings (and closes) on its own, into our queue.
        if !conn.out.is_empty() {
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
                    self.retire(key, ended);
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

    fn on_text(&mut self, key: u32, text: &str, now: Millis) {
        let (rate, burst) = (self.config.limits.rate, self.config.limits.burst);
        self.counters().messages_in.add(1);
        let Some(session) = self.conns[key as usize].session_mut() else { return };
        if !session.bucket.take(now, rate, burst) {
            session.dropped_in_row += 1;
            let abusive = session.dropped_in_row >= burst;
            self.counters().rate_limited.add(1);
            if abusive {
                self.close(key, CloseCode::Policy, "rate limit exceeded", now, true);
            } else {
                let rejection = Rejection::new(ErrorCode::RateLimited, "slow down");
                self.reply_error(key, protocol::frame_ref(text).as_deref(), &rejection);
            }
            return;
        }
        session.dropped_in_row = 0;
        let authenticated = session.identity.is_some();
        let frame = protocol::parse_client_frame(text);
        let reference = frame.reference.as_deref();
        let result = match frame.request {
            Err(rejection) => Err(rejection),
            Ok(req @ (Request::Auth { .. } | Request::Ping)) => self.dispatch(key, reference, req, now),
            Ok(_) if !authenticated => Err(Rejection::new(
                ErrorCode::Unauthenticated,
                "authenticate first: send {\"type\":\"auth\",\"token\":...}",
            )),
            Ok(req) => self.dispatch(key, reference, req, now),
        };
        if let Err(rejection) = result {
            self.reply_error(key, reference, &rejection);
        }
    }

    fn reply_error(&mut self, key: u32, reference: Option<&str>, rejection: &Rejection) {
        let frame = ServerFrame::Error { reference, code: rejection.code, message: &rejection.message }.to_frame();
        self.send(key, frame);
    }

    fn dispatch(&mut self, key: u32, reference: Option<&str>, req: Request, now: Millis) -> Result<(), Rejection> {
        match req {
            Request::Auth { token } => self.on_auth(key, reference, &token),
            Request::Ping => {
                let frame = ServerFrame::Pong { reference, ts: unix_millis() }.to_frame();
                self.send(key, frame);
                Ok(())
            }
            Request::Join { room, since, history } => self.on_join(key, reference, &room, since, history),
            Request::Leave { room } => self.on_leave(key, reference, &room),
            Request::Send { room, body, reply_to } => {
                let room = self.joined_room(key, &room)?;
                self.publish(key, reference, room, body, reply_to)
            }
            Request::Typing { room, active } => {
                let room = self.joined_room(key, &room)?;
                let user = self.user_of(key)?;
                self.send_home(&room, HomeMsg::Typing { room: room.clone(), user, active }, now);
                Ok(())
            }
            Request::Direct { to, body } => {
                if !names::is_valid_user_id(&to) {
                    return Err(Rejection::new(ErrorCode::BadRequest, "to: not a valid user id"));
                }
                let room: Arc<str> = names::dm_room_name(&self.user_of(key)?, &to).into();
                self.check_access(key, &room)?;
                self.publish(key, reference, room, body, None)
            }
            Request::Presence { room } => {
                self.check_access(key, &room)?;
                let room: Arc<str> = room.as_ref().into();
                let conn = self.conn_ref(key, self.conns[key as usize].generation);
                let msg = HomeMsg::PresenceQuery { room: room.clone(), conn, reference: reference.map(Into::into) };
                self.send_home(&room, msg, now);
                Ok(())
            }
            Request::Edit { room, target, body } => {
                self.check_body(body)?;
                self.mutate(key, reference, &room, target, MutationOp::Edit(body.to_owned()))
            }
            Request::Delete { room, target } => self.mutate(key, reference, &room, target, MutationOp::Delete),
            Request::React { room, target, emoji, add } => {
                self.mutate(key, reference, &room, target, MutationOp::React { emoji: emoji.as_ref().into(), add })
            }
            Request::History { room, before, after, limit } => {
                self.check_access(key, &room)?;
                let conn = self.conn_ref(key, self.conns[key as usize].generation);
                let reference = reference.map(Into::into);
                let request =
                    ReadRequest::History { conn, room: room.as_ref().into(), reference, before, after, limit };
                self.send_reader(request);
                Ok(())
            }
        }
    }

    fn on_auth(&mut self, key: u32, reference: Option<&str>, token: &str) -> Result<(), Rejection> {
        if self.conns[key as usize].session().is_some_and(|s| s.identity.is_some()) {
            return Err(Rejection::new(ErrorCode::BadRequest, "already authenticated"));
        }
        let identity = self.verifier.verify(token, unix_millis() / 1000).map_err(|e| {
            self.counters().auth_failures.add(1);
            Rejection::new(ErrorCode::Unauthenticated, e.to_string())
        })?;
        let user = identity.user.clone();
        self.authenticate(key, identity);
        let Some(session) = self.conns[key as usize].session() else { return Ok(()) };
        let frame =
            ServerFrame::Authenticated { reference, user: &user, session: &format_session(session.id) }.to_frame();
        self.send(key, frame);
        Ok(())
    }

    /// Records a verified identity on an open session.
    fn authenticate(&mut self, key: u32, identity: Identity) {
        let user = identity.user.clone();
        let Some(session) = self.conns[key as usize].session_mut() else { return };
        session.identity = Some(identity);
        self.counters().authenticated.add(1);
        self.local.add_user(&user, key);
        self.send_user_home(ShardMsg::UserOnline(user));
    }

    fn identity_of(&self, key: u32) -> Result<&Identity, Rejection> {
        self.conns[key as usize]
            .session()
            .and_then(|s| s.identity.as_ref())
            .ok_or_else(|| Rejection::new(ErrorCode::Unauthenticated, "not authenticated"))
    }

    fn user_of(&self, key: u32) -> Result<Arc<str>, Rejection> {
        self.identity_of(key).map(|i| i.user.clone())
    }

    fn check_access(&self, key: u32, room: &str) -> Result<(), Rejection> {
        match self.identity_of(key)?.room_access(room) {
            RoomAccess::Allowed => Ok(()),
            RoomAccess::Malformed(why) => Err(Rejection::new(ErrorCode::BadRequest, why)),
            RoomAccess::Forbidden(why) => Err(Rejection::new(ErrorCode::Forbidden, why)),
        }
    }

    /// The connection's membership of `room` (joined, or join under way), or `not_in_room`.
    fn joined_room(&self, key: u32, room: &str) -> Result<Arc<str>, Rejection> {
        self.conns[key as usize]
            .session()
            .and_then(|s| s.membership(room))
            .map(|m| m.room.clone())
            .ok_or_else(|| Rejection::new(ErrorCode::NotInRoom, "join the room first"))
    }

    /// Refuses new work while the queues toward `room`'s home are backed up.
    fn check_capacity(&self, room: &str) -> Result<(), Rejection> {
        let home = bus::home_shard(room, self.outboxes.len());
        let backlog = if home == self.index { 0 } else { self.outboxes[home].len() };
        if backlog >= bus::OUTBOX_SOFT_LIMIT || self.history_out.len() >= bus::OUTBOX_SOFT_LIMIT {
            return Err(Rejection::new(ErrorCode::Overloaded, "server is overloaded, retry shortly"));
        }
        Ok(())
    }

    fn on_join(
        &mut self,
        key: u32,
        reference: Option<&str>,
        room: &str,
        since: Option<u64>,
        history: Option<u64>,
    ) -> Result<(), Rejection> {
        self.check_access(key, room)?;
        self.check_capacity(room)?;
        let max_rooms = self.config.limits.max_rooms_per_connection;
        let user = self.user_of(key)?;
        let generation = self.conns[key as usize].generation;
        let Some(session) = self.conns[key as usize].session_mut() else { return Ok(()) };
        let existing = session.membership(room).map(|m| m.room.clone());
        let rejoin = existing.is_some();
        let room = match existing {
            Some(room) => room,
            None if session.rooms.len() >= max_rooms => {
                let message = format!("room limit reached (limits.max_rooms_per_connection = {max_rooms})");
                return Err(Rejection::new(ErrorCode::BadRequest, message));
            }
            None => {
                let room: Arc<str> = room.into();
                session.rooms.push(Membership { room: room.clone(), state: JoinState::Requested });
                room
            }
        };
        let conn = self.conn_ref(key, generation);
        let req = JoinRequest {
            room: room.clone(),
            conn,
            user,
            reference: reference.map(Into::into),
            since,
            history,
            rejoin,
        };
        self.send_home(&room, HomeMsg::Join(req), 0);
        Ok(())
    }

    fn on_leave(&mut self, key: u32, reference: Option<&str>, room: &str) -> Result<(), Rejection> {
        let user = self.user_of(key)?;
        let generation = self.conns[key as usize].generation;
        let Some(session) = self.conns[key as usize].session_mut() else { return Ok(()) };
        let Some(i) = session.rooms.iter().position(|m| &*m.room == room) else {
            return Err(Rejection::new(ErrorCode::NotInRoom, "not in that room"));
        };
        let membership = session.rooms.swap_remove(i);
        self.forget_membership(&membership, key);
        let conn = self.conn_ref(key, generation);
        let msg = HomeMsg::Leave {
            room: membership.room.clone(),
            conn,
            user,
            reply: true,
            reference: reference.map(Into::into),
        };
        self.send_home(&membership.room, msg, 0);
        Ok(())
    }

    fn check_body(&self, body: &RawValue) -> Result<(), Rejection> {
        let max_body = self.config.limits.max_body_bytes;
        if body.get().len() > max_body {
            return Err(Rejection::new(ErrorCode::TooLarge, format!("body larger than {max_body} bytes")));
        }
        Ok(())
    }

    fn mutate(
        &mut self,
        key: u32,
        reference: Option<&str>,
        room: &str,
        target: u64,
        op: MutationOp,
    ) -> Result<(), Rejection> {
        let room = self.joined_room(key, room)?;
        self.check_capacity(&room)?;
        let identity = self.identity_of(key)?;
        let mutation = Mutation {
            room: room.clone(),
            from: identity.user.clone(),
            admin: identity.role == Role::Admin,
            origin: self.conn_ref(key, self.conns[key as usize].generation),
            reference: reference.map(Into::into),
            target,
            op,
        };
        self.send_home(&room, HomeMsg::Mutate(mutation), 0);
        Ok(())
    }

    fn send_reader(&mut self, request: ReadRequest) {
        let reader = self.next_reader;
        self.next_reader = (self.next_reader + 1) % self.reader_out.len();
        self.reader_out[reader].push(request);
    }

    fn publish(
        &mut self,
        key: u32,
        reference: Option<&str>,
        room: Arc<str>,
        body: &RawValue,
        reply_to: Option<u64>,
    ) -> Result<(), Rejection> {
        self.check_body(body)?;
        self.check_capacity(&room)?;
        let identity = self.identity_of(key)?;
        let publish = Publish {
            room: room.clone(),
            from: identity.user.clone(),
            name: identity.name.clone(),
            origin: Some(self.conn_ref(key, self.conns[key as usize].generation)),
            reference: reference.map(Into::into),
            body: body.to_owned(),
            reply_to,
        };
        self.send_home(&room, HomeMsg::Publish(publish), 0);
        Ok(())
    }

    // ---- routing between shards --------------------------------------------------------------

    fn send_home(&mut self, room: &str, msg: HomeMsg, _now: Millis) {
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
            ShardMsg::StatsQuery { from, id } => {
                let part = self.stats_part();
                self.outboxes[from as usize].push(ShardMsg::StatsPart { id, part });
            }
            ShardMsg::StatsPart { id, part } => self.on_stats_part(id, part, now),
            ShardMsg::Looked { room, target: _, info } => {
                let mut out = std::mem::take(&mut self.home_out);
                self.home.looked(&room, info, unix_millis(), &mut out);
                self.route_home_output(&mut out);
                self.home_out = out;
            }
            ShardMsg::Rollback { room, last_seq } => self.home.rollback(&room, last_seq),
            ShardMsg::Reload { config, verifier } => self.reload(config, verifier),
            ShardMsg::Shutdown => self.begin_shutdown(now),
        }
    }

    fn reload(&mut self, config: Arc<Config>, verifier: Arc<Verifier>) {
        self.home.set_max_replay(config.history.max_replay);
        self.config = config;
        self.verifier = verifier;
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
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let deadline = now + self.config.server.handshake_timeout.as_millis() as Millis;
        entry.insert(Connection::new(stream, peer, generation, counted, deadline));
        self.schedule(key as u32, deadline);
    }

    fn on_downstream(&mut self, down: Downstream) {
        match down {
            Downstream::Deliver(delivery) => self.deliver(&delivery),
            Downstream::Reply(to, reply) => self.on_reply(to, reply),
        }
    }

    fn on_reply(&mut self, to: ConnRef, reply: Reply) {
        let key = to.key;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if conn.generation != to.generation {
            return;
        }
        match reply {
            Reply::Frame(frame) => self.send(key, frame),
            Reply::JoinStart { room } => {
                let Some(m) = conn.session_mut().and_then(|s| s.rooms.iter_mut().find(|m| m.room == room)) else {
                    return;
                };
                if matches!(m.state, JoinState::Requested) {
                    m.state = JoinState::Replaying { held: Vec::new(), held_bytes: 0 };
                    self.local.start_replay(&m.room, key);
                }
            }
            Reply::Joined { room, frames } => {
                // Left (or closed) before the answer came: the home shard has seen the leave too.
                let Some(m) = conn.session_mut().and_then(|s| s.rooms.iter_mut().find(|m| m.room == room)) else {
                    return;
                };
                let held = match std::mem::replace(&mut m.state, JoinState::Joined) {
                    JoinState::Requested => Vec::new(),
                    JoinState::Replaying { held, held_bytes } => {
                        self.local.end_replay(&m.room, key);
                        if held_bytes > self.config.limits.max_outbound_bytes {
                            // Fell too far behind while the replay was read: resume again later.
                            self.to_close.push((key, to.generation, CloseCode::Again, "slow consumer"));
                            return;
                        }
                        held
                    }
                    // A repeated join of a joined room: answer it, change nothing.
                    JoinState::Joined => {
                        for frame in frames {
                            self.send(key, frame);
                        }
                        return;
                    }
                };
                self.local.join(&m.room, key);
                for frame in frames.into_iter().chain(held) {
                    self.send(key, frame);
                }
            }
        }
    }

    /// Fan-out: the one frame, shared by reference, queued for every local recipient (or held
    /// for a recipient whose join of the room is still replaying history).
    fn deliver(&mut self, d: &Delivery) {
        let me = self.index as u16;
        let max_out = self.config.limits.max_outbound_bytes;
        let (members, others): (&[u32], &[u32]) = match &d.audience {
            Audience::Room => (self.local.members(&d.room), self.local.replaying(&d.room)),
            Audience::Users(a, b) if a == b => (&[], self.local.user_conns(a)),
            Audience::Users(a, b) => (self.local.user_conns(a), self.local.user_conns(b)),
        };
        // Room members are never replaying; everyone else may be.
        let may_replay = |i: usize| i >= members.len() || !matches!(d.audience, Audience::Room);
        let mut delivered = 0;
        for (i, &key) in members.iter().chain(others).enumerate() {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            let excluded = match &d.exclude {
                Exclude::Nobody => false,
                Exclude::Conn(c) => c.shard == me && c.key == key && c.generation == conn.generation,
                Exclude::User(user) => conn.session().and_then(|s| s.user()).is_some_and(|u| u == user),
            };
            if excluded {
                continue;
            }
            delivered += 1;
            if may_replay(i) && hold_for_replay(conn, &d.room, &d.frame, max_out) {
                continue;
            }
            queue_frame(conn, key, d.frame.clone(), max_out, &mut self.dirty, &mut self.to_close);
        }
        self.counters().messages_out.add(delivered);
    }

    /// Queues a frame for one connection.
    fn send(&mut self, key: u32, frame: Bytes) {
        let max_out = self.config.limits.max_outbound_bytes;
        self.counters().messages_out.add(1);
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        queue_frame(conn, key, frame, max_out, &mut self.dirty, &mut self.to_close);
    }

    // ---- closing -----------------------------------------------------------------------------

    /// Closes an open connection with a close frame; `stream_ok` says whether its input can
    /// still be read as frames.
    fn close(&mut self, key: u32, code: CloseCode, reason: &str, now: Millis, stream_ok: bool) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if code == CloseCode::Again {
            conn.out.discard_unstarted();
        }
        let Some(ended) = conn.close_ws(code, reason, now, stream_ok, &mut self.scratch) else { return };
        mark_dirty(conn, key, &mut self.dirty);
        self.retire(key, ended);
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
    fn retire(&mut self, key: u32, ended: Ended) {
        let counters = self.counters();
        counters.connections.sub(1);
        self.shared.ws_connections.fetch_sub(1, Ordering::Relaxed);
        let Some(identity) = ended.identity else { return };
        counters.authenticated.sub(1);
        self.local.remove_user(&identity.user, key);
        let generation = self.conns.get(key as usize).map_or(0, |c| c.generation);
        let conn = self.conn_ref(key, generation);
        for m in ended.rooms {
            self.forget_membership(&m, key);
            let msg = HomeMsg::Leave {
                room: m.room.clone(),
                conn,
                user: identity.user.clone(),
                reply: false,
                reference: None,
            };
            self.send_home(&m.room, msg, 0);
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
            self.retire(key, ended);
        }
        let _ = self.poll.registry().deregister(&mut conn.socket);
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

    fn flush_dirty(&mut self, _now: Millis) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            conn.dirty = false;
            if conn.write_blocked {
                continue;
            }
            if conn.flush().is_err() || conn.is_finished() {
                self.destroy(key);
            }
        }
    }

    // ---- stats ---------------------------------------------------------------------------------

    fn counters(&self) -> &ShardCounters {
        &self.shared.counters[self.index]
    }

    fn stats_part(&self) -> StatsPart {
        let (rooms, top_rooms) = self.home.stats();
        StatsPart { rooms, users: self.online.len(), top_rooms }
    }

    fn start_stats(&mut self, key: u32) {
        let id = self.next_gather;
        self.next_gather += 1;
        let conn = &mut self.conns[key as usize];
        if let Phase::Http(h) = &mut conn.phase {
            h.awaiting_stats = true;
        }
        let shard_count = self.outboxes.len();
        self.gathers.insert(id, Gather { key, generation: conn.generation, parts: Vec::new(), waiting: shard_count });
        for shard in 0..shard_count {
            if shard == self.index {
                let part = self.stats_part();
                self.on_stats_part(id, part, 0);
            } else {
                self.outboxes[shard].push(ShardMsg::StatsQuery { from: self.index as u16, id });
            }
        }
    }

    fn on_stats_part(&mut self, id: u64, part: StatsPart, now: Millis) {
        let Some(gather) = self.gathers.get_mut(&id) else { return };
        gather.parts.push(part);
        gather.waiting -= 1;
        if gather.waiting > 0 {
            return;
        }
        let Some(gather) = self.gathers.remove(&id) else { return };
        if self.conns.get(gather.key as usize).is_some_and(|c| c.generation == gather.generation) {
            let body = self.stats_json(gather.parts);
            self.respond(gather.key, http::response(200, "OK", http::JSON, body.as_bytes(), &[]), now);
        }
    }

    fn stats_json(&self, parts: Vec<StatsPart>) -> String {
        let counters = &self.shared.counters;
        let sum = |f: fn(&ShardCounters) -> &crate::metrics::Counter| crate::metrics::total(counters, f);
        let mut top: Vec<(Arc<str>, usize)> = parts.iter().flat_map(|p| p.top_rooms.iter().cloned()).collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_ROOMS);
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
            "uptime_s": self.shared.started.elapsed().as_secs(),
            "top_rooms": top_rooms,
        })
        .to_string()
    }
}

/// Holds `frame` when `conn` is replaying `room`'s history; returns false when it is not.
/// Held bytes count against the outbound cap: past it nothing more is kept, and the
/// connection is closed with 1013 when its join lands.
fn hold_for_replay(conn: &mut Connection, room: &str, frame: &Bytes, max_out: usize) -> bool {
    let Some(session) = conn.session_mut() else { return false };
    let Some(m) = session.rooms.iter_mut().find(|m| &*m.room == room) else { return false };
    let JoinState::Replaying { held, held_bytes } = &mut m.state else { return false };
    if *held_bytes <= max_out {
        held.push(frame.clone());
    }
    *held_bytes += frame.len();
    true
}

/// Queues `frame` on `conn`, listing it for this turn's flush; a connection whose backlog
/// passes `max_out` is marked for a 1013 close instead of growing further.
fn queue_frame(
    conn: &mut Connection,
    key: u32,
    frame: Bytes,
    max_out: usize,
    dirty: &mut Vec<u32>,
    to_close: &mut Vec<(u32, u32, CloseCode, &'static str)>,
) {
    if conn.out.pending() > max_out {
        return; // already marked
    }
    conn.out.push(frame);
    if conn.out.pending() > max_out {
        to_close.push((key, conn.generation, CloseCode::Again, "slow consumer"));
    }
    mark_dirty(conn, key, dirty);
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
