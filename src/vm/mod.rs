//! Everything one Envoy worker VM knows and decides, free of proxy-wasm calls. The glue
//! (`host`, compiled into the `.wasm` only) calls four entry points and applies what they return:
//!
//! - [`Vm::on_tick`]: lease, view, due registry requests and probes ([`Dispatch`]);
//! - [`Vm::on_call_reply`]: a registry reply becomes membership ([`crate::poller`]), a probe's
//!   answer health ([`crate::prober`]);
//! - [`Vm::on_request`]: the routing decision for one request ([`Flow`]);
//! - [`Vm::on_response`]: what a response tells about the instance that served it;
//! - [`Vm::on_request_end`] and [`Vm::on_log`]: when a request's last byte went and when its
//!   exchange ended, for stall detection.
//!
//! Per-request facts come through [`Host`], read only when a decision needs them, so a counting
//! fake host measures the host calls of each path natively.
//!
//! One job per file: this one holds the VM's state, its wiring and its view of shared data
//! ([`Vm::sync`]); `tick.rs` the tick and the calls it dispatches; `refresh.rs` a registry reply
//! made membership; `checks.rs` the active health checks; `online.rs` the inbound registration;
//! `fetch.rs` a registry fetched whole (Eureka's delta); `request.rs` the request path; `admin.rs` the admin endpoints; `response.rs` the response path;
//! `capture.rs` transparent mode's index, plans and shared estimate; `stall.rs` stall detection's
//! facts, decisions and probes.

mod admin;
mod capture;
mod checks;
mod fetch;
mod online;
mod push;
mod refresh;
mod request;
mod response;
mod stall;
#[cfg(test)]
mod testing;
mod tick;

use std::cell::Cell;

use crate::clock::FastMap as HashMap;

use log::warn;

use crate::admission::WarmUp;
use crate::clock::Rng;
use crate::config::{Config, RoutingMode, Settings};
use crate::drain::LocalReply;
use crate::headers::Headers;
use crate::health::Counts;
use crate::registration::{self, Online, Step};
use crate::registry::eureka::delta::Fetch;
use crate::registry::{Call, HttpRequest};
use crate::router::Router;
use crate::service::{Registry, Service};
use crate::stall::{Detector, Sent};
use crate::stats::{ServiceGauges, Stats};
use crate::store::{create_if_absent, Keys, Shared};
use crate::transparent::{Capture, Corrected};
use crate::view::{ServiceView, View};

/// A poller that stops renewing its lease is replaced after this long (ms).
/// How often every VM ticks (ms): lease renewal, poll schedule, view, stats; the filter sets
/// this period at start.
pub const TICK_MS: i64 = 100;

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
    /// Asks Envoy to match the request's route again (after a header a route matches was set):
    /// Envoy's `clear_route_cache` foreign function. False when the host cannot.
    fn clear_route_cache(&self) -> bool;
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
    /// Where the request stands for stall detection (set through a shared reference: the
    /// response path reads the exchange, it does not own it).
    pub stall: Cell<Ticket>,
}

impl Exchange {
    /// The address written first (the primary pick), if any.
    pub fn primary(&self) -> Option<&str> {
        self.written.split(',').next().filter(|a| !a.is_empty())
    }
}

/// Where one request stands for stall detection ([`crate::stall`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ticket {
    /// Not tracked (not routed, excluded, detection off), or handed back already.
    #[default]
    None,
    /// Tracked: pending on its primary from its last byte on ([`Vm::on_request_end`]).
    Waiting,
    /// Pending on its primary since then.
    Sent(Sent),
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
    /// A stall probe of this instance ([`crate::stall`]).
    StallProbe(String),
    /// A registry-wide fetch of registry `.0` (Eureka with `fetch: "delta"`).
    Fetch(usize, Fetch),
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
    /// The request decision's configuration (routing and pin headers).
    router: Router,
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
    /// Transparent mode (a service sets `transparent`): the address index and the counters of
    /// captured requests no corrected service owns.
    pub capture: Option<Capture>,
    /// Stall detection: what this VM sent to each instance and how fast each answers it.
    stall: Detector,
}

impl Vm {
    /// A VM for `cfg`; `config_bytes` names its shared-data keys (two configurations in one Envoy
    /// never share state), `vm_id` is its lease id (random: context ids repeat across VMs).
    pub fn new(cfg: Config, config_bytes: &[u8], vm_id: u64, rng: Rng) -> Vm {
        let Config { settings, registries, services } = cfg;
        let router = Router::new(&settings, &services);
        let original_dst_outer = services.iter().any(|s| s.routing == RoutingMode::OriginalDst);
        let registries = push::registries(registries, &services);
        let stall = Detector::new(services.iter().map(|s| s.stall_detection.clone()).collect());
        let services = services
            .into_iter()
            .map(|sc| Service {
                prober: Default::default(),
                view: ServiceView::new(&sc, settings.weight_refresh_ms),
                poll: Default::default(),
                stats: Default::default(),
                correction: sc.transparent.as_ref().map(|_| Corrected::default()),
                cfg: sc,
            })
            .collect();
        Vm {
            registries,
            services,
            view: View::default(),
            keys: Keys::new(config_bytes),
            rng,
            vm_id,
            poller: false,
            stats: Stats::default(),
            router,
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
            capture: settings.capture.as_ref().map(|_| Capture::default()),
            stall,
            settings,
        }
    }

    /// Creates the shared keys this configuration writes with CAS (call once at start).
    pub fn on_start(&mut self, shared: &dyn Shared) {
        self.keys.create_all(shared);
        // an LDS update that changed the configuration: start from the membership and marks the
        // previous configuration of this process held for the same services
        let names: Vec<&str> = self.services.iter().map(|s| s.cfg.name.as_str()).collect();
        let adopted =
            crate::store::adopt(shared, &self.keys, &names, |b| crate::membership::Snapshot::decode(b).is_ok());
        if adopted > 0 {
            log::info!("{adopted} service(s) start from the membership and marks of the previous configuration");
        }
        if self.online.is_some() {
            self.view.self_drain.sidecar_registers = true;
        }
        if self.admission.is_some() {
            create_if_absent(shared, &self.keys.admission(), b"");
        }
        for s in self.services.iter().filter(|s| s.correction.is_some()) {
            create_if_absent(shared, &self.keys.picks(&s.cfg.name), b"");
            create_if_absent(shared, &self.keys.departed(&s.cfg.name), b"");
        }
    }

    /// Re-reads shared data if anything was published or marked since the last call: one small
    /// read when nothing changed.
    pub fn sync(&mut self, shared: &dyn Shared, now_ms: i64) {
        if !self.view.stale(shared, &self.keys, now_ms) {
            return;
        }
        let mut loaded = false;
        for (i, s) in self.services.iter_mut().enumerate() {
            let mut changed = false;
            if s.view.load(shared, &self.keys.service(&s.cfg.name)) {
                self.view.decodes += 1;
                changed = true;
            }
            changed |= s.view.changed();
            if changed {
                // instances that left are forgotten with what was pending on them
                let members = &s.view.snap.members;
                self.stall.retain(i, |addr| crate::instance::find(members, addr).is_some());
            }
            loaded |= changed;
            s.view.rebuild(&self.view.marks, now_ms, &mut self.rng);
        }
        self.capture_sync(shared, loaded, now_ms);
        self.stall.on_marks(&self.view.marks);
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

    /// Logs `msg()` as a warning at most once per `LOG_EVERY_MS` for each service and kind, with
    /// the count of those suppressed since.
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

    /// The tick's gauges of every service: host counts, snapshot version, whether the overload
    /// protection is in force.
    pub fn gauges(&self, now_ms: i64) -> impl Iterator<Item = (usize, ServiceGauges)> + '_ {
        self.services.iter().enumerate().map(move |(i, s)| {
            let g = ServiceGauges {
                hosts: crate::view::host_counts(&s.view.members, now_ms),
                stalled: s.view.snap.members.iter().filter(|m| self.view.marks.is_stalled(m)).count() as u64,
                snapshot_version: s.view.snap.version,
                overload_protected: s.view.overload_protected(now_ms),
            };
            (i, g)
        })
    }
}
