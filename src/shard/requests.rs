//! What a shard does with a client's WebSocket request: auth, joins, publishes, mutations, reads.
//! It checks and forwards; the room's home shard and the history stage decide and store.

use std::sync::Arc;

use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{Shard, format_session};
use crate::auth::{Identity, Role, RoomAccess};
use crate::bus::{self, HomeMsg, JoinRequest, Mutation, MutationOp, Origin, Publish, ReadRequest, ShardMsg};
use crate::conn::{JoinState, Membership};
use crate::names;
use crate::protocol::{self, ErrorCode, Rejection, Request, ServerFrame};
use crate::timer::{Millis, unix_millis};

impl Shard {
    pub(super) fn on_text(&mut self, key: u32, text: &str, now: Millis) {
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
            Ok(req @ (Request::Auth { .. } | Request::Ping)) => self.dispatch(key, reference, req),
            Ok(_) if !authenticated => Err(Rejection::new(
                ErrorCode::Unauthenticated,
                "authenticate first: send {\"type\":\"auth\",\"token\":...}",
            )),
            Ok(req) => self.dispatch(key, reference, req),
        };
        if let Err(rejection) = result {
            self.reply_error(key, reference, &rejection);
        }
    }

    pub(super) fn reply_error(&mut self, key: u32, reference: Option<&str>, rejection: &Rejection) {
        let frame = ServerFrame::Error { reference, code: rejection.code, message: &rejection.message }.to_frame();
        self.send(key, frame);
    }

    pub(super) fn dispatch(&mut self, key: u32, reference: Option<&str>, req: Request) -> Result<(), Rejection> {
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
                self.send_home(&room, HomeMsg::Typing { room: room.clone(), user, active });
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
                let conn = self.conn_ref(key);
                let msg = HomeMsg::PresenceQuery { room: room.clone(), conn, reference: reference.map(Into::into) };
                self.send_home(&room, msg);
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
                let conn = self.conn_ref(key);
                let reference = reference.map(Into::into);
                let request =
                    ReadRequest::History { conn, room: room.as_ref().into(), reference, before, after, limit };
                self.send_reader(request);
                Ok(())
            }
        }
    }

    pub(super) fn on_auth(&mut self, key: u32, reference: Option<&str>, token: &str) -> Result<(), Rejection> {
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
    pub(super) fn authenticate(&mut self, key: u32, identity: Identity) {
        let user = identity.user.clone();
        let Some(session) = self.conns[key as usize].session_mut() else { return };
        session.identity = Some(identity);
        self.counters().authenticated.add(1);
        self.local.add_user(&user, key);
        self.send_user_home(ShardMsg::UserOnline(user));
    }

    pub(super) fn identity_of(&self, key: u32) -> Result<&Identity, Rejection> {
        self.conns[key as usize]
            .session()
            .and_then(|s| s.identity.as_ref())
            .ok_or_else(|| Rejection::new(ErrorCode::Unauthenticated, "not authenticated"))
    }

    pub(super) fn user_of(&self, key: u32) -> Result<Arc<str>, Rejection> {
        self.identity_of(key).map(|i| i.user.clone())
    }

    pub(super) fn check_access(&self, key: u32, room: &str) -> Result<(), Rejection> {
        match self.identity_of(key)?.room_access(room) {
            RoomAccess::Allowed => Ok(()),
            RoomAccess::Malformed(why) => Err(Rejection::new(ErrorCode::BadRequest, why)),
            RoomAccess::Forbidden(why) => Err(Rejection::new(ErrorCode::Forbidden, why)),
        }
    }

    /// The connection's membership of `room` (joined, or join under way), or `not_in_room`.
    pub(super) fn joined_room(&self, key: u32, room: &str) -> Result<Arc<str>, Rejection> {
        self.conns[key as usize]
            .session()
            .and_then(|s| s.membership(room))
            .map(|m| m.room.clone())
            .ok_or_else(|| Rejection::new(ErrorCode::NotInRoom, "join the room first"))
    }

    /// Refuses new work while the queues toward `room`'s home are backed up.
    pub(super) fn check_capacity(&self, room: &str) -> Result<(), Rejection> {
        let home = bus::home_shard(room, self.outboxes.len());
        let backlog = if home == self.index { 0 } else { self.outboxes[home].len() };
        if backlog >= bus::OUTBOX_SOFT_LIMIT || self.history_out.len() >= bus::OUTBOX_SOFT_LIMIT {
            return Err(Rejection::new(ErrorCode::Overloaded, "server is overloaded, retry shortly"));
        }
        Ok(())
    }

    pub(super) fn on_join(
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
        let conn = self.conn_ref(key);
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
                // Most connections join one or two rooms: grow one slot at a time, not four.
                session.rooms.reserve_exact(1);
                session.rooms.push(Membership { room: room.clone(), state: JoinState::Requested });
                room
            }
        };
        let req = JoinRequest {
            room: room.clone(),
            conn,
            user,
            reference: reference.map(Into::into),
            since,
            history,
            rejoin,
        };
        self.send_home(&room, HomeMsg::Join(req));
        Ok(())
    }

    pub(super) fn on_leave(&mut self, key: u32, reference: Option<&str>, room: &str) -> Result<(), Rejection> {
        let user = self.user_of(key)?;
        let conn = self.conn_ref(key);
        let Some(session) = self.conns[key as usize].session_mut() else { return Ok(()) };
        let Some(i) = session.rooms.iter().position(|m| &*m.room == room) else {
            return Err(Rejection::new(ErrorCode::NotInRoom, "not in that room"));
        };
        let membership = session.rooms.swap_remove(i);
        self.forget_membership(&membership, key);
        let msg = HomeMsg::Leave {
            room: membership.room.clone(),
            conn,
            user,
            reply: true,
            reference: reference.map(Into::into),
        };
        self.send_home(&membership.room, msg);
        Ok(())
    }

    pub(super) fn check_body(&self, body: &RawValue) -> Result<(), Rejection> {
        let max_body = self.config.limits.max_body_bytes;
        if body.get().len() > max_body {
            return Err(Rejection::new(ErrorCode::TooLarge, format!("body larger than {max_body} bytes")));
        }
        Ok(())
    }

    pub(super) fn mutate(
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
            origin: self.conn_ref(key),
            reference: reference.map(Into::into),
            target,
            op,
        };
        self.send_home(&room, HomeMsg::Mutate(mutation));
        Ok(())
    }

    pub(super) fn send_reader(&mut self, request: ReadRequest) {
        let reader = self.next_reader;
        self.next_reader = (self.next_reader + 1) % self.reader_out.len();
        self.reader_out[reader].push(request);
    }

    pub(super) fn publish(
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
            origin: Origin::Conn(self.conn_ref(key), reference.map(Into::into)),
            body: body.to_owned(),
            reply_to,
        };
        self.send_home(&room, HomeMsg::Publish(publish));
        Ok(())
    }
}
