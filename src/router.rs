//! The request decision, pure: the request's facts in, the decision out. The VM gathers the facts
//! (the request's headers, the cluster Envoy matched, its clock; whether it takes an ejected
//! member's trial, or what the warm-up cap says, through a callback asked only when the decision
//! reaches it) and applies the decision (headers removed and set, counters, the local reply).
//!
//! Outbound ([`Router::outbound`]): the client's routing headers are removed, the matched cluster
//! picks the service, and [`route`] honours an operator's pin, picks by live weight, adds the
//! fallbacks (override_host) or refuses with a [`Reason`]. Inbound ([`inbound`]): the instance
//! takes the request unless it drains, is not ready, or is over its warm-up cap. O(log n) in
//! instances.

use crate::admission::Admit;
use crate::balancer::NoPick;
use crate::clock::Rng;
use crate::config::{RoutingMode, ServiceConfig, Settings};
use crate::drain::{self, Pin, Reason};
use crate::headers::Headers;
use crate::service::Service;
use crate::view::ServiceView;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Forward it untouched (after the client's routing headers were removed): not a service of
    /// ours, no membership yet under override_host, or, inbound, a request the instance takes.
    PassThrough,
    /// Set the service's routing header to `value` (the picked addresses, comma-separated,
    /// primary first) and forward.
    Forward { service: usize, value: String },
    /// Answer locally with 503.
    Reject { service: Option<usize>, reason: Reason },
}

/// The routing side of one VM's configuration, built once: every service's routing header and
/// the operator's pin header.
#[derive(Debug, Clone)]
pub struct Router {
    /// Every routing header of every service, sorted, each once: a client never sets one.
    headers: Vec<String>,
    /// `drain.pin_header`, if configured.
    pin_header: Option<String>,
}

/// The facts of one outbound request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Every request header, as the client sent them.
    pub headers: &'a Headers,
    /// The cluster Envoy matched the request to (its `xds.cluster_name` property), if it said.
    pub cluster: Option<&'a str>,
    /// The VM's clock, ms since the epoch.
    pub now_ms: i64,
}

/// The decision for one outbound request, in the order it is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'r> {
    /// The routing headers the client sent: removed first, whatever the route (a client never
    /// chooses the upstream).
    pub strip: Vec<&'r str>,
    /// What to do with the request.
    pub route: Route,
    /// The trial this request took, if it took one (counted even when the request is refused).
    pub trial: Option<Trial>,
}

/// A trial request of an ejected member whose ejection time is over: one request for every VM,
/// whose answer readmits or ejects it again (see [`crate::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The service, an index into the configured services.
    pub service: usize,
    /// The member's address, `ip:port`.
    pub addr: String,
    /// The member is the first address written, so the answer is its own; false when a pin went
    /// first or the request was not forwarded.
    pub first: bool,
}

impl Router {
    /// The router of `services` under `settings`.
    pub fn new(settings: &Settings, services: &[ServiceConfig]) -> Router {
        let mut headers: Vec<String> = services.iter().map(|s| s.header.clone()).collect();
        headers.sort();
        headers.dedup();
        Router { headers, pin_header: settings.drain.pin_header.clone() }
    }

    /// Decides an outbound request over `services` (the VM's own, whose views the pick refreshes).
    /// `claim_trial(addr)` is asked only when an ejected member of the matched service is due for
    /// its trial: whether this VM takes it (a shared-data call). `scratch` is reused across calls.
    pub fn outbound<'r>(
        &'r self,
        services: &mut [Service],
        req: &Request<'_>,
        rng: &mut Rng,
        scratch: &mut Vec<usize>,
        claim_trial: &mut dyn FnMut(&str) -> bool,
    ) -> Decision<'r> {
        let strip = self.headers.iter().filter(|name| req.headers.contains(name)).map(String::as_str).collect();
        let mut decision = Decision { strip, route: Route::PassThrough, trial: None };
        let Some(svc) = req.cluster.and_then(|c| service_for_cluster(services, c)) else { return decision };
        let pin = self.pin_header.as_deref().and_then(|p| req.headers.get(p));
        let Some(s) = services.get_mut(svc) else { return decision };
        let trial = take_trial(&mut s.view, claim_trial);
        decision.route = route(svc, &s.cfg, &mut s.view, pin, trial.as_ref().map(|t| t.0), req.now_ms, rng, scratch);
        decision.trial = trial.map(|(_, addr)| {
            let first = match &decision.route {
                Route::Forward { value, .. } => value.split(',').next() == Some(addr.as_str()),
                _ => false,
            };
            Trial { service: svc, addr, first }
        });
        decision
    }
}

/// The service whose `match_clusters` holds `cluster`.
fn service_for_cluster(services: &[Service], cluster: &str) -> Option<usize> {
    services.iter().position(|s| s.cfg.match_clusters.iter().any(|c| c == cluster))
}

/// The member of `sv` due for its trial (its index and address), if `claim` says this VM takes it
/// (the member leaves the list of those due either way).
fn take_trial(sv: &mut ServiceView, claim: &mut dyn FnMut(&str) -> bool) -> Option<(usize, String)> {
    let i = sv.trial_due.pop()?;
    let addr = sv.members.get(i)?.addr.clone();
    claim(&addr).then_some((i, addr))
}

/// Decides an inbound request to `service` (the inbound service): refused while the instance
/// drains past its notify grace (`rejecting`), then while it is not ready (`not_ready`); else the
/// warm-up cap decides: `admit` asks it (a shared-data call, made only when nothing refused
/// before; `None` when no cap is configured). Returns the route and the cap's answer, for its
/// counters.
pub fn inbound(
    service: Option<usize>,
    rejecting: bool,
    not_ready: bool,
    admit: impl FnOnce() -> Option<Admit>,
) -> (Route, Option<Admit>) {
    let refuse = |reason| Route::Reject { service, reason };
    if rejecting {
        return (refuse(Reason::SelfDraining), None);
    }
    if not_ready {
        return (refuse(Reason::NotReady), None);
    }
    match admit() {
        Some(Admit::No) => (refuse(Reason::FlowLimited), Some(Admit::No)),
        other => (Route::PassThrough, other),
    }
}

/// Routes a request to service `svc` (`sc`, `sv`). `pin` is the operator's pin header, if
/// configured and sent; `trial` an ejected member this request is the trial of (it goes first
/// unless a pin does); `scratch` is reused across calls.
#[allow(clippy::too_many_arguments)]
pub fn route(
    svc: usize,
    sc: &ServiceConfig,
    sv: &mut ServiceView,
    pin: Option<&str>,
    trial: Option<usize>,
    now_ms: i64,
    rng: &mut Rng,
    scratch: &mut Vec<usize>,
) -> Route {
    if sv.snap.version == 0 {
        // no membership yet: override_host falls back to the cluster's own policy (fail open);
        // original_dst has nowhere to go
        return match sc.routing {
            RoutingMode::OverrideHost => Route::PassThrough,
            RoutingMode::OriginalDst => Route::Reject { service: Some(svc), reason: Reason::NoMembership },
        };
    }
    sv.balancer.refresh_if_due(&sv.members, now_ms, rng);
    let pinned = match drain::pin(&sv.members, pin) {
        Pin::Draining => return Route::Reject { service: Some(svc), reason: Reason::PinnedDraining },
        Pin::Serving(i) => Some(i),
        Pin::Ignore => trial,
    };
    let fallbacks = if sc.routing == RoutingMode::OriginalDst { 0 } else { sc.fallbacks };
    match sv.balancer.pick(rng, fallbacks, scratch) {
        Err(NoPick::Empty) => return Route::Reject { service: Some(svc), reason: Reason::NoInstances },
        Err(NoPick::NoneServing) if pinned.is_none() => {
            return Route::Reject { service: Some(svc), reason: Reason::NoneServing }
        }
        Err(NoPick::NoneServing) => scratch.clear(),
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
