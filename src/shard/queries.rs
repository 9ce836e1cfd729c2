//! Questions a shard answers about itself, for other shards' HTTP answers and for the admin
//! socket: counts, rooms, a user's connections, and actions on a user (notify, disconnect).

use std::sync::Arc;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{Shard, format_session};
use crate::bus::{AdminMsg, Answer, ConnSummary, Query, ReplyTo, ShardMsg};
use crate::conn::JoinState;
use crate::timer::Millis;

impl Shard {
    pub(super) fn on_query(&mut self, reply_to: ReplyTo, id: u64, query: Query, now: Millis) {
        let answer = self.answer_query(query, now);
        match reply_to {
            ReplyTo::Shard(shard) if shard as usize == self.index => self.on_answer(id, answer, now),
            ReplyTo::Shard(shard) => self.outboxes[shard as usize].push(ShardMsg::Answer { id, answer }),
            ReplyTo::Admin => {
                if self.shared.admin.push(AdminMsg::Answer { id, answer }).is_ok() {
                    self.shared.admin.wake();
                }
            }
        }
    }

    pub(super) fn answer_query(&mut self, query: Query, now: Millis) -> Answer {
        match query {
            Query::Stats => Answer::Stats(self.stats_part()),
            Query::Notify { user, frame } => {
                let keys = self.local.user_conns(&user).to_vec();
                Answer::Count(self.send_to(&keys, &frame))
            }
            Query::Broadcast { frame } => {
                let keys: Vec<u32> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.session().is_some_and(|s| s.identity.is_some()))
                    .map(|(k, _)| k as u32)
                    .collect();
                Answer::Count(self.send_to(&keys, &frame))
            }
            Query::Disconnect { user, reason } => {
                let keys = self.local.user_conns(&user).to_vec();
                for &key in &keys {
                    self.close(key, CloseCode::Policy, &reason, now, true);
                }
                Answer::Count(keys.len())
            }
            Query::Rooms { prefix } => Answer::Rooms(self.home.summaries(&prefix)),
            Query::Room { name } => Answer::Room(self.home.detail(&name)),
            Query::User { name } => Answer::User(self.user_connections(&name, now)),
        }
    }

    fn send_to(&mut self, keys: &[u32], frame: &Bytes) -> usize {
        for &key in keys {
            self.send(key, frame.clone());
        }
        keys.len()
    }

    fn user_connections(&self, user: &str, now: Millis) -> Vec<ConnSummary> {
        let local = self.local.user_conns(user);
        local
            .iter()
            .filter_map(|&key| {
                let conn = self.conns.get(key as usize)?;
                let session = conn.session()?;
                let rooms: Vec<Arc<str>> = session
                    .rooms
                    .iter()
                    .filter(|m| matches!(m.state, JoinState::Joined))
                    .map(|m| m.room.clone())
                    .collect();
                Some(ConnSummary {
                    session: format_session(session.id),
                    shard: self.index as u16,
                    peer: conn.peer,
                    rooms,
                    connected_s: now.saturating_sub(session.opened) / 1000,
                })
            })
            .collect()
    }
}
