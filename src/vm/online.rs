//! The inbound registration inside the VM (poller VM, inbound with `registration`): the steps
//! due, the registry and local requests they become, the answers, and the phase shared with every
//! VM ([`crate::registration`] is the state machine and the wire formats).

use log::{info, warn};

use super::{Dispatch, Purpose, Vm};
use crate::config::RegistryKind;
use crate::registration::{self, Answer, Me, Online, Step};
use crate::registry::HttpResponse;
use crate::service::{Registry, Service};
use crate::store::{bump_gen, Keys, Shared};

/// Shares a new registration phase (nothing when the phase is the one last shared): logged,
/// written for every VM's membership JSON and for a new poller to resume from, and the
/// generation bumped so every worker re-reads whether the application takes traffic.
fn share_online(shared: &dyn Shared, keys: &Keys, online: &mut Online, addr: &str) {
    if online.shared == Some(online.phase) {
        return;
    }
    online.shared = Some(online.phase);
    info!("{addr}: {}", online.phase.as_str());
    shared.set(&keys.online(), online.encode().as_bytes(), None);
    bump_gen(shared, keys);
}

/// Whether the service's registry can take a registration call now: a Nacos with `api: auto`
/// once a list reply confirmed its API, and one with credentials once it holds a token.
fn registry_ready(services: &[Service], registries: &[Registry], svc: usize) -> bool {
    let Some(reg) = services.get(svc).and_then(|s| registries.get(s.cfg.registry)) else { return false };
    match &reg.cfg.kind {
        RegistryKind::Nacos(n) => {
            (n.api.is_some() || reg.session.api_confirmed) && (n.auth.is_none() || reg.session.token.is_some())
        }
        _ => true,
    }
}

/// The registry request of a registration step, and the registry's cluster to send it on.
fn registry_call(
    services: &[Service],
    registries: &[Registry],
    ib: &crate::config::InboundConfig,
    online: &Online,
    step: Step,
    now_ms: i64,
) -> Option<(String, crate::registry::HttpRequest)> {
    let svc = services.get(ib.service)?;
    let reg = registries.get(svc.cfg.registry)?;
    let (ip, port) = Me::split(&ib.self_address)?;
    let me = Me {
        ip,
        port,
        service: &svc.cfg,
        reg: ib.registration.as_ref()?,
        warmup_ms: ib.warmup_ms,
        ready_ms: online.ready_ms.unwrap_or(now_ms),
    };
    let request = match &reg.cfg.kind {
        RegistryKind::Nacos(n) => registration::nacos::request(n, &reg.session, &me, step),
        RegistryKind::Eureka(e) => registration::eureka::request(e, &me, step, now_ms),
        _ => return None,
    };
    Some((reg.cfg.cluster.clone(), request))
}

impl Vm {
    /// The registration steps due (poller VM, inbound with `registration`).
    pub(super) fn online_due(&mut self, shared: &dyn Shared, now_ms: i64, out: &mut Vec<Dispatch>) {
        let Some(ib) = &self.settings.inbound else { return };
        let (Some(reg), Some(online)) = (&ib.registration, self.online.as_mut()) else { return };
        let draining = self.view.self_drain.draining();
        let steps = online.due(ib, reg, draining, now_ms);
        share_online(shared, &self.keys, online, &ib.self_address);
        for step in steps {
            let request = match step {
                Step::Readiness | Step::Warm(_) => registration::local_request(step, ib, reg),
                _ => None,
            };
            let d = match request {
                Some(request) => Some((reg.local_cluster.clone(), request)),
                None if !registry_ready(&self.services, &self.registries, ib.service) => {
                    online.defer(now_ms);
                    let why = "the registry has not answered a list request yet";
                    if let Some(line) = online.tell_unregistered(why, &ib.self_address) {
                        warn!("{line}");
                    }
                    continue;
                }
                None => registry_call(&self.services, &self.registries, ib, online, step, now_ms),
            };
            match d {
                Some((cluster, request)) => {
                    out.push(Dispatch { service: ib.service, purpose: Purpose::Online(step), cluster, request })
                }
                // nothing to send (cannot happen with a validated config): the step fails
                None => {
                    online.on_answer(reg, step, Answer::Failed("no request".into()), draining, now_ms);
                }
            }
        }
    }

    /// An answer to a registration step: the state machine moves on; a new phase is logged and
    /// shared (every VM's membership JSON shows it; a new poller resumes from it).
    pub(super) fn on_online_reply(&mut self, shared: &dyn Shared, step: Step, resp: &HttpResponse<'_>, now_ms: i64) {
        let Some(ib) = &self.settings.inbound else { return };
        let (Some(reg), Some(online)) = (&ib.registration, self.online.as_mut()) else { return };
        let answer = match step {
            Step::Readiness | Step::Warm(_) => registration::local_answer(step, reg, resp.status),
            _ => match self.services.get(ib.service).and_then(|s| self.registries.get(s.cfg.registry)) {
                Some(r) if matches!(r.cfg.kind, RegistryKind::Eureka(_)) => registration::eureka::answer(resp),
                _ => registration::nacos::answer(resp),
            },
        };
        if let (Answer::Failed(why), Step::Register) = (&answer, step) {
            if let Some(line) = online.tell_unregistered(why, &ib.self_address) {
                warn!("{line}");
            }
        }
        let draining = self.view.self_drain.draining();
        online.on_answer(reg, step, answer, draining, now_ms);
        if matches!(step, Step::Warm(_)) {
            // self-warm progress, for the membership JSON
            shared.set(&self.keys.online(), online.encode().as_bytes(), None);
        }
        share_online(shared, &self.keys, online, &ib.self_address);
    }
}

#[cfg(test)]
mod tests {
    use crate::drain::Reason;
    use crate::registration::{self, Step};
    use crate::registry::HttpResponse;
    use crate::store::FakeShared;
    use crate::vm::testing::*;
    use crate::vm::{Dispatch, Exchange, Flow, Purpose, Vm};
    use crate::{clock::Rng, config};

    /// Inbound with registration and admission, two workers sharing Envoy's shared data: requests
    /// are refused `not_ready` until the poller saw readiness and registered; then admitted on
    /// the warm-up cap shared by both workers; a drain deregisters.
    #[test]
    fn inbound_registration_gates_and_admission_caps() {
        let cfg = br#"{"mode":"inbound","inbound":{"service":"me","self_address":"10.0.0.1:80","warmup_ms":60000,
            "registration":{"local_cluster":"local_app","readiness":{"path":"/ready","interval_ms":1000,"healthy_threshold":2}},
            "admission":{"max_rps":6,"cold_factor":3}},
            "registries":{"n":{"type":"nacos","cluster":"registry","authority":"nacos","api":"v1"}},
            "services":[{"name":"me","registry":"n"}]}"#;
        let shared = FakeShared::default();
        let mut a = Vm::new(config::parse(cfg).unwrap(), cfg, 1, Rng::new(1));
        let mut b = Vm::new(config::parse(cfg).unwrap(), cfg, 2, Rng::new(2));
        a.on_start(&shared);
        b.on_start(&shared);
        let ask = |vm: &mut Vm, now: i64| {
            let h = host(&shared, now, &[(":path", "/x")], None);
            match vm.on_request(&h, &mut Exchange::default()) {
                Flow::Continue => "ok".to_string(),
                Flow::Reply(r) => reason(&r).to_string(),
            }
        };
        assert_eq!(ask(&mut b, NOW), "not_ready");
        let ok = [(":status".to_string(), "200".to_string())];
        let answer = |vm: &mut Vm, d: &Dispatch, token: u32, body: &[u8], now: i64| {
            vm.dispatched(token, d);
            let resp = HttpResponse { status: Some(200), headers: &ok, body, body_size: body.len() };
            vm.on_call_reply(&shared, token, &resp, now);
        };
        let mut sent = Vec::new();
        for (k, t) in (0..40).map(|k| (k, NOW + k * 100)) {
            for d in a.on_tick(&shared, t) {
                if let Purpose::Online(step) = d.purpose {
                    sent.push((step, d.cluster.clone(), d.request.header(":path").unwrap_or_default().to_string()));
                    let body: &[u8] = if step == Step::Readiness { b"" } else { b"ok" };
                    answer(&mut a, &d, 100 + k as u32, body, t);
                }
            }
        }
        // the other worker ticks too, but only the poller registers
        assert!(b.on_tick(&shared, NOW + 4_000).iter().all(|d| !matches!(d.purpose, Purpose::Online(_))));
        let steps: Vec<Step> = sent.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(steps[..3], [Step::Readiness, Step::Readiness, Step::Register], "{sent:?}");
        assert!(steps[3..].iter().all(|s| *s == Step::Readiness), "readiness goes on while registered: {sent:?}");
        assert!(sent.iter().all(|(s, c, p)| *s != Step::Readiness || (c == "local_app" && p == "/ready")));
        assert_eq!(sent[2].1, "registry");
        assert!(sent[2].2.starts_with("/nacos/v1/ns/instance?serviceName=me"));
        assert_eq!(a.online.as_ref().map(|o| o.phase), Some(registration::Phase::Registered));
        // admitted now, on the cold rate 6 / 3 = 2 per second, whichever worker asks
        let t = NOW + 10_000;
        let got: Vec<String> = (0..4).map(|i| if i % 2 == 0 { ask(&mut a, t) } else { ask(&mut b, t) }).collect();
        assert_eq!(got, ["ok", "ok", "flow_limited", "flow_limited"]);
        assert_eq!(b.services[0].stats.local_503[Reason::FlowLimited.index()], 1);
        // both workers' membership JSON shows the registration and the cap
        let h = host(&shared, t, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        let Flow::Reply(r) = b.on_request(&h, &mut Exchange::default()) else { panic!() };
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(j["self"]["online"]["registration"]["phase"], "registered", "{}", r.body);
        assert_eq!(j["self"]["online"]["admission"]["admitted"], 2);
        // a drain on worker b: the poller deregisters
        let h = host(&shared, t, &[(":path", "/lossless/drain"), (":method", "POST")], None);
        assert!(matches!(b.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 200));
        let due = a.on_tick(&shared, t + 100);
        let del = due.iter().find(|d| d.purpose == Purpose::Online(Step::Deregister)).expect("a deregistration");
        assert_eq!(del.request.header(":method"), Some("DELETE"));
    }
}
