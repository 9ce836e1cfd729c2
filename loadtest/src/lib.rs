//! roomcast-loadtest: load tests for roomcast's v1 WebSocket contract, and the parts roomcast-baseline
//! shares; it owns the module tree only and must hold no logic of its own.

pub mod cli;
pub mod client;
pub mod framing;
pub mod jsonscan;
pub mod metrics;
pub mod orchestrator;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod server;
pub mod sys;
pub mod token;
pub mod worker;
