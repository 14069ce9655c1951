//! The admin endpoints as the VM answers them: who may call, the membership document with the
//! inbound registration and admission state, the drain and undrain calls ([`crate::admin`] is the
//! document and the rules).

use log::info;

use super::{Flow, Host, Vm};
use crate::admin::{self, AdminCall};
use crate::admission;
use crate::drain::LocalReply;
use crate::headers::Headers;
use crate::registration;
use crate::store::{bump_gen, Shared};

impl Vm {
    /// Inbound: the registration's shared state and the admission bucket, as the membership
    /// document's `self.online` object.
    fn online_json(&self, shared: &dyn Shared) -> Option<String> {
        let ib = self.settings.inbound.as_ref()?;
        let mut parts = Vec::new();
        if ib.registration.is_some() {
            let status = registration::status_json(shared.get(&self.keys.online()).0.as_deref());
            parts.push(format!("\"registration\":{}", status.as_deref().unwrap_or("null")));
        }
        if let (Some(rule), Some(a)) = (&self.admission, &ib.admission) {
            let b =
                shared.get(&self.keys.admission()).0.and_then(|v| admission::Bucket::decode(&v)).unwrap_or_default();
            parts.push(format!(
                "\"admission\":{{\"max_rps\":{},\"cold_factor\":{},\"warmup_ms\":{},\"allowed_rps\":{},\"second\":{},\"admitted\":{}}}",
                a.max_rps,
                a.cold_factor,
                ib.warmup_ms,
                // an untouched bucket fills to the cold end on its first request
                if b.last_filled_ms == 0 { rule.count / f64::from(rule.cold_factor) } else { rule.allowed_rps(b.tokens) }
                    as u64,
                b.second,
                b.passed
            ));
        }
        (!parts.is_empty()).then(|| format!("{{{}}}", parts.join(",")))
    }

    pub(super) fn admin(&mut self, h: &dyn Host, headers: &Headers, path: &str, now: i64) -> Flow {
        let forwarded = admin::FORWARDING_HEADERS.iter().any(|n| headers.contains(n));
        let text = |status: u32, body: &str| LocalReply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
        };
        let json = |body: String| LocalReply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        };
        if !admin::allowed(h.property(&["source", "address"]).as_deref(), forwarded) {
            self.stats.admin_denied += 1;
            return Flow::Reply(text(403, admin::FORBIDDEN));
        }
        let method = headers.get(":method").unwrap_or_default();
        match admin::call(&self.settings, method, path) {
            AdminCall::Membership => {
                self.sync(h, now);
                let online = self.online_json(h);
                let doc = admin::membership_json(
                    &self.settings,
                    &mut self.services,
                    &self.view,
                    now,
                    &mut self.rng,
                    self.poller,
                    online.as_deref(),
                );
                // the answering VM's id leads the document: each worker answers for itself
                let rest = doc.get(1..).unwrap_or_default();
                Flow::Reply(json(format!("{{\"vm\":\"{:016x}\",{rest}", self.vm_id)))
            }
            AdminCall::Drain(on) => {
                h.set(&self.keys.self_drain(), if on { b"1" } else { b"0" }, None);
                bump_gen(h, &self.keys);
                info!("local {} requested", if on { "drain" } else { "undrain" });
                Flow::Reply(json(format!("{{\"draining\":{on}}}\n")))
            }
            AdminCall::Unknown => Flow::Reply(text(404, admin::unknown_endpoint(self.settings.mode))),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::vm::testing::*;
    use crate::vm::{Exchange, Flow};

    #[test]
    fn admin_refuses_remote_and_forwarded_callers() {
        let mut w = World::new(CFG);
        let mut h = host(&w.shared, NOW, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        h.props = vec![("source.address", "10.1.1.1:5555".into())];
        assert!(matches!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 403));
        let h = host(
            &w.shared,
            NOW,
            &[(":path", "/lossless/membership"), (":method", "GET"), ("x-forwarded-for", "10.1.1.1")],
            None,
        );
        assert!(matches!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 403));
        assert_eq!(w.vm.stats.admin_denied, 2);
        let h = host(&w.shared, NOW, &[(":path", "/lossless/nope"), (":method", "GET")], None);
        assert!(matches!(w.vm.on_request(&h, &mut Exchange::default()), Flow::Reply(ref r) if r.status == 404));
    }

    #[test]
    fn membership_json_has_live_weights() {
        let mut w = World::new(CFG);
        w.refresh(&format!(r#"{{"instances":[{{"address":"10.0.0.1:80","start_ms":{},"warmup_ms":100000}},{{"address":"10.0.0.2:80"}}]}}"#, NOW - 50_000), NOW);
        let h = host(&w.shared, NOW, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        let Flow::Reply(r) = w.vm.on_request(&h, &mut Exchange::default()) else { panic!() };
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let inst = &j["services"][0]["instances"];
        assert_eq!(inst[0]["live_weight"], 50);
        assert_eq!(inst[0]["warming"], true);
        assert_eq!(inst[1]["live_weight"], 100);
        assert_eq!(j["vm"], "0000000000000001");
        assert_eq!(j["poller"], true);
        assert_eq!(j["services"][0]["hosts"]["warming"], 1);
        assert_eq!(j["services"][0]["overload_protection"], serde_json::Value::Null, "off unless configured");
        assert_eq!(j["services"][0]["no_membership_fallback"], serde_json::Value::Null, "not configured");
    }

    #[test]
    fn membership_json_names_the_no_membership_addresses_while_in_use() {
        let cfg = br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","routing":{"mode":"original_dst","no_membership_addresses":["10.96.0.10:8080","[::1]:80"]}}]}"#;
        let mut w = World::new(cfg);
        let j = membership(&mut w, NOW);
        assert_eq!(j["services"][0]["no_membership_fallback"], serde_json::json!(["10.96.0.10:8080", "[::1]:80"]));
        w.refresh(THREE, NOW);
        let j = membership(&mut w, NOW);
        assert_eq!(j["services"][0]["no_membership_fallback"], serde_json::Value::Null, "a membership is known");
    }

    fn membership(w: &mut World, now: i64) -> serde_json::Value {
        let h = host(&w.shared, now, &[(":path", "/lossless/membership"), (":method", "GET")], None);
        let Flow::Reply(r) = w.vm.on_request(&h, &mut Exchange::default()) else { panic!() };
        serde_json::from_str(&r.body).unwrap()
    }

    /// A scale-out from 2 to 8: six new instances, started 1 s apart, warm for 100 s. With the
    /// protection at 50 the membership document and the gauge say it is in force (6 of 8 warming)
    /// and every instance is picked by its full weight; it lifts at 3 of 8, and the three still
    /// warming go back on their ramp. Without it, the same membership ramps.
    #[test]
    fn overload_protection_in_membership_json_and_gauge() {
        const PROTECTED: &[u8] =
            br#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/{service}"}},
            "services":[{"name":"demo","registry":"s","warmup":{"overload_protection":{"threshold_percent":50}}}]}"#;
        let mut body = String::from(r#"{"instances":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80"}"#);
        for k in 0..6 {
            body += &format!(
                r#",{{"address":"10.0.1.{k}:80","start_ms":{},"warmup_ms":100000}}"#,
                NOW - 10_000 + k * 1_000
            );
        }
        body += "]}";
        let mut on = World::new(PROTECTED);
        let mut off = World::new(CFG);
        on.refresh(&body, NOW);
        off.refresh(&body, NOW);

        let j = membership(&mut on, NOW);
        let svc = &j["services"][0];
        assert_eq!(svc["hosts"]["warming"], 6);
        assert_eq!(svc["overload_protection"], serde_json::json!({"threshold_percent": 50, "in_force": true}));
        let inst = svc["instances"].as_array().unwrap();
        assert_eq!(inst.len(), 8);
        for i in inst {
            assert_eq!(i["live_weight"], 100, "{i}");
        }
        assert_eq!(inst[2]["warming"], true, "still inside its window");
        let gauges: Vec<_> = on.vm.gauges(NOW).collect();
        assert!(gauges[0].1.overload_protected);
        assert_eq!(gauges[0].1.values()[6], 1, "warmup_overload_protected");

        // picks: each of the 8 about an eighth (a warm one 100/350 of them without the rule)
        let picks = 8_000;
        let warm_picks = |w: &mut World| {
            (0..picks)
                .filter(|n| {
                    let header = w.route("demo", None, NOW + n % 50).unwrap();
                    // the primary, then the fallbacks
                    matches!(header.split(',').next(), Some("10.0.0.1:80" | "10.0.0.2:80"))
                })
                .count()
        };
        let warm = warm_picks(&mut on);
        assert!((1_700..=2_300).contains(&warm), "warm picks in force: {warm} of {picks}");

        let j = membership(&mut off, NOW);
        let svc = &j["services"][0];
        assert_eq!(svc["overload_protection"], serde_json::Value::Null);
        assert_eq!(svc["instances"][0]["live_weight"], 100);
        assert_eq!(svc["instances"][2]["live_weight"], 10, "the first new one, 10 s into 100 s");
        assert!(!off.vm.gauges(NOW).next().unwrap().1.overload_protected);
        let warm = warm_picks(&mut off);
        assert!(warm > 5_000, "warm picks without the rule: {warm} of {picks}");

        // the first new one is warm at NOW + 90 s, the third at + 92 s: 4 of 8 still in force,
        // 3 of 8 not; the three left ramp from where their uptime is
        let at = NOW + 91_500;
        let j = membership(&mut on, at);
        assert_eq!(j["services"][0]["hosts"]["warming"], 4);
        assert_eq!(j["services"][0]["overload_protection"]["in_force"], true);
        assert!(on.vm.gauges(at).next().unwrap().1.overload_protected);
        let at = NOW + 92_500;
        let j = membership(&mut on, at);
        let svc = &j["services"][0];
        assert_eq!(svc["hosts"]["warming"], 3);
        assert_eq!(svc["overload_protection"], serde_json::json!({"threshold_percent": 50, "in_force": false}));
        assert!(!on.vm.gauges(at).next().unwrap().1.overload_protected);
        let live: Vec<i64> =
            svc["instances"].as_array().unwrap().iter().map(|i| i["live_weight"].as_i64().unwrap()).collect();
        assert_eq!(live, [100, 100, 100, 100, 100, 99, 98, 97]);
    }
}
