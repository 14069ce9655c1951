//! Stall detection inside the VM ([`crate::stall`]): the facts of the request and response paths
//! handed to this VM's [`crate::stall::Detector`], its decisions shared with every VM as stall
//! marks (guarded by [`crate::stall::may_stall`]), and the poller's stall probes.
//!
//! A routed request is tracked from its last byte ([`Vm::on_request_end`]) to its response
//! headers; a request that ends without them ([`Vm::on_log`]) is no longer held against its
//! instance. The clock of these facts is the host's, read when they happen (one host call each):
//! the tick's clock may be 100 ms old, half of the least bound.

use log::{info, warn};

use super::{Dispatch, Exchange, Host, Purpose, Ticket, Vm};
use crate::headers::Headers;
use crate::marks::{self, StallCause};
use crate::stall::{self, Change, Reply};
use crate::store::Shared;

impl Vm {
    /// Whether a request forwarded to service `svc` is tracked (detection on, its path not
    /// excluded, not an upgrade or an event stream).
    pub(super) fn stall_tracks(&self, svc: usize, headers: &Headers) -> bool {
        let path = headers.get(":path").unwrap_or("/");
        self.stall.config(svc).is_some_and(|c| c.tracks(path, |name| headers.get(name)))
    }

    /// The request's last byte went upstream (its headers with end of stream, its body's last
    /// chunk or its trailers): a tracked request is pending on the address written first from
    /// now on. The glue calls this once per request; it does nothing for a request not tracked.
    pub fn on_request_end(&mut self, h: &dyn Host, ex: &Exchange) {
        if ex.stall.get() != Ticket::Waiting {
            return;
        }
        ex.stall.set(Ticket::None);
        let (Some(svc), Some(primary)) = (ex.service, ex.primary()) else { return };
        let now = h.clock_ms();
        if let Some(sent) = self.stall.on_request_sent(svc, primary, now) {
            ex.stall.set(Ticket::Sent(sent));
        }
        self.stall_tick(h, now);
    }

    /// The exchange is over (Envoy's access-log point): a tracked request that got no response
    /// headers (the client or Envoy gave up, a reset) is no longer pending.
    pub fn on_log(&mut self, _h: &dyn Host, ex: &Exchange) {
        if let Ticket::Sent(sent) = ex.stall.replace(Ticket::None) {
            if let (Some(svc), Some(primary)) = (ex.service, ex.primary()) {
                self.stall.on_no_response(svc, primary, sent);
            }
        }
    }

    /// What a routed response says for stall detection: its `:status` and, for 502/503/504,
    /// Envoy's `details` (shared with outlier detection, read at most once). With one attempt the
    /// response is the first address's: an answer (whatever its status), a connection that could
    /// not be made (stalled at once), or no answer. With more, the first address did not answer
    /// this request (another did): it is no longer pending on it, and nothing is concluded.
    pub(super) fn stall_response(
        &mut self,
        h: &dyn Host,
        ex: &Exchange,
        svc: usize,
        status: Option<u16>,
        attempts: usize,
        details: &dyn Fn() -> Option<String>,
    ) {
        let sent = match ex.stall.replace(Ticket::None) {
            Ticket::Sent(s) => Some(s),
            Ticket::None | Ticket::Waiting => None,
        };
        let Some(primary) = ex.primary() else { return };
        if !self.stall.config(svc).is_some_and(|c| c.enabled) {
            return;
        }
        let reply = if attempts > 1 { Reply::NoAnswer } else { stall::judge(status, details) };
        // nothing tracked, nothing stalled, nothing failed: nothing to learn (no host call)
        if sent.is_none() && reply != Reply::ConnectFailure && !self.view.marks.stalled.contains_key(primary) {
            return;
        }
        let now = h.clock_ms();
        let change = match reply {
            Reply::Answered => self.stall.on_response(svc, primary, sent, now, &self.view.marks),
            Reply::ConnectFailure | Reply::NoAnswer => {
                if let Some(s) = sent {
                    self.stall.on_no_response(svc, primary, s);
                }
                if reply == Reply::ConnectFailure {
                    self.stall.on_connect_failure(svc, primary, now, &self.view.marks)
                } else {
                    None
                }
            }
        };
        if let Some(c) = change {
            self.apply_stall(h, vec![c], now);
        }
        self.stall_tick(h, now);
    }

    /// The detector's decisions due at `now_ms` (a comparison when none is), applied.
    pub(super) fn stall_tick(&mut self, shared: &dyn Shared, now_ms: i64) {
        let changes = self.stall.tick(now_ms, &self.view.marks);
        if !changes.is_empty() {
            self.apply_stall(shared, changes, now_ms);
        }
    }

    /// Shares the detector's decisions with every VM: a stall written only if the guard lets it
    /// (at most `max_stalled_percent`, never the last serving instance, against the marks as
    /// they are at the write), a recovery removed; counted and logged.
    pub(super) fn apply_stall(&mut self, shared: &dyn Shared, changes: Vec<Change>, now_ms: i64) {
        for change in changes {
            match change {
                Change::Stall { svc, addr, cause, quiet_ms, bound_ms } => {
                    let Some(s) = self.services.get(svc) else { continue };
                    let members = &s.view.snap.members;
                    let Some(member) = crate::instance::find(members, &addr) else { continue };
                    let pct = s.cfg.stall_detection.max_stalled_percent;
                    let guard = |m: &marks::Marks| stall::may_stall(members, m, &addr, pct);
                    let written = marks::stall(shared, &self.keys, member, now_ms, cause, guard);
                    // written, or not: then another VM may have stalled it first (not an overflow)
                    self.sync(shared, now_ms);
                    let Some(s) = self.services.get_mut(svc) else { continue };
                    let name = &s.cfg.name;
                    if written {
                        match cause {
                            StallCause::Quiet => {
                                s.stats.stalls_quiet += 1;
                                warn!(
                                    "service '{name}': {addr} stalled: it answered nothing for {quiet_ms} ms with requests on it (its bound {bound_ms} ms) while others answered; no new requests go to it until it answers"
                                );
                            }
                            StallCause::ConnectFailure => {
                                s.stats.stalls_connect_failure += 1;
                                warn!(
                                    "service '{name}': {addr} stalled: a connection to it could not be made; no new requests go to it until it answers"
                                );
                            }
                        }
                    } else if !self.view.marks.stalled.contains_key(&addr) {
                        s.stats.stall_overflow += 1;
                        let name = name.clone();
                        self.log_limited(svc, "stall_overflow", now_ms, || {
                            format!("service '{name}': {addr} looks stalled, but stall_detection.max_stalled_percent or the last serving instance keeps it in")
                        });
                    }
                }
                Change::Recover { svc, addr } => {
                    if !marks::recover(shared, &self.keys, &addr) {
                        continue;
                    }
                    self.sync(shared, now_ms);
                    if let Some(s) = self.services.get_mut(svc) {
                        s.stats.stall_recovered += 1;
                        info!("service '{}': {addr} answered; it gets requests again", s.cfg.name);
                    }
                }
            }
        }
    }

    /// The poller's stall probes due at `now_ms`, appended to `out`: each stalled member, through
    /// its service's routing cluster with the routing header naming it.
    pub(super) fn stall_probes_due(&mut self, now_ms: i64, out: &mut Vec<Dispatch>) {
        let services = &self.services;
        let due = self.stall.probes_due(&self.view.marks, now_ms, |addr| {
            services.iter().position(|s| crate::instance::find(&s.view.snap.members, addr).is_some())
        });
        for (svc, addr) in due {
            let (Some(s), Some(cfg)) = (self.services.get_mut(svc), self.stall.config(svc)) else { continue };
            let Some(cluster) = s.cfg.match_clusters.first() else {
                self.stall.probe_dispatch_failed(&addr, now_ms);
                continue;
            };
            let request = stall::probe_request(cfg, &s.cfg.header, &addr);
            s.stats.stall_probes += 1;
            out.push(Dispatch { service: svc, purpose: Purpose::StallProbe(addr), cluster: cluster.clone(), request });
        }
    }

    /// A stall probe of `addr` answered `status` (`None`: no answer within its timeout): an answer
    /// brings the instance back for every VM; none doubles the wait for the next probe.
    pub(super) fn on_stall_probe_reply(
        &mut self,
        shared: &dyn Shared,
        svc: usize,
        addr: &str,
        status: Option<u16>,
        now_ms: i64,
    ) {
        let answered = stall::probe_answered(status);
        self.stall.on_probe_reply(addr, answered, now_ms);
        if answered {
            self.answered(shared, svc, addr, now_ms);
        }
    }

    /// `addr` of service `svc` answered outside a tracked request (a stall probe, a passing
    /// active health check): a stalled instance is back.
    pub(super) fn answered(&mut self, shared: &dyn Shared, svc: usize, addr: &str, now_ms: i64) {
        self.sync(shared, now_ms);
        if let Some(c) = self.stall.on_response(svc, addr, None, now_ms, &self.view.marks) {
            self.apply_stall(shared, vec![c], now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crate::instance::State;
    use crate::registry::HttpResponse;
    use crate::vm::testing::*;
    use crate::vm::{Exchange, Flow, Purpose, Ticket, Vm};
    use crate::{clock::Rng, config};

    const FROZEN: &str = "10.0.0.2:80";
    const TIMEOUT: &str = "upstream_reset_before_response_started{connection_timeout}";

    /// One request on its way: the exchange, and when its instance answers (`None`: never).
    struct InFlight {
        ex: Exchange,
        answer_at: Option<i64>,
    }

    /// A caller sending GETs every `step_ms` to 3 instances answering in 5 ms, through one VM
    /// with its 100 ms tick; from `freeze` on, FROZEN answers nothing.
    struct Traffic {
        w: World,
        flight: VecDeque<InFlight>,
        /// (time, routing header value) of every request.
        sent: Vec<(i64, String)>,
        stuck: Vec<Exchange>,
        freeze: i64,
        next_tick: i64,
        probes: u32,
    }

    impl Traffic {
        fn new(cfg: &[u8], freeze: i64) -> Traffic {
            let mut w = World::new(cfg);
            w.refresh(THREE, NOW);
            Traffic { w, flight: VecDeque::new(), sent: vec![], stuck: vec![], freeze, next_tick: NOW, probes: 0 }
        }

        fn answer(&mut self, ex: &Exchange, t: i64) {
            let mut h = host(&self.w.shared, t, &[], Some("demo"));
            h.props.push(("upstream.address", ex.primary().unwrap().to_string()));
            *h.resp.borrow_mut() = vec![(":status".into(), "200".into())];
            self.w.vm.on_response(&h, ex);
        }

        /// Runs the traffic until `until`.
        fn run(&mut self, from: i64, until: i64, step_ms: i64) {
            let mut t = from;
            while t < until {
                // answers and ticks due before this request
                loop {
                    let next_answer = self.flight.iter().filter_map(|f| f.answer_at).min().unwrap_or(i64::MAX);
                    if self.next_tick <= t && self.next_tick <= next_answer {
                        let now = self.next_tick;
                        for d in self.w.vm.on_tick(&self.w.shared, now) {
                            let Purpose::StallProbe(addr) = &d.purpose else { continue };
                            // a probe of the frozen one times out, unanswered
                            assert_eq!(addr, FROZEN);
                            self.probes += 1;
                            self.w.vm.dispatched(self.probes, &d);
                            let resp = HttpResponse { status: None, headers: &[], body: b"", body_size: 0 };
                            self.w.vm.on_call_reply(&self.w.shared, self.probes, &resp, now + 1000);
                        }
                        self.next_tick += 100;
                        continue;
                    }
                    if next_answer > t {
                        break;
                    }
                    let i = self.flight.iter().position(|f| f.answer_at == Some(next_answer)).unwrap();
                    let f = self.flight.remove(i).unwrap();
                    self.answer(&f.ex, next_answer);
                }
                let h = host(&self.w.shared, t, &[(":path", "/x"), (":method", "GET")], Some("demo"));
                let mut ex = Exchange::default();
                assert_eq!(self.w.vm.on_request(&h, &mut ex), Flow::Continue);
                assert_eq!(ex.stall.get(), Ticket::Waiting, "tracked");
                self.w.vm.on_request_end(&h, &ex);
                assert!(matches!(ex.stall.get(), Ticket::Sent(_)));
                self.sent.push((t, ex.written.clone()));
                if ex.primary() == Some(FROZEN) && t >= self.freeze {
                    self.stuck.push(ex);
                } else {
                    self.flight.push_back(InFlight { ex, answer_at: Some(t + 5) });
                }
                t += step_ms;
            }
        }

        fn last_sent_to(&self, addr: &str) -> i64 {
            self.sent.iter().filter(|(_, v)| v.starts_with(addr)).map(|(t, _)| *t).max().unwrap_or(i64::MIN)
        }
    }

    /// A frozen instance (3 instances, about 150 req/s through one VM, so about 50 req/s to it):
    /// no request is sent to it later than 250 ms after the freeze, not even as a fallback, and
    /// the shared marks take it out for every VM; nothing else is taken out. The first answer
    /// from it brings it back.
    #[test]
    fn a_frozen_instance_is_left_within_250ms_and_back_at_its_first_answer() {
        for phase in [0, 2, 5] {
            let freeze = NOW + 5_000 + phase;
            let mut tr = Traffic::new(CFG, freeze);
            tr.run(NOW, NOW + 8_000, 7);
            let s = &tr.w.vm.services[0].stats;
            assert_eq!((s.stalls_quiet, s.stalls_connect_failure, s.stall_overflow), (1, 0, 0), "phase {phase}");
            let last = tr.last_sent_to(FROZEN);
            assert!(last >= freeze && last - freeze <= 250, "phase {phase}: last request {} ms after", last - freeze);
            let after: Vec<&String> = tr.sent.iter().filter(|(t, _)| *t > freeze + 250).map(|(_, v)| v).collect();
            assert!(after.iter().all(|v| !v.contains(FROZEN)), "never a fallback either: {:?}", after.first());
            assert!(!tr.stuck.is_empty() && tr.stuck.len() <= 15, "{} stuck", tr.stuck.len());
            assert_eq!(state_of(&tr.w, FROZEN), State::Down);
            assert_eq!(tr.w.vm.view.marks.stalled.len(), 1);
            assert_eq!(tr.w.vm.services[0].stats.stall_probes, u64::from(tr.probes));
            assert!((1..=2).contains(&tr.probes), "probed at 1 s, then 2 s after an unanswered one: {}", tr.probes);
            // another VM routes around it at once
            let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
            other.sync(&tr.w.shared, NOW + 8_000);
            assert_eq!(crate::instance::find(&other.services[0].view.members, FROZEN).unwrap().state, State::Down);
            let gauge: Vec<u64> = tr.w.vm.gauges(NOW + 8_000).map(|(_, g)| g.stalled).collect();
            assert_eq!(gauge, [1]);
            // it thaws: the first answer (a request that was on it) brings it back for every VM
            let ex = tr.stuck.remove(0);
            tr.answer(&ex, NOW + 8_000);
            assert_eq!(tr.w.vm.services[0].stats.stall_recovered, 1);
            assert_eq!(state_of(&tr.w, FROZEN), State::Serving);
            other.sync(&tr.w.shared, NOW + 8_001);
            assert_eq!(crate::instance::find(&other.services[0].view.members, FROZEN).unwrap().state, State::Serving);
            // the others it held end without holding it out again
            for ex in std::mem::take(&mut tr.stuck) {
                tr.answer(&ex, NOW + 8_001);
            }
            tr.freeze = i64::MAX;
            tr.run(NOW + 8_010, NOW + 10_000, 7);
            assert_eq!(tr.w.vm.services[0].stats.stalls_quiet, 1, "once");
            assert!(tr.last_sent_to(FROZEN) > NOW + 9_900, "it gets its share again");
        }
    }

    /// Slow but healthy instances, and pauses shorter than the bound, stall nothing; a service
    /// whose instances all stop answering together is not stalled either (no evidence).
    #[test]
    fn no_stall_without_a_frozen_instance() {
        let mut tr = Traffic::new(CFG, i64::MAX);
        tr.run(NOW, NOW + 5_000, 7);
        // all three stop answering for 2 s together
        let (mut w, mut flight) = (tr.w, VecDeque::new());
        for k in 0..200 {
            let t = NOW + 5_000 + 10 * k;
            let h = host(&w.shared, t, &[(":path", "/x")], Some("demo"));
            let mut ex = Exchange::default();
            w.vm.on_request(&h, &mut ex);
            w.vm.on_request_end(&h, &ex);
            flight.push_back(ex);
            if k % 10 == 0 {
                w.vm.on_tick(&w.shared, t);
            }
        }
        for ex in flight {
            let h = host(&w.shared, NOW + 7_005, &[], Some("demo"));
            *h.resp.borrow_mut() = vec![(":status".into(), "200".into())];
            w.vm.on_response(&h, &ex);
        }
        let s = &w.vm.services[0].stats;
        assert_eq!((s.stalls_quiet, s.stall_overflow), (0, 0));
        assert!(w.vm.view.marks.stalled.is_empty());
    }

    /// Stall detection turned off for a service, and excluded paths, track nothing.
    #[test]
    fn excluded_requests_are_not_tracked() {
        let cfg = |sd: &str| {
            format!(
                r#"{{"registries":{{"s":{{"type":"static","cluster":"cp","authority":"cp","path":"/{{service}}"}}}},
                "services":[{{"name":"demo","registry":"s","stall_detection":{sd}}}]}}"#
            )
        };
        let off = cfg(r#"{"enabled":false}"#);
        let mut w = World::new(off.as_bytes());
        w.refresh(THREE, NOW);
        let h = host(&w.shared, NOW, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        assert_eq!(ex.stall.get(), Ticket::None, "off");
        let on = cfg(r#"{"exclude_paths":["/poll"]}"#);
        let mut w = World::new(on.as_bytes());
        w.refresh(THREE, NOW);
        for (path, tracked) in [("/poll?wait=30", false), ("/polling", false), ("/x", true), ("/x?poll", true)] {
            let h = host(&w.shared, NOW, &[(":path", path)], Some("demo"));
            let mut ex = Exchange::default();
            w.vm.on_request(&h, &mut ex);
            assert_eq!(ex.stall.get() == Ticket::Waiting, tracked, "{path}");
        }
        let h = host(&w.shared, NOW, &[(":path", "/ws"), ("upgrade", "websocket")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        assert_eq!(ex.stall.get(), Ticket::None);
    }

    /// A request that ends without response headers (the client gave up, a reset) is no longer
    /// pending on its instance.
    #[test]
    fn a_request_without_an_answer_is_released_at_the_end() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        let h = host(&w.shared, NOW, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        w.vm.on_request_end(&h, &ex);
        let addr = ex.primary().unwrap().to_string();
        assert_eq!(w.vm.stall.pending(0, &addr), 1);
        w.vm.on_log(&h, &ex);
        assert_eq!(w.vm.stall.pending(0, &addr), 0);
        assert_eq!(ex.stall.get(), Ticket::None);
        // answered before its body ended (an early response): nothing is left pending
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let hr = host(&w.shared, NOW, &[], Some("demo"));
        *hr.resp.borrow_mut() = vec![(":status".into(), "413".into())];
        w.vm.on_response(&hr, &ex);
        w.vm.on_request_end(&h, &ex);
        assert_eq!(w.vm.stall.pending(0, ex.primary().unwrap()), 0);
    }

    /// A request pinned to `addr` (the pin goes first) whose connection timed out.
    fn timed_out(vm: &mut Vm, shared: &crate::store::FakeShared, addr: &str, now: i64) {
        let h = host(shared, now, &[(":path", "/x"), ("x-pin", addr)], Some("demo"));
        let mut ex = Exchange::default();
        vm.on_request(&h, &mut ex);
        vm.on_request_end(&h, &ex);
        assert_eq!(ex.primary(), Some(addr));
        let mut h = host(shared, now, &[], Some("demo"));
        h.props.push(("response.code_details", TIMEOUT.into()));
        *h.resp.borrow_mut() = vec![(":status".into(), "503".into())];
        vm.on_response(&h, &ex);
    }

    /// Two VMs see the same instance fail: the first stalls it, the second finds it stalled (no
    /// overflow counted); a second instance would be over max_stalled_percent (one of three): the
    /// guard refuses it, counted as an overflow.
    #[test]
    fn the_guard_and_a_stall_made_by_another_vm() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW);
        timed_out(&mut w.vm, &w.shared, "10.0.0.1:80", NOW);
        assert_eq!(w.vm.services[0].stats.stalls_connect_failure, 1);
        // the other VM has not read the marks since: it proposes the same stall
        assert!(other.view.marks.stalled.is_empty(), "not synced yet");
        let c = other.stall.on_connect_failure(0, "10.0.0.1:80", NOW, &other.view.marks);
        other.apply_stall(&w.shared, c.into_iter().collect(), NOW);
        let s = &other.services[0].stats;
        assert_eq!((s.stalls_connect_failure, s.stall_overflow), (0, 0), "stalled by the first VM");
        // one of three is the cap (50 % of 3, at least one): the next is refused
        timed_out(&mut other, &w.shared, "10.0.0.2:80", NOW + 10);
        let s = &other.services[0].stats;
        assert_eq!((s.stalls_connect_failure, s.stall_overflow), (0, 1));
        assert_eq!(other.view.marks.stalled.len(), 1);
    }

    /// A passing active health check is an answer: it ends a stall before the stall probe is due.
    #[test]
    fn a_passing_health_check_ends_a_stall() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","health_check":{"path":"/health","interval_ms":200,"timeout_ms":100}}]}"#;
        let mut w = World::new(cfg);
        w.refresh(THREE, NOW);
        let h = host(&w.shared, NOW, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        w.vm.on_request_end(&h, &ex);
        let dead = ex.primary().unwrap().to_string();
        let mut h = host(&w.shared, NOW, &[], Some("demo"));
        h.props.push(("response.code_details", TIMEOUT.into()));
        *h.resp.borrow_mut() = vec![(":status".into(), "503".into()), ("x-envoy-attempt-count".into(), "1".into())];
        w.vm.on_response(&h, &ex);
        assert!(w.vm.view.marks.stalled.contains_key(&dead));
        let mut token = 50;
        for t in (100..=600).step_by(100) {
            for d in w.vm.on_tick(&w.shared, NOW + t) {
                assert!(!matches!(d.purpose, Purpose::StallProbe(_)), "the check came first");
                let Purpose::Probe(addr) = &d.purpose else { continue };
                token += 1;
                w.vm.dispatched(token, &d);
                let hs = vec![(":status".to_string(), "200".to_string())];
                let resp = HttpResponse { status: Some(200), headers: &hs, body: b"", body_size: 0 };
                w.vm.on_call_reply(&w.shared, token, &resp, NOW + t + 2);
                if addr == &dead {
                    assert!(w.vm.view.marks.stalled.is_empty(), "its check passed: back");
                }
            }
        }
        assert_eq!(w.vm.services[0].stats.stall_recovered, 1);
    }

    /// A connection that timed out (a partition) or was refused stalls its instance at once, and
    /// marks Envoy's answer as unreached (any method may be sent again); the poller's stall
    /// probes go through the routing cluster with the routing header naming it, back off while
    /// they get no answer, and the first answer brings it back.
    #[test]
    fn a_connect_timeout_stalls_at_once_and_a_probe_brings_it_back() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        let h = host(&w.shared, NOW, &[(":path", "/x"), (":method", "POST")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let h = host(&w.shared, NOW + 500, &[], Some("demo"));
        w.vm.on_request_end(&h, &ex);
        let dead = ex.primary().unwrap().to_string();
        let mut h = host(&w.shared, NOW + 500, &[], Some("demo"));
        h.props.push(("upstream.address", dead.clone()));
        h.props.push(("response.code_details", TIMEOUT.into()));
        *h.resp.borrow_mut() = vec![(":status".into(), "503".into())];
        w.vm.on_response(&h, &ex);
        let s = &w.vm.services[0].stats;
        assert_eq!((s.stalls_connect_failure, s.ejections_enforced), (1, 1));
        assert!(h.resp.borrow().iter().any(|(k, _)| k == crate::health::UNREACHED_HEADER));
        assert_eq!(state_of(&w, &dead), State::Down);
        let h = host(&w.shared, NOW + 500, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        let Flow::Reply(r) = w.vm.on_request(&h, &mut Exchange::default()) else { panic!("no document") };
        let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let inst = doc["services"][0]["instances"].as_array().unwrap().iter().find(|i| i["address"] == dead.as_str());
        assert_eq!(inst.unwrap()["stalled"]["cause"], "connect_failure");
        // probes: 1 s after the stall, then at twice the interval while unanswered
        let mut token = 900;
        let mut probes = vec![];
        for t in (600..=12_000).step_by(100) {
            let now = NOW + t;
            for d in w.vm.on_tick(&w.shared, now) {
                let Purpose::StallProbe(addr) = &d.purpose else { continue };
                assert_eq!((addr.as_str(), d.cluster.as_str()), (dead.as_str(), "demo"));
                assert_eq!(d.request.header("x-lossless-upstream"), Some(dead.as_str()));
                assert_eq!((d.request.header(":path"), d.request.timeout_ms), (Some("/"), 1000));
                token += 1;
                w.vm.dispatched(token, &d);
                probes.push(t);
                // no answer within its timeout, until the third probe is answered
                let status = (probes.len() == 3).then_some(200);
                let hs: Vec<(String, String)> =
                    status.map(|s| vec![(":status".into(), s.to_string())]).unwrap_or_default();
                let resp = HttpResponse { status, headers: &hs, body: b"", body_size: 0 };
                let at = if status.is_some() { now + 3 } else { now + 1000 };
                assert!(w.vm.on_call_reply(&w.shared, token, &resp, at).is_none());
            }
        }
        // 1 s after the stall; unanswered at +1 s, then 2 s later; unanswered, then 4 s later
        assert_eq!(probes, [1500, 4500, 9500]);
        assert_eq!(w.vm.services[0].stats.stall_probes, 3);
        assert!(w.vm.view.marks.stalled.is_empty(), "answered: back");
        assert_eq!(w.vm.services[0].stats.stall_recovered, 1);
    }
}
