//! The routing decision for one request to one service: honour an operator's pin, pick by live
//! weight, add fallbacks (override_host), or refuse with a reason. O(log n) in instances.

use crate::balancer::NoPick;
use crate::clock::Rng;
use crate::config::{RoutingMode, ServiceConfig};
use crate::drain::{self, Pin, Reason};
use crate::view::ServiceView;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Not a service of ours: forward untouched (after routing headers were stripped).
    PassThrough,
    /// Set the service's routing header to `value` (the picked addresses, comma-separated,
    /// primary first) and forward.
    Forward { service: usize, value: String },
    /// Answer locally with 503.
    Reject { service: Option<usize>, reason: Reason },
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
