//! One configured service with everything that belongs to it at run time, and one registry with
//! its session: looked up once per request or reply, never through parallel vectors.

use crate::config::{RegistryConfig, ServiceConfig};
use crate::drain::Reason;
use crate::poller::PollState;
use crate::registry::Session;
use crate::view::ServiceView;

/// A registry and the run-time side of talking to it.
#[derive(Debug)]
pub struct Registry {
    pub cfg: RegistryConfig,
    pub session: Session,
}

/// A service: its validated configuration, its poll state, its view, its stats.
#[derive(Debug)]
pub struct Service {
    pub cfg: ServiceConfig,
    pub poll: PollState,
    pub view: ServiceView,
    pub stats: ServiceStats,
}

/// Counters of one service, counted in the VM and added to Envoy's stats on the next tick (one
/// host call per changed counter per tick, none per request). Envoy names them
/// `wasmcustom.lossless.<service>.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub refresh_ok: u64,
    pub refresh_failed: u64,
    pub refresh_kept: u64,
    pub refresh_unchanged: u64,
    pub instances_skipped: u64,
    pub protect_threshold_hit: u64,
    pub picks: u64,
    /// Instances ejected by outlier detection (Envoy: `ejections_enforced_total`).
    pub ejections_enforced: u64,
    /// Ejections not made because `max_ejection_percent` was reached (Envoy: `ejections_overflow`).
    pub ejections_overflow: u64,
    /// Trial requests sent to ejected instances whose ejection time was over.
    pub ejection_trials: u64,
    /// Ejected instances readmitted after a successful trial.
    pub readmitted: u64,
    /// Local 503s by [`Reason`], in [`Reason::ALL`] order.
    pub local_503: [u64; 5],
}

impl ServiceStats {
    /// The counter names, in the order [`ServiceStats::take`] returns them.
    pub const NAMES: [&'static str; 16] = [
        "refresh_ok",
        "refresh_failed",
        "refresh_kept",
        "refresh_unchanged",
        "instances_skipped",
        "protect_threshold_hit",
        "picks",
        "outlier_detection.ejections_enforced",
        "outlier_detection.ejections_overflow",
        "outlier_detection.trials",
        "outlier_detection.readmitted",
        "local_503.no_instances",
        "local_503.no_membership",
        "local_503.none_serving",
        "local_503.pinned_draining",
        "local_503.self_draining",
    ];

    /// Counts a local 503.
    pub fn local_503(&mut self, r: Reason) {
        if let Some(n) = self.local_503.get_mut(r.index()) {
            *n += 1;
        }
    }

    /// The counts since the last call, in [`ServiceStats::NAMES`] order; resets them.
    pub fn take(&mut self) -> [u64; 16] {
        let s = std::mem::take(self);
        let [a, b, c, d, e] = s.local_503;
        [
            s.refresh_ok,
            s.refresh_failed,
            s.refresh_kept,
            s.refresh_unchanged,
            s.instances_skipped,
            s.protect_threshold_hit,
            s.picks,
            s.ejections_enforced,
            s.ejections_overflow,
            s.ejection_trials,
            s.readmitted,
            a,
            b,
            c,
            d,
            e,
        ]
    }
}

/// Counters of the whole filter, flushed like [`ServiceStats`]; Envoy names them
/// `wasmcustom.lossless.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub notify_marks: u64,
    pub admin_denied: u64,
    pub client_header_stripped: u64,
    pub dispatch_failed: u64,
}

impl Stats {
    /// The counter names, in the order [`Stats::take`] returns them.
    pub const NAMES: [&'static str; 5] =
        ["notify_marks", "failed_host_marks", "admin_denied", "client_header_stripped", "dispatch_failed"];

    /// The counts since the last call, in [`Stats::NAMES`] order; resets them.
    pub fn take(&mut self) -> [u64; 4] {
        let s = std::mem::take(self);
        [s.notify_marks, s.admin_denied, s.client_header_stripped, s.dispatch_failed]
    }
}

/// The gauges of one service, set by the poller VM on every tick.
pub const GAUGE_NAMES: [&str; 7] = [
    "hosts_total",
    "hosts_serving",
    "hosts_warming",
    "hosts_draining",
    "hosts_down",
    "snapshot_version",
    "refresh_duration_us",
];
