//! The push path inside the VM ([`crate::push`]): the poller VM's sessions, fed by the tick and
//! by the gRPC callbacks; each list they bring goes through [`PollState::on_pushed`]
//! (keep-last-good) and is published as a polled one is. A session that goes up slows its
//! services' polls to the reconcile interval (`refresh.rs`, `poll_interval`); one that goes down
//! makes them due at once.
//!
//! [`PollState::on_pushed`]: crate::poller::PollState::on_pushed

use log::info;

use super::Vm;
use crate::config::{RegistryConfig, RegistryKind, ServiceConfig};
use crate::poller::{interval, RefreshOutcome};
use crate::push::{self, Event, Grpc, Subscription};
use crate::registry::nacos::{self, Api};
use crate::service::Registry;
use crate::store::Shared;

/// The run-time registries of `cfgs`, each with its push session when it pushes.
pub(super) fn registries(cfgs: Vec<RegistryConfig>, services: &[ServiceConfig]) -> Vec<Registry> {
    cfgs.into_iter()
        .enumerate()
        .map(|(i, cfg)| {
            let needs_token = matches!(&cfg.kind, RegistryKind::Nacos(n) if n.auth.is_some());
            // a registry no service uses keeps no session
            let subs = subscriptions(i, services);
            let push = cfg.push.clone().filter(|_| !subs.is_empty()).map(|p| push::Session::new(p, subs, needs_token));
            let fetch = super::fetch::fetcher(i, &cfg, services);
            Registry { cfg, session: Default::default(), push, fetch }
        })
        .collect()
}

/// The subscriptions of registry `registry`: one per distinct (namespace, group, service,
/// clusters) among `services`, with the indexes of the services it feeds. An unset namespace is
/// Nacos' `public`, an unset group `DEFAULT_GROUP`.
fn subscriptions(registry: usize, services: &[ServiceConfig]) -> Vec<(Subscription, Vec<usize>)> {
    let mut out: Vec<(Subscription, Vec<usize>)> = Vec::new();
    for (i, s) in services.iter().enumerate().filter(|(_, s)| s.registry == registry) {
        let q = &s.query;
        let sub = Subscription {
            namespace: q
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| push::wire::DEFAULT_NAMESPACE.into()),
            group: q.group.clone().filter(|g| !g.is_empty()).unwrap_or_else(|| push::wire::DEFAULT_GROUP.into()),
            service: q.service.clone(),
            clusters: q.clusters.iter().filter(|c| !c.is_empty()).cloned().collect::<Vec<_>>().join(","),
        };
        match out.iter_mut().find(|(s, _)| *s == sub) {
            Some((_, svcs)) => svcs.push(i),
            None => out.push((sub, vec![i])),
        }
    }
    out
}

impl Vm {
    /// The push sessions' periodic work, after [`Vm::on_tick`]: the poller VM runs them (an
    /// attempt when due, the setup wait, health checks); any other VM ends the ones it ran (the
    /// lease moved). True when a session reported something: the glue then dispatches what
    /// became due ([`Vm::due`]; a session that went down makes its polls due at once).
    pub fn push_tick(&mut self, shared: &dyn Shared, g: &dyn Grpc, now_ms: i64) -> bool {
        let mut reported = false;
        for ri in 0..self.registries.len() {
            let Some(reg) = self.registries.get_mut(ri) else { continue };
            let Some(p) = reg.push.as_mut() else { continue };
            if !self.poller {
                p.stop(g);
                self.stats.push.add(std::mem::take(&mut p.stats));
                continue;
            }
            let token = reg.session.token.as_ref().filter(|t| now_ms < t.expires_ms).map(|t| t.value.as_str());
            p.set_token(token);
            let events = p.tick(g, now_ms, &mut self.rng);
            reported |= !events.is_empty();
            self.push_events(shared, ri, events, now_ms);
        }
        reported
    }

    /// The answer to unary gRPC call `token` (`status`: its gRPC status; `body`: the message).
    /// False when no session made that call.
    pub fn on_grpc_reply(
        &mut self,
        shared: &dyn Shared,
        g: &dyn Grpc,
        token: u32,
        status: u32,
        body: &[u8],
        now_ms: i64,
    ) -> bool {
        self.push_input(shared, now_ms, |p, rng| p.on_call_reply(g, token, status, body, now_ms, rng))
    }

    /// A message on gRPC stream `token`. False when it is no session's stream.
    pub fn on_grpc_message(&mut self, shared: &dyn Shared, g: &dyn Grpc, token: u32, body: &[u8], now_ms: i64) -> bool {
        self.push_input(shared, now_ms, |p, rng| p.on_stream_message(g, token, body, now_ms, rng))
    }

    /// gRPC stream `token` closed with `status`. False when it is no session's stream.
    pub fn on_grpc_close(&mut self, shared: &dyn Shared, g: &dyn Grpc, token: u32, status: u32, now_ms: i64) -> bool {
        self.push_input(shared, now_ms, |p, rng| p.on_stream_close(g, token, status, now_ms, rng))
    }

    /// The largest gRPC message the glue reads (the largest `max_body_bytes` of the registries
    /// that push); a larger one is not copied into the VM.
    pub fn push_max_message(&self) -> usize {
        self.registries
            .iter()
            .filter(|r| r.push.is_some())
            .map(|r| r.cfg.kind.endpoint().max_body_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Registries whose push session is set up (the `push_connected` gauge).
    pub fn push_connected(&self) -> u64 {
        self.registries.iter().filter(|r| r.push.as_ref().is_some_and(push::Session::connected)).count() as u64
    }

    /// Hands a gRPC callback to the session it belongs to (`f` returns `None` for the others).
    fn push_input(
        &mut self,
        shared: &dyn Shared,
        now_ms: i64,
        mut f: impl FnMut(&mut push::Session, &mut crate::clock::Rng) -> Option<Vec<Event>>,
    ) -> bool {
        for ri in 0..self.registries.len() {
            let Some(p) = self.registries.get_mut(ri).and_then(|r| r.push.as_mut()) else { continue };
            if let Some(events) = f(p, &mut self.rng) {
                self.push_events(shared, ri, events, now_ms);
                return true;
            }
        }
        false
    }

    /// What a session of registry `ri` reported.
    fn push_events(&mut self, shared: &dyn Shared, ri: usize, events: Vec<Event>, now_ms: i64) {
        if let Some(p) = self.registries.get_mut(ri).and_then(|r| r.push.as_mut()) {
            self.stats.push.add(std::mem::take(&mut p.stats));
        }
        for e in events {
            match e {
                Event::List { services, info, pushed } => {
                    for svc in services {
                        self.apply_pushed(shared, svc, &info, pushed, now_ms);
                    }
                }
                Event::Live(services) => {
                    for svc in services {
                        if let Some(s) = self.services.get(svc) {
                            info!("service '{}': subscribed, the registry pushes its membership", s.cfg.name);
                        }
                    }
                }
                Event::Down { reason, was_up } => {
                    let name = self.registries.get(ri).map(|r| r.cfg.name.clone()).unwrap_or_default();
                    for s in self.services.iter_mut().filter(|s| s.cfg.registry == ri) {
                        s.poll.expedite(now_ms);
                    }
                    if was_up {
                        info!("registry '{name}': push session down ({reason}); polling until it is back");
                    } else {
                        self.log_limited(usize::MAX - ri, "push", now_ms, || {
                            format!("registry '{name}': no push session ({reason}); polling meanwhile")
                        });
                    }
                }
                Event::Unauthorized => {
                    // the token is refused: the HTTP path logs in again, now
                    if let Some(r) = self.registries.get_mut(ri) {
                        r.session.token = None;
                    }
                    for s in self.services.iter_mut().filter(|s| s.cfg.registry == ri) {
                        s.poll.expedite(now_ms);
                    }
                }
                Event::Malformed(why) => {
                    let name = self.registries.get(ri).map(|r| r.cfg.name.clone()).unwrap_or_default();
                    self.log_limited(usize::MAX - ri, "push_malformed", now_ms, || {
                        format!("registry '{name}': push message ignored: {why}")
                    });
                }
            }
        }
    }

    /// A list the registry sent for service `svc` (`info`: its `serviceInfo` JSON): read as the
    /// Nacos adapter reads a v1 list (same object), checked by the keep-last-good rules and
    /// published. A list held back makes a confirming poll due within one refresh interval.
    fn apply_pushed(&mut self, shared: &dyn Shared, svc: usize, info: &[u8], pushed: bool, now_ms: i64) {
        self.sync(shared, now_ms);
        let confirm_at = now_ms.saturating_add(interval(&self.settings, &mut self.rng));
        let Some(s) = self.services.get_mut(svc) else { return };
        let what = if pushed { "pushed" } else { "subscribed" };
        let name = s.cfg.name.clone();
        let parsed = match nacos::parse_list(info, Api::V1, &s.cfg.query.build) {
            Ok(p) => p,
            Err(e) => {
                s.stats.push_rejected += 1;
                self.log_limited(svc, "push_parse", now_ms, || {
                    format!("service '{name}': {what} list refused, keeping the last good membership: {e}")
                });
                return;
            }
        };
        let (outcome, publish) = s.poll.on_pushed(&s.cfg, &s.view.snap, parsed, now_ms);
        match &outcome {
            RefreshOutcome::Published { version, hosts, .. } => {
                s.stats.push_applied += 1;
                info!("service '{name}' membership v{version}: {hosts} instances ({what})");
            }
            RefreshOutcome::Kept(hold) => {
                s.stats.push_rejected += 1;
                s.poll.expedite(confirm_at);
                let kind = hold.kind();
                self.log_limited(svc, "kept", now_ms, || {
                    format!("service '{name}': {what} list held back ({kind}), keeping the last good membership")
                });
            }
            _ => s.stats.push_applied += 1,
        }
        if let Some(snap) = publish {
            self.publish(shared, svc, snap, now_ms);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)] // lists of hosts read best as [a.clone(), b.clone()]
mod tests {
    use crate::clock::Rng;
    use crate::config;
    use crate::instance::State;
    use crate::poller::RefreshOutcome;
    use crate::push::proto;
    use crate::push::testing::Fake;
    use crate::registry::HttpResponse;
    use crate::store::Shared;
    use crate::vm::testing::{World, NOW};
    use crate::vm::{Dispatch, Purpose, Vm};

    const CFG: &[u8] =
        br#"{"registries":{"n":{"type":"nacos","cluster":"reg","authority":"r","api":"v1","timeout_ms":1500,
        "grpc_cluster":"nacos-grpc","reconcile_interval_ms":30000}},
        "services":[{"name":"demo","registry":"n","registry_service":"demo-svc","match_clusters":["demo"]}]}"#;

    /// A Nacos host record.
    fn host(ip: &str, healthy: bool, weight: f64) -> String {
        format!(r#"{{"ip":"{ip}","port":80,"weight":{weight},"healthy":{healthy},"enabled":true,"metadata":{{}}}}"#)
    }

    fn info(hosts: &[String]) -> String {
        format!(
            r#"{{"name":"demo-svc","groupName":"DEFAULT_GROUP","hosts":[{}],"lastRefTime":1,"checksum":"x"}}"#,
            hosts.join(",")
        )
    }

    /// The registry requests due now, dispatched under tokens from 100 up.
    fn due_polls(w: &mut World, now: i64) -> Vec<u32> {
        let due: Vec<Dispatch> =
            w.vm.due(&w.shared, now).into_iter().filter(|d| matches!(d.purpose, Purpose::Registry(_))).collect();
        due.iter()
            .enumerate()
            .map(|(k, d)| {
                let token = 100 + k as u32 + (now % 1000) as u32 * 10;
                w.vm.dispatched(token, d);
                token
            })
            .collect()
    }

    fn answer_poll(w: &mut World, token: u32, body: &str, now: i64) -> RefreshOutcome {
        let h = [(":status".to_string(), "200".to_string())];
        let resp = HttpResponse { status: Some(200), headers: &h, body: body.as_bytes(), body_size: body.len() };
        w.vm.on_call_reply(&w.shared, token, &resp, now).unwrap().1
    }

    /// One poll: due now, answered with `hosts`.
    fn poll(w: &mut World, hosts: &[String], now: i64) -> RefreshOutcome {
        let tokens = due_polls(w, now);
        assert_eq!(tokens.len(), 1, "one poll due at {now}");
        answer_poll(w, tokens[0], &info(hosts), now)
    }

    fn reply(kind: &str, json: &str) -> Vec<u8> {
        proto::encode(kind, &[], json.as_bytes())
    }

    /// Sets the session up and answers its subscription with `hosts`: returns the stream.
    fn subscribe(w: &mut World, g: &Fake, hosts: &[String], now: i64) -> u32 {
        w.vm.push_tick(&w.shared, g, now);
        let check = g.calls_of("ServerCheckRequest").last().unwrap().0;
        assert!(w.vm.on_grpc_reply(
            &w.shared,
            g,
            check,
            0,
            &reply("ServerCheckResponse", r#"{"resultCode":200}"#),
            now
        ));
        w.vm.push_tick(&w.shared, g, now + 100);
        let sub = g.calls_of("SubscribeServiceRequest").last().unwrap().0;
        let ans = format!(r#"{{"resultCode":200,"serviceInfo":{}}}"#, info(hosts));
        assert!(w.vm.on_grpc_reply(&w.shared, g, sub, 0, &reply("SubscribeServiceResponse", &ans), now + 100));
        *g.opened.borrow().last().unwrap()
    }

    fn push(w: &mut World, g: &Fake, stream: u32, hosts: &[String], now: i64) {
        let body = format!(
            r#"{{"requestId":"{now}","serviceName":"demo-svc","groupName":"DEFAULT_GROUP","serviceInfo":{}}}"#,
            info(hosts)
        );
        assert!(w.vm.on_grpc_message(&w.shared, g, stream, &reply("NotifySubscriberRequest", &body), now));
    }

    fn members(w: &World) -> Vec<(String, State, i32)> {
        w.vm.services[0].view.snap.members.iter().map(|m| (m.addr.clone(), m.state, m.weight)).collect()
    }

    /// The whole path: the subscription's list and each push are applied and published as a
    /// polled list is, every VM sees them, the poll slows to the reconcile interval while the
    /// subscription is live and comes back at once when the stream closes.
    #[test]
    fn pushed_lists_are_published_and_polls_slow_down() {
        let (mut w, g) = (World::new(CFG), Fake::default());
        assert!(w.vm.on_tick(&w.shared, NOW).len() == 1, "the poller polls from the start");
        w.vm.services[0].poll.reset();
        let a = host("10.0.0.1", true, 1.0);
        assert!(matches!(poll(&mut w, &[a.clone()], NOW), RefreshOutcome::Published { version: 1, .. }));
        let stream = subscribe(&mut w, &g, &[a.clone()], NOW + 10);
        assert_eq!(w.vm.services[0].stats.push_applied, 1, "the subscription's list is the same: applied");
        assert_eq!(w.vm.push_connected(), 1);
        // a push: a new instance and a weight change, published and seen by another VM
        let b = host("10.0.0.2", true, 2.0);
        push(&mut w, &g, stream, &[a.clone(), b.clone()], NOW + 500);
        assert_eq!(g.sent_of("NotifySubscriberResponse").len(), 1);
        assert_eq!(w.vm.stats.push.acks, 1);
        let want =
            vec![("10.0.0.1:80".to_string(), State::Serving, 100), ("10.0.0.2:80".to_string(), State::Serving, 200)];
        assert_eq!(members(&w), want);
        assert_eq!(w.vm.services[0].view.snap.version, 2);
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW + 500);
        assert_eq!(other.services[0].view.snap.members, w.vm.services[0].view.snap.members);
        // polls: the one scheduled before the subscription went live, then every 30 s ± 10 %
        let t = NOW + 1200;
        assert!(matches!(poll(&mut w, &[a.clone(), b.clone()], t), RefreshOutcome::Same { .. }));
        assert!(due_polls(&mut w, t + 26_999).is_empty());
        assert_eq!(due_polls(&mut w, t + 33_001).len(), 1, "reconcile poll");
        // the stream closes: the poll is due at once, and stays at the refresh interval
        let t2 = t + 33_002;
        w.vm.services[0].poll.reset();
        assert!(w.vm.on_grpc_close(&w.shared, &g, stream, 14, t2));
        assert_eq!(w.vm.push_connected(), 0);
        assert!(matches!(poll(&mut w, &[a.clone(), b.clone()], t2), RefreshOutcome::Same { .. }));
        assert_eq!(due_polls(&mut w, t2 + 1200).len(), 1, "polls every second while push is down");
        assert_eq!(w.vm.services[0].stats.push_applied, 2);
        assert_eq!((w.vm.stats.push.stream_opened, w.vm.stats.push.stream_closed), (1, 1));
    }

    /// rnacos pushes healthy instances only: an instance the polled list holds as down and the
    /// push leaves out stays down; a serving one left out goes at once; the next poll decides.
    #[test]
    fn a_push_without_a_down_instance_keeps_it_down() {
        let (mut w, g) = (World::new(CFG), Fake::default());
        let (a, b, c) = (host("10.0.0.1", true, 1.0), host("10.0.0.2", false, 1.0), host("10.0.0.3", true, 1.0));
        w.vm.on_tick(&w.shared, NOW);
        w.vm.services[0].poll.reset();
        poll(&mut w, &[a.clone(), b.clone(), c.clone()], NOW);
        let stream = subscribe(&mut w, &g, &[a.clone(), c.clone()], NOW + 10);
        let down = ("10.0.0.2:80".to_string(), State::Down, 100);
        assert!(members(&w).contains(&down), "{:?}", members(&w));
        assert_eq!(w.vm.services[0].view.snap.version, 1, "nothing changed");
        // c deregistered (or unhealthy): gone; b still down
        push(&mut w, &g, stream, &[a.clone()], NOW + 500);
        assert_eq!(members(&w), vec![("10.0.0.1:80".to_string(), State::Serving, 100), down.clone()]);
        // the reconcile poll: b deregistered meanwhile, c back as down (after
        // guard.departure_memory_ms: listed again sooner, an instance that left is held out as
        // possibly from an older view; down or absent, it gets no request either way)
        let c_down = host("10.0.0.3", false, 1.0);
        w.vm.services[0].poll.reset();
        poll(&mut w, &[a.clone(), c_down], NOW + 31_000);
        let addrs: Vec<(String, State)> = members(&w).into_iter().map(|(a, s, _)| (a, s)).collect();
        assert_eq!(addrs, [("10.0.0.1:80".to_string(), State::Serving), ("10.0.0.3:80".to_string(), State::Down)]);
    }

    /// A polled list requested before a push and answered after it is dropped: it may be older.
    #[test]
    fn a_poll_older_than_a_push_is_superseded() {
        let (mut w, g) = (World::new(CFG), Fake::default());
        let (a, b) = (host("10.0.0.1", true, 1.0), host("10.0.0.2", true, 1.0));
        w.vm.on_tick(&w.shared, NOW);
        w.vm.services[0].poll.reset();
        poll(&mut w, &[a.clone(), b.clone()], NOW);
        let stream = subscribe(&mut w, &g, &[a.clone(), b.clone()], NOW + 10);
        w.vm.services[0].poll.reset();
        let token = due_polls(&mut w, NOW + 1000)[0];
        push(&mut w, &g, stream, &[a.clone()], NOW + 1001);
        let out = answer_poll(&mut w, token, &info(&[a.clone(), b.clone()]), NOW + 1002);
        assert_eq!(out, RefreshOutcome::Superseded);
        assert_eq!(members(&w).len(), 1, "the push stands");
        // the next poll is compared in full (not skipped as the same body as before); b, which
        // the push took out, is listed again only after guard.departure_memory_ms without a
        // newer sign (until then the list may be an older view)
        w.vm.services[0].poll.reset();
        assert!(matches!(poll(&mut w, &[a.clone(), b.clone()], NOW + 2000), RefreshOutcome::Same { .. }));
        w.vm.services[0].poll.reset();
        assert!(matches!(
            poll(&mut w, &[a.clone(), b.clone()], NOW + 32_000),
            RefreshOutcome::Published { hosts: 2, .. }
        ));
    }

    /// A push that empties the service is held back like a polled one; a poll to confirm it is
    /// due within one refresh interval instead of the reconcile interval.
    #[test]
    fn a_held_push_makes_a_poll_due() {
        let (mut w, g) = (World::new(CFG), Fake::default());
        let a = host("10.0.0.1", true, 1.0);
        w.vm.on_tick(&w.shared, NOW);
        w.vm.services[0].poll.reset();
        poll(&mut w, &[a.clone()], NOW);
        let stream = subscribe(&mut w, &g, &[a.clone()], NOW + 10);
        poll(&mut w, &[a.clone()], NOW + 1100);
        assert!(due_polls(&mut w, NOW + 5000).is_empty(), "reconcile interval");
        push(&mut w, &g, stream, &[], NOW + 5000);
        assert_eq!(members(&w).len(), 1, "held");
        assert_eq!(w.vm.services[0].stats.push_rejected, 1);
        assert_eq!(due_polls(&mut w, NOW + 6200).len(), 1, "a confirming poll");
        // a list that is not one is refused and counted
        let bad = r#"{"requestId":"1","serviceName":"demo-svc","serviceInfo":{"hosts":7}}"#;
        assert!(w.vm.on_grpc_message(&w.shared, &g, stream, &reply("NotifySubscriberRequest", bad), NOW + 7000));
        assert_eq!(w.vm.services[0].stats.push_rejected, 2);
        assert_eq!(members(&w).len(), 1);
    }

    /// A call the host never answered ends the session on a tick; the tick says so, and the
    /// poll is due at once.
    #[test]
    fn a_silent_session_is_reported_by_the_tick() {
        let (mut w, g) = (World::new(CFG), Fake::default());
        let a = host("10.0.0.1", true, 1.0);
        w.vm.on_tick(&w.shared, NOW);
        w.vm.services[0].poll.reset();
        poll(&mut w, &[a.clone()], NOW);
        subscribe(&mut w, &g, &[a.clone()], NOW + 10);
        poll(&mut w, &[a.clone()], NOW + 1100);
        // a health check after 10 s of silence, never answered
        assert!(!w.vm.push_tick(&w.shared, &g, NOW + 10_200));
        assert_eq!(g.calls_of("HealthCheckRequest").len(), 1);
        assert!(due_polls(&mut w, NOW + 12_000).is_empty(), "reconcile interval while live");
        assert!(w.vm.push_tick(&w.shared, &g, NOW + 12_800), "the session went down");
        assert_eq!(due_polls(&mut w, NOW + 12_800).len(), 1, "polling again at once");
    }

    /// Only the poller runs the session; a VM that loses the lease ends it at once.
    #[test]
    fn the_session_follows_the_poller_lease() {
        let (mut w, g) = (World::new(CFG), Fake::default());
        let a = host("10.0.0.1", true, 1.0);
        w.vm.on_tick(&w.shared, NOW);
        let stream = subscribe(&mut w, &g, &[a.clone()], NOW + 10);
        // another VM holds the lease now
        w.shared.set(&w.vm.keys.lease(), format!("999|{}", NOW + 60_000).as_bytes(), None);
        w.vm.on_tick(&w.shared, NOW + 200);
        assert!(!w.vm.poller);
        w.vm.push_tick(&w.shared, &g, NOW + 200);
        assert!(g.cancelled.borrow().contains(&stream));
        assert_eq!((w.vm.stats.push.stream_opened, w.vm.stats.push.stream_closed), (1, 1));
        let calls = g.calls.borrow().len();
        assert!(!w.vm.push_tick(&w.shared, &g, NOW + 5000), "nothing to report");
        assert_eq!(g.calls.borrow().len(), calls, "no session outside the poller");
        // a VM that never held the lease makes no call at all
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 3, Rng::new(3));
        let g2 = Fake::default();
        other.on_tick(&w.shared, NOW + 300);
        other.push_tick(&w.shared, &g2, NOW + 300);
        assert!(g2.calls.borrow().is_empty());
    }

    /// With credentials, the session waits for the HTTP path's login and sends its token; a
    /// refused token drops it, and the next poll logs in again.
    #[test]
    fn auth_follows_the_http_login() {
        let cfg: &[u8] =
            br#"{"registries":{"n":{"type":"nacos","cluster":"reg","authority":"r","api":"v1","timeout_ms":1500,
            "grpc_cluster":"nacos-grpc","username":"nacos","password":"pw"}},
            "services":[{"name":"demo","registry":"n","registry_service":"demo-svc"}]}"#;
        let (mut w, g) = (World::new(cfg), Fake::default());
        let login = w.vm.on_tick(&w.shared, NOW);
        assert_eq!(login.len(), 1);
        w.vm.push_tick(&w.shared, &g, NOW);
        assert!(g.calls.borrow().is_empty(), "no token yet");
        w.vm.dispatched(1, &login[0]);
        let body = br#"{"accessToken":"tok-9","tokenTtl":18000}"#;
        let h = [];
        let resp = HttpResponse { status: Some(200), headers: &h, body, body_size: body.len() };
        assert_eq!(w.vm.on_call_reply(&w.shared, 1, &resp, NOW).unwrap().1, RefreshOutcome::LoggedIn);
        w.vm.push_tick(&w.shared, &g, NOW + 100);
        let check = g.calls_of("ServerCheckRequest")[0].0;
        w.vm.on_grpc_reply(&w.shared, &g, check, 0, &reply("ServerCheckResponse", r#"{"resultCode":200}"#), NOW + 100);
        w.vm.push_tick(&w.shared, &g, NOW + 200);
        let sub = g.calls.borrow().iter().find(|c| c.1 == "SubscribeServiceRequest").cloned().unwrap();
        assert!(sub.3, "the token in metadata.headers");
        let refused = reply("ErrorResponse", r#"{"resultCode":500,"errorCode":403,"message":"unknown user!"}"#);
        w.vm.on_grpc_reply(&w.shared, &g, sub.0, 0, &refused, NOW + 300);
        assert!(w.vm.registries[0].session.token.is_none());
        let next: Vec<Dispatch> = w.vm.due(&w.shared, NOW + 300);
        assert!(
            matches!(next[..], [Dispatch { purpose: Purpose::Registry(crate::registry::Call::Login), .. }]),
            "{next:?}"
        );
    }
}
