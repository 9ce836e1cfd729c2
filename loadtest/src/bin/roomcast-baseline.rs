//! roomcast-baseline, the speed-of-light server: upgrade, no auth, join/leave, and send -> one shared frame
//! to every other member plus an ack, seqs per room; it must not store history or parse JSON beyond fields.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use roomcast_loadtest::framing::{self, CLOSE, PING, PONG, TEXT};
use roomcast_loadtest::jsonscan;

#[derive(Parser)]
#[command(name = "roomcast-baseline", about = "Minimal roomcast-compatible fan-out server, for comparison")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

const LISTENER: Token = Token(usize::MAX);
/// A client whose queue passes this is dropped (a slow consumer).
const MAX_QUEUE_BYTES: usize = 64 * 1024 * 1024;

struct Client {
    sock: TcpStream,
    upgraded: bool,
    rbuf: Vec<u8>,
    out: VecDeque<Rc<[u8]>>,
    out_bytes: usize,
    /// Bytes of `out[0]` already written.
    front: usize,
    rooms: Vec<u32>,
    closing: bool,
    dirty: bool,
}

struct Room {
    name: Box<str>,
    seq: u64,
    members: Vec<usize>,
}

struct Server {
    clients: Slab<Client>,
    rooms: Vec<Room>,
    room_ids: HashMap<Box<[u8]>, u32>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    sessions: u64,
}

fn frame(payload: &[u8]) -> Rc<[u8]> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    framing::encode(&mut f, TEXT, payload, None);
    f.into()
}

fn now_ms() -> u64 {
    roomcast_loadtest::sys::now_ns() / 1_000_000
}

impl Server {
    fn queue(&mut self, key: usize, bytes: Rc<[u8]>) {
        let Some(c) = self.clients.get_mut(key) else { return };
        c.out_bytes += bytes.len();
        c.out.push_back(bytes);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    fn reply(&mut self, key: usize, json: &str) {
        self.queue(key, frame(json.as_bytes()));
    }

    fn room_id(&mut self, name: &[u8]) -> u32 {
        if let Some(&id) = self.room_ids.get(name) {
            return id;
        }
        let id = self.rooms.len() as u32;
        self.rooms.push(Room { name: String::from_utf8_lossy(name).into(), seq: 0, members: Vec::new() });
        self.room_ids.insert(name.into(), id);
        id
    }

    /// Handles one text frame from `key`.
    fn on_text(&mut self, key: usize, payload: &[u8]) {
        let Ok(f) = jsonscan::scan(payload) else {
            return self.reply(key, r#"{"type":"error","code":"bad_json","message":"not JSON"}"#);
        };
        let room = f.room.filter(|r| !r.is_empty() && !r.contains(&b'"') && !r.contains(&b'\\'));
        match (f.kind, room) {
            (b"join", Some(name)) => {
                let id = self.room_id(name);
                let joined = self.clients.get(key).is_some_and(|c| c.rooms.contains(&id));
                if !joined {
                    self.rooms[id as usize].members.push(key);
                    if let Some(c) = self.clients.get_mut(key) {
                        c.rooms.push(id);
                    }
                }
                let r = &self.rooms[id as usize];
                let msg =
                    format!(r#"{{"type":"joined","room":"{}","seq":{},"members":{}}}"#, r.name, r.seq, r.members.len());
                self.reply(key, &msg);
            }
            (b"leave", Some(name)) => {
                if let Some(&id) = self.room_ids.get(name) {
                    self.leave(key, id);
                }
                let msg = format!(r#"{{"type":"left","room":"{}"}}"#, String::from_utf8_lossy(name));
                self.reply(key, &msg);
            }
            (b"send", Some(name)) => {
                let Some(&id) = self.room_ids.get(name) else {
                    return self.reply(key, r#"{"type":"error","code":"not_in_room","message":"join first"}"#);
                };
                if !self.clients.get(key).is_some_and(|c| c.rooms.contains(&id)) {
                    return self.reply(key, r#"{"type":"error","code":"not_in_room","message":"join first"}"#);
                }
                let ts = now_ms();
                let room = &mut self.rooms[id as usize];
                room.seq += 1;
                let seq = room.seq;
                // The message frame is built once and shared by every recipient.
                self.scratch.clear();
                let _ = write!(
                    self.scratch,
                    r#"{{"type":"message","room":"{}","seq":{seq},"from":"baseline","body":"#,
                    room.name
                );
                self.scratch.extend_from_slice(f.body.unwrap_or(b"null"));
                let _ = write!(self.scratch, r#","ts":{ts}}}"#);
                let shared = frame(&self.scratch);
                let ack = frame(format!(r#"{{"type":"ack","room":"{}","seq":{seq},"ts":{ts}}}"#, room.name).as_bytes());
                let members = std::mem::take(&mut self.rooms[id as usize].members);
                for &m in &members {
                    if m != key {
                        self.queue(m, shared.clone());
                    }
                }
                self.rooms[id as usize].members = members;
                self.queue(key, ack);
            }
            (b"ping", _) => {
                let msg = format!(r#"{{"type":"pong","ts":{}}}"#, now_ms());
                self.reply(key, &msg);
            }
            (b"join" | b"leave" | b"send", None) => {
                self.reply(key, r#"{"type":"error","code":"bad_request","message":"room missing"}"#)
            }
            _ => self.reply(key, r#"{"type":"error","code":"unknown_type","message":"not supported by the baseline"}"#),
        }
    }

    fn leave(&mut self, key: usize, id: u32) {
        let members = &mut self.rooms[id as usize].members;
        if let Some(pos) = members.iter().position(|&m| m == key) {
            members.swap_remove(pos);
        }
        if let Some(c) = self.clients.get_mut(key) {
            c.rooms.retain(|&r| r != id);
        }
    }

    fn drop_client(&mut self, poll: &Poll, key: usize) {
        let rooms = self.clients.get(key).map(|c| c.rooms.clone()).unwrap_or_default();
        for id in rooms {
            self.leave(key, id);
        }
        if let Some(mut c) = self.clients.try_remove(key) {
            let _ = poll.registry().deregister(&mut c.sock);
        }
    }

    /// Reads and handles everything available; returns false when the client must go.
    fn on_readable(&mut self, key: usize, buf: &mut [u8]) -> bool {
        loop {
            let Some(c) = self.clients.get_mut(key) else { return false };
            let n = match c.sock.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            c.rbuf.extend_from_slice(&buf[..n]);
            if !self.process(key) {
                return false;
            }
        }
    }

    fn process(&mut self, key: usize) -> bool {
        let Some(c) = self.clients.get_mut(key) else { return false };
        let mut data = std::mem::take(&mut c.rbuf);
        let mut pos = 0;
        if !c.upgraded {
            match framing::parse_upgrade_request(&data) {
                Ok(None) => {
                    c.rbuf = data;
                    return true;
                }
                Ok(Some((len, ws_key))) => {
                    c.upgraded = true;
                    pos = len;
                    self.sessions += 1;
                    self.queue(key, framing::upgrade_response(&ws_key).into());
                    let welcome =
                        format!(r#"{{"type":"welcome","session":"b{}","user":null,"heartbeat_ms":0}}"#, self.sessions);
                    self.reply(key, &welcome);
                }
                Err(_) => {
                    self.queue(key, Rc::from(&b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"[..]));
                    return true;
                }
            }
        }
        let mut keep = true;
        while pos < data.len() {
            let f = match framing::parse_frame(&data[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    keep = false;
                    break;
                }
            };
            let (start, end) = (pos + f.payload_start, pos + f.total_len());
            pos = end;
            let Some(mask) = f.header.mask else {
                // Unmasked client frames are a protocol error (close 1002).
                self.queue(key, close_frame(1002));
                keep = false;
                break;
            };
            framing::apply_mask(&mut data[start..end], mask);
            let payload = &data[start..end];
            match f.header.opcode {
                op if op == TEXT => self.on_text(key, payload),
                op if op == PING => {
                    let mut pong = Vec::new();
                    framing::encode(&mut pong, PONG, payload, None);
                    self.queue(key, pong.into());
                }
                op if op == CLOSE => {
                    let code = framing::close_code(payload);
                    self.queue(key, close_frame(if code == 1005 { 1000 } else { code }));
                    if let Some(c) = self.clients.get_mut(key) {
                        c.closing = true;
                    }
                    break;
                }
                _ => {}
            }
        }
        if let Some(c) = self.clients.get_mut(key) {
            data.drain(..pos.min(data.len()));
            c.rbuf = data;
        }
        keep
    }

    /// Writes queued frames with writev; returns false when the client must go.
    fn flush(&mut self, key: usize) -> bool {
        let Some(c) = self.clients.get_mut(key) else { return false };
        c.dirty = false;
        while !c.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut n = 0;
            for (i, f) in c.out.iter().take(64).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &f[c.front..] } else { f });
                n += 1;
            }
            let mut written = match c.sock.write_vectored(&slices[..n]) {
                Ok(0) => return false,
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            c.out_bytes -= written;
            while written > 0 {
                let Some(front) = c.out.front() else { break };
                let left = front.len() - c.front;
                if written < left {
                    c.front += written;
                    written = 0;
                } else {
                    written -= left;
                    c.out.pop_front();
                    c.front = 0;
                }
            }
        }
        if c.closing && c.out.is_empty() {
            // Close handshake answered: hang up first, as a server should.
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            return false;
        }
        c.out_bytes <= MAX_QUEUE_BYTES
    }
}

fn close_frame(code: u16) -> Rc<[u8]> {
    let mut f = Vec::new();
    framing::encode(&mut f, CLOSE, &code.to_be_bytes(), None);
    f.into()
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    roomcast_loadtest::sys::raise_open_file_limit();
    let mut listener = TcpListener::bind(args.listen)?;
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("roomcast listening on http://{} (1 shards, pid {})", listener.local_addr()?, std::process::id());
    let mut server = Server {
        clients: Slab::new(),
        rooms: Vec::new(),
        room_ids: HashMap::new(),
        dirty: Vec::new(),
        scratch: Vec::with_capacity(1024),
        sessions: 0,
    };
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            let entry = server.clients.vacant_entry();
                            let key = entry.key();
                            if poll
                                .registry()
                                .register(&mut sock, Token(key), Interest::READABLE | Interest::WRITABLE)
                                .is_ok()
                            {
                                entry.insert(Client {
                                    sock,
                                    upgraded: false,
                                    rbuf: Vec::new(),
                                    out: VecDeque::new(),
                                    out_bytes: 0,
                                    front: 0,
                                    rooms: Vec::new(),
                                    closing: false,
                                    dirty: false,
                                });
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // Out of descriptors or similar: try again on the next event.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = ev.token().0;
            if !server.clients.contains(key) {
                continue;
            }
            let mut alive = true;
            if ev.is_readable() || ev.is_error() {
                alive = server.on_readable(key, &mut buf);
            }
            if alive && ev.is_writable() && server.clients.get(key).is_some_and(|c| !c.out.is_empty()) {
                alive = server.flush(key);
            }
            if !alive {
                server.drop_client(&poll, key);
            }
        }
        // Flush everyone who got output this turn, once each (corked writes).
        let dirty = std::mem::take(&mut server.dirty);
        for key in &dirty {
            if server.clients.get(*key).is_some_and(|c| c.dirty) && !server.flush(*key) {
                server.drop_client(&poll, *key);
            }
        }
        server.dirty = dirty;
        server.dirty.clear();
    }
}
