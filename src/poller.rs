//! The refresh path, one service at a time: when its next registry request is due, what a reply
//! means (keep-last-good, [`crate::membership::Tracker`]), and the snapshot to publish. Only the VM
//! holding the poller lease ([`crate::store::take_poller_lease`]) acts on it; [`crate::vm::Vm`] dispatches
//! the requests and publishes what this decides.

use crate::clock::Rng;
use crate::config::{RegistryConfig, ServiceConfig, Settings};
use crate::instance::{Instance, State};
use crate::membership::{Decision, Hold, Snapshot, Tracker, ViewSign};
use crate::registry::{fingerprint, Call, Cursor, HttpRequest, HttpResponse, Parsed, RegistryError, Reply, Session};

/// Blocking queries are rate-limited as Consul's "Blocking Queries" doc prescribes (Implementation
/// Details, "Rate limit"): not a sleep on every turn, which delays updates in the happy case, but a
/// token bucket with a burst of 2. A query that returns after waiting goes out again at once; when
/// replies come back fast (values churning, an index reset), two go out at once and then one per
/// refresh interval: the rate lossless polls at without blocking queries.
pub const LONG_POLL_BURST: i64 = 2;

/// Everything a refresh did, for stats and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshOutcome {
    /// A new snapshot was published.
    /// `unroutable`: records refused because their address is a host name (`name:port`).
    Published { version: u64, hosts: usize, skipped: u32, protected: bool, unroutable: Vec<String> },
    /// The list was the same as what is published: nothing to do.
    Same { skipped: u32, unroutable: Vec<String> },
    /// The list was held back by the keep-last-good rules.
    Kept(Hold),
    /// Blocking query returned without change.
    Unchanged,
    /// Logged in; the list request follows at once.
    LoggedIn,
    /// The registry does not speak the API tried; the next one is tried at once (the reason).
    Again(String),
    /// A list requested before a pushed list was applied: dropped, the push may be newer.
    Superseded,
    /// The reply was unusable; the last good membership stays.
    Failed(RegistryError),
}

/// One service's poll state (in every VM; used by the poller's).
#[derive(Debug, Clone, Default)]
pub struct PollState {
    next_due_ms: i64,
    in_flight: bool,
    tracker: Tracker,
    /// The registry's per-service cursor (Consul's blocking-query index).
    pub cursor: Cursor,
    /// The long-poll token bucket as a theoretical arrival time (GCRA): the bucket is full again
    /// at this time (ms).
    long_poll_tat: i64,
    /// The [`fingerprint`] of the last list reply that was applied, and its skipped count: the
    /// same reply again is `Same` without a parse.
    applied: Option<(u64, u32)>,
    /// Pushed lists applied so far, and that count when the request in flight went out: a reply
    /// to a request older than the last push is [`RefreshOutcome::Superseded`].
    pushes: u64,
    sent_pushes: u64,
}

impl PollState {
    /// The request due at `now_ms`, if any; marks it in flight.
    pub fn due(
        &mut self,
        reg: &RegistryConfig,
        session: &Session,
        sc: &ServiceConfig,
        now_ms: i64,
    ) -> Option<(Call, HttpRequest)> {
        if self.in_flight || now_ms < self.next_due_ms {
            return None;
        }
        self.in_flight = true;
        self.sent_pushes = self.pushes;
        Some(reg.kind.adapter().request(session, &self.cursor, &sc.query, now_ms))
    }

    /// The next request goes out at `at_ms` at the latest (a push session went down: polls
    /// resume; a pushed list was held back: a poll confirms it sooner).
    pub fn expedite(&mut self, at_ms: i64) {
        self.next_due_ms = self.next_due_ms.min(at_ms);
    }

    /// The request could not be dispatched at all: retry after `retry_ms`.
    pub fn dispatch_failed(&mut self, now_ms: i64, retry_ms: i64) {
        self.in_flight = false;
        self.tracker.note_failure(now_ms);
        self.next_due_ms = now_ms.saturating_add(retry_ms);
    }

    /// Leadership was lost or regained: forget what is in flight and poll at once when leading.
    pub fn reset(&mut self) {
        self.in_flight = false;
        self.next_due_ms = 0;
        // another VM may have published meanwhile: compare the next reply in full
        self.applied = None;
    }

    /// When the next blocking query may go: at once while the bucket (burst [`LONG_POLL_BURST`],
    /// one token per `interval_ms`) holds a token, else when the next one comes.
    fn long_poll_slot(&mut self, now_ms: i64, interval_ms: i64) -> i64 {
        let at = now_ms.max(self.long_poll_tat.saturating_sub((LONG_POLL_BURST - 1) * interval_ms));
        self.long_poll_tat = self.long_poll_tat.max(at).saturating_add(interval_ms);
        at
    }

    /// Interprets a registry reply against `current` (the published snapshot). Returns what
    /// happened and, when the membership changed, the snapshot to publish. `interval_ms` is the
    /// next (jittered) refresh interval.
    #[allow(clippy::too_many_arguments)]
    pub fn on_reply(
        &mut self,
        reg: &RegistryConfig,
        session: &mut Session,
        sc: &ServiceConfig,
        current: &Snapshot,
        call: Call,
        resp: &HttpResponse<'_>,
        now_ms: i64,
        interval_ms: i64,
    ) -> (RefreshOutcome, Option<Snapshot>) {
        self.in_flight = false;
        let adapter = reg.kind.adapter();
        // an unchanged list is not parsed again (a blocking query's index still moves)
        let print = (call == Call::List && matches!(resp.status, Some(200..=299)))
            .then(|| fingerprint(resp.body, adapter.volatile_keys()));
        if let (Some(p), Some((last, skipped))) = (print, self.applied) {
            if p == last && current.version > 0 {
                let unchanged = adapter.same_body(&mut self.cursor, resp);
                self.next_due_ms = if adapter.long_poll() {
                    self.long_poll_slot(now_ms, interval_ms)
                } else {
                    now_ms.saturating_add(interval_ms)
                };
                self.tracker.note_answer();
                let outcome = if unchanged {
                    RefreshOutcome::Unchanged
                } else {
                    RefreshOutcome::Same { skipped, unroutable: Vec::new() }
                };
                return (outcome, None);
            }
        }
        self.applied = None;
        let reply = adapter.on_reply(session, &mut self.cursor, &sc.query, call, resp, now_ms);
        self.next_due_ms = match (&reply, adapter.long_poll()) {
            (Reply::LoggedIn | Reply::Again(_), _) => now_ms,
            // a blocking query goes out again at once, but never in a tight loop
            (Reply::Members(_) | Reply::Unchanged, true) => self.long_poll_slot(now_ms, interval_ms),
            _ => now_ms.saturating_add(interval_ms),
        };
        match reply {
            Reply::LoggedIn => (RefreshOutcome::LoggedIn, None),
            Reply::Again(why) => (RefreshOutcome::Again(why), None),
            Reply::Unchanged => {
                self.tracker.note_answer();
                (RefreshOutcome::Unchanged, None)
            }
            Reply::Error(e) => {
                self.tracker.note_failure(now_ms);
                (RefreshOutcome::Failed(e), None)
            }
            Reply::Members(_) if self.sent_pushes != self.pushes => (RefreshOutcome::Superseded, None),
            Reply::Members(parsed) => self.apply(sc, current, parsed, now_ms, print),
        }
    }

    /// A list the registry pushed (Nacos' gRPC `NotifySubscriberRequest`, or the answer to a
    /// subscription), checked against `current` by the same keep-last-good rules as a polled one.
    /// Returns what happened and the snapshot to publish, if any. A list requested before it and
    /// answered after it is dropped ([`RefreshOutcome::Superseded`]).
    ///
    /// A member that `current` holds as down and the push leaves out stays, down: rnacos pushes
    /// healthy instances only (its `NotifySubscriberRequest` is built with `only_healthy`), so
    /// absence from its push does not say that an instance left. It is not routed to either way;
    /// the next polled list (every `reconcile_interval_ms`) lists it or removes it. A serving
    /// member left out is removed at once (deregistered, disabled, or turned unhealthy: the
    /// polled list brings the last back as down).
    pub fn on_pushed(
        &mut self,
        sc: &ServiceConfig,
        current: &Snapshot,
        mut parsed: Parsed,
        now_ms: i64,
    ) -> (RefreshOutcome, Option<Snapshot>) {
        self.pushes += 1;
        keep_down(&current.members, &mut parsed);
        self.apply(sc, current, parsed, now_ms, None)
    }

    /// A list from a registry-wide fetch (Eureka's delta, [`crate::registry::eureka::delta`]), checked
    /// against `current` by the same keep-last-good rules as a polled one. Returns what happened and
    /// the snapshot to publish, if any.
    pub fn on_fetched(
        &mut self,
        sc: &ServiceConfig,
        current: &Snapshot,
        parsed: Parsed,
        now_ms: i64,
    ) -> (RefreshOutcome, Option<Snapshot>) {
        self.apply(sc, current, parsed, now_ms, None)
    }

    /// Whether a list held back now is confirmed by the next replies: not while the members the
    /// registry does not list are kept because it is being registered with again (that lasts
    /// `guard.reregister_ms`, whatever the replies say).
    pub fn confirming(&self) -> bool {
        !self.tracker.reregistering()
    }

    /// The registry did not answer usably (a registry-wide fetch failed): the keep-last-good rules
    /// treat the next list as one after an outage.
    pub fn note_failure(&mut self, now_ms: i64) {
        self.tracker.note_failure(now_ms);
    }

    /// A fresh list through the keep-last-good rules; `print`: the fingerprint of the reply it
    /// came in (a polled list), remembered when applied.
    fn apply(
        &mut self,
        sc: &ServiceConfig,
        current: &Snapshot,
        mut parsed: Parsed,
        now_ms: i64,
        print: Option<u64>,
    ) -> (RefreshOutcome, Option<Snapshot>) {
        let skipped = parsed.skipped;
        let unroutable = std::mem::take(&mut parsed.unroutable);
        // a pushed list leaves the fingerprint unset: the next polled reply is compared in full
        self.applied = None;
        // the adapters give no view sign yet (Consul's index, Eureka's lastDirtyTimestamp): an
        // instance that left comes back once `departure_memory_ms` is over
        let sign = ViewSign::default();
        match self.tracker.decide_at(&current.members, parsed, &sign, &sc.guard, &sc.grace, now_ms) {
            Decision::Keep(h) => (RefreshOutcome::Kept(h), None),
            Decision::Apply { members, protected } => {
                // a list the rules changed (members kept while they register again, a departed
                // one held out) may decide otherwise later: parse it again
                let as_listed = self.tracker.held_departed == 0 && self.tracker.kept_reregistering == 0;
                self.applied = print.filter(|_| as_listed).map(|p| (p, skipped));
                if members == current.members && current.version > 0 {
                    return (RefreshOutcome::Same { skipped, unroutable }, None);
                }
                let snap = Snapshot { version: current.version + 1, updated_ms: now_ms, members };
                let outcome = RefreshOutcome::Published {
                    version: snap.version,
                    hosts: snap.members.len(),
                    skipped,
                    protected,
                    unroutable,
                };
                (outcome, Some(snap))
            }
        }
    }
}

/// Adds to `parsed` the members of `current` that are down and that it leaves out (see
/// [`PollState::on_pushed`]); keeps it sorted by address.
fn keep_down(current: &[Instance], parsed: &mut Parsed) {
    let missing: Vec<Instance> = current
        .iter()
        .filter(|m| m.state == State::Down && crate::instance::find(&parsed.instances, &m.addr).is_none())
        .cloned()
        .collect();
    if !missing.is_empty() {
        parsed.instances.extend(missing);
        parsed.instances.sort_by(|a, b| a.addr.cmp(&b.addr));
    }
}

/// The refresh interval with ± `jitter_percent` spread, so pollers of many Envoys do not align.
pub fn interval(settings: &Settings, rng: &mut Rng) -> i64 {
    jittered(settings.refresh_interval_ms, settings, rng)
}

/// `base_ms` with ± `jitter_percent` spread.
pub fn jittered(base_ms: u64, settings: &Settings, rng: &mut Rng) -> i64 {
    let base = i64::try_from(base_ms).unwrap_or(i64::MAX);
    let spread = base * i64::from(settings.jitter_percent) / 100;
    if spread <= 0 {
        return base;
    }
    base - spread + rng.below((2 * spread + 1) as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::membership::Snapshot;

    /// Consul blocking queries: in the happy case (the query waited) the next goes out at once;
    /// when replies churn, a burst of 2, then one per refresh interval (Consul's "Blocking
    /// Queries" doc: a token bucket with a burst of 2, no sleep on every turn).
    #[test]
    fn blocking_queries_rate_limited_as_consul_prescribes() {
        let cfg = config::parse(br#"{"registries":{"c":{"type":"consul","cluster":"c","authority":"c"}},"services":[{"name":"demo","registry":"c"}]}"#).unwrap();
        let (reg, sc) = (&cfg.registries[0], &cfg.services[0]);
        let mut session = Session::default();
        let idle = Session::default();
        let mut ps = PollState::default();
        let current = Snapshot::default();
        let mut index = 0;
        let mut reply = |ps: &mut PollState, now: i64, changed: bool| {
            assert!(ps.due(reg, &Session::default(), sc, now).is_some(), "due at {now}");
            index += u64::from(changed);
            let headers = [("x-consul-index".to_string(), index.max(1).to_string())];
            let body = br#"[{"Service":{"Address":"10.0.0.1","Port":80}}]"#;
            let resp = HttpResponse { status: Some(200), headers: &headers, body, body_size: body.len() };
            ps.on_reply(reg, &mut session, sc, &current, Call::List, &resp, now, 1000).0
        };
        let t0 = 1_700_000_000_000;
        // the first request returns at once (no index yet), so does the second: the burst
        assert!(matches!(reply(&mut ps, t0, true), RefreshOutcome::Published { .. }));
        assert!(matches!(reply(&mut ps, t0, true), RefreshOutcome::Published { .. }));
        // churning: from now on one per interval, not a busy loop
        reply(&mut ps, t0, true);
        assert!(ps.due(reg, &idle, sc, t0 + 999).is_none());
        ps.in_flight = false;
        reply(&mut ps, t0 + 1000, true);
        assert!(ps.due(reg, &idle, sc, t0 + 1999).is_none());
        ps.in_flight = false;
        // an unchanged reply that came back fast counts the same
        assert_eq!(reply(&mut ps, t0 + 2000, false), RefreshOutcome::Unchanged);
        assert!(ps.due(reg, &idle, sc, t0 + 2999).is_none());
        ps.in_flight = false;
        // the happy case: each query waited (30 s), the next goes out at once, every time
        let mut now = t0 + 3000;
        for _ in 0..5 {
            now += 30_000;
            reply(&mut ps, now, false);
            assert!(ps.due(reg, &idle, sc, now).is_some(), "at once after a wait");
            ps.in_flight = false;
        }
        // after a quiet spell the burst is back: two at once
        reply(&mut ps, now, true);
        reply(&mut ps, now, true);
        assert!(ps.due(reg, &idle, sc, now).is_none());
    }

    /// A Consul reply whose index moved but whose body is the one applied is not parsed again; the
    /// index is still taken, and the same index is `Unchanged` as before.
    #[test]
    fn consul_same_body_is_not_parsed_again() {
        let cfg = config::parse(br#"{"registries":{"c":{"type":"consul","cluster":"c","authority":"c"}},"services":[{"name":"demo","registry":"c"}]}"#).unwrap();
        let (reg, sc) = (&cfg.registries[0], &cfg.services[0]);
        let mut session = Session::default();
        let mut ps = PollState::default();
        let body: &[u8] =
            br#"[{"Service":{"Address":"10.0.0.1","Port":80}},{"Service":{"Address":"10.0.0.2","Port":80}}]"#;
        let mut reply = |ps: &mut PollState, current: &Snapshot, index: &str, body: &[u8]| {
            let headers = [("x-consul-index".to_string(), index.to_string())];
            let resp = HttpResponse { status: Some(200), headers: &headers, body, body_size: body.len() };
            ps.on_reply(reg, &mut session, sc, current, Call::List, &resp, 1_000, 1000)
        };
        let (out, snap) = reply(&mut ps, &Snapshot::default(), "5", body);
        assert!(matches!(out, RefreshOutcome::Published { hosts: 2, .. }), "{out:?}");
        let current = snap.unwrap();
        assert_eq!(reply(&mut ps, &current, "9", body).0, RefreshOutcome::Same { skipped: 0, unroutable: vec![] });
        assert_eq!(ps.cursor.index, 9);
        assert_eq!(reply(&mut ps, &current, "9", body).0, RefreshOutcome::Unchanged);
        // not parsed: the same bytes are never read as a list (a body that would not parse is
        // recognised only by its fingerprint, so use the real one)
        assert_eq!(reply(&mut ps, &current, "3", body).0, RefreshOutcome::Same { skipped: 0, unroutable: vec![] });
        assert_eq!(ps.cursor.index, 0, "an index that went backwards resets");
        // another body is parsed
        let (out, _) = reply(&mut ps, &current, "10", br#"[{"Service":{"Address":"10.0.0.1","Port":80}}]"#);
        assert!(matches!(out, RefreshOutcome::Published { hosts: 1, .. }), "{out:?}");
    }

    #[test]
    fn jittered_interval_in_bounds() {
        let cfg = config::parse(br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},"services":[{"name":"demo","registry":"s"}]}"#).unwrap();
        let mut rng = Rng::new(3);
        let v: Vec<i64> = (0..1000).map(|_| interval(&cfg.settings, &mut rng)).collect();
        assert!(v.iter().all(|x| (900..=1100).contains(x)));
        assert!(v.iter().min() != v.iter().max());
    }
}
