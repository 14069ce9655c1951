//! The request path inside the VM: an admin call goes to the admin endpoints; inbound, whether
//! the instance takes the request; outbound, the routing decision ([`crate::router`]) applied.

use log::{info, warn};

use super::{Exchange, Flow, Host, Ticket, Vm};
use crate::admin;
use crate::admission::{self, Admit};
use crate::config::Mode;
use crate::drain::{local_reply, Reason};
use crate::marks;
use crate::router::{self, Decision, Request, Route, Trial};

impl Vm {
    /// Decides what happens to a request: an admin call, a local 503, or a forward with the
    /// routing header set. Client-sent routing headers are always removed (outbound). The
    /// decision is the router's ([`crate::router`]); this gathers its facts and applies it.
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
            let rejecting = self.view.self_drain.rejecting(now, self.settings.drain.notify_grace_ms);
            let (keys, cap) = (&self.keys, self.admission.as_ref());
            let (route, admit) = router::inbound(service, rejecting, self.view.not_ready, || {
                cap.map(|rule| admission::check(h, &keys.admission(), rule, h.clock_ms()))
            });
            match admit {
                Some(Admit::Yes) => self.stats.admission_admitted += 1,
                Some(Admit::Unsure) => self.stats.admission_unsure += 1,
                Some(Admit::No) | None => {}
            }
            return self.apply(h, ex, route, None);
        }
        let cluster = h.property(&["xds", "cluster_name"]);
        // transparent mode: a captured request's destination is the caller's own pick
        let destination =
            if self.router.captures(cluster.as_deref()) { h.property(&["destination", "address"]) } else { None };
        let req = Request {
            headers: &headers,
            cluster: cluster.as_deref(),
            destination: destination.as_deref(),
            now_ms: now,
        };
        let keys = &self.keys;
        let index = self.capture.as_ref().map(|c| &c.index);
        let Decision { strip, route, trial, captured, service_header } =
            self.router.outbound(&mut self.services, index, &req, &mut self.rng, &mut self.scratch, &mut |addr| {
                marks::claim_trial(h, keys, addr, now)
            });
        for name in strip {
            if !h.set_request_header(name, None) {
                warn!("cannot remove the client's routing header '{name}'");
            }
            self.stats.client_header_stripped += 1;
        }
        if let Some(c) = &captured {
            super::capture::count_captured(&mut self.services, self.capture.as_mut(), c);
        }
        if let (Some(name), Route::Forward { service, .. }) = (service_header, &route) {
            // the route that matches the service's name takes the request to the service's own
            // cluster (the Istio recipe); Envoy matches the route again once asked
            let svc = self.services.get(*service).map(|s| s.cfg.name.as_str()).unwrap_or_default();
            if !h.set_request_header(name, Some(svc)) || !h.clear_route_cache() {
                warn!("cannot set '{name}' on a captured request or match its route again");
            }
        }
        if let Some(t) = &trial {
            if let Some(s) = self.services.get_mut(t.service) {
                s.stats.ejection_trials += 1;
                info!("service '{}': {} was ejected; one trial request goes to it", s.cfg.name, t.addr);
            }
        }
        let flow = self.apply(h, ex, route, trial);
        if ex.service.is_some_and(|svc| self.stall_tracks(svc, &headers)) {
            // stall detection: pending on the primary from the request's last byte on
            ex.stall.set(Ticket::Waiting);
        }
        flow
    }

    /// Applies a route: the routing header set and the exchange noted, or the local reply.
    fn apply(&mut self, h: &dyn Host, ex: &mut Exchange, route: Route, trial: Option<Trial>) -> Flow {
        match route {
            Route::PassThrough => Flow::Continue,
            Route::Forward { service, value } => {
                let Some(s) = self.services.get_mut(service) else { return Flow::Continue };
                if !h.set_request_header(&s.cfg.header, Some(&value)) {
                    warn!("cannot set routing header '{}' for service '{}'", s.cfg.header, s.cfg.name);
                }
                s.stats.picks += 1;
                ex.service = Some(service);
                ex.trial = trial.is_some_and(|t| t.first);
                ex.written = value;
                Flow::Continue
            }
            Route::NoMembershipFallback { service, value } => {
                // not a member: the answer is not judged, nor the request tracked
                let Some(s) = self.services.get_mut(service) else { return Flow::Continue };
                if !h.set_request_header(&s.cfg.header, Some(&value)) {
                    warn!("cannot set routing header '{}' for service '{}'", s.cfg.header, s.cfg.name);
                }
                s.stats.no_membership_fallback += 1;
                Flow::Continue
            }
            Route::Reject { service, reason } => self.reject(ex, service, reason),
        }
    }

    pub(super) fn reject(&mut self, ex: &mut Exchange, service: Option<usize>, reason: Reason) -> Flow {
        if let Some(s) = service.and_then(|i| self.services.get_mut(i)) {
            s.stats.local_503(reason);
        }
        ex.local = true;
        Flow::Reply(local_reply(reason, &self.settings.drain))
    }
}

#[cfg(test)]
mod tests {
    use crate::membership::Snapshot;
    use crate::store::Shared;
    use crate::store::{bump_gen, FakeShared};
    use crate::vm::testing::*;
    use crate::vm::{Exchange, Flow};

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
            w.vm.on_request_end(&h, &ex);
            let on_req = h.total() - shared_before;
            let mut h = host(&w.shared, NOW, &[], cluster);
            h.props.push(("upstream.address", "10.0.0.1:80".into()));
            *h.resp.borrow_mut() =
                resp.unwrap_or_default().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let before = h.total();
            w.vm.on_response(&h, &ex);
            (on_req, h.total() - before)
        };
        let routed = count(&mut w, &[(":path", "/x")], Some("demo"), Some(&[(":status", "200")]));
        let other = count(&mut w, &[(":path", "/x")], Some("other"), None);
        println!("host calls, routed request: {} on the request, {} on the response", routed.0, routed.1);
        println!("host calls, request to another cluster: {} on the request, {} on the response", other.0, other.1);
        // the request's headers (:path, routing headers, pin), the generation, the cluster, the
        // routing header set; at its end, the clock (stall detection: when it went)
        assert!(routed.0 <= 5, "{routed:?}");
        // the response's headers (drain header, attempt count, :status), the clock (when it came)
        assert!(routed.1 <= 2, "{routed:?}");
        assert!(other.0 <= 3 && other.1 == 0, "{other:?}");
    }

    /// original_dst with `no_membership_addresses`: before any membership the pick is one of
    /// them (counted, not judged); once a membership is known it is never used again.
    #[test]
    fn no_membership_addresses_until_the_first_membership() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","routing":{"mode":"original_dst","no_membership_addresses":["10.96.0.10:8080"]}}]}"#;
        let mut w = World::new(cfg);
        let h = host(&w.shared, NOW, &[(":path", "/x"), ("x-lossless-upstream", "169.254.169.254:80")], Some("demo"));
        let mut ex = Exchange::default();
        assert_eq!(w.vm.on_request(&h, &mut ex), Flow::Continue);
        let written: Vec<(String, String)> =
            h.req.borrow().iter().filter(|(k, _)| k == "x-lossless-upstream").cloned().collect();
        assert_eq!(written, [("x-lossless-upstream".to_string(), "10.96.0.10:8080".to_string())]);
        assert_eq!((ex.service, ex.written.as_str()), (None, ""), "not a member: its answer is not judged");
        assert_eq!(w.route("demo", None, NOW).unwrap(), "10.96.0.10:8080");
        let s = &w.vm.services[0].stats;
        assert_eq!((s.no_membership_fallback, s.picks, s.local_503), (2, 0, [0; 7]));
        w.refresh(THREE, NOW);
        for _ in 0..50 {
            let v = w.route("demo", None, NOW).unwrap();
            assert!(v.starts_with("10.0.0.") && !v.contains(','), "{v}");
        }
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","state":"draining"}]}"#, NOW + 2000);
        let r = w.route("demo", None, NOW + 2000).unwrap_err();
        assert_eq!((r.status, reason(&r)), (503, "none_serving"), "a known membership, none serving: as before");
        assert_eq!(w.vm.services[0].stats.no_membership_fallback, 2);
    }
}
