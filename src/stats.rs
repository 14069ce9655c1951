//! The filter's counters and gauges, counted in the VM and flushed to Envoy on the tick (one host
//! call per changed counter per tick, none per request): per service ([`ServiceStats`],
//! [`GAUGE_NAMES`]), for the whole filter ([`Stats`]), and for the inbound registration
//! ([`OnlineStats`]).

use crate::drain::Reason;
use crate::transparent::{Decision, Untouched};
use crate::view::HostCounts;

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
    /// Active health-check probes that passed / failed (Envoy: `health_check.success`, `.failure`).
    pub health_check_success: u64,
    pub health_check_failure: u64,
    /// Stall detection ([`crate::stall`]): instances taken out because they answered nothing for
    /// longer than their bound while others answered, or because a connection to them could not
    /// be made; stalled instances that answered again; stalls the guard refused; probes sent.
    pub stalls_quiet: u64,
    pub stalls_connect_failure: u64,
    pub stall_recovered: u64,
    pub stall_overflow: u64,
    pub stall_probes: u64,
    /// Local 503s by [`Reason`], in [`Reason::ALL`] order.
    pub local_503: [u64; 7],
    /// Pushed lists applied (published, or the same as published), and refused (unreadable, or
    /// held back by the keep-last-good rules).
    pub push_applied: u64,
    pub push_rejected: u64,
    /// original_dst requests sent to one of `routing.no_membership_addresses` because the
    /// service has never had a membership.
    pub no_membership_fallback: u64,
}

impl ServiceStats {
    /// The counter names, in the order [`ServiceStats::take`] returns them.
    pub const NAMES: [&'static str; 28] = [
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
        "health_check.success",
        "health_check.failure",
        "stall_detection.stalls_quiet",
        "stall_detection.stalls_connect_failure",
        "stall_detection.recovered",
        "stall_detection.overflow",
        "stall_detection.probes",
        "local_503.no_instances",
        "local_503.no_membership",
        "local_503.none_serving",
        "local_503.pinned_draining",
        "local_503.self_draining",
        "local_503.flow_limited",
        "local_503.not_ready",
        "push_applied",
        "push_rejected",
        "routing.no_membership_fallback",
    ];

    /// Counts a local 503 (one counter per [`Reason`], in [`Reason::ALL`] order).
    pub fn local_503(&mut self, r: Reason) {
        if let Some(n) = self.local_503.get_mut(r.index()) {
            *n += 1;
        }
    }

    /// The counts since the last call, in [`ServiceStats::NAMES`] order; resets them.
    pub fn take(&mut self) -> [u64; 28] {
        let s = std::mem::take(self);
        let [a, b, c, d, e, f, g] = s.local_503;
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
            s.health_check_success,
            s.health_check_failure,
            s.stalls_quiet,
            s.stalls_connect_failure,
            s.stall_recovered,
            s.stall_overflow,
            s.stall_probes,
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            s.push_applied,
            s.push_rejected,
            s.no_membership_fallback,
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
    /// Inbound `admission`: requests admitted under the cap, and admitted because the shared
    /// bucket could not be updated (refusals are `local_503.flow_limited` of the service).
    pub admission_admitted: u64,
    pub admission_unsure: u64,
    /// Inbound `registration` ([`OnlineStats`]), added on each tick.
    pub online: OnlineStats,
    /// The push sessions ([`crate::push::PushStats`]), added on each tick.
    pub push: crate::push::PushStats,
    /// Eureka registries fetched whole ([`EurekaStats`]).
    pub eureka: EurekaStats,
}

/// Counters of the Eureka registries fetched whole (`fetch: "delta"`,
/// [`crate::registry::eureka::delta`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EurekaStats {
    /// Deltas applied whose hash code agreed.
    pub delta_applied: u64,
    /// Full fetches applied (the first, after a disagreement, after a delta that could not be used).
    pub full_applied: u64,
    /// Deltas whose hash code disagreed with the registry kept: a full fetch followed.
    pub delta_hash_mismatch: u64,
    /// Delta or full replies that could not be used (no answer, an error status, too large, not
    /// readable): the membership stayed as it was.
    pub fetch_failed: u64,
}

impl Stats {
    /// The counter names, in the order [`Stats::take`] returns them.
    pub const NAMES: [&'static str; 21] = [
        "notify_marks",
        "admin_denied",
        "client_header_stripped",
        "dispatch_failed",
        "inbound.admission.admitted",
        "inbound.admission.unsure",
        "inbound.readiness.failure",
        "inbound.registrations",
        "inbound.registration_failures",
        "inbound.heartbeats",
        "inbound.heartbeat_failures",
        "inbound.deregistrations",
        "inbound.self_warm.success",
        "inbound.self_warm.failure",
        "push_stream_opened",
        "push_stream_closed",
        "push_acks",
        "eureka.delta_applied",
        "eureka.full_applied",
        "eureka.delta_hash_mismatch",
        "eureka.fetch_failed",
    ];

    /// The counts since the last call, in [`Stats::NAMES`] order; resets them.
    pub fn take(&mut self) -> [u64; 21] {
        let s = std::mem::take(self);
        let o = s.online;
        let p = s.push;
        let e = s.eureka;
        [
            s.notify_marks,
            s.admin_denied,
            s.client_header_stripped,
            s.dispatch_failed,
            s.admission_admitted,
            s.admission_unsure,
            o.readiness_failed,
            o.registrations,
            o.registration_failed,
            o.heartbeats,
            o.heartbeat_failed,
            o.deregistrations,
            o.warm_ok,
            o.warm_failed,
            p.stream_opened,
            p.stream_closed,
            p.acks,
            e.delta_applied,
            e.full_applied,
            e.delta_hash_mismatch,
            e.fetch_failed,
        ]
    }
}

/// Counters of the inbound registration ([`crate::registration::Online`]), counted by its state
/// machine and added to [`Stats::online`] on each tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnlineStats {
    pub readiness_failed: u64,
    pub registrations: u64,
    pub registration_failed: u64,
    pub heartbeats: u64,
    pub heartbeat_failed: u64,
    pub deregistrations: u64,
    pub warm_ok: u64,
    pub warm_failed: u64,
}

impl OnlineStats {
    /// Adds `o` (what the state machine counted since the last tick) to these counters.
    pub fn add(&mut self, o: OnlineStats) {
        self.readiness_failed += o.readiness_failed;
        self.registrations += o.registrations;
        self.registration_failed += o.registration_failed;
        self.heartbeats += o.heartbeats;
        self.heartbeat_failed += o.heartbeat_failed;
        self.deregistrations += o.deregistrations;
        self.warm_ok += o.warm_ok;
        self.warm_failed += o.warm_failed;
    }
}

/// The gauges of one service, set by the poller VM: all but `refresh_duration_us` on every tick
/// ([`ServiceGauges`], in this order), `refresh_duration_us` after each refresh. Envoy names them
/// `wasmcustom.lossless.<service>.<name>`.
pub const GAUGE_NAMES: [&str; 9] = [
    "hosts_total",
    "hosts_serving",
    "hosts_warming",
    "hosts_draining",
    "hosts_down",
    "hosts_stalled",
    "snapshot_version",
    "warmup_overload_protected",
    "refresh_duration_us",
];

/// The position of `refresh_duration_us` in [`GAUGE_NAMES`]: the gauges before it are the tick's.
pub const REFRESH_DURATION_GAUGE: usize = 8;

/// The gauges of one service the poller VM sets on every tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceGauges {
    /// `hosts_*`.
    pub hosts: HostCounts,
    /// `hosts_stalled`: members stalled now ([`crate::stall`]).
    pub stalled: u64,
    /// `snapshot_version`: the published snapshot's version.
    pub snapshot_version: u64,
    /// `warmup_overload_protected`: 1 while the service's warm-up overload protection is in force
    /// ([`crate::view::ServiceView::overload_protected`]), 0 otherwise and without one.
    pub overload_protected: bool,
}

impl ServiceGauges {
    /// The values in [`GAUGE_NAMES`] order, up to `refresh_duration_us` (not included).
    pub fn values(&self) -> [u64; REFRESH_DURATION_GAUGE] {
        let c = self.hosts;
        [
            c.total,
            c.serving,
            c.warming,
            c.draining,
            c.down,
            self.stalled,
            self.snapshot_version,
            u64::from(self.overload_protected),
        ]
    }
}

/// Transparent mode's counters of one corrected service ([`crate::transparent`]), flushed like
/// [`ServiceStats`]: `wasmcustom.lossless.<service>.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorrectionStats {
    /// Captured requests whose pick stayed.
    pub kept: u64,
    /// Captured requests moved to another member, by [`crate::transparent::Why`] in its `ALL`
    /// order.
    pub redirected: [u64; 4],
    /// Left to the caller's pick: nothing in the service serves.
    pub none_serving: u64,
    /// Left to the caller's pick: the path is one of `transparent.exclude_paths`.
    pub excluded: u64,
}

impl CorrectionStats {
    /// The counter names, in the order [`CorrectionStats::take`] returns them.
    pub const NAMES: [&'static str; 7] = [
        "transparent.kept",
        "transparent.redirected.draining",
        "transparent.redirected.down",
        "transparent.redirected.departed",
        "transparent.redirected.share",
        "transparent.untouched.none_serving",
        "transparent.untouched.excluded",
    ];

    /// Counts one decision about a request of this service.
    pub fn count(&mut self, d: &Decision) {
        match d {
            Decision::Keep { .. } => self.kept += 1,
            Decision::Redirect { why, .. } => {
                if let Some(n) = self.redirected.get_mut(why.index()) {
                    *n += 1;
                }
            }
            Decision::Untouched(Untouched::NoneServing) => self.none_serving += 1,
            Decision::Untouched(Untouched::Excluded) => self.excluded += 1,
            Decision::Untouched(_) => {}
        }
    }

    /// The counts since the last call, in [`CorrectionStats::NAMES`] order; resets them.
    pub fn take(&mut self) -> [u64; 7] {
        let s = std::mem::take(self);
        let [a, b, c, d] = s.redirected;
        [s.kept, a, b, c, d, s.none_serving, s.excluded]
    }
}

/// The gauge of one corrected service: the share of its captured requests the current plan
/// redirects, in per mille (the plan's `R`, [`crate::transparent::Plan::redirected_share`]).
pub const CORRECTION_GAUGE: &str = "transparent.redirected_share_permille";

/// Transparent mode's counters of captured requests no corrected service owns, flushed like
/// [`Stats`]: `wasmcustom.lossless.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// The destination belongs to no configured service.
    pub unknown: u64,
    /// Several services list the destination and the request names none of them.
    pub ambiguous: u64,
    /// The destination belongs to a service without `transparent`.
    pub not_corrected: u64,
}

impl CaptureStats {
    /// The counter names, in the order [`CaptureStats::take`] returns them.
    pub const NAMES: [&'static str; 3] =
        ["transparent.untouched.unknown", "transparent.untouched.ambiguous", "transparent.untouched.not_corrected"];

    /// Counts a request left untouched for a reason of its own.
    pub fn count(&mut self, u: Untouched) {
        match u {
            Untouched::Unknown => self.unknown += 1,
            Untouched::Ambiguous => self.ambiguous += 1,
            Untouched::NotCorrected => self.not_corrected += 1,
            Untouched::NoneServing | Untouched::Excluded => {}
        }
    }

    /// The counts since the last call, in [`CaptureStats::NAMES`] order; resets them.
    pub fn take(&mut self) -> [u64; 3] {
        let s = std::mem::take(self);
        [s.unknown, s.ambiguous, s.not_corrected]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transparent::Why;

    /// Every counter lands under its own name: each field set to a distinct value comes back at
    /// the position of its name.
    #[test]
    fn names_and_values_line_up() {
        let mut s = ServiceStats {
            refresh_ok: 1,
            refresh_failed: 2,
            refresh_kept: 3,
            refresh_unchanged: 4,
            instances_skipped: 5,
            protect_threshold_hit: 6,
            picks: 7,
            ejections_enforced: 8,
            ejections_overflow: 9,
            ejection_trials: 10,
            readmitted: 11,
            health_check_success: 12,
            health_check_failure: 13,
            stalls_quiet: 21,
            stalls_connect_failure: 22,
            stall_recovered: 23,
            stall_overflow: 24,
            stall_probes: 25,
            local_503: [14, 15, 16, 17, 18, 19, 20],
            push_applied: 26,
            push_rejected: 27,
            no_membership_fallback: 28,
        };
        let values = s.take();
        let named: Vec<(&str, u64)> = ServiceStats::NAMES.iter().copied().zip(values).collect();
        assert_eq!(named.len(), ServiceStats::NAMES.len());
        for (name, want) in [
            ("refresh_ok", 1),
            ("picks", 7),
            ("outlier_detection.trials", 10),
            ("health_check.failure", 13),
            ("stall_detection.stalls_quiet", 21),
            ("stall_detection.stalls_connect_failure", 22),
            ("stall_detection.recovered", 23),
            ("stall_detection.overflow", 24),
            ("stall_detection.probes", 25),
            ("push_applied", 26),
            ("push_rejected", 27),
            ("routing.no_membership_fallback", 28),
        ] {
            assert_eq!(named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v), Some(want), "{name}");
        }
        for r in Reason::ALL {
            let name = format!("local_503.{}", r.as_str());
            assert_eq!(named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v), Some(14 + r.index() as u64), "{name}");
        }
        assert_eq!(s, ServiceStats::default(), "taken: reset");
        let mut g = Stats {
            notify_marks: 1,
            admin_denied: 2,
            client_header_stripped: 3,
            dispatch_failed: 4,
            admission_admitted: 5,
            admission_unsure: 6,
            online: OnlineStats {
                readiness_failed: 7,
                registrations: 8,
                registration_failed: 9,
                heartbeats: 10,
                heartbeat_failed: 11,
                deregistrations: 12,
                warm_ok: 13,
                warm_failed: 14,
            },
            push: crate::push::PushStats { stream_opened: 15, stream_closed: 16, acks: 17 },
            eureka: EurekaStats { delta_applied: 18, full_applied: 19, delta_hash_mismatch: 20, fetch_failed: 21 },
        };
        let named: Vec<(&str, u64)> = Stats::NAMES.iter().copied().zip(g.take()).collect();
        assert_eq!(
            named[..6],
            [
                ("notify_marks", 1),
                ("admin_denied", 2),
                ("client_header_stripped", 3),
                ("dispatch_failed", 4),
                ("inbound.admission.admitted", 5),
                ("inbound.admission.unsure", 6)
            ]
        );
        for (name, want) in [
            ("inbound.readiness.failure", 7),
            ("inbound.registrations", 8),
            ("inbound.registration_failures", 9),
            ("inbound.heartbeats", 10),
            ("inbound.heartbeat_failures", 11),
            ("inbound.deregistrations", 12),
            ("inbound.self_warm.success", 13),
            ("inbound.self_warm.failure", 14),
            ("push_stream_opened", 15),
            ("push_stream_closed", 16),
            ("push_acks", 17),
            ("eureka.delta_applied", 18),
            ("eureka.full_applied", 19),
            ("eureka.delta_hash_mismatch", 20),
            ("eureka.fetch_failed", 21),
        ] {
            assert_eq!(named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v), Some(want), "{name}");
        }
        assert_eq!(g, Stats::default());
    }

    /// Every tick gauge lands under its own name, and `refresh_duration_us` (set on its own) is
    /// where the glue looks for it, after them.
    #[test]
    fn gauges_line_up() {
        assert_eq!(GAUGE_NAMES[REFRESH_DURATION_GAUGE], "refresh_duration_us");
        assert_eq!(GAUGE_NAMES.len(), REFRESH_DURATION_GAUGE + 1, "refresh_duration_us is the last");
        let g = ServiceGauges {
            hosts: HostCounts { total: 8, serving: 7, warming: 6, draining: 1, down: 0 },
            stalled: 3,
            snapshot_version: 42,
            overload_protected: true,
        };
        let named: Vec<(&str, u64)> = GAUGE_NAMES.iter().copied().zip(g.values()).collect();
        assert_eq!(
            named,
            [
                ("hosts_total", 8),
                ("hosts_serving", 7),
                ("hosts_warming", 6),
                ("hosts_draining", 1),
                ("hosts_down", 0),
                ("hosts_stalled", 3),
                ("snapshot_version", 42),
                ("warmup_overload_protected", 1),
            ]
        );
        let off = ServiceGauges { overload_protected: false, ..g };
        assert_eq!(off.values()[7], 0);
    }

    #[test]
    fn correction_counters_line_up() {
        let mut c = CorrectionStats::default();
        c.count(&Decision::Keep { service: 0, member: 1 });
        for (k, why) in Why::ALL.iter().enumerate() {
            for _ in 0..=k {
                c.count(&Decision::Redirect { service: 0, to: 0, why: *why });
            }
        }
        for _ in 0..5 {
            c.count(&Decision::Untouched(Untouched::NoneServing));
        }
        for _ in 0..6 {
            c.count(&Decision::Untouched(Untouched::Excluded));
        }
        c.count(&Decision::Untouched(Untouched::Unknown));
        let named: Vec<(&str, u64)> = CorrectionStats::NAMES.iter().copied().zip(c.take()).collect();
        for why in Why::ALL {
            let name = format!("transparent.redirected.{}", why.as_str());
            let want = why.index() as u64 + 1;
            assert_eq!(named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v), Some(want), "{name}");
        }
        assert_eq!(named[0], ("transparent.kept", 1));
        assert_eq!(named[5..], [("transparent.untouched.none_serving", 5), ("transparent.untouched.excluded", 6)]);
        assert_eq!(c, CorrectionStats::default());
        let mut g = CaptureStats::default();
        for (n, u) in [(1, Untouched::Unknown), (2, Untouched::Ambiguous), (3, Untouched::NotCorrected)] {
            for _ in 0..n {
                g.count(u);
            }
        }
        g.count(Untouched::Excluded);
        let named: Vec<(&str, u64)> = CaptureStats::NAMES.iter().copied().zip(g.take()).collect();
        let own = [Untouched::Unknown, Untouched::Ambiguous, Untouched::NotCorrected];
        for ((name, got), (want, u)) in named.iter().zip((1..).zip(own)) {
            assert_eq!((*name, *got), (format!("transparent.untouched.{}", u.as_str()).as_str(), want));
        }
    }
}
