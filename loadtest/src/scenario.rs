//! Scenarios as data: which connection joins which room, who publishes at what rate in which step,
//! the churn cycle, and the ramp's pass/fail rule. Pure functions of the plan; no sockets, no clocks.

use serde::{Deserialize, Serialize};

use crate::metrics::{StepTally, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Idle,
    Fanout,
    Chat,
    Ramp,
    Churn,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Idle => "idle",
            Kind::Fanout => "fanout",
            Kind::Chat => "chat",
            Kind::Ramp => "ramp",
            Kind::Churn => "churn",
        }
    }
}

/// A stretch of the measured phase at one total send rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Messages per second over all publishers (0: nobody sends).
    pub rate: f64,
    pub duration_ms: u64,
}

/// Connect, authenticate, join, (hold), leave, close: at `rate` cycles per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChurnPlan {
    pub rate: f64,
    pub hold_ms: u64,
    /// Cycles in flight at most; a due cycle beyond this is skipped and counted.
    pub max_inflight: u64,
    /// Distinct users the cycles rotate through.
    pub users: u64,
}

/// Pass/fail bounds of a ramp step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RampBounds {
    /// Largest tolerated fraction of lost deliveries (0 = none).
    pub max_loss: f64,
    pub max_p99_us: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: Kind,
    /// Steady connections (0 for churn).
    pub connections: u64,
    pub rooms: u64,
    /// Publishing connections in all (spread over rooms, lowest member ranks first).
    pub publishers: u64,
    pub steps: Vec<Step>,
    pub churn: Option<ChurnPlan>,
    pub ramp: Option<RampBounds>,
    /// Padding added to each message body, in bytes.
    pub body_bytes: usize,
    pub room_prefix: String,
    pub user_prefix: String,
    pub interval_ms: u64,
}

/// 1/phi: spreads rooms' send phases evenly without coordination.
const GOLDEN: f64 = 0.618_033_988_749_894_9;

impl Plan {
    /// Room of steady connection `i`: members of a room are `r, r + R, r + 2R, ...`.
    pub fn room_of(&self, i: u64) -> u32 {
        (i % self.rooms.max(1)) as u32
    }

    /// Position of connection `i` among its room's members.
    pub fn rank_of(&self, i: u64) -> u64 {
        i / self.rooms.max(1)
    }

    pub fn room_size(&self, r: u32) -> u64 {
        let r = u64::from(r);
        let rooms = self.rooms.max(1);
        self.connections / rooms + u64::from(r < self.connections % rooms)
    }

    pub fn publishers_in_room(&self, r: u32) -> u64 {
        let rooms = self.rooms.max(1);
        let p = self.publishers / rooms + u64::from(u64::from(r) < self.publishers % rooms);
        p.min(self.room_size(r))
    }

    pub fn is_publisher(&self, i: u64) -> bool {
        self.rank_of(i) < self.publishers_in_room(self.room_of(i))
    }

    /// Every other member of the room gets each message.
    pub fn recipients(&self, r: u32) -> u64 {
        self.room_size(r).saturating_sub(1)
    }

    /// Messages per second one publisher sends during `step`.
    pub fn publisher_rate(&self, step: usize) -> f64 {
        match self.steps.get(step) {
            Some(s) if self.publishers > 0 => s.rate / self.publishers as f64,
            _ => 0.0,
        }
    }

    /// Where in its period publisher `i` sends, as a fraction: rooms are spread by the golden
    /// ratio, and a room's publishers take turns evenly (so `chat` rotates its members).
    pub fn phase(&self, i: u64) -> f64 {
        let r = self.room_of(i);
        let k = self.publishers_in_room(r).max(1);
        (f64::from(r) * GOLDEN + self.rank_of(i) as f64 / k as f64).fract()
    }

    pub fn total_ms(&self) -> u64 {
        self.steps.iter().map(|s| s.duration_ms).sum()
    }

    /// Start of step `k`, in ms from the start of the measured phase.
    pub fn step_start_ms(&self, k: usize) -> u64 {
        self.steps.iter().take(k).map(|s| s.duration_ms).sum()
    }

    /// The step a send made `offset_ns` after the start belongs to.
    pub fn step_at(&self, offset_ns: u64) -> Option<usize> {
        let mut end = 0u64;
        for (k, s) in self.steps.iter().enumerate() {
            end += s.duration_ms * 1_000_000;
            if offset_ns < end {
                return Some(k);
            }
        }
        None
    }

    /// The step a message sent `offset_ns` after the start is attributed to, by senders and
    /// receivers alike (a send that slipped past the end counts in the last step).
    pub fn step_of_send(&self, offset_ns: u64) -> usize {
        self.step_at(offset_ns).unwrap_or(self.steps.len().saturating_sub(1))
    }

    pub fn room_name(&self, r: u32) -> String {
        format!("{}{r}", self.room_prefix)
    }

    pub fn user_name(&self, i: u64) -> String {
        format!("{}{i}", self.user_prefix)
    }

    /// Total sends the plan asks for (bounded, for sanity checks and progress).
    pub fn planned_sends(&self) -> f64 {
        self.steps.iter().map(|s| s.rate * s.duration_ms as f64 / 1000.0).sum()
    }

    pub fn has_traffic(&self) -> bool {
        self.publishers > 0 && self.steps.iter().any(|s| s.rate > 0.0)
    }
}

/// How one ramp step went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepVerdict {
    pub step: usize,
    pub rate: f64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_fraction: f64,
    pub latency: Summary,
    /// Within the loss and p99 bounds.
    pub clean: bool,
    /// The run stopped before this step finished.
    pub aborted: bool,
}

/// Judges each step against the bounds; steps at or after `aborted_from` are marked aborted.
pub fn judge_steps(
    plan: &Plan,
    steps: &[StepTally],
    bounds: RampBounds,
    aborted_from: Option<usize>,
) -> Vec<StepVerdict> {
    steps
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let lost = s.expected.saturating_sub(s.received);
            let loss_fraction = if s.expected == 0 { 0.0 } else { lost as f64 / s.expected as f64 };
            let latency = s.latency.summary();
            let aborted = aborted_from.is_some_and(|a| k >= a);
            let delivered_any = s.expected > 0 || plan.recipients(0) == 0;
            let clean = !aborted
                && delivered_any
                && s.acked == s.sent
                && loss_fraction <= bounds.max_loss
                && latency.p99_us <= bounds.max_p99_us;
            StepVerdict {
                step: k,
                rate: plan.steps.get(k).map_or(0.0, |st| st.rate),
                sent: s.sent,
                expected: s.expected,
                received: s.received,
                lost,
                loss_fraction,
                latency,
                clean,
                aborted,
            }
        })
        .collect()
}

/// The last step that was clean with every step before it clean too.
pub fn last_clean_step(verdicts: &[StepVerdict]) -> Option<&StepVerdict> {
    verdicts.iter().take_while(|v| v.clean).last()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(connections: u64, rooms: u64, publishers: u64) -> Plan {
        Plan {
            kind: Kind::Fanout,
            connections,
            rooms,
            publishers,
            steps: vec![Step { rate: 100.0, duration_ms: 1000 }, Step { rate: 200.0, duration_ms: 500 }],
            churn: None,
            ramp: None,
            body_bytes: 0,
            room_prefix: "r".into(),
            user_prefix: "u".into(),
            interval_ms: 1000,
        }
    }

    #[test]
    fn rooms_members_and_publishers() {
        let p = plan(10, 3, 4);
        assert_eq!((0..3).map(|r| p.room_size(r)).collect::<Vec<_>>(), vec![4, 3, 3]);
        assert_eq!((0..3).map(|r| p.publishers_in_room(r)).collect::<Vec<_>>(), vec![2, 1, 1]);
        let pubs: Vec<u64> = (0..10).filter(|&i| p.is_publisher(i)).collect();
        assert_eq!(pubs, vec![0, 1, 2, 3], "ranks 0 everywhere, rank 1 in room 0");
        assert_eq!(p.recipients(0), 3);
        assert_eq!(p.publisher_rate(1), 50.0);
        assert_eq!(p.step_at(999_999_999), Some(0));
        assert_eq!(p.step_at(1_000_000_000), Some(1));
        assert_eq!(p.step_at(1_500_000_000), None);
        assert_eq!(p.step_start_ms(1), 1000);
        assert_eq!(p.step_of_send(1_600_000_000), 1, "a late send stays in the last step");
    }

    #[test]
    fn ramp_reports_last_clean_step() {
        let p = plan(10, 1, 1);
        let bounds = RampBounds { max_loss: 0.0, max_p99_us: 1000 };
        let mut steps = vec![StepTally::new(), StepTally::new(), StepTally::new()];
        for (k, s) in steps.iter_mut().enumerate() {
            s.sent = 10;
            s.acked = 10;
            s.expected = 90;
            s.received = if k == 2 { 89 } else { 90 };
            s.latency.record_ns(100_000);
        }
        let v = judge_steps(&p, &steps, bounds, None);
        assert!(v[0].clean && v[1].clean && !v[2].clean);
        assert_eq!(v[2].lost, 1);
        assert_eq!(last_clean_step(&v).map(|v| v.step), Some(1));
        steps[1].latency.record_ns(50_000_000);
        steps[1].latency.record_ns(50_000_000);
        let v = judge_steps(&p, &steps, bounds, None);
        assert_eq!(last_clean_step(&v).map(|v| v.step), Some(0), "p99 over the bound");
        let v = judge_steps(&p, &steps, bounds, Some(0));
        assert!(last_clean_step(&v).is_none());
    }
}
