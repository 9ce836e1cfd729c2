//! One client event loop per worker thread: many non-blocking sockets on one mio poll, each moving
//! connect -> upgrade -> join -> traffic; it must not allocate per message, block, or outlive its deadlines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::framing::{self, CLOSE, PONG, Rng, TEXT};
use crate::jsonscan;
use crate::metrics::{Counters, Metrics, SeqTracker, StepTally};
use crate::scenario::Plan;
use crate::sys::now_ns;
use crate::token::{Minter, TokenSource};
use crate::worker::{AuthMode, Shared, WorkerSpec};

/// One socket read takes at most this much.
const READ_BUF: usize = 256 * 1024;
/// A connection whose unsent output passes this is backed up: its sends are skipped.
const MAX_WBUF: usize = 1024 * 1024;
/// Sends awaiting an ack, per publisher, at most.
const MAX_INFLIGHT: usize = 65_536;
/// A publisher this far behind its schedule skips ahead instead of bursting.
const MAX_LAG_NS: u64 = 1_000_000_000;
/// Socket reads per readiness event, so one busy connection cannot starve the others.
const READS_PER_EVENT: usize = 16;
/// Longest poll wait, so control flags and deadlines are seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// How often phase deadlines are checked.
const SCAN_EVERY_NS: u64 = 100_000_000;
/// How long after a ramp step ends its tally is reported (late deliveries still count).
const STEP_GRACE_NS: u64 = 1_000_000_000;
/// Counters are handed to the worker at most this often.
const PUBLISH_EVERY_NS: u64 = 50_000_000;

pub struct LoopArgs {
    pub spec: Arc<WorkerSpec>,
    pub slot: usize,
    /// Steady connections `first .. first + count`.
    pub first: u64,
    pub count: u64,
    pub shared: Arc<Shared>,
    pub step_tx: Sender<(usize, StepTally)>,
    /// This loop's index among all loops of all workers (for churn cycle ids and rate shares).
    pub global_thread: u64,
    pub global_threads: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Connecting,
    Upgrading,
    Welcome,
    Authing,
    Joining,
    Ready,
    Holding,
    Leaving,
    Closing,
}

impl St {
    fn name(self) -> &'static str {
        match self {
            St::Connecting => "connect",
            St::Upgrading => "upgrade",
            St::Welcome => "welcome",
            St::Authing => "auth",
            St::Joining => "join",
            St::Ready => "ready",
            St::Holding => "hold",
            St::Leaving => "leave",
            St::Closing => "close",
        }
    }

    fn in_setup(self) -> bool {
        matches!(self, St::Connecting | St::Upgrading | St::Welcome | St::Authing | St::Joining)
    }
}

struct Conn {
    sock: TcpStream,
    generation: u32,
    /// Steady connection index, or churn cycle id.
    id: u64,
    churn: bool,
    room: u32,
    room_name: Box<str>,
    st: St,
    /// When the current phase began (unix ns).
    t_phase: u64,
    t_start: u64,
    ws_key: Option<Box<str>>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// A fragmented text message being put together (rare).
    frag: Option<Vec<u8>>,
    tracker: SeqTracker,
    joined_seq: u64,
    publisher: bool,
    /// Send time and step of each send awaiting its ack, oldest first.
    inflight: VecDeque<(u64, u32)>,
    acked: u64,
    close_sent: bool,
}

/// Timer kinds in the heap.
const T_SEND: u8 = 0;
const T_HOLD: u8 = 1;

/// Why a connection ends; `None` reason = a normal end (churn cycle completed).
struct End(Option<String>);

impl End {
    fn fail(reason: impl Into<String>) -> End {
        End(Some(reason.into()))
    }
}

/// State the per-connection code may touch besides the connection itself.
struct Ctx {
    plan: Plan,
    auth: AuthMode,
    tokens: TokenSource,
    minter: Option<Minter>,
    host: String,
    path: String,
    m: Metrics,
    rng: Rng,
    out: Vec<u8>,
    payload: Vec<u8>,
    padding: String,
    timers: BinaryHeap<Reverse<(u64, usize, u32, u8)>>,
    /// Start and end of the measured phase (unix ns); 0 before go.
    start: u64,
    end: u64,
    interval_ns: u64,
    /// Steady connections still in setup.
    pending: u64,
    churn_inflight: u64,
}

pub fn run(args: LoopArgs) -> io::Result<Metrics> {
    let spec = args.spec.clone();
    let deadline = Instant::now() + Duration::from_millis(spec.max_runtime_ms);
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(2048);
    let mut conns: Slab<Conn> = Slab::with_capacity(args.count as usize);
    let minter = match &spec.tokens {
        TokenSource::Mint { secret, kid, ttl_s } => Some(Minter::new(secret, kid.as_deref(), *ttl_s)),
        _ => None,
    };
    let mut ctx = Ctx {
        plan: spec.plan.clone(),
        auth: spec.auth,
        tokens: spec.tokens.clone(),
        minter,
        host: spec.host.clone(),
        path: spec.path.clone(),
        m: Metrics::new(spec.plan.steps.len()),
        rng: Rng::from_entropy(args.global_thread),
        out: Vec::with_capacity(4096),
        payload: Vec::with_capacity(4096),
        padding: "x".repeat(spec.plan.body_bytes),
        timers: BinaryHeap::new(),
        start: 0,
        end: 0,
        interval_ns: spec.plan.interval_ms.max(1) * 1_000_000,
        pending: 0,
        churn_inflight: 0,
    };
    let threads_in_worker = spec.threads.max(1) as f64;
    let connect_rate = (spec.connect_rate / threads_in_worker).max(0.001);
    let max_pending = (spec.max_pending as f64 / threads_in_worker).ceil().max(1.0) as u64;
    let churn = spec.plan.churn;
    let churn_rate = churn.map_or(0.0, |c| c.rate / args.global_threads.max(1) as f64);
    let churn_max_inflight = churn.map_or(0, |c| (c.max_inflight / args.global_threads.max(1)).max(1));

    let mut buf = vec![0u8; READ_BUF];
    let mut opened = 0u64;
    let mut next_connect = now_ns();
    let mut setup_reported = false;
    let mut started = false;
    let mut next_cycle = 0u64;
    let mut cycle_seq = 0u64;
    let mut next_scan = 0u64;
    let mut next_publish = 0u64;
    let mut steps_reported = 0usize;
    let mut published = Counters::default();
    let mut again: Vec<(usize, u32)> = Vec::new();

    loop {
        let now = now_ns();
        if Instant::now() >= deadline || args.shared.stop.load(Ordering::Acquire) {
            break;
        }

        // Setup: open steady connections at the connect rate, with bounded handshakes in flight.
        let mut opened_now = 0;
        while opened < args.count && ctx.pending < max_pending && now >= next_connect && opened_now < 256 {
            let id = args.first + opened;
            opened += 1;
            opened_now += 1;
            ctx.m.c.attempted += 1;
            next_connect = next_connect.max(now - 1_000_000_000) + (1e9 / connect_rate) as u64;
            match open(&mut conns, &poll, &spec, &mut ctx, id, false, now) {
                Ok(()) => ctx.pending += 1,
                Err(reason) => ctx.m.fail(reason),
            }
        }
        if !setup_reported && opened == args.count && ctx.pending == 0 {
            setup_reported = true;
            args.shared.setup_done.fetch_add(1, Ordering::AcqRel);
        }

        // The measured phase begins at the parent's go time.
        let go = args.shared.go_at.load(Ordering::Acquire);
        if !started && go != 0 && now >= go {
            started = true;
            ctx.start = go;
            ctx.end = go + ctx.plan.total_ms() * 1_000_000;
            next_cycle = go;
            if ctx.plan.has_traffic() {
                let interval = interval_ns(ctx.plan.publisher_rate(0));
                for (key, c) in conns.iter() {
                    if c.publisher && c.st == St::Ready {
                        let due = go + (ctx.plan.phase(c.id) * interval as f64) as u64;
                        ctx.timers.push(Reverse((due, key, c.generation, T_SEND)));
                    }
                }
            }
        }

        if started && ctx.end > now && args.shared.halt.load(Ordering::Acquire) {
            ctx.end = now;
        }

        // Churn: start cycles on schedule while the measured phase lasts.
        if started && churn_rate > 0.0 {
            let mut begun = 0;
            while now >= next_cycle && next_cycle < ctx.end && begun < 256 {
                begun += 1;
                next_cycle = next_cycle.max(now.saturating_sub(1_000_000_000)) + (1e9 / churn_rate) as u64;
                if ctx.churn_inflight >= churn_max_inflight {
                    ctx.m.c.skipped += 1;
                    continue;
                }
                let id = cycle_seq * args.global_threads + args.global_thread;
                cycle_seq += 1;
                ctx.m.c.cycles_started += 1;
                match open(&mut conns, &poll, &spec, &mut ctx, id, true, now) {
                    Ok(()) => ctx.churn_inflight += 1,
                    Err(reason) => ctx.m.fail(reason),
                }
            }
        }

        // Wait for I/O until the next timer, connect slot or cycle.
        let mut wake = now + MAX_WAIT.as_nanos() as u64;
        if let Some(Reverse((due, ..))) = ctx.timers.peek() {
            wake = wake.min(*due);
        }
        if opened < args.count && ctx.pending < max_pending {
            wake = wake.min(next_connect);
        }
        if started && churn_rate > 0.0 && next_cycle < ctx.end {
            wake = wake.min(next_cycle);
        }
        let timeout = if again.is_empty() { Duration::from_nanos(wake.saturating_sub(now)) } else { Duration::ZERO };
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }

        // Connections whose read budget ran out last turn come first, then this turn's events.
        let retry = std::mem::take(&mut again);
        let ready = retry.iter().map(|&(key, generation)| (key, Some(generation), true, false, false)).chain(
            events.iter().map(|ev| {
                let err = ev.is_error();
                (ev.token().0, None, ev.is_readable() || err, ev.is_read_closed(), ev.is_writable() || err)
            }),
        );
        for (key, generation, readable, read_closed, writable) in ready {
            let Some(c) = conns.get_mut(key) else { continue };
            if generation.is_some_and(|g| g != c.generation) {
                continue;
            }
            match on_event(c, &mut ctx, &mut buf, readable, read_closed, writable, key) {
                Ok(false) => {}
                Ok(true) => again.push((key, c.generation)),
                Err(end) => finish(&mut conns, &poll, &mut ctx, key, end),
            }
        }

        // Timers: scheduled sends and churn holds.
        let now = now_ns();
        while let Some(Reverse((due, key, generation, kind))) = ctx.timers.peek().copied() {
            if due > now {
                break;
            }
            ctx.timers.pop();
            let Some(c) = conns.get_mut(key) else { continue };
            if c.generation != generation {
                continue;
            }
            let result = match kind {
                T_SEND => publish(c, &mut ctx, key, due, now),
                _ => leave(c, &mut ctx, now),
            };
            if let Err(end) = result {
                finish(&mut conns, &poll, &mut ctx, key, end);
            }
        }

        // Phase deadlines.
        if now >= next_scan {
            next_scan = now + SCAN_EVERY_NS;
            let timeout = spec.phase_timeout_ms * 1_000_000;
            let late: Vec<(usize, St)> = conns
                .iter()
                .filter(|(_, c)| c.st != St::Ready && c.st != St::Holding && now.saturating_sub(c.t_phase) > timeout)
                .map(|(k, c)| (k, c.st))
                .collect();
            for (key, st) in late {
                finish(&mut conns, &poll, &mut ctx, key, End::fail(format!("timeout: {}", st.name())));
            }
        }

        // Ramp steps: hand each finished step's tally to the worker a little after it ends.
        if started && ctx.plan.steps.len() > 1 {
            while steps_reported < ctx.plan.steps.len() {
                let end = ctx.start + ctx.plan.step_start_ms(steps_reported + 1) * 1_000_000 + STEP_GRACE_NS;
                if now < end {
                    break;
                }
                let _ = args.step_tx.send((steps_reported, ctx.m.steps[steps_reported].clone()));
                steps_reported += 1;
            }
        }

        if now >= next_publish {
            next_publish = now + PUBLISH_EVERY_NS;
            if ctx.m.c != published {
                published = ctx.m.c;
                if let Ok(mut slot) = args.shared.slots[args.slot].lock() {
                    *slot = published;
                }
            }
        }
    }

    // Final accounting: every ready member's seq tally, by room.
    for (_, c) in conns.iter() {
        if c.st == St::Ready && !c.churn {
            let tally = ctx.m.rooms.entry(c.room).or_default();
            tally.add_member(c.joined_seq, &c.tracker);
            tally.acked += c.acked;
            ctx.m.c.backwards += c.tracker.backwards;
        }
    }
    // Report any step not yet reported, so the worker's step lines complete.
    if started && ctx.plan.steps.len() > 1 {
        for k in steps_reported..ctx.plan.steps.len() {
            let _ = args.step_tx.send((k, ctx.m.steps[k].clone()));
        }
    }
    if let Ok(mut slot) = args.shared.slots[args.slot].lock() {
        *slot = ctx.m.c;
    }
    Ok(ctx.m)
}

fn interval_ns(rate: f64) -> u64 {
    if rate > 0.0 { (1e9 / rate).max(1.0) as u64 } else { u64::MAX / 4 }
}

/// Starts a non-blocking connect for connection `id`.
fn open(
    conns: &mut Slab<Conn>,
    poll: &Poll,
    spec: &WorkerSpec,
    ctx: &mut Ctx,
    id: u64,
    churn: bool,
    now: u64,
) -> Result<(), String> {
    let target = spec.target;
    let sock = Socket::new(Domain::for_address(target), Type::STREAM.nonblocking(), Some(Protocol::TCP))
        .map_err(|e| format!("socket: {}", short_err(&e)))?;
    let _ = sock.set_tcp_nodelay(true);
    if !spec.source_ips.is_empty() {
        let ip = spec.source_ips[(id % spec.source_ips.len() as u64) as usize];
        if ip.is_ipv4() {
            let _ = crate::sys::set_bind_address_no_port(std::os::fd::AsRawFd::as_raw_fd(&sock));
        }
        sock.bind(&SocketAddr::new(ip, 0).into()).map_err(|e| format!("bind {ip}: {}", short_err(&e)))?;
    }
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(format!("connect: {}", short_err(&e))),
    }
    let mut stream = TcpStream::from_std(sock.into());
    let entry = conns.vacant_entry();
    let key = entry.key();
    poll.registry()
        .register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| format!("register: {}", short_err(&e)))?;
    let room = if churn { (id % ctx.plan.rooms.max(1)) as u32 } else { ctx.plan.room_of(id) };
    let generation = ctx.rng.next_u64() as u32;
    entry.insert(Conn {
        sock: stream,
        generation,
        id,
        churn,
        room,
        room_name: ctx.plan.room_name(room).into_boxed_str(),
        st: St::Connecting,
        t_phase: now,
        t_start: now,
        ws_key: None,
        rbuf: Vec::new(),
        wbuf: Vec::new(),
        frag: None,
        tracker: SeqTracker::default(),
        joined_seq: 0,
        publisher: !churn && ctx.plan.is_publisher(id),
        inflight: VecDeque::new(),
        acked: 0,
        close_sent: false,
    });
    Ok(())
}

fn short_err(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::EADDRNOTAVAIL) => "no free source port/address (use --source-ips)".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files (use --workers)".into(),
        Some(libc::ETIMEDOUT) => "timed out".into(),
        Some(libc::EPIPE) => "broken pipe".into(),
        _ => e.kind().to_string(),
    }
}

/// Removes a connection, accounting for why it ended.
fn finish(conns: &mut Slab<Conn>, poll: &Poll, ctx: &mut Ctx, key: usize, end: End) {
    let Some(mut c) = conns.try_remove(key) else { return };
    let _ = poll.registry().deregister(&mut c.sock);
    let now = now_ns();
    if c.churn {
        ctx.churn_inflight = ctx.churn_inflight.saturating_sub(1);
        match end.0 {
            None => {
                ctx.m.c.cycles_done += 1;
                ctx.m.cycle.record_ns(now.saturating_sub(c.t_start));
            }
            Some(reason) => ctx.m.fail(format!("{}: {reason}", c.st.name())),
        }
        return;
    }
    if c.st.in_setup() {
        ctx.pending = ctx.pending.saturating_sub(1);
        ctx.m.fail(format!("{}: {}", c.st.name(), end.0.unwrap_or_else(|| "closed".into())));
    } else {
        // A ready connection lost mid-run.
        ctx.m.c.dropped += 1;
        *ctx.m.failures.entry(format!("dropped: {}", end.0.unwrap_or_else(|| "closed".into()))).or_default() += 1;
    }
}

#[allow(clippy::too_many_arguments)]
fn on_event(
    c: &mut Conn,
    ctx: &mut Ctx,
    buf: &mut [u8],
    readable: bool,
    read_closed: bool,
    writable: bool,
    key: usize,
) -> Result<bool, End> {
    let now = now_ns();
    if c.st == St::Connecting {
        match c.sock.take_error() {
            Ok(Some(e)) | Err(e) => return Err(End::fail(short_err(&e))),
            Ok(None) => {}
        }
        match c.sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(End::fail(short_err(&e))),
        }
        ctx.m.connect.record_ns(now.saturating_sub(c.t_phase));
        send_upgrade(c, ctx)?;
        c.st = St::Upgrading;
        c.t_phase = now;
    }
    if writable && !c.wbuf.is_empty() {
        flush(c)?;
    }
    if readable {
        return read_all(c, ctx, buf, read_closed, key);
    }
    Ok(false)
}

fn send_upgrade(c: &mut Conn, ctx: &mut Ctx) -> Result<(), End> {
    let key = ctx.rng.ws_key();
    let token = match ctx.auth {
        AuthMode::Header | AuthMode::Query => token_for(ctx, c),
        _ => None,
    };
    let mut req = Vec::with_capacity(512);
    match (ctx.auth, &token) {
        (AuthMode::Query, Some(t)) => {
            let sep = if ctx.path.contains('?') { '&' } else { '?' };
            let pq = format!("{}{sep}token={t}", ctx.path);
            framing::upgrade_request(&mut req, &ctx.host, &pq, &key, None);
        }
        (AuthMode::Header, Some(t)) => framing::upgrade_request(&mut req, &ctx.host, &ctx.path, &key, Some(t)),
        _ => framing::upgrade_request(&mut req, &ctx.host, &ctx.path, &key, None),
    }
    c.ws_key = Some(key.into_boxed_str());
    write_bytes(c, &req)
}

fn token_for(ctx: &Ctx, c: &Conn) -> Option<String> {
    match &ctx.tokens {
        TokenSource::Mint { .. } => {
            let user = match (c.churn, ctx.plan.churn) {
                (true, Some(ch)) => ctx.plan.user_name(c.id % ch.users.max(1)),
                _ => ctx.plan.user_name(c.id),
            };
            ctx.minter.as_ref().map(|m| m.mint(&user, crate::sys::now_unix_s()))
        }
        TokenSource::Fixed(t) => Some(t.clone()),
        TokenSource::None => None,
    }
}

/// Writes `bytes` now if nothing is queued, queueing what the socket does not take.
fn write_bytes(c: &mut Conn, bytes: &[u8]) -> Result<(), End> {
    if !c.wbuf.is_empty() {
        c.wbuf.extend_from_slice(bytes);
        return Ok(());
    }
    let mut done = 0;
    while done < bytes.len() {
        match c.sock.write(&bytes[done..]) {
            Ok(0) => return Err(End::fail("write returned 0")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(End::fail(short_err(&e))),
        }
    }
    c.wbuf.extend_from_slice(&bytes[done..]);
    Ok(())
}

fn flush(c: &mut Conn) -> Result<(), End> {
    let mut done = 0;
    while done < c.wbuf.len() {
        match c.sock.write(&c.wbuf[done..]) {
            Ok(0) => return Err(End::fail("write returned 0")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(End::fail(short_err(&e))),
        }
    }
    c.wbuf.drain(..done);
    Ok(())
}

/// Encodes a masked text frame with `ctx.payload` and writes it.
fn send_payload(c: &mut Conn, ctx: &mut Ctx) -> Result<(), End> {
    ctx.out.clear();
    framing::encode(&mut ctx.out, TEXT, &ctx.payload, Some(ctx.rng.mask()));
    let out = std::mem::take(&mut ctx.out);
    let r = write_bytes(c, &out);
    ctx.out = out;
    r
}

fn send_control(c: &mut Conn, ctx: &mut Ctx, opcode: OpCode, payload: &[u8]) -> Result<(), End> {
    ctx.out.clear();
    framing::encode(&mut ctx.out, opcode, payload, Some(ctx.rng.mask()));
    let out = std::mem::take(&mut ctx.out);
    let r = write_bytes(c, &out);
    ctx.out = out;
    r
}

fn send_json(c: &mut Conn, ctx: &mut Ctx, kind: &str) -> Result<(), End> {
    ctx.payload.clear();
    let _ = write!(ctx.payload, r#"{{"type":"{kind}","room":"{}"}}"#, c.room_name);
    send_payload(c, ctx)
}

/// Reads everything available and handles each complete frame.
/// Reads what is available, at most `READS_PER_EVENT` times; `Ok(true)` when that budget ran out
/// with the socket possibly still readable (the caller comes back after serving the others).
fn read_all(c: &mut Conn, ctx: &mut Ctx, buf: &mut [u8], read_closed: bool, key: usize) -> Result<bool, End> {
    for _ in 0..READS_PER_EVENT {
        let n = match c.sock.read(buf) {
            Ok(0) => {
                return Err(if c.st == St::Closing && c.close_sent {
                    End(None)
                } else {
                    End::fail("closed by server")
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(if c.st == St::Closing && c.close_sent { End(None) } else { End::fail(short_err(&e)) });
            }
        };
        let now = now_ns();
        if c.rbuf.is_empty() {
            let used = process(c, ctx, &buf[..n], now, key)?;
            c.rbuf.extend_from_slice(&buf[used..n]);
        } else {
            c.rbuf.extend_from_slice(&buf[..n]);
            let data = std::mem::take(&mut c.rbuf);
            let used = process(c, ctx, &data, now, key);
            let mut data = data;
            match used {
                Ok(used) => {
                    data.drain(..used);
                    c.rbuf = data;
                }
                Err(e) => return Err(e),
            }
        }
        // A short read drained the socket; edge-triggered readiness will report new data.
        if n < buf.len() && !read_closed {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Handles the complete frames at the start of `data`; returns the bytes consumed.
fn process(c: &mut Conn, ctx: &mut Ctx, data: &[u8], now: u64, key: usize) -> Result<usize, End> {
    let mut pos = 0;
    if c.st == St::Upgrading {
        let wskey = c.ws_key.as_deref().unwrap_or("");
        match framing::parse_upgrade_response(data, wskey) {
            Ok(None) => return Ok(0),
            Ok(Some(len)) => {
                ctx.m.upgrade.record_ns(now.saturating_sub(c.t_phase));
                c.ws_key = None;
                c.st = St::Welcome;
                c.t_phase = now;
                pos = len;
            }
            Err(e) => return Err(End::fail(e.to_string())),
        }
    }
    while pos < data.len() {
        let f = match framing::parse_frame(&data[pos..]) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(End::fail(e.to_string())),
        };
        let payload = &data[pos + f.payload_start..pos + f.total_len()];
        pos += f.total_len();
        let unmasked;
        let payload = match f.header.mask {
            // Servers must not mask; tolerate it anyway.
            Some(mask) => {
                let mut p = payload.to_vec();
                framing::apply_mask(&mut p, mask);
                unmasked = p;
                &unmasked[..]
            }
            None => payload,
        };
        match f.header.opcode {
            OpCode::Data(Data::Text) if f.header.is_final => on_text(c, ctx, payload, now, key)?,
            OpCode::Data(Data::Text) => c.frag = Some(payload.to_vec()),
            OpCode::Data(Data::Continue) => {
                let Some(mut frag) = c.frag.take() else { return Err(End::fail("stray continuation frame")) };
                frag.extend_from_slice(payload);
                if frag.len() > framing::MAX_PAYLOAD as usize {
                    return Err(End::fail("fragmented message too large"));
                }
                if f.header.is_final {
                    on_text(c, ctx, &frag, now, key)?;
                } else {
                    c.frag = Some(frag);
                }
            }
            OpCode::Data(_) => ctx.m.c.unexpected += 1,
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping) => {
                ctx.m.c.pings += 1;
                send_control(c, ctx, PONG, payload)?;
            }
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Close) => {
                let code = framing::close_code(payload);
                *ctx.m.closes.entry(code).or_default() += 1;
                if c.st == St::Closing && c.close_sent {
                    // The server answered our close; it hangs up next (so TIME_WAIT is its own).
                    continue;
                }
                let _ = send_control(c, ctx, CLOSE, &payload[..payload.len().min(2)]);
                return Err(End::fail(format!("server closed with {code}")));
            }
            OpCode::Control(_) => {}
        }
    }
    Ok(pos)
}

fn on_text(c: &mut Conn, ctx: &mut Ctx, payload: &[u8], now: u64, key: usize) -> Result<(), End> {
    let Ok(f) = jsonscan::scan(payload) else {
        ctx.m.c.unexpected += 1;
        return Ok(());
    };
    match f.kind {
        b"message" if c.st == St::Ready => {
            ctx.m.c.received += 1;
            if let Some(seq) = f.seq {
                ctx.m.c.gaps += c.tracker.observe(seq);
            }
            if let Some(t) = f.t
                && ctx.start != 0
            {
                let offset = t.saturating_sub(ctx.start);
                let interval = (offset / ctx.interval_ns) as usize;
                ctx.m.record_delivery(now.saturating_sub(t), interval, Some(ctx.plan.step_of_send(offset)));
            }
        }
        b"ack" if c.st == St::Ready => {
            let Some((sent_at, step)) = c.inflight.pop_front() else {
                ctx.m.c.unexpected += 1;
                return Ok(());
            };
            ctx.m.c.acked += 1;
            c.acked += 1;
            ctx.m.ack.record_ns(now.saturating_sub(sent_at));
            let recipients = ctx.plan.recipients(c.room);
            ctx.m.c.expected += recipients;
            if let Some(s) = ctx.m.steps.get_mut(step as usize) {
                s.acked += 1;
                s.expected += recipients;
            }
            if let Some(seq) = f.seq {
                ctx.m.c.gaps += c.tracker.observe(seq);
            }
        }
        b"welcome" if c.st == St::Welcome => {
            ctx.m.welcome.record_ns(now.saturating_sub(c.t_phase));
            c.t_phase = now;
            if ctx.auth == AuthMode::Frame {
                let token = token_for(ctx, c).unwrap_or_default();
                ctx.payload.clear();
                let _ = write!(ctx.payload, r#"{{"type":"auth","token":"{token}"}}"#);
                send_payload(c, ctx)?;
                c.st = St::Authing;
            } else {
                send_json(c, ctx, "join")?;
                c.st = St::Joining;
            }
        }
        b"authenticated" if c.st == St::Authing => {
            c.t_phase = now;
            send_json(c, ctx, "join")?;
            c.st = St::Joining;
        }
        b"joined" if c.st == St::Joining => {
            ctx.m.join.record_ns(now.saturating_sub(c.t_phase));
            c.joined_seq = f.seq.unwrap_or(0);
            c.tracker = SeqTracker::new(c.joined_seq);
            c.t_phase = now;
            if c.churn {
                c.st = St::Holding;
                let hold = ctx.plan.churn.map_or(0, |ch| ch.hold_ms) * 1_000_000;
                if hold == 0 {
                    return leave(c, ctx, now);
                }
                ctx.timers.push(Reverse((now + hold, key, c.generation, T_HOLD)));
            } else {
                c.st = St::Ready;
                ctx.pending = ctx.pending.saturating_sub(1);
                ctx.m.c.ready += 1;
                if c.publisher && ctx.start != 0 && now < ctx.end {
                    // Joined after go (only when setup ran late): start sending now.
                    ctx.timers.push(Reverse((now, key, c.generation, T_SEND)));
                }
            }
        }
        b"left" if c.st == St::Leaving => {
            ctx.m.leave.record_ns(now.saturating_sub(c.t_phase));
            c.t_phase = now;
            send_control(c, ctx, CLOSE, &1000u16.to_be_bytes())?;
            c.close_sent = true;
            c.st = St::Closing;
        }
        b"error" => {
            let code = f.code.map_or("(none)", |c| std::str::from_utf8(c).unwrap_or("(bad)"));
            *ctx.m.server_errors.entry(code.to_string()).or_default() += 1;
            if c.st == St::Ready && c.inflight.pop_front().is_some() {
                ctx.m.c.send_errors += 1;
            } else if c.st != St::Ready {
                return Err(End::fail(format!("error {code}")));
            }
        }
        b"message" | b"presence" | b"pong" | b"typing" | b"notification" | b"edited" | b"deleted" | b"reaction" => {}
        _ => ctx.m.c.unexpected += 1,
    }
    Ok(())
}

/// A churn connection's hold is over: leave the room.
fn leave(c: &mut Conn, ctx: &mut Ctx, now: u64) -> Result<(), End> {
    if c.st != St::Holding {
        return Ok(());
    }
    c.t_phase = now;
    send_json(c, ctx, "leave")?;
    c.st = St::Leaving;
    Ok(())
}

/// A scheduled send is due: send it (or skip it when backed up) and schedule the next.
fn publish(c: &mut Conn, ctx: &mut Ctx, key: usize, due: u64, now: u64) -> Result<(), End> {
    if c.st != St::Ready || due >= ctx.end {
        return Ok(());
    }
    let mut due = due;
    if now.saturating_sub(due) > MAX_LAG_NS {
        // Too far behind: skip the missed sends rather than burst them.
        let interval = interval_ns(ctx.plan.publisher_rate(ctx.plan.step_at(due - ctx.start).unwrap_or(0)));
        let missed = (now - due) / interval;
        ctx.m.c.skipped += missed;
        due += missed * interval;
    }
    // Pacing follows the schedule; attribution follows the actual send time, as receivers see it.
    let sched_step = ctx.plan.step_of_send(due.saturating_sub(ctx.start));
    if c.wbuf.len() > MAX_WBUF || c.inflight.len() >= MAX_INFLIGHT {
        ctx.m.c.skipped += 1;
    } else {
        ctx.m.send_lag.record_ns(now.saturating_sub(due));
        let t = now_ns();
        let step = ctx.plan.step_of_send(t.saturating_sub(ctx.start));
        ctx.payload.clear();
        let _ = write!(ctx.payload, r#"{{"type":"send","room":"{}","body":{{"t":{t}"#, c.room_name);
        if !ctx.padding.is_empty() {
            let _ = write!(ctx.payload, r#","p":"{}""#, ctx.padding);
        }
        ctx.payload.extend_from_slice(b"}}");
        send_payload(c, ctx)?;
        c.inflight.push_back((t, step as u32));
        ctx.m.c.sent += 1;
        if let Some(s) = ctx.m.steps.get_mut(step) {
            s.sent += 1;
        }
    }
    let next = due + interval_ns(ctx.plan.publisher_rate(sched_step));
    if next < ctx.end {
        ctx.timers.push(Reverse((next, key, c.generation, T_SEND)));
    }
    Ok(())
}

/// Feeds synthetic `message` frames through the real receive path (frame parse, JSON scan, seq
/// tracking, histograms) on one connected loopback socket that carries no traffic; returns the
/// rate in messages per second and the cost per message in ns.
pub fn bench_recv(messages: u64) -> io::Result<(f64, f64)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let std_sock = std::net::TcpStream::connect(listener.local_addr()?)?;
    let _peer = listener.accept()?;
    std_sock.set_nonblocking(true)?;
    let plan = Plan {
        kind: crate::scenario::Kind::Fanout,
        connections: 2,
        rooms: 1,
        publishers: 1,
        steps: vec![crate::scenario::Step { rate: 1.0, duration_ms: 3_600_000 }],
        churn: None,
        ramp: None,
        body_bytes: 32,
        room_prefix: "bench-".into(),
        user_prefix: "u".into(),
        interval_ms: 1000,
    };
    let start = now_ns();
    let mut ctx = Ctx {
        plan: plan.clone(),
        auth: AuthMode::None,
        tokens: TokenSource::None,
        minter: None,
        host: String::new(),
        path: String::new(),
        m: Metrics::new(1),
        rng: Rng::new(1),
        out: Vec::new(),
        payload: Vec::new(),
        padding: String::new(),
        timers: BinaryHeap::new(),
        start,
        end: start + 3_600_000_000_000,
        interval_ns: 1_000_000_000,
        pending: 0,
        churn_inflight: 0,
    };
    let mut c = Conn {
        sock: TcpStream::from_std(std_sock),
        generation: 0,
        id: 1,
        churn: false,
        room: 0,
        room_name: "bench-0".into(),
        st: St::Ready,
        t_phase: start,
        t_start: start,
        ws_key: None,
        rbuf: Vec::new(),
        wbuf: Vec::new(),
        frag: None,
        tracker: SeqTracker::new(0),
        joined_seq: 0,
        publisher: false,
        inflight: VecDeque::new(),
        acked: 0,
        close_sent: false,
    };
    // One read's worth of frames, as a server writes them (unmasked), seqs continuing per batch.
    const PER_BATCH: u64 = 400;
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut seq = 0u64;
    let build = |batch: &mut Vec<u8>, seq: &mut u64| {
        batch.clear();
        let mut payload = Vec::with_capacity(256);
        for _ in 0..PER_BATCH {
            *seq += 1;
            payload.clear();
            let _ = write!(
                payload,
                r#"{{"type":"message","room":"bench-0","seq":{},"from":"lt0","body":{{"t":{},"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}},"ts":{}}}"#,
                *seq,
                now_ns(),
                now_ns() / 1_000_000
            );
            framing::encode(batch, TEXT, &payload, None);
        }
    };
    let batches = messages.div_ceil(PER_BATCH);
    // Build outside the timed loop: a fresh batch every 64 so seqs stay realistic without the
    // formatting dominating the measurement.
    let mut prepared = Vec::new();
    for _ in 0..64 {
        build(&mut batch, &mut seq);
        prepared.push(batch.clone());
    }
    let t0 = Instant::now();
    for b in 0..batches {
        let data = &prepared[(b % 64) as usize];
        let now = now_ns();
        let used = process(&mut c, &mut ctx, data, now, 0).map_err(|e| io::Error::other(e.0.unwrap_or_default()))?;
        debug_assert_eq!(used, data.len());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let n = batches * PER_BATCH;
    if ctx.m.c.received != n {
        return Err(io::Error::other("the receive path dropped messages"));
    }
    Ok((n as f64 / elapsed, elapsed * 1e9 / n as f64))
}
