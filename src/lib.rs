//! roomcast: a real-time messaging daemon. Rooms over WebSocket with per-room ordered,
//! durable history, served by a sharded mio event loop. See docs/architecture.md.

pub mod acceptor;
pub mod admin;
pub mod api;
pub mod auth;
pub mod bus;
pub mod config;
pub mod conn;
pub mod control;
pub mod history;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod shard;
pub mod store;
pub mod sys;
pub mod systemd;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod web;
pub mod ws;
