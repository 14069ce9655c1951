//! The admin endpoints under `admin.path_prefix` (default `/lossless`): who may call them, which
//! call a request is, and the membership document.
//!
//! - `GET  {prefix}/membership`: JSON of what this VM routes by (services, members, live weights,
//!   marks; in inbound mode the instance's own drain state);
//! - `POST {prefix}/drain`, `POST {prefix}/undrain` (inbound mode): start or stop draining this
//!   instance (the preStop hook calls it).

use serde_json::{json, Value};

use crate::clock::Rng;
use crate::config::{Mode, Settings};
use crate::service::Service;
use crate::view::{host_counts, View};

/// Request headers that say a request was forwarded; an admin call carrying any is refused.
/// Without `use_remote_address`, Envoy takes `source.address` from `x-forwarded-for`, and a local
/// operator's call has none of them.
pub const FORWARDING_HEADERS: [&str; 4] = ["x-forwarded-for", "forwarded", "x-real-ip", "x-envoy-external-address"];

/// An admin request, once recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCall {
    Membership,
    /// `true`: drain, `false`: undrain.
    Drain(bool),
    /// Under the prefix but no such endpoint (404).
    Unknown,
}

/// True when `path` is under `prefix` (`/lossless`, `/lossless/…`, `/lossless?…`).
pub fn is_admin_path(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|r| r.is_empty() || r.starts_with('/') || r.starts_with('?'))
}

/// Whether a caller may use the admin endpoints: from loopback (`source` is Envoy's
/// `source.address`, `ip:port`) and not forwarded.
pub fn allowed(source: Option<&str>, forwarded: bool) -> bool {
    !forwarded && source.and_then(|a| a.parse::<std::net::SocketAddr>().ok()).is_some_and(|a| a.ip().is_loopback())
}

/// Which admin call `method` + `path` (under `settings.admin_prefix`) is.
pub fn call(settings: &Settings, method: &str, path: &str) -> AdminCall {
    let rest = path.get(settings.admin_prefix.len()..).unwrap_or_default();
    let rest = rest.split('?').next().unwrap_or_default();
    match (method, rest) {
        ("GET", "/membership") => AdminCall::Membership,
        ("POST", "/drain") if settings.mode == Mode::Inbound => AdminCall::Drain(true),
        ("POST", "/undrain") if settings.mode == Mode::Inbound => AdminCall::Drain(false),
        _ => AdminCall::Unknown,
    }
}

/// The body of the 404 for [`AdminCall::Unknown`].
pub const UNKNOWN_ENDPOINT: &str = "lossless: unknown admin endpoint (GET /membership, POST /drain, POST /undrain)\n";
/// The body of the 403 for a caller [`allowed`] refuses.
pub const FORBIDDEN: &str = "lossless: admin endpoints answer loopback callers only\n";

/// The JSON view of what this VM believes: services, members with live weights, marks.
pub fn membership_json(
    settings: &Settings,
    services: &mut [Service],
    view: &View,
    now_ms: i64,
    rng: &mut Rng,
    leader: bool,
) -> String {
    let docs: Vec<Value> = services
        .iter_mut()
        .map(|s| {
            let sv = &mut s.view;
            sv.balancer.refresh_if_due(&sv.members, now_ms, rng);
            let members: Vec<Value> = sv
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({
                        "address": m.addr,
                        "state": m.state.as_str(),
                        "marked": view.marks.applies(m),
                        "ejected": view.marks.is_ejected(m).then(|| view.marks.ejected.get(&m.addr)).flatten().map(|e| json!({"times": e.times, "until_ms": e.until_ms, "trial_until_ms": e.trial_until_ms})),
                        "weight": m.weight,
                        "live_weight": sv.balancer.weight_of(i),
                        "start_ms": m.start_ms,
                        "warmup_ms": m.warmup_ms,
                        "warming": m.state.is_serving() && crate::warmup::is_warming(m.start_ms, m.warmup_ms, now_ms),
                    })
                })
                .collect();
            let c = host_counts(&sv.members, now_ms);
            json!({
                "name": s.cfg.name,
                "registry_service": s.cfg.query.service,
                "match_clusters": s.cfg.match_clusters,
                "version": sv.snap.version,
                "updated_ms": sv.snap.updated_ms,
                "hosts": {"total": c.total, "serving": c.serving, "warming": c.warming, "draining": c.draining, "down": c.down},
                "instances": members,
            })
        })
        .collect();
    let mut doc = json!({ "now_ms": now_ms, "poller": leader, "services": docs });
    if let (Some(ib), Some(obj)) = (&settings.inbound, doc.as_object_mut()) {
        let d = &view.self_drain;
        obj.insert(
            "self".into(),
            json!({
                "address": ib.self_address,
                "draining": d.draining(),
                "draining_since_ms": d.since_ms,
                "rejecting": d.rejecting(now_ms, settings.drain.notify_grace_ms),
                "manual": d.manual,
                "registry_offline": d.registry_offline,
                "seen_serving": d.seen_serving,
            }),
        );
    }
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn settings(inbound: bool) -> Settings {
        let json = if inbound {
            r#"{"mode":"inbound","inbound":{"service":"me","self_address":"10.0.0.1:80"},"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/x"}},"services":[{"name":"me","registry":"s"}]}"#
        } else {
            r#"{"registries":{"s":{"type":"static","cluster":"cp","authority":"cp","path":"/x"}},"services":[{"name":"me","registry":"s"}]}"#
        };
        config::parse(json.as_bytes()).unwrap().settings
    }

    #[test]
    fn admin_paths() {
        assert!(is_admin_path("/lossless", "/lossless"));
        assert!(is_admin_path("/lossless/membership", "/lossless"));
        assert!(is_admin_path("/lossless?x", "/lossless"));
        assert!(!is_admin_path("/losslessx", "/lossless"));
        assert!(!is_admin_path("/api/lossless", "/lossless"));
    }

    #[test]
    fn only_local_unforwarded_callers() {
        assert!(allowed(Some("127.0.0.1:5000"), false));
        assert!(allowed(Some("[::1]:5000"), false));
        assert!(!allowed(Some("127.0.0.1:5000"), true), "a forwarded request is not local");
        assert!(!allowed(Some("10.0.0.1:5000"), false));
        assert!(!allowed(None, false));
        assert!(!allowed(Some("localhost:80"), false));
    }

    #[test]
    fn calls_by_mode() {
        let out = settings(false);
        assert_eq!(call(&out, "GET", "/lossless/membership?pretty"), AdminCall::Membership);
        assert_eq!(call(&out, "POST", "/lossless/membership"), AdminCall::Unknown);
        assert_eq!(call(&out, "POST", "/lossless/drain"), AdminCall::Unknown, "outbound has nothing to drain");
        let inb = settings(true);
        assert_eq!(call(&inb, "POST", "/lossless/drain"), AdminCall::Drain(true));
        assert_eq!(call(&inb, "POST", "/lossless/undrain"), AdminCall::Drain(false));
        assert_eq!(call(&inb, "GET", "/lossless/drain"), AdminCall::Unknown);
        assert_eq!(call(&inb, "GET", "/lossless"), AdminCall::Unknown);
    }
}
