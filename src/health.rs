//! Passive health checking (outlier detection) in the vocabulary of Envoy's `OutlierDetection`
//! (api/envoy/config/cluster/v3/outlier_detection.proto, source/common/upstream/outlier_detection_impl.cc):
//! what a response says about the instance that served it, the consecutive-failure counters of
//! one VM, and the ejection record shared by every VM (kept in [`crate::marks::Marks`]).
//!
//! Where lossless differs from Envoy, and why:
//! - a connection failure (nothing reached the instance) ejects at the first one
//!   (`consecutive_local_origin_failure: 1`): an instance that refuses connections is gone;
//! - `max_ejection_percent` defaults to 50, not 10: services here have a handful of instances, and
//!   10 % of three is none (Envoy then still ejects one; lossless keeps the same "at least one");
//! - an ejected instance is re-admitted only after one trial request succeeds, not when its timer
//!   runs out: the timer only makes it eligible for the trial ("answered before trusted");
//! - counters are per worker VM, the ejection is for every VM at once (shared data).

use serde::Serialize;

/// Outlier detection settings of one service (config `services[].outlier_detection`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OutlierDetection {
    /// Off: responses are not judged and nothing is ejected.
    pub enabled: bool,
    /// Consecutive gateway failures (502/503/504 from the instance without the drain header, a
    /// reset, a timeout) that eject it. Envoy's default is 5 (and not enforced by default).
    pub consecutive_gateway_failure: u32,
    /// Consecutive connection failures that eject it (Envoy: 5, with
    /// `split_external_local_origin_errors`).
    pub consecutive_local_origin_failure: u32,
    /// The first ejection lasts this long; the n-th one n times as long (ms; Envoy: 30 s).
    pub base_ejection_time_ms: i64,
    /// The cap on one ejection (ms; Envoy: 300 s).
    pub max_ejection_time_ms: i64,
    /// At most this share of a service's instances is ejected at once, but always at least one
    /// (percent).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            enabled: true,
            consecutive_gateway_failure: 3,
            consecutive_local_origin_failure: 1,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// How long the `times`-th ejection in a row lasts: base × times, capped.
    pub fn ejection_ms(&self, times: u32) -> i64 {
        self.base_ejection_time_ms.saturating_mul(i64::from(times.max(1))).min(self.max_ejection_time_ms)
    }

    /// Whether one more instance may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, total: usize, ejected: usize) -> bool {
        let cap = (total * self.max_ejection_percent as usize / 100).max(1);
        ejected < cap
    }

    /// The consecutive count of `kind` that ejects.
    pub fn threshold(&self, kind: Failure) -> u32 {
        match kind {
            Failure::Gateway => self.consecutive_gateway_failure,
            Failure::LocalOrigin => self.consecutive_local_origin_failure,
        }
        .max(1)
    }
}

/// A failure that counts against an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The instance answered 502/503/504 (without the drain header), reset the stream, or did
    /// not answer in time.
    Gateway,
    /// No connection could be made (refused, or not established within the connect timeout):
    /// nothing reached the instance.
    LocalOrigin,
}

/// What one response says about the instance that served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed(Failure),
    /// Says nothing about the instance (a drain answer, Envoy's own overflow or routing errors).
    Neutral,
}

/// Judges a response: its `:status`, whether it carries the drain header, and Envoy's
/// `response.code_details` (read only for 502/503/504, so `details` is called at most once).
/// Envoy's detail strings: source/common/stream_info/utility and `StreamResetReason` names
/// (`upstream_reset_before_response_started{remote_connection_failure,...}`,
/// `upstream_response_timeout`, `via_upstream`, ...).
pub fn classify(status: Option<u16>, drain_header: bool, details: impl FnOnce() -> Option<String>) -> Outcome {
    if drain_header {
        return Outcome::Neutral;
    }
    match status {
        Some(502..=504) => {}
        Some(_) => return Outcome::Success,
        None => return Outcome::Neutral,
    }
    let Some(d) = details() else { return Outcome::Neutral };
    if d == "via_upstream" {
        Outcome::Failed(Failure::Gateway)
    } else if d.contains("connection_failure") || d.contains("connection_timeout") {
        // refused, or not established within the cluster's connect_timeout (a partition, a host
        // that is gone): either way nothing reached the instance (Envoy's outlier detection
        // counts both as LOCAL_ORIGIN_CONNECT_FAILED / LOCAL_ORIGIN_TIMEOUT)
        Outcome::Failed(Failure::LocalOrigin)
    } else if d.starts_with("upstream_reset") && d.contains("overflow") {
        // Envoy's own circuit breaker: not the instance's fault
        Outcome::Neutral
    } else if d.starts_with("upstream_reset")
        || d == "response_timeout"
        || d.starts_with("upstream_response_timeout")
        || d.starts_with("upstream_per_try")
    {
        // `response_timeout` is what Envoy 1.40 reports for the route's timeout
        Outcome::Failed(Failure::Gateway)
    } else {
        Outcome::Neutral
    }
}

/// One instance's consecutive failures as one VM counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub gateway: u32,
    pub local_origin: u32,
}

impl Counts {
    /// Counts a failure; true when it reaches the threshold (eject).
    pub fn fail(&mut self, kind: Failure, od: &OutlierDetection) -> bool {
        let n = match kind {
            Failure::Gateway => &mut self.gateway,
            Failure::LocalOrigin => &mut self.local_origin,
        };
        *n = n.saturating_add(1);
        *n >= od.threshold(kind)
    }
}

/// An ejection, shared by every VM (see [`crate::marks::Marks::encode`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejection {
    /// Ejections in a row (each failed trial adds one): the n-th lasts n × base.
    pub times: u32,
    /// Out until then; afterwards one trial request decides (ms since the epoch).
    pub until_ms: i64,
    /// The instance's start time when ejected (0 unknown): a newer start (it restarted, the
    /// registry says so) ends the ejection.
    pub start_ms: i64,
    /// A trial request is out until then (0: none).
    pub trial_until_ms: i64,
}

impl Ejection {
    /// Eligible for a trial at `now_ms`: the ejection time is over and no trial is out.
    pub fn trial_due(&self, now_ms: i64) -> bool {
        self.until_ms <= now_ms && self.trial_until_ms <= now_ms
    }

    /// When this record next changes meaning on its own (`i64::MAX`: never).
    pub fn next_change(&self, now_ms: i64) -> i64 {
        [self.until_ms, self.trial_until_ms].into_iter().filter(|t| *t > now_ms).min().unwrap_or(i64::MAX)
    }
}

/// Response header lossless adds to Envoy's answer when no connection to the picked instance
/// could be made: nothing reached it, so any request (a POST too) is safe to send again. A retry
/// policy of an Envoy in front (`retriable_headers`) resends it, and lossless picks again.
pub const UNREACHED_HEADER: &str = "x-lossless-unreached";

/// How long a trial request may be out before another VM may try again (ms): Envoy's default
/// route timeout.
pub const TRIAL_TIMEOUT_MS: i64 = 15_000;

/// Active health checking of one service (config `services[].health_check`), in the vocabulary
/// of Envoy's `HealthCheck` (api/envoy/config/core/v3/health_check.proto). Opt-in. The poller VM
/// sends one probe per instance per interval for the whole Envoy process, through the service's
/// routing cluster with the routing header set to the instance, so the probe takes the path a
/// request would. An instance the registry lists whose check fails is down for every VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    /// `http`: `GET path`, passing on an expected status. `tcp`: the same request, passing on any
    /// answer at all (the instance accepted the connection and spoke HTTP).
    #[serde(rename = "type")]
    pub kind: CheckKind,
    pub path: String,
    /// Passing statuses as `[start, end)` ranges (Envoy's `expected_statuses`), default 200..300.
    pub expected_statuses: Vec<(u16, u16)>,
    pub interval_ms: i64,
    pub timeout_ms: i64,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// A new instance gets no traffic before its first passing check.
    pub no_traffic_before_first_pass: bool,
}

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Http,
            path: "/".into(),
            expected_statuses: vec![(200, 300)],
            interval_ms: 5000,
            timeout_ms: 1000,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            no_traffic_before_first_pass: false,
        }
    }
}

impl HealthCheck {
    /// Whether a probe answered with `status` (`None`: no answer: connection failure, reset or
    /// timeout) passes.
    pub fn passes(&self, status: Option<u16>) -> bool {
        match (self.kind, status) {
            (_, None) => false,
            (CheckKind::Tcp, Some(_)) => true,
            (CheckKind::Http, Some(s)) => self.expected_statuses.iter().any(|(lo, hi)| (*lo..*hi).contains(&s)),
        }
    }
}

/// One instance's active health as the poller VM tracks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeState {
    pub next_due_ms: i64,
    pub in_flight: bool,
    /// Consecutive passing / failing probes.
    pub passes: u32,
    pub failures: u32,
    /// The current verdict: `None` until the thresholds decided once.
    pub healthy: Option<bool>,
}

impl ProbeState {
    /// Records a probe result; returns the new verdict when it changed.
    pub fn record(&mut self, passed: bool, hc: &HealthCheck) -> Option<bool> {
        self.in_flight = false;
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        let verdict = if self.failures >= hc.unhealthy_threshold.max(1) {
            Some(false)
        } else if self.passes >= hc.healthy_threshold.max(1) {
            Some(true)
        } else {
            None
        };
        match verdict {
            Some(v) if self.healthy != Some(v) => {
                self.healthy = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od() -> OutlierDetection {
        OutlierDetection::default()
    }

    #[test]
    fn classification_table() {
        let cases: &[(Option<u16>, bool, Option<&str>, Outcome)] = &[
            (Some(200), false, None, Outcome::Success),
            (Some(404), false, None, Outcome::Success),
            (Some(500), false, None, Outcome::Success),
            (Some(503), false, Some("via_upstream"), Outcome::Failed(Failure::Gateway)),
            (Some(502), false, Some("via_upstream"), Outcome::Failed(Failure::Gateway)),
            (Some(503), true, Some("via_upstream"), Outcome::Neutral),
            (
                Some(503),
                false,
                Some("upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_Connection_refused}"),
                Outcome::Failed(Failure::LocalOrigin),
            ),
            (
                Some(503),
                false,
                Some("upstream_reset_before_response_started{local_connection_failure}"),
                Outcome::Failed(Failure::LocalOrigin),
            ),
            (
                Some(503),
                false,
                Some("upstream_reset_before_response_started{connection_timeout}"),
                Outcome::Failed(Failure::LocalOrigin),
            ),
            (Some(503), false, Some("upstream_reset_before_response_started{connection_termination}"), Outcome::Failed(Failure::Gateway)),
            (Some(503), false, Some("upstream_reset_before_response_started{remote_reset}"), Outcome::Failed(Failure::Gateway)),
            (Some(504), false, Some("upstream_response_timeout"), Outcome::Failed(Failure::Gateway)),
            (Some(504), false, Some("response_timeout"), Outcome::Failed(Failure::Gateway)),
            (Some(504), false, Some("upstream_per_try_timeout"), Outcome::Failed(Failure::Gateway)),
            (Some(503), false, Some("upstream_reset_before_response_started{overflow}"), Outcome::Neutral),
            (Some(503), false, Some("no_healthy_upstream"), Outcome::Neutral),
            (Some(503), false, Some("cluster_not_found"), Outcome::Neutral),
            (Some(503), false, None, Outcome::Neutral),
            (None, false, None, Outcome::Neutral),
        ];
        for (status, drain, details, want) in cases {
            let got = classify(*status, *drain, || details.map(String::from));
            assert_eq!(got, *want, "{status:?} drain={drain} {details:?}");
        }
        // details are read only for gateway statuses
        assert_eq!(classify(Some(200), false, || panic!("not read")), Outcome::Success);
    }

    #[test]
    fn consecutive_counts() {
        let od = od();
        let mut c = Counts::default();
        assert!(c.fail(Failure::LocalOrigin, &od), "a connection failure ejects at the first");
        let mut c = Counts::default();
        assert!(!c.fail(Failure::Gateway, &od));
        assert!(!c.fail(Failure::Gateway, &od));
        assert!(c.fail(Failure::Gateway, &od), "the third gateway failure ejects");
        // thresholds of 0 mean 1, never "always"
        let zero = OutlierDetection { consecutive_gateway_failure: 0, ..od };
        assert!(Counts::default().fail(Failure::Gateway, &zero));
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let od = od();
        assert_eq!(od.ejection_ms(1), 30_000);
        assert_eq!(od.ejection_ms(2), 60_000);
        assert_eq!(od.ejection_ms(10), 300_000);
        assert_eq!(od.ejection_ms(u32::MAX), 300_000);
        assert_eq!(od.ejection_ms(0), 30_000);
    }

    #[test]
    fn max_share_keeps_the_set() {
        let od = od();
        // 50 % of 3 is 1: the second one stays
        assert!(od.may_eject(3, 0));
        assert!(!od.may_eject(3, 1));
        // at least one, even of one or two
        assert!(od.may_eject(1, 0) && od.may_eject(2, 0));
        assert!(!od.may_eject(2, 1));
        assert!(od.may_eject(10, 4) && !od.may_eject(10, 5));
        let ten = OutlierDetection { max_ejection_percent: 10, ..od };
        assert!(ten.may_eject(3, 0) && !ten.may_eject(3, 1), "Envoy's 'at least one'");
    }

    #[test]
    fn probe_verdicts_follow_the_thresholds() {
        let hc = HealthCheck { unhealthy_threshold: 2, healthy_threshold: 2, ..HealthCheck::default() };
        let mut p = ProbeState::default();
        assert_eq!(p.record(true, &hc), None, "one pass of two");
        assert_eq!(p.record(true, &hc), Some(true));
        assert_eq!(p.record(true, &hc), None, "no change");
        assert_eq!(p.record(false, &hc), None, "one failure of two");
        assert_eq!(p.record(true, &hc), None, "a pass resets the failures");
        assert_eq!(p.record(false, &hc), None);
        assert_eq!(p.record(false, &hc), Some(false));
        assert_eq!(p.record(true, &hc), None);
        assert_eq!(p.record(true, &hc), Some(true));
        // Envoy's defaults here: the first failure of a new instance does not decide yet
        let mut p = ProbeState::default();
        assert_eq!(p.record(false, &HealthCheck::default()), None);
        assert_eq!(p.record(false, &HealthCheck::default()), Some(false));
    }

    #[test]
    fn probe_answers() {
        let http = HealthCheck { expected_statuses: vec![(200, 300), (404, 405)], ..HealthCheck::default() };
        assert!(http.passes(Some(200)) && http.passes(Some(299)) && http.passes(Some(404)));
        assert!(!http.passes(Some(300)) && !http.passes(Some(503)) && !http.passes(None));
        let tcp = HealthCheck { kind: CheckKind::Tcp, ..HealthCheck::default() };
        assert!(tcp.passes(Some(503)) && tcp.passes(Some(200)));
        assert!(!tcp.passes(None), "no answer: the connection failed or timed out");
    }

    #[test]
    fn trial_due_and_next_change() {
        let e = Ejection { times: 1, until_ms: 1000, start_ms: 0, trial_until_ms: 0 };
        assert!(!e.trial_due(999));
        assert!(e.trial_due(1000));
        assert_eq!(e.next_change(0), 1000);
        assert_eq!(e.next_change(1000), i64::MAX);
        let out = Ejection { trial_until_ms: 5000, ..e };
        assert!(!out.trial_due(2000), "a trial is out");
        assert!(out.trial_due(5000), "a trial that never came back does not block forever");
        assert_eq!(out.next_change(2000), 5000);
    }
}
