//! What one VM routes by: each service's published snapshot, decoded only when its shared-data
//! CAS token changes, with the shared marks applied, and its balancer. Re-read only when the
//! generation key changed (one small shared-data read per request otherwise) or a down mark
//! expired. [`crate::vm::Vm::sync`] drives it.

use crate::balancer::Balancer;
use crate::clock::Rng;
use crate::config::ServiceConfig;
use crate::drain::SelfDrain;
use crate::instance::{Instance, State};
use crate::marks::{apply_marks, Marks};
use crate::membership::Snapshot;
use crate::store::{Keys, Shared};

/// One service as this VM sees it.
#[derive(Debug)]
pub struct ServiceView {
    /// The published snapshot (raw, as the registry said).
    pub snap: Snapshot,
    snap_cas: Option<u32>,
    /// A snapshot was installed ([`ServiceView::install`]) that no sync has taken in yet.
    installed: bool,
    /// The snapshot with the marks applied: what is routed by. Sorted by address.
    pub members: Vec<Instance>,
    pub balancer: Balancer,
    /// Members the registry lists as serving whose ejection is over and whose trial nobody has
    /// taken: the next request of this VM tries to take one.
    pub trial_due: Vec<usize>,
}

impl ServiceView {
    pub fn new(sc: &ServiceConfig, weight_refresh_ms: u64) -> Self {
        ServiceView {
            snap: Snapshot::default(),
            snap_cas: None,
            installed: false,
            members: Vec::new(),
            balancer: Balancer::new(sc.policy, sc.curve, weight_refresh_ms as i64)
                .with_overload_protection(sc.overload_protection),
            trial_due: Vec::new(),
        }
    }

    /// Decodes the published snapshot if its CAS token changed. Returns true when it decoded one.
    /// [`ServiceView::changed`] tells whether the snapshot changed at all.
    pub fn load(&mut self, shared: &dyn Shared, key: &str) -> bool {
        let (bytes, cas) = shared.get(key);
        if cas == self.snap_cas {
            return false;
        }
        self.snap_cas = cas;
        match bytes.map(|b| Snapshot::decode(&b)) {
            Some(Ok(s)) => {
                self.snap = s;
                true
            }
            _ => false,
        }
    }

    /// Takes `snap`, the snapshot this VM has just published, as the one stored under the CAS
    /// token `cas`: [`ServiceView::load`] then sees that token and does not decode it again.
    /// Only for a token read back with exactly the bytes `snap` encodes to.
    pub fn install(&mut self, snap: Snapshot, cas: Option<u32>) {
        self.snap = snap;
        self.snap_cas = cas;
        self.installed = true;
    }

    /// Whether a snapshot was installed since the last call: with a decode by
    /// [`ServiceView::load`], what tells a sync that the membership changed.
    pub fn changed(&mut self) -> bool {
        std::mem::take(&mut self.installed)
    }

    /// Whether the service's overload protection ([`crate::warmup::OverloadProtection`]) is in
    /// force for its members, marks applied, at `now_ms`; false without one. Counted afresh (O(n)),
    /// as [`host_counts`] is: the value for the gauge. The balancer's cached verdict
    /// ([`Balancer::overload_protected`], what picks use) follows it within the weight refresh
    /// interval.
    pub fn overload_protected(&self, now_ms: i64) -> bool {
        self.balancer.overload_protection().is_some_and(|r| r.in_force_for(&self.members, now_ms))
    }

    /// Applies `marks` to the snapshot and rebuilds the balancer.
    pub fn rebuild(&mut self, marks: &Marks, now_ms: i64, rng: &mut Rng) {
        self.members.clone_from(&self.snap.members);
        apply_marks(&mut self.members, marks);
        self.balancer.rebuild(&self.members, now_ms, rng);
        self.trial_due.clear();
        if !marks.ejected.is_empty() {
            for (i, m) in self.snap.members.iter().enumerate() {
                let due = marks.ejected.get(&m.addr).is_some_and(|e| e.trial_due(now_ms));
                if due && m.state.is_serving() && self.members.get(i).is_some_and(|v| v.state == State::Down) {
                    self.trial_due.push(i);
                }
            }
        }
    }
}

/// What every service's view shares: the generation seen last, the marks, the inbound self-drain.
#[derive(Debug, Default)]
pub struct View {
    gen_cas: Option<u32>,
    synced: bool,
    /// When the next ejection changes meaning: the view is rebuilt then even if nothing was
    /// published.
    next_expiry_ms: i64,
    pub marks: Marks,
    pub self_drain: SelfDrain,
    /// Inbound with `registration`: the application is not ready (or not yet warm), as the
    /// poller's registration last shared it ([`crate::registration::not_ready`]).
    pub not_ready: bool,
    /// Number of snapshot decodes (each is O(n); they happen only on change).
    pub decodes: u64,
}

impl View {
    /// True when something may have changed since the last call (the generation moved, an
    /// ejection's time ran out, or this is the first call); then the marks are re-read.
    pub fn stale(&mut self, shared: &dyn Shared, keys: &Keys, now_ms: i64) -> bool {
        let (_, gen) = shared.get(keys.gen());
        if self.synced && gen == self.gen_cas && now_ms < self.next_expiry_ms {
            return false;
        }
        self.synced = true;
        self.gen_cas = gen;
        let (mb, _) = shared.get(&keys.marks());
        self.marks = Marks::decode(mb.as_deref().unwrap_or_default());
        self.next_expiry_ms = self.marks.next_expiry(now_ms);
        true
    }
}

/// Host counts for the gauges of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub total: u64,
    pub serving: u64,
    pub warming: u64,
    pub draining: u64,
    pub down: u64,
}

/// Counts `members` by state at `now_ms` (warming: serving and inside its warmup window).
pub fn host_counts(members: &[Instance], now_ms: i64) -> HostCounts {
    let mut c = HostCounts { total: members.len() as u64, ..Default::default() };
    for m in members {
        match m.state {
            State::Serving => {
                c.serving += 1;
                if crate::warmup::is_warming(m.start_ms, m.warmup_ms, now_ms) && m.weight > 0 {
                    c.warming += 1;
                }
            }
            State::Draining => c.draining += 1,
            State::Down => c.down += 1,
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::OutlierDetection;
    use crate::warmup::OverloadProtection;

    const NOW: i64 = 1_800_000_000_000;

    fn member(i: u8, start_ms: Option<i64>) -> Instance {
        Instance { addr: format!("10.0.0.{i}:80"), weight: 100, start_ms, warmup_ms: 100_000, state: State::Serving }
    }

    /// A view built from a configuration with `warmup.overload_protection` as `rule` gives it.
    fn view(rule: Option<OverloadProtection>) -> ServiceView {
        let warmup = match rule {
            Some(r) => {
                format!(r#","warmup":{{"overload_protection":{{"threshold_percent":{}}}}}"#, r.threshold_percent)
            }
            None => String::new(),
        };
        let json = format!(
            r#"{{"registries":{{"s":{{"type":"static","cluster":"cp","authority":"cp","path":"/x"}}}},"services":[{{"name":"me","registry":"s"{warmup}}}]}}"#
        );
        let cfg = crate::config::parse(json.as_bytes()).unwrap();
        let sv = ServiceView::new(&cfg.services[0], 100);
        assert_eq!(sv.balancer.overload_protection(), rule, "the configured rule reaches the balancer");
        sv
    }

    /// Two warm, two warming, as the registry lists them; the marks of this VM's view take warm
    /// ones out (ejected, failing a check, drain-marked), which puts the protection in force.
    #[test]
    fn marks_take_instances_out_of_the_count() {
        let warming = Some(NOW - 25_000);
        let snap = Snapshot {
            version: 1,
            updated_ms: NOW,
            members: vec![
                member(1, Some(1)),
                member(2, Some(1)),
                member(3, warming),
                member(4, warming),
                member(5, None),
            ],
        };
        let mut rng = Rng::new(1);
        let mut sv = view(Some(OverloadProtection::default()));
        sv.install(snap.clone(), Some(1));
        sv.rebuild(&Marks::default(), NOW, &mut rng);
        assert!(!sv.overload_protected(NOW), "2 of 5");
        assert!(!sv.balancer.overload_protected());
        assert_eq!(sv.balancer.weight_of(2), 25);

        // the ejected warm one is out: 2 warming of 4 candidates is 50 %
        let mut marks = Marks::default();
        marks.eject("10.0.0.1:80", Some(1), NOW, &OutlierDetection::default(), false);
        sv.rebuild(&marks, NOW, &mut rng);
        assert_eq!(sv.members[0].state, State::Down);
        assert!(sv.overload_protected(NOW));
        assert!(sv.balancer.overload_protected());
        assert_eq!((sv.balancer.weight_of(0), sv.balancer.weight_of(2)), (0, 100));
        // the same with a failing health check or a drain mark instead of the ejection
        for edit in [
            |m: &mut Marks| assert!(m.set_health("10.0.0.2:80", Some(1), false)),
            |m: &mut Marks| assert!(m.mark("10.0.0.2:80", Some(1))),
        ] {
            let mut marks = Marks::default();
            edit(&mut marks);
            sv.rebuild(&marks, NOW, &mut rng);
            assert!(!sv.members[1].state.is_serving());
            assert!(sv.overload_protected(NOW) && sv.balancer.overload_protected());
        }
        // past the warmup nothing is protected, whatever the marks
        assert!(!sv.overload_protected(NOW + 100_000));
        // without the rule, never
        let mut off = view(None);
        off.install(snap, Some(1));
        off.rebuild(&marks, NOW, &mut rng);
        assert!(!off.overload_protected(NOW) && !off.balancer.overload_protected());
        assert_eq!(off.balancer.weight_of(2), 25);
    }
}
