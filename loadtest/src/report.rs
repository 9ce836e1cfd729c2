//! The run's findings: a `Report` built from merged metrics and server samples, printed as a table, JSON
//! or side by side for `compare`; it computes and formats, and writes only to the writer it is given.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, Summary};
use crate::scenario::{Kind, Plan, StepVerdict, last_clean_step};
use crate::server::{ProcSample, ServerExit};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Connections {
    pub attempted: u64,
    pub ready: u64,
    pub failed: u64,
    /// Ready connections lost during the run.
    pub dropped: u64,
    pub failures: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Setup {
    pub connect: Summary,
    /// Upgrade request to 101 (token checked here).
    pub upgrade: Summary,
    pub welcome: Summary,
    pub join: Summary,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub sent: u64,
    pub acked: u64,
    pub send_errors: u64,
    pub skipped: u64,
    pub expected: u64,
    pub received: u64,
    /// Owed deliveries that never arrived (expected-count method).
    pub lost: u64,
    /// Missing events by each member's final seq (seq method, catches tail loss).
    pub lost_by_seq: u64,
    /// Seqs seen missing live, from gaps.
    pub gaps: u64,
    pub duplicates_or_reordered: u64,
    pub unexpected_frames: u64,
    pub deliveries_per_s: f64,
    pub sends_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Churn {
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub per_s: f64,
    pub cycle: Summary,
    pub leave: Summary,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerCost {
    pub pid: u32,
    pub before_connect: Option<ProcSample>,
    pub ready: Option<ProcSample>,
    pub end: Option<ProcSample>,
    /// CPU time over the measured phase (go to end of drain).
    pub cpu_us: u64,
    pub cpu_percent: f64,
    pub cpu_us_per_delivery: Option<f64>,
    pub cpu_us_per_cycle: Option<f64>,
    pub rss_per_connection_kib: Option<f64>,
    pub exit: Option<ServerExit>,
}

/// What the harness itself spent, to tell its limits from the server's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Harness {
    pub cpu_us: u64,
    pub cpu_percent: f64,
    pub cpu_us_per_delivery: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimePoint {
    /// Seconds from the start of the measured phase (by send time).
    pub t_s: f64,
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// Unix seconds when the run started.
    pub started_unix: u64,
    pub scenario: Kind,
    /// What was tested: "roomcast", "baseline", or the target address.
    pub label: String,
    pub target: String,
    pub workers: u32,
    pub threads: u32,
    pub plan: Plan,
    /// Seconds of the measured phase that ran (to the last send), and of draining after it.
    pub measured_s: f64,
    pub drain_s: f64,
    pub connections: Connections,
    pub setup: Setup,
    pub traffic: Traffic,
    pub latency: Summary,
    pub ack: Summary,
    /// How late the harness sent against its schedule: large values mean the harness, not the
    /// server, was the bottleneck.
    pub send_lag: Summary,
    pub churn: Option<Churn>,
    pub server: Option<ServerCost>,
    pub harness: Harness,
    pub server_errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<u16, u64>,
    pub steps: Vec<StepVerdict>,
    /// Ramp: the highest rate whose step (and every step before it) was clean.
    pub last_clean_rate: Option<f64>,
    pub timeline: Vec<TimePoint>,
    /// (latency in us, fraction of deliveries at or below it).
    pub cdf: Vec<(u64, f64)>,
    pub notes: Vec<String>,
    /// No loss, no failed or dropped connections, no send errors, and the server survived.
    pub clean: bool,
}

/// What the orchestrator hands over besides the merged metrics.
pub struct RunFacts {
    pub label: String,
    pub target: String,
    pub workers: u32,
    pub threads: u32,
    pub started_unix: u64,
    pub setup_s: f64,
    pub measured_s: f64,
    pub drain_s: f64,
    pub pid: Option<u32>,
    pub samples: [Option<ProcSample>; 3],
    /// CPU time the worker processes used over the measured phase and drain.
    pub harness_cpu_us: u64,
    pub exit: Option<ServerExit>,
    pub steps: Vec<StepVerdict>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn build(plan: &Plan, m: &Metrics, facts: RunFacts) -> Report {
        let window_s = (facts.measured_s + facts.drain_s).max(1e-9);
        let expected = if m.rooms.is_empty() { m.c.expected } else { m.expected_by_room() };
        let traffic = Traffic {
            sent: m.c.sent,
            acked: m.c.acked,
            send_errors: m.c.send_errors,
            skipped: m.c.skipped,
            expected,
            received: m.c.received,
            lost: m.lost_by_count(),
            lost_by_seq: m.lost_by_seq(),
            gaps: m.c.gaps,
            duplicates_or_reordered: m.c.backwards,
            unexpected_frames: m.c.unexpected,
            deliveries_per_s: m.c.received as f64 / facts.measured_s.max(1e-9),
            sends_per_s: m.c.sent as f64 / facts.measured_s.max(1e-9),
        };
        let churn = plan.churn.map(|_| Churn {
            started: m.c.cycles_started,
            completed: m.c.cycles_done,
            failed: m.c.failed,
            skipped: m.c.skipped,
            per_s: m.c.cycles_done as f64 / facts.measured_s.max(1e-9),
            cycle: m.cycle.summary(),
            leave: m.leave.summary(),
        });
        let mut notes = facts.notes;
        let server = facts.pid.map(|pid| {
            let [s0, s1, s2] = facts.samples;
            let cpu_us = match (s1, s2) {
                (Some(a), Some(b)) => b.cpu_us.saturating_sub(a.cpu_us),
                _ => 0,
            };
            let span_s = match (s1, s2) {
                (Some(a), Some(b)) => (b.at_ns.saturating_sub(a.at_ns)) as f64 / 1e9,
                _ => window_s,
            };
            let per = |n: u64| (n > 0 && s2.is_some()).then(|| cpu_us as f64 / n as f64);
            let rss = match (s0, s1) {
                (Some(a), Some(b)) if m.c.ready > 0 => Some((b.rss_kib as f64 - a.rss_kib as f64) / m.c.ready as f64),
                _ => None,
            };
            ServerCost {
                pid,
                before_connect: s0,
                ready: s1,
                end: s2,
                cpu_us,
                cpu_percent: cpu_us as f64 / 1e4 / span_s.max(1e-9),
                cpu_us_per_delivery: per(m.c.received),
                cpu_us_per_cycle: plan.churn.and(per(m.c.cycles_done)),
                rss_per_connection_kib: rss,
                exit: facts.exit.clone(),
            }
        });
        if m.send_lag.q(0.99) > 10_000 {
            notes.push(format!(
                "the harness sent late (send lag p99 {}): it may have been the bottleneck; add --threads/--workers",
                fmt_us(m.send_lag.q(0.99))
            ));
        }
        if m.c.skipped > 0 && plan.churn.is_none() {
            notes.push(format!("{} sends were skipped (harness behind schedule or socket backed up)", m.c.skipped));
        }
        if let Some(exit) = &facts.exit
            && exit.died_early
        {
            notes.push(format!("the server died during the run ({})", exit.status));
        }
        let harness = Harness {
            cpu_us: facts.harness_cpu_us,
            cpu_percent: facts.harness_cpu_us as f64 / 1e4 / window_s,
            cpu_us_per_delivery: (m.c.received > 0).then(|| facts.harness_cpu_us as f64 / m.c.received as f64),
        };
        let timeline = m
            .intervals
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count() > 0)
            .map(|(i, h)| {
                let s = h.summary();
                TimePoint {
                    t_s: (i as f64 + 0.5) * plan.interval_ms as f64 / 1000.0,
                    count: s.count,
                    p50_us: s.p50_us,
                    p90_us: s.p90_us,
                    p99_us: s.p99_us,
                    p999_us: s.p999_us,
                    max_us: s.max_us,
                }
            })
            .collect();
        let cdf = cdf_points(m);
        let last_clean_rate = last_clean_step(&facts.steps).map(|v| v.rate);
        let lost = traffic.lost.max(traffic.lost_by_seq);
        let died = facts.exit.as_ref().is_some_and(|e| e.died_early);
        let clean = lost == 0
            && m.c.failed == 0
            && m.c.dropped == 0
            && m.c.send_errors == 0
            && !died
            && (plan.kind != Kind::Ramp || last_clean_rate.is_some());
        Report {
            tool: "roomcast-loadtest".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_unix: facts.started_unix,
            scenario: plan.kind,
            label: facts.label,
            target: facts.target,
            workers: facts.workers,
            threads: facts.threads,
            plan: plan.clone(),
            measured_s: facts.measured_s,
            drain_s: facts.drain_s,
            connections: Connections {
                attempted: m.c.attempted,
                ready: m.c.ready,
                failed: m.c.failed,
                dropped: m.c.dropped,
                failures: m.failures.clone(),
            },
            setup: Setup {
                connect: m.connect.summary(),
                upgrade: m.upgrade.summary(),
                welcome: m.welcome.summary(),
                join: m.join.summary(),
                seconds: facts.setup_s,
            },
            traffic,
            latency: m.latency.summary(),
            ack: m.ack.summary(),
            send_lag: m.send_lag.summary(),
            churn,
            server,
            harness,
            server_errors: m.server_errors.clone(),
            close_codes: m.closes.clone(),
            steps: facts.steps,
            last_clean_rate,
            timeline,
            cdf,
            notes,
            clean,
        }
    }

    /// Loss by whichever method found more.
    pub fn lost(&self) -> u64 {
        self.traffic.lost.max(self.traffic.lost_by_seq)
    }
}

fn cdf_points(m: &Metrics) -> Vec<(u64, f64)> {
    let h = &m.latency.0;
    if h.is_empty() {
        return Vec::new();
    }
    let total = h.len() as f64;
    let mut out = Vec::new();
    let mut seen = 0u64;
    for v in h.iter_recorded() {
        seen += v.count_since_last_iteration();
        out.push((h.highest_equivalent(v.value_iterated_to()), seen as f64 / total));
    }
    // Keep the plot light: at most ~400 points, always the last.
    if out.len() > 400 {
        let step = out.len().div_ceil(400);
        let last = out[out.len() - 1];
        out = out.into_iter().step_by(step).collect();
        if out.last() != Some(&last) {
            out.push(last);
        }
    }
    out
}

/// `1234` us -> `1.23 ms`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us} us"),
        1000..=999_999 => format!("{:.2} ms", us as f64 / 1000.0),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3} {unit}"))
}

fn summary_row(out: &mut impl Write, name: &str, s: &Summary) -> io::Result<()> {
    if s.count == 0 {
        return writeln!(out, "  {name:<16} {:>10}", "-");
    }
    writeln!(
        out,
        "  {name:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        fmt_n(s.count),
        fmt_us(s.p50_us),
        fmt_us(s.p90_us),
        fmt_us(s.p99_us),
        fmt_us(s.p999_us),
        fmt_us(s.max_us)
    )
}

/// The human summary.
pub fn print_human(r: &Report, out: &mut impl Write) -> io::Result<()> {
    let p = &r.plan;
    writeln!(out, "roomcast-loadtest {} against {} ({})", r.scenario.name(), r.label, r.target)?;
    match r.scenario {
        Kind::Churn => {
            let c = p.churn.unwrap_or(crate::scenario::ChurnPlan { rate: 0.0, hold_ms: 0, max_inflight: 0, users: 0 });
            writeln!(
                out,
                "  plan: {} cycles/s over {} rooms, hold {} ms, {:.1} s",
                c.rate, p.rooms, c.hold_ms, r.measured_s
            )?
        }
        _ => writeln!(
            out,
            "  plan: {} connections in {} rooms, {} publishers, rates {:?} msg/s, {} s; {} worker(s) x {} thread(s)",
            fmt_n(p.connections),
            fmt_n(p.rooms),
            fmt_n(p.publishers),
            p.steps.iter().map(|s| s.rate).collect::<Vec<_>>(),
            p.total_ms() as f64 / 1000.0,
            r.workers,
            r.threads
        )?,
    }
    let c = &r.connections;
    writeln!(
        out,
        "  connections: {} attempted, {} ready, {} failed, {} dropped (setup {:.2} s)",
        fmt_n(c.attempted),
        fmt_n(c.ready),
        fmt_n(c.failed),
        fmt_n(c.dropped),
        r.setup.seconds
    )?;
    for (why, n) in &c.failures {
        writeln!(out, "    {n:>8} x {why}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency", "count", "p50", "p90", "p99", "p99.9", "max"
    )?;
    summary_row(out, "end-to-end", &r.latency)?;
    summary_row(out, "ack", &r.ack)?;
    summary_row(out, "tcp connect", &r.setup.connect)?;
    summary_row(out, "upgrade+auth", &r.setup.upgrade)?;
    summary_row(out, "welcome", &r.setup.welcome)?;
    summary_row(out, "join", &r.setup.join)?;
    if let Some(ch) = &r.churn {
        summary_row(out, "leave", &ch.leave)?;
        summary_row(out, "churn cycle", &ch.cycle)?;
    }
    summary_row(out, "send lag", &r.send_lag)?;
    writeln!(out)?;
    let t = &r.traffic;
    if p.has_traffic() {
        writeln!(
            out,
            "  traffic: {} sent ({:.1}/s), {} acked, {} send errors, {} skipped",
            fmt_n(t.sent),
            t.sends_per_s,
            fmt_n(t.acked),
            fmt_n(t.send_errors),
            fmt_n(t.skipped)
        )?;
        writeln!(
            out,
            "  deliveries: {} of {} expected ({:.0}/s); lost {} (by count) / {} (by seq), gaps {}, dup/reordered {}",
            fmt_n(t.received),
            fmt_n(t.expected),
            t.deliveries_per_s,
            fmt_n(t.lost),
            fmt_n(t.lost_by_seq),
            fmt_n(t.gaps),
            fmt_n(t.duplicates_or_reordered)
        )?;
    }
    if let Some(ch) = &r.churn {
        writeln!(
            out,
            "  churn: {} cycles started, {} completed ({:.1}/s), {} failed, {} skipped",
            fmt_n(ch.started),
            fmt_n(ch.completed),
            ch.per_s,
            fmt_n(ch.failed),
            fmt_n(ch.skipped)
        )?;
    }
    if let Some(s) = &r.server {
        writeln!(
            out,
            "  server pid {}: cpu {:.3} s ({:.1}% of a core); {}/delivery; {}/cycle; rss {} -> {} -> {} KiB; {}/connection",
            s.pid,
            s.cpu_us as f64 / 1e6,
            s.cpu_percent,
            fmt_opt(s.cpu_us_per_delivery, "us"),
            fmt_opt(s.cpu_us_per_cycle, "us"),
            s.before_connect.map_or(0, |x| x.rss_kib),
            s.ready.map_or(0, |x| x.rss_kib),
            s.end.map_or(0, |x| x.rss_kib),
            fmt_opt(s.rss_per_connection_kib, "KiB"),
        )?;
        if let Some(e) = &s.exit {
            writeln!(out, "  server exit: {} (warnings logged: {})", e.status, e.warnings)?;
        }
    }
    writeln!(
        out,
        "  harness: cpu {:.3} s ({:.1}% of a core), {}/delivery",
        r.harness.cpu_us as f64 / 1e6,
        r.harness.cpu_percent,
        fmt_opt(r.harness.cpu_us_per_delivery, "us")
    )?;
    if !r.server_errors.is_empty() {
        writeln!(out, "  server error frames: {:?}", r.server_errors)?;
    }
    if !r.close_codes.is_empty() {
        writeln!(out, "  server close codes: {:?}", r.close_codes)?;
    }
    if !r.steps.is_empty() && r.scenario == Kind::Ramp {
        writeln!(out)?;
        writeln!(
            out,
            "  {:>10} {:>10} {:>12} {:>10} {:>10} {:>10}  verdict",
            "rate/s", "sent", "delivered", "lost", "p50", "p99"
        )?;
        for v in &r.steps {
            let verdict = if v.aborted {
                "aborted"
            } else if v.clean {
                "clean"
            } else {
                "FAIL"
            };
            writeln!(
                out,
                "  {:>10} {:>10} {:>12} {:>10} {:>10} {:>10}  {verdict}",
                v.rate,
                fmt_n(v.sent),
                fmt_n(v.received),
                fmt_n(v.lost),
                fmt_us(v.latency.p50_us),
                fmt_us(v.latency.p99_us)
            )?;
        }
        match r.last_clean_rate {
            Some(rate) => writeln!(out, "  last clean step: {rate} msg/s")?,
            None => writeln!(out, "  no clean step")?,
        }
    }
    for n in &r.notes {
        writeln!(out, "  note: {n}")?;
    }
    writeln!(out, "  result: {}", if r.clean { "clean" } else { "NOT CLEAN" })?;
    Ok(())
}

/// Two reports side by side with the ratio roomcast / baseline.
pub fn print_compare(roomcast: &Report, baseline: &Report, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{:<28} {:>16} {:>16} {:>10}", "", "roomcast", "baseline", "ratio")?;
    let row = |out: &mut dyn Write, name: &str, a: Option<f64>, b: Option<f64>, unit: &str| -> io::Result<()> {
        let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}{unit}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        writeln!(out, "{name:<28} {:>16} {:>16} {ratio:>10}", f(a), f(b))
    };
    let cpu = |r: &Report| r.server.as_ref().and_then(|s| s.cpu_us_per_delivery);
    let cyc = |r: &Report| r.server.as_ref().and_then(|s| s.cpu_us_per_cycle);
    let rss = |r: &Report| r.server.as_ref().and_then(|s| s.rss_per_connection_kib);
    let pct = |r: &Report| r.server.as_ref().map(|s| s.cpu_percent);
    let ms = |us: u64| Some(us as f64 / 1000.0);
    row(out, "cpu us / delivery", cpu(roomcast), cpu(baseline), "")?;
    if roomcast.churn.is_some() {
        row(out, "cpu us / churn cycle", cyc(roomcast), cyc(baseline), "")?;
    }
    row(out, "server cpu %", pct(roomcast), pct(baseline), "")?;
    row(out, "rss KiB / connection", rss(roomcast), rss(baseline), "")?;
    row(out, "latency p50 (ms)", ms(roomcast.latency.p50_us), ms(baseline.latency.p50_us), "")?;
    row(out, "latency p99 (ms)", ms(roomcast.latency.p99_us), ms(baseline.latency.p99_us), "")?;
    row(out, "latency max (ms)", ms(roomcast.latency.max_us), ms(baseline.latency.max_us), "")?;
    row(out, "join p99 (ms)", ms(roomcast.setup.join.p99_us), ms(baseline.setup.join.p99_us), "")?;
    row(out, "deliveries", Some(roomcast.traffic.received as f64), Some(baseline.traffic.received as f64), "")?;
    row(out, "lost", Some(roomcast.lost() as f64), Some(baseline.lost() as f64), "")?;
    if roomcast.scenario == Kind::Ramp {
        row(out, "last clean rate (msg/s)", roomcast.last_clean_rate, baseline.last_clean_rate, "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_us(999), "999 us");
        assert_eq!(fmt_us(1500), "1.50 ms");
        assert_eq!(fmt_us(2_500_000), "2.50 s");
        assert_eq!(fmt_n(1234567), "1,234,567");
        assert_eq!(fmt_n(12), "12");
    }
}
