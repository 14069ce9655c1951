//! Active health checks inside the VM (opt-in per service): the probes due, sent through the
//! service's routing cluster, and the verdict an answer changes, shared with every VM.

use log::info;

use super::{Dispatch, Purpose, Vm};
use crate::clock::Rng;
use crate::marks;
use crate::service::Service;
use crate::store::{Keys, Shared};

/// The probes of service `i` (`s`) due at `now_ms`, appended to `out`; a member that just
/// appeared and must pass first (`no_traffic_before_first_pass`) is held out for every VM.
pub(super) fn probes_due(
    i: usize,
    s: &mut Service,
    shared: &dyn Shared,
    keys: &Keys,
    now_ms: i64,
    rng: &mut Rng,
    out: &mut Vec<Dispatch>,
) {
    let (Some(hc), Some(cluster)) = (&s.cfg.health_check, s.cfg.match_clusters.first()) else { return };
    let (probes, new) = s.prober.due(hc, &s.cfg, &s.view.snap.members, now_ms, rng);
    for addr in new {
        if let Some(m) = crate::instance::find(&s.view.snap.members, &addr) {
            marks::set_health(shared, keys, m, false);
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

impl Vm {
    /// A probe of `addr` answered `status` (`None`: no answer).
    pub(super) fn on_probe_reply(
        &mut self,
        shared: &dyn Shared,
        svc: usize,
        addr: &str,
        status: Option<u16>,
        now_ms: i64,
    ) {
        let Some(s) = self.services.get_mut(svc) else { return };
        let Some(hc) = &s.cfg.health_check else { return };
        let passed = hc.passes(status);
        if passed {
            s.stats.health_check_success += 1;
        } else {
            s.stats.health_check_failure += 1;
        }
        let verdict = s.prober.on_reply(hc, addr, status);
        if passed {
            // an answer: a stalled instance is back
            self.answered(shared, svc, addr, now_ms);
        }
        let Some(healthy) = verdict else { return };
        let Some(s) = self.services.get_mut(svc) else { return };
        let Some(m) = crate::instance::find(&s.view.snap.members, addr) else { return };
        if marks::set_health(shared, &self.keys, m, healthy) {
            let verdict = if healthy { "passes: it gets traffic" } else { "fails: no new requests go to it" };
            info!("service '{}': the health check of {addr} {verdict}", s.cfg.name);
            self.sync(shared, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::instance::State;
    use crate::registry::HttpResponse;
    use crate::vm::testing::*;
    use crate::vm::{Purpose, Vm};
    use crate::{clock::Rng, config};

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
}
