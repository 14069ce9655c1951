//! The refresh path, one service at a time: when its next registry request is due, what a reply
//! means (keep-last-good, [`crate::membership::Tracker`]), and the snapshot to publish. Only the VM
//! holding the poller lease ([`crate::store::try_lead`]) acts on it; [`crate::vm::Vm`] dispatches
//! the requests and publishes what this decides.

use crate::clock::Rng;
use crate::config::{RegistryConfig, ServiceConfig, Settings};
use crate::membership::{Decision, Hold, Snapshot, Tracker};
use crate::registry::{Call, Cursor, HttpRequest, HttpResponse, RegistryError, Reply, Session};

/// Least gap between two blocking queries, so a registry that answers at once is not hammered.
pub const LONG_POLL_GAP_MS: i64 = 200;

/// Everything a refresh did, for stats and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshOutcome {
    /// A new snapshot was published.
    Published { version: u64, hosts: usize, skipped: u32, protected: bool },
    /// The list was the same as what is published: nothing to do.
    Same { skipped: u32 },
    /// The list was held back by the keep-last-good rules.
    Kept(Hold),
    /// Blocking query returned without change.
    Unchanged,
    /// Logged in; the list request follows at once.
    LoggedIn,
    /// The registry does not speak the API tried; the next one is tried at once (the reason).
    Again(String),
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
        Some(reg.kind.adapter().request(session, &self.cursor, &sc.query, now_ms))
    }

    /// The request could not be dispatched at all: retry after `retry_ms`.
    pub fn dispatch_failed(&mut self, now_ms: i64, retry_ms: i64) {
        self.in_flight = false;
        self.next_due_ms = now_ms.saturating_add(retry_ms);
    }

    /// Leadership was lost or regained: forget what is in flight and poll at once when leading.
    pub fn reset(&mut self) {
        self.in_flight = false;
        self.next_due_ms = 0;
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
        let reply = adapter.on_reply(session, &mut self.cursor, &sc.query, call, resp, now_ms);
        self.next_due_ms = match (&reply, adapter.long_poll()) {
            (Reply::LoggedIn | Reply::Again(_), _) => now_ms,
            // a blocking query goes out again at once, but never in a tight loop
            (Reply::Members(_) | Reply::Unchanged, true) => now_ms.saturating_add(LONG_POLL_GAP_MS),
            _ => now_ms.saturating_add(interval_ms),
        };
        match reply {
            Reply::LoggedIn => (RefreshOutcome::LoggedIn, None),
            Reply::Again(why) => (RefreshOutcome::Again(why), None),
            Reply::Unchanged => (RefreshOutcome::Unchanged, None),
            Reply::Error(e) => (RefreshOutcome::Failed(e), None),
            Reply::Members(mut parsed) => {
                let skipped = parsed.skipped;
                // the snapshot does not carry metadata: compare and publish without it
                for m in &mut parsed.instances {
                    m.metadata.clear();
                }
                match self.tracker.decide(&current.members, parsed, &sc.guard) {
                    Decision::Keep(h) => (RefreshOutcome::Kept(h), None),
                    Decision::Apply { members, protected } => {
                        if members == current.members && current.version > 0 {
                            return (RefreshOutcome::Same { skipped }, None);
                        }
                        let snap = Snapshot { version: current.version + 1, updated_ms: now_ms, members };
                        let outcome = RefreshOutcome::Published {
                            version: snap.version,
                            hosts: snap.members.len(),
                            skipped,
                            protected,
                        };
                        (outcome, Some(snap))
                    }
                }
            }
        }
    }
}

/// The refresh interval with ± `jitter_percent` spread, so pollers of many Envoys do not align.
pub fn interval(settings: &Settings, rng: &mut Rng) -> i64 {
    let base = settings.refresh_interval_ms as i64;
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

    #[test]
    fn jittered_interval_in_bounds() {
        let cfg = config::parse(br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},"services":[{"name":"demo","registry":"s"}]}"#).unwrap();
        let mut rng = Rng::new(3);
        let v: Vec<i64> = (0..1000).map(|_| interval(&cfg.settings, &mut rng)).collect();
        assert!(v.iter().all(|x| (900..=1100).contains(x)));
        assert!(v.iter().min() != v.iter().max());
    }
}
