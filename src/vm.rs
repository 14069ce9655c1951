//! Everything one Envoy worker VM knows and decides, free of proxy-wasm calls. The glue
//! (`host`, compiled into the `.wasm` only) calls four entry points and applies what they return:
//!
//! - [`Vm::on_tick`]: lease, view, due registry requests and probes ([`Dispatch`]);
//! - [`Vm::on_call_reply`]: a registry reply becomes membership ([`crate::poller`]), a probe's
//!   answer health ([`crate::prober`]);
//! - [`Vm::on_request`]: the routing decision for one request ([`Flow`]);
//! - [`Vm::on_response`]: what a response tells about the instance that served it.
//!
//! Per-request facts come through [`Host`], read only when a decision needs them, so a counting
//! fake host measures the host calls of each path natively.

use crate::clock::FastMap as HashMap;

use log::{info, warn};

use crate::admin::{self, AdminCall};
use crate::admission::{self, Admit, WarmUp};
use crate::clock::Rng;
use crate::config::{Config, Mode, RegistryKind, RoutingMode, Settings};
use crate::drain::{is_drain_notice, is_refusal, local_reply, LocalReply, Reason, SERVED_WHILE_DRAINING};
use crate::headers::Headers;
use crate::health::{classify, Counts, Failure, Outcome, UNREACHED_HEADER};
use crate::instance::canonical_addr;
use crate::marks;
use crate::poller::{interval, RefreshOutcome};
use crate::registration::{self, Answer, Me, Online, Step};
use crate::registry::{Call, HttpRequest, HttpResponse};
use crate::router::{route, Route};
use crate::service::{Registry, Service};
use crate::stats::Stats;
use crate::store::{bump_gen, create_if_absent, take_poller_lease, Keys, Shared};
use crate::view::{HostCounts, ServiceView, View};

/// A poller that stops renewing its lease is replaced after this long (ms).
pub const LEASE_TTL_MS: i64 = 2000;
/// The same registry complaint is logged at most once per this period (ms).
const LOG_EVERY_MS: i64 = 10_000;

/// The host as one HTTP exchange sees it. Each call is one crossing of the VM boundary.
pub trait Host: Shared {
    /// Wall-clock ms since the epoch, as the VM keeps it: the glue serves the time it read on the
    /// last tick (at most 100 ms old), so this is no host call on the request path.
    fn now_ms(&self) -> i64;
    /// Wall-clock ms since the epoch read from the host now (a host call): for the admission cap,
    /// whose one-second windows every worker must agree on.
    fn clock_ms(&self) -> i64 {
        self.now_ms()
    }
    /// Every request header, in one host call.
    fn request_headers(&self) -> Headers;
    /// Sets (`Some`, replacing every value of `name`) or removes (`None`) a request header; false
    /// when the host refused.
    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool;
    /// Every response header, in one host call.
    fn response_headers(&self) -> Headers;
    /// Sets (`Some`) or removes (`None`) a response header; false when the host refused.
    fn set_response_header(&self, name: &str, value: Option<&str>) -> bool;
    /// A property as text (`["xds", "cluster_name"]`, `["upstream", "address"]`).
    fn property(&self, path: &[&str]) -> Option<String>;
}

/// What the glue does with a request after [`Vm::on_request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Flow {
    /// Forward it (with whatever headers were set).
    Continue,
    /// Answer it locally.
    Reply(LocalReply),
}

/// What one HTTP exchange remembers between its request and its response.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// The service the request was routed to, if any.
    pub service: Option<usize>,
    /// The addresses written into the routing header, comma-separated.
    pub written: String,
    /// Answered locally: the response is ours, not an upstream's.
    pub local: bool,
    /// This request is the trial of the ejected instance it was routed to first.
    pub trial: bool,
}

/// A request to dispatch on `cluster`; hand the token back with [`Vm::dispatched`].
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub service: usize,
    pub purpose: Purpose,
    pub cluster: String,
    pub request: HttpRequest,
}

/// What a dispatched request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A registry call of the service.
    Registry(Call),
    /// An active health-check probe of this instance.
    Probe(String),
    /// Inbound: a step of the sidecar's own registration (readiness, self-warm, registry call).
    Online(Step),
}

/// Shares a new registration phase (nothing when the phase is the one last shared): logged,
/// written for every VM's membership JSON and for a new poller to resume from, and the
/// generation bumped so every worker re-reads whether the application takes traffic.
fn share_online(shared: &dyn Shared, keys: &Keys, online: &mut Online, addr: &str) {
    if online.shared == Some(online.phase) {
        return;
    }
    online.shared = Some(online.phase);
    info!("{addr}: {}", online.phase.as_str());
    shared.set(&keys.online(), online.encode().as_bytes(), None);
    bump_gen(shared, keys);
}

/// Whether the service's registry can take a registration call now: a Nacos with `api: auto`
/// once a list reply confirmed its API, and one with credentials once it holds a token.
fn registry_ready(services: &[Service], registries: &[Registry], svc: usize) -> bool {
    let Some(reg) = services.get(svc).and_then(|s| registries.get(s.cfg.registry)) else { return false };
    match &reg.cfg.kind {
        RegistryKind::Nacos(n) => {
            (n.api.is_some() || reg.session.api_confirmed) && (n.auth.is_none() || reg.session.token.is_some())
        }
        _ => true,
    }
}

/// The registry request of a registration step, and the registry's cluster to send it on.
fn registry_call(
    services: &[Service],
    registries: &[Registry],
    ib: &crate::config::InboundConfig,
    online: &Online,
    step: Step,
    now_ms: i64,
) -> Option<(String, crate::registry::HttpRequest)> {
    let svc = services.get(ib.service)?;
    let reg = registries.get(svc.cfg.registry)?;
    let (ip, port) = Me::split(&ib.self_address)?;
    let me = Me {
        ip,
        port,
        service: &svc.cfg,
        reg: ib.registration.as_ref()?,
        warmup_ms: ib.warmup_ms,
        ready_ms: online.ready_ms.unwrap_or(now_ms),
    };
    let request = match &reg.cfg.kind {
        RegistryKind::Nacos(n) => registration::nacos::request(n, &reg.session, &me, step),
        RegistryKind::Eureka(e) => registration::eureka::request(e, &me, step, now_ms),
        _ => return None,
    };
    Some((reg.cfg.cluster.clone(), request))
}

/// One worker VM's state: configuration, registries, services, the shared view, the lease.
#[derive(Debug)]
pub struct Vm {
    pub settings: Settings,
    pub registries: Vec<Registry>,
    pub services: Vec<Service>,
    pub view: View,
    pub keys: Keys,
    pub rng: Rng,
    /// This VM's id in the poller lease.
    pub vm_id: u64,
    /// This VM holds the poller lease.
    pub poller: bool,
    pub stats: Stats,
    /// Every routing header of every service, stripped from client requests.
    route_headers: Vec<String>,
    /// Some service routes `original_dst`: this VM also runs on that template's outer hop.
    original_dst_outer: bool,
    /// Calls in flight: token -> (service, purpose).
    pending: HashMap<u32, (usize, Purpose)>,
    /// Per (service, kind): when it was last logged and how many were suppressed since.
    last_log: HashMap<(usize, &'static str), (i64, u64)>,
    /// Consecutive failures this VM saw, per instance address (outlier detection).
    failures: HashMap<String, Counts>,
    scratch: Vec<usize>,
    /// Inbound with `registration`: the sidecar's registration of its instance (acted on by the
    /// poller VM only; a new poller resumes from shared data).
    pub online: Option<Online>,
    /// Inbound with `admission`: the warm-up cap's constants.
    admission: Option<WarmUp>,
}

impl Vm {
    /// A VM for `cfg`; `config_bytes` names its shared-data keys (two configurations in one Envoy
    /// never share state), `vm_id` is its lease id (random: context ids repeat across VMs).
    pub fn new(cfg: Config, config_bytes: &[u8], vm_id: u64, rng: Rng) -> Vm {
        let Config { settings, registries, services } = cfg;
        let mut route_headers: Vec<String> = services.iter().map(|s| s.header.clone()).collect();
        route_headers.sort();
        route_headers.dedup();
        let original_dst_outer = services.iter().any(|s| s.routing == RoutingMode::OriginalDst);
        let services = services
            .into_iter()
            .map(|sc| Service {
                prober: Default::default(),
                view: ServiceView::new(&sc, settings.weight_refresh_ms),
                poll: Default::default(),
                stats: Default::default(),
                cfg: sc,
            })
            .collect();
        Vm {
            registries: registries.into_iter().map(|cfg| Registry { cfg, session: Default::default() }).collect(),
            services,
            view: View::default(),
            keys: Keys::new(config_bytes),
            rng,
            vm_id,
            poller: false,
            stats: Stats::default(),
            route_headers,
            original_dst_outer,
            pending: HashMap::default(),
            last_log: HashMap::default(),
            failures: HashMap::default(),
            scratch: Vec::with_capacity(17),
            online: settings.inbound.as_ref().and_then(|i| i.registration.as_ref()).map(|_| Online::default()),
            admission: settings.inbound.as_ref().and_then(|i| {
                let warmup_s = u32::try_from(i.warmup_ms / 1000).unwrap_or(u32::MAX);
                i.admission.map(|a| WarmUp::new(a.max_rps, a.cold_factor, warmup_s))
            }),
            settings,
        }
    }

    /// Creates the shared keys this configuration writes with CAS (call once at start).
    pub fn on_start(&mut self, shared: &dyn Shared) {
        self.keys.create_all(shared);
        if self.online.is_some() {
            self.view.self_drain.sidecar_registers = true;
        }
        if self.admission.is_some() {
            create_if_absent(shared, &self.keys.admission(), b"");
        }
    }

    /// Re-reads shared data if anything was published or marked since the last call: one small
    /// read when nothing changed.
    pub fn sync(&mut self, shared: &dyn Shared, now_ms: i64) {
        if !self.view.stale(shared, &self.keys, now_ms) {
            return;
        }
        let mut loaded = false;
        for s in &mut self.services {
            if s.view.load(shared, &self.keys.service(&s.cfg.name)) {
                self.view.decodes += 1;
                loaded = true;
            }
            loaded |= s.view.changed();
            s.view.rebuild(&self.view.marks, now_ms, &mut self.rng);
        }
        if loaded && !self.failures.is_empty() {
            // an instance that left with a failure counted must not keep every response read in
            // full (outlier detection reads the served address while any count is open)
            let services = &self.services;
            self.failures
                .retain(|addr, _| services.iter().any(|s| crate::instance::find(&s.view.snap.members, addr).is_some()));
        }
        if let Some(ib) = &self.settings.inbound {
            let (flag, _) = shared.get(&self.keys.self_drain());
            let manual = flag.as_deref() == Some(b"1");
            if let Some(s) = self.services.get(ib.service) {
                self.view.self_drain.update(&s.view.snap.members, &ib.self_address, manual, now_ms);
            }
            if self.online.is_some() {
                self.view.not_ready = registration::not_ready(shared.get(&self.keys.online()).0.as_deref());
            }
        }
    }

    // ---- refresh path ----------------------------------------------------------------------

    /// The periodic work: take or renew the poller lease, sync the view, and (as the poller) the
    /// registry requests that are due.
    pub fn on_tick(&mut self, shared: &dyn Shared, now_ms: i64) -> Vec<Dispatch> {
        let polls = take_poller_lease(shared, &self.keys, self.vm_id, now_ms, LEASE_TTL_MS);
        if polls != self.poller {
            self.poller = polls;
            for s in &mut self.services {
                s.poll.reset();
                s.prober.reset();
            }
            self.pending.clear();
            if polls {
                info!("this VM now polls the registry");
                if self.online.is_some() {
                    self.online = Some(Online::resume(shared.get(&self.keys.online()).0.as_deref()));
                }
            }
        }
        self.sync(shared, now_ms);
        if let Some(o) = self.online.as_mut() {
            self.stats.online.add(std::mem::take(&mut o.stats));
        }
        self.due(shared, now_ms)
    }

    /// The registry requests and health-check probes due at `now_ms` (none unless this VM is the
    /// poller).
    pub fn due(&mut self, shared: &dyn Shared, now_ms: i64) -> Vec<Dispatch> {
        if !self.poller {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, s) in self.services.iter_mut().enumerate() {
            let Some(reg) = self.registries.get(s.cfg.registry) else { continue };
            if let Some((call, request)) = s.poll.due(&reg.cfg, &reg.session, &s.cfg, now_ms) {
                out.push(Dispatch {
                    service: i,
                    purpose: Purpose::Registry(call),
                    cluster: reg.cfg.cluster.clone(),
                    request,
                });
            }
            let (Some(hc), Some(cluster)) = (&s.cfg.health_check, s.cfg.match_clusters.first()) else { continue };
            let (probes, new) = s.prober.due(hc, &s.cfg, &s.view.snap.members, now_ms, &mut self.rng);
            for addr in new {
                if let Some(m) = crate::instance::find(&s.view.snap.members, &addr) {
                    marks::set_health(shared, &self.keys, m, false);
                }
            }
            for p in probes {
                out.push(Dispatch {
                    service: i,
                    purpose: Purpose::Probe(p.addr),
                    cluster: cluster.clone(),
                    request: p.request,
                });
            }
        }
        self.online_due(shared, now_ms, &mut out);
        out
    }

    /// The registration steps due (poller VM, inbound with `registration`).
    fn online_due(&mut self, shared: &dyn Shared, now_ms: i64, out: &mut Vec<Dispatch>) {
        let Some(ib) = &self.settings.inbound else { return };
        let (Some(reg), Some(online)) = (&ib.registration, self.online.as_mut()) else { return };
        let draining = self.view.self_drain.draining();
        let steps = online.due(ib, reg, draining, now_ms);
        share_online(shared, &self.keys, online, &ib.self_address);
        for step in steps {
            let request = match step {
                Step::Readiness | Step::Warm(_) => registration::local_request(step, ib, reg),
                _ => None,
            };
            let d = match request {
                Some(request) => Some((reg.local_cluster.clone(), request)),
                None if !registry_ready(&self.services, &self.registries, ib.service) => {
                    online.defer(now_ms);
                    let why = "the registry has not answered a list request yet";
                    if let Some(line) = online.tell_unregistered(why, &ib.self_address) {
                        warn!("{line}");
                    }
                    continue;
                }
                None => registry_call(&self.services, &self.registries, ib, online, step, now_ms),
            };
            match d {
                Some((cluster, request)) => {
                    out.push(Dispatch { service: ib.service, purpose: Purpose::Online(step), cluster, request })
                }
                // nothing to send (cannot happen with a validated config): the step fails
                None => {
                    online.on_answer(reg, step, Answer::Failed("no request".into()), draining, now_ms);
                }
            }
        }
    }

    /// An answer to a registration step: the state machine moves on; a new phase is logged and
    /// shared (every VM's membership JSON shows it; a new poller resumes from it).
    fn on_online_reply(&mut self, shared: &dyn Shared, step: Step, resp: &HttpResponse<'_>, now_ms: i64) {
        let Some(ib) = &self.settings.inbound else { return };
        let (Some(reg), Some(online)) = (&ib.registration, self.online.as_mut()) else { return };
        let answer = match step {
            Step::Readiness | Step::Warm(_) => registration::local_answer(step, reg, resp.status),
            _ => match self.services.get(ib.service).and_then(|s| self.registries.get(s.cfg.registry)) {
                Some(r) if matches!(r.cfg.kind, RegistryKind::Eureka(_)) => registration::eureka::answer(resp),
                _ => registration::nacos::answer(resp),
            },
        };
        if let (Answer::Failed(why), Step::Register) = (&answer, step) {
            if let Some(line) = online.tell_unregistered(why, &ib.self_address) {
                warn!("{line}");
            }
        }
        let draining = self.view.self_drain.draining();
        online.on_answer(reg, step, answer, draining, now_ms);
        if matches!(step, Step::Warm(_)) {
            // self-warm progress, for the membership JSON
            shared.set(&self.keys.online(), online.encode().as_bytes(), None);
        }
        share_online(shared, &self.keys, online, &ib.self_address);
    }

    /// The host accepted `d` under `token`.
    pub fn dispatched(&mut self, token: u32, d: &Dispatch) {
        self.pending.insert(token, (d.service, d.purpose.clone()));
    }

    /// The host refused to dispatch `d` (`why`, for the log): retried after one interval.
    pub fn dispatch_failed(&mut self, d: &Dispatch, why: &str, now_ms: i64) {
        self.stats.dispatch_failed += 1;
        let retry = interval(&self.settings, &mut self.rng);
        let Some(s) = self.services.get_mut(d.service) else { return };
        match &d.purpose {
            Purpose::Registry(_) => {
                s.poll.dispatch_failed(now_ms, retry);
                s.stats.refresh_failed += 1;
            }
            Purpose::Probe(addr) => s.prober.dispatch_failed(addr),
            Purpose::Online(step) => {
                let draining = self.view.self_drain.draining();
                if let (Some(ib), Some(o)) = (&self.settings.inbound, self.online.as_mut()) {
                    if let Some(reg) = &ib.registration {
                        o.on_answer(reg, *step, Answer::Failed(format!("cannot dispatch: {why}")), draining, now_ms);
                    }
                }
            }
        }
        let (name, cluster) = (s.cfg.name.clone(), d.cluster.clone());
        self.log_limited(d.service, "dispatch", now_ms, || {
            format!("cannot call cluster '{cluster}' for service '{name}': {why} (is the cluster defined?)")
        });
    }

    /// The largest body the reply to `token` may have (the glue fetches no more; probes: none).
    pub fn max_body(&self, token: u32) -> usize {
        match self.pending.get(&token) {
            Some((svc, Purpose::Registry(_))) => self
                .services
                .get(*svc)
                .and_then(|s| self.registries.get(s.cfg.registry))
                .map_or(0, |r| r.cfg.kind.endpoint().max_body_bytes),
            Some((_, Purpose::Online(_))) => 64 * 1024,
            _ => 0,
        }
    }

    /// The reply to a dispatched call arrived for `token`. A registry reply is parsed, checked by
    /// the keep-last-good rules and published: returns the service and what happened. A probe's
    /// answer decides its instance's health (returns `None`, like an unknown token).
    pub fn on_call_reply(
        &mut self,
        shared: &dyn Shared,
        token: u32,
        resp: &HttpResponse<'_>,
        now_ms: i64,
    ) -> Option<(usize, RefreshOutcome)> {
        let (svc, call) = match self.pending.remove(&token)? {
            (svc, Purpose::Registry(call)) => (svc, call),
            (svc, Purpose::Probe(addr)) => {
                self.on_probe_reply(shared, svc, &addr, resp.status, now_ms);
                return None;
            }
            (_, Purpose::Online(step)) => {
                self.on_online_reply(shared, step, resp, now_ms);
                return None;
            }
        };
        self.sync(shared, now_ms);
        let interval_ms = interval(&self.settings, &mut self.rng);
        let s = self.services.get_mut(svc)?;
        let reg = self.registries.get_mut(s.cfg.registry)?;
        let (outcome, publish) =
            s.poll.on_reply(&reg.cfg, &mut reg.session, &s.cfg, &s.view.snap, call, resp, now_ms, interval_ms);
        if let Some(snap) = publish {
            let key = self.keys.service(&s.cfg.name);
            let bytes = snap.encode();
            shared.set(&key, &bytes, None);
            let services = &self.services;
            marks::prune(shared, &self.keys, |addr| {
                services.iter().enumerate().find_map(|(k, o)| {
                    let members = if k == svc { &snap.members } else { &o.view.snap.members };
                    crate::instance::find(members, addr)
                })
            });
            bump_gen(shared, &self.keys);
            // this VM routes by the snapshot it built, not by a decode of its own encoding: the
            // key is read back once for its CAS token, which stands for these bytes only
            let (stored, cas) = shared.get(&key);
            if let (Some(s), true) = (self.services.get_mut(svc), stored.as_deref() == Some(&bytes[..])) {
                s.view.install(snap, cas);
            }
            self.sync(shared, now_ms);
        }
        self.account(svc, &outcome, now_ms);
        Some((svc, outcome))
    }

    /// A probe of `addr` answered `status` (`None`: no answer).
    fn on_probe_reply(&mut self, shared: &dyn Shared, svc: usize, addr: &str, status: Option<u16>, now_ms: i64) {
        let Some(s) = self.services.get_mut(svc) else { return };
        let Some(hc) = &s.cfg.health_check else { return };
        if hc.passes(status) {
            s.stats.health_check_success += 1;
        } else {
            s.stats.health_check_failure += 1;
        }
        let Some(healthy) = s.prober.on_reply(hc, addr, status) else { return };
        let Some(m) = crate::instance::find(&s.view.snap.members, addr) else { return };
        if marks::set_health(shared, &self.keys, m, healthy) {
            let verdict = if healthy { "passes: it gets traffic" } else { "fails: no new requests go to it" };
            info!("service '{}': the health check of {addr} {verdict}", s.cfg.name);
            self.sync(shared, now_ms);
        }
    }

    /// Stats and logs for a refresh outcome.
    fn account(&mut self, svc: usize, outcome: &RefreshOutcome, now_ms: i64) {
        let Some(s) = self.services.get_mut(svc) else { return };
        let name = s.cfg.name.clone();
        let st = &mut s.stats;
        match outcome {
            RefreshOutcome::Published { version, hosts, skipped, protected, unroutable } => {
                st.refresh_ok += 1;
                st.instances_skipped += u64::from(*skipped);
                st.protect_threshold_hit += u64::from(*protected);
                let skipped = if *skipped > 0 { format!(", {skipped} malformed skipped") } else { String::new() };
                info!("service '{name}' membership v{version}: {hosts} instances{skipped}");
                self.log_unroutable(svc, &name, unroutable, now_ms);
            }
            RefreshOutcome::Same { skipped, unroutable } => {
                st.refresh_ok += 1;
                st.instances_skipped += u64::from(*skipped);
                self.log_unroutable(svc, &name, unroutable, now_ms);
            }
            RefreshOutcome::Unchanged => st.refresh_unchanged += 1,
            RefreshOutcome::LoggedIn => info!("logged in to the registry of service '{name}'"),
            RefreshOutcome::Again(why) => info!("service '{name}': {why}"),
            RefreshOutcome::Kept(hold) => {
                st.refresh_kept += 1;
                let kind = hold.kind();
                self.log_limited(svc, "kept", now_ms, || {
                    format!("service '{name}': registry list held back ({kind}), keeping the last good membership")
                });
            }
            RefreshOutcome::Failed(e) => {
                st.refresh_failed += 1;
                let (kind, text) = (e.kind(), e.to_string());
                self.log_limited(svc, kind, now_ms, || {
                    format!("service '{name}': refresh failed, keeping the last good membership: {text}")
                });
            }
        }
    }

    /// Names the instances refused for a host-name address (Envoy routes to IP literals only).
    fn log_unroutable(&mut self, svc: usize, name: &str, unroutable: &[String], now_ms: i64) {
        if unroutable.is_empty() {
            return;
        }
        let shown = unroutable.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let n = unroutable.len();
        self.log_limited(svc, "unroutable", now_ms, || {
            format!("service '{name}': {n} instance(s) refused, their address is a host name Envoy cannot route to (register the IP): {shown}")
        });
    }

    fn log_limited(&mut self, svc: usize, kind: &'static str, now_ms: i64, msg: impl FnOnce() -> String) {
        let entry = self.last_log.entry((svc, kind)).or_insert((i64::MIN, 0));
        if now_ms.saturating_sub(entry.0) >= LOG_EVERY_MS {
            let extra = if entry.1 > 0 { format!(" ({} similar messages suppressed)", entry.1) } else { String::new() };
            *entry = (now_ms, 0);
            warn!("{}{}", msg(), extra);
        } else {
            entry.1 += 1;
        }
    }

    /// Host counts and snapshot version of every service, for the gauges.
    pub fn gauges(&self, now_ms: i64) -> impl Iterator<Item = (usize, HostCounts, u64)> + '_ {
        self.services
            .iter()
            .enumerate()
            .map(move |(i, s)| (i, crate::view::host_counts(&s.view.members, now_ms), s.view.snap.version))
    }

    // ---- request path ----------------------------------------------------------------------

    /// Decides what happens to a request: an admin call, a local 503, or a forward with the
    /// routing header set. Client-sent routing headers are always removed (outbound).
    pub fn on_request(&mut self, h: &dyn Host, ex: &mut Exchange) -> Flow {
        let now = h.now_ms();
        let headers = h.request_headers();
        if let Some(path) = headers.get(":path") {
            if admin::is_admin_path(path, &self.settings.admin_prefix) {
                ex.local = true;
                return self.admin(h, &headers, path, now);
            }
        }
        self.sync(h, now);
        if self.settings.mode == Mode::Inbound {
            let service = self.settings.inbound.as_ref().map(|i| i.service);
            if self.view.self_drain.rejecting(now, self.settings.drain.notify_grace_ms) {
                return self.reject(ex, service, Reason::SelfDraining);
            }
            if self.view.not_ready {
                return self.reject(ex, service, Reason::NotReady);
            }
            if let Some(rule) = &self.admission {
                match admission::check(h, &self.keys.admission(), rule, h.clock_ms()) {
                    Admit::Yes => self.stats.admission_admitted += 1,
                    Admit::No => return self.reject(ex, service, Reason::FlowLimited),
                    Admit::Unsure => self.stats.admission_unsure += 1,
                }
            }
            return Flow::Continue;
        }
        // a client never chooses the upstream: drop whatever it sent in a routing header
        for name in &self.route_headers {
            if headers.contains(name) {
                h.set_request_header(name, None);
                self.stats.client_header_stripped += 1;
            }
        }
        let Some(svc) = h.property(&["xds", "cluster_name"]).and_then(|c| self.service_for_cluster(&c)) else {
            return Flow::Continue;
        };
        let pin = self.settings.drain.pin_header.as_deref().and_then(|p| headers.get(p));
        let trial = self.take_trial(h, svc, now);
        let Some(s) = self.services.get_mut(svc) else { return Flow::Continue };
        match route(svc, &s.cfg, &mut s.view, pin, trial, now, &mut self.rng, &mut self.scratch) {
            Route::PassThrough => Flow::Continue,
            Route::Forward { service, value } => {
                if !h.set_request_header(&s.cfg.header, Some(&value)) {
                    warn!("cannot set routing header '{}' for service '{}'", s.cfg.header, s.cfg.name);
                }
                s.stats.picks += 1;
                ex.service = Some(service);
                let first = value.split(',').next();
                ex.trial = trial.is_some_and(|t| s.view.members.get(t).is_some_and(|m| first == Some(m.addr.as_str())));
                ex.written = value;
                Flow::Continue
            }
            Route::Reject { service, reason } => self.reject(ex, service, reason),
        }
    }

    /// An ejected member of `svc` whose ejection time is over, if this VM takes its trial now
    /// (one request, for every VM; see [`crate::health`]).
    fn take_trial(&mut self, h: &dyn Host, svc: usize, now: i64) -> Option<usize> {
        let s = self.services.get_mut(svc)?;
        let i = s.view.trial_due.pop()?;
        let addr = s.view.members.get(i)?.addr.clone();
        if !marks::claim_trial(h, &self.keys, &addr, now) {
            return None;
        }
        s.stats.ejection_trials += 1;
        info!("service '{}': {addr} was ejected; one trial request goes to it", s.cfg.name);
        Some(i)
    }

    fn service_for_cluster(&self, cluster: &str) -> Option<usize> {
        self.services.iter().position(|s| s.cfg.match_clusters.iter().any(|c| c == cluster))
    }

    /// Inbound: the registration's shared state and the admission bucket, as the membership
    /// document's `self.online` object.
    fn online_json(&self, shared: &dyn Shared) -> Option<String> {
        let ib = self.settings.inbound.as_ref()?;
        let mut parts = Vec::new();
        if ib.registration.is_some() {
            let status = registration::status_json(shared.get(&self.keys.online()).0.as_deref());
            parts.push(format!("\"registration\":{}", status.as_deref().unwrap_or("null")));
        }
        if let (Some(rule), Some(a)) = (&self.admission, &ib.admission) {
            let b =
                shared.get(&self.keys.admission()).0.and_then(|v| admission::Bucket::decode(&v)).unwrap_or_default();
            parts.push(format!(
                "\"admission\":{{\"max_rps\":{},\"cold_factor\":{},\"warmup_ms\":{},\"allowed_rps\":{},\"second\":{},\"admitted\":{}}}",
                a.max_rps,
                a.cold_factor,
                ib.warmup_ms,
                // an untouched bucket fills to the cold end on its first request
                if b.last_filled_ms == 0 { rule.count / f64::from(rule.cold_factor) } else { rule.allowed_rps(b.tokens) }
                    as u64,
                b.second,
                b.passed
            ));
        }
        (!parts.is_empty()).then(|| format!("{{{}}}", parts.join(",")))
    }

    fn reject(&mut self, ex: &mut Exchange, service: Option<usize>, reason: Reason) -> Flow {
        if let Some(s) = service.and_then(|i| self.services.get_mut(i)) {
            s.stats.local_503(reason);
        }
        ex.local = true;
        Flow::Reply(local_reply(reason, &self.settings.drain))
    }

    fn admin(&mut self, h: &dyn Host, headers: &Headers, path: &str, now: i64) -> Flow {
        let forwarded = admin::FORWARDING_HEADERS.iter().any(|n| headers.contains(n));
        let text = |status: u32, body: &str| LocalReply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
        };
        let json = |body: String| LocalReply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        };
        if !admin::allowed(h.property(&["source", "address"]).as_deref(), forwarded) {
            self.stats.admin_denied += 1;
            return Flow::Reply(text(403, admin::FORBIDDEN));
        }
        let method = headers.get(":method").unwrap_or_default();
        match admin::call(&self.settings, method, path) {
            AdminCall::Membership => {
                self.sync(h, now);
                let online = self.online_json(h);
                Flow::Reply(json(admin::membership_json(
                    &self.settings,
                    &mut self.services,
                    &self.view,
                    now,
                    &mut self.rng,
                    self.poller,
                    online.as_deref(),
                )))
            }
            AdminCall::Drain(on) => {
                h.set(&self.keys.self_drain(), if on { b"1" } else { b"0" }, None);
                bump_gen(h, &self.keys);
                info!("local {} requested", if on { "drain" } else { "undrain" });
                Flow::Reply(json(format!("{{\"draining\":{on}}}\n")))
            }
            AdminCall::Unknown => Flow::Reply(text(404, admin::unknown_endpoint(self.settings.mode))),
        }
    }

    // ---- response path ---------------------------------------------------------------------

    /// Learns from a response: inbound, tags responses served while draining; outbound, judges
    /// the instance that served it (outlier detection) and marks one that announced its drain.
    pub fn on_response(&mut self, h: &dyn Host, ex: &Exchange) {
        if ex.local {
            return;
        }
        match self.settings.mode {
            Mode::Inbound => {
                // requests served while draining (in flight, or within the notify grace) tell the
                // caller with the drain header; its value is not a refusal reason, so a caller's
                // retry policy (which retries refusals only) never resends work that was done
                if self.view.self_drain.draining()
                    && !h.set_response_header(&self.settings.drain.header, Some(SERVED_WHILE_DRAINING))
                {
                    warn!("cannot set the drain header on a response");
                }
            }
            Mode::Outbound => {
                let header = &self.settings.drain.header;
                let Some(svc) = ex.service else {
                    // the outer hop of the original_dst template: the instance's refusal its
                    // route retried on is not about this proxy (a caller running lossless would
                    // mark this proxy); the inner hop's own 503s keep their reason. Other
                    // unrouted responses are not read at all.
                    if self.original_dst_outer
                        && h.response_headers().get(header).is_some_and(is_refusal)
                        && !h.set_response_header(header, None)
                    {
                        warn!("cannot remove the drain header from a response");
                    }
                    return;
                };
                let headers = h.response_headers();
                // a value that is not text is no notice, but it is removed all the same
                let (present, value) = (headers.contains(header), headers.get(header));
                let notice = value.is_some_and(is_drain_notice);
                // a refusal (draining, or over a warming instance's admission cap) did no work:
                // neither a success nor a failure of the instance
                self.judge(h, &headers, ex, svc, notice || value.is_some_and(is_refusal));
                if notice && self.settings.drain.notify {
                    if let Some(addr) = h.property(&["upstream", "address"]) {
                        self.mark_draining(h, &addr);
                    }
                }
                // the notice is about the upstream and has been acted on: it does not travel
                // further, except a refusal that the original_dst template's outer route retries
                // (that hop removes it after its retries)
                let original_dst = self.services.get(svc).is_some_and(|s| s.cfg.routing == RoutingMode::OriginalDst);
                let retried_outside = original_dst && value.is_some_and(is_refusal);
                if present && !retried_outside && !h.set_response_header(&self.settings.drain.header, None) {
                    warn!("cannot remove the drain header from a response");
                }
            }
        }
    }

    /// Outlier detection for one routed response: the attempts Envoy left for another count as
    /// connection failures; the last attempt's outcome counts for or against its instance.
    fn judge(&mut self, h: &dyn Host, headers: &Headers, ex: &Exchange, svc: usize, drain: bool) {
        let Some(sc) = self.services.get(svc).map(|s| &s.cfg) else { return };
        let (enabled, original_dst) = (sc.outlier_detection.enabled, sc.routing == RoutingMode::OriginalDst);
        let attempts = headers.get("x-envoy-attempt-count").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(1);
        let status = headers.get(":status").and_then(|v| v.parse::<u16>().ok());
        let outcome = classify(status, drain, || h.property(&["response", "code_details"]));
        if outcome == Outcome::Failed(Failure::LocalOrigin) {
            // nothing reached the instance: an Envoy in front may resend it (original_dst template)
            if !h.set_response_header(UNREACHED_HEADER, Some("connection_failure")) {
                warn!("cannot set {UNREACHED_HEADER} on a response");
            }
        } else if original_dst && headers.contains(UNREACHED_HEADER) {
            // only lossless may say so: an instance's own header could get work done twice
            h.set_response_header(UNREACHED_HEADER, None);
        }
        if !enabled {
            return;
        }
        // the served instance is needed only when something is to be learnt about it
        let learn = attempts > 1 || ex.trial || matches!(outcome, Outcome::Failed(_)) || !self.failures.is_empty();
        let Some(last) = learn.then(|| h.property(&["upstream", "address"])).flatten() else { return };
        let now = h.now_ms();
        let written: Vec<&str> = ex.written.split(',').collect();
        for addr in marks::failed_attempts(&written, attempts, &last) {
            // a trial that failed and was retried elsewhere is a failed trial all the same
            let failed_trial = ex.trial && written.first() == Some(addr);
            self.failed(h, svc, addr, Failure::LocalOrigin, failed_trial, now);
        }
        let trial = ex.trial && written.first() == Some(&last.as_str()) && attempts == 1;
        match outcome {
            Outcome::Success => {
                self.failures.remove(&last);
                if trial && marks::readmit(h, &self.keys, &last) {
                    if let Some(s) = self.services.get_mut(svc) {
                        s.stats.readmitted += 1;
                        info!("service '{}': {last} answered its trial request; readmitted", s.cfg.name);
                    }
                    self.sync(h, now);
                }
            }
            Outcome::Failed(kind) => self.failed(h, svc, &last, kind, trial, now),
            Outcome::Neutral => {}
        }
    }

    /// Counts a failure of `addr`; ejects it for every VM once the consecutive count reaches the
    /// threshold (at once for a failed trial), unless too many instances of `svc` are out.
    fn failed(&mut self, h: &dyn Host, svc: usize, addr: &str, kind: Failure, trial: bool, now: i64) {
        let Some(s) = self.services.get(svc) else { return };
        let od = s.cfg.outlier_detection;
        let Some(member) = crate::instance::find(&s.view.snap.members, addr) else { return };
        let counts = self.failures.entry(addr.to_string()).or_default();
        if !(counts.fail(kind, &od) || trial) {
            return;
        }
        self.failures.remove(addr);
        let members = &s.view.snap.members;
        let may_eject =
            |m: &marks::Marks| od.may_eject(members.len(), members.iter().filter(|x| m.is_ejected(x)).count());
        let ejected = marks::eject(h, &self.keys, member, now, &od, trial, may_eject);
        let Some(s) = self.services.get_mut(svc) else { return };
        if ejected {
            s.stats.ejections_enforced += 1;
            let why = match kind {
                Failure::LocalOrigin => "connection failure",
                Failure::Gateway => "gateway failures",
            };
            warn!(
                "service '{}': {addr} ejected ({why}{}); no new requests go to it",
                s.cfg.name,
                if trial { ", trial failed" } else { "" }
            );
            self.sync(h, now);
        } else if !self.view.marks.ejected.contains_key(addr) {
            s.stats.ejections_overflow += 1;
        }
    }

    /// An upstream announced its drain: mark it for every VM (members only: the drain header of
    /// a stranger changes nothing).
    fn mark_draining(&mut self, h: &dyn Host, addr: &str) {
        let Some(addr) = canonical_addr(addr) else { return };
        let Some(start) =
            self.services.iter().find_map(|s| crate::instance::find(&s.view.snap.members, &addr).map(|m| m.start_ms))
        else {
            return;
        };
        if marks::mark_draining(h, &self.keys, &addr, start) {
            self.stats.notify_marks += 1;
            info!("upstream {addr} announced it is draining; no new requests go to it");
            self.sync(h, h.now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::instance::State;
    use crate::membership::Snapshot;
    use crate::registry::RegistryError;
    use crate::store::FakeShared;
    use std::cell::{Cell, RefCell};

    const NOW: i64 = 1_800_000_000_000;
    const CFG: &[u8] = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
        "services":[{"name":"demo","registry":"s","match_clusters":["demo"]}],"drain":{"pin_header":"x-pin"}}"#;

    /// A host for one exchange, counting every call that would cross the VM boundary.
    struct FakeHost<'a> {
        shared: &'a FakeShared,
        now: i64,
        req: RefCell<Vec<(String, String)>>,
        resp: RefCell<Vec<(String, String)>>,
        props: Vec<(&'static str, String)>,
        calls: Cell<u64>,
    }

    impl FakeHost<'_> {
        fn count(&self) {
            self.calls.set(self.calls.get() + 1);
        }
        /// Host calls so far, shared-data calls included.
        fn total(&self) -> u64 {
            self.calls.get() + self.shared.calls.get()
        }
    }

    impl Shared for FakeHost<'_> {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.shared.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            self.shared.set(key, value, cas)
        }
    }

    impl Host for FakeHost<'_> {
        fn now_ms(&self) -> i64 {
            // the glue answers from the tick's clock: no host call
            self.now
        }
        fn request_headers(&self) -> Headers {
            self.count();
            Headers::from_pairs(&self.req.borrow())
        }
        fn set_request_header(&self, name: &str, value: Option<&str>) -> bool {
            self.count();
            set_header(&self.req, name, value)
        }
        fn response_headers(&self) -> Headers {
            self.count();
            Headers::from_pairs(&self.resp.borrow())
        }
        fn set_response_header(&self, name: &str, value: Option<&str>) -> bool {
            self.count();
            set_header(&self.resp, name, value)
        }
        fn property(&self, path: &[&str]) -> Option<String> {
            self.count();
            let key = path.join(".");
            self.props.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        }
    }

    fn set_header(map: &RefCell<Vec<(String, String)>>, name: &str, value: Option<&str>) -> bool {
        let mut m = map.borrow_mut();
        m.retain(|(k, _)| k != name);
        if let Some(v) = value {
            m.push((name.into(), v.into()));
        }
        true
    }

    struct World {
        vm: Vm,
        shared: FakeShared,
    }

    fn host<'a>(shared: &'a FakeShared, now: i64, req: &[(&str, &str)], cluster: Option<&str>) -> FakeHost<'a> {
        let mut props = vec![("source.address", "127.0.0.1:40000".to_string())];
        if let Some(c) = cluster {
            props.push(("xds.cluster_name", c.to_string()));
        }
        let req = RefCell::new(req.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        FakeHost { shared, now, req, resp: RefCell::default(), props, calls: Cell::new(0) }
    }

    impl World {
        fn new(cfg: &[u8]) -> Self {
            let mut vm = Vm::new(config::parse(cfg).unwrap(), cfg, 1, Rng::new(1));
            let shared = FakeShared::default();
            vm.on_start(&shared);
            World { vm, shared }
        }
        fn refresh(&mut self, body: &str, now: i64) -> RefreshOutcome {
            let due: Vec<Dispatch> = self
                .vm
                .on_tick(&self.shared, now)
                .into_iter()
                .filter(|d| matches!(d.purpose, Purpose::Registry(_)))
                .collect();
            assert_eq!(due.len(), 1, "one request per interval");
            assert_eq!(due[0].request.header(":path"), Some("/demo"));
            self.vm.dispatched(7, &due[0]);
            let h = [(":status".to_string(), "200".to_string())];
            let resp = HttpResponse { status: Some(200), headers: &h, body: body.as_bytes(), body_size: body.len() };
            self.vm.on_call_reply(&self.shared, 7, &resp, now).unwrap().1
        }
        /// Routes a request to `cluster`; the routing header's value, or the local reply.
        fn route(&mut self, cluster: &str, pin: Option<&str>, now: i64) -> Result<String, LocalReply> {
            let mut req = vec![(":path", "/x")];
            if let Some(p) = pin {
                req.push(("x-pin", p));
            }
            let h = host(&self.shared, now, &req, Some(cluster));
            let mut ex = Exchange::default();
            match self.vm.on_request(&h, &mut ex) {
                Flow::Reply(r) => Err(r),
                Flow::Continue => Ok(h
                    .req
                    .borrow()
                    .iter()
                    .find(|(k, _)| k == "x-lossless-upstream")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()),
            }
        }
        fn members(&self) -> &[crate::instance::Instance] {
            &self.vm.services[0].view.members
        }
    }

    fn reason(r: &LocalReply) -> &str {
        r.headers.iter().find(|(k, _)| k == "x-lossless-drain").map(|(_, v)| v.as_str()).unwrap_or("")
    }

    const THREE: &str =
        r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#;

    #[test]
    fn poll_publish_route() {
        let mut w = World::new(CFG);
        assert_eq!(w.route("demo", None, NOW).unwrap(), "", "no membership yet: override_host fails open (no header)");
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { version: 1, hosts: 3, .. }));
        // not due again before the interval (1 s +- 10 %)
        assert!(w.vm.on_tick(&w.shared, NOW + 500).is_empty());
        let value = w.route("demo", None, NOW).unwrap();
        assert_eq!(value.split(',').count(), 3, "primary + 2 fallbacks: {value}");
        assert_eq!(w.route("other", None, NOW).unwrap(), "", "another cluster is not routed");
        // the same list again publishes nothing
        assert!(matches!(w.refresh(THREE, NOW + 2000), RefreshOutcome::Same { .. }));
        // metadata is not part of the snapshot: a list with metadata is the same list
        let with_md = THREE.replace(r#""10.0.0.1:80""#, r#""10.0.0.1:80","metadata":{"zone":"a"}"#);
        assert!(matches!(w.refresh(&with_md, NOW + 4000), RefreshOutcome::Same { .. }));
        // a garbage reply keeps the membership
        assert!(matches!(w.refresh("<html>", NOW + 6000), RefreshOutcome::Failed(RegistryError::Parse(_))));
        assert_eq!(w.members().len(), 3);
        assert_eq!(w.vm.view.decodes, 0, "the publishing VM routes by the snapshot it built: no decode");
        assert_eq!(w.vm.services[0].stats.refresh_ok, 3);
        assert_eq!(w.vm.services[0].stats.refresh_failed, 1);
    }

    /// The poller routes by the snapshot it publishes without decoding it; another VM decodes
    /// it once and holds the same membership.
    #[test]
    fn publishing_vm_installs_its_own_snapshot() {
        let mut w = World::new(CFG);
        assert!(matches!(w.refresh(THREE, NOW), RefreshOutcome::Published { version: 1, hosts: 3, .. }));
        let two = r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.3:80","weight":7}]}"#;
        assert!(matches!(w.refresh(two, NOW + 2000), RefreshOutcome::Published { version: 2, hosts: 2, .. }));
        assert_eq!(w.vm.view.decodes, 0, "the publishing VM does not decode its own snapshot");
        let addrs: Vec<&str> = w.members().iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.3:80"], "the new membership is routed by");
        for k in 0..20 {
            let value = w.route("demo", None, NOW + 2000 + k).unwrap();
            assert!(!value.contains("10.0.0.2:80"), "a removed member is not routed to: {value}");
        }
        // what the poller holds is what every other VM decodes
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW + 2000);
        assert_eq!(other.view.decodes, 1);
        assert_eq!(other.services[0].view.snap, w.vm.services[0].view.snap);
        assert_eq!(other.services[0].view.members, w.vm.services[0].view.members);
        // a snapshot written by another VM is decoded as before
        let mut s3 = w.vm.services[0].view.snap.clone();
        s3.version += 1;
        s3.members.truncate(1);
        w.shared.set(&w.vm.keys.service("demo"), &s3.encode(), None);
        bump_gen(&w.shared, &w.vm.keys);
        w.vm.sync(&w.shared, NOW + 3000);
        assert_eq!(w.vm.view.decodes, 1);
        assert_eq!(w.members().len(), 1);
    }

    #[test]
    fn client_routing_headers_are_stripped() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        let h =
            host(&w.shared, NOW, &[(":path", "/x"), ("x-lossless-upstream", "169.254.169.254:80")], Some("elsewhere"));
        assert_eq!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Continue);
        assert!(
            h.req.borrow().iter().all(|(k, _)| k != "x-lossless-upstream"),
            "stripped even for a cluster that is not ours"
        );
        assert_eq!(w.vm.stats.client_header_stripped, 1);
        let h = host(&w.shared, NOW, &[(":path", "/x"), ("x-lossless-upstream", "169.254.169.254:80")], Some("demo"));
        w.vm.on_request(&h, &mut Exchange::default());
        let v = h.req.borrow().iter().find(|(k, _)| k == "x-lossless-upstream").map(|(_, v)| v.clone()).unwrap();
        assert!(!v.contains("169.254"), "{v}");
    }

    #[test]
    fn draining_excluded_and_pins() {
        let mut w = World::new(CFG);
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80","state":"draining"},{"address":"10.0.0.3:80","state":"down"}]}"#, NOW);
        for _ in 0..200 {
            assert_eq!(
                w.route("demo", None, NOW).unwrap(),
                "10.0.0.1:80",
                "only the serving instance, no draining fallbacks"
            );
        }
        assert_eq!(reason(&w.route("demo", Some("10.0.0.2:80"), NOW).unwrap_err()), "pinned_draining");
        assert_eq!(
            w.route("demo", Some("169.254.169.254:80"), NOW).unwrap(),
            "10.0.0.1:80",
            "a pin outside the membership is ignored"
        );
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","state":"draining"},{"address":"10.0.0.2:80","state":"draining"}]}"#, NOW + 2000);
        let r = w.route("demo", None, NOW + 2000).unwrap_err();
        assert_eq!((r.status, reason(&r)), (503, "none_serving"));
        assert_eq!(w.vm.services[0].stats.local_503, [0, 0, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn pinned_serving_goes_first() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        for _ in 0..50 {
            let value = w.route("demo", Some("10.0.0.3:80"), NOW).unwrap();
            let v: Vec<&str> = value.split(',').collect();
            assert_eq!(v[0], "10.0.0.3:80");
            assert_eq!(v.len(), 3);
            assert_eq!(v.iter().filter(|a| **a == "10.0.0.3:80").count(), 1);
        }
    }

    /// Routes one request and answers it with `resp` headers from `upstream`.
    fn exchange(w: &mut World, now: i64, upstream: &str, resp: &[(&str, &str)]) -> String {
        let h = host(&w.shared, now, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let mut h = host(&w.shared, now, &[], Some("demo"));
        h.props.push(("upstream.address", upstream.to_string()));
        *h.resp.borrow_mut() = resp.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        w.vm.on_response(&h, &ex);
        ex.written
    }

    #[test]
    fn notify_marks_until_restart_or_gone() {
        let mut w = World::new(CFG);
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":100},{"address":"10.0.0.2:80"}]}"#, NOW);
        exchange(&mut w, NOW, "1.2.3.4:80", &[("x-lossless-drain", "draining")]);
        assert_eq!(w.vm.stats.notify_marks, 0, "strangers cannot be marked");
        exchange(&mut w, NOW, "10.0.0.1:80", &[("x-lossless-drain", "draining")]);
        assert_eq!(w.vm.stats.notify_marks, 1);
        // another VM sees it at once through the generation
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW);
        assert_eq!(other.services[0].view.members[0].state, State::Draining);
        for _ in 0..100 {
            assert_eq!(w.route("demo", None, NOW).unwrap(), "10.0.0.2:80");
        }
        // registry still lists it with the same start: the mark holds
        w.refresh(
            r#"{"instances":[{"address":"10.0.0.1:80","start_ms":100},{"address":"10.0.0.2:80","weight":5}]}"#,
            NOW + 2000,
        );
        assert_eq!(w.members()[0].state, State::Draining);
        // restarted (newer start): the mark goes
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":200},{"address":"10.0.0.2:80"}]}"#, NOW + 4000);
        assert_eq!(w.members()[0].state, State::Serving);
        assert!(w.vm.view.marks.m.is_empty());
    }

    /// Routes one request (matched by `cluster`) and answers it with `resp` from `upstream`;
    /// returns the response headers as the filter left them for the downstream.
    fn relay(w: &mut World, cluster: Option<&str>, upstream: &str, resp: &[(&str, &str)]) -> Vec<(String, String)> {
        let h = host(&w.shared, NOW, &[(":path", "/x")], cluster);
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let mut h = host(&w.shared, NOW, &[], cluster);
        h.props.push(("upstream.address", upstream.to_string()));
        *h.resp.borrow_mut() = resp.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        w.vm.on_response(&h, &ex);
        let left = h.resp.borrow().clone();
        left
    }

    /// An instance's `flow_limited` / `not_ready` refusal is neither a drain notice nor a failure:
    /// a warming instance is not marked draining nor ejected by its callers, and the header stops
    /// at this hop.
    #[test]
    fn warming_instances_refusals_mark_nothing() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        for why in ["flow_limited", "not_ready"] {
            for _ in 0..10 {
                let left = relay(&mut w, Some("demo"), "10.0.0.1:80", &[(":status", "503"), ("x-lossless-drain", why)]);
                assert_eq!(drain_value(&left), None, "{why}");
            }
        }
        assert_eq!((w.vm.stats.notify_marks, w.vm.services[0].stats.ejections_enforced), (0, 0));
        assert!(w.vm.view.marks.m.is_empty() && w.vm.view.marks.ejected.is_empty());
    }

    /// Inbound with registration and admission, two workers sharing Envoy's shared data: requests
    /// are refused `not_ready` until the poller saw readiness and registered; then admitted on
    /// the warm-up cap shared by both workers; a drain deregisters.
    #[test]
    fn inbound_registration_gates_and_admission_caps() {
        let cfg = br#"{"mode":"inbound","inbound":{"service":"me","self_address":"10.0.0.1:80","warmup_ms":60000,
            "registration":{"local_cluster":"local_app","readiness":{"path":"/ready","interval_ms":1000,"healthy_threshold":2}},
            "admission":{"max_rps":6,"cold_factor":3}},
            "registries":{"n":{"type":"nacos","cluster":"registry","authority":"nacos","api":"v1"}},
            "services":[{"name":"me","registry":"n"}]}"#;
        let shared = FakeShared::default();
        let mut a = Vm::new(config::parse(cfg).unwrap(), cfg, 1, Rng::new(1));
        let mut b = Vm::new(config::parse(cfg).unwrap(), cfg, 2, Rng::new(2));
        a.on_start(&shared);
        b.on_start(&shared);
        let ask = |vm: &mut Vm, now: i64| {
            let h = host(&shared, now, &[(":path", "/x")], None);
            match vm.on_request(&h, &mut Exchange::default()) {
                Flow::Continue => "ok".to_string(),
                Flow::Reply(r) => reason(&r).to_string(),
            }
        };
        assert_eq!(ask(&mut b, NOW), "not_ready");
        let ok = [(":status".to_string(), "200".to_string())];
        let answer = |vm: &mut Vm, d: &Dispatch, token: u32, body: &[u8], now: i64| {
            vm.dispatched(token, d);
            let resp = HttpResponse { status: Some(200), headers: &ok, body, body_size: body.len() };
            vm.on_call_reply(&shared, token, &resp, now);
        };
        let mut sent = Vec::new();
        for (k, t) in (0..40).map(|k| (k, NOW + k * 100)) {
            for d in a.on_tick(&shared, t) {
                if let Purpose::Online(step) = d.purpose {
                    sent.push((step, d.cluster.clone(), d.request.header(":path").unwrap_or_default().to_string()));
                    let body: &[u8] = if step == Step::Readiness { b"" } else { b"ok" };
                    answer(&mut a, &d, 100 + k as u32, body, t);
                }
            }
        }
        // the other worker ticks too, but only the poller registers
        assert!(b.on_tick(&shared, NOW + 4_000).iter().all(|d| !matches!(d.purpose, Purpose::Online(_))));
        let steps: Vec<Step> = sent.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(steps[..3], [Step::Readiness, Step::Readiness, Step::Register], "{sent:?}");
        assert!(steps[3..].iter().all(|s| *s == Step::Readiness), "readiness goes on while registered: {sent:?}");
        assert!(sent.iter().all(|(s, c, p)| *s != Step::Readiness || (c == "local_app" && p == "/ready")));
        assert_eq!(sent[2].1, "registry");
        assert!(sent[2].2.starts_with("/nacos/v1/ns/instance?serviceName=me"));
        assert_eq!(a.online.as_ref().map(|o| o.phase), Some(registration::Phase::Registered));
        // admitted now, on the cold rate 6 / 3 = 2 per second, whichever worker asks
        let t = NOW + 10_000;
        let got: Vec<String> = (0..4).map(|i| if i % 2 == 0 { ask(&mut a, t) } else { ask(&mut b, t) }).collect();
        assert_eq!(got, ["ok", "ok", "flow_limited", "flow_limited"]);
        assert_eq!(b.services[0].stats.local_503[Reason::FlowLimited.index()], 1);
        // both workers' membership JSON shows the registration and the cap
        let h = host(&shared, t, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        let Flow::Reply(r) = b.on_request(&h, &mut Exchange::default()) else { panic!() };
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(j["self"]["online"]["registration"]["phase"], "registered", "{}", r.body);
        assert_eq!(j["self"]["online"]["admission"]["admitted"], 2);
        // a drain on worker b: the poller deregisters
        let h = host(&shared, t, &[(":path", "/lossless/drain"), (":method", "POST")], None);
        assert!(matches!(b.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 200));
        let due = a.on_tick(&shared, t + 100);
        let del = due.iter().find(|d| d.purpose == Purpose::Online(Step::Deregister)).expect("a deregistration");
        assert_eq!(del.request.header(":method"), Some("DELETE"));
    }

    fn drain_value(headers: &[(String, String)]) -> Option<&str> {
        headers.iter().find(|(k, _)| k == "x-lossless-drain").map(|(_, v)| v.as_str())
    }

    /// A drain header is about the upstream that sent it. Passed on, a caller that runs lossless
    /// in front of this proxy would mark this proxy draining (two tiers of lossless, or a gateway
    /// that copies response headers through), and a lossless proxy's own refusal reasons would
    /// read as "draining" one tier up.
    #[test]
    fn drain_header_stops_at_the_hop_it_is_about() {
        let mut w = World::new(CFG);
        w.refresh(
            r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#,
            NOW,
        );
        let status = (":status", "200");
        // served while draining: marked, and not passed on
        let left = relay(&mut w, Some("demo"), "10.0.0.1:80", &[status, ("x-lossless-drain", "draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (1, None));
        assert_eq!(left, vec![(":status".to_string(), "200".to_string())], "other headers untouched");
        // a lossless proxy's own refusal is about that proxy's upstreams: no mark, not passed on
        for reason in ["none_serving", "no_instances", "pinned_draining", "no_membership"] {
            let left = relay(&mut w, Some("demo"), "10.0.0.2:80", &[(":status", "503"), ("x-lossless-drain", reason)]);
            assert_eq!(drain_value(&left), None, "{reason}");
        }
        assert_eq!((w.vm.stats.notify_marks, state_of(&w, "10.0.0.2:80")), (1, State::Serving));
        // an application's own value and an instance's refusal are notices
        relay(&mut w, Some("demo"), "10.0.0.2:80", &[status, ("x-lossless-drain", "true")]);
        let left =
            relay(&mut w, Some("demo"), "10.0.0.3:80", &[(":status", "503"), ("x-lossless-drain", "self_draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (3, None));
        // a cluster lossless does not route: not read (no host call), nothing marked
        let left = relay(&mut w, None, "10.0.0.9:80", &[status, ("x-lossless-drain", "draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (3, Some("draining")));
    }

    /// In the original_dst template an outer route retries an instance's refusal on its drain
    /// header (envoy/outbound-original-dst.yaml): the inner hop keeps `self_draining`, and the
    /// outer hop, where no service is routed, removes it after its retries.
    #[test]
    fn original_dst_keeps_a_refusal_for_the_outer_route() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","routing":{"mode":"original_dst"}}]}"#;
        let mut w = World::new(cfg);
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"}]}"#, NOW);
        let left =
            relay(&mut w, Some("demo"), "10.0.0.1:80", &[(":status", "503"), ("x-lossless-drain", "self_draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (1, Some("self_draining")));
        let left = relay(&mut w, Some("demo"), "10.0.0.2:80", &[(":status", "200"), ("x-lossless-drain", "draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (2, None));
        let left = relay(
            &mut w,
            Some("demo-pick"),
            "10.0.0.1:80",
            &[(":status", "503"), ("x-lossless-drain", "self_draining")],
        );
        assert_eq!(drain_value(&left), None);
        // the inner hop's own 503 (a pin to a draining instance) keeps its reason for the client
        let own = [(":status", "503"), ("x-lossless-drain", "pinned_draining")];
        let left = relay(&mut w, Some("demo-pick"), "10.0.0.1:80", &own);
        assert_eq!(drain_value(&left), Some("pinned_draining"));
    }

    /// Sends one request to `demo` and answers it: `upstream` served the last of `attempts`, with
    /// `status` and Envoy's `details`. Returns the exchange.
    fn answer(w: &mut World, now: i64, upstream: Option<&str>, attempts: u32, status: u16, details: &str) -> Exchange {
        answer_with_headers(w, now, upstream, attempts, status, details).0
    }

    /// [`answer`], also returning the response headers as the filter left them.
    fn answer_with_headers(
        w: &mut World,
        now: i64,
        upstream: Option<&str>,
        attempts: u32,
        status: u16,
        details: &str,
    ) -> (Exchange, Vec<(String, String)>) {
        let h = host(&w.shared, now, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        assert_eq!(w.vm.on_request(&h, &mut ex), Flow::Continue);
        let first = ex.written.split(',').next().unwrap_or_default().to_string();
        let mut h = host(&w.shared, now, &[], Some("demo"));
        h.props.push(("upstream.address", upstream.map_or(first, String::from)));
        h.props.push(("response.code_details", details.to_string()));
        *h.resp.borrow_mut() =
            vec![(":status".into(), status.to_string()), ("x-envoy-attempt-count".into(), attempts.to_string())];
        w.vm.on_response(&h, &ex);
        let headers = h.resp.borrow().clone();
        (ex, headers)
    }

    fn state_of(w: &World, addr: &str) -> State {
        crate::instance::find(w.members(), addr).unwrap().state
    }

    const REFUSED: &str =
        "upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_Connection_refused}";

    #[test]
    fn a_failed_attempt_ejects_until_a_trial_succeeds() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        // two attempts: the first address written failed, the second served
        let h = host(&w.shared, NOW, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let written: Vec<String> = ex.written.split(',').map(String::from).collect();
        let mut h = host(&w.shared, NOW, &[], Some("demo"));
        h.props.push(("upstream.address", written[1].clone()));
        *h.resp.borrow_mut() = vec![(":status".into(), "200".into()), ("x-envoy-attempt-count".into(), "2".into())];
        w.vm.on_response(&h, &ex);
        let dead = written[0].as_str();
        assert_eq!(w.vm.services[0].stats.ejections_enforced, 1);
        assert_eq!(state_of(&w, dead), State::Down);
        for _ in 0..100 {
            assert!(!w.route("demo", None, NOW + 1).unwrap().contains(dead));
        }
        // another VM sees the ejection at once
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW + 1);
        assert_eq!(crate::instance::find(&other.services[0].view.members, dead).unwrap().state, State::Down);
        // the ejection time is over: no blind re-admission, one trial request goes to it first
        let ex = answer(&mut w, NOW + 30_000, None, 1, 503, REFUSED);
        assert!(ex.trial && ex.written.starts_with(dead), "{ex:?}");
        assert_eq!(w.vm.services[0].stats.ejection_trials, 1);
        // the trial failed: ejected again, for twice as long
        assert_eq!(w.vm.view.marks.ejected[dead].times, 2);
        // a trial that failed and that Envoy retried on the next address counts as failed too
        let h = host(&w.shared, NOW + 90_000, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        assert!(ex.trial && ex.written.starts_with(dead), "{ex:?}");
        let mut h = host(&w.shared, NOW + 90_000, &[], Some("demo"));
        h.props.push(("upstream.address", ex.written.split(',').nth(1).unwrap().to_string()));
        *h.resp.borrow_mut() = vec![(":status".into(), "200".into()), ("x-envoy-attempt-count".into(), "2".into())];
        w.vm.on_response(&h, &ex);
        assert_eq!(w.vm.view.marks.ejected[dead].times, 3, "failed trial, then retried elsewhere");
        assert!(!answer(&mut w, NOW + 30_001, None, 1, 200, "via_upstream").written.contains(dead));
        other.sync(&w.shared, NOW + 30_001);
        assert!(other.services[0].view.trial_due.is_empty(), "the other VM takes no trial of its own");
        assert!(!answer(&mut w, NOW + 89_999, None, 1, 200, "via_upstream").trial);
        // the next trial (after 90 s, the third ejection) succeeds: readmitted for every VM
        let ex = answer(&mut w, NOW + 180_000, None, 1, 200, "via_upstream");
        assert!(ex.trial && ex.written.starts_with(dead));
        assert_eq!(w.vm.services[0].stats.readmitted, 1);
        assert_eq!(state_of(&w, dead), State::Serving);
        other.sync(&w.shared, NOW + 180_001);
        assert_eq!(crate::instance::find(&other.services[0].view.members, dead).unwrap().state, State::Serving);
    }

    #[test]
    fn a_failure_count_leaves_with_its_instance() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        answer(&mut w, NOW, Some("10.0.0.3:80"), 1, 503, "via_upstream");
        assert!(w.vm.failures.contains_key("10.0.0.3:80"));
        // the instance leaves the registry with its count open: the count goes with it, so the
        // served address is no longer read on every response
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"}]}"#, NOW + 2000);
        assert!(w.vm.failures.is_empty());
    }

    #[test]
    fn consecutive_gateway_failures_eject_and_a_success_resets_the_count() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        let a = "10.0.0.1:80";
        for _ in 0..2 {
            answer(&mut w, NOW, Some(a), 1, 503, "via_upstream");
        }
        answer(&mut w, NOW, Some(a), 1, 200, "via_upstream");
        answer(&mut w, NOW, Some(a), 1, 504, "upstream_response_timeout");
        answer(&mut w, NOW, Some(a), 1, 502, "upstream_reset_before_response_started{connection_termination}");
        assert_eq!(state_of(&w, a), State::Serving, "two in a row since the last success");
        // a drain answer or Envoy's own overflow says nothing about the instance
        answer(&mut w, NOW, Some(a), 1, 503, "upstream_reset_before_response_started{overflow}");
        assert_eq!(state_of(&w, a), State::Serving);
        answer(&mut w, NOW, Some(a), 1, 503, "via_upstream");
        assert_eq!(state_of(&w, a), State::Down, "the third gateway failure in a row");
        // at most half of the instances (at least one) are ejected: the set is never emptied
        let b = "10.0.0.2:80";
        answer(&mut w, NOW, Some(b), 1, 503, REFUSED);
        assert_eq!(state_of(&w, b), State::Serving);
        assert_eq!(w.vm.services[0].stats.ejections_overflow, 1);
        // the registry wins: a restart (newer start time) ends the ejection
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":5},{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#, NOW + 2000);
        assert_eq!(state_of(&w, a), State::Serving);
        assert!(w.vm.view.marks.ejected.is_empty());
    }

    #[test]
    fn original_dst_ejects_on_the_first_connection_failure() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","routing":{"mode":"original_dst","header":"x-lossless-upstream","fallbacks":0}}]}"#;
        let mut w = World::new(cfg);
        let r = w.route("demo", None, NOW).unwrap_err();
        assert_eq!((r.status, reason(&r)), (503, "no_membership"), "original_dst has no fallback: a clear refusal");
        w.refresh(THREE, NOW);
        let (ex, headers) = answer_with_headers(&mut w, NOW, None, 1, 503, REFUSED);
        let dead = ex.written.clone();
        assert!(headers.contains(&(UNREACHED_HEADER.into(), "connection_failure".into())), "{headers:?}");
        let (_, headers) = answer_with_headers(&mut w, NOW, None, 1, 504, "upstream_response_timeout");
        assert!(!headers.iter().any(|(k, _)| k == UNREACHED_HEADER), "a timeout may have reached it: {headers:?}");
        // an instance cannot claim it was not reached (its POST would be resent)
        let h = host(&w.shared, NOW, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let mut h = host(&w.shared, NOW, &[], Some("demo"));
        h.props.push(("upstream.address", ex.written.clone()));
        *h.resp.borrow_mut() = vec![(":status".into(), "503".into()), (UNREACHED_HEADER.into(), "1".into())];
        h.props.push(("response.code_details", "via_upstream".into()));
        w.vm.on_response(&h, &ex);
        assert!(!h.resp.borrow().iter().any(|(k, _)| k == UNREACHED_HEADER), "{:?}", h.resp.borrow());
        assert_eq!(state_of(&w, &dead), State::Down);
        for _ in 0..50 {
            assert_ne!(w.route("demo", None, NOW).unwrap(), dead);
        }
    }

    #[test]
    fn active_health_checks_take_a_failing_instance_out_and_back() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","health_check":{"path":"/health","interval_ms":1000,"timeout_ms":500}}]}"#;
        let mut w = World::new(cfg);
        w.refresh(THREE, NOW);
        let a = "10.0.0.1:80";
        let mut token = 100;
        // the poller sends each instance one probe per interval, through the routing cluster
        let mut probe = |w: &mut World, t: i64, status: Option<u16>| -> usize {
            let mut n = 0;
            for d in w.vm.on_tick(&w.shared, t) {
                let Purpose::Probe(addr) = &d.purpose else { continue };
                assert_eq!(
                    (d.cluster.as_str(), d.request.header("x-lossless-upstream")),
                    ("demo", Some(addr.as_str()))
                );
                token += 1;
                w.vm.dispatched(token, &d);
                let st = if addr == a { status } else { Some(200) };
                let h: Vec<(String, String)> =
                    st.map(|s| vec![(":status".to_string(), s.to_string())]).unwrap_or_default();
                let resp = HttpResponse { status: st, headers: &h, body: b"", body_size: 0 };
                assert!(w.vm.on_call_reply(&w.shared, token, &resp, t).is_none());
                n += 1;
            }
            n
        };
        let mut sent = 0;
        for t in (0..=2000).step_by(100) {
            sent += probe(&mut w, NOW + t, None);
        }
        assert!((5..=7).contains(&sent), "3 instances, 2 intervals: {sent} probes");
        assert_eq!(state_of(&w, a), State::Down, "two failed probes: unhealthy");
        assert!(w.vm.services[0].stats.health_check_failure >= 2);
        for _ in 0..50 {
            assert!(!w.route("demo", None, NOW + 2000).unwrap().contains(a));
        }
        // another VM sees it
        let mut other = Vm::new(config::parse(cfg).unwrap(), cfg, 2, Rng::new(2));
        other.sync(&w.shared, NOW + 2000);
        assert_eq!(crate::instance::find(&other.services[0].view.members, a).unwrap().state, State::Down);
        // it answers again: back at the first pass
        for t in (2100..=3100).step_by(100) {
            probe(&mut w, NOW + t, Some(200));
        }
        assert_eq!(state_of(&w, a), State::Serving);
    }

    #[test]
    fn outlier_detection_can_be_turned_off() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","outlier_detection":{"enabled":false}}]}"#;
        let mut w = World::new(cfg);
        w.refresh(THREE, NOW);
        for _ in 0..5 {
            answer(&mut w, NOW, Some("10.0.0.1:80"), 1, 503, REFUSED);
        }
        assert_eq!(state_of(&w, "10.0.0.1:80"), State::Serving);
    }

    #[test]
    fn flapping_registry_keeps_the_set() {
        let mut w = World::new(CFG);
        let ten: Vec<String> = (1..=10).map(|k| format!(r#"{{"address":"10.0.0.{k}:80"}}"#)).collect();
        let full = format!(r#"{{"instances":[{}]}}"#, ten.join(","));
        let down: Vec<String> = (1..=10).map(|k| format!(r#"{{"address":"10.0.0.{k}:80","state":"down"}}"#)).collect();
        let all_down = format!(r#"{{"instances":[{}]}}"#, down.join(","));
        w.refresh(&full, NOW);
        let mut t = NOW;
        for body in [
            r#"{"instances":[]}"#,
            all_down.as_str(),
            "oops",
            full.as_str(),
            all_down.as_str(),
            r#"{"instances":[]}"#,
            full.as_str(),
        ] {
            t += 2000;
            w.refresh(body, t);
            assert_eq!(w.vm.services[0].view.balancer.serving(), 10, "after {body}");
        }
    }

    #[test]
    fn host_name_addresses_are_refused_by_name() {
        let mut w = World::new(CFG);
        let out = w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"orders.internal:80"}]}"#, NOW);
        let RefreshOutcome::Published { hosts, skipped, unroutable, .. } = out else { panic!("{out:?}") };
        assert_eq!((hosts, skipped, unroutable), (1, 1, vec!["orders.internal:80".to_string()]));
        assert_eq!(w.vm.services[0].stats.instances_skipped, 1);
    }

    #[test]
    fn a_deliberate_offline_applies_within_one_refresh() {
        // Nacos omits disabled instances: 2 of 3 disabled at once are gone at the next refresh
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        w.refresh(r#"{"instances":[{"address":"10.0.0.3:80"}]}"#, NOW + 2000);
        assert_eq!(w.members().len(), 1);
        for _ in 0..50 {
            assert_eq!(w.route("demo", None, NOW + 2000).unwrap(), "10.0.0.3:80");
        }
    }

    #[test]
    fn inbound_self_drain() {
        let json = br#"{"mode":"inbound","inbound":{"service":"me","self_address":"10.0.0.1:80"},"drain":{"notify_grace_ms":1000},
            "registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/demo"}},"services":[{"name":"me","registry":"s"}]}"#;
        let mut w = World::new(json);
        let keys = w.vm.keys.clone();
        let publish = |shared: &FakeShared, members: &str, v: u64| {
            let p = crate::registry::static_json::parse(members.as_bytes(), &Default::default()).unwrap();
            shared.set(
                &keys.service("me"),
                &Snapshot { version: v, updated_ms: 0, members: p.instances }.encode(),
                None,
            );
            bump_gen(shared, &keys);
        };
        let req = |w: &mut World, now: i64| {
            let h = host(&w.shared, now, &[(":path", "/x")], None);
            let mut ex = Exchange::default();
            let flow = w.vm.on_request(&h, &mut ex);
            let h = host(&w.shared, now, &[], None);
            w.vm.on_response(&h, &ex);
            let tagged = h.resp.borrow().iter().any(|(k, v)| k == "x-lossless-drain" && v == "draining");
            (flow, tagged)
        };
        assert_eq!(req(&mut w, NOW), (Flow::Continue, false), "not registered yet");
        publish(&w.shared, r#"{"instances":[{"address":"10.0.0.1:80"}]}"#, 1);
        assert_eq!(req(&mut w, NOW), (Flow::Continue, false));
        publish(&w.shared, r#"{"instances":[{"address":"10.0.0.2:80"}]}"#, 2);
        assert_eq!(req(&mut w, NOW), (Flow::Continue, true), "notify grace: still served, with the drain header");
        assert!(w.vm.view.self_drain.draining());
        let (flow, _) = req(&mut w, NOW + 1000);
        assert!(matches!(flow, Flow::Reply(ref r) if reason(r) == "self_draining"));
        publish(&w.shared, r#"{"instances":[{"address":"10.0.0.1:80"}]}"#, 3);
        assert_eq!(req(&mut w, NOW + 1000), (Flow::Continue, false));
        // the local drain endpoint sets the shared flag
        let h = host(&w.shared, NOW + 1000, &[(":path", "/lossless/drain"), (":method", "POST")], None);
        assert!(matches!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 200));
        assert_eq!(req(&mut w, NOW + 1000), (Flow::Continue, true), "the grace starts when the drain is seen");
        let (flow, _) = req(&mut w, NOW + 2000);
        assert!(matches!(flow, Flow::Reply(ref r) if reason(r) == "self_draining"));
        let h = host(&w.shared, NOW + 2000, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        let Flow::Reply(r) = w.vm.on_request(&h, &mut Exchange::default()) else { panic!() };
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(j["self"]["manual"], true);
    }

    #[test]
    fn admin_refuses_remote_and_forwarded_callers() {
        let mut w = World::new(CFG);
        let mut h = host(&w.shared, NOW, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        h.props = vec![("source.address", "10.1.1.1:5555".into())];
        assert!(matches!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 403));
        let h = host(
            &w.shared,
            NOW,
            &[(":path", "/lossless/membership"), (":method", "GET"), ("x-forwarded-for", "10.1.1.1")],
            None,
        );
        assert!(matches!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 403));
        assert_eq!(w.vm.stats.admin_denied, 2);
        let h = host(&w.shared, NOW, &[(":path", "/lossless/nope"), (":method", "GET")], None);
        assert!(matches!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 404));
    }

    #[test]
    fn membership_json_has_live_weights() {
        let mut w = World::new(CFG);
        w.refresh(&format!(r#"{{"instances":[{{"address":"10.0.0.1:80","start_ms":{},"warmup_ms":100000}},{{"address":"10.0.0.2:80"}}]}}"#, NOW - 50_000), NOW);
        let h = host(&w.shared, NOW, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        let Flow::Reply(r) = w.vm.on_request(&h, &mut Exchange::default()) else { panic!() };
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let inst = &j["services"][0]["instances"];
        assert_eq!(inst[0]["live_weight"], 50);
        assert_eq!(inst[0]["warming"], true);
        assert_eq!(inst[1]["live_weight"], 100);
        assert_eq!(j["services"][0]["hosts"]["warming"], 1);
    }

    /// Host calls per path, printed for BENCHMARKS.md; the assertions keep them from growing.
    #[test]
    fn host_calls_per_path() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        w.route("demo", None, NOW).unwrap();
        let count = |w: &mut World, req: &[(&str, &str)], cluster: Option<&str>, resp: Option<&[(&str, &str)]>| {
            let shared_before = w.shared.calls.get();
            let h = host(&w.shared, NOW, req, cluster);
            let mut ex = Exchange::default();
            w.vm.on_request(&h, &mut ex);
            let on_req = h.total() - shared_before;
            let mut h = host(&w.shared, NOW, &[], cluster);
            h.props.push(("upstream.address", "10.0.0.1:80".into()));
            *h.resp.borrow_mut() =
                resp.unwrap_or_default().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let before = h.total();
            w.vm.on_response(&h, &ex);
            (on_req, h.total() - before)
        };
        let routed = count(&mut w, &[(":path", "/x")], Some("demo"), None);
        let other = count(&mut w, &[(":path", "/x")], Some("other"), None);
        println!("host calls, routed request: {} on the request, {} on the response", routed.0, routed.1);
        println!("host calls, request to another cluster: {} on the request, {} on the response", other.0, other.1);
        // the request's headers (:path, routing headers, pin), the generation, the cluster, the
        // routing header set
        assert!(routed.0 <= 4, "{routed:?}");
        // the response's headers (drain header, attempt count, :status)
        assert!(routed.1 <= 1, "{routed:?}");
        assert!(other.0 <= 3 && other.1 == 0, "{other:?}");
    }
}
