//! Transparent mode inside the VM ([`crate::transparent`]): the address index and every
//! corrected service's plan kept current (after each sync, on the tick), the process-wide pick
//! estimate flushed, the poller's record of departed addresses, and the counters of captured
//! requests. The request decision itself is the router's ([`crate::router::Router::outbound`]).

use super::{Vm, TICK_MS};
use crate::instance::Instance;
use crate::router::Captured;
use crate::store::Shared;
use crate::transparent::index::Source;
use crate::transparent::{state, Decision, Departed};

impl Vm {
    /// After a sync that found something new: every corrected service's departed addresses
    /// re-read (one small read each, decoded only when they moved), the address index rebuilt
    /// when an address may have changed (`loaded`: a snapshot changed; a departed record moved or
    /// ran out), and every corrected service replanned for its rebuilt view.
    pub(super) fn capture_sync(&mut self, shared: &dyn Shared, loaded: bool, now_ms: i64) {
        let Some(cap) = self.capture.as_mut() else { return };
        let mut changed = loaded || now_ms >= cap.rebuild_at_ms;
        for s in &mut self.services {
            if let Some(c) = s.correction.as_mut() {
                changed |= c.load_departed(shared, &self.keys.departed(&s.cfg.name));
            }
        }
        if changed {
            rebuild_index(cap, &self.services, now_ms);
        }
        for s in &mut self.services {
            if let (Some(c), Some(t)) = (s.correction.as_mut(), s.cfg.transparent.as_ref()) {
                c.replan(&s.view.members, &s.view.balancer, t.settings.prior_picks, now_ms);
            }
        }
    }

    /// The tick's part: each corrected service whose `replan_ms` is over adds this VM's picks to
    /// the shared estimate and replans from the aggregate, with the weights of now; the index is
    /// rebuilt when a departed address's time ran out.
    pub(super) fn capture_tick(&mut self, shared: &dyn Shared, now_ms: i64) {
        let Some(cap) = self.capture.as_mut() else { return };
        if now_ms >= cap.rebuild_at_ms {
            rebuild_index(cap, &self.services, now_ms);
        }
        for s in &mut self.services {
            let (Some(c), Some(t)) = (s.correction.as_mut(), s.cfg.transparent.as_ref()) else { continue };
            if now_ms < c.next_flush_ms {
                continue;
            }
            c.next_flush_ms = now_ms.saturating_add(t.settings.replan_ms);
            // a slot counts in full until its VM's next flush is overdue: one interval, plus a
            // tick and as much again for a late one
            let grace_ms = t.settings.replan_ms.saturating_mul(2).saturating_add(TICK_MS);
            let key = self.keys.picks(&s.cfg.name);
            c.flush(shared, &key, self.vm_id, now_ms, grace_ms, t.settings.estimate_half_life_ms);
            // warm-up weights move with the clock
            s.view.balancer.refresh_if_due(&s.view.members, now_ms, &mut self.rng);
            c.replan(&s.view.members, &s.view.balancer, t.settings.prior_picks, now_ms);
        }
    }

    /// The poller published `next` for service `svc` in place of `prev`: the addresses that left
    /// are recorded for every VM (before the generation is bumped, so that VMs read both together).
    pub(super) fn record_departures(
        &self,
        shared: &dyn Shared,
        svc: usize,
        prev: &[Instance],
        next: &[Instance],
        now_ms: i64,
    ) {
        let Some(s) = self.services.get(svc) else { return };
        let Some(t) = s.cfg.transparent.as_ref() else { return };
        let key = self.keys.departed(&s.cfg.name);
        if !state::record_departures(shared, &key, prev, next, now_ms, t.settings.departed_ttl_ms)
            && prev.iter().any(|m| crate::instance::position(next, &m.addr).is_none())
            && t.settings.departed_ttl_ms > 0
        {
            log::warn!("service '{}': cannot record the departed addresses in shared data", s.cfg.name);
        }
    }

    /// Each corrected service's plan's redirected share, in per mille (for its gauge).
    pub fn correction_gauges(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.services.iter().enumerate().filter_map(|(i, s)| {
            let share = s.correction.as_ref()?.corrector.plan().redirected_share();
            Some((i, (share.clamp(0.0, 1.0) * 1000.0).round() as u64))
        })
    }
}

/// Rebuilds `cap`'s index over every service (the uncorrected ones too: a live mapping wins).
fn rebuild_index(cap: &mut crate::transparent::Capture, services: &[crate::service::Service], now_ms: i64) {
    let none = Departed::default();
    let sources: Vec<Source<'_>> = services
        .iter()
        .map(|s| Source {
            members: &s.view.members,
            departed: s.correction.as_ref().map_or(&none, |c| &c.departed),
            corrected: s.correction.is_some(),
        })
        .collect();
    cap.rebuild(&sources, now_ms);
}

/// Counts what transparent mode decided about a captured request: with the corrected service it
/// resolved to, else with the capture's own counters.
pub(super) fn count_captured(
    services: &mut [crate::service::Service],
    capture: Option<&mut crate::transparent::Capture>,
    c: &Captured,
) {
    let owner = match c.decision {
        Decision::Keep { service, .. } | Decision::Redirect { service, .. } => Some(service),
        Decision::Untouched(_) => c.service,
    };
    match owner.and_then(|k| services.get_mut(k)).and_then(|s| s.correction.as_mut()) {
        Some(corrected) => corrected.stats.count(&c.decision),
        None => {
            if let (Some(cap), Decision::Untouched(u)) = (capture, c.decision) {
                cap.stats.count(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::clock::Rng;
    use crate::config;
    use crate::registry::HttpResponse;
    use crate::vm::testing::*;
    use crate::vm::{Exchange, Flow, Purpose, Vm};

    /// orders: transparent mode, the ORIGINAL_DST cluster reads the header; pay: another service,
    /// not corrected; the capture cluster is Istio's name.
    const TCFG: &[u8] = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
        "services":[{"name":"orders","registry":"s","routing":{"mode":"original_dst"},
                     "transparent":{"exclude_paths":["/actuator"]}},
                    {"name":"pay","registry":"s"}],
        "drain":{"pin_header":"x-pin"}}"#;

    const UPSTREAM: &str = "x-lossless-upstream";
    const FAILED: &str =
        "upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_Connection_refused}";

    fn world(cfg: &[u8]) -> World {
        let mut vm = Vm::new(config::parse(cfg).unwrap(), cfg, 1, Rng::new(1));
        let shared = crate::store::FakeShared::default();
        vm.on_start(&shared);
        World { vm, shared }
    }

    /// Ticks `vm` and answers each registry call with the body for its service's path.
    fn publish(vm: &mut Vm, shared: &crate::store::FakeShared, bodies: &[(&str, &str)], now: i64) {
        let due: Vec<_> =
            vm.on_tick(shared, now).into_iter().filter(|d| matches!(d.purpose, Purpose::Registry(_))).collect();
        for (token, d) in (1u32..).zip(due) {
            let path = d.request.header(":path").unwrap_or_default().to_string();
            let Some((_, body)) = bodies.iter().find(|(svc, _)| path == format!("/{svc}")) else { continue };
            vm.dispatched(token, &d);
            let h = [(":status".to_string(), "200".to_string())];
            let resp = HttpResponse { status: Some(200), headers: &h, body: body.as_bytes(), body_size: body.len() };
            vm.on_call_reply(shared, token, &resp, now);
        }
    }

    /// A captured request to `dest` (what Envoy's original_dst listener filter restored), with
    /// the client's own `extra` headers: the flow, the request headers as the filter left them,
    /// the exchange and the host.
    fn captured(
        w: &mut World,
        dest: &str,
        extra: &[(&str, &str)],
        now: i64,
    ) -> (Flow, BTreeMap<String, String>, Exchange, u64) {
        let mut req = vec![(":path", "/orders/1"), (":authority", dest)];
        req.extend_from_slice(extra);
        let mut h = host(&w.shared, now, &req, Some("PassthroughCluster"));
        h.props.push(("destination.address", dest.to_string()));
        let mut ex = Exchange::default();
        let flow = w.vm.on_request(&h, &mut ex);
        let headers = h.req.borrow().iter().cloned().collect();
        let cleared = h.route_cleared.get();
        (flow, headers, ex, cleared)
    }

    fn upstream(w: &mut World, dest: &str, now: i64) -> Option<String> {
        captured(w, dest, &[], now).1.get(UPSTREAM).cloned()
    }

    const ORDERS: &str = r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"},
        {"address":"10.0.0.3:80","state":"draining"},{"address":"10.0.0.4:80","state":"down"},
        {"address":"10.0.0.5:80"}]}"#;
    const ORDERS_LATER: &str = r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"},
        {"address":"10.0.0.3:80","state":"draining"},{"address":"10.0.0.4:80","state":"down"}]}"#;
    const PAY: &str = r#"{"instances":[{"address":"10.0.1.1:80","state":"draining"}]}"#;

    fn orders_world() -> World {
        let mut w = world(TCFG);
        publish(&mut w.vm, &w.shared, &[("orders", ORDERS), ("pay", PAY)], NOW);
        // 10.0.0.5 leaves: departed, remembered for the registry kind's TTL
        publish(&mut w.vm, &w.shared, &[("orders", ORDERS_LATER), ("pay", PAY)], NOW + 2000);
        w
    }

    /// A pick of a draining, down or departed instance goes to a serving member; a warm pick
    /// stays where the caller sent it; each is counted by its reason.
    #[test]
    fn bad_picks_are_redirected_and_warm_picks_kept() {
        let mut w = orders_world();
        let t = NOW + 2000;
        for _ in 0..50 {
            for dest in ["10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80"] {
                let to = upstream(&mut w, dest, t).unwrap();
                assert!(to == "10.0.0.1:80" || to == "10.0.0.2:80", "{dest} -> {to}");
            }
            assert_eq!(upstream(&mut w, "10.0.0.1:80", t).as_deref(), Some("10.0.0.1:80"), "a warm pick stays");
        }
        let st = w.vm.services[0].correction.as_ref().unwrap().stats.clone();
        assert_eq!((st.kept, st.redirected), (50, [50, 50, 50, 0]));
        // the redirected request is routed like any other: the exchange knows its service and
        // the address written, so outlier detection judges the answer
        let (flow, _, ex, cleared) = captured(&mut w, "10.0.0.5:80", &[], t);
        assert_eq!(flow, Flow::Continue);
        assert_eq!(ex.service, Some(0));
        assert!(ex.written == "10.0.0.1:80" || ex.written == "10.0.0.2:80", "{}", ex.written);
        assert_eq!(cleared, 0, "no service header configured: the route stays");
        // once its time is over the departed address is forgotten: untouched
        let ttl = crate::transparent::DEFAULT_DEPARTED_TTL_MS;
        w.vm.on_tick(&w.shared, NOW + 2000 + ttl);
        assert_eq!(upstream(&mut w, "10.0.0.5:80", NOW + 2000 + ttl), None);
        assert_eq!(w.vm.capture.as_ref().unwrap().stats.unknown, 1);
    }

    /// An address outside every membership, one of a service that is not corrected, and an
    /// excluded path pass as the caller sent them: no routing header at all, so the ORIGINAL_DST
    /// cluster connects to the connection's own destination.
    #[test]
    fn what_is_not_ours_passes_untouched() {
        let mut w = orders_world();
        let t = NOW + 2000;
        for dest in ["192.168.7.7:8080", "10.0.0.1:81", "10.0.1.1:80", "not-an-address"] {
            let (flow, headers, ex, _) = captured(&mut w, dest, &[], t);
            assert_eq!(flow, Flow::Continue);
            assert!(!headers.contains_key(UPSTREAM), "{dest}: {headers:?}");
            assert_eq!((ex.service, ex.written.as_str()), (None, ""));
        }
        let cap = &w.vm.capture.as_ref().unwrap().stats;
        assert_eq!((cap.unknown, cap.not_corrected), (3, 1));
        // the excluded path keeps even a draining pick
        let h = host(&w.shared, t, &[(":path", "/actuator/prometheus")], Some("PassthroughCluster"));
        let mut h = h;
        h.props.push(("destination.address", "10.0.0.3:80".into()));
        w.vm.on_request(&h, &mut Exchange::default());
        assert!(h.req.borrow().iter().all(|(k, _)| k != UPSTREAM));
        assert_eq!(w.vm.services[0].correction.as_ref().unwrap().stats.excluded, 1);
        // a request to another cluster is not captured: its destination is not even read
        let h = host(&w.shared, t, &[(":path", "/x")], Some("orders-elsewhere"));
        w.vm.on_request(&h, &mut Exchange::default());
        assert!(h.req.borrow().iter().all(|(k, _)| k != UPSTREAM));
    }

    /// No client chooses the destination through a header: a client's routing header is removed
    /// whatever the destination, and lossless' own value replaces it where lossless routes.
    #[test]
    fn a_client_routing_header_cannot_steer() {
        let mut w = orders_world();
        let t = NOW + 2000;
        let forged = [(UPSTREAM, "169.254.169.254:80")];
        for dest in ["192.168.7.7:8080", "10.0.1.1:80"] {
            let (_, headers, _, _) = captured(&mut w, dest, &forged, t);
            assert!(!headers.contains_key(UPSTREAM), "{dest}: removed, nothing set: {headers:?}");
        }
        for dest in ["10.0.0.1:80", "10.0.0.3:80"] {
            let (_, headers, _, _) = captured(&mut w, dest, &forged, t);
            let v = &headers[UPSTREAM];
            assert!(v == "10.0.0.1:80" || v == "10.0.0.2:80", "{dest}: {v}");
        }
        assert_eq!(w.vm.stats.client_header_stripped, 4);
        // a client value sent twice is removed twice over: nothing of it is left
        let mut h = host(
            &w.shared,
            t,
            &[(":path", "/"), (UPSTREAM, "169.254.169.254:80"), (UPSTREAM, "10.0.0.9:1")],
            Some("PassthroughCluster"),
        );
        h.props.push(("destination.address", "192.168.7.7:8080".into()));
        w.vm.on_request(&h, &mut Exchange::default());
        assert!(h.req.borrow().iter().all(|(k, _)| k != UPSTREAM));
    }

    /// A captured request whose pick failed to connect ejects it (outlier detection on the
    /// response, as for any routed request): the next pick of it is redirected as down.
    #[test]
    fn a_failed_connection_ejects_and_the_next_pick_moves() {
        let mut w = orders_world();
        let t = NOW + 2000;
        let (_, _, ex, _) = captured(&mut w, "10.0.0.1:80", &[], t);
        assert_eq!(ex.written, "10.0.0.1:80");
        let mut h = host(&w.shared, t, &[], Some("PassthroughCluster"));
        h.props.push(("upstream.address", "10.0.0.1:80".into()));
        h.props.push(("response.code_details", FAILED.into()));
        *h.resp.borrow_mut() = vec![(":status".into(), "503".into())];
        w.vm.on_response(&h, &ex);
        let unreached = h.resp.borrow().iter().any(|(k, _)| k == crate::health::UNREACHED_HEADER);
        assert!(unreached, "the outer hop retries it: nothing reached the instance");
        for _ in 0..20 {
            assert_eq!(upstream(&mut w, "10.0.0.1:80", t).as_deref(), Some("10.0.0.2:80"));
        }
        assert_eq!(w.vm.services[0].correction.as_ref().unwrap().stats.redirected[1], 20);
    }

    /// Warming instances: with the callers' picks learned from the traffic (flushed to shared data
    /// on the tick), a round-robin caller's picks end at Dubbo's warm-up shares.
    #[test]
    fn a_round_robin_caller_gets_dubbo_shares() {
        let mut w = world(TCFG);
        // a, b warm; c at 25 % of a 100 s warm-up: Dubbo weights 100, 100, 25
        let body = format!(
            r#"{{"instances":[{{"address":"10.0.0.1:80","start_ms":1}},{{"address":"10.0.0.2:80","start_ms":1}},
            {{"address":"10.0.0.3:80","start_ms":{},"warmup_ms":100000}}]}}"#,
            NOW - 25_000
        );
        publish(&mut w.vm, &w.shared, &[("orders", &body), ("pay", PAY)], NOW);
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let mut got: BTreeMap<String, u32> = BTreeMap::new();
        let (mut t, mut n, mut dubbo) = (NOW, 0, 0.0);
        // 300 picks/s for 20 s, one tick every 100 ms; measured over the last 10 s
        for _ in 0..200 {
            for k in 0..30 {
                let to = upstream(&mut w, addrs[k % 3], t).unwrap();
                if t >= NOW + 10_000 {
                    *got.entry(to).or_default() += 1;
                    n += 1;
                    // Dubbo's weight of c: 25 + 1 per second since NOW
                    let wc = 25.0 + (t - NOW) as f64 / 1000.0;
                    dubbo += wc / (200.0 + wc);
                }
            }
            t += 100;
            w.vm.on_tick(&w.shared, t);
        }
        let share = |a: &str| f64::from(got[a]) / f64::from(n);
        let dubbo = dubbo / f64::from(n);
        assert!((share("10.0.0.3:80") - dubbo).abs() < 0.01, "{got:?}: Dubbo's share of c {dubbo:.4}");
        assert!((share("10.0.0.1:80") - share("10.0.0.2:80")).abs() < 0.03, "{got:?}");
        let st = w.vm.services[0].correction.as_ref().unwrap().stats.clone();
        assert_eq!(st.redirected[..3], [0, 0, 0]);
        assert!(st.redirected[3] > 0, "only c's excess moved: {st:?}");
        // the estimate is process-wide: it lives in shared data
        let (bytes, _) = crate::store::Shared::get(&w.shared, &w.vm.keys.picks("orders"));
        let slots = crate::transparent::estimate::Slots::decode(&bytes.unwrap());
        assert_eq!(slots.by_vm.len(), 1);
        assert_eq!(slots.by_vm[&1].counts.len(), 3);
        let gauge: Vec<(usize, u64)> = w.vm.correction_gauges().collect();
        assert_eq!(gauge.len(), 1);
        // c is picked a third of the time for a target of 45/245: R = 1/3 - 45/245 = 0.149
        assert!((130..170).contains(&gauge[0].1), "{gauge:?}");
    }

    /// Two workers, each with the connections to some of the addresses (Envoy hands a connection
    /// to one worker; a caller that picks `ip:port` itself connects per address), flushing at
    /// their own moments: the process still gives the warming instance Dubbo's share, neither
    /// more (each worker planning from its own fresh picks and the other's stale ones) nor less.
    #[test]
    fn workers_that_see_different_addresses_give_dubbo_shares() {
        let mut w = world(TCFG);
        // a, b, c warm; d at 25 % of a 100 s warm-up: Dubbo weights 100, 100, 100, 25
        let body = format!(
            r#"{{"instances":[{{"address":"10.0.0.1:80","start_ms":1}},{{"address":"10.0.0.2:80","start_ms":1}},
            {{"address":"10.0.0.3:80","start_ms":1}},
            {{"address":"10.0.0.4:80","start_ms":{},"warmup_ms":100000}}]}}"#,
            NOW - 25_000
        );
        publish(&mut w.vm, &w.shared, &[("orders", &body), ("pay", PAY)], NOW);
        let mut other = Vm::new(config::parse(TCFG).unwrap(), TCFG, 2, Rng::new(2));
        other.on_start(&w.shared);
        other.sync(&w.shared, NOW);
        assert_eq!(other.services[0].view.members.len(), 4);
        let mut got: BTreeMap<String, u32> = BTreeMap::new();
        let (mut n, mut dubbo) = (0u32, 0.0);
        let mut count = |to: String, t: i64, got: &mut BTreeMap<String, u32>| {
            if t >= NOW + 10_000 {
                *got.entry(to).or_default() += 1;
                n += 1;
                let wd = 25.0 + (t - NOW) as f64 / 1000.0;
                dubbo += wd / (300.0 + wd);
            }
        };
        // a round-robin caller, 300 picks/s for 20 s: the first worker has the connections to a
        // and b, the second those to c; they tick 100 ms apart, 50 ms out of step
        let mut t = NOW;
        for _ in 0..200 {
            for k in 0..20 {
                let dest = if k % 2 == 0 { "10.0.0.1:80" } else { "10.0.0.2:80" };
                let to = upstream(&mut w, dest, t).unwrap();
                count(to, t, &mut got);
            }
            w.vm.on_tick(&w.shared, t);
            for _ in 0..10 {
                let mut h = host(&w.shared, t + 50, &[(":path", "/orders/1")], Some("PassthroughCluster"));
                h.props.push(("destination.address", "10.0.0.3:80".into()));
                other.on_request(&h, &mut Exchange::default());
                let to = h.req.borrow().iter().find(|(k, _)| k == UPSTREAM).map(|(_, v)| v.clone()).unwrap();
                count(to, t + 50, &mut got);
            }
            other.on_tick(&w.shared, t + 50);
            t += 100;
        }
        let share = |a: &str| f64::from(got.get(a).copied().unwrap_or(0)) / f64::from(n);
        let dubbo = dubbo / f64::from(n);
        assert!((share("10.0.0.4:80") - dubbo).abs() < 0.01, "{got:?}: Dubbo's share of d {dubbo:.4}");
        for a in ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] {
            assert!((share(a) - (1.0 - dubbo) / 3.0).abs() < 0.02, "{a}: {got:?}");
        }
    }

    /// Every VM judges by the same departed addresses: the poller records them in shared data,
    /// another VM reads them on its next sync.
    #[test]
    fn another_vm_knows_the_departed_addresses() {
        let w = orders_world();
        let mut other = Vm::new(config::parse(TCFG).unwrap(), TCFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW + 2000);
        let mut h = host(&w.shared, NOW + 2000, &[(":path", "/")], Some("PassthroughCluster"));
        h.props.push(("destination.address", "10.0.0.5:80".into()));
        other.on_request(&h, &mut Exchange::default());
        let v = h.req.borrow().iter().find(|(k, _)| k == UPSTREAM).map(|(_, v)| v.clone());
        assert!(matches!(v.as_deref(), Some("10.0.0.1:80" | "10.0.0.2:80")), "{v:?}");
    }

    /// The Istio recipe: the service's own cluster (override_host) takes the captured request
    /// once a route matches the service header; lossless sets it and asks Envoy to match again;
    /// a client's copy of it is removed.
    #[test]
    fn the_service_header_names_the_service_and_the_route_is_matched_again() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"orders","registry":"s","match_clusters":["outbound|8080||orders.default.svc.cluster.local"],
                         "transparent":{}}],
            "capture":{"service_header":"x-lossless-service"}}"#;
        let mut w = world(cfg);
        publish(&mut w.vm, &w.shared, &[("orders", ORDERS)], NOW);
        let (_, headers, _, cleared) = captured(&mut w, "10.0.0.3:80", &[("x-lossless-service", "pay")], NOW);
        assert_eq!(headers["x-lossless-service"], "orders");
        assert_eq!(cleared, 1);
        // primary (a serving member) and fallbacks for override_host
        let v: Vec<&str> = headers[UPSTREAM].split(',').collect();
        assert_eq!(v.len(), 3);
        assert_ne!(v[0], "10.0.0.3:80");
        let (_, headers, _, cleared) = captured(&mut w, "10.0.0.1:80", &[], NOW);
        assert!(headers[UPSTREAM].starts_with("10.0.0.1:80,"), "the kept pick goes first");
        assert_eq!(cleared, 1);
        // untouched: neither header, the route is left as it is
        let (_, headers, _, cleared) = captured(&mut w, "192.168.7.7:8080", &[("x-lossless-service", "orders")], NOW);
        assert!(!headers.contains_key("x-lossless-service") && !headers.contains_key(UPSTREAM), "{headers:?}");
        assert_eq!(cleared, 0);
    }

    /// One address under two services: the request's authority resolves it, else it is refused.
    #[test]
    fn a_shared_address_is_resolved_by_name_or_refused() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"orders","registry":"s","transparent":{}},
                        {"name":"users","registry":"s","registry_service":"providers:com.acme.Users:1.0.0:","transparent":{}}]}"#;
        let mut w = world(cfg);
        let both = r#"{"instances":[{"address":"10.0.0.1:80","state":"draining"},{"address":"10.0.0.2:80"}]}"#;
        publish(&mut w.vm, &w.shared, &[("orders", both), ("providers%3Acom.acme.Users%3A1.0.0%3A", both)], NOW);
        assert_eq!(w.vm.services[1].view.members.len(), 2, "both published");
        let (_, headers, _, _) = captured(&mut w, "10.0.0.1:80", &[], NOW);
        assert!(!headers.contains_key(UPSTREAM), "named by neither: refused, untouched");
        assert_eq!(w.vm.capture.as_ref().unwrap().stats.ambiguous, 1);
        let mut h = host(
            &w.shared,
            NOW,
            &[(":path", "/com.acme.Users/Get"), (":authority", "10.0.0.1:80")],
            Some("PassthroughCluster"),
        );
        h.props.push(("destination.address", "10.0.0.1:80".into()));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        assert_eq!((ex.service, ex.written.as_str()), (Some(1), "10.0.0.2:80"), "a Triple path names users");
        let mut h = host(&w.shared, NOW, &[(":path", "/x"), (":authority", "orders:8080")], Some("PassthroughCluster"));
        h.props.push(("destination.address", "10.0.0.1:80".into()));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        assert_eq!(ex.service, Some(0), "the authority names orders");
    }

    /// Host calls of a captured request: the headers, the generation, the cluster, the
    /// destination, the routing header set; an untouched one sets nothing.
    #[test]
    fn host_calls_of_a_captured_request() {
        let mut w = orders_world();
        let t = NOW + 2000;
        upstream(&mut w, "10.0.0.1:80", t);
        let count = |w: &mut World, dest: &str| {
            let before = w.shared.calls.get();
            let mut h = host(&w.shared, t, &[(":path", "/")], Some("PassthroughCluster"));
            h.props.push(("destination.address", dest.to_string()));
            w.vm.on_request(&h, &mut Exchange::default());
            h.total() - before
        };
        let routed = count(&mut w, "10.0.0.3:80");
        let untouched = count(&mut w, "192.168.7.7:8080");
        println!("host calls, captured request: {routed} routed, {untouched} untouched");
        assert!(routed <= 5, "{routed}");
        assert!(untouched <= 4, "{untouched}");
    }
}
