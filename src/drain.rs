//! Drain decisions and the local reply that tells a caller to go elsewhere.

use crate::config::DrainConfig;
use crate::instance::{Instance, State};

/// Value of the drain header on a response that was served (work done) by a draining instance.
/// Refusals carry their [`Reason`] instead; only those are safe to retry.
pub const SERVED_WHILE_DRAINING: &str = "draining";

/// Why a request is answered locally with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The service has no instances.
    NoInstances,
    /// No membership is known yet (the registry has not answered since Envoy started) and the
    /// routing mode has no fallback of Envoy's own (`original_dst`).
    NoMembership,
    /// Every instance is draining or down.
    NoneServing,
    /// The request is pinned to an instance that is draining or down.
    PinnedDraining,
    /// Inbound: this instance is draining itself.
    SelfDraining,
    /// Inbound: over this second's admission cap (Sentinel's flow control: `FlowException`).
    FlowLimited,
    /// Inbound with `registration`: the application is not ready (or not yet warm) to take
    /// traffic; the sidecar has not registered it.
    NotReady,
}

impl Reason {
    /// Stable name, used in the reply header and stat names.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoInstances => "no_instances",
            Reason::NoMembership => "no_membership",
            Reason::NoneServing => "none_serving",
            Reason::PinnedDraining => "pinned_draining",
            Reason::SelfDraining => "self_draining",
            Reason::FlowLimited => "flow_limited",
            Reason::NotReady => "not_ready",
        }
    }

    pub const ALL: [Reason; 7] = [
        Reason::NoInstances,
        Reason::NoMembership,
        Reason::NoneServing,
        Reason::PinnedDraining,
        Reason::SelfDraining,
        Reason::FlowLimited,
        Reason::NotReady,
    ];

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        match self {
            Reason::NoInstances => 0,
            Reason::NoMembership => 1,
            Reason::NoneServing => 2,
            Reason::PinnedDraining => 3,
            Reason::SelfDraining => 4,
            Reason::FlowLimited => 5,
            Reason::NotReady => 6,
        }
    }
}

/// Whether a drain header `value` on an upstream's response says that the upstream itself is
/// draining: any value (an application may send its own, e.g. `true`) except the reasons a
/// caller-side lossless gives for its own local replies (`no_instances`, `no_membership`,
/// `none_serving`, `pinned_draining`), which describe that proxy's view of its upstreams, not the
/// proxy going away, and an instance's `flow_limited` and `not_ready` (it is starting or warming
/// up, not leaving).
/// `draining` (served) and `self_draining` (refused) are notices.
pub fn is_drain_notice(value: &str) -> bool {
    let v = value.trim();
    !Reason::ALL.iter().any(|r| *r != Reason::SelfDraining && r.as_str() == v)
}

/// The instance's own refusals: answered before any work, so a retry policy may resend the
/// request elsewhere, POSTs included. The shipped retry policies match exactly these values
/// ([`REFUSALS_REGEX`]).
pub const REFUSALS: [Reason; 3] = [Reason::SelfDraining, Reason::FlowLimited, Reason::NotReady];

/// The RE2 pattern of [`REFUSALS`] in the shipped retry policies (`retriable_headers`).
pub const REFUSALS_REGEX: &str = "self_draining|flow_limited|not_ready";

/// Whether a drain header `value` is one of an instance's [`REFUSALS`].
pub fn is_refusal(value: &str) -> bool {
    let v = value.trim();
    REFUSALS.iter().any(|r| r.as_str() == v)
}

/// A local reply to send instead of forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The 503 for `reason`: `retry-after` and the drain header naming the reason (so a caller's retry
/// policy can retry it safely: nothing was done).
pub fn local_reply(reason: Reason, d: &DrainConfig) -> LocalReply {
    let headers = vec![
        ("retry-after".to_string(), d.retry_after_s.to_string()),
        (d.header.clone(), reason.as_str().to_string()),
        ("content-type".to_string(), "text/plain".to_string()),
    ];
    let body = match reason {
        Reason::NoInstances => "lossless: the service has no instances\n",
        Reason::NoMembership => {
            "lossless: no membership yet (the registry has not answered since this proxy started)\n"
        }
        Reason::NoneServing => "lossless: every instance of the service is draining or down\n",
        Reason::PinnedDraining => "lossless: the pinned instance is draining; retry without the pin\n",
        Reason::SelfDraining => "lossless: this instance is draining; retry elsewhere\n",
        Reason::FlowLimited => "lossless: this instance is warming up and at its admission cap; retry elsewhere\n",
        Reason::NotReady => "lossless: this instance is not ready yet; retry elsewhere\n",
    };
    LocalReply { status: 503, headers, body: body.to_string() }
}

/// What a pin header asks for, given the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// No pin, or a pin to an address that is not a member: route by weight (a client can never
    /// steer traffic outside the membership).
    Ignore,
    /// A serving member: route to it first.
    Serving(usize),
    /// A member that is draining or down: 503.
    Draining,
}

/// Looks a pinned address up in the (sorted) membership.
pub fn pin(members: &[Instance], value: Option<&str>) -> Pin {
    let Some(addr) = value.and_then(crate::instance::canonical_addr) else {
        return Pin::Ignore;
    };
    match crate::instance::position(members, &addr).and_then(|i| members.get(i).map(|m| (i, m.state))) {
        Some((i, State::Serving)) => Pin::Serving(i),
        Some(_) => Pin::Draining,
        None => Pin::Ignore,
    }
}

/// Inbound self-drain: what this instance knows about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelfDrain {
    /// The registry has listed this instance as serving at least once. Until then its absence
    /// means "not registered yet", not "offline".
    pub seen_serving: bool,
    /// The registry's current word: offline (draining, down or gone after having been seen).
    pub registry_offline: bool,
    /// The local drain endpoint was called.
    pub manual: bool,
    /// When this VM first saw the drain (ms since epoch).
    pub since_ms: Option<i64>,
    /// The sidecar registers the instance itself (`inbound.registration`): its absence from the
    /// registry is the sidecar's own doing (not yet registered, or deregistered) and a
    /// registry's "unhealthy" is about the heartbeats, neither is a drain; only an explicit
    /// offline listed as such (Eureka `OUT_OF_SERVICE`, a drain metadata flag) is, and it lasts
    /// until the registry lists the instance as serving again. Nacos lists a disabled instance
    /// by leaving it out, so there the drain is the drain endpoint (the preStop hook).
    pub sidecar_registers: bool,
}

impl SelfDrain {
    /// Updates from a membership refresh and the manual flag, at `now_ms`.
    pub fn update(&mut self, members: &[Instance], self_addr: &str, manual: bool, now_ms: i64) {
        self.manual = manual;
        self.observe(members, self_addr);
        match (self.draining(), self.since_ms) {
            (true, None) => self.since_ms = Some(now_ms),
            (false, Some(_)) => self.since_ms = None,
            _ => {}
        }
    }

    /// Draining and past the notify grace: new requests get 503. Within the grace, requests are
    /// still served and every response carries the drain header, so each caller learns of the
    /// drain from a normal response (its retry policy never hides it) and stops sending.
    pub fn rejecting(&self, now_ms: i64, grace_ms: i64) -> bool {
        self.draining() && self.since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= grace_ms)
    }

    fn observe(&mut self, members: &[Instance], self_addr: &str) {
        match crate::instance::find(members, self_addr) {
            Some(m) if m.state == State::Serving => {
                self.seen_serving = true;
                self.registry_offline = false;
            }
            // the registry's health verdict (Nacos healthy=false: beats came late) is about the
            // registration the sidecar keeps alive, not a drain; an explicit offline is
            Some(m) if self.sidecar_registers && m.state != State::Draining => {}
            Some(_) => self.registry_offline = true,
            None if self.sidecar_registers => {}
            None => self.registry_offline = self.seen_serving,
        }
    }

    pub fn draining(&self) -> bool {
        self.manual || self.registry_offline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DrainConfig {
        DrainConfig {
            header: "x-lossless-drain".into(),
            retry_after_s: 2,
            pin_header: Some("x-pin".into()),
            notify: true,
            notify_grace_ms: 0,
        }
    }

    fn i(addr: &str, state: State) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: None, warmup_ms: 0, state }
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn reply_shape() {
        let r = local_reply(Reason::SelfDraining, &cfg());
        assert_eq!(r.status, 503);
        assert!(r.headers.contains(&("retry-after".into(), "2".into())));
        assert!(r.headers.contains(&("x-lossless-drain".into(), "self_draining".into())));
        let r = local_reply(Reason::NoneServing, &cfg());
        assert!(r.headers.contains(&("x-lossless-drain".into(), "none_serving".into())));
        assert!(r.body.contains("draining or down"));
    }

    #[test]
    fn pins() {
        let ms =
            vec![i("10.0.0.1:80", State::Serving), i("10.0.0.2:80", State::Draining), i("10.0.0.3:80", State::Down)];
        assert_eq!(pin(&ms, None), Pin::Ignore);
        assert_eq!(pin(&ms, Some("10.0.0.1:80")), Pin::Serving(0));
        assert_eq!(pin(&ms, Some(" 10.0.0.2:80")), Pin::Draining);
        assert_eq!(pin(&ms, Some("10.0.0.3:80")), Pin::Draining);
        assert_eq!(pin(&ms, Some("169.254.169.254:80")), Pin::Ignore);
        assert_eq!(pin(&ms, Some("garbage")), Pin::Ignore);
    }

    #[test]
    fn self_drain_with_sidecar_registration_reads_only_explicit_offline() {
        let me = |state| i("10.0.0.1:80", state);
        let mut s = SelfDrain { sidecar_registers: true, ..SelfDrain::default() };
        s.update(&[], "10.0.0.1:80", false, 0);
        assert!(!s.draining(), "not registered yet");
        s.update(&[me(State::Serving)], "10.0.0.1:80", false, 1);
        s.update(&[me(State::Down)], "10.0.0.1:80", false, 2);
        assert!(!s.draining(), "unhealthy in the registry: the heartbeats' business");
        s.update(&[], "10.0.0.1:80", false, 3);
        assert!(!s.draining(), "deregistered by the sidecar itself");
        s.update(&[me(State::Draining)], "10.0.0.1:80", false, 4);
        assert!(s.draining(), "OUT_OF_SERVICE or a drain flag");
        s.update(&[], "10.0.0.1:80", false, 5);
        assert!(s.draining(), "and it holds while the sidecar deregisters it");
        s.update(&[me(State::Serving)], "10.0.0.1:80", false, 6);
        assert!(!s.draining());
    }

    #[test]
    fn self_drain_follows_registry_after_first_sighting() {
        let me = "10.0.0.1:80";
        let mut s = SelfDrain::default();
        s.observe(&[], me);
        assert!(!s.draining(), "not registered yet is not offline");
        s.observe(&[i(me, State::Serving)], me);
        assert!(!s.draining());
        s.observe(&[], me);
        assert!(s.draining(), "gone after being seen: offline (Nacos drops disabled instances)");
        s.observe(&[i(me, State::Serving)], me);
        assert!(!s.draining());
        s.observe(&[i(me, State::Draining)], me);
        assert!(s.draining());
        s.observe(&[i(me, State::Serving)], me);
        s.manual = true;
        assert!(s.draining());
    }

    #[test]
    fn grace_then_reject() {
        let me = "10.0.0.1:80";
        let serving = [i(me, State::Serving)];
        let mut s = SelfDrain::default();
        s.update(&serving, me, false, 1000);
        assert!(!s.draining() && !s.rejecting(5000, 2000));
        s.update(&serving, me, true, 2000);
        assert!(s.draining());
        assert!(!s.rejecting(3999, 2000), "within the grace: served, with the drain header");
        assert!(s.rejecting(4000, 2000));
        // the time of the first sighting is kept across refreshes
        s.update(&serving, me, true, 3000);
        assert_eq!(s.since_ms, Some(2000));
        s.update(&serving, me, false, 5000);
        assert!(!s.draining() && s.since_ms.is_none());
        assert!(!s.rejecting(9000, 0));
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// Every shipped retry policy resends exactly the instance's refusals: the pattern each one
    /// matches is [`REFUSALS_REGEX`], and it matches each [`REFUSALS`] value and nothing served.
    #[test]
    fn retry_policies_match_the_refusals() {
        for (name, text) in [
            ("outbound-override-host.yaml", include_str!("../envoy/outbound-override-host.yaml")),
            ("outbound-original-dst.yaml", include_str!("../envoy/outbound-original-dst.yaml")),
            ("compose/gateway.yaml", include_str!("../envoy/compose/gateway.yaml")),
            ("istio/envoyfilter-orders.yaml", include_str!("../envoy/istio/envoyfilter-orders.yaml")),
        ] {
            assert!(text.contains(&format!("regex: \"{REFUSALS_REGEX}\"")), "{name}");
            assert!(!text.contains("exact: self_draining"), "{name}");
        }
        let alternatives: Vec<&str> = REFUSALS_REGEX.split('|').collect();
        let refusals: Vec<&str> = REFUSALS.iter().map(|r| r.as_str()).collect();
        assert_eq!(alternatives, refusals);
        assert!(!is_refusal(SERVED_WHILE_DRAINING) && is_drain_notice(SERVED_WHILE_DRAINING));
        assert!(is_refusal("self_draining") && is_drain_notice("self_draining"));
        for r in [Reason::FlowLimited, Reason::NotReady] {
            assert!(is_refusal(r.as_str()) && !is_drain_notice(r.as_str()), "{r:?}");
        }
    }
}
