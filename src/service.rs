//! One configured service with everything that belongs to it at run time, and one registry with
//! its session: looked up once per request or reply, never through parallel vectors. Their
//! counters are [`crate::stats`].

use crate::config::{RegistryConfig, ServiceConfig};
use crate::poller::PollState;
use crate::prober::Prober;
use crate::push;
use crate::registry::eureka::delta::Fetcher;
use crate::registry::Session;
use crate::stats::ServiceStats;
use crate::transparent::Corrected;
use crate::view::ServiceView;

/// A registry and the run-time side of talking to it.
#[derive(Debug)]
pub struct Registry {
    pub cfg: RegistryConfig,
    pub session: Session,
    /// The push session, when the registry pushes (run by the poller VM only).
    pub push: Option<push::Session>,
    /// The registry-wide fetch (Eureka with `fetch: "delta"`; run by the poller VM only).
    pub fetch: Option<Fetcher>,
}

/// A service: its validated configuration, its poll state, its view, its stats.
#[derive(Debug)]
pub struct Service {
    pub cfg: ServiceConfig,
    pub poll: PollState,
    /// Active health checks (poller VM, when configured).
    pub prober: Prober,
    pub view: ServiceView,
    pub stats: ServiceStats,
    /// Transparent mode's state, when the service sets `transparent`.
    pub correction: Option<Corrected>,
}
