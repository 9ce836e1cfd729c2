//! Room state. [`HomeRooms`]: on a room's home shard, the one place its `seq`, membership and
//! presence are decided; [`LocalIndex`]: on every shard, which of its own connections are in which
//! room and belong to which user. Pure state and decisions: no sockets, no clocks except `ts` given in.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::bus::{
    Audience, ConnRef, Delivery, Downstream, EventRecord, Exclude, HistoryMsg, HomeMsg, JoinRequest, Publish, Reply,
    ShardSet,
};
use crate::names::{RoomKind, room_kind};
use crate::protocol::ServerFrame;

/// Recent events a home shard keeps per room so a reconnecting client resumes from memory.
const TAIL_EVENTS: usize = 256;
const TAIL_BYTES: usize = 256 * 1024;
/// Rooms listed in `/stats` `top_rooms`.
pub const TOP_ROOMS: usize = 10;

/// What handling a home message produced.
#[derive(Debug)]
pub enum HomeOutput {
    /// Goes through the history stage, keeping its place in the room's order.
    History(HistoryMsg),
    /// Goes straight to one shard (typing, replies that need no ordering).
    Shard(usize, Downstream),
}

#[derive(Debug, Default)]
struct HomeRoom {
    /// Last assigned seq.
    seq: u64,
    /// Connections in the room, per shard that has any.
    conns: Vec<(u16, u32)>,
    shards: ShardSet,
    /// Distinct users in the room and how many of their connections joined.
    users: HashMap<Arc<str>, u32>,
    tail: Tail,
}

#[derive(Debug, Default)]
struct Tail {
    events: VecDeque<TailEvent>,
    bytes: usize,
}

#[derive(Debug)]
struct TailEvent {
    seq: u64,
    is_message: bool,
    frame: Bytes,
}

impl Tail {
    fn push(&mut self, event: TailEvent) {
        self.bytes += event.frame.len();
        self.events.push_back(event);
        while self.events.len() > TAIL_EVENTS || self.bytes > TAIL_BYTES {
            match self.events.pop_front() {
                Some(old) => self.bytes -= old.frame.len(),
                None => break,
            }
        }
    }

    /// Events after `since`, at most `max` (the newest), and whether some were missing.
    fn since(&self, since: u64, last_seq: u64, max: usize) -> (Vec<Bytes>, bool) {
        if since >= last_seq {
            return (Vec::new(), false);
        }
        let oldest_kept = self.events.front().map_or(u64::MAX, |e| e.seq);
        let missing = last_seq - since;
        let truncated = oldest_kept > since + 1 || missing > max as u64;
        let after: Vec<&TailEvent> = self.events.iter().filter(|e| e.seq > since).collect();
        let skip = after.len().saturating_sub(max);
        (after[skip..].iter().map(|e| e.frame.clone()).collect(), truncated)
    }

    /// The newest `n` message events, oldest first.
    fn last_messages(&self, n: usize) -> Vec<Bytes> {
        let mut picked: Vec<Bytes> =
            self.events.iter().rev().filter(|e| e.is_message).take(n).map(|e| e.frame.clone()).collect();
        picked.reverse();
        picked
    }
}

/// The rooms whose home is this shard.
pub struct HomeRooms {
    rooms: HashMap<Arc<str>, HomeRoom>,
    shard_count: usize,
    max_replay: usize,
}

impl HomeRooms {
    pub fn new(shard_count: usize, max_replay: usize) -> HomeRooms {
        HomeRooms { rooms: HashMap::new(), shard_count, max_replay }
    }

    pub fn set_max_replay(&mut self, max_replay: usize) {
        self.max_replay = max_replay;
    }

    pub fn handle(&mut self, msg: HomeMsg, now_ms: u64, out: &mut Vec<HomeOutput>) {
        match msg {
            HomeMsg::Join(req) => self.join(req, out),
            HomeMsg::Leave { room, conn, user, reply, reference } => {
                self.leave(&room, conn, &user, reply.then_some(reference), out)
            }
            HomeMsg::Publish(p) => self.publish(p, now_ms, out),
            HomeMsg::Typing { room, user, active } => self.typing(&room, user, active, out),
            HomeMsg::PresenceQuery { room, conn, reference } => self.presence_list(&room, conn, reference, out),
        }
    }

    fn join(&mut self, req: JoinRequest, out: &mut Vec<HomeOutput>) {
        let max_replay = self.max_replay;
        let room = self.rooms.entry(req.room.clone()).or_default();
        if !req.rejoin {
            add_conn(room, req.conn.shard);
            let count = room.users.entry(req.user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                out.push(presence(&req.room, room.shards, &req.user, "join"));
            }
        }
        let (replay, truncated) = match (req.since, req.history) {
            (Some(since), _) => room.tail.since(since, room.seq, max_replay),
            (None, Some(n)) => (room.tail.last_messages(n as usize), false),
            (None, None) => (Vec::new(), false),
        };
        let joined = ServerFrame::Joined {
            reference: req.reference.as_deref(),
            room: &req.room,
            seq: room.seq,
            members: room.users.len(),
            truncated,
        }
        .to_frame();
        let mut frames = Vec::with_capacity(1 + replay.len());
        frames.push(joined);
        frames.extend(replay);
        let reply = Reply::Joined { room: req.room, frames };
        out.push(relay_to(req.conn, reply));
    }

    /// `reply` is `Some(ref)` when the client asked to leave and awaits `left`.
    fn leave(
        &mut self,
        name: &Arc<str>,
        conn: ConnRef,
        user: &Arc<str>,
        reply: Option<Option<Box<str>>>,
        out: &mut Vec<HomeOutput>,
    ) {
        if let Some(room) = self.rooms.get_mut(name) {
            remove_conn(room, conn.shard);
            if let Some(count) = room.users.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    room.users.remove(user);
                    out.push(presence(name, room.shards, user, "leave"));
                }
            }
        }
        if let Some(reference) = reply {
            let left = ServerFrame::Left { reference: reference.as_deref(), room: name }.to_frame();
            out.push(relay_to(conn, Reply::Frame(left)));
        }
    }

    fn publish(&mut self, p: Publish, ts: u64, out: &mut Vec<HomeOutput>) {
        let room = self.rooms.entry(p.room.clone()).or_default();
        room.seq += 1;
        let seq = room.seq;
        let frame = ServerFrame::Message {
            room: &p.room,
            seq,
            from: &p.from,
            name: p.name.as_deref(),
            body: &p.body,
            reply_to: p.reply_to,
            ts,
        }
        .to_frame();
        room.tail.push(TailEvent { seq, is_message: true, frame: frame.clone() });
        let (audience, shards) = match room_kind(&p.room) {
            RoomKind::Direct(a, b) => (Audience::Users(a.into(), b.into()), ShardSet::all(self.shard_count)),
            _ => (Audience::Room, room.shards),
        };
        let ack = p.origin.map(|origin| {
            let ack = ServerFrame::Ack { reference: p.reference.as_deref(), room: &p.room, seq, ts }.to_frame();
            (origin, ack)
        });
        let exclude = p.origin.map_or(Exclude::Nobody, Exclude::Conn);
        let record = EventRecord { room: p.room.clone(), seq, ts, from: p.from, frame: frame.clone() };
        let delivery = Delivery { room: p.room, frame, audience, exclude };
        out.push(HomeOutput::History(HistoryMsg::Event { record, delivery, shards, ack }));
    }

    fn typing(&self, name: &Arc<str>, user: Arc<str>, active: bool, out: &mut Vec<HomeOutput>) {
        let Some(room) = self.rooms.get(name) else { return };
        let frame = ServerFrame::Typing { room: name, user: &user, active }.to_frame();
        let delivery = Delivery { room: name.clone(), frame, audience: Audience::Room, exclude: Exclude::User(user) };
        for shard in room.shards.iter() {
            out.push(HomeOutput::Shard(shard, Downstream::Deliver(delivery.clone())));
        }
    }

    fn presence_list(&self, name: &Arc<str>, conn: ConnRef, reference: Option<Box<str>>, out: &mut Vec<HomeOutput>) {
        let mut users: Vec<&str> =
            self.rooms.get(name).map(|r| r.users.keys().map(|u| &**u).collect()).unwrap_or_default();
        users.sort_unstable();
        let frame = ServerFrame::PresenceList { reference: reference.as_deref(), room: name, users }.to_frame();
        out.push(HomeOutput::Shard(conn.shard as usize, Downstream::Reply(conn, Reply::Frame(frame))));
    }

    /// Rooms with members, and the largest of them by distinct users.
    pub fn stats(&self) -> (usize, Vec<(Arc<str>, usize)>) {
        let mut occupied: Vec<(Arc<str>, usize)> =
            self.rooms.iter().filter(|(_, r)| !r.users.is_empty()).map(|(n, r)| (n.clone(), r.users.len())).collect();
        let count = occupied.len();
        occupied.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        occupied.truncate(TOP_ROOMS);
        (count, occupied)
    }
}

fn add_conn(room: &mut HomeRoom, shard: u16) {
    match room.conns.iter_mut().find(|(s, _)| *s == shard) {
        Some((_, n)) => *n += 1,
        None => room.conns.push((shard, 1)),
    }
    room.shards.insert(shard as usize);
}

fn remove_conn(room: &mut HomeRoom, shard: u16) {
    let Some(i) = room.conns.iter().position(|(s, _)| *s == shard) else { return };
    room.conns[i].1 -= 1;
    if room.conns[i].1 == 0 {
        room.conns.swap_remove(i);
        room.shards.remove(shard as usize);
    }
}

fn presence(room: &Arc<str>, shards: ShardSet, user: &Arc<str>, event: &'static str) -> HomeOutput {
    let frame = ServerFrame::Presence { room, user, event }.to_frame();
    let delivery =
        Delivery { room: room.clone(), frame, audience: Audience::Room, exclude: Exclude::User(user.clone()) };
    HomeOutput::History(HistoryMsg::Relay { shards, msg: Downstream::Deliver(delivery) })
}

fn relay_to(conn: ConnRef, reply: Reply) -> HomeOutput {
    HomeOutput::History(HistoryMsg::Relay {
        shards: ShardSet::one(conn.shard as usize),
        msg: Downstream::Reply(conn, reply),
    })
}

/// Online users whose home is this shard, with their connection counts across all shards.
#[derive(Default)]
pub struct OnlineUsers {
    users: HashMap<Arc<str>, u32>,
}

impl OnlineUsers {
    pub fn online(&mut self, user: Arc<str>) {
        *self.users.entry(user).or_insert(0) += 1;
    }

    pub fn offline(&mut self, user: &str) {
        if let Some(n) = self.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(user);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A shard's own connections by room (joined) and by user (authenticated): slab keys.
#[derive(Default)]
pub struct LocalIndex {
    rooms: HashMap<Arc<str>, Vec<u32>>,
    users: HashMap<Arc<str>, Vec<u32>>,
}

impl LocalIndex {
    pub fn join(&mut self, room: &Arc<str>, key: u32) {
        self.rooms.entry(room.clone()).or_default().push(key);
    }

    pub fn leave(&mut self, room: &str, key: u32) {
        remove_key(&mut self.rooms, room, key);
    }

    pub fn members(&self, room: &str) -> &[u32] {
        self.rooms.get(room).map_or(&[], |v| v.as_slice())
    }

    pub fn add_user(&mut self, user: &Arc<str>, key: u32) {
        self.users.entry(user.clone()).or_default().push(key);
    }

    pub fn remove_user(&mut self, user: &str, key: u32) {
        remove_key(&mut self.users, user, key);
    }

    pub fn user_conns(&self, user: &str) -> &[u32] {
        self.users.get(user).map_or(&[], |v| v.as_slice())
    }
}

fn remove_key(map: &mut HashMap<Arc<str>, Vec<u32>>, name: &str, key: u32) {
    if let Some(keys) = map.get_mut(name) {
        if let Some(i) = keys.iter().position(|k| *k == key) {
            keys.swap_remove(i);
        }
        if keys.is_empty() {
            map.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn conn(shard: u16, key: u32) -> ConnRef {
        ConnRef { shard, key, generation: 1 }
    }

    fn join(h: &mut HomeRooms, room: &str, user: &str, c: ConnRef, since: Option<u64>) -> Vec<HomeOutput> {
        let mut out = vec![];
        let req = JoinRequest {
            room: room.into(),
            conn: c,
            user: user.into(),
            reference: None,
            since,
            history: None,
            rejoin: false,
        };
        h.handle(HomeMsg::Join(req), 0, &mut out);
        out
    }

    fn publish(h: &mut HomeRooms, room: &str, from: &str, origin: Option<ConnRef>) -> Vec<HomeOutput> {
        let mut out = vec![];
        let p = Publish {
            room: room.into(),
            from: from.into(),
            name: None,
            origin,
            reference: Some("r1".into()),
            body: RawValue::from_string("1".into()).unwrap(),
            reply_to: None,
        };
        h.handle(HomeMsg::Publish(p), 42, &mut out);
        out
    }

    fn joined_frames(out: &[HomeOutput]) -> Vec<String> {
        out.iter()
            .find_map(|o| match o {
                HomeOutput::History(HistoryMsg::Relay {
                    msg: Downstream::Reply(_, Reply::Joined { frames, .. }),
                    ..
                }) => Some(
                    frames.iter().map(|f| String::from_utf8_lossy(&crate::ws::frame_payload(f)).into_owned()).collect(),
                ),
                _ => None,
            })
            .expect("a joined reply")
    }

    fn presence_events(out: &[HomeOutput]) -> usize {
        out.iter()
            .filter(|o| {
                matches!(o, HomeOutput::History(HistoryMsg::Relay { msg: Downstream::Deliver(d), .. })
                    if crate::ws::frame_payload(&d.frame).starts_with(br#"{"type":"presence""#))
            })
            .count()
    }

    #[test]
    fn seq_counts_up_per_room_and_members_are_distinct_users() {
        let mut h = HomeRooms::new(2, 1000);
        assert_eq!(presence_events(&join(&mut h, "r", "alice", conn(0, 1), None)), 1);
        assert_eq!(presence_events(&join(&mut h, "r", "alice", conn(1, 2), None)), 0, "second connection of alice");
        let out = join(&mut h, "r", "bob", conn(1, 3), None);
        assert!(joined_frames(&out)[0].contains(r#""members":2"#));
        for want in 1..=3 {
            let out = publish(&mut h, "r", "alice", Some(conn(0, 1)));
            let HomeOutput::History(HistoryMsg::Event { record, shards, ack, .. }) = &out[0] else { panic!() };
            assert_eq!(record.seq, want);
            assert_eq!(shards.iter().collect::<Vec<_>>(), vec![0, 1]);
            assert!(ack.is_some());
        }
        let HomeOutput::History(HistoryMsg::Event { record, .. }) = &publish(&mut h, "other", "bob", None)[0] else {
            panic!()
        };
        assert_eq!(record.seq, 1, "seq is per room");
    }

    #[test]
    fn resume_replays_exactly_the_missed_events() {
        let mut h = HomeRooms::new(1, 1000);
        join(&mut h, "r", "alice", conn(0, 1), None);
        for _ in 0..5 {
            publish(&mut h, "r", "alice", None);
        }
        let frames = joined_frames(&join(&mut h, "r", "bob", conn(0, 2), Some(2)));
        assert!(frames[0].contains(r#""seq":5"#) && !frames[0].contains("truncated"));
        let seqs: Vec<bool> = (3..=5).map(|s| frames[s - 2].contains(&format!(r#""seq":{s}"#))).collect();
        assert_eq!(frames.len(), 4);
        assert_eq!(seqs, vec![true; 3]);
        assert_eq!(joined_frames(&join(&mut h, "r", "carol", conn(0, 3), Some(5))).len(), 1);
    }

    #[test]
    fn resume_past_the_cap_is_truncated() {
        let mut h = HomeRooms::new(1, 2);
        for _ in 0..5 {
            publish(&mut h, "r", "alice", None);
        }
        let frames = joined_frames(&join(&mut h, "r", "bob", conn(0, 2), Some(0)));
        assert!(frames[0].contains(r#""truncated":true"#));
        assert_eq!(frames.len(), 3, "joined + the newest max_replay events");
        assert!(frames[2].contains(r#""seq":5"#));
    }

    #[test]
    fn leave_of_last_connection_emits_presence_and_frees_shard() {
        let mut h = HomeRooms::new(2, 10);
        join(&mut h, "r", "alice", conn(1, 1), None);
        let mut out = vec![];
        h.handle(
            HomeMsg::Leave {
                room: "r".into(),
                conn: conn(1, 1),
                user: "alice".into(),
                reply: true,
                reference: Some("x".into()),
            },
            0,
            &mut out,
        );
        assert_eq!(presence_events(&out), 1);
        let out = publish(&mut h, "r", "bob", None);
        let HomeOutput::History(HistoryMsg::Event { shards, .. }) = &out[0] else { panic!() };
        assert!(shards.is_empty());
        assert_eq!(h.stats().0, 0);
    }

    #[test]
    fn direct_rooms_reach_every_shard() {
        let mut h = HomeRooms::new(3, 10);
        let out = publish(&mut h, "dm:alice:bob", "alice", Some(conn(0, 1)));
        let HomeOutput::History(HistoryMsg::Event { shards, delivery, .. }) = &out[0] else { panic!() };
        assert_eq!(shards.iter().count(), 3);
        assert!(matches!(&delivery.audience, Audience::Users(a, b) if &**a == "alice" && &**b == "bob"));
    }

    #[test]
    fn local_index_tracks_keys() {
        let mut idx = LocalIndex::default();
        let r: Arc<str> = "r".into();
        idx.join(&r, 1);
        idx.join(&r, 2);
        idx.leave("r", 1);
        assert_eq!(idx.members("r"), &[2]);
        idx.leave("r", 2);
        assert!(idx.members("r").is_empty());
        idx.add_user(&r, 5);
        assert_eq!(idx.user_conns("r"), &[5]);
    }
}
