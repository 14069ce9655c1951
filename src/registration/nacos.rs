//! The Nacos wire format of the inbound registration ([`super::Step`]s made requests, replies
//! made [`Answer`]s), following Nacos' own HTTP API:
//! - Nacos 1.x/2.x (`api` v1/v2, rnacos): `POST /nacos/v1/ns/instance` (register),
//!   `PUT /nacos/v1/ns/instance/beat` with the `beat` JSON the Java client sends (`code` 10200 is
//!   done, 20404 is "resource not found": register again), `DELETE /nacos/v1/ns/instance`;
//! - Nacos 3 (`api` v3): `POST /nacos/v3/client/ns/instance` registers, and renews with
//!   `heartBeat=true` (`code` 21003: the instance expired, register again with the full
//!   information), `DELETE` deregisters (Nacos' client API reference, "注册实例/续约实例").

use std::fmt::Write;

use super::{Answer, Me, Step};
use crate::emit::{json_object, json_str};
use crate::registry::nacos::{push_param, Api, Nacos};
use crate::registry::{encode, request_headers, HttpRequest, HttpResponse, Session};

/// The Nacos form parameters of `step` (register, heartbeat, deregister).
fn params(me: &Me<'_>, api: Api, step: Step) -> String {
    let q = &me.service.query;
    let mut p = format!("serviceName={}", encode(&q.service));
    let mut push = |k: &str, v: &str| push_param(&mut p, k, Some(v));
    push("groupName", q.group.as_deref().unwrap_or_default());
    push("namespaceId", q.namespace.as_deref().unwrap_or_default());
    push("ip", me.ip);
    push("port", &me.port.to_string());
    push("clusterName", q.clusters.first().map_or("DEFAULT", String::as_str));
    push("ephemeral", "true");
    match (step, api) {
        (Step::Register, _) | (Step::Heartbeat, Api::V3) => {
            push("enabled", "true");
            push("healthy", "true");
            push("metadata", &json_object(&me.metadata()));
            if step == Step::Heartbeat {
                push("heartBeat", "true");
            }
        }
        (Step::Heartbeat, _) => {
            // the beat the Java client sends (`BeatInfo`): the server re-creates an instance it
            // lost from it
            let group = q.group.as_deref().filter(|g| !g.is_empty()).unwrap_or("DEFAULT_GROUP");
            let mut beat = String::from("{\"ip\":");
            json_str(&mut beat, me.ip);
            let _ = write!(beat, ",\"port\":{},\"serviceName\":", me.port);
            json_str(&mut beat, &format!("{group}@@{}", q.service));
            beat.push_str(",\"cluster\":");
            json_str(&mut beat, q.clusters.first().map_or("DEFAULT", String::as_str));
            let _ = write!(beat, ",\"weight\":1.0,\"metadata\":{},\"scheduled\":true}}", json_object(&me.metadata()));
            push("beat", &beat);
        }
        _ => {}
    }
    p
}

/// The Nacos request of `step` with the session's API and token.
pub fn request(n: &Nacos, s: &Session, me: &Me<'_>, step: Step) -> HttpRequest {
    let api = n.api(s);
    let token = s.token.as_ref().map(|t| t.value.as_str());
    let mut params = params(me, api, step);
    let (method, path) = match (api, step) {
        (Api::V3, Step::Deregister) => ("DELETE", "/nacos/v3/client/ns/instance"),
        (Api::V3, _) => ("POST", "/nacos/v3/client/ns/instance"),
        (_, Step::Register) => ("POST", "/nacos/v1/ns/instance"),
        (_, Step::Heartbeat) => ("PUT", "/nacos/v1/ns/instance/beat"),
        _ => ("DELETE", "/nacos/v1/ns/instance"),
    };
    push_param(&mut params, "accessToken", token);
    // v3 takes its parameters as a form body (POST), v1 in the query, as their references show
    let form = api == Api::V3 && method == "POST";
    let full = if form { path.to_string() } else { format!("{path}?{params}") };
    let mut headers = request_headers(&n.endpoint, method, full);
    if let (Api::V3, Some(t)) = (api, token) {
        headers.push(("accessToken".to_string(), t.to_string()));
    }
    let body = form.then(|| {
        headers.push(("content-type".to_string(), "application/x-www-form-urlencoded".to_string()));
        params.into_bytes()
    });
    HttpRequest { headers, body, timeout_ms: n.endpoint.timeout_ms }
}

/// What a Nacos reply to `step` means: v1 answers `ok` (register, deregister) or a beat JSON
/// (`code` 10200, 20404 = not found); v3 an envelope (`code` 0; 21003 = expired).
pub fn answer(resp: &HttpResponse<'_>) -> Answer {
    let code = json_code(resp.body);
    match (resp.status, code) {
        (Some(200), None | Some(0 | 10200)) => Answer::Ok,
        (_, Some(20404 | 21003)) => Answer::NotFound,
        (status, code) => Answer::Failed(match (status, code) {
            (Some(s), Some(c)) => format!("HTTP {s}, code {c}"),
            (Some(s), None) => format!("HTTP {s}"),
            (None, _) => "no answer".to_string(),
        }),
    }
}

/// The number after the top-level `"code":` of a small JSON reply (Nacos' envelope and v1 beat
/// reply put it at the top level; nested objects are skipped).
fn json_code(body: &[u8]) -> Option<i64> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        match (in_str, b) {
            (true, b'\\') => i += 1,
            (true, b'"') => in_str = false,
            (false, b'"') if depth == 1 && body.get(i..i + 6) == Some(b"\"code\"".as_slice()) => {
                let rest = std::str::from_utf8(body.get(i + 6..)?).ok()?.trim_start();
                let rest = rest.strip_prefix(':')?.trim_start();
                let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
                return rest.get(..end)?.parse().ok();
            }
            (false, b'"') => in_str = true,
            (false, b'{' | b'[') => depth += 1,
            (false, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Config;
    use crate::registration::tests::{cfg, me, NACOS, NACOS3};
    use crate::registry::Token;

    fn nacos(c: &Config) -> &Nacos {
        match &c.registries[0].kind {
            crate::config::RegistryKind::Nacos(n) => n,
            _ => unreachable!(),
        }
    }

    fn query(path: &str) -> BTreeMap<String, String> {
        let q = path.split_once('?').map_or("", |(_, q)| q);
        q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), decode(v))).collect()
    }

    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Nacos v1 (Nacos' open API and rnacos): register, beat with the Java client's `BeatInfo`,
    /// deregister; the published metadata holds the warm-up keys callers read.
    #[test]
    fn nacos_v1_requests() {
        let c = cfg(NACOS, "");
        let (n, me) = (nacos(&c), me(&c));
        let reg = request(n, &Session::default(), &me, Step::Register);
        assert_eq!(reg.header(":method"), Some("POST"));
        let path = reg.header(":path").unwrap();
        assert!(path.starts_with("/nacos/v1/ns/instance?"), "{path}");
        let q = query(path);
        for (k, v) in [("serviceName", "orders"), ("groupName", "G"), ("namespaceId", "ns1"), ("ip", "10.0.0.7")] {
            assert_eq!(q.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(q["port"], "8080");
        assert_eq!(q["ephemeral"], "true");
        let meta: BTreeMap<String, String> = serde_json::from_str(&q["metadata"]).unwrap();
        assert_eq!(meta["timestamp"], "1700000000123");
        assert_eq!(meta["warmup"], "120000");
        assert_eq!(meta["version"], "2");
        let beat = request(n, &Session::default(), &me, Step::Heartbeat);
        assert_eq!(beat.header(":method"), Some("PUT"));
        let q = query(beat.header(":path").unwrap());
        let b: serde_json::Value = serde_json::from_str(&q["beat"]).unwrap();
        assert_eq!(b["serviceName"], "G@@orders");
        assert_eq!((b["ip"].as_str(), b["port"].as_u64()), (Some("10.0.0.7"), Some(8080)));
        assert_eq!(b["metadata"]["timestamp"], "1700000000123");
        let del = request(n, &Session::default(), &me, Step::Deregister);
        assert_eq!(del.header(":method"), Some("DELETE"));
        assert!(del.header(":path").unwrap().starts_with("/nacos/v1/ns/instance?serviceName=orders"));
    }

    /// Nacos 3's client API: a form body, `heartBeat=true` for a renewal, the token as the
    /// `accessToken` header and parameter.
    #[test]
    fn nacos_v3_requests() {
        let c = cfg(NACOS3, "");
        let (n, me) = (nacos(&c), me(&c));
        let s = Session {
            token: Some(Token { value: "tok".into(), expires_ms: i64::MAX, renew_ms: i64::MAX }),
            ..Session::default()
        };
        let reg = request(n, &s, &me, Step::Register);
        assert_eq!((reg.header(":method"), reg.header(":path")), (Some("POST"), Some("/nacos/v3/client/ns/instance")));
        assert_eq!(reg.header("content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(reg.header("accessToken"), Some("tok"));
        let body = String::from_utf8(reg.body.clone().unwrap()).unwrap();
        let q = query(&format!("?{body}"));
        assert_eq!((q["serviceName"].as_str(), q["accessToken"].as_str()), ("orders", "tok"));
        assert!(!q.contains_key("heartBeat"));
        let beat = request(n, &s, &me, Step::Heartbeat);
        let q = query(&format!("?{}", String::from_utf8(beat.body.unwrap()).unwrap()));
        assert_eq!(q["heartBeat"], "true");
        let del = request(n, &s, &me, Step::Deregister);
        assert_eq!(del.header(":method"), Some("DELETE"));
        assert!(del.body.is_none() && del.header(":path").unwrap().contains("ip=10.0.0.7"));
    }

    /// Replies as Nacos and rnacos give them (rnacos' beat reply: the captured fixture).
    #[test]
    fn nacos_answers() {
        let r = |status, body: &'static [u8]| {
            answer(&HttpResponse { status: Some(status), headers: &[], body, body_size: body.len() })
        };
        assert_eq!(r(200, b"ok"), Answer::Ok);
        assert_eq!(r(200, include_bytes!("../../../shared/fixtures/registry/rnacos-beat-captured.json")), Answer::Ok);
        assert_eq!(r(200, br#"{"code":0,"message":"success","data":"ok"}"#), Answer::Ok);
        assert_eq!(r(200, br#"{"code":20404,"clientBeatInterval":5000}"#), Answer::NotFound);
        assert_eq!(r(200, br#"{"code":21003,"message":"instance not found","data":null}"#), Answer::NotFound);
        assert!(matches!(r(403, b"unknown user!"), Answer::Failed(w) if w == "HTTP 403"));
        assert!(matches!(r(500, br#"{"code":30000}"#), Answer::Failed(w) if w == "HTTP 500, code 30000"));
        // only the top-level code counts, whatever the spacing and key order
        assert_eq!(r(200, br#"{"data":{"code":20404},"message":"code", "code" : 0}"#), Answer::Ok);
        assert_eq!(r(200, br#"{"message":"a "code": 1","code":21003}"#), Answer::NotFound);
        let none = HttpResponse { status: None, headers: &[], body: b"", body_size: 0 };
        assert_eq!(answer(&none), Answer::Failed("no answer".into()));
    }
}
