//! A shard's clock and its hashed timing wheel: one wheel per shard drives every handshake,
//! auth, heartbeat and close deadline. It stores (slot, generation) pairs only; it never touches a connection.

use std::time::{Duration, Instant};

/// Milliseconds since the shard started: 8 bytes per stored time instead of an `Instant`'s 16.
pub type Millis = u64;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    pub fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Wall-clock milliseconds since the Unix epoch, for the contract's `ts` fields.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A scheduled wake-up of the connection in slab slot `key` with generation `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerEntry {
    pub key: u32,
    pub generation: u32,
    /// The wheel tick this entry was scheduled for; a connection ignores entries whose tick
    /// is not its latest one, so rescheduling never needs to find and remove the old entry.
    pub tick: u64,
}

const SLOTS: usize = 512;
pub const TICK_MS: Millis = 50;

pub struct Wheel {
    slots: Vec<Vec<TimerEntry>>,
    /// The last tick whose slot has been processed.
    current: u64,
    len: usize,
}

impl Wheel {
    pub fn new(now: Millis) -> Wheel {
        Wheel { slots: (0..SLOTS).map(|_| Vec::new()).collect(), current: now / TICK_MS, len: 0 }
    }

    /// Schedules a wake-up at or shortly after `at`; returns the tick to remember.
    pub fn schedule(&mut self, key: u32, generation: u32, at: Millis) -> u64 {
        let tick = at.div_ceil(TICK_MS).max(self.current + 1);
        self.slots[(tick % SLOTS as u64) as usize].push(TimerEntry { key, generation, tick });
        self.len += 1;
        tick
    }

    /// Moves every entry due at `now` into `due`.
    pub fn expire(&mut self, now: Millis, due: &mut Vec<TimerEntry>) {
        let target = now / TICK_MS;
        // After a long stall, one pass over every slot finds everything that is due.
        let first = self.current.max(target.saturating_sub(SLOTS as u64)) + 1;
        for tick in first..=target {
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            let before = slot.len();
            slot.retain(|e| {
                if e.tick <= target {
                    due.push(*e);
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
        }
        self.current = self.current.max(target);
    }

    /// How long the shard may sleep before the next tick that could hold a due entry.
    pub fn next_timeout(&self, now: Millis) -> Option<Duration> {
        (self.len > 0).then(|| {
            let next = (self.current + 1) * TICK_MS;
            Duration::from_millis(next.saturating_sub(now))
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[TimerEntry]) -> Vec<u32> {
        let mut k: Vec<u32> = v.iter().map(|e| e.key).collect();
        k.sort();
        k
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = Wheel::new(0);
        w.schedule(1, 0, 120);
        w.schedule(2, 0, 1000);
        let mut due = vec![];
        w.expire(100, &mut due);
        assert!(due.is_empty());
        w.expire(150, &mut due);
        assert_eq!(keys(&due), vec![1]);
        due.clear();
        w.expire(999, &mut due);
        assert!(due.is_empty());
        w.expire(1000, &mut due);
        assert_eq!(keys(&due), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn entries_a_lap_away_wait_for_their_lap() {
        let mut w = Wheel::new(0);
        let far = SLOTS as u64 * TICK_MS + 3 * TICK_MS;
        w.schedule(7, 0, far);
        let mut due = vec![];
        w.expire(4 * TICK_MS, &mut due);
        assert!(due.is_empty(), "same slot, later lap");
        w.expire(far, &mut due);
        assert_eq!(keys(&due), vec![7]);
    }

    #[test]
    fn long_stall_collects_everything_due() {
        let mut w = Wheel::new(0);
        for k in 0..50u32 {
            w.schedule(k, 0, k as u64 * 997);
        }
        let mut due = vec![];
        w.expire(10 * SLOTS as u64 * TICK_MS, &mut due);
        assert_eq!(due.len(), 50);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn past_deadlines_fire_on_next_tick_and_timeout_is_bounded() {
        let mut w = Wheel::new(1000);
        assert_eq!(w.next_timeout(1000), None);
        w.schedule(1, 0, 10);
        assert!(w.next_timeout(1000).unwrap() <= Duration::from_millis(TICK_MS));
        let mut due = vec![];
        w.expire(1000 + TICK_MS, &mut due);
        assert_eq!(keys(&due), vec![1]);
    }
}
