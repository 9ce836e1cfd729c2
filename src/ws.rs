//! WebSocket I/O on a non-blocking socket: the shared read buffer tungstenite reads through, the
//! per-connection queue of outgoing frames (shared `Bytes`, written with one `writev`), and framing.
//! It knows nothing of rooms, auth or JSON meaning; it must never block or grow a queue without bound.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

use bytes::Bytes;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

/// One socket read fills at most this much; shared by every connection of a shard.
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// Socket reads one connection may do per loop turn, so a flooding client cannot starve the rest.
const READS_PER_TURN: u8 = 4;
/// Largest header of an unmasked server frame.
const MAX_SERVER_HEADER: usize = 10;
/// `writev` takes at most this many frames at once (well under IOV_MAX).
const MAX_IOVECS: usize = 64;
/// tungstenite grows its per-connection read buffer in steps of this size: small, because the
/// bytes come from the shard's scratch buffer by memcpy, and idle connections keep what they hold.
const WS_READ_STEP: usize = 64;

/// A shard's read buffer: a socket read lands here, then tungstenite copies out what it needs.
/// Every byte is consumed before the shard moves on to another connection.
pub struct Scratch {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes read from sockets since the last `take_bytes_read`.
    bytes_read: u64,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { buf: vec![0; SCRATCH_BYTES].into_boxed_slice(), start: 0, end: 0, bytes_read: 0 }
    }

    /// Drops unread bytes (the connection they came from is being closed).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads from `sock` into the buffer and returns the bytes read (for the HTTP phase,
    /// which keeps its own small head buffer).
    pub fn read_from(&mut self, sock: &mut impl Read) -> io::Result<&[u8]> {
        let n = retry_interrupted(|| sock.read(&mut self.buf))?;
        self.bytes_read += n as u64;
        Ok(&self.buf[..n])
    }

    pub fn take_bytes_read(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_read)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

fn retry_interrupted<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Frames waiting to be written to one socket. Fan-out frames are shared `Bytes`, so queueing
/// one for a recipient is a reference-count increment, not a copy.
#[derive(Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Bytes of `frames[0]` already written.
    front_written: usize,
    /// Unwritten bytes in the queue.
    pending: usize,
}

pub enum Flushed {
    /// Everything queued reached the kernel.
    All,
    /// The socket buffer is full; wait for writability.
    Blocked,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        self.pending += frame.len();
        self.frames.push_back(frame);
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Drops every frame not yet started, keeping a partly written one so the stream stays
    /// well-framed for the close frame that follows.
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.front_written > 0);
        self.frames.truncate(keep);
        self.pending = self.frames.front().map_or(0, |f| f.len() - self.front_written);
    }

    /// Writes as much as the socket takes, with one `writev` per call batch (corking).
    pub fn flush(&mut self, sock: &mut impl Write) -> io::Result<Flushed> {
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, frame) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                let start = if i == 0 { self.front_written } else { 0 };
                slices[i] = IoSlice::new(&frame[start..]);
                count += 1;
            }
            let written = match retry_interrupted(|| sock.write_vectored(&slices[..count])) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) => return Err(e),
            };
            self.consume(written);
        }
        Ok(Flushed::All)
    }

    fn consume(&mut self, mut written: usize) {
        self.pending -= written;
        while written > 0 {
            let Some(front) = self.frames.front() else { break };
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.frames.pop_front();
            self.front_written = 0;
        }
    }
}

/// Longest header of a (masked) client frame.
const MAX_CLIENT_HEADER: usize = 14;

/// Where a client's byte stream stands between frames, followed beside tungstenite (with its
/// header parser) so that a connection whose input rests between messages can let go of its
/// tungstenite state and buffers until more bytes come.
#[derive(Debug, Default)]
pub struct FrameTracker {
    header: [u8; MAX_CLIENT_HEADER],
    header_len: u8,
    payload_left: u64,
    /// A fragmented data message is open: its final fragment has not come yet.
    fragmented: bool,
    /// The stream stopped parsing; tungstenite reports why, and nothing is let go of.
    broken: bool,
}

impl FrameTracker {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= take;
                bytes = &bytes[take as usize..];
                continue;
            }
            self.header[self.header_len as usize] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            let mut cursor = std::io::Cursor::new(&self.header[..self.header_len as usize]);
            match FrameHeader::parse(&mut cursor) {
                Ok(None) if (self.header_len as usize) < MAX_CLIENT_HEADER => {}
                Ok(Some((header, len))) => {
                    self.header_len = 0;
                    self.payload_left = len;
                    match header.opcode {
                        OpCode::Data(Data::Continue) => self.fragmented &= !header.is_final,
                        OpCode::Data(_) => self.fragmented = !header.is_final,
                        OpCode::Control(_) => {}
                    }
                }
                _ => self.broken = true,
            }
        }
    }

    /// Between messages: no partial frame, no fragmented message open.
    pub fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.fragmented && !self.broken
    }
}

/// The stream tungstenite sees: reads come from the socket through the shard's scratch buffer,
/// writes (pongs, close frames) go to the connection's queue and never block.
pub struct WsIo<'a, S: Read> {
    sock: &'a mut S,
    scratch: &'a mut Scratch,
    out: &'a mut OutQueue,
    /// Follows every byte handed to tungstenite, when the caller wants to know where it rests.
    tracker: Option<&'a mut FrameTracker>,
    reads_left: u8,
    /// The per-turn read budget ran out with the socket possibly still readable.
    pub budget_exhausted: bool,
    /// Bytes read from the socket during this turn.
    pub bytes_read: usize,
}

impl<'a, S: Read> WsIo<'a, S> {
    pub fn new(sock: &'a mut S, scratch: &'a mut Scratch, out: &'a mut OutQueue) -> Self {
        WsIo { sock, scratch, out, tracker: None, reads_left: READS_PER_TURN, budget_exhausted: false, bytes_read: 0 }
    }

    pub fn tracking(mut self, tracker: &'a mut FrameTracker) -> Self {
        self.tracker = Some(tracker);
        self
    }

    pub fn out(&mut self) -> &mut OutQueue {
        self.out
    }
}

impl<S: Read> Read for WsIo<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &mut *self.scratch;
        if s.start == s.end {
            if self.reads_left == 0 {
                self.budget_exhausted = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.reads_left -= 1;
            let n = retry_interrupted(|| self.sock.read(&mut s.buf))?;
            s.start = 0;
            s.end = n;
            s.bytes_read += n as u64;
            self.bytes_read += n;
            if n == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(s.end - s.start);
        buf[..n].copy_from_slice(&s.buf[s.start..s.start + n]);
        s.start += n;
        if let Some(tracker) = &mut self.tracker {
            tracker.feed(&buf[..n]);
        }
        Ok(n)
    }
}

impl<S: Read> Write for WsIo<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A server-side tungstenite context with our limits. `leftover` holds bytes that arrived
/// after the HTTP request head (a client may pipeline its first frame).
pub fn server_context(max_frame_bytes: usize, leftover: Vec<u8>) -> WebSocketContext {
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_STEP)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes));
    if leftover.is_empty() {
        WebSocketContext::new(Role::Server, Some(config))
    } else {
        WebSocketContext::from_partially_read(leftover, Role::Server, Some(config))
    }
}

/// Builds an unmasked, final frame whose payload `write_payload` appends, in one allocation:
/// the payload is written after room for the longest header, which is then filled in front.
pub fn build_frame(opcode: OpCode, write_payload: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    buf.resize(MAX_SERVER_HEADER, 0);
    write_payload(&mut buf);
    let payload_len = (buf.len() - MAX_SERVER_HEADER) as u64;
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    let header_len = header.len(payload_len);
    let start = MAX_SERVER_HEADER - header_len;
    let mut slot = &mut buf[start..MAX_SERVER_HEADER];
    // Formatting into a slice of exactly `header.len()` bytes cannot fail.
    let _ = header.format(payload_len, &mut slot);
    Bytes::from(buf).slice(start..)
}

/// A text frame carrying JSON written by `write_json`.
pub fn text_frame(write_json: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    build_frame(OpCode::Data(Data::Text), write_json)
}

/// The payload of a frame built by [`build_frame`] (the JSON of a text frame).
pub fn frame_payload(frame: &Bytes) -> Bytes {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(header_len.min(frame.len())..)
}

/// Why a WebSocket connection failed, and the close code it earns.
pub fn close_code_for(err: &WsError) -> Option<CloseCode> {
    match err {
        WsError::Capacity(_) => Some(CloseCode::Size),
        WsError::Utf8(_) => Some(CloseCode::Invalid),
        WsError::Protocol(_) => Some(CloseCode::Protocol),
        // I/O errors and closed streams leave nothing to send a close frame on.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (zero mask, so the payload reads as is).
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let is_final = first & 0x80 != 0;
        let header =
            FrameHeader { is_final, opcode: OpCode::from(first & 0x0f), mask: Some([0; 4]), ..FrameHeader::default() };
        let mut frame = Vec::new();
        header.format(payload.len() as u64, &mut frame).unwrap();
        frame.extend(payload);
        frame
    }

    #[test]
    fn frame_tracker_rests_only_between_messages() {
        let text = client_frame(0x81, b"hello");
        let big = client_frame(0x81, &[b'x'; 70_000]);
        let first = client_frame(0x01, b"he");
        let ping = client_frame(0x89, b"p");
        let last = client_frame(0x80, b"llo");
        let stream: Vec<u8> = [&text[..], &big, &first, &ping, &last].concat();
        let boundaries = [text.len(), text.len() + big.len(), stream.len()];
        // Byte by byte: at rest exactly at the ends of whole messages.
        let mut t = FrameTracker::default();
        for (i, b) in stream.iter().enumerate() {
            t.feed(std::slice::from_ref(b));
            assert_eq!(t.at_rest(), boundaries.contains(&(i + 1)), "after byte {}", i + 1);
        }
        // In odd-sized chunks the same.
        let mut t = FrameTracker::default();
        for chunk in stream.chunks(997) {
            t.feed(chunk);
        }
        assert!(t.at_rest());
        let mut t = FrameTracker::default();
        t.feed(&[&first[..], &ping].concat());
        assert!(!t.at_rest(), "a control frame inside a fragmented message does not end it");
        let mut t = FrameTracker::default();
        t.feed(&[0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(!t.at_rest(), "an absurd length never rests");
    }

    #[test]
    fn frames_have_minimal_headers() {
        for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = text_frame(|b| b.extend(std::iter::repeat_n(b'x', len)));
            assert_eq!(f.len(), len + header, "payload {len}");
            assert_eq!(f[0], 0x81);
            assert_eq!(frame_payload(&f).len(), len);
            let mut cur = std::io::Cursor::new(&f[..]);
            let (h, l) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert_eq!(l as usize, len);
            assert!(h.is_final && h.mask.is_none());
        }
    }

    /// A writer that takes at most `cap` bytes per call, then reports WouldBlock once full.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        room: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n).min(self.room);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                self.room -= take;
                if n == self.cap || self.room == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        for i in 0..5u8 {
            q.push(Bytes::from(vec![i; 10]));
        }
        let mut w = Trickle { got: vec![], cap: 7, room: 23 };
        assert!(matches!(q.flush(&mut w).unwrap(), Flushed::Blocked));
        assert_eq!(q.pending(), 27);
        w.room = 1000;
        assert!(matches!(q.flush(&mut w).unwrap(), Flushed::All));
        let want: Vec<u8> = (0..5u8).flat_map(|i| vec![i; 10]).collect();
        assert_eq!(w.got, want);
        assert!(q.is_empty());
    }

    #[test]
    fn discard_keeps_the_partly_written_frame() {
        let mut q = OutQueue::default();
        q.push(Bytes::from(vec![1; 10]));
        q.push(Bytes::from(vec![2; 10]));
        let mut w = Trickle { got: vec![], cap: 4, room: 4 };
        let _ = q.flush(&mut w);
        q.discard_unstarted();
        assert_eq!(q.pending(), 6);
        q.discard_unstarted();
        assert_eq!(q.pending(), 6);
        let mut fresh = OutQueue::default();
        fresh.push(Bytes::from(vec![1; 3]));
        fresh.discard_unstarted();
        assert!(fresh.is_empty());
    }

    #[test]
    fn ws_io_reads_through_scratch_with_a_budget() {
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(b'a');
                Ok(buf.len())
            }
        }
        let mut sock = Endless;
        let mut scratch = Scratch::new();
        let mut out = OutQueue::default();
        let mut io = WsIo::new(&mut sock, &mut scratch, &mut out);
        let mut total = 0;
        let mut buf = [0u8; 1000];
        loop {
            match io.read(&mut buf) {
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
        }
        assert!(io.budget_exhausted);
        assert_eq!(total, READS_PER_TURN as usize * SCRATCH_BYTES);
        io.write_all(b"pong").unwrap();
        assert_eq!(out.pending(), 4);
    }
}
