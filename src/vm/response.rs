//! The response path inside the VM: inbound, a response served while draining is tagged;
//! outbound, the instance that served it is judged (outlier detection, trials) and a drain notice
//! marks it for every VM.

use log::{info, warn};

use super::{Exchange, Host, Vm};
use crate::config::{Mode, RoutingMode};
use crate::drain::{is_drain_notice, is_refusal, SERVED_WHILE_DRAINING};
use crate::headers::Headers;
use crate::health::{classify, Failure, Outcome, UNREACHED_HEADER};
use crate::instance::canonical_addr;
use crate::marks;

impl Vm {
    /// Learns from a response: inbound, tags responses served while draining; outbound, judges
    /// the instance that served it (outlier detection) and marks one that announced its drain.
    pub fn on_response(&mut self, h: &dyn Host, ex: &Exchange) {
        if ex.local {
            return;
        }
        match self.settings.mode {
            Mode::Inbound => {
                // requests served while draining (in flight, or within the notify grace) tell the
                // caller with the drain header; its value is not a refusal reason, so a caller's
                // retry policy (which retries refusals only) never resends work that was done
                if self.view.self_drain.draining()
                    && !h.set_response_header(&self.settings.drain.header, Some(SERVED_WHILE_DRAINING))
                {
                    warn!("cannot set the drain header on a response");
                }
            }
            Mode::Outbound => {
                let header = &self.settings.drain.header;
                let Some(svc) = ex.service else {
                    // the outer hop of the original_dst template: the instance's refusal its
                    // route retried on is not about this proxy (a caller running lossless would
                    // mark this proxy); the inner hop's own 503s keep their reason. Other
                    // unrouted responses are not read at all.
                    if self.original_dst_outer
                        && h.response_headers().get(header).is_some_and(is_refusal)
                        && !h.set_response_header(header, None)
                    {
                        warn!("cannot remove the drain header from a response");
                    }
                    return;
                };
                let headers = h.response_headers();
                // a value that is not text is no notice, but it is removed all the same
                let (present, value) = (headers.contains(header), headers.get(header));
                let notice = value.is_some_and(is_drain_notice);
                // a refusal (draining, or over a warming instance's admission cap) did no work:
                // neither a success nor a failure of the instance
                let status = headers.get(":status").and_then(|v| v.parse::<u16>().ok());
                let attempts =
                    headers.get("x-envoy-attempt-count").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(1);
                // Envoy's response details, read once at most, and only for 502/503/504
                let details = std::cell::OnceCell::new();
                let details = || details.get_or_init(|| h.property(&["response", "code_details"])).clone();
                self.judge(h, &headers, ex, svc, status, attempts, notice || value.is_some_and(is_refusal), &details);
                self.stall_response(h, ex, svc, status, attempts, &details);
                if notice && self.settings.drain.notify {
                    if let Some(addr) = h.property(&["upstream", "address"]) {
                        self.mark_draining(h, &addr);
                    }
                }
                // the notice is about the upstream and has been acted on: it does not travel
                // further, except a refusal that the original_dst template's outer route retries
                // (that hop removes it after its retries)
                let original_dst = self.services.get(svc).is_some_and(|s| s.cfg.routing == RoutingMode::OriginalDst);
                let retried_outside = original_dst && value.is_some_and(is_refusal);
                if present && !retried_outside && !h.set_response_header(&self.settings.drain.header, None) {
                    warn!("cannot remove the drain header from a response");
                }
            }
        }
    }

    /// Outlier detection for one routed response: the attempts Envoy left for another count as
    /// connection failures; the last attempt's outcome counts for or against its instance.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        h: &dyn Host,
        headers: &Headers,
        ex: &Exchange,
        svc: usize,
        status: Option<u16>,
        attempts: usize,
        drain: bool,
        details: &dyn Fn() -> Option<String>,
    ) {
        let Some(sc) = self.services.get(svc).map(|s| &s.cfg) else { return };
        let (enabled, original_dst) = (sc.outlier_detection.enabled, sc.routing == RoutingMode::OriginalDst);
        let outcome = classify(status, drain, details);
        if outcome == Outcome::Failed(Failure::LocalOrigin) {
            // nothing reached the instance: an Envoy in front may resend it (original_dst template)
            if !h.set_response_header(UNREACHED_HEADER, Some("connection_failure")) {
                warn!("cannot set {UNREACHED_HEADER} on a response");
            }
        } else if original_dst && headers.contains(UNREACHED_HEADER) {
            // only lossless may say so: an instance's own header could get work done twice
            h.set_response_header(UNREACHED_HEADER, None);
        }
        if !enabled {
            return;
        }
        // the served instance is needed only when something is to be learnt about it
        let learn = attempts > 1 || ex.trial || matches!(outcome, Outcome::Failed(_)) || !self.failures.is_empty();
        let Some(last) = learn.then(|| h.property(&["upstream", "address"])).flatten() else { return };
        let now = h.now_ms();
        let written: Vec<&str> = ex.written.split(',').collect();
        for addr in marks::failed_attempts(&written, attempts, &last) {
            // a trial that failed and was retried elsewhere is a failed trial all the same
            let failed_trial = ex.trial && written.first() == Some(addr);
            self.failed(h, svc, addr, Failure::LocalOrigin, failed_trial, now);
        }
        let trial = ex.trial && written.first() == Some(&last.as_str()) && attempts == 1;
        match outcome {
            Outcome::Success => {
                self.failures.remove(&last);
                if trial && marks::readmit(h, &self.keys, &last) {
                    if let Some(s) = self.services.get_mut(svc) {
                        s.stats.readmitted += 1;
                        info!("service '{}': {last} answered its trial request; readmitted", s.cfg.name);
                    }
                    self.sync(h, now);
                }
            }
            Outcome::Failed(kind) => self.failed(h, svc, &last, kind, trial, now),
            Outcome::Neutral => {}
        }
    }

    /// Counts a failure of `addr`; ejects it for every VM once the consecutive count reaches the
    /// threshold (at once for a failed trial), unless too many instances of `svc` are out.
    fn failed(&mut self, h: &dyn Host, svc: usize, addr: &str, kind: Failure, trial: bool, now: i64) {
        let Some(s) = self.services.get(svc) else { return };
        let od = s.cfg.outlier_detection;
        let Some(member) = crate::instance::find(&s.view.snap.members, addr) else { return };
        let counts = self.failures.entry(addr.to_string()).or_default();
        if !(counts.fail(kind, &od) || trial) {
            return;
        }
        self.failures.remove(addr);
        let members = &s.view.snap.members;
        let may_eject =
            |m: &marks::Marks| od.may_eject(members.len(), members.iter().filter(|x| m.is_ejected(x)).count());
        let ejected = marks::eject(h, &self.keys, member, now, &od, trial, may_eject);
        let Some(s) = self.services.get_mut(svc) else { return };
        if ejected {
            s.stats.ejections_enforced += 1;
            let why = match kind {
                Failure::LocalOrigin => "connection failure",
                Failure::Gateway => "gateway failures",
            };
            warn!(
                "service '{}': {addr} ejected ({why}{}); no new requests go to it",
                s.cfg.name,
                if trial { ", trial failed" } else { "" }
            );
            self.sync(h, now);
        } else if !self.view.marks.ejected.contains_key(addr) {
            s.stats.ejections_overflow += 1;
        }
    }

    /// An upstream announced its drain: mark it for every VM (members only: the drain header of
    /// a stranger changes nothing).
    fn mark_draining(&mut self, h: &dyn Host, addr: &str) {
        let Some(addr) = canonical_addr(addr) else { return };
        let Some(start) =
            self.services.iter().find_map(|s| crate::instance::find(&s.view.snap.members, &addr).map(|m| m.start_ms))
        else {
            return;
        };
        if marks::mark_draining(h, &self.keys, &addr, start) {
            self.stats.notify_marks += 1;
            info!("upstream {addr} announced it is draining; no new requests go to it");
            self.sync(h, h.now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::health::UNREACHED_HEADER;
    use crate::instance::State;
    use crate::vm::testing::*;
    use crate::vm::{Exchange, Flow, Vm};
    use crate::{clock::Rng, config};

    const REFUSED: &str =
        "upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_Connection_refused}";

    /// Routes one request and answers it with `resp` headers from `upstream`.
    fn exchange(w: &mut World, now: i64, upstream: &str, resp: &[(&str, &str)]) -> String {
        let h = host(&w.shared, now, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let mut h = host(&w.shared, now, &[], Some("demo"));
        h.props.push(("upstream.address", upstream.to_string()));
        *h.resp.borrow_mut() = resp.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        w.vm.on_response(&h, &ex);
        ex.written
    }

    #[test]
    fn notify_marks_until_restart_or_gone() {
        let mut w = World::new(CFG);
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":100},{"address":"10.0.0.2:80"}]}"#, NOW);
        exchange(&mut w, NOW, "1.2.3.4:80", &[("x-lossless-drain", "draining")]);
        assert_eq!(w.vm.stats.notify_marks, 0, "strangers cannot be marked");
        exchange(&mut w, NOW, "10.0.0.1:80", &[("x-lossless-drain", "draining")]);
        assert_eq!(w.vm.stats.notify_marks, 1);
        // another VM sees it at once through the generation
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW);
        assert_eq!(other.services[0].view.members[0].state, State::Draining);
        for _ in 0..100 {
            assert_eq!(w.route("demo", None, NOW).unwrap(), "10.0.0.2:80");
        }
        // registry still lists it with the same start: the mark holds
        w.refresh(
            r#"{"instances":[{"address":"10.0.0.1:80","start_ms":100},{"address":"10.0.0.2:80","weight":5}]}"#,
            NOW + 2000,
        );
        assert_eq!(w.members()[0].state, State::Draining);
        // restarted (newer start): the mark goes
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":200},{"address":"10.0.0.2:80"}]}"#, NOW + 4000);
        assert_eq!(w.members()[0].state, State::Serving);
        assert!(w.vm.view.marks.m.is_empty());
    }

    /// Routes one request (matched by `cluster`) and answers it with `resp` from `upstream`;
    /// returns the response headers as the filter left them for the downstream.
    fn relay(w: &mut World, cluster: Option<&str>, upstream: &str, resp: &[(&str, &str)]) -> Vec<(String, String)> {
        let h = host(&w.shared, NOW, &[(":path", "/x")], cluster);
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let mut h = host(&w.shared, NOW, &[], cluster);
        h.props.push(("upstream.address", upstream.to_string()));
        *h.resp.borrow_mut() = resp.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        w.vm.on_response(&h, &ex);
        let left = h.resp.borrow().clone();
        left
    }

    /// An instance's `flow_limited` / `not_ready` refusal is neither a drain notice nor a failure:
    /// a warming instance is not marked draining nor ejected by its callers, and the header stops
    /// at this hop.
    #[test]
    fn warming_instances_refusals_mark_nothing() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        for why in ["flow_limited", "not_ready"] {
            for _ in 0..10 {
                let left = relay(&mut w, Some("demo"), "10.0.0.1:80", &[(":status", "503"), ("x-lossless-drain", why)]);
                assert_eq!(drain_value(&left), None, "{why}");
            }
        }
        assert_eq!((w.vm.stats.notify_marks, w.vm.services[0].stats.ejections_enforced), (0, 0));
        assert!(w.vm.view.marks.m.is_empty() && w.vm.view.marks.ejected.is_empty());
    }

    fn drain_value(headers: &[(String, String)]) -> Option<&str> {
        headers.iter().find(|(k, _)| k == "x-lossless-drain").map(|(_, v)| v.as_str())
    }

    /// A drain header is about the upstream that sent it. Passed on, a caller that runs lossless
    /// in front of this proxy would mark this proxy draining (two tiers of lossless, or a gateway
    /// that copies response headers through), and a lossless proxy's own refusal reasons would
    /// read as "draining" one tier up.
    #[test]
    fn drain_header_stops_at_the_hop_it_is_about() {
        let mut w = World::new(CFG);
        w.refresh(
            r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#,
            NOW,
        );
        let status = (":status", "200");
        // served while draining: marked, and not passed on
        let left = relay(&mut w, Some("demo"), "10.0.0.1:80", &[status, ("x-lossless-drain", "draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (1, None));
        assert_eq!(left, vec![(":status".to_string(), "200".to_string())], "other headers untouched");
        // a lossless proxy's own refusal is about that proxy's upstreams: no mark, not passed on
        for reason in ["none_serving", "no_instances", "pinned_draining", "no_membership"] {
            let left = relay(&mut w, Some("demo"), "10.0.0.2:80", &[(":status", "503"), ("x-lossless-drain", reason)]);
            assert_eq!(drain_value(&left), None, "{reason}");
        }
        assert_eq!((w.vm.stats.notify_marks, state_of(&w, "10.0.0.2:80")), (1, State::Serving));
        // an application's own value and an instance's refusal are notices
        relay(&mut w, Some("demo"), "10.0.0.2:80", &[status, ("x-lossless-drain", "true")]);
        let left =
            relay(&mut w, Some("demo"), "10.0.0.3:80", &[(":status", "503"), ("x-lossless-drain", "self_draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (3, None));
        // a cluster lossless does not route: not read (no host call), nothing marked
        let left = relay(&mut w, None, "10.0.0.9:80", &[status, ("x-lossless-drain", "draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (3, Some("draining")));
    }

    /// In the original_dst template an outer route retries an instance's refusal on its drain
    /// header (envoy/outbound-original-dst.yaml): the inner hop keeps `self_draining`, and the
    /// outer hop, where no service is routed, removes it after its retries.
    #[test]
    fn original_dst_keeps_a_refusal_for_the_outer_route() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","routing":{"mode":"original_dst"}}]}"#;
        let mut w = World::new(cfg);
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"}]}"#, NOW);
        let left =
            relay(&mut w, Some("demo"), "10.0.0.1:80", &[(":status", "503"), ("x-lossless-drain", "self_draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (1, Some("self_draining")));
        let left = relay(&mut w, Some("demo"), "10.0.0.2:80", &[(":status", "200"), ("x-lossless-drain", "draining")]);
        assert_eq!((w.vm.stats.notify_marks, drain_value(&left)), (2, None));
        let left = relay(
            &mut w,
            Some("demo-pick"),
            "10.0.0.1:80",
            &[(":status", "503"), ("x-lossless-drain", "self_draining")],
        );
        assert_eq!(drain_value(&left), None);
        // the inner hop's own 503 (a pin to a draining instance) keeps its reason for the client
        let own = [(":status", "503"), ("x-lossless-drain", "pinned_draining")];
        let left = relay(&mut w, Some("demo-pick"), "10.0.0.1:80", &own);
        assert_eq!(drain_value(&left), Some("pinned_draining"));
    }

    /// Sends one request to `demo` and answers it: `upstream` served the last of `attempts`, with
    /// `status` and Envoy's `details`. Returns the exchange.
    fn answer(w: &mut World, now: i64, upstream: Option<&str>, attempts: u32, status: u16, details: &str) -> Exchange {
        answer_with_headers(w, now, upstream, attempts, status, details).0
    }

    /// [`answer`], also returning the response headers as the filter left them.
    fn answer_with_headers(
        w: &mut World,
        now: i64,
        upstream: Option<&str>,
        attempts: u32,
        status: u16,
        details: &str,
    ) -> (Exchange, Vec<(String, String)>) {
        let h = host(&w.shared, now, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        assert_eq!(w.vm.on_request(&h, &mut ex), Flow::Continue);
        let first = ex.written.split(',').next().unwrap_or_default().to_string();
        let mut h = host(&w.shared, now, &[], Some("demo"));
        h.props.push(("upstream.address", upstream.map_or(first, String::from)));
        h.props.push(("response.code_details", details.to_string()));
        *h.resp.borrow_mut() =
            vec![(":status".into(), status.to_string()), ("x-envoy-attempt-count".into(), attempts.to_string())];
        w.vm.on_response(&h, &ex);
        let headers = h.resp.borrow().clone();
        (ex, headers)
    }

    #[test]
    fn a_failed_attempt_ejects_until_a_trial_succeeds() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        // two attempts: the first address written failed, the second served
        let h = host(&w.shared, NOW, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let written: Vec<String> = ex.written.split(',').map(String::from).collect();
        let mut h = host(&w.shared, NOW, &[], Some("demo"));
        h.props.push(("upstream.address", written[1].clone()));
        *h.resp.borrow_mut() = vec![(":status".into(), "200".into()), ("x-envoy-attempt-count".into(), "2".into())];
        w.vm.on_response(&h, &ex);
        let dead = written[0].as_str();
        assert_eq!(w.vm.services[0].stats.ejections_enforced, 1);
        assert_eq!(state_of(&w, dead), State::Down);
        for _ in 0..100 {
            assert!(!w.route("demo", None, NOW + 1).unwrap().contains(dead));
        }
        // another VM sees the ejection at once
        let mut other = Vm::new(config::parse(CFG).unwrap(), CFG, 2, Rng::new(2));
        other.sync(&w.shared, NOW + 1);
        assert_eq!(crate::instance::find(&other.services[0].view.members, dead).unwrap().state, State::Down);
        // the ejection time is over: no blind re-admission, one trial request goes to it first
        let ex = answer(&mut w, NOW + 30_000, None, 1, 503, REFUSED);
        assert!(ex.trial && ex.written.starts_with(dead), "{ex:?}");
        assert_eq!(w.vm.services[0].stats.ejection_trials, 1);
        // the trial failed: ejected again, for twice as long
        assert_eq!(w.vm.view.marks.ejected[dead].times, 2);
        // a trial that failed and that Envoy retried on the next address counts as failed too
        let h = host(&w.shared, NOW + 90_000, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        assert!(ex.trial && ex.written.starts_with(dead), "{ex:?}");
        let mut h = host(&w.shared, NOW + 90_000, &[], Some("demo"));
        h.props.push(("upstream.address", ex.written.split(',').nth(1).unwrap().to_string()));
        *h.resp.borrow_mut() = vec![(":status".into(), "200".into()), ("x-envoy-attempt-count".into(), "2".into())];
        w.vm.on_response(&h, &ex);
        assert_eq!(w.vm.view.marks.ejected[dead].times, 3, "failed trial, then retried elsewhere");
        assert!(!answer(&mut w, NOW + 30_001, None, 1, 200, "via_upstream").written.contains(dead));
        other.sync(&w.shared, NOW + 30_001);
        assert!(other.services[0].view.trial_due.is_empty(), "the other VM takes no trial of its own");
        assert!(!answer(&mut w, NOW + 89_999, None, 1, 200, "via_upstream").trial);
        // the next trial (after 90 s, the third ejection) succeeds: readmitted for every VM
        let ex = answer(&mut w, NOW + 180_000, None, 1, 200, "via_upstream");
        assert!(ex.trial && ex.written.starts_with(dead));
        assert_eq!(w.vm.services[0].stats.readmitted, 1);
        assert_eq!(state_of(&w, dead), State::Serving);
        other.sync(&w.shared, NOW + 180_001);
        assert_eq!(crate::instance::find(&other.services[0].view.members, dead).unwrap().state, State::Serving);
    }

    #[test]
    fn a_failure_count_leaves_with_its_instance() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        answer(&mut w, NOW, Some("10.0.0.3:80"), 1, 503, "via_upstream");
        assert!(w.vm.failures.contains_key("10.0.0.3:80"));
        // the instance leaves the registry with its count open: the count goes with it, so the
        // served address is no longer read on every response
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"}]}"#, NOW + 2000);
        assert!(w.vm.failures.is_empty());
    }

    #[test]
    fn consecutive_gateway_failures_eject_and_a_success_resets_the_count() {
        let mut w = World::new(CFG);
        w.refresh(THREE, NOW);
        let a = "10.0.0.1:80";
        for _ in 0..2 {
            answer(&mut w, NOW, Some(a), 1, 503, "via_upstream");
        }
        answer(&mut w, NOW, Some(a), 1, 200, "via_upstream");
        answer(&mut w, NOW, Some(a), 1, 504, "response_timeout");
        answer(&mut w, NOW, Some(a), 1, 502, "upstream_reset_before_response_started{connection_termination}");
        assert_eq!(state_of(&w, a), State::Serving, "two in a row since the last success");
        // a drain answer or Envoy's own overflow says nothing about the instance
        answer(&mut w, NOW, Some(a), 1, 503, "upstream_reset_before_response_started{overflow}");
        assert_eq!(state_of(&w, a), State::Serving);
        answer(&mut w, NOW, Some(a), 1, 503, "via_upstream");
        assert_eq!(state_of(&w, a), State::Down, "the third gateway failure in a row");
        // at most half of the instances (at least one) are ejected: the set is never emptied
        let b = "10.0.0.2:80";
        answer(&mut w, NOW, Some(b), 1, 503, REFUSED);
        assert!(!w.vm.view.marks.ejected.contains_key(b));
        assert_eq!(w.vm.services[0].stats.ejections_overflow, 1);
        // stall detection's cap is its own: the instance the request was sent to is stalled
        assert_eq!(w.vm.services[0].stats.stalls_connect_failure, 1);
        // the registry wins: a restart (newer start time) ends the ejection
        w.refresh(r#"{"instances":[{"address":"10.0.0.1:80","start_ms":5},{"address":"10.0.0.2:80"},{"address":"10.0.0.3:80"}]}"#, NOW + 2000);
        assert_eq!(state_of(&w, a), State::Serving);
        assert!(w.vm.view.marks.ejected.is_empty());
    }

    #[test]
    fn original_dst_ejects_on_the_first_connection_failure() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","routing":{"mode":"original_dst","header":"x-lossless-upstream","fallbacks":0}}]}"#;
        let mut w = World::new(cfg);
        let r = w.route("demo", None, NOW).unwrap_err();
        assert_eq!((r.status, reason(&r)), (503, "no_membership"), "original_dst has no fallback: a clear refusal");
        w.refresh(THREE, NOW);
        let (ex, headers) = answer_with_headers(&mut w, NOW, None, 1, 503, REFUSED);
        let dead = ex.written.clone();
        assert!(headers.contains(&(UNREACHED_HEADER.into(), "connection_failure".into())), "{headers:?}");
        let (_, headers) = answer_with_headers(&mut w, NOW, None, 1, 504, "upstream_response_timeout");
        assert!(!headers.iter().any(|(k, _)| k == UNREACHED_HEADER), "a timeout may have reached it: {headers:?}");
        // an instance cannot claim it was not reached (its POST would be resent)
        let h = host(&w.shared, NOW, &[(":path", "/x")], Some("demo"));
        let mut ex = Exchange::default();
        w.vm.on_request(&h, &mut ex);
        let mut h = host(&w.shared, NOW, &[], Some("demo"));
        h.props.push(("upstream.address", ex.written.clone()));
        *h.resp.borrow_mut() = vec![(":status".into(), "503".into()), (UNREACHED_HEADER.into(), "1".into())];
        h.props.push(("response.code_details", "via_upstream".into()));
        w.vm.on_response(&h, &ex);
        assert!(!h.resp.borrow().iter().any(|(k, _)| k == UNREACHED_HEADER), "{:?}", h.resp.borrow());
        assert_eq!(state_of(&w, &dead), State::Down);
        for _ in 0..50 {
            assert_ne!(w.route("demo", None, NOW).unwrap(), dead);
        }
    }

    /// The original_dst template's inner route resends a GET after a reset, to the same
    /// address (an instance killed with the request on it): the resend is refused, and the
    /// answer must still say that nothing was reached, so that the ingress route picks afresh.
    #[test]
    fn original_dst_a_reset_resent_to_the_same_address_and_refused_is_unreached() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","routing":{"mode":"original_dst","header":"x-lossless-upstream","fallbacks":0}}]}"#;
        let mut w = World::new(cfg);
        w.refresh(THREE, NOW);
        let (ex, headers) = answer_with_headers(&mut w, NOW, None, 2, 503, REFUSED);
        let dead = ex.written.clone();
        assert!(!dead.contains(','), "one address in original_dst: {dead}");
        assert!(headers.contains(&(UNREACHED_HEADER.into(), "connection_failure".into())), "{headers:?}");
        assert_eq!(state_of(&w, &dead), State::Down, "ejected at the refused resend");
        for _ in 0..50 {
            assert_ne!(w.route("demo", None, NOW).unwrap(), dead);
        }
        // a reset that was not followed by a refused connection may have reached it
        let (_, headers) = answer_with_headers(
            &mut w,
            NOW,
            None,
            2,
            503,
            "upstream_reset_after_response_started{connection_termination}",
        );
        assert!(!headers.iter().any(|(k, _)| k == UNREACHED_HEADER), "{headers:?}");
    }

    #[test]
    fn outlier_detection_can_be_turned_off() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","outlier_detection":{"enabled":false}}]}"#;
        let mut w = World::new(cfg);
        w.refresh(THREE, NOW);
        for _ in 0..5 {
            answer(&mut w, NOW, Some("10.0.0.1:80"), 1, 503, REFUSED);
        }
        assert_eq!(state_of(&w, "10.0.0.1:80"), State::Serving);
    }
}
