//! The filter's behaviour, free of proxy-wasm calls: the poller (lease, schedule, registry replies,
//! keep-last-good, publish), the per-VM view (decode on version change, drain marks, balancers) and
//! the routing decision. Host services come in through [`Shared`] and plain values, so all of it is
//! tested natively with a fake shared store.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::balancer::{Balancer, NoPick};
use crate::clock::Rng;
use crate::config::{Config, Mode, RoutingMode};
use crate::drain::{self, Pin, Reason, SelfDrain};
use crate::instance::{Instance, State};
use crate::membership::{apply_marks, Decision, Marks, Snapshot, Tracker};
use crate::registry::{Call, HttpRequest, HttpResponse, RegistryError, Reply};

/// Process-wide key/value store with compare-and-swap (Envoy shared data).
pub trait Shared {
    /// The value and its CAS token (`None` when absent).
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Sets the value; with `cas` only if the stored token still matches. `false` on mismatch.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// An in-memory [`Shared`] with Envoy's CAS semantics, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct FakeShared {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: std::cell::Cell<u32>,
}

impl Shared for FakeShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut m = self.map.borrow_mut();
        if let Some(c) = cas {
            if m.get(key).map(|(_, cur)| *cur) != Some(c) {
                return false;
            }
        }
        let n = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(n);
        m.insert(key.to_string(), (value.to_vec(), n));
        true
    }
}

/// Shared-data key names, prefixed per configuration so that two filter configurations in one
/// Envoy never read each other's state.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(config_bytes: &[u8]) -> Self {
        // FNV-1a of the configuration
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in config_bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Keys { prefix: format!("lossless/{h:016x}/") }
    }
    pub fn lease(&self) -> String {
        format!("{}lease", self.prefix)
    }
    pub fn gen(&self) -> String {
        format!("{}gen", self.prefix)
    }
    pub fn service(&self, name: &str) -> String {
        format!("{}svc/{}", self.prefix, name)
    }
    pub fn marks(&self) -> String {
        format!("{}marks", self.prefix)
    }
    pub fn self_drain(&self) -> String {
        format!("{}selfdrain", self.prefix)
    }
}

/// Bumps the generation so that every VM re-reads what changed.
pub fn bump_gen(shared: &dyn Shared, keys: &Keys) {
    shared.set(&keys.gen(), b"1", None);
}

/// One poller per Envoy process: the VM holding an unexpired lease (`vm_id|expiry_ms`) polls; when
/// it stops renewing, another VM takes over after `ttl_ms`. Returns whether this VM leads now.
pub fn try_lead(shared: &dyn Shared, keys: &Keys, vm_id: u64, now_ms: i64, ttl_ms: i64) -> bool {
    let key = keys.lease();
    let (cur, cas) = shared.get(&key);
    if let Some(v) = cur.as_deref() {
        let text = String::from_utf8_lossy(v);
        let mut parts = text.splitn(2, '|');
        let holder = parts.next().and_then(|s| s.parse::<u64>().ok());
        let expiry = parts.next().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        if holder != Some(vm_id) && expiry > now_ms {
            return false;
        }
    }
    let value = format!("{vm_id}|{}", now_ms.saturating_add(ttl_ms));
    shared.set(&key, value.as_bytes(), cas)
}

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
    Kept(crate::membership::Hold),
    /// Blocking query returned without change.
    Unchanged,
    /// Logged in; the list request follows at once.
    LoggedIn,
    /// The reply was unusable; the last good membership stays.
    Failed(RegistryError),
}

/// Per-service poll state of the leader.
#[derive(Debug, Clone, Default)]
struct PollState {
    next_due_ms: i64,
    in_flight: bool,
    tracker: Tracker,
}

/// The registry poller. Lives in every VM; acts only while its VM holds the lease.
#[derive(Debug)]
pub struct Poller {
    states: Vec<PollState>,
}

impl Poller {
    pub fn new(services: usize) -> Self {
        Poller { states: vec![PollState::default(); services] }
    }

    /// Requests that are due at `now_ms`: `(service, call, request)`. Marks them in flight.
    pub fn due(&mut self, cfg: &mut Config, now_ms: i64) -> Vec<(usize, Call, HttpRequest)> {
        let mut out = Vec::new();
        for (i, st) in self.states.iter_mut().enumerate() {
            if st.in_flight || now_ms < st.next_due_ms {
                continue;
            }
            let Some(svc) = cfg.services.get(i) else { continue };
            let Some(reg) = cfg.registries.get_mut(svc.registry) else { continue };
            let (call, req) = reg.kind.adapter().request(&svc.query, now_ms);
            st.in_flight = true;
            out.push((i, call, req));
        }
        out
    }

    /// The request could not be dispatched at all: retry after one interval.
    pub fn dispatch_failed(&mut self, cfg: &Config, svc: usize, now_ms: i64, rng: &mut Rng) {
        if let Some(st) = self.states.get_mut(svc) {
            st.in_flight = false;
            st.next_due_ms = now_ms.saturating_add(interval(cfg, rng));
        }
    }

    /// Leadership was lost or regained: forget in-flight state and poll at once when leading again.
    pub fn reset(&mut self) {
        for st in &mut self.states {
            st.in_flight = false;
            st.next_due_ms = 0;
        }
    }

    /// Handles a registry reply for `svc`; publishes through `shared` when the membership changes.
    /// `view` is this VM's view: its raw snapshot is the current membership.
    #[allow(clippy::too_many_arguments)]
    pub fn on_reply(
        &mut self,
        cfg: &mut Config,
        view: &View,
        shared: &dyn Shared,
        keys: &Keys,
        svc: usize,
        call: Call,
        resp: &HttpResponse<'_>,
        now_ms: i64,
        rng: &mut Rng,
    ) -> RefreshOutcome {
        let next_interval = interval(cfg, rng);
        let Some(st) = self.states.get_mut(svc) else {
            return RefreshOutcome::Failed(RegistryError::Transport);
        };
        st.in_flight = false;
        let Some(sc) = cfg.services.get_mut(svc) else {
            return RefreshOutcome::Failed(RegistryError::Transport);
        };
        let guard = sc.guard;
        let Some(reg) = cfg.registries.get_mut(sc.registry) else {
            return RefreshOutcome::Failed(RegistryError::Transport);
        };
        let adapter = reg.kind.adapter();
        let reply = adapter.on_reply(&mut sc.query, call, resp, now_ms);
        let long_poll = adapter.long_poll();
        st.next_due_ms = match (&reply, long_poll) {
            (Reply::LoggedIn, _) => now_ms,
            // a blocking query goes out again at once, but never in a tight loop
            (Reply::Members(_) | Reply::Unchanged, true) => now_ms.saturating_add(LONG_POLL_GAP_MS),
            _ => now_ms.saturating_add(next_interval),
        };
        match reply {
            Reply::LoggedIn => RefreshOutcome::LoggedIn,
            Reply::Unchanged => RefreshOutcome::Unchanged,
            Reply::Error(e) => RefreshOutcome::Failed(e),
            Reply::Members(mut parsed) => {
                let skipped = parsed.skipped;
                // the snapshot does not carry metadata: compare and publish without it
                for m in &mut parsed.instances {
                    m.metadata.clear();
                }
                let (current, version) = view.snapshot(svc).map_or((&[][..], 0), |s| (&s.members[..], s.version));
                match st.tracker.decide(current, parsed, &guard) {
                    Decision::Keep(h) => RefreshOutcome::Kept(h),
                    Decision::Apply { members, protected } => {
                        if members == current && version > 0 {
                            return RefreshOutcome::Same { skipped };
                        }
                        let snap = Snapshot { version: version + 1, updated_ms: now_ms, members };
                        let hosts = snap.members.len();
                        let version = snap.version;
                        shared.set(&keys.service(&sc.name), &snap.encode(), None);
                        prune_marks(shared, keys, view, svc, &snap, now_ms);
                        bump_gen(shared, keys);
                        RefreshOutcome::Published { version, hosts, skipped, protected }
                    }
                }
            }
        }
    }
}

fn interval(cfg: &Config, rng: &mut Rng) -> i64 {
    let base = cfg.refresh_interval_ms as i64;
    let spread = base * i64::from(cfg.jitter_percent) / 100;
    if spread <= 0 {
        return base;
    }
    base - spread + rng.below((2 * spread + 1) as u64) as i64
}

/// Drops drain marks the registry has overtaken (the instance restarted or is gone everywhere).
fn prune_marks(shared: &dyn Shared, keys: &Keys, view: &View, svc: usize, fresh: &Snapshot, now_ms: i64) {
    let key = keys.marks();
    for _ in 0..4 {
        let (bytes, cas) = shared.get(&key);
        let mut marks = Marks::decode(bytes.as_deref().unwrap_or_default());
        if marks.m.is_empty() && marks.down.is_empty() {
            return;
        }
        let changed = marks.prune(now_ms, |addr| {
            if let Some(i) = fresh.find(addr) {
                return fresh.members.get(i);
            }
            view.services.iter().enumerate().filter(|(k, _)| *k != svc).find_map(|(_, s)| s.snap.find(addr).and_then(|i| s.snap.members.get(i)))
        });
        if !changed || shared.set(&key, &marks.encode(), cas) {
            return;
        }
    }
}

/// Marks `addr` draining for every VM (an upstream said so with the drain header). Returns true
/// when a new mark was written.
pub fn mark_draining(shared: &dyn Shared, keys: &Keys, view: &View, addr: &str) -> bool {
    let Some(addr) = crate::instance::canonical_addr(addr) else {
        return false;
    };
    // only members can be marked: the drain header of a stranger changes nothing
    let Some(start) = view.services.iter().find_map(|s| s.snap.find(&addr).and_then(|i| s.snap.members.get(i)).map(|m| m.start_ms)) else {
        return false;
    };
    let key = keys.marks();
    for _ in 0..4 {
        let (bytes, cas) = shared.get(&key);
        let mut marks = Marks::decode(bytes.as_deref().unwrap_or_default());
        if !marks.mark(&addr, start) {
            return false;
        }
        if shared.set(&key, &marks.encode(), cas) {
            bump_gen(shared, keys);
            return true;
        }
    }
    false
}

/// Marks the addresses that Envoy tried and left for another (connection failure, reset or a
/// refusal: the request was retried elsewhere) down for every VM until `now_ms + ttl_ms`. Only
/// members are marked. Returns how many new marks were written.
pub fn mark_failed(shared: &dyn Shared, keys: &Keys, view: &View, addrs: &[&str], now_ms: i64, ttl_ms: i64) -> usize {
    let members: Vec<&str> = addrs.iter().copied().filter(|a| view.services.iter().any(|s| s.snap.find(a).is_some())).collect();
    if members.is_empty() || ttl_ms <= 0 {
        return 0;
    }
    let key = keys.marks();
    for _ in 0..4 {
        let (bytes, cas) = shared.get(&key);
        let mut marks = Marks::decode(bytes.as_deref().unwrap_or_default());
        let n = members.iter().filter(|a| marks.mark_down(a, now_ms, now_ms.saturating_add(ttl_ms))).count();
        if n == 0 {
            return 0;
        }
        if shared.set(&key, &marks.encode(), cas) {
            bump_gen(shared, keys);
            return n;
        }
    }
    0
}

/// Which of the addresses written for a request failed, given how many attempts Envoy made and
/// where the last one went. Envoy's override_host policy takes the list in order, one address per
/// attempt; when the last attempt is not where that order says (an address was skipped), nothing
/// is concluded.
pub fn failed_attempts<'a>(written: &'a [String], attempts: usize, last_upstream: &str) -> &'a [String] {
    if attempts < 2 || written.get(attempts - 1).map(String::as_str) != Some(last_upstream) {
        return &[];
    }
    written.get(..attempts - 1).unwrap_or_default()
}

/// One service as this VM sees it.
#[derive(Debug)]
pub struct ServiceView {
    /// The published snapshot (raw, as the registry said).
    pub snap: Snapshot,
    snap_cas: Option<u32>,
    /// The snapshot with drain marks applied: what is routed by.
    pub members: Vec<Instance>,
    pub balancer: Balancer,
}

/// This VM's view of all services, re-read from shared data only when the generation changes.
#[derive(Debug)]
pub struct View {
    pub services: Vec<ServiceView>,
    gen_cas: Option<u32>,
    synced: bool,
    /// When the next down mark expires: the view is rebuilt then even if nothing was published.
    next_expiry_ms: i64,
    pub marks: Marks,
    pub self_drain: SelfDrain,
    /// Number of snapshot decodes (each is O(n); they happen only on change).
    pub decodes: u64,
}

impl View {
    pub fn new(cfg: &Config) -> Self {
        View {
            services: cfg
                .services
                .iter()
                .map(|s| ServiceView {
                    snap: Snapshot::default(),
                    snap_cas: None,
                    members: Vec::new(),
                    balancer: Balancer::new(s.policy, s.curve, cfg.weight_refresh_ms as i64),
                })
                .collect(),
            gen_cas: None,
            synced: false,
            next_expiry_ms: i64::MAX,
            marks: Marks::default(),
            self_drain: SelfDrain::default(),
            decodes: 0,
        }
    }

    pub fn snapshot(&self, svc: usize) -> Option<&Snapshot> {
        self.services.get(svc).map(|s| &s.snap)
    }

    /// Re-reads shared data if anything was published since the last call: one small read when
    /// nothing changed.
    pub fn sync(&mut self, cfg: &Config, shared: &dyn Shared, keys: &Keys, now_ms: i64, rng: &mut Rng) {
        let (_, gen) = shared.get(&keys.gen());
        if self.synced && gen == self.gen_cas && now_ms < self.next_expiry_ms {
            return;
        }
        self.synced = true;
        self.gen_cas = gen;
        let (mb, _) = shared.get(&keys.marks());
        self.marks = Marks::decode(mb.as_deref().unwrap_or_default());
        self.next_expiry_ms = self.marks.next_expiry(now_ms);
        for (sc, sv) in cfg.services.iter().zip(self.services.iter_mut()) {
            let (bytes, cas) = shared.get(&keys.service(&sc.name));
            if cas != sv.snap_cas {
                if let Some(b) = bytes {
                    if let Ok(s) = Snapshot::decode(&b) {
                        sv.snap = s;
                        self.decodes += 1;
                    }
                }
                sv.snap_cas = cas;
            }
            sv.members = sv.snap.members.clone();
            apply_marks(&mut sv.members, &self.marks, now_ms);
            sv.balancer.rebuild(&sv.members, now_ms, rng);
        }
        if let Some(ib) = &cfg.inbound {
            let (flag, _) = shared.get(&keys.self_drain());
            let manual = flag.as_deref() == Some(b"1");
            if let Some(sv) = self.services.get(ib.service) {
                self.self_drain.update(&sv.snap.members, &ib.self_address, manual, now_ms);
            }
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Not a service of ours: forward untouched (after routing headers were stripped).
    PassThrough,
    /// Set the service's routing header to `value` (the picked addresses) and forward.
    Forward { service: usize, value: String },
    /// Answer locally with 503.
    Reject { service: Option<usize>, reason: Reason },
}

/// Decides the route of one request. `cluster` is the routed Envoy cluster (`xds.cluster_name`),
/// `pin` the value of the operator's pin header if configured and sent. O(log n) in instances.
pub fn route(cfg: &Config, view: &mut View, cluster: Option<&str>, pin: Option<&str>, now_ms: i64, rng: &mut Rng, scratch: &mut Vec<usize>) -> Route {
    if cfg.mode == Mode::Inbound {
        if view.self_drain.rejecting(now_ms, cfg.drain.notify_grace_ms) {
            return Route::Reject { service: cfg.inbound.as_ref().map(|i| i.service), reason: Reason::SelfDraining };
        }
        return Route::PassThrough;
    }
    let Some(svc) = cluster.and_then(|c| cfg.service_for_cluster(c)) else {
        return Route::PassThrough;
    };
    let (Some(sc), Some(sv)) = (cfg.services.get(svc), view.services.get_mut(svc)) else {
        return Route::PassThrough;
    };
    sv.balancer.refresh_if_due(&sv.members, now_ms, rng);
    let pinned = match drain::pin(&sv.members, pin) {
        Pin::Draining => return Route::Reject { service: Some(svc), reason: Reason::PinnedDraining },
        Pin::Serving(i) => Some(i),
        Pin::Ignore => None,
    };
    let fallbacks = if sc.routing == RoutingMode::OriginalDst { 0 } else { sc.fallbacks };
    match sv.balancer.pick(rng, fallbacks, scratch) {
        Err(NoPick::Empty) => return Route::Reject { service: Some(svc), reason: Reason::NoInstances },
        Err(NoPick::NoneServing) => return Route::Reject { service: Some(svc), reason: Reason::NoneServing },
        Ok(()) => {}
    }
    if let Some(p) = pinned {
        scratch.retain(|i| *i != p);
        scratch.insert(0, p);
        scratch.truncate(fallbacks + 1);
    }
    let mut value = String::with_capacity(24 * scratch.len());
    for i in scratch.iter() {
        if let Some(m) = sv.members.get(*i) {
            if !value.is_empty() {
                value.push(',');
            }
            value.push_str(&m.addr);
        }
    }
    Route::Forward { service: svc, value }
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

/// The JSON view of what this VM believes: services, members with live weights, marks.
pub fn membership_json(cfg: &Config, view: &mut View, now_ms: i64, rng: &mut Rng, leader: bool) -> String {
    use serde_json::json;
    let services: Vec<serde_json::Value> = cfg
        .services
        .iter()
        .zip(view.services.iter_mut())
        .map(|(sc, sv)| {
            sv.balancer.refresh_if_due(&sv.members, now_ms, rng);
            let members: Vec<serde_json::Value> = sv
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({
                        "address": m.addr,
                        "state": m.state.as_str(),
                        "marked": view.marks.applies(m),
                        "marked_down_until_ms": view.marks.down.get(&m.addr).filter(|u| **u > now_ms),
                        "weight": m.weight,
                        "live_weight": sv.balancer.weight_of(i),
                        "start_ms": m.start_ms,
                        "warmup_ms": m.warmup_ms,
                        "warming": m.state.is_serving() && crate::warmup::is_warming(m.start_ms, m.warmup_ms, now_ms),
                    })
                })
                .collect();
            let c = host_counts(&sv.members, now_ms);
            json!({
                "name": sc.name,
                "registry_service": sc.query.service,
                "match_clusters": sc.match_clusters,
                "version": sv.snap.version,
                "updated_ms": sv.snap.updated_ms,
                "hosts": {"total": c.total, "serving": c.serving, "warming": c.warming, "draining": c.draining, "down": c.down},
                "instances": members,
            })
        })
        .collect();
    let mut doc = json!({ "now_ms": now_ms, "poller": leader, "services": services });
    if let (Some(ib), Some(obj)) = (&cfg.inbound, doc.as_object_mut()) {
        obj.insert(
            "self".into(),
            json!({
                "address": ib.self_address,
                "draining": view.self_drain.draining(),
                "draining_since_ms": view.self_drain.since_ms,
                "rejecting": view.self_drain.rejecting(now_ms, cfg.drain.notify_grace_ms),
                "manual": view.self_drain.manual,
                "registry_offline": view.self_drain.registry_offline,
                "seen_serving": view.self_drain.seen_serving,
            }),
        );
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const NOW: i64 = 1_800_000_000_000;

    fn cfg() -> (Config, Keys) {
        let json = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","match_clusters":["demo"]}],"drain":{"pin_header":"x-pin"}}"#;
        (config::parse(json).unwrap(), Keys::new(json))
    }

    fn ok(body: &str) -> (Vec<(String, String)>, Vec<u8>) {
        (vec![(":status".into(), "200".into())], body.as_bytes().to_vec())
    }

    fn reply<'a>(h: &'a [(String, String)], b: &'a [u8]) -> HttpResponse<'a> {
        HttpResponse { status: h.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse().ok()), headers: h, body: b, body_size: b.len() }
    }

    struct World {
        cfg: Config,
        keys: Keys,
        shared: FakeShared,
        poller: Poller,
        view: View,
        rng: Rng,
    }

    impl World {
        fn new() -> Self {
            let (cfg, keys) = cfg();
            World { poller: Poller::new(cfg.services.len()), view: View::new(&cfg), cfg, keys, shared: FakeShared::default(), rng: Rng::new(1) }
        }
        fn refresh(&mut self, body: &str, now: i64) -> RefreshOutcome {
            let due = self.poller.due(&mut self.cfg, now);
            assert_eq!(due.len(), 1, "one request per interval");
            let (svc, call, req) = &due[0];
            assert_eq!(req.header(":path"), Some("/demo"));
            let (h, b) = ok(body);
            let r = self.poller.on_reply(&mut self.cfg, &self.view, &self.shared, &self.keys, *svc, *call, &reply(&h, &b), now, &mut self.rng);
            self.view.sync(&self.cfg, &self.shared, &self.keys, now, &mut self.rng);
            r
        }
        fn route(&mut self, cluster: &str, pin: Option<&str>, now: i64) -> Route {
            let mut scratch = Vec::new();
            self.view.sync(&self.cfg, &self.shared, &self.keys, now, &mut self.rng);
            route(&self.cfg, &mut self.view, Some(cluster), pin, now, &mut self.rng, &mut scratch)
        }
    }

    const THREE: &str = r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#;

    #[test]
    fn lease_has_one_holder_and_expires() {
        let (_, keys) = cfg();
        let s = FakeShared::default();
        assert!(try_lead(&s, &keys, 1, NOW, 3000));
        assert!(!try_lead(&s, &keys, 2, NOW + 1000, 3000));
        assert!(try_lead(&s, &keys, 1, NOW + 1000, 3000), "renewal");
        assert!(!try_lead(&s, &keys, 2, NOW + 3999, 3000));
        assert!(try_lead(&s, &keys, 2, NOW + 4001, 3000), "expired lease passes on");
        assert!(!try_lead(&s, &keys, 1, NOW + 4002, 3000));
    }

    #[test]
    fn poll_publish_route() {
        let mut w = World::new();
        assert_eq!(w.route("demo", None, NOW), Route::Reject { service: Some(0), reason: Reason::NoInstances });
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { version: 1, hosts: 3, .. }));
        // not due again before the interval (1 s +- 10 %)
        assert!(w.poller.due(&mut w.cfg, NOW + 500).is_empty());
        let Route::Forward { service, value } = w.route("demo", None, NOW) else { panic!() };
        assert_eq!(w.cfg.services[service].header, "x-lossless-upstream");
        let addrs: Vec<&str> = value.split(',').collect();
        assert_eq!(addrs.len(), 3, "primary + 2 fallbacks: {value}");
        assert_eq!(w.route("other", None, NOW), Route::PassThrough);
        // the same list again publishes nothing
        assert!(matches!(w.refresh(THREE, NOW + 2000), RefreshOutcome::Same { .. }));
        // metadata is not part of the snapshot: a list with metadata is the same list
        let with_md = THREE.replace(r#""10.0.0.1:80""#, r#""10.0.0.1:80","metadata":{"zone":"a"}"#);
        assert!(matches!(w.refresh(&with_md, NOW + 4000), RefreshOutcome::Same { .. }));
        // a garbage reply keeps the membership
        assert!(matches!(w.refresh("<html>", NOW + 6000), RefreshOutcome::Failed(RegistryError::Parse(_))));
        assert_eq!(w.view.services[0].members.len(), 3);
        assert_eq!(w.view.decodes, 1, "decoded once: only on version change");
    }

    #[test]
    fn draining_excluded_and_pins() {
        let mut w = World::new();
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80","state":"draining"},{"address":"10.0.0.3:80","state":"down"}]}"#, NOW);
        for _ in 0..200 {
            let Route::Forward { value, .. } = w.route("demo", None, NOW) else { panic!() };
            assert_eq!(value, "10.0.0.1:80", "only the serving instance, no draining fallbacks");
        }
        assert_eq!(w.route("demo", Some("10.0.0.2:80"), NOW), Route::Reject { service: Some(0), reason: Reason::PinnedDraining });
        let Route::Forward { value, .. } = w.route("demo", Some("169.254.169.254:80"), NOW) else { panic!() };
        assert_eq!(value, "10.0.0.1:80", "a pin outside the membership is ignored");
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","state":"draining"},{"address":"10.0.0.2:80","state":"draining"}]}"#, NOW + 2000);
        assert_eq!(w.route("demo", None, NOW + 2000), Route::Reject { service: Some(0), reason: Reason::NoneServing });
    }

    #[test]
    fn pinned_serving_goes_first() {
        let mut w = World::new();
        w.refresh(THREE, NOW);
        for _ in 0..50 {
            let Route::Forward { value, .. } = w.route("demo", Some("10.0.0.3:80"), NOW) else { panic!() };
            let v: Vec<&str> = value.split(',').collect();
            assert_eq!(v[0], "10.0.0.3:80");
            assert_eq!(v.len(), 3);
            assert_eq!(v.iter().filter(|a| **a == "10.0.0.3:80").count(), 1);
        }
    }

    #[test]
    fn notify_marks_until_restart_or_gone() {
        let mut w = World::new();
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":100},{"address":"10.0.0.2:80"}]}"#, NOW);
        assert!(!mark_draining(&w.shared, &w.keys, &w.view, "1.2.3.4:80"), "strangers cannot be marked");
        assert!(mark_draining(&w.shared, &w.keys, &w.view, "10.0.0.1:80"));
        // another VM sees it at once through the generation
        let mut other = View::new(&w.cfg);
        let mut rng = Rng::new(2);
        other.sync(&w.cfg, &w.shared, &w.keys, NOW, &mut rng);
        assert_eq!(other.services[0].members[0].state, State::Draining);
        for _ in 0..100 {
            let Route::Forward { value, .. } = w.route("demo", None, NOW) else { panic!() };
            assert_eq!(value, "10.0.0.2:80");
        }
        // registry still lists it with the same start: the mark holds
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":100},{"address":"10.0.0.2:80","weight":5}]}"#, NOW + 2000);
        assert_eq!(w.view.services[0].members[0].state, State::Draining);
        // restarted (newer start): the mark goes
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":200},{"address":"10.0.0.2:80"}]}"#, NOW + 4000);
        assert_eq!(w.view.services[0].members[0].state, State::Serving);
        assert!(w.view.marks.m.is_empty());
    }

    #[test]
    fn failed_hosts_are_skipped_until_the_mark_expires() {
        let mut w = World::new();
        w.refresh(THREE, NOW);
        let written: Vec<String> = vec!["10.0.0.2:80".into(), "10.0.0.3:80".into(), "10.0.0.1:80".into()];
        // two attempts, the second went to the second address: the first failed
        let failed = failed_attempts(&written, 2, "10.0.0.3:80");
        assert_eq!(failed, &written[..1]);
        // the order does not match (an address was skipped): nothing is concluded
        assert!(failed_attempts(&written, 2, "10.0.0.1:80").is_empty());
        assert!(failed_attempts(&written, 1, "10.0.0.2:80").is_empty());
        assert!(failed_attempts(&written, 7, "10.0.0.2:80").is_empty());
        let refs: Vec<&str> = failed.iter().map(String::as_str).collect();
        assert_eq!(mark_failed(&w.shared, &w.keys, &w.view, &refs, NOW, 10_000), 1);
        assert_eq!(mark_failed(&w.shared, &w.keys, &w.view, &["1.2.3.4:5"], NOW, 10_000), 0, "only members");
        for _ in 0..100 {
            let Route::Forward { value, .. } = w.route("demo", None, NOW + 1) else { panic!() };
            assert!(!value.contains("10.0.0.2:80"), "{value}");
        }
        // expiry needs no publish: the view rebuilds by itself
        let Route::Forward { value, .. } = w.route("demo", None, NOW + 10_001) else { panic!() };
        assert_eq!(value.split(',').count(), 3);
        // the poller drops expired marks with its next publish
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"}]}"#, NOW + 12_000);
        assert!(w.view.marks.down.is_empty());
    }

    #[test]
    fn flapping_registry_keeps_the_set() {
        let mut w = World::new();
        let ten: Vec<String> = (1..=10).map(|k| format!(r#"{{"address":"10.0.0.{k}:80"}}"#)).collect();
        let full = format!(r#"{{"instances":[{}]}}"#, ten.join(","));
        let partial = format!(r#"{{"instances":[{}]}}"#, ten[0]);
        w.refresh(&full, NOW);
        let mut t = NOW;
        for body in [r#"{"instances":[]}"#, partial.as_str(), "oops", full.as_str(), partial.as_str(), r#"{"instances":[]}"#, full.as_str()] {
            t += 2000;
            w.refresh(body, t);
            assert_eq!(w.view.services[0].balancer.serving(), 10, "after {body}");
        }
    }

    #[test]
    fn inbound_self_drain() {
        let json = br#"{"mode":"inbound","inbound":{"service":"me","self_address":"10.0.0.1:80"},"drain":{"notify_grace_ms":1000},
            "registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/demo"}},"services":[{"name":"me","registry":"s"}]}"#;
        let cfg = config::parse(json).unwrap();
        let keys = Keys::new(json);
        let shared = FakeShared::default();
        let mut view = View::new(&cfg);
        let mut rng = Rng::new(1);
        let mut s = Vec::new();
        let publish = |members: &str, v: u64| {
            let p = crate::registry::static_json::parse(members.as_bytes(), &Default::default()).unwrap();
            shared.set(&keys.service("me"), &Snapshot { version: v, updated_ms: 0, members: p.instances }.encode(), None);
            bump_gen(&shared, &keys);
        };
        view.sync(&cfg, &shared, &keys, NOW, &mut rng);
        assert_eq!(route(&cfg, &mut view, None, None, NOW, &mut rng, &mut s), Route::PassThrough, "not registered yet");
        publish(r#"{"instances":[{"address":"10.0.0.1:80"}]}"#, 1);
        view.sync(&cfg, &shared, &keys, NOW, &mut rng);
        assert_eq!(route(&cfg, &mut view, None, None, NOW, &mut rng, &mut s), Route::PassThrough);
        publish(r#"{"instances":[{"address":"10.0.0.2:80"}]}"#, 2);
        view.sync(&cfg, &shared, &keys, NOW, &mut rng);
        assert_eq!(route(&cfg, &mut view, None, None, NOW, &mut rng, &mut s), Route::PassThrough, "notify grace: still served");
        assert!(view.self_drain.draining());
        assert_eq!(route(&cfg, &mut view, None, None, NOW + 1000, &mut rng, &mut s), Route::Reject { service: Some(0), reason: Reason::SelfDraining });
        publish(r#"{"instances":[{"address":"10.0.0.1:80"}]}"#, 3);
        view.sync(&cfg, &shared, &keys, NOW, &mut rng);
        assert_eq!(route(&cfg, &mut view, None, None, NOW, &mut rng, &mut s), Route::PassThrough);
        // the local drain endpoint sets the shared flag
        shared.set(&keys.self_drain(), b"1", None);
        bump_gen(&shared, &keys);
        view.sync(&cfg, &shared, &keys, NOW, &mut rng);
        assert!(matches!(route(&cfg, &mut view, None, None, NOW + 1000, &mut rng, &mut s), Route::Reject { reason: Reason::SelfDraining, .. }));
        let j: serde_json::Value = serde_json::from_str(&membership_json(&cfg, &mut view, NOW, &mut rng, true)).unwrap();
        assert_eq!(j["self"]["manual"], true);
    }

    #[test]
    fn membership_json_has_live_weights() {
        let mut w = World::new();
        w.refresh(&format!(r#"{{"instances":[{{"address":"10.0.0.1:80","start_ms":{},"warmup_ms":100000}},{{"address":"10.0.0.2:80"}}]}}"#, NOW - 50_000), NOW);
        let j: serde_json::Value = serde_json::from_str(&membership_json(&w.cfg, &mut w.view, NOW, &mut w.rng, true)).unwrap();
        let inst = &j["services"][0]["instances"];
        assert_eq!(inst[0]["live_weight"], 50);
        assert_eq!(inst[0]["warming"], true);
        assert_eq!(inst[1]["live_weight"], 100);
        assert_eq!(j["services"][0]["hosts"]["warming"], 1);
    }

    #[test]
    fn jittered_interval_in_bounds() {
        let (cfg, _) = cfg();
        let mut rng = Rng::new(3);
        let v: Vec<i64> = (0..1000).map(|_| interval(&cfg, &mut rng)).collect();
        assert!(v.iter().all(|x| (900..=1100).contains(x)));
        assert!(v.iter().min() != v.iter().max());
    }
}
