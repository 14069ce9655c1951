//! Transparent mode: lossless in the *caller's* outbound sidecar corrects the caller's own pick of
//! an instance.
//!
//! Callers with a client-side load balancer (Spring Cloud LoadBalancer, Ribbon, Dubbo) pick
//! `ip:port` themselves from a list that is 30 s to 4 min old, and send straight to it. Captured
//! by the sidecar (Istio's iptables `REDIRECT` to the outbound capture port, Envoy's
//! `original_dst` listener filter restoring the original destination), the request reaches
//! lossless with that pick as Envoy's `destination.address`. In this mode lossless:
//!
//! 1. looks the destination up in every configured service's membership ([`index`]), departed
//!    addresses included ([`departed`]): an address outside every membership, or one several
//!    services share that the request does not disambiguate, passes untouched;
//! 2. keeps a pick of a serving instance, moves a pick of a draining, down, ejected or departed
//!    one to a serving member of the same service, and keeps a pick of a warming instance with
//!    the probability that makes every instance's final share equal Dubbo's warm-up share
//!    whatever the callers' own pick distribution ([`shares`] has the algebra and its proof,
//!    [`correct`] the decision);
//! 3. estimates that pick distribution from the traffic itself, process-wide ([`estimate`]).
//!
//! Everything here is pure logic; the glue reads `destination.address` and hands the decision to
//! the routing that every routed request already has (the routing header, its fallbacks, the
//! retries of an unreached attempt, outlier detection on the response).
//! `docs/transparent-mode.md` describes the mode for operators.

pub mod correct;
pub mod departed;
pub mod estimate;
pub mod index;
pub mod shares;
pub mod state;

pub use correct::{decide, Corrector, Decision, Untouched, Why};
pub use departed::Departed;
pub use estimate::{flush, Pending, Picks};
pub use index::{AddressIndex, Found, Lookup, Source};
pub use shares::Plan;
pub use state::{Capture, Corrected};

/// Eureka: how long a departed address is remembered by default (ms). The longest chain of
/// caches a Spring Cloud caller on Eureka may hold an address through: lease expiry 90 s
/// (`eureka.instance.lease-expiration-duration-in-seconds`), the server's eviction task every
/// 60 s (`eureka.server.eviction-interval-timer-in-ms`), its read-only response cache 30 s
/// (`response-cache-update-interval-ms`), the client's registry fetch 30 s
/// (`eureka.client.registry-fetch-interval-seconds`) and Ribbon's server list 30 s
/// (`ServerListRefreshInterval`): 240 s.
pub const EUREKA_DEPARTED_TTL_MS: i64 = 240_000;

/// Nacos, Consul and static lists: how long a departed address is remembered by default (ms).
/// The client learns the change from the registry at once or within seconds (Nacos 2 pushes over
/// gRPC; Nacos 1 clients poll every 10 s), then Spring Cloud LoadBalancer keeps its list 35 s
/// (`spring.cloud.loadbalancer.cache.ttl`) or Ribbon 30 s: 45 s at most, remembered 60 s.
pub const DEFAULT_DEPARTED_TTL_MS: i64 = 60_000;

/// The settings of the mode for one service (defaults in [`Settings::for_registry`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How long an address that left the membership is still corrected (ms, >= 0; 0 forgets at
    /// once). Long enough to outlive the callers' caches; the longer, the longer a reused address
    /// of a service lossless does not know is taken for the departed one (an address any
    /// configured service lists is never taken for a departed one).
    pub departed_ttl_ms: i64,
    /// Half-life of the pick estimate (ms, > 0): longer is steadier at low request rates, shorter
    /// follows the callers' list changes sooner. The default, 500 ms, keeps the overshoot after a
    /// caller's own list changed (Spring Cloud LoadBalancer's cache expiring with a new instance
    /// in it) to about a second; 2 s would make it four (`docs/transparent-mode.md`).
    pub estimate_half_life_ms: i64,
    /// Pseudo-picks by weight the estimate starts from (>= 0): with little evidence a pick stays.
    pub prior_picks: f64,
    /// How often a VM adds its picks to the shared estimate and replans (ms, > 0).
    pub replan_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            departed_ttl_ms: DEFAULT_DEPARTED_TTL_MS,
            estimate_half_life_ms: 500,
            prior_picks: 5.0,
            replan_ms: 200,
        }
    }
}

impl Settings {
    /// The defaults for a service in a registry of this kind (`"eureka"`, `"nacos"`, `"consul"`,
    /// `"static"`): only the departed TTL differs.
    pub fn for_registry(kind: &str) -> Settings {
        let departed_ttl_ms = if kind == "eureka" { EUREKA_DEPARTED_TTL_MS } else { DEFAULT_DEPARTED_TTL_MS };
        Settings { departed_ttl_ms, ..Settings::default() }
    }

    /// Checks the ranges; the error names the field (relative to the service's `transparent`
    /// object) and says what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(0..=3_600_000).contains(&self.departed_ttl_ms) {
            return Err(("departed_ttl_ms", "must be 0..=3600000 (ms)"));
        }
        if !(100..=600_000).contains(&self.estimate_half_life_ms) {
            return Err(("estimate_half_life_ms", "must be 100..=600000 (ms)"));
        }
        if !(self.prior_picks.is_finite() && (0.0..=1e6).contains(&self.prior_picks)) {
            return Err(("prior_picks", "must be a number in 0..=1000000"));
        }
        if !(10..=10_000).contains(&self.replan_ms) {
            return Err(("replan_ms", "must be 10..=10000 (ms)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_checked() {
        for k in ["eureka", "nacos", "consul", "static"] {
            assert_eq!(Settings::for_registry(k).validate(), Ok(()));
        }
        assert_eq!(Settings::for_registry("eureka").departed_ttl_ms, 240_000);
        assert_eq!(Settings::for_registry("nacos").departed_ttl_ms, 60_000);
        let bad = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.validate().unwrap_err().0
        };
        assert_eq!(bad(|s| s.departed_ttl_ms = -1), "departed_ttl_ms");
        assert_eq!(bad(|s| s.estimate_half_life_ms = 0), "estimate_half_life_ms");
        assert_eq!(bad(|s| s.prior_picks = f64::NAN), "prior_picks");
        assert_eq!(bad(|s| s.replan_ms = 0), "replan_ms");
    }
}
