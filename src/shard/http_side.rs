//! The HTTP side of a shard's connections: requests framed and answered in order (keep-alive),
//! the WebSocket upgrade, API calls carried out, and answers gathered from every shard. It never
//! parses WebSocket frames.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::value::RawValue;

use super::{Shard, format_session, mark_dirty};
use crate::api::Call;
use crate::auth::Identity;
use crate::bus::{Answer, HomeMsg, Origin, Publish, Query, ReadRequest, ShardMsg, StatsPart};
use crate::conn::{CLOSE_GRACE_MS, Pending, Phase, Session, TokenBucket};
use crate::http::{self, Decision, Endpoint, Failure, Framed, Gathered, Response, RouteEnv};
use crate::metrics;
use crate::protocol::ServerFrame;
use crate::timer::{Millis, unix_millis};
use crate::ws::{self, FrameTracker};

/// An HTTP answer that needs a part from every shard.
pub(super) struct Gather {
    key: u32,
    generation: u32,
    kind: GatherKind,
    answers: Vec<Answer>,
    waiting: usize,
}

#[derive(Clone, Copy)]
enum GatherKind {
    Stats,
    Metrics,
    /// `{"delivered": n}`
    Delivered,
    /// `{"closed": n}`
    Closed,
}

impl Shard {
    /// Reads what arrived and answers every complete request, in order.
    pub(super) fn on_http_readable(&mut self, key: u32, now: Millis) {
        let limit = http::MAX_HEAD_BYTES + self.config.limits.max_frame_bytes;
        loop {
            let Some(conn) = self.conns.get_mut(key as usize) else { return };
            if !matches!(&conn.phase, Phase::Http(h) if h.pending.is_none()) {
                return;
            }
            let at_limit = match conn.read_http(&mut self.scratch, limit) {
                Ok(at_limit) => at_limit,
                Err(_) => return self.destroy(key),
            };
            // A TLS handshake answers inside reads; its records must go out.
            if conn.transport.has_pending_records() {
                mark_dirty(conn, key, &mut self.dirty);
            }
            self.serve_requests(key, now);
            // Stopped at the limit with requests answered: the socket may hold more.
            let progressed =
                matches!(&self.conns.get(key as usize).map(|c| &c.phase), Some(Phase::Http(h)) if h.buf.len() < limit);
            if !at_limit || !progressed {
                return;
            }
        }
    }

    /// Answers the complete requests in the buffer; each waits for the answer before it.
    fn serve_requests(&mut self, key: u32, now: Millis) {
        let max_body = self.config.limits.max_frame_bytes;
        loop {
            let Some(conn) = self.conns.get_mut(key as usize) else { return };
            let Phase::Http(h) = &mut conn.phase else { return };
            if h.pending.is_some() {
                return;
            }
            match http::frame_request(&h.buf, max_body) {
                Framed::NeedMore => return,
                Framed::Bad(response) => {
                    log::debug!("{}: refused request: {}", conn.peer, response.status);
                    return self.respond(key, response, false, now);
                }
                Framed::Request { head, body_end } => {
                    let request: Vec<u8> = h.buf.drain(..body_end).collect();
                    self.route(key, &head, &request[head.len..], now);
                }
            }
        }
    }

    fn route(&mut self, key: u32, head: &http::Head, body: &[u8], now: Millis) {
        let conn = &self.conns[key as usize];
        let env = RouteEnv {
            config: &self.config,
            verifier: &self.verifier,
            now_unix: unix_millis() / 1000,
            draining: self.shared.draining.load(Ordering::Relaxed),
            over_ip_limit: !conn.counted,
        };
        match http::decide(head, body, &env) {
            Decision::Upgrade { endpoint, identity, accept_key } => {
                self.upgrade(key, endpoint, identity, &accept_key, now);
            }
            Decision::Respond { response, failure: Some(failure) } => {
                log::debug!("{}: {} refused: {failure:?}", conn.peer, head.path);
                self.count_handshake_failure(failure);
                self.respond(key, response, false, now);
            }
            Decision::Respond { response, failure: None } => self.respond(key, response, head.keep_alive, now),
            Decision::Gather(Gathered::Stats) => self.gather(key, GatherKind::Stats, Query::Stats, head.keep_alive),
            Decision::Gather(Gathered::Metrics) => self.gather(key, GatherKind::Metrics, Query::Stats, head.keep_alive),
            Decision::Api(call) => self.api_call(key, call, head.keep_alive, now),
        }
    }

    fn count_handshake_failure(&self, failure: Failure) {
        let counters = self.counters();
        counters.handshake_failures[failure as usize].add(1);
        if failure == Failure::Auth {
            counters.auth_failures.add(1);
        }
    }

    /// Answers the current request; with keep-alive the connection waits for the next one.
    pub(super) fn respond(&mut self, key: u32, response: Response, keep_alive: bool, now: Millis) {
        let idle = self.config.server.handshake_timeout.as_millis() as Millis;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        match &mut conn.phase {
            Phase::Http(h) if keep_alive => {
                conn.out.push(response.encode(true));
                h.pending = None;
                h.deadline = now + idle;
                mark_dirty(conn, key, &mut self.dirty);
                self.schedule(key, now + idle);
            }
            _ => {
                conn.respond_and_close(response.encode(false), now);
                mark_dirty(conn, key, &mut self.dirty);
                self.schedule(key, now + CLOSE_GRACE_MS);
            }
        }
    }

    /// Answers a request whose answer was pending, then goes on with the connection's input.
    pub(super) fn finish_pending(&mut self, key: u32, generation: u32, response: Response, now: Millis) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let Phase::Http(h) = &conn.phase else { return };
        let Some(pending) = h.pending.filter(|_| conn.generation == generation) else { return };
        self.respond(key, response, pending.keep_alive, now);
        self.on_http_readable(key, now);
    }

    fn set_pending(&mut self, key: u32, keep_alive: bool) {
        if let Some(Phase::Http(h)) = self.conns.get_mut(key as usize).map(|c| &mut c.phase) {
            h.pending = Some(Pending { keep_alive });
        }
    }

    fn upgrade(&mut self, key: u32, endpoint: Endpoint, identity: Option<Identity>, accept_key: &str, now: Millis) {
        let max = self.config.server.max_connections;
        if self.shared.ws_connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.shared.ws_connections.fetch_sub(1, Ordering::Relaxed);
            self.count_handshake_failure(Failure::Capacity);
            let response = Response::error(503, "overloaded", "server is at max_connections");
            return self.respond(key, response, false, now);
        }
        let session_id = self.next_session_id();
        let conn = &mut self.conns[key as usize];
        let Phase::Http(h) = &mut conn.phase else { return };
        let leftover = std::mem::take(&mut h.buf);
        conn.out.push(http::switching_protocols(accept_key));
        let limits = &self.config.limits;
        let mut frames = FrameTracker::default();
        frames.feed(&leftover);
        let session = Session {
            ws: Some(Box::new(ws::server_context(limits.max_frame_bytes, leftover))),
            frames,
            endpoint,
            id: session_id,
            identity: None,
            auth_deadline: now + self.config.auth.timeout.as_millis() as Millis,
            rooms: Vec::new(),
            bucket: TokenBucket::full(limits.burst, now),
            dropped_in_row: 0,
            last_seen: now,
            last_ping: now,
            opened: now,
        };
        conn.phase = Phase::Open(Box::new(session));
        mark_dirty(conn, key, &mut self.dirty);
        let counters = self.counters();
        counters.connections.add(1);
        counters.handshakes.add(1);
        let user = identity.as_ref().map(|i| i.user.clone());
        if endpoint == Endpoint::Chat {
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
        log::debug!(
            "session={} opened by {} on {endpoint:?}{}",
            format_session(session_id),
            self.conns[key as usize].peer,
            user.as_deref().map(|u| format!(" as {u}")).unwrap_or_default()
        );
        self.schedule(key, now);
        // A client may have sent frames right behind its request; they are already in our
        // buffer and no readiness event will announce them again.
        self.on_ws_readable(key, now);
    }

    fn next_session_id(&mut self) -> u64 {
        self.sessions_started = self.sessions_started.wrapping_add(1);
        (u64::from(self.shared.boot_nonce) << 40) | ((self.index as u64) << 32) | u64::from(self.sessions_started)
    }

    /// Carries out an API call like a client request: publishes go through the room's home
    /// shard and the history stage, and the HTTP answer waits for the commit.
    fn api_call(&mut self, key: u32, call: Call, keep_alive: bool, now: Millis) {
        let conn = self.conn_ref(key);
        match call {
            Call::Publish { room, from, body } => {
                if let Err(rejection) = self.check_capacity(&room) {
                    return self.respond(key, Response::error(503, "overloaded", &rejection.message), keep_alive, now);
                }
                self.set_pending(key, keep_alive);
                let publish = Publish {
                    room: room.clone(),
                    from,
                    name: None,
                    origin: Origin::Conn(conn, None),
                    body,
                    reply_to: None,
                };
                self.send_home(&room, HomeMsg::Publish(publish));
            }
            Call::History { room, before, after, limit } => {
                self.set_pending(key, keep_alive);
                self.send_reader(ReadRequest::History { conn, room, reference: None, before, after, limit });
            }
            Call::Notify { user, data } => {
                let frame = notification(&data);
                self.gather(key, GatherKind::Delivered, Query::Notify { user, frame }, keep_alive);
            }
            Call::Broadcast { data } => {
                let frame = notification(&data);
                self.gather(key, GatherKind::Delivered, Query::Broadcast { frame }, keep_alive);
            }
            Call::Disconnect { user } => {
                let query = Query::Disconnect { user, reason: Arc::from("kicked") };
                self.gather(key, GatherKind::Closed, query, keep_alive);
            }
        }
    }

    /// Asks every shard (this one directly) and answers once all parts are in.
    fn gather(&mut self, key: u32, kind: GatherKind, query: Query, keep_alive: bool) {
        self.set_pending(key, keep_alive);
        let id = self.next_gather;
        self.next_gather += 1;
        let waiting = self.outboxes.len();
        let generation = self.conns[key as usize].generation;
        self.gathers.insert(id, Gather { key, generation, kind, answers: Vec::new(), waiting });
        for shard in 0..waiting {
            if shard != self.index {
                let msg = ShardMsg::Query {
                    reply_to: crate::bus::ReplyTo::Shard(self.index as u16),
                    id,
                    query: query.clone(),
                };
                self.outboxes[shard].push(msg);
            }
        }
        let answer = self.answer_query(query, 0);
        self.on_answer(id, answer, 0);
    }

    pub(super) fn on_answer(&mut self, id: u64, answer: Answer, now: Millis) {
        let Some(gather) = self.gathers.get_mut(&id) else { return };
        gather.answers.push(answer);
        gather.waiting -= 1;
        if gather.waiting > 0 {
            return;
        }
        let Some(gather) = self.gathers.remove(&id) else { return };
        let response = match gather.kind {
            GatherKind::Stats => Response::json(200, &metrics::stats_json(&self.shared, &stats_parts(&gather.answers))),
            GatherKind::Metrics => {
                let text = metrics::render(&self.shared, &stats_parts(&gather.answers));
                Response::new(200, metrics::CONTENT_TYPE, text)
            }
            GatherKind::Delivered => Response::json(200, &serde_json::json!({ "delivered": count(&gather.answers) })),
            GatherKind::Closed => Response::json(200, &serde_json::json!({ "closed": count(&gather.answers) })),
        };
        self.finish_pending(gather.key, gather.generation, response, now);
    }

    pub(super) fn stats_part(&self) -> StatsPart {
        let (rooms, top_rooms) = self.home.stats();
        StatsPart { rooms, users: self.online.len(), top_rooms }
    }
}

fn notification(data: &RawValue) -> bytes::Bytes {
    ServerFrame::Notification { data, ts: unix_millis() }.to_frame()
}

fn stats_parts(answers: &[Answer]) -> Vec<&StatsPart> {
    answers.iter().filter_map(|a| if let Answer::Stats(p) = a { Some(p) } else { None }).collect()
}

fn count(answers: &[Answer]) -> usize {
    answers.iter().map(|a| if let Answer::Count(n) = a { *n } else { 0 }).sum()
}
