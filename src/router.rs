//! The request decision, pure: the request's facts in, the decision out. The VM gathers the facts
//! (the request's headers, the cluster Envoy matched, its clock; whether it takes an ejected
//! member's trial, or what the warm-up cap says, through a callback asked only when the decision
//! reaches it) and applies the decision (headers removed and set, counters, the local reply).
//!
//! Outbound ([`Router::outbound`]): the client's routing headers are removed, the matched cluster
//! picks the service, and [`route`] honours an operator's pin, picks by live weight, adds the
//! fallbacks (override_host) or refuses with a [`Reason`]. A request matched to a capture cluster
//! (transparent mode, [`crate::transparent`]) carries the caller's own pick as its destination:
//! the pick is looked up, judged, and kept or moved through the same [`route`]. Inbound
//! ([`inbound`]): the instance takes the request unless it drains, is not ready, or is over its
//! warm-up cap. O(log n) in instances.

use crate::admission::Admit;
use crate::balancer::NoPick;
use crate::clock::Rng;
use crate::config::{CaptureConfig, RoutingMode, ServiceConfig, Settings};
use crate::drain::{self, Pin, Reason};
use crate::headers::Headers;
use crate::instance::canonical_addr;
use crate::service::Service;
use crate::transparent::{self, AddressIndex, Lookup, Untouched};
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
    /// original_dst before any membership: set the service's routing header to `value`, one of
    /// its `routing.no_membership_addresses`, and forward. Not a member: its answer is not judged.
    NoMembershipFallback { service: usize, value: String },
    /// Answer locally with 503.
    Reject { service: Option<usize>, reason: Reason },
}

/// The routing side of one VM's configuration, built once: every service's routing header, the
/// operator's pin header and transparent mode's capture settings.
#[derive(Debug, Clone)]
pub struct Router {
    /// Every routing header of every service (and `capture.service_header`), sorted, each once: a
    /// client never sets one.
    headers: Vec<String>,
    /// `drain.pin_header`, if configured.
    pin_header: Option<String>,
    /// `capture`, when a service is in transparent mode.
    capture: Option<CaptureConfig>,
}

/// The facts of one outbound request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Every request header, as the client sent them.
    pub headers: &'a Headers,
    /// The cluster Envoy matched the request to (its `xds.cluster_name` property), if it said.
    pub cluster: Option<&'a str>,
    /// A captured request's destination (Envoy's `destination.address`: the connection's original
    /// destination, i.e. the caller's own pick), read only when [`Router::captures`] the cluster.
    pub destination: Option<&'a str>,
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
    /// A captured request: what transparent mode decided about the caller's pick.
    pub captured: Option<Captured>,
    /// `capture.service_header`, to be set to the name of the service a captured request is
    /// forwarded to (with the route cache cleared, so that a route matching it applies).
    pub service_header: Option<&'r str>,
}

/// What transparent mode decided about a captured request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Captured {
    /// The service the destination belongs to, when the index resolved one.
    pub service: Option<usize>,
    pub decision: transparent::Decision,
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
        headers.extend(settings.capture.as_ref().and_then(|c| c.service_header.clone()));
        headers.sort();
        headers.dedup();
        Router { headers, pin_header: settings.drain.pin_header.clone(), capture: settings.capture.clone() }
    }

    /// Whether requests matched to `cluster` are captured ones (a `capture.match_clusters` entry):
    /// their destination is the caller's own pick, to be read for [`Router::outbound`].
    pub fn captures(&self, cluster: Option<&str>) -> bool {
        match (&self.capture, cluster) {
            (Some(c), Some(cluster)) => c.match_clusters.iter().any(|m| m == cluster),
            _ => false,
        }
    }

    /// Decides an outbound request over `services` (the VM's own, whose views the pick refreshes).
    /// `index` is transparent mode's address index (for a captured request). `claim_trial(addr)`
    /// is asked only when an ejected member of the service is due for its trial: whether this VM
    /// takes it (a shared-data call). `scratch` is reused across calls.
    pub fn outbound<'r>(
        &'r self,
        services: &mut [Service],
        index: Option<&AddressIndex>,
        req: &Request<'_>,
        rng: &mut Rng,
        scratch: &mut Vec<usize>,
        claim_trial: &mut dyn FnMut(&str) -> bool,
    ) -> Decision<'r> {
        let strip = self.headers.iter().filter(|name| req.headers.contains(name)).map(String::as_str).collect();
        let mut decision =
            Decision { strip, route: Route::PassThrough, trial: None, captured: None, service_header: None };
        let (svc, primary) = match req.cluster.and_then(|c| service_for_cluster(services, c)) {
            Some(svc) => (svc, None),
            None if self.captures(req.cluster) => {
                let captured = captured(services, index, req, rng);
                decision.captured = Some(captured);
                let (svc, primary) = match captured.decision {
                    transparent::Decision::Keep { service, member } => (service, member),
                    transparent::Decision::Redirect { service, to, .. } => (service, to),
                    transparent::Decision::Untouched(_) => return decision,
                };
                decision.service_header = self.capture.as_ref().and_then(|c| c.service_header.as_deref());
                (svc, Some(primary))
            }
            None => return decision,
        };
        let pin = self.pin_header.as_deref().and_then(|p| req.headers.get(p));
        let Some(s) = services.get_mut(svc) else { return decision };
        let trial = take_trial(&mut s.view, claim_trial);
        // the trial of an ejected member goes first; a captured request's judged pick otherwise
        let first = trial.as_ref().map(|t| t.0).or(primary);
        decision.route = route(svc, &s.cfg, &mut s.view, pin, first, req.now_ms, rng, scratch);
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

/// Transparent mode's decision about a captured request: its destination looked up in `index`
/// (an address several services list is resolved by what the request names), then, for a member
/// or departed address of a corrected service whose `:path` is not excluded, the pick counted in
/// the service's estimate and judged by its corrector.
fn captured(services: &mut [Service], index: Option<&AddressIndex>, req: &Request<'_>, rng: &mut Rng) -> Captured {
    let untouched = |service, why| Captured { service, decision: transparent::Decision::Untouched(why) };
    let (Some(index), Some(addr)) = (index, req.destination.and_then(canonical_addr)) else {
        return untouched(None, Untouched::Unknown);
    };
    let path = req.headers.get(":path").unwrap_or_default();
    let lookup =
        index.lookup(&addr, |k| services.get(k).is_some_and(|s| names(s, req.headers.get(":authority"), path)));
    let found = match lookup {
        Lookup::Unknown => return untouched(None, Untouched::Unknown),
        Lookup::Ambiguous => return untouched(None, Untouched::Ambiguous),
        Lookup::Found(f) => f,
    };
    let Some(s) = services.get_mut(found.service) else { return untouched(None, Untouched::Unknown) };
    let (Some(t), Some(c)) = (s.cfg.transparent.as_ref(), s.correction.as_mut()) else {
        return untouched(Some(found.service), Untouched::NotCorrected);
    };
    if t.exclude_paths.iter().any(|x| path.starts_with(x.as_str())) {
        return untouched(Some(found.service), Untouched::Excluded);
    }
    c.pending.record(&addr);
    Captured { service: Some(found.service), decision: c.corrector.decide(found, &addr, &s.view.members, rng) }
}

/// Whether a request names service `s` (asked only for an address several services list): its
/// authority's host is the service's name or its registry name, or its `:path` starts with the
/// service's interface (a Triple or gRPC call, `/com.acme.Orders/Get`: a dotted name; a Dubbo
/// registry name `providers:com.acme.Orders:1.0.0:` names the interface second).
fn names(s: &Service, authority: Option<&str>, path: &str) -> bool {
    let (name, registry) = (s.cfg.name.as_str(), s.cfg.query.service.as_str());
    let host = authority.map(|a| {
        a.rsplit_once(':').map_or(a, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { a })
    });
    if host.is_some_and(|h| h == name || h == registry) {
        return true;
    }
    let interface = registry.strip_prefix("providers:").and_then(|r| r.split(':').next()).unwrap_or(registry);
    let first = path.strip_prefix('/').and_then(|p| p.split(['/', '?']).next()).unwrap_or_default();
    first.contains('.') && first == interface
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

/// original_dst with no membership yet: one of the service's `routing.no_membership_addresses`,
/// picked at random, or the `no_membership` refusal when it lists none.
fn no_membership_fallback(svc: usize, sc: &ServiceConfig, rng: &mut Rng) -> Route {
    let n = sc.no_membership_addresses.len();
    let k = if n > 1 { usize::try_from(rng.below(n as u64)).unwrap_or(0) } else { 0 };
    match sc.no_membership_addresses.get(k) {
        Some(addr) => Route::NoMembershipFallback { service: svc, value: addr.clone() },
        None => Route::Reject { service: Some(svc), reason: Reason::NoMembership },
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
        // original_dst to the operator's stable addresses, if any, else it has nowhere to go
        return match sc.routing {
            RoutingMode::OverrideHost => Route::PassThrough,
            RoutingMode::OriginalDst => no_membership_fallback(svc, sc, rng),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::instance::{Instance, State};

    fn sc(routing: &str) -> ServiceConfig {
        let json = format!(
            r#"{{"registries":{{"s":{{"type":"static","cluster":"cp","authority":"cp","path":"/x"}}}},
            "services":[{{"name":"demo","registry":"s","routing":{routing}}}]}}"#
        );
        config::parse(json.as_bytes()).unwrap().services.remove(0)
    }

    fn go(sc: &ServiceConfig, sv: &mut ServiceView, rng: &mut Rng) -> Route {
        route(0, sc, sv, None, None, 1_000, rng, &mut Vec::new())
    }

    #[test]
    fn no_membership_fallback_only_before_the_first_membership() {
        let sc = sc(r#"{"mode":"original_dst","no_membership_addresses":["10.96.0.10:8080","10.0.0.9:80"]}"#);
        let mut sv = ServiceView::new(&sc, 100);
        let mut rng = Rng::new(7);
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..1000 {
            match go(&sc, &mut sv, &mut rng) {
                Route::NoMembershipFallback { service: 0, value } => *seen.entry(value).or_insert(0) += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen.len(), 2, "both addresses: {seen:?}");
        assert!(seen.values().all(|n| (400..=600).contains(n)), "spread evenly: {seen:?}");
        // a membership is known: the members, never the fallback again, even when none serves
        sv.snap.version = 1;
        sv.members = vec![Instance {
            addr: "10.0.0.1:80".into(),
            weight: 100,
            start_ms: None,
            warmup_ms: 0,
            state: State::Serving,
        }];
        assert_eq!(go(&sc, &mut sv, &mut rng), Route::Forward { service: 0, value: "10.0.0.1:80".into() });
        sv.members[0].state = State::Draining;
        sv.balancer = crate::balancer::Balancer::new(sc.policy, sc.curve, 100);
        assert_eq!(go(&sc, &mut sv, &mut rng), Route::Reject { service: Some(0), reason: Reason::NoneServing });
        sv.members.clear();
        sv.balancer = crate::balancer::Balancer::new(sc.policy, sc.curve, 100);
        assert_eq!(go(&sc, &mut sv, &mut rng), Route::Reject { service: Some(0), reason: Reason::NoInstances });
    }

    #[test]
    fn without_fallback_addresses_no_membership_is_refused_or_passed_through() {
        let mut rng = Rng::new(7);
        let sc_dst = sc(r#"{"mode":"original_dst"}"#);
        let mut sv = ServiceView::new(&sc_dst, 100);
        assert_eq!(go(&sc_dst, &mut sv, &mut rng), Route::Reject { service: Some(0), reason: Reason::NoMembership });
        let sc_oh = sc(r#"{"mode":"override_host"}"#);
        let mut sv = ServiceView::new(&sc_oh, 100);
        assert_eq!(go(&sc_oh, &mut sv, &mut rng), Route::PassThrough, "the cluster's own hosts");
    }

    #[test]
    fn a_single_fallback_address_is_always_written() {
        let sc = sc(r#"{"mode":"original_dst","no_membership_addresses":["[::1]:8080"]}"#);
        let mut sv = ServiceView::new(&sc, 100);
        let mut rng = Rng::new(1);
        for _ in 0..10 {
            assert_eq!(
                go(&sc, &mut sv, &mut rng),
                Route::NoMembershipFallback { service: 0, value: "[::1]:8080".into() }
            );
        }
    }
}
