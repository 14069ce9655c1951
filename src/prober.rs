//! Active health checking, one service at a time, in the poller VM: which instance is due for a
//! probe, the probe request, and what its answer decides ([`crate::health::HealthCheck`]).
//! [`crate::vm::Vm`] dispatches the probes and shares the verdicts ([`crate::marks::set_health`]).

use crate::clock::FastMap as HashMap;

use crate::clock::Rng;
use crate::config::ServiceConfig;
use crate::health::{HealthCheck, ProbeState};
use crate::instance::Instance;
use crate::registry::HttpRequest;

/// The probes of one service's instances.
#[derive(Debug, Default)]
pub struct Prober {
    probes: HashMap<String, ProbeState>,
    /// The members known when this VM became the poller are not new: only later arrivals wait
    /// for their first passing check.
    seeded: bool,
}

/// A probe to send: the instance and the request.
#[derive(Debug, Clone)]
pub struct Probe {
    pub addr: String,
    pub request: HttpRequest,
}

impl Prober {
    /// Leadership was lost or regained: start afresh.
    pub fn reset(&mut self) {
        self.probes.clear();
        self.seeded = false;
    }

    /// Follows the registry's serving `members` and returns the probes due at `now_ms`, plus the
    /// members that just appeared (with `no_traffic_before_first_pass`, they are held out until
    /// their first pass). A new member's first probe goes out at once if it has to pass first,
    /// else at a random point of the first interval.
    pub fn due(
        &mut self,
        hc: &HealthCheck,
        sc: &ServiceConfig,
        members: &[Instance],
        now_ms: i64,
        rng: &mut Rng,
    ) -> (Vec<Probe>, Vec<String>) {
        let mut new = Vec::new();
        self.probes.retain(|addr, _| crate::instance::find(members, addr).is_some_and(|m| m.state.is_serving()));
        for m in members.iter().filter(|m| m.state.is_serving()) {
            if !self.probes.contains_key(&m.addr) {
                let first = if self.seeded && hc.no_traffic_before_first_pass {
                    new.push(m.addr.clone());
                    now_ms
                } else {
                    now_ms.saturating_add(rng.below(hc.interval_ms.max(1) as u64) as i64)
                };
                self.probes.insert(m.addr.clone(), ProbeState { next_due_ms: first, ..Default::default() });
            }
        }
        self.seeded = true;
        let mut out = Vec::new();
        for (addr, p) in self.probes.iter_mut() {
            if p.in_flight || now_ms < p.next_due_ms {
                continue;
            }
            p.in_flight = true;
            p.next_due_ms = now_ms.saturating_add(jittered(hc, rng));
            out.push(Probe { addr: addr.clone(), request: request(hc, sc, addr) });
        }
        (out, new)
    }

    /// The answer to `addr`'s probe (`status` `None`: none came). Returns the new verdict when it
    /// changed.
    pub fn on_reply(&mut self, hc: &HealthCheck, addr: &str, status: Option<u16>) -> Option<bool> {
        let p = self.probes.get_mut(addr)?;
        p.record(hc.passes(status), hc)
    }

    /// The probe could not be dispatched: due again after one interval.
    pub fn dispatch_failed(&mut self, addr: &str) {
        if let Some(p) = self.probes.get_mut(addr) {
            p.in_flight = false;
        }
    }

    /// The current verdict of `addr` (`None`: not decided yet, or not checked by this VM).
    pub fn verdict(&self, addr: &str) -> Option<bool> {
        self.probes.get(addr).and_then(|p| p.healthy)
    }
}

/// One interval with ± 10 % spread.
fn jittered(hc: &HealthCheck, rng: &mut Rng) -> i64 {
    let spread = hc.interval_ms / 10;
    if spread <= 0 {
        return hc.interval_ms;
    }
    hc.interval_ms - spread + rng.below((2 * spread + 1) as u64) as i64
}

/// `GET path` to `addr` through the service's routing cluster, with the routing header naming the
/// instance: the path a request takes.
pub fn request(hc: &HealthCheck, sc: &ServiceConfig, addr: &str) -> HttpRequest {
    let headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), hc.path.clone()),
        (":authority".to_string(), addr.to_string()),
        (sc.header.clone(), addr.to_string()),
        ("user-agent".to_string(), "lossless-health-check".to_string()),
    ];
    HttpRequest { headers, body: None, timeout_ms: hc.timeout_ms.max(1) as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::instance::State;

    fn sc() -> ServiceConfig {
        let json = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/x"}},
            "services":[{"name":"demo","registry":"s","health_check":{"path":"/health","interval_ms":1000}}]}"#;
        config::parse(json).unwrap().services.remove(0)
    }

    fn m(addr: &str, state: State) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: None, warmup_ms: 0, state }
    }

    #[test]
    fn one_probe_per_instance_per_interval_through_the_routing_header() {
        let sc = sc();
        let hc = sc.health_check.clone().unwrap();
        let mut p = Prober::default();
        let mut rng = Rng::new(1);
        let members =
            vec![m("10.0.0.1:80", State::Serving), m("10.0.0.2:80", State::Draining), m("10.0.0.3:80", State::Serving)];
        let mut sent: Vec<(i64, String)> = Vec::new();
        for t in (0..10_000).step_by(100) {
            let (probes, new) = p.due(&hc, &sc, &members, t, &mut rng);
            assert!(new.is_empty(), "members known at the start are not new");
            for probe in probes {
                assert_eq!(probe.request.header(":path"), Some("/health"));
                assert_eq!(probe.request.header("x-lossless-upstream"), Some(probe.addr.as_str()));
                assert_eq!(probe.request.header(":authority"), Some(probe.addr.as_str()));
                assert_eq!(probe.request.timeout_ms, 1000);
                assert_eq!(
                    p.on_reply(&hc, &probe.addr, Some(200)).is_some(),
                    sent.iter().all(|(_, a)| *a != probe.addr)
                );
                sent.push((t, probe.addr));
            }
        }
        for addr in ["10.0.0.1:80", "10.0.0.3:80"] {
            let n = sent.iter().filter(|(_, a)| a == addr).count();
            assert!((9..=11).contains(&n), "{addr}: {n} probes in 10 s at 1 s ± 10 %");
        }
        assert!(sent.iter().all(|(_, a)| a != "10.0.0.2:80"), "a draining instance is not probed");
    }

    #[test]
    fn new_members_wait_for_their_first_pass_when_asked() {
        let mut sc = sc();
        let mut hc = sc.health_check.clone().unwrap();
        hc.no_traffic_before_first_pass = true;
        sc.health_check = Some(hc.clone());
        let mut p = Prober::default();
        let mut rng = Rng::new(1);
        let one = vec![m("10.0.0.1:80", State::Serving)];
        let (_, new) = p.due(&hc, &sc, &one, 0, &mut rng);
        assert!(new.is_empty());
        let two = vec![m("10.0.0.1:80", State::Serving), m("10.0.0.2:80", State::Serving)];
        let (probes, new) = p.due(&hc, &sc, &two, 100, &mut rng);
        assert_eq!(new, vec!["10.0.0.2:80".to_string()]);
        assert!(probes.iter().any(|x| x.addr == "10.0.0.2:80"), "its first probe goes out at once");
        assert_eq!(p.on_reply(&hc, "10.0.0.2:80", Some(200)), Some(true));
        // gone from the registry: forgotten
        p.due(&hc, &sc, &one, 200, &mut rng);
        assert_eq!(p.verdict("10.0.0.2:80"), None);
        assert_eq!(p.on_reply(&hc, "10.0.0.2:80", Some(200)), None);
    }
}
