//! What a run measured: HDR histograms (latency, ack, setup phases), counters, per-room seq tallies
//! for loss, their merge across threads and workers, and their wire form. No I/O and no policy here.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Histograms record microseconds, from 1 us to 10 minutes.
pub const HIST_MAX_US: u64 = 600_000_000;
/// Time-series buckets kept at most (one per `--interval`).
pub const MAX_INTERVALS: usize = 3600;

/// An HDR histogram of microseconds that travels as base64 of its V2 serialization.
#[derive(Clone, Debug)]
pub struct H(pub Histogram<u64>);

impl H {
    /// Three significant figures: for the main latency figures.
    pub fn fine() -> H {
        H(Histogram::new_with_bounds(1, HIST_MAX_US, 3).unwrap_or_else(|_| unreachable!("constant bounds are valid")))
    }

    /// Two significant figures: for the many per-interval histograms.
    pub fn coarse() -> H {
        H(Histogram::new_with_bounds(1, HIST_MAX_US, 2).unwrap_or_else(|_| unreachable!("constant bounds are valid")))
    }

    /// Records nanoseconds as whole microseconds (rounded up, at least 1).
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.div_ceil(1000).max(1));
    }

    pub fn merge(&mut self, other: &H) {
        // Histograms of equal or narrower range always fit; a failure would mean a foreign
        // histogram, whose values we then clamp one by one.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at `q` (0..=1) in microseconds; 0 when empty.
    pub fn q(&self, q: f64) -> u64 {
        if self.0.is_empty() { 0 } else { self.0.value_at_quantile(q) }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            min_us: if self.0.is_empty() { 0 } else { self.0.min() },
            mean_us: if self.0.is_empty() { 0.0 } else { self.0.mean() },
            p50_us: self.q(0.5),
            p90_us: self.q(0.9),
            p99_us: self.q(0.99),
            p999_us: self.q(0.999),
            max_us: if self.0.is_empty() { 0 } else { self.0.max() },
        }
    }
}

impl Serialize for H {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new().serialize(&self.0, &mut buf).map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&STANDARD.encode(buf))
    }
}

impl<'de> Deserialize<'de> for H {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<H, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        Ok(H(h))
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Loss accounting for one receiving connection: per-room `seq` must go 1, 2, 3, ... from the
/// `seq` its `joined` reported; its own acked sends count as seen (it gets no copy of those).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    next: u64,
    pub seen: u64,
    /// Seqs skipped over (missing when the tracker moved past them).
    pub gaps: u64,
    /// Seqs at or below one already passed: duplicates or reordering.
    pub backwards: u64,
}

impl SeqTracker {
    pub fn new(joined_seq: u64) -> SeqTracker {
        SeqTracker { next: joined_seq + 1, ..SeqTracker::default() }
    }

    /// Notes one seq; returns how many seqs this one revealed as missing.
    #[inline]
    pub fn observe(&mut self, seq: u64) -> u64 {
        self.seen += 1;
        if seq == self.next {
            self.next += 1;
            0
        } else if seq > self.next {
            let missing = seq - self.next;
            self.gaps += missing;
            self.next = seq + 1;
            missing
        } else {
            self.backwards += 1;
            0
        }
    }

    /// The highest seq observed (or the joined seq).
    pub fn last(&self) -> u64 {
        self.next - 1
    }
}

/// One room's seq accounting, summed over the members a thread or worker holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomTally {
    /// Members that joined and were tracked to the end.
    pub members: u64,
    /// Sum of their `joined` seqs.
    pub sum_joined: u64,
    /// Sum of the seqs they saw (messages, plus acks of their own sends).
    pub seen: u64,
    /// Highest seq anyone saw in the room.
    pub max_seq: u64,
    /// Sends of these members that were acked.
    pub acked: u64,
}

impl RoomTally {
    pub fn add_member(&mut self, joined_seq: u64, t: &SeqTracker) {
        self.members += 1;
        self.sum_joined += joined_seq;
        self.seen += t.seen;
        self.max_seq = self.max_seq.max(t.last());
    }

    pub fn merge(&mut self, o: &RoomTally) {
        self.members += o.members;
        self.sum_joined += o.sum_joined;
        self.seen += o.seen;
        self.max_seq = self.max_seq.max(o.max_seq);
        self.acked += o.acked;
    }

    /// Deliveries owed: every acked send goes to every other member that was there to the end.
    pub fn expected(&self) -> u64 {
        self.acked * self.members.saturating_sub(1)
    }

    /// Events every member should have seen by the room's final seq, minus what they saw.
    pub fn lost(&self) -> u64 {
        (self.members * self.max_seq).saturating_sub(self.sum_joined).saturating_sub(self.seen)
    }
}

macro_rules! counters {
    ($($(#[$m:meta])* $f:ident),* $(,)?) => {
        /// Event counts of a thread, worker or run.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counters { $($(#[$m])* pub $f: u64,)* }
        impl Counters {
            pub fn merge(&mut self, o: &Counters) { $(self.$f += o.$f;)* }
        }
    };
}

counters! {
    /// Steady connections attempted during setup.
    attempted,
    /// Steady connections that completed connect, upgrade, welcome and join.
    ready,
    /// Connections that failed during setup or a churn cycle (reasons in `failures`).
    failed,
    /// `send` frames written.
    sent,
    acked,
    /// Sends answered with an `error` instead of an `ack`.
    send_errors,
    /// Sends not made because the harness fell a second behind or the socket backed up.
    skipped,
    /// Deliveries expected: for every acked send, the other members of its room.
    expected,
    /// `message` frames received.
    received,
    /// Seqs found missing from seq gaps, live.
    gaps,
    /// Duplicate or reordered seqs.
    backwards,
    /// Text frames the harness did not expect (other types, unparsable).
    unexpected,
    /// Ready connections that the server closed or reset during the run.
    dropped,
    /// Server pings answered.
    pings,
    /// Churn cycles begun and completed.
    cycles_started,
    cycles_done,
}

/// One step of the send schedule (ramp has several; others one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepTally {
    pub sent: u64,
    pub acked: u64,
    pub expected: u64,
    pub received: u64,
    pub latency: H,
}

impl StepTally {
    pub fn new() -> StepTally {
        StepTally { sent: 0, acked: 0, expected: 0, received: 0, latency: H::fine() }
    }

    pub fn merge(&mut self, o: &StepTally) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.expected += o.expected;
        self.received += o.received;
        self.latency.merge(&o.latency);
    }
}

impl Default for StepTally {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything one event loop measured; merged into one per worker, then one per run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    /// TCP connect, from `connect()` to writable.
    pub connect: H,
    /// From the upgrade request to the 101 response (auth happens here).
    pub upgrade: H,
    /// From the 101 to the `welcome` frame (or `authenticated`, with first-frame auth).
    pub welcome: H,
    pub join: H,
    pub leave: H,
    /// A whole churn cycle, connect to close.
    pub cycle: H,
    /// End to end: the sender's `body.t` to receipt.
    pub latency: H,
    pub ack: H,
    /// How late the harness wrote each send against its schedule (harness health).
    pub send_lag: H,
    /// Delivery latency by the interval its message was sent in.
    pub intervals: Vec<H>,
    pub steps: Vec<StepTally>,
    pub c: Counters,
    pub failures: BTreeMap<String, u64>,
    /// `error` frames by code.
    pub server_errors: BTreeMap<String, u64>,
    /// Close frames from the server by code.
    pub closes: BTreeMap<u16, u64>,
    pub rooms: BTreeMap<u32, RoomTally>,
}

impl Metrics {
    pub fn new(steps: usize) -> Metrics {
        Metrics {
            connect: H::fine(),
            upgrade: H::fine(),
            welcome: H::fine(),
            join: H::fine(),
            leave: H::fine(),
            cycle: H::fine(),
            latency: H::fine(),
            ack: H::fine(),
            send_lag: H::fine(),
            intervals: Vec::new(),
            steps: (0..steps).map(|_| StepTally::new()).collect(),
            c: Counters::default(),
            failures: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            closes: BTreeMap::new(),
            rooms: BTreeMap::new(),
        }
    }

    /// Records one delivery's latency into the totals, its interval and its step.
    #[inline]
    pub fn record_delivery(&mut self, latency_ns: u64, interval: usize, step: Option<usize>) {
        self.latency.record_ns(latency_ns);
        if interval < MAX_INTERVALS {
            if self.intervals.len() <= interval {
                self.intervals.resize_with(interval + 1, H::coarse);
            }
            self.intervals[interval].record_ns(latency_ns);
        }
        if let Some(s) = step.and_then(|s| self.steps.get_mut(s)) {
            s.received += 1;
            s.latency.record_ns(latency_ns);
        }
    }

    pub fn fail(&mut self, reason: impl fmt::Display) {
        self.c.failed += 1;
        *self.failures.entry(reason.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Metrics) {
        for (a, b) in [
            (&mut self.connect, &o.connect),
            (&mut self.upgrade, &o.upgrade),
            (&mut self.welcome, &o.welcome),
            (&mut self.join, &o.join),
            (&mut self.leave, &o.leave),
            (&mut self.cycle, &o.cycle),
            (&mut self.latency, &o.latency),
            (&mut self.ack, &o.ack),
            (&mut self.send_lag, &o.send_lag),
        ] {
            a.merge(b);
        }
        if self.intervals.len() < o.intervals.len() {
            self.intervals.resize_with(o.intervals.len(), H::coarse);
        }
        for (a, b) in self.intervals.iter_mut().zip(&o.intervals) {
            a.merge(b);
        }
        if self.steps.len() < o.steps.len() {
            self.steps.resize_with(o.steps.len(), StepTally::new);
        }
        for (a, b) in self.steps.iter_mut().zip(&o.steps) {
            a.merge(b);
        }
        self.c.merge(&o.c);
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.server_errors {
            *self.server_errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.closes {
            *self.closes.entry(*k).or_default() += v;
        }
        for (k, v) in &o.rooms {
            self.rooms.entry(*k).or_default().merge(v);
        }
    }

    /// Loss by the final-seq method, summed over rooms.
    pub fn lost_by_seq(&self) -> u64 {
        self.rooms.values().map(RoomTally::lost).sum()
    }

    /// Deliveries owed to the members that stayed, from acked sends per room.
    pub fn expected_by_room(&self) -> u64 {
        self.rooms.values().map(RoomTally::expected).sum()
    }

    /// Loss by the expected-count method: owed deliveries that never arrived.
    pub fn lost_by_count(&self) -> u64 {
        let expected = if self.rooms.is_empty() { self.c.expected } else { self.expected_by_room() };
        expected.saturating_sub(self.c.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_gaps_are_counted_per_receiver() {
        let mut t = SeqTracker::new(10);
        assert_eq!(t.observe(11), 0);
        assert_eq!(t.observe(12), 0);
        assert_eq!(t.observe(15), 2, "13 and 14 missing");
        assert_eq!(t.observe(16), 0);
        assert_eq!(t.observe(16), 0);
        assert_eq!((t.seen, t.gaps, t.backwards, t.last()), (5, 2, 1, 16));
    }

    #[test]
    fn room_tally_finds_tail_loss_that_gaps_cannot_see() {
        // Two members joined at seq 0 and 3. Member a saw 1..=10; b saw 4..=8 (lost 9 and 10 at
        // the tail, no gap visible to it).
        let mut a = SeqTracker::new(0);
        (1..=10).for_each(|s| {
            a.observe(s);
        });
        let mut b = SeqTracker::new(3);
        (4..=8).for_each(|s| {
            b.observe(s);
        });
        assert_eq!(b.gaps, 0);
        let mut ta = RoomTally::default();
        ta.add_member(0, &a);
        let mut tb = RoomTally::default();
        tb.add_member(3, &b);
        // Merged from two workers, the room's final seq is 10.
        ta.merge(&tb);
        assert_eq!(ta.max_seq, 10);
        assert_eq!(ta.lost(), 2);
        let mut clean = RoomTally::default();
        clean.add_member(0, &a);
        assert_eq!(clean.lost(), 0);
    }

    #[test]
    fn histograms_merge_across_the_wire() {
        let mut a = Metrics::new(2);
        let mut b = Metrics::new(2);
        for i in 1..=1000u64 {
            a.record_delivery(i * 1000, 0, Some(0));
            b.record_delivery(i * 1_000_000, 3, Some(1));
        }
        a.c.expected = 2000;
        a.c.received = 1000;
        b.c.received = 999;
        a.rooms.entry(1).or_default().members = 1;
        b.rooms.entry(1).or_default().members = 2;
        a.rooms.entry(1).or_default().acked = 1000;
        // Through JSON, as workers send them.
        let b: Metrics = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let mut direct = a.latency.clone();
        direct.merge(&b.latency);
        a.merge(&b);
        assert_eq!(a.latency.count(), 2000);
        assert_eq!(a.latency.0, direct.0);
        assert_eq!(a.latency.q(0.25), a.latency.0.value_at_quantile(0.25));
        assert!((a.latency.q(0.5) as i64 - 1000).abs() <= 1, "median is the top of the fast half");
        assert!(a.latency.q(1.0) >= 999_000);
        assert_eq!(a.intervals.len(), 4);
        assert_eq!(a.intervals[3].count(), 1000);
        assert_eq!(a.steps[1].received, 1000);
        assert_eq!(a.c.received, 1999);
        assert_eq!(a.lost_by_count(), 1);
        assert_eq!(a.rooms[&1].members, 3);
    }
}
