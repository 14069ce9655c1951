//! Stall detection from the traffic: an instance that stops answering while the others of its
//! service answer, or whose connections cannot be made, is taken out of new picks at once, and
//! the first answer from it brings it back. See docs/stall-detection.md for what it is in Envoy's
//! and Finagle's terms and how it avoids false positives.
//!
//! Facts in, decisions out, no proxy-wasm calls. Each worker VM keeps its own [`Detector`] (what it
//! sent, what came back, how fast each instance answers it); a decision is shared with every VM
//! as a stall mark ([`crate::marks::Marks::stalled`], written with [`crate::marks::stall`] and
//! removed with [`crate::marks::recover`]), which the request path applies like an ejection: the
//! member is down for the balancer. Requests stay per VM because a shared write per request would
//! cost two compare-and-swaps on one key shared by every worker; the evidence needed is in every
//! VM that sends to the instance, and the first VM to see a stall takes it out for all.
//!
//! The rule, per instance X of a service, in one VM:
//! - X is *quiet* since `max(last answer from X, oldest request pending on X)`: it has had work
//!   and answered nothing since;
//! - X's *bound* is `max(floor_ms, latency_factor × p99)` of X's own recent answer times (a
//!   log-bucketed sketch of the last 256..512 answers in this VM; 1 s until 8 answers came);
//! - X is stalled when it has been quiet for longer than its bound **and** another instance of the
//!   service answered, within that instance's own bound, a request sent after X went quiet (the
//!   caller, its network and the service's dependencies are fine: it is X), or when a connection
//!   to X could not be made;
//! - X is back at the first answer from it: a late response to a request that was on it, or the
//!   answer to a stall probe ([`Detector::probes_due`]: no request is sent to it while it is out).
//!
//! Never all at once: [`may_stall`] keeps at most `max_stalled_percent` of a service's instances
//! stalled (at least one may be, as Envoy's `max_ejection_percent`) and never the last one that
//! serves. Requests older than `max_pending_ms`, requests that outlived a stall the instance came
//! back from, and requests the service's configuration excludes (long polls, event streams,
//! upgrades) are not held against an instance.

use std::collections::VecDeque;

use serde::Serialize;

use crate::clock::FastMap as HashMap;
use crate::instance::Instance;
use crate::marks::{Marks, StallCause};
use crate::registry::HttpRequest;

/// Stall detection settings of one service (config `services[].stall_detection`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StallDetection {
    /// Off: no request is tracked and nothing is stalled.
    pub enabled: bool,
    /// The least an instance may be quiet before it is stalled (ms). 200 ms is Linux's
    /// `TCP_RTO_MIN`: below it, a single lost segment looks like a stall.
    pub floor_ms: i64,
    /// The bound is this many times the instance's own p99 answer time (when above the floor).
    pub latency_factor: f64,
    /// At most this share of a service's instances is stalled at once, but always one may be
    /// (percent), and never the last one that serves.
    pub max_stalled_percent: u32,
    /// A request pending for longer than this is no longer held against its instance (ms): a
    /// long poll, a stream, or a request whose end was never seen.
    pub max_pending_ms: i64,
    /// Requests whose path (before `?`) starts with one of these are not tracked (long polls,
    /// downloads, streams).
    pub exclude_paths: Vec<String>,
    /// The path of a stall probe: `GET`, and any answer but 502/503/504 brings the instance back.
    pub probe_path: String,
    /// A stalled instance is probed this long after it was stalled, then at twice the interval
    /// after each probe that got no answer, up to [`MAX_PROBE_INTERVAL_MS`] (ms). Also a probe's
    /// timeout.
    pub probe_interval_ms: i64,
}

impl Default for StallDetection {
    fn default() -> Self {
        StallDetection {
            enabled: true,
            floor_ms: 200,
            latency_factor: 3.0,
            max_stalled_percent: 50,
            max_pending_ms: 30_000,
            exclude_paths: Vec::new(),
            probe_path: "/".into(),
            probe_interval_ms: 1000,
        }
    }
}

/// The longest wait between two probes of a stalled instance (ms).
pub const MAX_PROBE_INTERVAL_MS: i64 = 30_000;
/// Answers from an instance (in one VM) before its own latency sets its bound.
pub const MIN_SAMPLES: u32 = 8;
/// The p99 assumed for an instance until [`MIN_SAMPLES`] answers came (ms).
pub const COLD_P99_MS: i64 = 1000;
/// The latency sketch keeps the last `WINDOW..2 × WINDOW` answers (halved when full).
pub const WINDOW: u32 = 256;
/// Requests tracked per instance per VM; more are not tracked (their end is ignored).
pub const MAX_PENDING: usize = 1024;
/// Instances tracked per service per VM.
pub const MAX_TRACKS: usize = 4096;

impl StallDetection {
    /// Checks the ranges; the error names the field (under `services[].stall_detection`).
    pub fn validate(&self) -> Result<(), String> {
        let bad = |field: &str, why: &str| Err(format!("stall_detection.{field}: {why}"));
        if !(10..=60_000).contains(&self.floor_ms) {
            return bad("floor_ms", "must be 10..60000");
        }
        if !(self.latency_factor.is_finite() && (1.0..=100.0).contains(&self.latency_factor)) {
            return bad("latency_factor", "must be 1..100");
        }
        if self.max_stalled_percent > 100 {
            return bad("max_stalled_percent", "must be 0..100");
        }
        if !(self.floor_ms..=3_600_000).contains(&self.max_pending_ms) {
            return bad("max_pending_ms", "must be floor_ms..3600000");
        }
        if !(100..=MAX_PROBE_INTERVAL_MS).contains(&self.probe_interval_ms) {
            return bad("probe_interval_ms", "must be 100..30000");
        }
        if !self.probe_path.starts_with('/') || self.probe_path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return bad("probe_path", "must be an absolute path without spaces or control characters");
        }
        if let Some(p) = self.exclude_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("stall_detection.exclude_paths: {p:?} must start with '/'"));
        }
        Ok(())
    }

    /// Whether a request is tracked: detection on, the path not excluded, and not a request that
    /// is answered late by design: a protocol upgrade (WebSocket: `upgrade`), a server-sent event
    /// stream (`accept: text/event-stream`). `header` reads a request header by lower-case name.
    pub fn tracks<'h>(&self, path: &str, header: impl Fn(&str) -> Option<&'h str>) -> bool {
        if !self.enabled {
            return false;
        }
        let path = path.split('?').next().unwrap_or_default();
        if self.exclude_paths.iter().any(|p| path.starts_with(p.as_str())) {
            return false;
        }
        if header("upgrade").is_some() {
            return false;
        }
        !header("accept").is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream"))
    }

    /// The bound for an instance whose recent p99 answer time is `p99_ms` (`None`: not known yet).
    pub fn bound_ms(&self, p99_ms: Option<i64>) -> i64 {
        let p99 = p99_ms.unwrap_or(COLD_P99_MS) as f64;
        let scaled = (p99 * self.latency_factor).ceil();
        // a float above i64's range saturates
        self.floor_ms.max(scaled as i64)
    }
}

/// Upper edges of the latency sketch's buckets (ms): ⌈2^(i/2)⌉, so each bucket is about 41 %
/// wider than the one before, from 1 ms to 46 s; the last one takes everything above.
const EDGES: [i64; 32] = [
    1, 2, 2, 3, 4, 6, 8, 12, 16, 23, 32, 46, 64, 91, 128, 182, 256, 363, 512, 725, 1024, 1449, 2048, 2897, 4096, 5793,
    8192, 11586, 16384, 23171, 32768, 46341,
];

/// One instance's recent answer times as one VM saw them: a log-bucketed histogram of the last
/// [`WINDOW`]..2 × [`WINDOW`] answers (all counts are halved when it holds 2 × `WINDOW`), 64 bytes.
/// Its quantiles are bucket edges: at most 41 % above the true value, never below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    counts: [u16; 32],
    total: u32,
    /// Answers recorded since the instance was first seen (saturating).
    seen: u32,
}

impl Latency {
    /// Records one answer time (ms; a negative one, from a clock step back, counts as 0).
    pub fn record(&mut self, ms: i64) {
        let i = EDGES.partition_point(|e| *e < ms).min(EDGES.len() - 1);
        if let Some(c) = self.counts.get_mut(i) {
            *c = c.saturating_add(1);
        }
        self.total += 1;
        self.seen = self.seen.saturating_add(1);
        if self.total >= 2 * WINDOW {
            for c in &mut self.counts {
                *c >>= 1;
            }
            self.total = self.counts.iter().map(|c| u32::from(*c)).sum();
        }
    }

    /// The answer time under which a share `q` (0..1) of the recorded answers came (a bucket's
    /// upper edge, ms); `None` before [`MIN_SAMPLES`] answers. With few answers it is their
    /// maximum.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        if self.seen < MIN_SAMPLES || self.total == 0 {
            return None;
        }
        let need = ((q.clamp(0.0, 1.0) * f64::from(self.total)).ceil() as u32).max(1);
        let mut cum = 0u32;
        for (c, e) in self.counts.iter().zip(EDGES) {
            cum += u32::from(*c);
            if cum >= need {
                return Some(e);
            }
        }
        EDGES.last().copied()
    }
}

/// A request being tracked: hand it back with [`Detector::on_response`] or
/// [`Detector::on_no_response`], for the instance it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sent {
    /// When the request's last byte went to the instance (ms since the epoch).
    pub at_ms: i64,
    seq: u32,
    /// The instance's bound then: an answer within it is a normal one.
    bound_ms: i64,
}

/// A decision for the glue to share.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Take `addr` of service `svc` out for every VM ([`crate::marks::stall`], guarded by
    /// [`may_stall`]). With [`StallCause::Quiet`], `quiet_ms` is how long it answered nothing
    /// with work on it and `bound_ms` its bound (0 and 0 for a connect failure).
    Stall { svc: usize, addr: String, cause: StallCause, quiet_ms: i64, bound_ms: i64 },
    /// `addr` answered: bring it back for every VM ([`crate::marks::recover`]).
    Recover { svc: usize, addr: String },
}

/// What a response says for stall detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The instance answered (whatever it said: an error status is an answer).
    Answered,
    /// No connection could be made to it (refused, or not established in time).
    ConnectFailure,
    /// It did not answer, for a reason that says nothing about it being stalled (a reset, a
    /// timeout, Envoy's own overflow or routing errors): the request just ends.
    NoAnswer,
}

/// Judges a routed response by its `:status` and, for 502/503/504 only, Envoy's
/// `response.code_details` (so `details` is read at most once, and rarely): `via_upstream` is the
/// instance's own answer; `upstream_reset_before_response_started{...connection_failure...}` or
/// `{connection_timeout}` (flag UF) means nothing reached it; anything else is no answer.
pub fn judge(status: Option<u16>, details: impl FnOnce() -> Option<String>) -> Reply {
    match status {
        Some(502..=504) => {}
        Some(_) => return Reply::Answered,
        None => return Reply::NoAnswer,
    }
    match details() {
        Some(d) if d == "via_upstream" => Reply::Answered,
        Some(d) if d.contains("connection_failure") || d.contains("connection_timeout") => Reply::ConnectFailure,
        _ => Reply::NoAnswer,
    }
}

/// Whether a stall probe's answer (`None`: none came) brings its instance back: any status but
/// 502/503/504, which Envoy itself answers when it cannot reach the instance.
pub fn probe_answered(status: Option<u16>) -> bool {
    status.is_some_and(|s| !(502..=504).contains(&s))
}

/// A stall probe of `addr` through the service's routing cluster, with the routing header
/// (`route_header`) naming the instance: the path a request takes. Times out after the probe
/// interval.
pub fn probe_request(cfg: &StallDetection, route_header: &str, addr: &str) -> HttpRequest {
    let headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), cfg.probe_path.clone()),
        (":authority".to_string(), addr.to_string()),
        (route_header.to_string(), addr.to_string()),
        ("user-agent".to_string(), "lossless-stall-probe".to_string()),
    ];
    HttpRequest { headers, body: None, timeout_ms: cfg.probe_interval_ms.max(1) as u64 }
}

/// Whether one more instance of a service may be stalled: `addr` is a serving member of
/// `members` (the registry's list) not stalled yet; the service's stalled members stay within
/// `max_stalled_percent` of its serving ones (at least one may be); and at least one serving
/// member stays in: not stalled, ejected, failing its health check or marked draining. `marks` as
/// they are in shared data at the time of the write.
pub fn may_stall(members: &[Instance], marks: &Marks, addr: &str, max_stalled_percent: u32) -> bool {
    let Some(me) = crate::instance::find(members, addr) else { return false };
    if !me.state.is_serving() || marks.is_stalled(me) {
        return false;
    }
    let serving = members.iter().filter(|m| m.state.is_serving());
    let (mut total, mut stalled, mut usable_others) = (0usize, 0usize, 0usize);
    for m in serving {
        total += 1;
        if marks.is_stalled(m) {
            stalled += 1;
        } else if m.addr != addr && !(marks.applies(m) || marks.is_ejected(m) || marks.is_unhealthy(m)) {
            usable_others += 1;
        }
    }
    let cap = (total * max_stalled_percent as usize / 100).max(1);
    stalled < cap && usable_others >= 1
}

/// One instance as one VM sees it.
#[derive(Debug, Clone, Default)]
struct Track {
    /// Requests on it without an answer yet, oldest first.
    pending: VecDeque<Sent>,
    latency: Latency,
    /// Its bound (ms), recomputed on each answer.
    bound_ms: i64,
    /// When it last answered (ms; `i64::MIN`: never).
    last_answer_ms: i64,
    /// The latest send time among its requests answered within its bound: evidence, for its
    /// siblings, that the caller, its network and the service's dependencies are fine.
    last_normal_sent_ms: i64,
    /// Pending requests up to this one outlived a stall it came back from: not held against it.
    excused: Option<Sent>,
    /// It was stalled when this VM last looked ([`Detector::on_marks`]).
    stalled_seen: bool,
    /// When a stall was last proposed for it (at most one proposal per bound).
    proposed_ms: i64,
}

impl Track {
    fn new(cfg: &StallDetection) -> Self {
        Track {
            bound_ms: cfg.bound_ms(None),
            last_answer_ms: i64::MIN,
            last_normal_sent_ms: i64::MIN,
            proposed_ms: i64::MIN,
            ..Track::default()
        }
    }

    /// The oldest pending request not excused.
    fn oldest(&self) -> Option<Sent> {
        let excused = self.excused;
        self.pending.iter().copied().find(|s| excused.is_none_or(|e| *s > e))
    }

    /// Since when it has had work and answered nothing (`None`: nothing held against it).
    fn quiet_since(&self) -> Option<i64> {
        self.oldest().map(|s| s.at_ms.max(self.last_answer_ms))
    }

    fn remove(&mut self, sent: Sent) -> bool {
        match self.pending.binary_search(&sent) {
            Ok(i) => self.pending.remove(i).is_some(),
            Err(_) => false,
        }
    }

    /// Excuses what is pending now (the instance came back from a stall).
    fn excuse_pending(&mut self) {
        if let Some(last) = self.pending.back() {
            self.excused = Some(*last);
        }
    }
}

#[derive(Debug, Clone)]
struct ServiceTracks {
    cfg: StallDetection,
    tracks: HashMap<String, Track>,
    /// An instance is past its deadline but no sibling has answered a later request yet: the
    /// next tracked answer brings a look.
    waiting: bool,
}

/// A stalled instance's probe schedule (poller VM).
#[derive(Debug, Clone, Copy)]
struct ProbeSlot {
    next_ms: i64,
    interval_ms: i64,
    in_flight: bool,
}

/// One VM's stall detector: the requests it sent, the answers it got, and the decisions they
/// lead to. Feed it the facts of the request and response paths; call [`Detector::tick`] on
/// every request, every response and on the timer (it costs a comparison unless a deadline
/// passed).
#[derive(Debug, Clone, Default)]
pub struct Detector {
    services: Vec<ServiceTracks>,
    seq: u32,
    /// No deadline falls before this (a scan may find none: it recomputes it).
    next_check_ms: i64,
    probes: HashMap<String, ProbeSlot>,
}

impl Detector {
    /// A detector for services with these settings, in the configuration's order (`svc` indexes).
    pub fn new(cfgs: Vec<StallDetection>) -> Self {
        let services =
            cfgs.into_iter().map(|cfg| ServiceTracks { cfg, tracks: HashMap::default(), waiting: false }).collect();
        Detector { services, seq: 0, next_check_ms: i64::MAX, probes: HashMap::default() }
    }

    /// The settings of service `svc`.
    pub fn config(&self, svc: usize) -> Option<&StallDetection> {
        self.services.get(svc).map(|s| &s.cfg)
    }

    /// The request's last byte went to `addr` of service `svc` at `now_ms` (headers with
    /// end_of_stream, or the body's last chunk: a client that uploads slowly is not the
    /// instance's delay). Returns the ticket to hand back, or `None` when not tracked (detection
    /// off, too many pending), in which case nothing is to be handed back.
    pub fn on_request_sent(&mut self, svc: usize, addr: &str, now_ms: i64) -> Option<Sent> {
        let st = self.services.get_mut(svc)?;
        if !st.cfg.enabled {
            return None;
        }
        if !st.tracks.contains_key(addr) && st.tracks.len() >= MAX_TRACKS {
            return None;
        }
        let t = st.tracks.entry(addr.to_string()).or_insert_with(|| Track::new(&st.cfg));
        if t.pending.len() >= MAX_PENDING {
            return None;
        }
        self.seq = self.seq.wrapping_add(1);
        let sent = Sent { at_ms: now_ms, seq: self.seq, bound_ms: t.bound_ms };
        let was_quiet = t.quiet_since().is_some();
        match t.pending.back() {
            Some(last) if *last > sent => {
                // the clock stepped back: keep the order
                let at = t.pending.partition_point(|s| *s < sent);
                t.pending.insert(at, sent);
            }
            _ => t.pending.push_back(sent),
        }
        if !was_quiet {
            if let Some(q) = t.quiet_since() {
                self.next_check_ms = self.next_check_ms.min(q.saturating_add(t.bound_ms).saturating_add(1));
            }
        }
        Some(sent)
    }

    /// `addr` of service `svc` answered at `now_ms` (response headers from the instance itself:
    /// [`judge`] said [`Reply::Answered`], or a stall probe got an answer). `sent` is the ticket
    /// of this request when it was tracked and sent to `addr` (`None` for a probe, or when Envoy
    /// retried the request on `addr` after another address failed: its time is not `addr`'s).
    /// `marks` are the VM's current marks. Returns [`Change::Recover`] when `addr` is stalled.
    ///
    /// An answer to a request that was on `addr` while it was stalled is not learnt as its
    /// latency: the stall already judged it abnormal, and learning it would blunt the next
    /// detection (a freeze does not make the next freeze normal).
    pub fn on_response(
        &mut self,
        svc: usize,
        addr: &str,
        sent: Option<Sent>,
        now_ms: i64,
        marks: &Marks,
    ) -> Option<Change> {
        let stalled = marks.stalled.contains_key(addr);
        if let Some(st) = self.services.get_mut(svc) {
            let cfg = &st.cfg;
            let full = st.tracks.len() >= MAX_TRACKS;
            let t = match st.tracks.get_mut(addr) {
                Some(t) => Some(t),
                None if cfg.enabled && !full => {
                    Some(st.tracks.entry(addr.to_string()).or_insert_with(|| Track::new(cfg)))
                }
                None => None,
            };
            if let Some(t) = t {
                if let Some(s) = sent {
                    if t.remove(s) {
                        let took = now_ms.saturating_sub(s.at_ms).max(0);
                        // within the bound it had when the request went: what it was known to do
                        if took <= s.bound_ms {
                            t.last_normal_sent_ms = t.last_normal_sent_ms.max(s.at_ms);
                        }
                        // an answer that outlived a stall, or came during one, is not learnt
                        let excused = t.excused.is_some_and(|e| s <= e);
                        if !stalled && !excused {
                            t.latency.record(took);
                            t.bound_ms = cfg.bound_ms(t.latency.quantile(0.99));
                        }
                    }
                }
                t.last_answer_ms = t.last_answer_ms.max(now_ms);
                if stalled {
                    t.excuse_pending();
                    t.stalled_seen = false;
                }
                if let Some(q) = t.quiet_since() {
                    self.next_check_ms = self.next_check_ms.min(q.saturating_add(t.bound_ms).saturating_add(1));
                }
            }
            // evidence for a sibling that is past its deadline: look again at the next tick
            if sent.is_some() && st.waiting {
                self.next_check_ms = self.next_check_ms.min(now_ms);
            }
        }
        stalled.then(|| Change::Recover { svc, addr: addr.to_string() })
    }

    /// A tracked request to `addr` ended without an answer from it (a reset, a timeout, the
    /// client gave up, Envoy retried it elsewhere, a local reply): it is no longer pending and
    /// nothing is learnt.
    pub fn on_no_response(&mut self, svc: usize, addr: &str, sent: Sent) {
        if let Some(t) = self.services.get_mut(svc).and_then(|st| st.tracks.get_mut(addr)) {
            t.remove(sent);
        }
    }

    /// No connection to `addr` of service `svc` could be made ([`Reply::ConnectFailure`] on the
    /// final response: refused, or not established within the cluster's `connect_timeout`).
    /// Returns [`Change::Stall`] unless detection is off or it is stalled already.
    pub fn on_connect_failure(&mut self, svc: usize, addr: &str, now_ms: i64, marks: &Marks) -> Option<Change> {
        let st = self.services.get_mut(svc)?;
        if !st.cfg.enabled || marks.stalled.contains_key(addr) {
            return None;
        }
        if let Some(t) = st.tracks.get_mut(addr) {
            t.proposed_ms = now_ms;
        }
        Some(Change::Stall { svc, addr: addr.to_string(), cause: StallCause::ConnectFailure, quiet_ms: 0, bound_ms: 0 })
    }

    /// The VM re-read the marks (after a generation change): a stall that ended elsewhere
    /// excuses what this VM still has pending on the instance, as an answer here would.
    pub fn on_marks(&mut self, marks: &Marks) {
        for st in &mut self.services {
            for (addr, t) in &mut st.tracks {
                let stalled = marks.stalled.contains_key(addr);
                if t.stalled_seen && !stalled {
                    t.excuse_pending();
                }
                t.stalled_seen = stalled;
            }
        }
    }

    /// Forgets the instances of service `svc` that `keep` says are no longer members.
    pub fn retain(&mut self, svc: usize, keep: impl Fn(&str) -> bool) {
        if let Some(st) = self.services.get_mut(svc) {
            st.tracks.retain(|addr, _| keep(addr));
        }
    }

    /// The decisions due at `now_ms`: instances quiet for longer than their bound while a sibling
    /// answered a request sent after they went quiet. `marks` are the VM's current marks. Costs a
    /// comparison when no deadline passed.
    pub fn tick(&mut self, now_ms: i64, marks: &Marks) -> Vec<Change> {
        if now_ms < self.next_check_ms {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut next = i64::MAX;
        for (svc, st) in self.services.iter_mut().enumerate() {
            if !st.cfg.enabled || st.tracks.is_empty() {
                continue;
            }
            let horizon = now_ms.saturating_sub(st.cfg.max_pending_ms);
            for t in st.tracks.values_mut() {
                while t.pending.front().is_some_and(|s| s.at_ms < horizon) {
                    t.pending.pop_front();
                }
            }
            // the two latest send times answered normally, to find "some other instance" in one
            // pass
            let (mut best, mut best_addr, mut second) = (i64::MIN, "", i64::MIN);
            for (addr, t) in &st.tracks {
                let v = t.last_normal_sent_ms;
                if v > best {
                    second = best;
                    best = v;
                    best_addr = addr.as_str();
                } else if v > second {
                    second = v;
                }
            }
            st.waiting = false;
            for (addr, t) in &st.tracks {
                if marks.stalled.contains_key(addr) {
                    continue;
                }
                let Some(quiet) = t.quiet_since() else { continue };
                // the oldest request is forgotten at the horizon, so look again then
                next = next.min(t.oldest().map_or(i64::MAX, |s| s.at_ms.saturating_add(st.cfg.max_pending_ms)));
                let deadline = quiet.saturating_add(t.bound_ms);
                if now_ms <= deadline {
                    next = next.min(deadline.saturating_add(1));
                    continue;
                }
                let others = if best_addr == addr.as_str() { second } else { best };
                if others <= quiet {
                    // no evidence yet: a sibling's answer brings the next look (on_response)
                    st.waiting = true;
                    continue;
                }
                let again = t.proposed_ms.saturating_add(t.bound_ms);
                if now_ms < again {
                    next = next.min(again);
                    continue;
                }
                out.push(Change::Stall {
                    svc,
                    addr: addr.clone(),
                    cause: StallCause::Quiet,
                    quiet_ms: now_ms.saturating_sub(quiet),
                    bound_ms: t.bound_ms,
                });
                next = next.min(now_ms.saturating_add(t.bound_ms));
            }
        }
        for c in &out {
            if let Change::Stall { svc, addr, .. } = c {
                if let Some(t) = self.services.get_mut(*svc).and_then(|st| st.tracks.get_mut(addr)) {
                    t.proposed_ms = now_ms;
                }
            }
        }
        self.next_check_ms = next;
        out
    }

    /// The poller VM's stall probes due at `now_ms`, as `(svc, addr)`: one per stalled instance,
    /// `probe_interval_ms` after it was stalled, then after twice the last interval each time a
    /// probe got no answer (up to [`MAX_PROBE_INTERVAL_MS`]); one in flight at a time.
    /// `service_of` gives the service that lists an address (`None`: no probe).
    pub fn probes_due(
        &mut self,
        marks: &Marks,
        now_ms: i64,
        service_of: impl Fn(&str) -> Option<usize>,
    ) -> Vec<(usize, String)> {
        if marks.stalled.is_empty() && self.probes.is_empty() {
            return Vec::new();
        }
        self.probes.retain(|addr, _| marks.stalled.contains_key(addr));
        let mut out = Vec::new();
        for (addr, stall) in &marks.stalled {
            let Some(svc) = service_of(addr) else { continue };
            let Some(cfg) = self.services.get(svc).map(|s| &s.cfg) else { continue };
            let interval = cfg.probe_interval_ms.max(1);
            let slot = self.probes.entry(addr.clone()).or_insert(ProbeSlot {
                next_ms: stall.since_ms.saturating_add(interval),
                interval_ms: interval,
                in_flight: false,
            });
            if slot.in_flight || now_ms < slot.next_ms {
                continue;
            }
            slot.in_flight = true;
            out.push((svc, addr.clone()));
        }
        out
    }

    /// The answer to `addr`'s stall probe at `now_ms` ([`probe_answered`]). An answer ends the
    /// schedule (hand it to [`Detector::on_response`] as well, with no ticket, for the
    /// [`Change::Recover`]); no answer doubles the interval.
    pub fn on_probe_reply(&mut self, addr: &str, answered: bool, now_ms: i64) {
        if answered {
            self.probes.remove(addr);
        } else if let Some(p) = self.probes.get_mut(addr) {
            p.in_flight = false;
            p.interval_ms = p.interval_ms.saturating_mul(2).min(MAX_PROBE_INTERVAL_MS);
            p.next_ms = now_ms.saturating_add(p.interval_ms);
        }
    }

    /// The probe of `addr` could not be dispatched: due again after its interval.
    pub fn probe_dispatch_failed(&mut self, addr: &str, now_ms: i64) {
        if let Some(p) = self.probes.get_mut(addr) {
            p.in_flight = false;
            p.next_ms = now_ms.saturating_add(p.interval_ms);
        }
    }

    /// Leadership changed: the probe schedule starts afresh.
    pub fn reset_probes(&mut self) {
        self.probes.clear();
    }

    /// How many requests this VM has pending on `addr` of `svc` (for the membership document).
    pub fn pending(&self, svc: usize, addr: &str) -> usize {
        self.services.get(svc).and_then(|st| st.tracks.get(addr)).map_or(0, |t| t.pending.len())
    }

    /// `addr`'s current bound in this VM (ms), if it is tracked.
    pub fn bound(&self, svc: usize, addr: &str) -> Option<i64> {
        self.services.get(svc).and_then(|st| st.tracks.get(addr)).map(|t| t.bound_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use super::*;
    use crate::clock::Rng;
    use crate::instance::State;
    use crate::marks::{self, apply_marks};
    use crate::store::{FakeShared, Keys, Shared};

    const T0: i64 = 1_800_000_000_000;
    /// The caller gives up on a request after this long (ms).
    const CLIENT_TIMEOUT_MS: i64 = 3000;

    fn member(addr: &str) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: Some(T0 - 3_600_000), warmup_ms: 0, state: State::Serving }
    }

    /// A simulated instance's answer time for a request sent at a time (ms).
    type LatencyFn = Box<dyn Fn(i64, &mut Rng) -> i64>;
    /// A check run after every write to the marks.
    type Check = Box<dyn Fn(&Sim)>;

    /// How one simulated instance answers.
    struct Behaviour {
        /// Answer time of a request sent at `t` (ms), before pauses.
        latency: LatencyFn,
        /// `[from, to)`: it answers nothing in between (a freeze, a GC pause); `to == i64::MAX`:
        /// for good. What was on it, or sent during, is answered `latency` after `to`.
        pauses: Vec<(i64, i64)>,
        /// Refuses connections from this time on.
        refuses_from: i64,
    }

    impl Behaviour {
        fn steady(ms: i64) -> Self {
            Behaviour { latency: Box::new(move |_, _| ms), pauses: vec![], refuses_from: i64::MAX }
        }
        /// `ms` ± `jitter` (uniform).
        fn jittered(ms: i64, jitter: i64) -> Self {
            let f = move |_: i64, r: &mut Rng| ms - jitter + r.below((2 * jitter + 1) as u64) as i64;
            Behaviour { latency: Box::new(f), pauses: vec![], refuses_from: i64::MAX }
        }
        fn paused(mut self, from: i64, to: i64) -> Self {
            self.pauses.push((from, to));
            self
        }
        /// When a request sent at `sent` is answered (`None`: never).
        fn answer_at(&self, sent: i64, rng: &mut Rng) -> Option<i64> {
            let lat = (self.latency)(sent, rng).max(0);
            let mut at = sent + lat;
            for (from, to) in &self.pauses {
                if (sent >= *from && sent < *to) || (at >= *from && at < *to) {
                    if *to == i64::MAX {
                        return None;
                    }
                    at = to + lat.min(at - from).max(1);
                }
            }
            Some(at)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Ev {
        Request { vm: usize },
        Answer { vm: usize, inst: usize, ticket: Option<Sent> },
        GiveUp { vm: usize, inst: usize, ticket: Sent },
        Refused { vm: usize, inst: usize, ticket: Option<Sent> },
        Timer { vm: usize },
        ProbeReply { inst: usize, answered: bool },
    }

    /// A caller with `vms` worker VMs sending to one service through lossless' shared marks, as
    /// the glue does: round-robin over the members the marks leave in.
    struct Sim {
        cfg: StallDetection,
        shared: FakeShared,
        keys: Keys,
        members: Vec<Instance>,
        behaviour: Vec<Behaviour>,
        vms: Vec<Detector>,
        marks: Marks,
        rng: Rng,
        events: BinaryHeap<Reverse<(i64, u64, Ev)>>,
        seq: u64,
        rr: usize,
        /// (time, instance, cause) of every stall written.
        stalls: Vec<(i64, usize, StallCause)>,
        /// (time, instance) of every recovery written.
        recovers: Vec<(i64, usize)>,
        /// Stalls proposed but refused by the guard.
        refused: u32,
        /// (time, instance) of every request sent.
        sent: Vec<(i64, usize)>,
        /// Requests the caller gave up on.
        lost: u32,
        /// Checked after every write.
        check: Option<Check>,
    }

    impl Sim {
        fn new(cfg: StallDetection, behaviour: Vec<Behaviour>, vms: usize) -> Sim {
            let members: Vec<Instance> =
                (0..behaviour.len()).map(|k| member(&format!("10.0.0.{}:80", k + 1))).collect();
            let keys = Keys::new(b"stall-sim");
            let shared = FakeShared::default();
            keys.create_all(&shared);
            Sim {
                vms: (0..vms).map(|_| Detector::new(vec![cfg.clone()])).collect(),
                cfg,
                shared,
                keys,
                members,
                behaviour,
                marks: Marks::default(),
                rng: Rng::new(42),
                events: BinaryHeap::new(),
                seq: 0,
                rr: 0,
                stalls: vec![],
                recovers: vec![],
                refused: 0,
                sent: vec![],
                lost: 0,
                check: None,
            }
        }

        fn at(&mut self, t: i64, ev: Ev) {
            self.seq += 1;
            self.events.push(Reverse((t, self.seq, ev)));
        }

        /// Requests at `rps` per second from `from` to `to`, spread over the VMs; each VM's timer
        /// ticks every 100 ms.
        fn load(&mut self, from: i64, to: i64, rps: f64) {
            let step = 1000.0 / rps;
            let mut k = 0.0;
            let mut vm = 0;
            while from + ((k * step) as i64) < to {
                self.at(from + (k * step) as i64, Ev::Request { vm });
                vm = (vm + 1) % self.vms.len();
                k += 1.0;
            }
            for vm in 0..self.vms.len() {
                let mut t = from + 7 * vm as i64;
                while t < to {
                    self.at(t, Ev::Timer { vm });
                    t += 100;
                }
            }
        }

        fn idx(&self, addr: &str) -> usize {
            self.members.iter().position(|m| m.addr == addr).unwrap()
        }

        fn reread(&mut self) {
            self.marks = Marks::decode(&self.shared.get(&self.keys.marks()).0.unwrap_or_default());
            for d in &mut self.vms {
                d.on_marks(&self.marks);
            }
            if let Some(check) = self.check.take() {
                check(self);
                self.check = Some(check);
            }
        }

        fn apply(&mut self, t: i64, changes: Vec<Change>) {
            for c in changes {
                match c {
                    Change::Stall { addr, cause, .. } => {
                        let i = self.idx(&addr);
                        let (members, pct) = (&self.members, self.cfg.max_stalled_percent);
                        let guard = |m: &Marks| may_stall(members, m, &addr, pct);
                        if marks::stall(&self.shared, &self.keys, &self.members[i], t, cause, guard) {
                            self.stalls.push((t, i, cause));
                        } else {
                            self.refused += 1;
                        }
                    }
                    Change::Recover { addr, .. } => {
                        if marks::recover(&self.shared, &self.keys, &addr) {
                            self.recovers.push((t, self.idx(&addr)));
                        }
                    }
                }
                self.reread();
            }
        }

        fn pick(&mut self) -> usize {
            let mut view = self.members.clone();
            apply_marks(&mut view, &self.marks);
            let open: Vec<usize> = (0..view.len()).filter(|i| view[*i].state == State::Serving).collect();
            self.rr += 1;
            if open.is_empty() {
                return self.rr % view.len();
            }
            open[self.rr % open.len()]
        }

        fn run(&mut self, until: i64) {
            while let Some(Reverse((t, _, ev))) = self.events.pop() {
                if t > until {
                    break;
                }
                match ev {
                    Ev::Request { vm } => {
                        let i = self.pick();
                        let addr = self.members[i].addr.clone();
                        let ticket = self.vms[vm].on_request_sent(0, &addr, t);
                        self.sent.push((t, i));
                        if t >= self.behaviour[i].refuses_from {
                            self.at(t + 1, Ev::Refused { vm, inst: i, ticket });
                        } else {
                            match self.behaviour[i].answer_at(t, &mut self.rng) {
                                Some(a) if a - t < CLIENT_TIMEOUT_MS => self.at(a, Ev::Answer { vm, inst: i, ticket }),
                                _ => {
                                    if let Some(ticket) = ticket {
                                        self.at(t + CLIENT_TIMEOUT_MS, Ev::GiveUp { vm, inst: i, ticket })
                                    } else {
                                        self.lost += 1;
                                    }
                                }
                            }
                        }
                        let c = self.vms[vm].tick(t, &self.marks);
                        self.apply(t, c);
                    }
                    Ev::Answer { vm, inst, ticket } => {
                        let addr = self.members[inst].addr.clone();
                        let c = self.vms[vm].on_response(0, &addr, ticket, t, &self.marks);
                        self.apply(t, c.into_iter().collect());
                        let c = self.vms[vm].tick(t, &self.marks);
                        self.apply(t, c);
                    }
                    Ev::GiveUp { vm, inst, ticket } => {
                        self.lost += 1;
                        let addr = self.members[inst].addr.clone();
                        self.vms[vm].on_no_response(0, &addr, ticket);
                    }
                    Ev::Refused { vm, inst, ticket } => {
                        let addr = self.members[inst].addr.clone();
                        if let Some(ticket) = ticket {
                            self.vms[vm].on_no_response(0, &addr, ticket);
                        }
                        let c = self.vms[vm].on_connect_failure(0, &addr, t, &self.marks);
                        self.apply(t, c.into_iter().collect());
                    }
                    Ev::Timer { vm } => {
                        let c = self.vms[vm].tick(t, &self.marks);
                        self.apply(t, c);
                        if vm == 0 {
                            let members = self.members.clone();
                            let due = self.vms[0]
                                .probes_due(&self.marks, t, |a| members.iter().any(|m| m.addr == a).then_some(0));
                            for (_, addr) in due {
                                let i = self.idx(&addr);
                                let b = &self.behaviour[i];
                                let reply = if t >= b.refuses_from {
                                    None
                                } else {
                                    b.answer_at(t, &mut self.rng).filter(|a| a - t < self.cfg.probe_interval_ms)
                                };
                                match reply {
                                    Some(a) => self.at(a, Ev::ProbeReply { inst: i, answered: true }),
                                    None => {
                                        let timeout = t + self.cfg.probe_interval_ms;
                                        self.at(timeout, Ev::ProbeReply { inst: i, answered: false })
                                    }
                                }
                            }
                        }
                    }
                    Ev::ProbeReply { inst, answered } => {
                        let addr = self.members[inst].addr.clone();
                        self.vms[0].on_probe_reply(&addr, answered, t);
                        if answered {
                            let c = self.vms[0].on_response(0, &addr, None, t, &self.marks);
                            self.apply(t, c.into_iter().collect());
                        }
                    }
                }
            }
        }

        fn stalls_of(&self, i: usize) -> Vec<i64> {
            self.stalls.iter().filter(|s| s.1 == i).map(|s| s.0).collect()
        }

        fn last_sent_to(&self, i: usize) -> i64 {
            self.sent.iter().filter(|s| s.1 == i).map(|s| s.0).max().unwrap_or(i64::MIN)
        }

        fn sent_to_between(&self, i: usize, from: i64, to: i64) -> usize {
            self.sent.iter().filter(|s| s.1 == i && s.0 >= from && s.0 < to).count()
        }
    }

    fn cfg() -> StallDetection {
        StallDetection::default()
    }

    /// 3 instances answering in 5 ms (± 2), 150 req/s over 2 VMs (50 req/s each), one frozen for
    /// good at several phases of the traffic: no request is sent to it later than 250 ms after the
    /// freeze, and nothing else is taken out.
    #[test]
    fn a_frozen_instance_is_out_within_250ms_under_load() {
        for phase in [0, 3, 7, 11, 13, 17, 19] {
            let freeze = T0 + 10_000 + phase;
            let b = vec![
                Behaviour::jittered(5, 2),
                Behaviour::jittered(5, 2).paused(freeze, i64::MAX),
                Behaviour::jittered(5, 2),
            ];
            let mut sim = Sim::new(cfg(), b, 2);
            sim.load(T0, T0 + 20_000, 150.0);
            sim.run(T0 + 20_000);
            let stalled = sim.stalls_of(1);
            assert_eq!(stalled.len(), 1, "phase {phase}: {:?}", sim.stalls);
            assert!(stalled[0] - freeze <= 250, "phase {phase}: stalled {} ms after the freeze", stalled[0] - freeze);
            assert!(sim.last_sent_to(1) - freeze <= 250, "phase {phase}: a request reached it later");
            // the requests on it or sent to it before it was out: about 250 ms of its 50 req/s
            assert!(sim.sent_to_between(1, freeze, i64::MAX) <= 13, "phase {phase}");
            assert!(sim.stalls_of(0).is_empty() && sim.stalls_of(2).is_empty(), "phase {phase}: {:?}", sim.stalls);
            assert!(sim.recovers.is_empty(), "it never answers, probes included");
            // the stalls and the probes of a frozen instance: probes back off (1, 2, 4, 8 s)
            assert_eq!(sim.marks.stalled.len(), 1);
        }
    }

    /// A slow but healthy instance (200 ms, ± 20) beside fast ones is never stalled, under load
    /// and under light load (where it is often the only one with work on it).
    #[test]
    fn a_slow_but_healthy_instance_is_never_stalled() {
        for rps in [150.0, 6.0] {
            let b = vec![Behaviour::jittered(200, 20), Behaviour::jittered(5, 2), Behaviour::jittered(5, 2)];
            let mut sim = Sim::new(cfg(), b, 2);
            sim.load(T0, T0 + 60_000, rps);
            sim.run(T0 + 60_000);
            assert!(sim.stalls.is_empty() && sim.refused == 0, "{rps} req/s: {:?}", sim.stalls);
            assert_eq!(sim.lost, 0);
            // its bound is its own: 3 × its p99 (the bucket edge above 220 ms is 256 ms)
            assert_eq!(sim.vms[0].bound(0, "10.0.0.1:80"), Some(768));
            assert_eq!(sim.vms[0].bound(0, "10.0.0.2:80"), Some(200), "the floor");
        }
    }

    /// Latency spikes on one instance with light load (15 req/s over 3 instances): a pause of
    /// 150 ms every 7 s (shorter than the bound, 200 ms, minus its own 5 ms) stalls nothing; a
    /// 1 s pause (a long GC) takes it out while it answers nothing and brings it back with its
    /// first answer after the pause, every time, and no request is lost either way.
    #[test]
    fn latency_spikes() {
        let run = |pause: i64| {
            let mut slow = Behaviour::jittered(5, 2);
            let mut t = T0 + 5_000;
            while t < T0 + 60_000 {
                slow = slow.paused(t, t + pause);
                t += 7_000;
            }
            let pauses = slow.pauses.clone();
            let mut sim = Sim::new(cfg(), vec![slow, Behaviour::jittered(5, 2), Behaviour::jittered(5, 2)], 2);
            sim.load(T0, T0 + 62_000, 15.0);
            sim.run(T0 + 62_000);
            (sim, pauses)
        };
        let (sim, _) = run(150);
        assert!(sim.stalls.is_empty(), "{:?}", sim.stalls);
        assert_eq!(sim.lost, 0);

        let (sim, pauses) = run(1000);
        assert_eq!(sim.lost, 0, "a stall loses nothing: what was on it is answered after the pause");
        assert_eq!(sim.stalls.len(), pauses.len(), "one stall per pause: {:?}", sim.stalls);
        assert_eq!(sim.recovers.len(), pauses.len());
        for ((from, to), ((stalled, i, cause), (back, j))) in pauses.iter().zip(sim.stalls.iter().zip(&sim.recovers)) {
            assert_eq!((*i, *j, *cause), (0, 0, StallCause::Quiet));
            assert!(stalled > from && stalled < to, "stalled within the pause");
            assert!(*back >= *to && *back <= to + 10, "back with its first answer after the pause: {back} vs {to}");
        }
        // the answers that came while it was out are not learnt: its bound is still the floor
        assert_eq!(sim.vms[0].bound(0, "10.0.0.1:80"), Some(200));
        assert_eq!(sim.vms[1].bound(0, "10.0.0.1:80"), Some(200));
    }

    /// Every instance slow at once (a shared dependency): all pause together, or all turn from
    /// 5 ms to about 1 s: nobody's siblings answer normally, so nothing is stalled.
    #[test]
    fn all_instances_slow_together_stalls_none() {
        let pause = |b: Behaviour| b.paused(T0 + 10_000, T0 + 12_000);
        let b =
            vec![pause(Behaviour::jittered(5, 2)), pause(Behaviour::jittered(5, 2)), pause(Behaviour::jittered(5, 2))];
        let mut sim = Sim::new(cfg(), b, 2);
        sim.load(T0, T0 + 20_000, 150.0);
        sim.run(T0 + 20_000);
        assert!(sim.stalls.is_empty() && sim.refused == 0, "{:?}", sim.stalls);

        let slowdown = || {
            let f = |sent: i64, r: &mut Rng| {
                if (T0 + 10_000..T0 + 20_000).contains(&sent) {
                    900 + r.below(201) as i64
                } else {
                    3 + r.below(5) as i64
                }
            };
            Behaviour { latency: Box::new(f), pauses: vec![], refuses_from: i64::MAX }
        };
        let mut sim = Sim::new(cfg(), vec![slowdown(), slowdown(), slowdown()], 2);
        sim.load(T0, T0 + 30_000, 150.0);
        sim.run(T0 + 30_000);
        assert!(sim.stalls.is_empty() && sim.refused == 0, "{:?}", sim.stalls);
    }

    /// A single instance is never stalled: there is nowhere else to send (and no sibling answers).
    /// Two instances: the frozen one goes, the other stays whatever it does.
    #[test]
    fn a_single_instance_is_never_stalled() {
        let mut sim = Sim::new(cfg(), vec![Behaviour::jittered(5, 2).paused(T0 + 5_000, i64::MAX)], 2);
        sim.load(T0, T0 + 10_000, 50.0);
        sim.run(T0 + 10_000);
        assert!(sim.stalls.is_empty());
        // refusing connections: proposed, and refused by the guard
        let mut b = Behaviour::steady(5);
        b.refuses_from = T0 + 5_000;
        let mut sim = Sim::new(cfg(), vec![b], 1);
        sim.load(T0, T0 + 6_000, 50.0);
        sim.run(T0 + 6_000);
        assert!(sim.stalls.is_empty() && sim.refused > 0);
        assert!(!may_stall(&[member("10.0.0.1:80")], &Marks::default(), "10.0.0.1:80", 100));
    }

    /// The first answer brings it back: frozen for 2 s, it is out within 250 ms, and back the
    /// moment its queued requests are answered; then it gets its share again.
    #[test]
    fn the_first_answer_recovers() {
        let (from, to) = (T0 + 10_000, T0 + 12_000);
        let b = vec![Behaviour::jittered(5, 2), Behaviour::jittered(5, 2).paused(from, to), Behaviour::jittered(5, 2)];
        let mut sim = Sim::new(cfg(), b, 2);
        sim.load(T0, T0 + 20_000, 150.0);
        sim.run(T0 + 20_000);
        assert_eq!(sim.stalls_of(1).len(), 1, "{:?}", sim.stalls);
        assert!(sim.stalls_of(1)[0] - from <= 250);
        assert_eq!(sim.recovers.len(), 1);
        let back = sim.recovers[0].0;
        assert!(back >= to && back <= to + 10, "back at {} ms after the pause", back - to);
        assert_eq!(sim.sent_to_between(1, from + 250, back), 0, "nothing sent while out");
        let share = sim.sent_to_between(1, back, back + 5000);
        assert!((230..=270).contains(&share), "its share again: {share} in 5 s");
        assert_eq!(sim.lost, 0);
    }

    /// A refused connection stalls at once; a probe's answer brings the instance back when it
    /// listens again. Probes back off while they get no answer.
    #[test]
    fn connect_failures_stall_at_once() {
        let mut b = Behaviour::jittered(5, 2);
        b.refuses_from = T0 + 10_000;
        let mut sim = Sim::new(cfg(), vec![Behaviour::jittered(5, 2), b, Behaviour::jittered(5, 2)], 2);
        sim.load(T0, T0 + 30_000, 150.0);
        sim.run(T0 + 30_000);
        assert_eq!(sim.stalls.len(), 1);
        let (t, i, cause) = sim.stalls[0];
        assert_eq!((i, cause), (1, StallCause::ConnectFailure));
        assert!(t - (T0 + 10_000) <= 21, "at the first refused connection");
        assert!(sim.last_sent_to(1) <= t);

        // it listens again: the next probe brings it back
        let mut d = Detector::new(vec![cfg()]);
        let mut marks = Marks::default();
        let a = "10.0.0.2:80";
        assert!(matches!(d.on_connect_failure(0, a, T0, &marks), Some(Change::Stall { .. })));
        marks.stall(a, None, T0, StallCause::ConnectFailure);
        assert_eq!(d.on_connect_failure(0, a, T0, &marks), None, "stalled already");
        let svc = |_: &str| Some(0);
        assert!(d.probes_due(&marks, T0 + 999, svc).is_empty());
        assert_eq!(d.probes_due(&marks, T0 + 1000, svc), vec![(0, a.to_string())]);
        assert!(d.probes_due(&marks, T0 + 1500, svc).is_empty(), "one in flight");
        d.on_probe_reply(a, false, T0 + 2000);
        assert!(d.probes_due(&marks, T0 + 3999, svc).is_empty(), "twice the interval");
        assert_eq!(d.probes_due(&marks, T0 + 4000, svc).len(), 1);
        d.on_probe_reply(a, false, T0 + 5000);
        assert!(d.probes_due(&marks, T0 + 8999, svc).is_empty());
        assert_eq!(d.probes_due(&marks, T0 + 9000, svc).len(), 1);
        d.on_probe_reply(a, true, T0 + 9005);
        assert_eq!(d.on_response(0, a, None, T0 + 9005, &marks), Some(Change::Recover { svc: 0, addr: a.into() }));
        marks.stalled.clear();
        assert!(d.probes_due(&marks, T0 + 20_000, svc).is_empty());
    }

    /// A long poll that was not excluded: the instance is stalled once (it answered nothing for
    /// longer than its bound while others answered), comes back with the probe's answer, and the
    /// poll that outlived the stall is not held against it again, in this VM or another.
    #[test]
    fn a_request_that_outlived_a_stall_is_not_held_against_it_again() {
        let (x, y) = ("10.0.0.1:80", "10.0.0.2:80");
        let mut vm1 = Detector::new(vec![cfg()]);
        let mut vm2 = Detector::new(vec![cfg()]);
        let mut marks = Marks::default();
        let mut t = T0;
        // both know x and y answer in 5 ms
        for _ in 0..20 {
            for d in [&mut vm1, &mut vm2] {
                for a in [x, y] {
                    let s = d.on_request_sent(0, a, t);
                    d.on_response(0, a, s, t + 5, &marks);
                }
            }
            t += 10;
        }
        // a long poll on x in each VM, and y keeps answering
        vm1.on_request_sent(0, x, t).unwrap();
        vm2.on_request_sent(0, x, t).unwrap();
        let mut changes = vec![];
        for k in 1..=30 {
            let now = t + 10 * k;
            let s = vm1.on_request_sent(0, y, now);
            vm1.on_response(0, y, s, now + 5, &marks);
            let s = vm2.on_request_sent(0, y, now);
            vm2.on_response(0, y, s, now + 5, &marks);
            changes.extend(vm1.tick(now + 5, &marks));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            matches!(&changes[0], Change::Stall { addr, cause: StallCause::Quiet, bound_ms: 200, .. } if addr == x)
        );
        marks.stall(x, None, t + 205, StallCause::Quiet);
        vm1.on_marks(&marks);
        vm2.on_marks(&marks);
        assert!(vm2.tick(t + 400, &marks).is_empty(), "stalled already");
        // the probe answers (in vm1): back; vm2 learns it from the marks
        assert!(matches!(vm1.on_response(0, x, None, t + 1205, &marks), Some(Change::Recover { .. })));
        marks.stalled.clear();
        vm2.on_marks(&marks);
        for k in 0..300 {
            let now = t + 1300 + 10 * k;
            for d in [&mut vm1, &mut vm2] {
                let s = d.on_request_sent(0, y, now);
                d.on_response(0, y, s, now + 5, &marks);
                assert!(d.tick(now + 5, &marks).is_empty(), "the poll is excused");
            }
        }
        assert_eq!((vm1.pending(0, x), vm2.pending(0, x)), (1, 1), "still pending, not held against it");
    }

    /// A request pending longer than `max_pending_ms` is forgotten: an instance whose bound is
    /// longer (its own answers are that slow, a long-poll endpoint) is never stalled by it.
    #[test]
    fn requests_older_than_the_max_are_not_counted() {
        let c = StallDetection { max_pending_ms: 1000, ..cfg() };
        let (x, y) = ("10.0.0.1:80", "10.0.0.2:80");
        let mut d = Detector::new(vec![c]);
        let marks = Marks::default();
        // x is new (its bound is 3 s until it has answered 8 times), y answers in 5 ms
        d.on_request_sent(0, x, T0).unwrap();
        let mut changes = vec![];
        for k in 0..400 {
            let now = T0 + 10 * k;
            let s = d.on_request_sent(0, y, now);
            d.on_response(0, y, s, now + 5, &marks);
            changes.extend(d.tick(now + 5, &marks));
        }
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(d.pending(0, x), 0, "forgotten");
        // the same with a longer horizon: stalled once its 3 s are over
        let mut d = Detector::new(vec![cfg()]);
        d.on_request_sent(0, x, T0).unwrap();
        for k in 0..400 {
            let now = T0 + 10 * k;
            let s = d.on_request_sent(0, y, now);
            d.on_response(0, y, s, now + 5, &marks);
            changes.extend(d.tick(now + 5, &marks));
        }
        assert!(matches!(&changes[..], [Change::Stall { quiet_ms: 3001..=3010, bound_ms: 3000, .. }]), "{changes:?}");
    }

    #[test]
    fn disabled_tracks_nothing() {
        let mut d = Detector::new(vec![StallDetection { enabled: false, ..cfg() }]);
        assert_eq!(d.on_request_sent(0, "10.0.0.1:80", T0), None);
        assert_eq!(d.on_connect_failure(0, "10.0.0.1:80", T0, &Marks::default()), None);
        assert_eq!(d.on_request_sent(7, "10.0.0.1:80", T0), None, "no such service");
    }

    #[test]
    fn tracking_excludes_long_polls_streams_and_upgrades() {
        let c =
            StallDetection { exclude_paths: vec!["/nacos/v1/cs/configs/listener".into(), "/watch".into()], ..cfg() };
        let none = |_: &str| None;
        assert!(c.tracks("/api/orders?id=1", none));
        assert!(!c.tracks("/nacos/v1/cs/configs/listener?x=1", none));
        assert!(!c.tracks("/watch/a", none));
        assert!(!c.tracks("/ws", |h| (h == "upgrade").then_some("websocket")));
        assert!(!c.tracks("/events", |h| (h == "accept").then_some("Text/Event-Stream")));
        assert!(c.tracks("/json", |h| (h == "accept").then_some("application/json")));
        assert!(!StallDetection { enabled: false, ..cfg() }.tracks("/", none));
    }

    #[test]
    fn judged_as_envoy_reports_it() {
        let cases: &[(Option<u16>, Option<&str>, Reply)] = &[
            (Some(200), None, Reply::Answered),
            (Some(500), None, Reply::Answered),
            (Some(503), Some("via_upstream"), Reply::Answered),
            (
                Some(503),
                Some("upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_Connection_refused}"),
                Reply::ConnectFailure,
            ),
            (Some(503), Some("upstream_reset_before_response_started{local_connection_failure}"), Reply::ConnectFailure),
            (Some(503), Some("upstream_reset_before_response_started{connection_timeout}"), Reply::ConnectFailure),
            (Some(503), Some("upstream_reset_before_response_started{connection_termination}"), Reply::NoAnswer),
            (Some(504), Some("upstream_response_timeout"), Reply::NoAnswer),
            (Some(503), Some("upstream_reset_before_response_started{overflow}"), Reply::NoAnswer),
            (Some(503), Some("no_healthy_upstream"), Reply::NoAnswer),
            (Some(503), None, Reply::NoAnswer),
            (None, None, Reply::NoAnswer),
        ];
        for (status, details, want) in cases {
            assert_eq!(judge(*status, || details.map(String::from)), *want, "{status:?} {details:?}");
        }
        assert_eq!(judge(Some(200), || panic!("not read")), Reply::Answered);
        assert!(probe_answered(Some(404)) && probe_answered(Some(500)));
        assert!(!probe_answered(Some(503)) && !probe_answered(Some(504)) && !probe_answered(None));
    }

    #[test]
    fn latency_sketch_quantiles() {
        let mut l = Latency::default();
        for _ in 0..7 {
            l.record(5);
        }
        assert_eq!(l.quantile(0.99), None, "too few answers");
        l.record(5);
        assert_eq!(l.quantile(0.99), Some(6), "the bucket edge at or above 5 ms");
        // 1 % slow: p99 sees it only while it is within the window
        for k in 0..500 {
            l.record(if k % 50 == 0 { 1000 } else { 5 });
        }
        assert_eq!(l.quantile(0.99), Some(1024));
        assert_eq!(l.quantile(0.5), Some(6));
        for _ in 0..2000 {
            l.record(5);
        }
        assert_eq!(l.quantile(0.99), Some(6), "the slow ones left the window");
        // out of range and a clock step back
        l.record(i64::MAX);
        l.record(-3);
        assert_eq!(l.quantile(1.0), Some(46341));
        assert_eq!(l.quantile(0.0), Some(1));
        // the bound
        let c = cfg();
        assert_eq!(c.bound_ms(None), 3000, "1 s assumed until 8 answers");
        assert_eq!(c.bound_ms(Some(6)), 200);
        assert_eq!(c.bound_ms(Some(256)), 768);
        assert_eq!(c.bound_ms(Some(i64::MAX)), i64::MAX);
    }

    #[test]
    fn config_ranges_name_the_field() {
        assert_eq!(cfg().validate(), Ok(()));
        let err = |c: StallDetection| c.validate().unwrap_err();
        assert!(err(StallDetection { floor_ms: 0, ..cfg() }).starts_with("stall_detection.floor_ms"));
        assert!(err(StallDetection { latency_factor: f64::NAN, ..cfg() }).starts_with("stall_detection.latency_factor"));
        assert!(err(StallDetection { latency_factor: 0.5, ..cfg() }).contains("latency_factor"));
        assert!(err(StallDetection { max_stalled_percent: 101, ..cfg() }).contains("max_stalled_percent"));
        assert!(err(StallDetection { max_pending_ms: 100, ..cfg() }).contains("max_pending_ms"));
        assert!(err(StallDetection { probe_interval_ms: 50, ..cfg() }).contains("probe_interval_ms"));
        assert!(err(StallDetection { probe_path: "x".into(), ..cfg() }).contains("probe_path"));
        assert!(err(StallDetection { probe_path: "/a b".into(), ..cfg() }).contains("probe_path"));
        assert!(err(StallDetection { exclude_paths: vec!["poll".into()], ..cfg() }).contains("exclude_paths"));
        let r = probe_request(&cfg(), "x-lossless-upstream", "10.0.0.1:80");
        assert_eq!(r.header(":path"), Some("/"));
        assert_eq!(r.header("x-lossless-upstream"), Some("10.0.0.1:80"));
        assert_eq!(r.timeout_ms, 1000);
    }

    /// The guard: the cap, "always one may", never the last serving one, and the others that are
    /// out for another reason count as out.
    #[test]
    fn the_guard_keeps_the_set() {
        let ms: Vec<Instance> = (1..=4).map(|k| member(&format!("10.0.0.{k}:80"))).collect();
        let a = |k: usize| ms[k - 1].addr.clone();
        let mut marks = Marks::default();
        assert!(may_stall(&ms, &marks, &a(1), 50));
        marks.stall(&a(1), ms[0].start_ms, T0, StallCause::Quiet);
        assert!(!may_stall(&ms, &marks, &a(1), 50), "stalled already");
        assert!(may_stall(&ms, &marks, &a(2), 50), "2 of 4 is 50 %");
        marks.stall(&a(2), ms[1].start_ms, T0, StallCause::Quiet);
        assert!(!may_stall(&ms, &marks, &a(3), 50), "3 of 4 is over");
        assert!(may_stall(&ms, &marks, &a(3), 100));
        // 3 and 4 are the rest: with 4 ejected, 3 is the last one that serves
        marks.eject(&a(4), ms[3].start_ms, T0, &crate::health::OutlierDetection::default(), false);
        assert!(!may_stall(&ms, &marks, &a(3), 100), "never the last");
        assert!(may_stall(&ms, &marks, &a(4), 100), "an ejected one may be stalled: nothing changes for the rest");
        // "always one may": 10 % of 3 is none, one all the same
        let three = &ms[..3];
        assert!(may_stall(three, &Marks::default(), &a(1), 10));
        // not a member, or not serving
        assert!(!may_stall(&ms, &Marks::default(), "10.9.9.9:80", 100));
        let mut draining = ms.clone();
        draining[0].state = State::Draining;
        assert!(!may_stall(&draining, &Marks::default(), &a(1), 100));
    }

    proptest::proptest! {
        /// Whatever the instances do (frozen, refusing, slow, at any time) and whatever the share,
        /// at most `max_stalled_percent` of a service's instances are stalled (one always may
        /// be), never all of them, after every write.
        #[test]
        fn at_most_the_share_is_ever_stalled(
            n in 1usize..7,
            pct in 0u32..=100,
            kinds in proptest::collection::vec((0u8..4, 0i64..3000, 1i64..400), 6),
            vms in 1usize..4,
            rps in 20.0f64..300.0,
        ) {
            let mut b = vec![];
            for (kind, at, ms) in kinds.iter().take(n) {
                let t = T0 + 5_000 + at;
                b.push(match kind {
                    0 => Behaviour::jittered(*ms, *ms / 4),
                    1 => Behaviour::jittered(*ms, *ms / 4).paused(t, i64::MAX),
                    2 => Behaviour::jittered(*ms, *ms / 4).paused(t, t + 1500),
                    _ => {
                        let mut x = Behaviour::jittered(*ms, 0);
                        x.refuses_from = t;
                        x
                    }
                });
            }
            let c = StallDetection { max_stalled_percent: pct, ..cfg() };
            let mut sim = Sim::new(c, b, vms);
            sim.check = Some(Box::new(move |s: &Sim| {
                let stalled = s.members.iter().filter(|m| s.marks.is_stalled(m)).count();
                let cap = (s.members.len() * pct as usize / 100).max(1);
                assert!(stalled <= cap, "{stalled} of {} stalled, cap {cap}", s.members.len());
                assert!(stalled < s.members.len(), "never all");
            }));
            sim.load(T0, T0 + 10_000, rps);
            sim.run(T0 + 10_000);
        }
    }
}
