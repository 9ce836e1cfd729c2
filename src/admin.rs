//! The admin Unix socket (mode 0600, same-user peers only): one command per line in, one JSON
//! object per line out, every reply with `"ok"`. Client threads read lines; one executor thread
//! runs commands, asking shards through their queues. It never touches a connection itself.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::bus::{self, AdminMsg, Answer, HomeMsg, Origin, Publish, Query, ReplyTo, ShardMsg};
use crate::control::{Controller, push_until_taken};
use crate::metrics;
use crate::names;
use crate::server::Shared;

/// Longest command line accepted.
pub const MAX_LINE: usize = 4096;
/// How long a command waits for the shards' answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 16;
/// An admin client silent this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Rooms listed by `rooms` at most.
const MAX_ROOMS_LISTED: usize = 1000;

const HELP: &[&str] = &[
    "stats                  the numbers of /stats",
    "rooms [PREFIX]         rooms with members, connections and last seq",
    "room NAME              one room: its users, connections and last seq",
    "user NAME              a user's connections",
    "kick USER [REASON]     close a user's connections (1008)",
    "publish ROOM TEXT      store and send a message as `system`",
    "reload                 re-read the configuration (keys, limits, log level)",
    "drain                  stop taking connections, close the rest after server.drain_grace, exit",
    "shutdown               like drain, without the grace period",
    "log-level LEVEL        off, error, warn, info, debug or trace",
    "help                   this list",
];

#[derive(Debug)]
pub enum AdminError {
    InUse(PathBuf),
    NotASocket(PathBuf),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::InUse(p) => write!(f, "admin socket {} is in use by a running roomcast", p.display()),
            AdminError::NotASocket(p) => write!(f, "admin socket path {} exists and is not a socket", p.display()),
            AdminError::Io(p, e) => write!(f, "admin socket {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for AdminError {}

/// Binds the socket with mode 0600 from the start (bound under a temporary name, then renamed),
/// replacing a stale socket file but refusing one a live daemon still answers on.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let io_err = |e| AdminError::Io(path.to_path_buf(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            return Err(AdminError::NotASocket(path.to_path_buf()));
        }
        Ok(_) if UnixStream::connect(path).is_ok() => return Err(AdminError::InUse(path.to_path_buf())),
        Ok(_) => std::fs::remove_file(path).map_err(io_err)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let temp = path.with_file_name(format!(".admin-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(io_err)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    std::fs::rename(&temp, path).map_err(io_err)?;
    Ok(listener)
}

type Job = (String, Sender<Value>);

/// Accepts admin clients; each gets a reader thread, and all commands run on one executor.
pub fn run(listener: UnixListener, shared: Arc<Shared>, control: Arc<Controller>) {
    let (jobs, queue) = mpsc::channel::<Job>();
    let executor = std::thread::Builder::new().name("roomcast-admin-exec".into()).spawn(move || {
        let mut exec = Executor { shared, control, next_id: 0 };
        exec.shared.admin.register_consumer();
        for (line, reply) in queue {
            let _ = reply.send(exec.execute(&line));
        }
    });
    if let Err(e) = executor {
        log::error!("admin socket disabled: cannot start its thread: {e}");
        return;
    }
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if !same_user(&stream) || clients.load(Ordering::Acquire) >= MAX_CLIENTS {
            continue;
        }
        clients.fetch_add(1, Ordering::AcqRel);
        let (jobs, clients) = (jobs.clone(), clients.clone());
        let spawned = std::thread::Builder::new().name("roomcast-admin".into()).spawn(move || {
            if let Err(e) = serve_client(stream, &jobs) {
                log::debug!("admin client: {e}");
            }
            clients.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            log::warn!("admin socket: cannot start a client thread");
        }
    }
}

/// Only our own user (or root) may command the daemon, whatever the file mode says.
fn same_user(stream: &UnixStream) -> bool {
    match crate::sys::peer_uid(stream) {
        Ok(uid) => uid == 0 || uid == crate::sys::effective_uid(),
        Err(e) => {
            log::warn!("admin socket: cannot read peer credentials: {e}");
            false
        }
    }
}

fn serve_client(stream: UnixStream, jobs: &Sender<Job>) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64 + 1);
    let mut line = String::new();
    loop {
        line.clear();
        reader.set_limit(MAX_LINE as u64 + 1);
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let reply = if line.len() > MAX_LINE {
            json!({ "ok": false, "error": format!("command longer than {MAX_LINE} bytes") })
        } else {
            let (tx, rx) = mpsc::channel();
            if jobs.send((line.trim().to_string(), tx)).is_err() {
                return Ok(());
            }
            rx.recv().unwrap_or_else(|_| json!({ "ok": false, "error": "daemon is stopping" }))
        };
        writeln!(writer, "{reply}")?;
        if line.len() > MAX_LINE {
            return Ok(());
        }
    }
}

struct Executor {
    shared: Arc<Shared>,
    control: Arc<Controller>,
    next_id: u64,
}

impl Executor {
    fn execute(&mut self, line: &str) -> Value {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let result = match (command, args.as_slice()) {
            ("help", []) => Ok(json!({ "commands": HELP })),
            ("stats", []) => self.stats(),
            ("rooms", []) => self.rooms(""),
            ("rooms", [prefix]) => self.rooms(prefix),
            ("room", [name]) => self.room(name),
            ("user", [name]) => self.user(name),
            ("kick", [user, reason @ ..]) => self.kick(user, &reason.join(" ")),
            ("publish", [room, _, ..]) => {
                let text = line.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
                self.publish(room, &text)
            }
            ("reload", []) => self.control.reload().map(|restart| json!({ "restart_needed_for": restart })),
            ("drain", []) => {
                let grace = self.control.config().server.drain_grace;
                self.control.drain(grace);
                Ok(json!({ "draining": true, "grace_ms": grace.as_millis() as u64 }))
            }
            ("shutdown", []) => {
                self.control.shutdown();
                Ok(json!({ "stopping": true }))
            }
            ("log-level", [level]) => match level.parse::<log::LevelFilter>() {
                Ok(level) => {
                    self.control.set_log_level(level);
                    Ok(json!({ "level": level.to_string().to_lowercase() }))
                }
                Err(_) => Err(format!("unknown level {level:?}: off, error, warn, info, debug or trace")),
            },
            ("", _) => Err("empty command; try `help`".to_string()),
            (known, _) if HELP.iter().any(|h| h.split_whitespace().next() == Some(known)) => {
                Err(format!("wrong arguments for `{known}`; try `help`"))
            }
            (other, _) => Err(format!("unknown command {other:?}; try `help`")),
        };
        match result {
            Ok(Value::Object(mut fields)) => {
                fields.insert("ok".into(), Value::Bool(true));
                Value::Object(fields)
            }
            Ok(other) => json!({ "ok": true, "result": other }),
            Err(error) => json!({ "ok": false, "error": error }),
        }
    }

    fn stats(&mut self) -> Result<Value, String> {
        let answers = self.ask_all(Query::Stats)?;
        let parts: Vec<_> =
            answers.iter().filter_map(|a| if let Answer::Stats(p) = a { Some(p) } else { None }).collect();
        Ok(metrics::stats_json(&self.shared, &parts))
    }

    fn rooms(&mut self, prefix: &str) -> Result<Value, String> {
        let answers = self.ask_all(Query::Rooms { prefix: prefix.into() })?;
        let mut rooms: Vec<_> =
            answers.into_iter().flat_map(|a| if let Answer::Rooms(r) = a { r } else { Vec::new() }).collect();
        rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let truncated = rooms.len() > MAX_ROOMS_LISTED;
        rooms.truncate(MAX_ROOMS_LISTED);
        let rooms: Vec<Value> = rooms
            .iter()
            .map(|r| json!({ "name": &*r.name, "members": r.members, "connections": r.connections, "seq": r.seq }))
            .collect();
        Ok(json!({ "rooms": rooms, "truncated": truncated }))
    }

    fn room(&mut self, name: &str) -> Result<Value, String> {
        let home = bus::home_shard(name, self.shared.shard_count());
        let answers = self.ask(&[home], Query::Room { name: name.into() })?;
        match answers.into_iter().next() {
            Some(Answer::Room(Some(room))) => Ok(json!({
                "room": &*room.summary.name,
                "members": room.users.iter().map(|u| &**u).collect::<Vec<_>>(),
                "connections": room.summary.connections,
                "seq": room.summary.seq,
            })),
            _ => Err(format!("no room {name:?}")),
        }
    }

    fn user(&mut self, name: &str) -> Result<Value, String> {
        let answers = self.ask_all(Query::User { name: name.into() })?;
        let connections: Vec<Value> = answers
            .into_iter()
            .flat_map(|a| if let Answer::User(c) = a { c } else { Vec::new() })
            .map(|c| {
                json!({
                    "session": c.session,
                    "shard": c.shard,
                    "peer": c.peer.to_string(),
                    "rooms": c.rooms.iter().map(|r| &**r).collect::<Vec<_>>(),
                    "connected_s": c.connected_s,
                })
            })
            .collect();
        Ok(json!({ "user": name, "connections": connections }))
    }

    fn kick(&mut self, user: &str, reason: &str) -> Result<Value, String> {
        let reason = if reason.is_empty() { "kicked" } else { reason };
        // A close reason must fit a control frame (125 bytes, 2 of them the code).
        let reason: String = reason
            .chars()
            .scan(0, |n, c| {
                *n += c.len_utf8();
                (*n <= 123).then_some(c)
            })
            .collect();
        let answers = self.ask_all(Query::Disconnect { user: user.into(), reason: reason.into() })?;
        let closed: usize = answers.iter().map(|a| if let Answer::Count(n) = a { *n } else { 0 }).sum();
        Ok(json!({ "closed": closed }))
    }

    fn publish(&mut self, room: &str, text: &str) -> Result<Value, String> {
        if !names::is_valid_room_name(room) || matches!(names::room_kind(room), names::RoomKind::MalformedDirect) {
            return Err(format!("invalid room name {room:?}"));
        }
        let body = RawValue::from_string(serde_json::to_string(text).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let id = self.next_id();
        let publish = Publish {
            room: room.into(),
            from: crate::api::SYSTEM_USER.into(),
            name: None,
            origin: Origin::Admin(id),
            body,
            reply_to: None,
        };
        let inbox = &self.shared.shard_inboxes[bus::home_shard(room, self.shared.shard_count())];
        push_until_taken(inbox, ShardMsg::Home(HomeMsg::Publish(publish)));
        inbox.wake();
        match self.wait(id, 1)?.pop() {
            Some(AdminMsg::Published { result: Ok((room, seq, ts)), .. }) => {
                Ok(json!({ "room": &*room, "seq": seq, "ts": ts }))
            }
            Some(AdminMsg::Published { result: Err(why), .. }) => Err(why.to_string()),
            _ => Err("no answer".into()),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn ask_all(&mut self, query: Query) -> Result<Vec<Answer>, String> {
        let all: Vec<usize> = (0..self.shared.shard_count()).collect();
        self.ask(&all, query)
    }

    fn ask(&mut self, shards: &[usize], query: Query) -> Result<Vec<Answer>, String> {
        let id = self.next_id();
        for &shard in shards {
            let inbox = &self.shared.shard_inboxes[shard];
            push_until_taken(inbox, ShardMsg::Query { reply_to: ReplyTo::Admin, id, query: query.clone() });
            inbox.wake();
        }
        let answers = self.wait(id, shards.len())?;
        Ok(answers
            .into_iter()
            .filter_map(|m| if let AdminMsg::Answer { answer, .. } = m { Some(answer) } else { None })
            .collect())
    }

    /// Collects `count` messages for `id`, dropping late answers to earlier commands.
    fn wait(&mut self, id: u64, count: usize) -> Result<Vec<AdminMsg>, String> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            match self.shared.admin.pop() {
                Some(msg) if message_id(&msg) == id => got.push(msg),
                Some(_) => {}
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err("the daemon did not answer in time".into());
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
        Ok(got)
    }
}

fn message_id(msg: &AdminMsg) -> u64 {
    match msg {
        AdminMsg::Answer { id, .. } | AdminMsg::Published { id, .. } => *id,
    }
}

/// `roomcast admin`: sends one command and returns the reply line.
pub fn send_command(socket: &Path, command: &str) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e} (is roomcast running?)", socket.display()))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT * 2)).map_err(|e| e.to_string())?;
    writeln!(stream, "{command}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("no reply: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("unreadable reply: {e}"))
}
