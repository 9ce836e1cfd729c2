//! A worker process (the hidden `__worker` subcommand): reads its spec and control lines on stdin,
//! runs one client loop per thread, and reports JSON lines on stdout. It never draws or prints text.

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{self, LoopArgs};
use crate::metrics::{Counters, Metrics, StepTally};
use crate::scenario::Plan;
use crate::token::TokenSource;

/// How connections present their token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `Authorization: Bearer` on the upgrade request.
    Header,
    /// `?token=` on the upgrade URL.
    Query,
    /// A first `{"type":"auth"}` frame after `welcome`.
    Frame,
    /// No token (servers that skip auth).
    None,
}

/// Everything a worker needs, sent as the first line on its stdin (so secrets stay off argv).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker: u32,
    pub workers: u32,
    pub threads: u32,
    /// This worker's steady connections are `first_conn .. first_conn + conn_count`.
    pub first_conn: u64,
    pub conn_count: u64,
    pub target: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub path: String,
    pub auth: AuthMode,
    pub tokens: TokenSource,
    pub source_ips: Vec<IpAddr>,
    pub plan: Plan,
    /// New connections per second during setup, for this whole worker.
    pub connect_rate: f64,
    /// Handshakes in flight at most, for this whole worker.
    pub max_pending: u64,
    pub phase_timeout_ms: u64,
    /// The worker gives up and exits this long after it started, whatever happens.
    pub max_runtime_ms: u64,
}

/// Parent -> worker, one JSON line each.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToWorker {
    /// Start the measured phase at this unix time (ns).
    Go { start_unix_ns: u64 },
    /// Send nothing more and start no more cycles (a ramp step failed); keep receiving.
    Halt,
    /// Finish now: report results and exit.
    Stop,
}

/// Worker -> parent, one JSON line each.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FromWorker {
    /// Every steady connection of this worker is ready or failed.
    Ready {
        ready: u64,
        failed: u64,
    },
    Progress(Counters),
    /// A ramp step's tally, sent a little after the step ended.
    Step {
        step: usize,
        tally: StepTally,
    },
    Result(Box<Metrics>),
    Fatal(String),
}

/// What a worker's threads share: control flags from the parent and their latest counters.
pub struct Shared {
    /// Unix ns of the start of the measured phase; 0 until the parent says go.
    pub go_at: AtomicU64,
    pub stop: AtomicBool,
    /// No more sends or cycles; the drain goes on until `stop`.
    pub halt: AtomicBool,
    pub setup_done: AtomicUsize,
    pub slots: Vec<Mutex<Counters>>,
}

impl Shared {
    pub fn new(threads: usize) -> Shared {
        Shared {
            go_at: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            halt: AtomicBool::new(false),
            setup_done: AtomicUsize::new(0),
            slots: (0..threads).map(|_| Mutex::new(Counters::default())).collect(),
        }
    }

    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for s in &self.slots {
            if let Ok(c) = s.lock() {
                t.merge(&c);
            }
        }
        t
    }
}

fn emit(out: &mut impl Write, msg: &FromWorker) -> io::Result<()> {
    let line = serde_json::to_string(msg).map_err(io::Error::other)?;
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The worker process's main: returns when its results are written or it must give up.
pub fn main() -> io::Result<()> {
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let first = lines.next().ok_or_else(|| io::Error::other("no spec on stdin"))??;
    let spec: WorkerSpec = serde_json::from_str(&first).map_err(io::Error::other)?;
    drop(lines);
    let mut out = io::stdout().lock();
    match run(spec, &mut out) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = emit(&mut out, &FromWorker::Fatal(e.to_string()));
            Err(e)
        }
    }
}

fn run(spec: WorkerSpec, out: &mut impl Write) -> io::Result<()> {
    crate::sys::raise_open_file_limit();
    let started = Instant::now();
    let max_runtime = Duration::from_millis(spec.max_runtime_ms);
    let threads = spec.threads.max(1) as usize;
    let shared = Arc::new(Shared::new(threads));

    // Control lines from the parent; EOF (the parent went away) means stop.
    {
        let shared = shared.clone();
        std::thread::Builder::new().name("lt-control".into()).spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(ToWorker::Go { start_unix_ns }) => shared.go_at.store(start_unix_ns.max(1), Ordering::Release),
                    Ok(ToWorker::Halt) => shared.halt.store(true, Ordering::Release),
                    Ok(ToWorker::Stop) => break,
                    Err(_) => continue,
                }
            }
            shared.stop.store(true, Ordering::Release);
        })?;
    }

    let spec = Arc::new(spec);
    let (step_tx, step_rx) = mpsc::channel::<(usize, StepTally)>();
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let share = spec.conn_count / threads as u64 + u64::from((t as u64) < spec.conn_count % threads as u64);
        let first = spec.first_conn
            + (0..t as u64)
                .map(|u| spec.conn_count / threads as u64 + u64::from(u < spec.conn_count % threads as u64))
                .sum::<u64>();
        let args = LoopArgs {
            spec: spec.clone(),
            slot: t,
            first,
            count: share,
            shared: shared.clone(),
            step_tx: step_tx.clone(),
            global_thread: u64::from(spec.worker) * threads as u64 + t as u64,
            global_threads: u64::from(spec.workers.max(1)) * threads as u64,
        };
        handles.push(std::thread::Builder::new().name(format!("lt-loop-{t}")).spawn(move || client::run(args))?);
    }
    drop(step_tx);

    let mut ready_sent = false;
    let mut steps: Vec<(StepTally, usize)> = Vec::new();
    let mut last_progress = Instant::now();
    loop {
        if started.elapsed() > max_runtime {
            shared.stop.store(true, Ordering::Release);
        }
        if !ready_sent && shared.setup_done.load(Ordering::Acquire) == threads {
            let t = shared.totals();
            emit(out, &FromWorker::Ready { ready: t.ready, failed: t.failed })?;
            ready_sent = true;
        }
        while let Ok((k, tally)) = step_rx.try_recv() {
            if steps.len() <= k {
                steps.resize_with(k + 1, || (StepTally::new(), 0));
            }
            steps[k].0.merge(&tally);
            steps[k].1 += 1;
            if steps[k].1 == threads {
                emit(out, &FromWorker::Step { step: k, tally: steps[k].0.clone() })?;
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(200) {
            emit(out, &FromWorker::Progress(shared.totals()))?;
            last_progress = Instant::now();
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut total = Metrics::new(spec.plan.steps.len());
    for h in handles {
        match h.join() {
            Ok(Ok(m)) => total.merge(&m),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a client loop panicked")),
        }
    }
    emit(out, &FromWorker::Result(Box::new(total)))
}
