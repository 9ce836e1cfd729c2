//! Room state. [`HomeRooms`]: on a room's home shard, the one place its `seq`, membership and
//! presence are decided; [`LocalIndex`]: on every shard, which of its own connections are in which
//! room and belong to which user. Pure state and decisions: no sockets, no clocks except `ts` given in.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::bus::{
    Audience, ConnRef, Delivery, Downstream, EventKind, EventRecord, Exclude, HistoryMsg, HomeMsg, JoinAnswer,
    JoinRequest, Mutation, MutationOp, Origin, Publish, ReplayMode, Reply, RoomDetail, RoomSummary, ShardSet,
    TargetInfo,
};
use crate::names::{RoomKind, room_kind};
use crate::protocol::{ErrorCode, ServerFrame};

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
    /// Distinct users in the room and how many of their connections joined.
    users: HashMap<Arc<str>, u32>,
    /// Edits, deletes and reactions wait here, one at a time, for the stored state of their
    /// target; taking them in turn means each is checked against every earlier one.
    mutations: VecDeque<Mutation>,
    lookup_pending: bool,
}

impl HomeRoom {
    /// The shards with members: where the room's events go.
    fn shards(&self) -> ShardSet {
        let mut set = ShardSet::default();
        for (shard, _) in &self.conns {
            set.insert(*shard as usize);
        }
        set
    }
}

/// The rooms whose home is this shard.
pub struct HomeRooms {
    rooms: HashMap<Arc<str>, HomeRoom>,
    shard_index: usize,
    shard_count: usize,
    max_replay: usize,
}

impl HomeRooms {
    /// `seqs`: each room's last stored seq, so numbering continues after a restart.
    pub fn new(shard_index: usize, shard_count: usize, max_replay: usize, seqs: HashMap<Arc<str>, u64>) -> HomeRooms {
        let rooms = seqs.into_iter().map(|(name, seq)| (name, HomeRoom { seq, ..HomeRoom::default() })).collect();
        HomeRooms { rooms, shard_index, shard_count, max_replay }
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
            HomeMsg::Mutate(m) => self.mutate(m, out),
            HomeMsg::Typing { room, user, active } => self.typing(&room, user, active, out),
            HomeMsg::PresenceQuery { room, conn, reference } => self.presence_list(&room, conn, reference, out),
        }
    }

    fn join(&mut self, req: JoinRequest, out: &mut Vec<HomeOutput>) {
        let room = self.rooms.entry(req.room.clone()).or_default();
        if !req.rejoin {
            add_conn(room, req.conn.shard);
            let count = room.users.entry(req.user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                out.push(presence(&req.room, room.shards(), &req.user, "join"));
            }
        }
        let replay = match (req.since, req.history) {
            (Some(since), _) => Some(ReplayMode::Since { since, max: self.max_replay }),
            (None, Some(n)) if n > 0 => Some(ReplayMode::Last(n)),
            _ => None,
        };
        let answer = JoinAnswer {
            conn: req.conn,
            room: req.room,
            reference: req.reference,
            seq: room.seq,
            members: room.users.len(),
            replay,
        };
        out.push(HomeOutput::History(HistoryMsg::Join(answer)));
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
                    out.push(presence(name, room.shards(), user, "leave"));
                }
            }
        }
        if let Some(reference) = reply {
            let left = ServerFrame::Left { reference: reference.as_deref(), room: name }.to_frame();
            out.push(HomeOutput::History(HistoryMsg::Relay {
                shards: ShardSet::one(conn.shard as usize),
                msg: Downstream::Reply(conn, Reply::Frame(left)),
            }));
        }
    }

    fn publish(&mut self, p: Publish, ts: u64, out: &mut Vec<HomeOutput>) {
        let kind = EventKind::Message { name: p.name, body: p.body, reply_to: p.reply_to };
        self.emit(p.room, p.from, ts, kind, p.origin, out);
    }

    /// Assigns the next seq to an event and sends it to be stored, then delivered and acked.
    fn emit(
        &mut self,
        name: Arc<str>,
        from: Arc<str>,
        ts: u64,
        kind: EventKind,
        origin: Origin,
        out: &mut Vec<HomeOutput>,
    ) {
        let room = self.rooms.entry(name.clone()).or_default();
        room.seq += 1;
        let seq = room.seq;
        let frame = event_frame(&name, seq, &from, ts, &kind);
        let (audience, shards) = match room_kind(&name) {
            RoomKind::Direct(a, b) => (Audience::Users(a.into(), b.into()), ShardSet::all(self.shard_count)),
            _ => (Audience::Room, room.shards()),
        };
        let exclude = match &origin {
            Origin::Conn(c, _) => Exclude::Conn(*c),
            Origin::Admin(_) => Exclude::Nobody,
        };
        let delivery = Delivery { room: name.clone(), frame: frame.clone(), audience, exclude };
        let record = EventRecord { room: name, seq, ts, from, kind, frame };
        out.push(HomeOutput::History(HistoryMsg::Event { record, delivery, shards, origin }));
    }

    fn mutate(&mut self, m: Mutation, out: &mut Vec<HomeOutput>) {
        let room = self.rooms.entry(m.room.clone()).or_default();
        if m.target == 0 || m.target > room.seq {
            out.push(error_to(m.origin, m.reference.as_deref(), ErrorCode::NotFound, "no such message"));
            return;
        }
        room.mutations.push_back(m);
        if !room.lookup_pending {
            request_lookup(room, self.shard_index, out);
        }
    }

    /// The stored state of a mutation's target arrived: check permission, then emit or refuse.
    pub fn looked(
        &mut self,
        name: &Arc<str>,
        info: Result<Option<TargetInfo>, ()>,
        now_ms: u64,
        out: &mut Vec<HomeOutput>,
    ) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        room.lookup_pending = false;
        let Some(m) = room.mutations.pop_front() else { return };
        match check_mutation(&m, info) {
            Err((code, message)) => out.push(error_to(m.origin, m.reference.as_deref(), code, message)),
            Ok(()) => {
                let kind = match m.op {
                    MutationOp::Edit(body) => EventKind::Edited { target: m.target, body },
                    MutationOp::Delete => EventKind::Deleted { target: m.target },
                    MutationOp::React { emoji, add } => EventKind::Reaction { target: m.target, emoji, add },
                };
                self.emit(m.room, m.from, now_ms, kind, Origin::Conn(m.origin, m.reference), out);
            }
        }
        if let Some(room) = self.rooms.get_mut(name) {
            request_lookup(room, self.shard_index, out);
        }
    }

    /// Storing failed: seqs after `last_seq` were never stored and will be assigned again.
    pub fn rollback(&mut self, name: &str, last_seq: u64) {
        if let Some(room) = self.rooms.get_mut(name)
            && room.seq > last_seq
        {
            log::warn!("room {name}: seqs after {last_seq} were not stored; continuing from there");
            room.seq = last_seq;
        }
    }

    fn typing(&self, name: &Arc<str>, user: Arc<str>, active: bool, out: &mut Vec<HomeOutput>) {
        let Some(room) = self.rooms.get(name) else { return };
        let frame = ServerFrame::Typing { room: name, user: &user, active }.to_frame();
        let delivery = Delivery { room: name.clone(), frame, audience: Audience::Room, exclude: Exclude::User(user) };
        for shard in room.shards().iter() {
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

    /// Rooms homed here whose name starts with `prefix`, by name.
    pub fn summaries(&self, prefix: &str) -> Vec<RoomSummary> {
        let mut rooms: Vec<RoomSummary> =
            self.rooms.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(n, r)| summary(n, r)).collect();
        rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    pub fn detail(&self, name: &str) -> Option<RoomDetail> {
        let (name, room) = self.rooms.get_key_value(name)?;
        let mut users: Vec<Arc<str>> = room.users.keys().cloned().collect();
        users.sort_unstable();
        Some(RoomDetail { summary: summary(name, room), users })
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

fn summary(name: &Arc<str>, room: &HomeRoom) -> RoomSummary {
    let connections = room.conns.iter().map(|(_, n)| u64::from(*n)).sum();
    RoomSummary { name: name.clone(), members: room.users.len(), connections, seq: room.seq }
}

/// Asks the history stage for the stored state of the next waiting mutation's target.
fn request_lookup(room: &mut HomeRoom, home: usize, out: &mut Vec<HomeOutput>) {
    let Some(m) = room.mutations.front() else { return };
    room.lookup_pending = true;
    out.push(HomeOutput::History(HistoryMsg::Lookup { room: m.room.clone(), target: m.target, home: home as u16 }));
}

/// The contract's rules: edit by the author only, delete by the author or an admin,
/// and nothing on a message that does not exist or was deleted.
fn check_mutation(m: &Mutation, info: Result<Option<TargetInfo>, ()>) -> Result<(), (ErrorCode, &'static str)> {
    let target = match info {
        Err(()) => return Err((ErrorCode::Internal, "could not read the target message; retry")),
        Ok(None) => return Err((ErrorCode::NotFound, "no such message")),
        Ok(Some(t)) if t.deleted => return Err((ErrorCode::NotFound, "that message was deleted")),
        Ok(Some(t)) => t,
    };
    let own = *target.author == *m.from;
    match m.op {
        MutationOp::Edit(_) if !own => Err((ErrorCode::Forbidden, "only the author may edit a message")),
        MutationOp::Delete if !own && !m.admin => {
            Err((ErrorCode::Forbidden, "only the author or an admin may delete a message"))
        }
        _ => Ok(()),
    }
}

/// The frame every member gets for a room event (and what history stores and replays).
pub fn event_frame(room: &str, seq: u64, from: &str, ts: u64, kind: &EventKind) -> bytes::Bytes {
    match kind {
        EventKind::Message { name, body, reply_to } => {
            ServerFrame::Message { room, seq, from, name: name.as_deref(), body, reply_to: *reply_to, ts }
        }
        EventKind::Edited { target, body } => ServerFrame::Edited { room, seq, target: *target, from, body, ts },
        EventKind::Deleted { target } => ServerFrame::Deleted { room, seq, target: *target, from, ts },
        EventKind::Reaction { target, emoji, add } => ServerFrame::Reaction {
            room,
            seq,
            target: *target,
            from,
            emoji,
            op: if *add { "add" } else { "remove" },
            ts,
        },
    }
    .to_frame()
}

fn error_to(conn: ConnRef, reference: Option<&str>, code: ErrorCode, message: &str) -> HomeOutput {
    let frame = ServerFrame::Error { reference, code, message }.to_frame();
    HomeOutput::Shard(conn.shard as usize, Downstream::Reply(conn, Reply::Frame(frame)))
}

fn add_conn(room: &mut HomeRoom, shard: u16) {
    match room.conns.iter_mut().find(|(s, _)| *s == shard) {
        Some((_, n)) => *n += 1,
        None => room.conns.push((shard, 1)),
    }
}

fn remove_conn(room: &mut HomeRoom, shard: u16) {
    let Some(i) = room.conns.iter().position(|(s, _)| *s == shard) else { return };
    room.conns[i].1 -= 1;
    if room.conns[i].1 == 0 {
        room.conns.swap_remove(i);
    }
}

fn presence(room: &Arc<str>, shards: ShardSet, user: &Arc<str>, event: &'static str) -> HomeOutput {
    let frame = ServerFrame::Presence { room, user, event }.to_frame();
    let delivery =
        Delivery { room: room.clone(), frame, audience: Audience::Room, exclude: Exclude::User(user.clone()) };
    HomeOutput::History(HistoryMsg::Relay { shards, msg: Downstream::Deliver(delivery) })
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

/// A shard's own connections by room (joined, or waiting for a replay) and by user
/// (authenticated): slab keys.
#[derive(Default)]
pub struct LocalIndex {
    rooms: HashMap<Arc<str>, Vec<u32>>,
    replaying: HashMap<Arc<str>, Vec<u32>>,
    users: HashMap<Arc<str>, Vec<u32>>,
}

impl LocalIndex {
    pub fn start_replay(&mut self, room: &Arc<str>, key: u32) {
        self.replaying.entry(room.clone()).or_default().push(key);
    }

    pub fn end_replay(&mut self, room: &str, key: u32) {
        remove_key(&mut self.replaying, room, key);
    }

    /// Connections whose join waits for its replay: room events are held for them.
    pub fn replaying(&self, room: &str) -> &[u32] {
        self.replaying.get(room).map_or(&[], |v| v.as_slice())
    }

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
            origin: origin.map_or(Origin::Admin(0), |c| Origin::Conn(c, Some("r1".into()))),
            body: RawValue::from_string("1".into()).unwrap(),
            reply_to: None,
        };
        h.handle(HomeMsg::Publish(p), 42, &mut out);
        out
    }

    fn answer(out: &[HomeOutput]) -> &JoinAnswer {
        out.iter()
            .find_map(|o| match o {
                HomeOutput::History(HistoryMsg::Join(a)) => Some(a),
                _ => None,
            })
            .expect("a join answer")
    }

    fn event_seq(out: &[HomeOutput]) -> u64 {
        match out.last() {
            Some(HomeOutput::History(HistoryMsg::Event { record, .. })) => record.seq,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn presence_events(out: &[HomeOutput]) -> usize {
        out.iter()
            .filter(|o| {
                matches!(o, HomeOutput::History(HistoryMsg::Relay { msg: Downstream::Deliver(d), .. })
                    if crate::ws::frame_payload(&d.frame).starts_with(br#"{"type":"presence""#))
            })
            .count()
    }

    fn mutation(target: u64, from: &str, op: MutationOp) -> HomeMsg {
        HomeMsg::Mutate(Mutation {
            room: "r".into(),
            from: from.into(),
            admin: false,
            origin: conn(0, 9),
            reference: None,
            target,
            op,
        })
    }

    fn error_code(out: &[HomeOutput]) -> Option<String> {
        out.iter().find_map(|o| match o {
            HomeOutput::Shard(_, Downstream::Reply(_, Reply::Frame(f))) => {
                let v: serde_json::Value = serde_json::from_slice(&crate::ws::frame_payload(f)).ok()?;
                v["code"].as_str().map(String::from)
            }
            _ => None,
        })
    }

    #[test]
    fn seq_counts_up_per_room_and_continues_from_stored_seqs() {
        let seqs = HashMap::from([(Arc::from("old"), 41)]);
        let mut h = HomeRooms::new(0, 2, 1000, seqs);
        assert_eq!(presence_events(&join(&mut h, "r", "alice", conn(0, 1), None)), 1);
        assert_eq!(presence_events(&join(&mut h, "r", "alice", conn(1, 2), None)), 0, "second connection of alice");
        assert_eq!(answer(&join(&mut h, "r", "bob", conn(1, 3), None)).members, 2);
        for want in 1..=3 {
            let out = publish(&mut h, "r", "alice", Some(conn(0, 1)));
            assert_eq!(event_seq(&out), want);
            let HomeOutput::History(HistoryMsg::Event { shards, origin, .. }) = &out[0] else { panic!() };
            assert_eq!(shards.iter().collect::<Vec<_>>(), vec![0, 1]);
            assert!(matches!(origin, Origin::Conn(..)));
        }
        assert_eq!(event_seq(&publish(&mut h, "old", "bob", None)), 42, "continues after a restart");
    }

    #[test]
    fn join_answers_carry_the_join_point_and_the_replay_asked_for() {
        let mut h = HomeRooms::new(0, 1, 7, HashMap::new());
        for _ in 0..5 {
            publish(&mut h, "r", "alice", None);
        }
        let out = join(&mut h, "r", "bob", conn(0, 2), Some(2));
        assert_eq!(answer(&out).seq, 5);
        assert_eq!(answer(&out).replay, Some(ReplayMode::Since { since: 2, max: 7 }));
        assert_eq!(answer(&join(&mut h, "r", "carol", conn(0, 3), None)).replay, None);
    }

    #[test]
    fn leave_of_last_connection_emits_presence_and_frees_shard() {
        let mut h = HomeRooms::new(0, 2, 10, HashMap::new());
        join(&mut h, "r", "alice", conn(1, 1), None);
        let mut out = vec![];
        let leave =
            HomeMsg::Leave { room: "r".into(), conn: conn(1, 1), user: "alice".into(), reply: true, reference: None };
        h.handle(leave, 0, &mut out);
        assert_eq!(presence_events(&out), 1);
        let out = publish(&mut h, "r", "bob", None);
        let HomeOutput::History(HistoryMsg::Event { shards, .. }) = &out[0] else { panic!() };
        assert!(shards.is_empty());
        assert_eq!(h.stats().0, 0);
    }

    #[test]
    fn direct_rooms_reach_every_shard() {
        let mut h = HomeRooms::new(0, 3, 10, HashMap::new());
        let out = publish(&mut h, "dm:alice:bob", "alice", Some(conn(0, 1)));
        let HomeOutput::History(HistoryMsg::Event { shards, delivery, .. }) = &out[0] else { panic!() };
        assert_eq!(shards.iter().count(), 3);
        assert!(matches!(&delivery.audience, Audience::Users(a, b) if &**a == "alice" && &**b == "bob"));
    }

    #[test]
    fn mutations_wait_for_lookups_one_at_a_time_and_follow_the_rules() {
        let mut h = HomeRooms::new(0, 1, 10, HashMap::new());
        publish(&mut h, "r", "alice", None);
        let mut out = vec![];
        h.handle(mutation(5, "alice", MutationOp::Delete), 0, &mut out);
        assert_eq!(error_code(&out).as_deref(), Some("not_found"), "beyond the last seq");
        out.clear();
        h.handle(mutation(1, "bob", MutationOp::Edit(RawValue::from_string("2".into()).unwrap())), 0, &mut out);
        h.handle(mutation(1, "alice", MutationOp::Delete), 0, &mut out);
        let lookups = out.iter().filter(|o| matches!(o, HomeOutput::History(HistoryMsg::Lookup { .. }))).count();
        assert_eq!(lookups, 1, "the second mutation waits for the first");
        let room: Arc<str> = "r".into();
        let alice = TargetInfo { author: "alice".into(), deleted: false };
        out.clear();
        h.looked(&room, Ok(Some(alice.clone())), 0, &mut out);
        assert_eq!(error_code(&out).as_deref(), Some("forbidden"), "bob may not edit alice's message");
        assert!(matches!(out.last(), Some(HomeOutput::History(HistoryMsg::Lookup { target: 1, .. }))));
        out.clear();
        h.looked(&room, Ok(Some(alice)), 0, &mut out);
        assert_eq!(event_seq(&out), 2, "alice deletes her own message");
        out.clear();
        h.handle(mutation(1, "carol", MutationOp::React { emoji: "x".into(), add: true }), 0, &mut out);
        out.clear();
        h.looked(&room, Ok(Some(TargetInfo { author: "alice".into(), deleted: true })), 0, &mut out);
        assert_eq!(error_code(&out).as_deref(), Some("not_found"), "no reactions on deleted messages");
    }

    #[test]
    fn rollback_reissues_seqs_that_were_not_stored() {
        let mut h = HomeRooms::new(0, 1, 10, HashMap::new());
        for _ in 0..3 {
            publish(&mut h, "r", "a", None);
        }
        h.rollback("r", 1);
        assert_eq!(event_seq(&publish(&mut h, "r", "a", None)), 2);
        h.rollback("r", 5);
        assert_eq!(event_seq(&publish(&mut h, "r", "a", None)), 3, "never moves forward");
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
        idx.start_replay(&r, 3);
        assert_eq!(idx.replaying("r"), &[3]);
        idx.end_replay("r", 3);
        assert!(idx.replaying("r").is_empty());
        idx.add_user(&r, 5);
        assert_eq!(idx.user_conns("r"), &[5]);
    }
}
