//! Membership pushed by the registry: Nacos 2.x/3.x (and rnacos) over Nacos' gRPC protocol,
//! instead of a list request per service every refresh interval.
//!
//! The poller VM runs one [`Session`] per Nacos registry with a `grpc_cluster`: it subscribes to
//! each service as Nacos' Java client does and hands each list it receives (the subscription's
//! answer, then every push) to the refresh path, which applies it through the same keep-last-good
//! rules as a polled one ([`crate::poller::PollState::on_pushed`]) and publishes it the same way.
//! While a service's subscription is live its HTTP poll slows to the registry's
//! `reconcile_interval_ms` (a safety net: pushes carry no sequence number, and rnacos pushes only
//! healthy instances); while the session is down the HTTP poll runs at `refresh_interval_ms` as
//! without push.
//!
//! Pure logic: the gRPC calls go through [`Grpc`], which the glue implements with proxy-wasm's
//! gRPC calls (`host/grpc.rs`) and tests with a recording fake.
//!
//! - [`proto`]: the protobuf `Payload` every message travels in;
//! - [`wire`]: the JSON bodies lossless sends and reads;
//! - [`session`]: the session's state machine.

pub mod proto;
pub mod session;
#[cfg(test)]
pub(crate) mod testing;
pub mod wire;

pub use session::{Event, Session};
pub use wire::Subscription;

/// The gRPC calls a session makes. Every refusal is a value, never a panic: the glue checks each
/// host status.
pub trait Grpc {
    /// A unary call of `service/method` on the Envoy cluster `cluster` with `message` (a
    /// protobuf message without gRPC's frame header) and a timeout: the call's token, or why the
    /// host refused it. The answer comes to the session's `on_call_reply`.
    fn call(&self, cluster: &str, service: &str, method: &str, message: &[u8], timeout_ms: u64) -> Result<u32, String>;
    /// Opens a bidirectional stream of `service/method` on `cluster`: its token, or why not. Its
    /// messages come to `on_stream_message`, its end to `on_stream_close`.
    fn open(&self, cluster: &str, service: &str, method: &str) -> Result<u32, String>;
    /// Sends `message` on the stream `token`; an error when the host refused (the stream is gone).
    fn send(&self, token: u32, message: &[u8]) -> Result<(), String>;
    /// Cancels the call or resets the stream `token` (an unknown token is no error).
    fn cancel(&self, token: u32);
}

/// `push` of a Nacos registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// Push when the server answers (the default with a `grpc_cluster`); a server that never
    /// completed a session in 3 attempts is retried at most every 5 minutes.
    Auto,
    /// Push, retried with back-off up to 30 s for as long as it fails.
    On,
}

/// The push settings of one registry (validated by [`crate::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PushConfig {
    /// The Envoy cluster of Nacos' gRPC port (its main port + 1000, plain HTTP/2): a single host,
    /// so that the unary calls and the stream share one connection.
    pub cluster: String,
    pub mode: PushMode,
    /// The HTTP poll's interval while the service's subscription is live (ms).
    pub reconcile_interval_ms: u64,
    /// The timeout of each unary call (ms; the registry's `timeout_ms`).
    pub timeout_ms: u64,
}

/// Counters of the push sessions (the whole filter), added to [`crate::stats::Stats`] on each tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Streams opened and closed (by either side).
    pub stream_opened: u64,
    pub stream_closed: u64,
    /// Pushes acknowledged (`NotifySubscriberResponse`).
    pub acks: u64,
}

impl PushStats {
    /// Adds `o` (what a session counted since the last tick).
    pub fn add(&mut self, o: PushStats) {
        self.stream_opened += o.stream_opened;
        self.stream_closed += o.stream_closed;
        self.acks += o.acks;
    }
}
