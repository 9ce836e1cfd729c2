//! Fan-out inside a shard: one shared frame queued on every local recipient, replies routed to
//! their connection, events held for a join that is still replaying. No socket I/O here.

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{Shard, mark_dirty};
use crate::api;
use crate::bus::{Audience, ConnRef, Delivery, Exclude, Reply};
use crate::conn::{Connection, JoinState, Phase};
use crate::ws;

impl Shard {
    pub(super) fn on_reply(&mut self, to: ConnRef, reply: Reply) {
        let key = to.key;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        if conn.generation != to.generation {
            return;
        }
        match reply {
            // An HTTP API request waiting for its answer (an ack, a history page, an error).
            Reply::Frame(frame) if matches!(conn.phase, Phase::Http(_)) => {
                let response = api::response_for_frame(&ws::frame_payload(&frame));
                self.finish_pending(key, to.generation, response, self.clock.now());
            }
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
    pub(super) fn deliver(&mut self, d: &Delivery) {
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
    pub(super) fn send(&mut self, key: u32, frame: Bytes) {
        let max_out = self.config.limits.max_outbound_bytes;
        self.counters().messages_out.add(1);
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        queue_frame(conn, key, frame, max_out, &mut self.dirty, &mut self.to_close);
    }
}

/// Holds `frame` when `conn` is replaying `room`'s history; returns false when it is not.
/// Held bytes count against the outbound cap: past it nothing more is kept, and the
/// connection is closed with 1013 when its join lands.
pub(super) fn hold_for_replay(conn: &mut Connection, room: &str, frame: &Bytes, max_out: usize) -> bool {
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
pub(super) fn queue_frame(
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
