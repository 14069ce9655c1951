//! The admin endpoints under `admin.path_prefix` (default `/lossless`): who may call them, which
//! call a request is, and the membership document.
//!
//! - `GET  {prefix}/membership`: JSON of what this VM routes by (services, members, live weights,
//!   marks; in inbound mode the instance's own drain state);
//! - `POST {prefix}/drain`, `POST {prefix}/undrain` (inbound mode): start or stop draining this
//!   instance (the preStop hook calls it).

use std::fmt::Write;

use crate::clock::Rng;
use crate::config::{Mode, Settings};
use crate::emit::{json_opt, json_str};
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

/// The body of the 404 for [`AdminCall::Unknown`] in inbound mode (see [`unknown_endpoint`]).
pub const UNKNOWN_ENDPOINT: &str = "lossless: unknown admin endpoint (GET /membership, POST /drain, POST /undrain)\n";
/// The body of the 404 for [`AdminCall::Unknown`] in outbound mode, where there is nothing to drain.
pub const UNKNOWN_ENDPOINT_OUTBOUND: &str = "lossless: unknown admin endpoint (GET /membership)\n";

/// The body of the 404 for [`AdminCall::Unknown`]: the endpoints [`call`] knows in `mode`.
pub fn unknown_endpoint(mode: Mode) -> &'static str {
    match mode {
        Mode::Inbound => UNKNOWN_ENDPOINT,
        Mode::Outbound => UNKNOWN_ENDPOINT_OUTBOUND,
    }
}
/// The body of the 403 for a caller [`allowed`] refuses.
pub const FORBIDDEN: &str = "lossless: admin endpoints answer loopback callers only\n";

/// The JSON view of what this VM believes: services, members with live weights, marks. Shape:
/// `{now_ms, poller, services: [{name, registry_service, match_clusters, version, updated_ms,
/// hosts: {total, serving, warming, draining, down}, overload_protection: null|{threshold_percent,
/// in_force}, no_membership_fallback: null|[address] (the `routing.no_membership_addresses`
/// requests go to now: configured, and no membership yet), instances: [{address, state, marked,
/// ejected: {times, until_ms, trial_until_ms}|null, stalled: {since_ms, cause}|null,
/// health_check_failing, weight, live_weight, start_ms, warmup_ms, warming}]}], self?: {…}}`
/// (times in ms since the epoch; `cause` `quiet` or `connect_failure`); the VM puts its id (`vm`,
/// 16 hex digits) first.
pub fn membership_json(
    settings: &Settings,
    services: &mut [Service],
    view: &View,
    now_ms: i64,
    rng: &mut Rng,
    poller: bool,
    online: Option<&str>,
) -> String {
    let mut o = String::with_capacity(512);
    let _ = write!(o, "{{\"now_ms\":{now_ms},\"poller\":{poller},\"services\":[");
    for (k, s) in services.iter_mut().enumerate() {
        if k > 0 {
            o.push(',');
        }
        let sv = &mut s.view;
        sv.balancer.refresh_if_due(&sv.members, now_ms, rng);
        o.push_str("{\"name\":");
        json_str(&mut o, &s.cfg.name);
        o.push_str(",\"registry_service\":");
        json_str(&mut o, &s.cfg.query.service);
        o.push_str(",\"match_clusters\":[");
        for (j, c) in s.cfg.match_clusters.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            json_str(&mut o, c);
        }
        let c = host_counts(&sv.members, now_ms);
        let _ = write!(
            o,
            "],\"version\":{},\"updated_ms\":{},\"hosts\":{{\"total\":{},\"serving\":{},\"warming\":{},\"draining\":{},\"down\":{}}},\"overload_protection\":",
            sv.snap.version, sv.snap.updated_ms, c.total, c.serving, c.warming, c.draining, c.down
        );
        match sv.balancer.overload_protection() {
            // in force as the weights below are: the verdict of the refresh just made
            Some(r) => {
                let _ = write!(
                    o,
                    "{{\"threshold_percent\":{},\"in_force\":{}}}",
                    r.threshold_percent,
                    sv.balancer.overload_protected()
                );
            }
            None => o.push_str("null"),
        }
        o.push_str(",\"no_membership_fallback\":");
        if sv.snap.version == 0 && !s.cfg.no_membership_addresses.is_empty() {
            o.push('[');
            for (j, a) in s.cfg.no_membership_addresses.iter().enumerate() {
                if j > 0 {
                    o.push(',');
                }
                json_str(&mut o, a);
            }
            o.push(']');
        } else {
            o.push_str("null");
        }
        o.push_str(",\"instances\":[");
        for (i, m) in sv.members.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"address\":");
            json_str(&mut o, &m.addr);
            let _ = write!(o, ",\"state\":\"{}\",\"marked\":{},\"ejected\":", m.state.as_str(), view.marks.applies(m));
            match view.marks.ejected.get(&m.addr).filter(|_| view.marks.is_ejected(m)) {
                Some(e) => {
                    let _ = write!(
                        o,
                        "{{\"times\":{},\"until_ms\":{},\"trial_until_ms\":{}}}",
                        e.times, e.until_ms, e.trial_until_ms
                    );
                }
                None => o.push_str("null"),
            }
            o.push_str(",\"stalled\":");
            match view.marks.stalled.get(&m.addr).filter(|_| view.marks.is_stalled(m)) {
                Some(st) => {
                    let _ = write!(o, "{{\"since_ms\":{},\"cause\":\"{}\"}}", st.since_ms, st.cause.as_str());
                }
                None => o.push_str("null"),
            }
            let warming = m.state.is_serving() && crate::warmup::is_warming(m.start_ms, m.warmup_ms, now_ms);
            let _ = write!(
                o,
                ",\"health_check_failing\":{},\"weight\":{},\"live_weight\":{},\"start_ms\":",
                view.marks.is_unhealthy(m),
                m.weight,
                sv.balancer.weight_of(i)
            );
            json_opt(&mut o, m.start_ms);
            let _ = write!(o, ",\"warmup_ms\":{},\"warming\":{warming}}}", m.warmup_ms);
        }
        o.push_str("]}");
    }
    o.push(']');
    if let Some(ib) = &settings.inbound {
        let d = &view.self_drain;
        o.push_str(",\"self\":{\"address\":");
        json_str(&mut o, &ib.self_address);
        let _ = write!(o, ",\"draining\":{},\"draining_since_ms\":", d.draining());
        json_opt(&mut o, d.since_ms);
        let _ = write!(
            o,
            ",\"rejecting\":{},\"manual\":{},\"registry_offline\":{},\"seen_serving\":{}}}",
            d.rejecting(now_ms, settings.drain.notify_grace_ms),
            d.manual,
            d.registry_offline,
            d.seen_serving
        );
        if let Some(j) = online {
            o.pop();
            let _ = write!(o, ",\"online\":{j}}}");
        }
    }
    o.push('}');
    o
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

    /// The 404 lists what exists in the VM's mode, and every endpoint it lists is one [`call`] knows.
    #[test]
    fn unknown_endpoint_names_the_endpoints_of_the_mode() {
        for inbound in [false, true] {
            let s = settings(inbound);
            let text = unknown_endpoint(s.mode);
            assert!(text.contains("GET /membership"), "{text}");
            assert_eq!(text.contains("POST /drain") && text.contains("POST /undrain"), inbound, "{text}");
            let listed = text.split(['(', ')']).nth(1).unwrap_or_default();
            for endpoint in listed.split(", ") {
                let (method, rest) = endpoint.split_once(' ').unwrap();
                assert_ne!(call(&s, method, &format!("/lossless{rest}")), AdminCall::Unknown, "{endpoint}");
            }
        }
    }
}
