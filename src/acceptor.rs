//! The acceptor thread: owns the listening socket and admission (per-address counts, the
//! open-file budget), and hands each new socket to the least-loaded shard. It never reads a socket.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::bus::{AcceptorMsg, ShardMsg};
use crate::server::Shared;

pub const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
/// After running out of file descriptors, wait this long before accepting again.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// Accepting resumes below this share of the open-file budget.
const RESUME_PERCENT: usize = 90;

pub struct Acceptor {
    listener: TcpListener,
    poll: Poll,
    shared: Arc<Shared>,
    max_per_ip: usize,
    /// Connections we may hold before running out of file descriptors.
    fd_budget: usize,
    per_ip: HashMap<IpAddr, u32>,
    per_shard: Vec<usize>,
    total: usize,
    listening: bool,
    resume_at: Option<Instant>,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        poll: Poll,
        shared: Arc<Shared>,
        max_per_ip: usize,
        fd_budget: usize,
    ) -> Acceptor {
        let shards = shared.shard_count();
        Acceptor {
            listener,
            poll,
            shared,
            max_per_ip,
            fd_budget,
            per_ip: HashMap::new(),
            per_shard: vec![0; shards],
            total: 0,
            listening: false,
            resume_at: None,
        }
    }

    pub fn run(mut self) {
        self.listen(true);
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self.resume_at.map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("acceptor: poll failed, no longer accepting: {e}");
                return;
            }
            if self.resume_at.is_some_and(|t| Instant::now() >= t) {
                self.resume_at = None;
                self.listen(true);
            }
            while let Some(msg) = self.shared.acceptor.pop() {
                match msg {
                    AcceptorMsg::Closed { ip, shard, counted } => self.on_closed(ip, shard as usize, counted),
                    AcceptorMsg::Shutdown => return,
                }
            }
            if self.listening {
                self.accept_all();
            }
        }
    }

    fn listen(&mut self, on: bool) {
        if on == self.listening {
            return;
        }
        let registry = self.poll.registry();
        let result = if on {
            registry.register(&mut self.listener, LISTENER, Interest::READABLE)
        } else {
            registry.deregister(&mut self.listener)
        };
        match result {
            Ok(()) => self.listening = on,
            Err(e) => log::error!("acceptor: cannot {} the listener: {e}", if on { "register" } else { "pause" }),
        }
    }

    fn accept_all(&mut self) {
        loop {
            if self.total >= self.fd_budget {
                log::warn!("open-file budget reached ({} connections): pausing accept", self.total);
                self.listen(false);
                return;
            }
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_resource_exhaustion(&e) => {
                    log::warn!("accept: {e}; pausing accept for {EMFILE_BACKOFF:?}");
                    self.listen(false);
                    self.resume_at = Some(Instant::now() + EMFILE_BACKOFF);
                    return;
                }
                // The peer gave up before we accepted (ECONNABORTED and kin): nothing to do.
                Err(e) => log::debug!("accept: {e}"),
            }
        }
    }

    fn admit(&mut self, stream: mio::net::TcpStream, peer: std::net::SocketAddr) {
        // Small frames should leave now, not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        let Some(shard) = self.least_loaded() else { return };
        let ip = peer.ip();
        let count = self.per_ip.entry(ip).or_insert(0);
        let over_ip_limit = *count as usize >= self.max_per_ip;
        if !over_ip_limit {
            *count += 1;
        }
        let msg = ShardMsg::Accepted { stream, peer, over_ip_limit };
        match self.shared.shard_inboxes[shard].push(msg) {
            Ok(()) => {
                self.shared.shard_inboxes[shard].wake();
                self.total += 1;
                self.per_shard[shard] += 1;
            }
            Err(_) => {
                log::warn!("{peer}: shard {shard} inbox full, dropping new connection");
                self.on_closed_ip(ip, !over_ip_limit);
            }
        }
    }

    fn least_loaded(&self) -> Option<usize> {
        (0..self.per_shard.len()).min_by_key(|&s| self.per_shard[s])
    }

    fn on_closed(&mut self, ip: IpAddr, shard: usize, counted: bool) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_shard.get_mut(shard) {
            *n = n.saturating_sub(1);
        }
        self.on_closed_ip(ip, counted);
        if !self.listening && self.resume_at.is_none() && self.total * 100 < self.fd_budget * RESUME_PERCENT {
            log::info!("below {RESUME_PERCENT}% of the open-file budget: accepting again");
            self.listen(true);
        }
    }

    fn on_closed_ip(&mut self, ip: IpAddr, counted: bool) {
        if !counted {
            return;
        }
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
