//! The parent side of a run: starts the server and workers, drives setup -> go -> drain -> stop, merges
//! results and owns every deadline; it never opens a client socket and never prints the report.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{RunConfig, Target, check_target, is_loopback};
use crate::metrics::{Counters, Metrics, StepTally};
use crate::report::{Report, RunFacts};
use crate::scenario::{RampBounds, judge_steps};
use crate::server::{self, ServerError, Spawned};
use crate::token::{self, TokenError, TokenSource};
use crate::worker::{FromWorker, ToWorker, WorkerSpec};

#[derive(Debug)]
pub enum RunError {
    Server(ServerError),
    Token(TokenError),
    Worker(String),
    Io(io::Error),
    Deadline(&'static str),
    Target(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Server(e) => write!(f, "{e}"),
            RunError::Token(e) => write!(f, "{e}"),
            RunError::Worker(m) => write!(f, "worker: {m}"),
            RunError::Io(e) => write!(f, "{e}"),
            RunError::Deadline(what) => write!(f, "hard deadline reached during {what}; stopped"),
            RunError::Target(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(e: io::Error) -> Self {
        RunError::Io(e)
    }
}

/// How long workers get to report results after `stop`.
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lead time between deciding to go and the measured phase's start.
const GO_LEAD: Duration = Duration::from_millis(300);

struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    latest: Counters,
    ready: bool,
    result: Option<Metrics>,
    done: bool,
}

impl WorkerProc {
    fn send(&mut self, msg: &ToWorker) {
        if let Some(stdin) = &mut self.stdin
            && let Ok(line) = serde_json::to_string(msg)
            && writeln!(stdin, "{line}").and_then(|()| stdin.flush()).is_err()
        {
            self.stdin = None;
        }
    }
}

enum Event {
    Line(usize, FromWorker),
    Eof(usize),
}

fn spawn_worker(
    idx: usize,
    spec: &WorkerSpec,
    cpus: Option<Vec<usize>>,
    tx: mpsc::Sender<Event>,
) -> Result<WorkerProc, RunError> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("__worker").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if let Some(cpus) = cpus {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only calls sched_setaffinity, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || crate::sys::set_affinity(&cpus));
        }
    }
    let mut child = cmd.spawn().map_err(|e| RunError::Worker(format!("cannot start a worker: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| RunError::Worker("no stdin pipe".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| RunError::Worker("no stdout pipe".into()))?;
    let line = serde_json::to_string(spec).map_err(|e| RunError::Worker(e.to_string()))?;
    writeln!(stdin, "{line}")?;
    stdin.flush()?;
    std::thread::Builder::new().name(format!("lt-worker-{idx}")).spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<FromWorker>(&line) {
                Ok(msg) => {
                    if tx.send(Event::Line(idx, msg)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Event::Line(idx, FromWorker::Fatal(format!("unreadable line ({e}): {line:.200}"))));
                }
            }
        }
        let _ = tx.send(Event::Eof(idx));
    })?;
    Ok(WorkerProc { child, stdin: Some(stdin), latest: Counters::default(), ready: false, result: None, done: false })
}

fn totals(workers: &[WorkerProc]) -> Counters {
    let mut t = Counters::default();
    for w in workers {
        t.merge(&w.latest);
    }
    t
}

fn bar(cfg: &RunConfig) -> ProgressBar {
    let pb = ProgressBar::new(cfg.plan.connections.max(1));
    if cfg.quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Runs one scenario end to end and returns its report.
pub fn run(cfg: &RunConfig) -> Result<Report, RunError> {
    let hard_deadline = Instant::now() + cfg.deadline;
    let started_unix = crate::sys::now_unix_s();
    let mut cfg = cfg.clone();

    // The server: started here, or already running at --url.
    let mut spawned = None;
    if let Target::Spawn(opts) = &cfg.target {
        let mut opts = opts.clone();
        if opts.secret.is_empty() {
            // A roomcast we configure ourselves gets a fresh secret we then mint with.
            opts.secret = format!("roomcast-loadtest-{:016x}-{:08x}", crate::sys::now_ns(), std::process::id());
            if cfg.secret.is_none() && cfg.token_cmd.is_none() {
                cfg.secret = Some(opts.secret.clone());
            }
        }
        let s = Spawned::start(&opts).map_err(RunError::Server)?;
        spawned = Some(s);
    }
    let result = run_with_server(&cfg, spawned.as_mut(), hard_deadline, started_unix);
    let exit = spawned.map(|s| s.stop(Duration::from_secs(5)));
    let mut report = result?;
    if let Some(exit) = exit {
        if exit.died_early {
            report.clean = false;
            report.notes.push(format!("the server exited before the harness stopped it: {}", exit.status));
        }
        if let Some(s) = &mut report.server {
            s.exit = Some(exit);
        }
    }
    Ok(report)
}

fn run_with_server(
    cfg: &RunConfig,
    spawned: Option<&mut Spawned>,
    hard_deadline: Instant,
    started_unix: u64,
) -> Result<Report, RunError> {
    let (addr, host, path, label) = match (&cfg.target, spawned.as_deref()) {
        (Target::Url { url, addr }, _) => {
            let host = if url.port == 80 { url.host.clone() } else { format!("{}:{}", url.host, url.port) };
            (*addr, host, url.path.clone(), addr.to_string())
        }
        (Target::Spawn(_), Some(s)) => (s.addr, s.addr.to_string(), "/ws".to_string(), s.label.clone()),
        (Target::Spawn(_), None) => return Err(RunError::Target("no server".into())),
    };
    // A spawned server still has to listen on loopback.
    let allow_remote = !is_loopback(addr.ip()) && matches!(cfg.target, Target::Url { .. });
    check_target(&[addr], allow_remote).map_err(|e| RunError::Target(e.to_string()))?;
    let pid = cfg.server_pid.or(spawned.as_deref().map(|s| s.pid));

    let tokens = match (&cfg.secret, &cfg.token_cmd, cfg.auth) {
        (_, _, crate::worker::AuthMode::None) => TokenSource::None,
        (Some(secret), _, _) => {
            TokenSource::Mint { secret: secret.clone(), kid: cfg.kid.clone(), ttl_s: cfg.token_ttl.as_secs().max(1) }
        }
        (None, Some(cmd), _) => TokenSource::Fixed(token::from_command(cmd).map_err(RunError::Token)?),
        (None, None, _) => TokenSource::None,
    };

    let sample = |pid: Option<u32>| pid.and_then(server::sample);
    let s0 = sample(pid);

    // Workers: each takes a contiguous share of the steady connections.
    let n = cfg.workers as u64;
    let worker_cpus = cfg.server_cpu.map(|server| {
        let others: Vec<usize> = (0..crate::sys::cpu_count()).filter(|&c| c != server).collect();
        if others.is_empty() { vec![server] } else { others }
    });
    if let Some(cpus) = &worker_cpus {
        let _ = crate::sys::set_affinity(cpus);
    }
    let max_runtime_ms = cfg.deadline.as_millis() as u64 + 10_000;
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(cfg.workers as usize);
    let mut first = 0u64;
    for w in 0..n {
        let count = cfg.plan.connections / n + u64::from(w < cfg.plan.connections % n);
        let spec = WorkerSpec {
            worker: w as u32,
            workers: cfg.workers,
            threads: cfg.threads,
            first_conn: first,
            conn_count: count,
            target: addr,
            host: host.clone(),
            path: path.clone(),
            auth: cfg.auth,
            tokens: tokens.clone(),
            source_ips: cfg.source_ips.clone(),
            plan: cfg.plan.clone(),
            connect_rate: cfg.connect_rate / n as f64,
            max_pending: cfg.max_pending.div_ceil(n),
            phase_timeout_ms: cfg.phase_timeout.as_millis() as u64,
            max_runtime_ms,
        };
        first += count;
        match spawn_worker(w as usize, &spec, worker_cpus.clone(), tx.clone()) {
            Ok(p) => workers.push(p),
            Err(e) => {
                shutdown(&mut workers);
                return Err(e);
            }
        }
    }
    drop(tx);
    let outcome = drive(cfg, &mut workers, &rx, spawned, hard_deadline, pid);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            shutdown(&mut workers);
            return Err(e);
        }
    };
    shutdown(&mut workers);

    let mut merged = Metrics::new(cfg.plan.steps.len());
    for w in &workers {
        if let Some(m) = &w.result {
            merged.merge(m);
        }
    }
    let mut notes = outcome.notes;
    let steps = match cfg.plan.ramp {
        Some(bounds) => judge_steps(&cfg.plan, &merged.steps, bounds, outcome.aborted_from),
        None => Vec::new(),
    };
    if merged.c.failed > 0 && cfg.plan.has_traffic() {
        notes.push("some connections failed during setup: rooms were smaller than planned".into());
    }
    let facts = RunFacts {
        label,
        target: addr.to_string(),
        workers: cfg.workers,
        threads: cfg.threads,
        started_unix,
        setup_s: outcome.setup_s,
        measured_s: outcome.measured_s,
        drain_s: outcome.drain_s,
        pid,
        samples: [s0, outcome.s1, outcome.s2],
        harness_cpu_us: outcome.harness_cpu_us,
        exit: None,
        steps,
        notes,
    };
    Ok(Report::build(&cfg.plan, &merged, facts))
}

struct Outcome {
    setup_s: f64,
    measured_s: f64,
    drain_s: f64,
    s1: Option<server::ProcSample>,
    s2: Option<server::ProcSample>,
    harness_cpu_us: u64,
    aborted_from: Option<usize>,
    notes: Vec<String>,
}

/// Handles one worker event; returns an error for fatal worker failures.
fn on_event(
    workers: &mut [WorkerProc],
    ev: Event,
    steps: &mut Vec<(StepTally, usize)>,
) -> Result<Option<usize>, RunError> {
    match ev {
        Event::Line(i, FromWorker::Ready { .. }) => workers[i].ready = true,
        Event::Line(i, FromWorker::Progress(c)) => workers[i].latest = c,
        Event::Line(_, FromWorker::Step { step, tally }) => {
            if steps.len() <= step {
                steps.resize_with(step + 1, || (StepTally::new(), 0));
            }
            steps[step].0.merge(&tally);
            steps[step].1 += 1;
            if steps[step].1 == workers.len() {
                return Ok(Some(step));
            }
        }
        Event::Line(i, FromWorker::Result(m)) => {
            workers[i].latest = m.c;
            workers[i].result = Some(*m);
            workers[i].done = true;
        }
        Event::Line(i, FromWorker::Fatal(msg)) => return Err(RunError::Worker(format!("worker {i}: {msg}"))),
        Event::Eof(i) => {
            if workers[i].result.is_none() {
                return Err(RunError::Worker(format!("worker {i} exited without results")));
            }
            workers[i].done = true;
        }
    }
    Ok(None)
}

fn drive(
    cfg: &RunConfig,
    workers: &mut [WorkerProc],
    rx: &Receiver<Event>,
    mut spawned: Option<&mut Spawned>,
    hard_deadline: Instant,
    pid: Option<u32>,
) -> Result<Outcome, RunError> {
    let pb = bar(cfg);
    let mut notes = Vec::new();
    let mut steps: Vec<(StepTally, usize)> = Vec::new();
    let tick = Duration::from_millis(100);
    let recv = |rx: &Receiver<Event>| match rx.recv_timeout(tick) {
        Ok(ev) => Ok(Some(ev)),
        Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(RecvTimeoutError::Disconnected) => Err(RunError::Worker("all workers went away".into())),
    };

    // Setup: wait for every worker's connections.
    pb.set_prefix("setup");
    let setup_start = Instant::now();
    while !workers.iter().all(|w| w.ready) {
        if Instant::now() >= hard_deadline {
            pb.finish_and_clear();
            return Err(RunError::Deadline("setup"));
        }
        if let Some(ev) = recv(rx)? {
            on_event(workers, ev, &mut steps)?;
        }
        let t = totals(workers);
        pb.set_position(t.ready + t.failed);
        pb.set_message(format!("ready {} failed {}", t.ready, t.failed));
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    let s1 = pid.and_then(server::sample);
    let h1 = harness_cpu_us(workers);

    // Measured phase.
    let start_ns = crate::sys::now_ns() + GO_LEAD.as_nanos() as u64;
    for w in workers.iter_mut() {
        w.send(&ToWorker::Go { start_unix_ns: start_ns });
    }
    let total_ms = cfg.plan.total_ms();
    pb.set_prefix(cfg.plan.kind.name());
    pb.set_length(total_ms.max(1));
    pb.set_position(0);
    let bounds = cfg.plan.ramp.unwrap_or(RampBounds { max_loss: 1.0, max_p99_us: u64::MAX });
    let mut aborted_from = None;
    let end_ns = start_ns + total_ms * 1_000_000;
    loop {
        let now = crate::sys::now_ns();
        if now >= end_ns {
            break;
        }
        if Instant::now() >= hard_deadline {
            notes.push("the hard deadline cut the measured phase short".into());
            aborted_from = Some(cfg.plan.step_at(now.saturating_sub(start_ns)).unwrap_or(0));
            break;
        }
        if let Some(s) = spawned.as_deref_mut()
            && !s.is_running()
        {
            notes.push("the server exited during the measured phase".into());
            aborted_from = Some(cfg.plan.step_at(now.saturating_sub(start_ns)).unwrap_or(0));
            break;
        }
        if let Some(ev) = recv(rx)?
            && let Some(step) = on_event(workers, ev, &mut steps)?
            && cfg.plan.ramp.is_some()
            && cfg.early_stop
        {
            let verdict = judge_steps(&cfg.plan, &[steps[step].0.clone()], bounds, None);
            if verdict.first().is_some_and(|v| !v.clean) && step + 1 < cfg.plan.steps.len() {
                notes.push(format!("step {} ({} msg/s) failed; later steps skipped", step, cfg.plan.steps[step].rate));
                aborted_from = Some(step + 1);
                for w in workers.iter_mut() {
                    w.send(&ToWorker::Halt);
                }
                break;
            }
        }
        let t = totals(workers);
        pb.set_position(now.saturating_sub(start_ns) / 1_000_000);
        pb.set_message(format!(
            "sent {} delivered {} gaps {} failed {} dropped {} cycles {}",
            t.sent, t.received, t.gaps, t.failed, t.dropped, t.cycles_done
        ));
    }
    let measured_end = crate::sys::now_ns();
    // Rates are per planned second unless the run was cut short.
    let measured_s = (measured_end.min(end_ns)).saturating_sub(start_ns) as f64 / 1e9;

    // Drain: until every owed delivery arrived and every cycle ended, or the drain time is up.
    pb.set_prefix("drain");
    // A failed ramp step still drains (its sends are halted); a deadline or a dead server does not.
    let cut_short =
        aborted_from.is_some() && notes.iter().any(|n| n.contains("deadline") || n.contains("server exited"));
    let drain_until = Instant::now() + if cut_short { Duration::ZERO } else { cfg.drain };
    loop {
        let t = totals(workers);
        let settled = t.received >= t.expected
            && t.acked + t.send_errors >= t.sent
            && t.cycles_done + t.failed >= t.cycles_started;
        // Progress lines trail by up to 200 ms; wait for one fresh round before trusting them.
        let fresh = crate::sys::now_ns() > measured_end + 400_000_000;
        if (settled && fresh) || Instant::now() >= drain_until || Instant::now() >= hard_deadline {
            break;
        }
        if let Some(ev) = recv(rx)? {
            on_event(workers, ev, &mut steps)?;
        }
    }
    let drain_s = crate::sys::now_ns().saturating_sub(measured_end) as f64 / 1e9;
    let s2 = pid.and_then(server::sample);
    let harness_cpu_us = harness_cpu_us(workers).saturating_sub(h1);

    // Stop and collect.
    pb.set_prefix("collect");
    for w in workers.iter_mut() {
        w.send(&ToWorker::Stop);
        w.stdin = None;
    }
    let collect_until = (Instant::now() + RESULT_TIMEOUT).min(hard_deadline + Duration::from_secs(5));
    while !workers.iter().all(|w| w.done) {
        if Instant::now() >= collect_until {
            pb.finish_and_clear();
            return Err(RunError::Deadline("result collection"));
        }
        if let Some(ev) = recv(rx)? {
            on_event(workers, ev, &mut steps)?;
        }
    }
    pb.finish_and_clear();
    Ok(Outcome { setup_s, measured_s, drain_s, s1, s2, harness_cpu_us, aborted_from, notes })
}

/// CPU time (utime + stime) of all worker processes so far.
fn harness_cpu_us(workers: &[WorkerProc]) -> u64 {
    workers.iter().filter_map(|w| server::sample(w.child.id())).map(|s| s.cpu_us).sum()
}

/// Closes control pipes and reaps workers, killing any that linger.
fn shutdown(workers: &mut [WorkerProc]) {
    for w in workers.iter_mut() {
        w.stdin = None;
    }
    let until = Instant::now() + Duration::from_secs(5);
    for w in workers.iter_mut() {
        loop {
            match w.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    break;
                }
            }
        }
    }
}
