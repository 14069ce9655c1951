//! The mode's run-time side in one VM: each corrected service's [`Corrected`] state (its
//! corrector, its share of the process-wide pick estimate, its departed addresses) and the
//! [`Capture`] index over every service. The reads and writes of Envoy shared data that keep the
//! estimate and the departed addresses process-wide go through [`crate::store::Shared`]; the VM
//! drives all of it (`src/vm/capture.rs`).

use crate::balancer::Balancer;
use crate::instance::Instance;
use crate::stats::{CaptureStats, CorrectionStats};
use crate::store::{update_cas, Shared};

use super::departed::Departed;
use super::estimate::{flush, Pending, Picks};
use super::index::{AddressIndex, Source};
use super::Corrector;

/// One corrected service in one VM.
#[derive(Debug, Clone, Default)]
pub struct Corrected {
    /// The keep/redirect plan, rebuilt by [`Corrected::replan`].
    pub corrector: Corrector,
    /// Picks this VM saw since its last flush.
    pub pending: Pending,
    /// This VM's own decayed pick counts (what its slot of the shared estimate holds).
    pub own: Picks,
    /// The process-wide estimate as this VM last read it (what it plans from).
    pub picks: Picks,
    /// The service's departed addresses as the poller last shared them.
    pub departed: Departed,
    departed_cas: Option<u32>,
    /// When this VM next adds its picks to the shared estimate and replans (ms since the epoch).
    pub next_flush_ms: i64,
    pub stats: CorrectionStats,
}

impl Corrected {
    /// Re-reads the departed addresses under `key` when their CAS token moved. True when they
    /// changed.
    pub fn load_departed(&mut self, shared: &dyn Shared, key: &str) -> bool {
        let (bytes, cas) = shared.get(key);
        if cas == self.departed_cas {
            return false;
        }
        self.departed_cas = cas;
        let departed = Departed::decode(bytes.as_deref().unwrap_or_default());
        let changed = departed != self.departed;
        self.departed = departed;
        changed
    }

    /// Rebuilds the plan (O(n)) for `members` (the service's view, marks applied) with the live
    /// weights `balancer` holds for them (Dubbo's warm-up weights, 0 when not serving) and the
    /// estimate held. Call after every change of `members` and every `replan_ms`.
    pub fn replan(&mut self, members: &[Instance], balancer: &Balancer, prior_picks: f64, now_ms: i64) {
        self.corrector.replan(members, |i| balancer.weight_of(i), &self.picks, prior_picks, now_ms);
    }

    /// Adds this VM's pending picks to its slot of the process-wide estimate under `key` and
    /// takes the sum of the slots as the estimate it plans from ([`flush`]). False when the key
    /// could not be read (the estimate held is kept).
    pub fn flush(
        &mut self,
        shared: &dyn Shared,
        key: &str,
        vm_id: u64,
        now_ms: i64,
        grace_ms: i64,
        half_life_ms: i64,
    ) -> bool {
        match flush(shared, key, vm_id, &mut self.own, &mut self.pending, now_ms, grace_ms, half_life_ms) {
            Some(picks) => {
                self.picks = picks;
                true
            }
            None => false,
        }
    }
}

/// Records in shared data (`key`, one CAS edit) that the addresses of `prev` missing from `next`
/// left the service at `now_ms`, remembered `ttl_ms`; an address of `next` is forgotten there.
/// Both lists sorted by address. True when the record changed.
pub fn record_departures(
    shared: &dyn Shared,
    key: &str,
    prev: &[Instance],
    next: &[Instance],
    now_ms: i64,
    ttl_ms: i64,
) -> bool {
    update_cas(shared, key, Departed::decode, Departed::encode, |d| d.update(prev, next, now_ms, ttl_ms))
}

/// The VM's side of the mode across services: the address index and the counters of requests no
/// corrected service owns.
#[derive(Debug, Default)]
pub struct Capture {
    pub index: AddressIndex,
    /// When the index must be rebuilt although nothing was published: the earliest end of a
    /// departed record it holds (ms since the epoch; `i64::MAX`: none).
    pub rebuild_at_ms: i64,
    pub stats: CaptureStats,
}

impl Capture {
    /// Rebuilds the index over `sources` (service `k` is `sources[k]`) at `now_ms`. O(total
    /// members + departed).
    pub fn rebuild(&mut self, sources: &[Source<'_>], now_ms: i64) {
        self.index = AddressIndex::build(sources, now_ms);
        self.rebuild_at_ms = sources
            .iter()
            .flat_map(|s| s.departed.until_ms.values())
            .filter(|u| **u > now_ms)
            .min()
            .copied()
            .unwrap_or(i64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::State;
    use crate::store::FakeShared;
    use crate::transparent::index::Lookup;

    const NOW: i64 = 1_800_000_000_000;

    fn m(addr: &str) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: None, warmup_ms: 0, state: State::Serving }
    }

    /// The poller's record is what every VM reads back; a VM reads it again only when it moved.
    #[test]
    fn departures_are_shared_and_read_on_change() {
        let s = FakeShared::default();
        let ab = [m("10.0.0.1:80"), m("10.0.0.2:80")];
        assert!(record_departures(&s, "k", &ab, &ab[1..], NOW, 60_000));
        assert!(!record_departures(&s, "k", &ab[1..], &ab[1..], NOW, 60_000), "nothing new");
        let mut c = Corrected::default();
        assert!(c.load_departed(&s, "k"));
        assert!(c.departed.contains("10.0.0.1:80", NOW));
        let reads = s.calls.get();
        assert!(!c.load_departed(&s, "k"), "same CAS token: not decoded again");
        assert_eq!(s.calls.get(), reads + 1);
        // the address comes back: forgotten
        assert!(record_departures(&s, "k", &ab[1..], &ab, NOW + 1, 60_000));
        assert!(c.load_departed(&s, "k"));
        assert!(c.departed.until_ms.is_empty());
    }

    /// The index is rebuilt when its first departed record runs out.
    #[test]
    fn index_expiry_is_the_first_departed_end() {
        let mut gone = Departed::default();
        gone.update(&[m("10.0.0.9:80"), m("10.0.0.8:80")], &[], NOW, 5000);
        gone.update(&[m("10.0.0.7:80")], &[], NOW + 1000, 5000);
        let members = [m("10.0.0.1:80")];
        let mut cap = Capture::default();
        cap.rebuild(&[Source { members: &members, departed: &gone, corrected: true }], NOW);
        assert_eq!(cap.rebuild_at_ms, NOW + 5000);
        assert!(matches!(cap.index.lookup("10.0.0.8:80", |_| false), Lookup::Found(_)));
        cap.rebuild(&[Source { members: &members, departed: &gone, corrected: true }], NOW + 5000);
        assert_eq!(cap.rebuild_at_ms, NOW + 6000);
        assert_eq!(cap.index.lookup("10.0.0.8:80", |_| false), Lookup::Unknown);
        assert!(matches!(cap.index.lookup("10.0.0.7:80", |_| false), Lookup::Found(_)));
        let empty = Departed::default();
        cap.rebuild(&[Source { members: &members, departed: &empty, corrected: true }], NOW);
        assert_eq!(cap.rebuild_at_ms, i64::MAX);
    }
    /// Warm-up overload protection reaches callers whose own pick is corrected: the plan's
    /// targets are the balancer's live weights, so while 6 of 8 instances warm (in force at 50 %)
    /// callers that still pick only the 2 warm ones are redirected to an even share (3/4 of
    /// their picks move), where without it the warm ones keep most of theirs.
    #[test]
    fn overload_protection_sets_the_targets_of_corrected_picks() {
        use crate::balancer::Policy;
        use crate::warmup::{Curve, OverloadProtection};
        let member = |k: u8, start_ms: i64| Instance {
            addr: format!("10.0.0.{k}:80"),
            weight: 100,
            start_ms: Some(start_ms),
            warmup_ms: 600_000,
            state: State::Serving,
        };
        let mut members: Vec<Instance> = (1..=2).map(|k| member(k, NOW - 3_600_000)).collect();
        members.extend((3..=8).map(|k| member(k, NOW - 1000)));
        let mut pending = Pending::default();
        for _ in 0..500 {
            pending.record("10.0.0.1:80");
            pending.record("10.0.0.2:80");
        }
        let mut picks = Picks::default();
        picks.absorb(&pending, NOW, 2000);
        let mut rng = crate::clock::Rng::new(7);
        let share = |rule: Option<OverloadProtection>, rng: &mut crate::clock::Rng| {
            let mut b = Balancer::new(Policy::RoundRobin, Curve::default(), 100).with_overload_protection(rule);
            b.rebuild(&members, NOW, rng);
            let mut c = Corrected { picks: picks.clone(), ..Corrected::default() };
            c.replan(&members, &b, 0.0, NOW);
            (b.overload_protected(), c.corrector.plan().redirected_share())
        };
        let (on, moved_on) = share(Some(OverloadProtection { threshold_percent: 50 }), &mut rng);
        let (off, moved_off) = share(None, &mut rng);
        assert!(on && !off);
        assert!((moved_on - 0.75).abs() < 1e-9, "{moved_on}");
        assert!(moved_off < 0.05, "{moved_off}");
    }
}
