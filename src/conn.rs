//! One client connection's state machine: HTTP head -> open WebSocket session -> closing, moving
//! only forward, with its socket, outgoing queue and deadlines. It reads and writes its own socket;
//! it never looks at rooms or other connections (the shard does that with what it returns).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tungstenite::Message;
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::WebSocketContext;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::Identity;
use crate::http::Endpoint;
use crate::timer::Millis;
use crate::transport::Transport;
use crate::ws::{self, Flushed, FrameTracker, OutQueue, Scratch, WsIo};

/// How long a closing connection may take to finish the close handshake and hang up.
pub const CLOSE_GRACE_MS: Millis = 2_000;
/// Socket reads a closing connection may do per turn while we discard what it still sends.
const DISCARD_READS_PER_TURN: usize = 4;

/// A WebSocket ping with no payload, shared by every heartbeat.
pub static PING_FRAME: Bytes = Bytes::from_static(&[0x89, 0x00]);

pub struct Connection {
    /// The socket, plain or under TLS.
    pub transport: Transport,
    pub peer: SocketAddr,
    pub generation: u32,
    /// The acceptor counted this connection against its address's limit.
    pub counted: bool,
    pub out: OutQueue,
    pub phase: Phase,
    /// The wheel tick of this connection's live timer entry.
    pub timer_tick: u64,
    /// Listed in the shard's flush list for this turn.
    pub dirty: bool,
    /// The kernel's send buffer was full at the last write; wait for writability.
    pub write_blocked: bool,
}

pub enum Phase {
    Http(Box<HttpState>),
    Open(Box<Session>),
    Closing(Box<Closing>),
}

pub struct HttpState {
    /// Received bytes not yet answered: request heads and bodies (and, once upgraded, the
    /// first WebSocket frames a client sent right behind its request).
    pub buf: Vec<u8>,
    /// When the request being received (or the idle keep-alive connection) times out.
    pub deadline: Millis,
    /// An answer is being prepared elsewhere (other shards, the history stage); the next
    /// request waits for it.
    pub pending: Option<Pending>,
}

/// An HTTP answer under way.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// The connection stays open for another request after this answer.
    pub keep_alive: bool,
}

/// An open WebSocket connection.
pub struct Session {
    /// tungstenite's state, `None` while the client's input rests between messages: an idle
    /// connection keeps no read buffer, and a fresh context takes over when bytes arrive.
    pub ws: Option<Box<WebSocketContext>>,
    pub frames: FrameTracker,
    pub endpoint: Endpoint,
    pub id: u64,
    pub identity: Option<Identity>,
    pub auth_deadline: Millis,
    pub rooms: Vec<Membership>,
    pub bucket: TokenBucket,
    /// Frames dropped by the rate limit since the last one that was let through.
    pub dropped_in_row: u32,
    pub last_seen: Millis,
    pub last_ping: Millis,
    pub opened: Millis,
}

/// A room this connection asked to join.
pub struct Membership {
    pub room: Arc<str>,
    pub state: JoinState,
}

pub enum JoinState {
    /// Asked; the answer has not come yet.
    Requested,
    /// The answer comes with a replay read from history; room events that arrive meanwhile
    /// are later than the replay and wait here to follow it.
    Replaying {
        held: Vec<Bytes>,
        held_bytes: usize,
    },
    Joined,
}

/// What an ended session leaves for the shard to clean up.
pub struct Ended {
    pub session: u64,
    pub endpoint: Endpoint,
    pub identity: Option<Identity>,
    pub rooms: Vec<Membership>,
}

impl Session {
    /// Ends the session: its tungstenite state (fresh if it had let go of it), and what the
    /// shard must clean up.
    fn end(self, max_frame_bytes: usize) -> (Box<WebSocketContext>, Ended) {
        let Session { ws, id, endpoint, identity, rooms, .. } = self;
        let ws = ws.unwrap_or_else(|| Box::new(ws::server_context(max_frame_bytes, Vec::new())));
        (ws, Ended { session: id, endpoint, identity, rooms })
    }

    pub fn membership(&self, room: &str) -> Option<&Membership> {
        self.rooms.iter().find(|m| &*m.room == room)
    }

    pub fn user(&self) -> Option<&Arc<str>> {
        self.identity.as_ref().map(|i| &i.user)
    }
}

pub struct Closing {
    /// Kept while the peer may still answer our close frame.
    pub ws: Option<Box<WebSocketContext>>,
    pub deadline: Millis,
    pub write_shut: bool,
    /// The peer answered our close, hung up, or cannot be read any more.
    pub peer_done: bool,
}

/// The per-connection rate limit: `rate` frames per second, bursts up to `burst`.
/// Kept in thousandths of a frame so integer refill is exact at any rate.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    milli_tokens: u64,
    last: Millis,
}

impl TokenBucket {
    pub fn full(burst: u32, now: Millis) -> TokenBucket {
        TokenBucket { milli_tokens: u64::from(burst) * 1000, last: now }
    }

    pub fn take(&mut self, now: Millis, rate: u32, burst: u32) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = now;
        let cap = u64::from(burst) * 1000;
        self.milli_tokens = cap.min(self.milli_tokens.saturating_add(elapsed.saturating_mul(u64::from(rate))));
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// What reading an open connection found, after the messages it collected.
#[derive(Debug, PartialEq)]
pub enum ReadOutcome {
    /// All input consumed; `more` when the per-turn budget stopped us first.
    Drained { more: bool },
    /// The peer sent a close frame; `finish_after_peer_close` answers it.
    PeerClosed,
    /// The peer broke the protocol: close with this code.
    Violation(CloseCode, String),
    /// The peer is gone (EOF or socket error): drop without ceremony.
    Gone,
}

/// What a timer found due.
#[derive(Debug, PartialEq)]
pub enum TimerAction {
    /// Check again at this time.
    Next(Millis),
    /// Send a close frame with this code and reason.
    Close(CloseCode, &'static str),
    /// Drop the socket now.
    Drop,
}

impl Connection {
    pub fn new(transport: Transport, peer: SocketAddr, generation: u32, counted: bool, deadline: Millis) -> Connection {
        Connection {
            transport,
            peer,
            generation,
            counted,
            out: OutQueue::default(),
            phase: Phase::Http(Box::new(HttpState { buf: Vec::new(), deadline, pending: None })),
            timer_tick: 0,
            dirty: false,
            write_blocked: false,
        }
    }

    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Open(s) => Some(s),
            _ => None,
        }
    }

    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Open(s) => Some(s),
            _ => None,
        }
    }

    /// Reads request bytes until the socket is drained or `limit` bytes wait unanswered.
    /// Returns whether the limit stopped it (the socket may hold more); errors on EOF.
    pub fn read_http(&mut self, scratch: &mut Scratch, limit: usize) -> io::Result<bool> {
        let Phase::Http(http) = &mut self.phase else { return Ok(false) };
        while http.buf.len() < limit {
            match scratch.read_from(&mut self.transport) {
                Ok([]) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(bytes) => http.buf.extend_from_slice(bytes),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads every message available on an open connection into `msgs`.
    pub fn read_messages(
        &mut self,
        scratch: &mut Scratch,
        now: Millis,
        max_frame_bytes: usize,
        msgs: &mut Vec<Message>,
    ) -> ReadOutcome {
        let Phase::Open(session) = &mut self.phase else { return ReadOutcome::Drained { more: false } };
        let ws = session.ws.get_or_insert_with(|| Box::new(ws::server_context(max_frame_bytes, Vec::new())));
        let mut io = WsIo::new(&mut self.transport, scratch, &mut self.out).tracking(&mut session.frames);
        let outcome = loop {
            match ws.read(&mut io) {
                // tungstenite holds its answer until the messages before the close are handled.
                Ok(Message::Close(_)) => break ReadOutcome::PeerClosed,
                Ok(msg) => msgs.push(msg),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    break ReadOutcome::Drained { more: io.budget_exhausted };
                }
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => break ReadOutcome::Gone,
                Err(e) => match ws::close_code_for(&e) {
                    Some(code) => break ReadOutcome::Violation(code, e.to_string()),
                    None => break ReadOutcome::Gone,
                },
            }
        };
        if io.bytes_read > 0 {
            session.last_seen = now;
        }
        if outcome == (ReadOutcome::Drained { more: false }) && session.frames.at_rest() {
            session.ws = None;
        }
        outcome
    }

    /// Queues a close frame and moves to `Closing`, returning what the session held so the
    /// shard can undo its memberships. `stream_ok` is false when the input can no longer be
    /// parsed as frames (after a protocol violation), so only raw discarding remains.
    pub fn close_ws(
        &mut self,
        code: CloseCode,
        reason: &str,
        now: Millis,
        stream_ok: bool,
        scratch: &mut Scratch,
        max_frame_bytes: usize,
    ) -> Option<Ended> {
        let session = self.take_session()?;
        let (mut ws, ended) = (*session).end(max_frame_bytes);
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = ws.close(&mut WsIo::new(&mut self.transport, scratch, &mut self.out), Some(frame));
        // Either way the peer is not done: its close answer, or whatever it still sends,
        // is read (or discarded) until it hangs up or the grace period ends.
        self.phase = closing(stream_ok.then_some(ws), now, false);
        Some(ended)
    }

    /// The peer closed first: queue tungstenite's answer after everything already queued, and
    /// finish once it is written.
    pub fn finish_after_peer_close(&mut self, now: Millis, scratch: &mut Scratch) -> Option<Ended> {
        let session = self.take_session()?;
        // It just read the close, so it has its tungstenite state.
        let (mut ws, ended) = (*session).end(0);
        let _ = ws.flush(&mut WsIo::new(&mut self.transport, scratch, &mut self.out));
        self.phase = closing(None, now, true);
        Some(ended)
    }

    /// Ends the session without a close frame (the peer is gone or we are dropping it).
    pub fn abandon(&mut self) -> Option<Ended> {
        let session = self.take_session()?;
        self.phase = closing(None, 0, true);
        let Session { id, endpoint, identity, rooms, .. } = *session;
        Some(Ended { session: id, endpoint, identity, rooms })
    }

    /// Moves the open session out, leaving a finished `Closing` the caller replaces as needed.
    fn take_session(&mut self) -> Option<Box<Session>> {
        if !matches!(self.phase, Phase::Open(_)) {
            return None;
        }
        match std::mem::replace(&mut self.phase, closing(None, 0, true)) {
            Phase::Open(session) => Some(session),
            _ => None,
        }
    }

    /// Queues an HTTP response and hangs up after it.
    pub fn respond_and_close(&mut self, response: Bytes, now: Millis) {
        self.out.push(response);
        self.phase = closing(None, now, false);
    }

    /// Reads what a closing peer still sends; returns true once the peer is done.
    pub fn read_closing(&mut self, scratch: &mut Scratch) -> bool {
        let Phase::Closing(c) = &mut self.phase else { return true };
        if let Some(ws) = &mut c.ws {
            let mut io = WsIo::new(&mut self.transport, scratch, &mut self.out);
            loop {
                match ws.read(&mut io) {
                    Ok(Message::Close(_)) => {
                        c.peer_done = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.peer_done = true;
                        break;
                    }
                }
            }
            scratch.clear();
        } else {
            for _ in 0..DISCARD_READS_PER_TURN {
                match scratch.read_from(&mut self.transport) {
                    Ok([]) => {
                        c.peer_done = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.peer_done = true;
                        break;
                    }
                }
            }
        }
        c.peer_done
    }

    /// Writes what is queued; returns the bytes written. An error means the socket is dead.
    pub fn flush(&mut self) -> io::Result<usize> {
        let before = self.out.pending();
        let queue = self.out.flush(&mut self.transport)?;
        let records_left = self.transport.flush_records()?;
        self.write_blocked = matches!(queue, Flushed::Blocked) || records_left;
        let written = before - self.out.pending();
        if let Phase::Closing(c) = &mut self.phase
            && self.out.is_empty()
            && !records_left
            && !c.write_shut
        {
            // Our last bytes are out: send FIN, but keep reading so that unread input does not
            // turn our close into a reset that could destroy the frame we just sent.
            c.write_shut = true;
            self.transport.shutdown_write();
        }
        Ok(written)
    }

    /// A closing connection whose output is written and whose peer is done can be dropped.
    pub fn is_finished(&self) -> bool {
        matches!(&self.phase, Phase::Closing(c) if c.peer_done && self.out.is_empty())
            && !self.transport.has_pending_records()
    }

    /// Applies the deadlines of the current phase.
    pub fn on_timer(&mut self, now: Millis, heartbeat: Millis) -> TimerAction {
        match &mut self.phase {
            Phase::Http(h) if now >= h.deadline => TimerAction::Drop,
            Phase::Http(h) => TimerAction::Next(h.deadline),
            Phase::Closing(c) if now >= c.deadline => TimerAction::Drop,
            Phase::Closing(c) => TimerAction::Next(c.deadline),
            Phase::Open(s) => {
                if s.identity.is_none() && s.endpoint == Endpoint::Chat && now >= s.auth_deadline {
                    return TimerAction::Close(CloseCode::Policy, "authentication timeout");
                }
                if now.saturating_sub(s.last_seen) >= 2 * heartbeat {
                    // A peer that stopped reading cannot take a close frame either.
                    return if self.write_blocked {
                        TimerAction::Drop
                    } else {
                        TimerAction::Close(CloseCode::Away, "heartbeat timeout")
                    };
                }
                if now.saturating_sub(s.last_ping) >= heartbeat {
                    s.last_ping = now;
                    self.out.push(PING_FRAME.clone());
                }
                let mut next = (s.last_ping + heartbeat).min(s.last_seen + 2 * heartbeat);
                if s.identity.is_none() && s.endpoint == Endpoint::Chat {
                    next = next.min(s.auth_deadline);
                }
                TimerAction::Next(next)
            }
        }
    }
}

fn closing(ws: Option<Box<WebSocketContext>>, now: Millis, peer_done: bool) -> Phase {
    Phase::Closing(Box::new(Closing { ws, deadline: now + CLOSE_GRACE_MS, write_shut: false, peer_done }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::full(3, 0);
        assert!(b.take(0, 10, 3));
        assert!(b.take(0, 10, 3));
        assert!(b.take(0, 10, 3));
        assert!(!b.take(0, 10, 3), "burst spent");
        assert!(!b.take(99, 10, 3), "0.99 of a token after 99 ms at 10/s");
        assert!(b.take(100, 10, 3));
        assert!(b.take(10_000, 10, 3));
        assert!(b.take(10_000, 10, 3));
        assert!(b.take(10_000, 10, 3));
        assert!(!b.take(10_000, 10, 3), "refill is capped at burst");
    }
}
