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
    }
}
