//! Static JSON: a minimal membership format any control plane or plain file server can serve.
//!
//! ```json
//! {"instances": [
//!   {"address": "10.0.0.1:8080", "weight": 100, "start_ms": 1700000000000,
//!    "warmup_ms": 60000, "state": "serving", "metadata": {"zone": "a"}}
//! ]}
//! ```
//! Only `address` is required (`ip:port`, IPv6 as `[addr]:port`; a `name:port` is refused and named
//! in [`Parsed::unroutable`]: Envoy routes to IP literals only). `weight` defaults to the
//! configured default (100), `state` to `serving` (`draining`, `down` also accepted), `start_ms` and
//! `warmup_ms` to what metadata or the defaults say.

use serde::Deserialize;
use serde_json::Value;

use super::{
    collect, get_request, list_reply, metadata_map, parse_json, Adapter, Call, Cursor, Endpoint, HttpRequest,
    HttpResponse, Parsed, RegistryError, Reply, ServiceQuery, Session,
};
use crate::instance::{canonical_addr, host_name_addr, BuildOptions, Instance, State};

/// Serves `path` with `{service}` replaced by the URL-encoded service name.
#[derive(Debug, Clone)]
pub struct StaticJson {
    pub endpoint: Endpoint,
    pub path: String,
}

#[derive(Deserialize)]
struct Doc {
    instances: Vec<Value>,
}

/// Parses a static JSON body.
pub fn parse(body: &[u8], build: &BuildOptions) -> Result<Parsed, RegistryError> {
    let doc: Doc = parse_json(body)?;
    let mut unroutable = Vec::new();
    let mut parsed = collect(&doc.instances, |rec| record(rec, build, &mut unroutable));
    parsed.unroutable = unroutable;
    Ok(parsed)
}

/// One record; `None` when it is malformed or its address is a host name (named in `unroutable`).
fn record(rec: &Value, build: &BuildOptions, unroutable: &mut Vec<String>) -> Option<(Instance, u32)> {
    let raw = rec.get("address").and_then(Value::as_str)?;
    let Some(addr) = canonical_addr(raw) else {
        let named = raw.trim().rsplit_once(':').and_then(|(h, p)| host_name_addr(h, p.parse().ok()?));
        unroutable.extend(named);
        return None;
    };
    let weight = match rec.get("weight") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().and_then(|w| i32::try_from(w).ok()).filter(|w| *w >= 0)?),
    };
    let state = match rec.get("state").map(|s| s.as_str()) {
        None | Some(Some("serving")) => State::Serving,
        Some(Some("draining")) => State::Draining,
        Some(Some("down")) => State::Down,
        Some(_) => return None,
    };
    let start = rec.get("start_ms").and_then(Value::as_i64).filter(|t| *t > 0);
    let mut bad_meta = 0;
    let md = metadata_map(rec.get("metadata"), &mut bad_meta);
    let (mut inst, bad) = build.build(addr, weight, start, state, md);
    // the record's warmup_ms beats the default, metadata keys beat both
    if let Some(w) = rec.get("warmup_ms").and_then(Value::as_i64).filter(|w| *w >= 0) {
        if !inst.metadata.keys().any(|k| build.keys.warmup.iter().any(|mk| &mk.key == k)) {
            inst.warmup_ms = w;
        }
    }
    Some((inst, bad_meta + bad))
}

impl Adapter for StaticJson {
    fn request(&self, _s: &Session, _c: &Cursor, q: &ServiceQuery, _now_ms: i64) -> (Call, HttpRequest) {
        let path = self.path.replace("{service}", &super::encode(&q.service));
        (Call::List, get_request(&self.endpoint, path))
    }

    fn on_reply(
        &self,
        _s: &mut Session,
        _c: &mut Cursor,
        q: &ServiceQuery,
        _call: Call,
        resp: &HttpResponse<'_>,
        _now_ms: i64,
    ) -> Reply {
        list_reply(resp, &self.endpoint, |body| parse(body, &q.build))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Client;

    fn p(body: &str) -> Result<Parsed, RegistryError> {
        parse(body.as_bytes(), &BuildOptions::default())
    }

    #[test]
    fn full_record() {
        let r = p(r#"{"instances":[{"address":"10.0.0.1:8080","weight":7,"start_ms":1700000000000,"warmup_ms":30000,"state":"draining","metadata":{"zone":"a"}},{"address":"[::1]:9"}]}"#).unwrap();
        assert_eq!(r.instances.len(), 2);
        let a = &r.instances[0];
        assert_eq!(
            (a.addr.as_str(), a.weight, a.start_ms, a.warmup_ms, a.state),
            ("10.0.0.1:8080", 7, Some(1_700_000_000_000), 30_000, State::Draining)
        );
        assert_eq!(a.metadata.get("zone").map(String::as_str), Some("a"));
        let b = &r.instances[1];
        assert_eq!(
            (b.addr.as_str(), b.weight, b.start_ms, b.warmup_ms, b.state),
            ("[::1]:9", 100, None, 600_000, State::Serving)
        );
    }

    #[test]
    fn hostile() {
        assert!(matches!(p(""), Err(RegistryError::Parse(_))));
        assert!(matches!(p("null"), Err(RegistryError::Parse(_))));
        assert!(matches!(p(r#"{"instances":{}}"#), Err(RegistryError::Parse(_))));
        assert!(matches!(p(r#"{"instances":[{"address":"1.1.1.1:1"}"#), Err(RegistryError::Parse(_))));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(p(&format!(r#"{{"instances":{deep}}}"#)), Err(RegistryError::Parse(_))));
        let r = p(r#"{"instances":[{"address":"host:80"},{"address":"1.1.1.1:70000"},{"address":"1.1.1.1:1","weight":-1},{"address":"1.1.1.1:2","weight":"x"},{"address":"1.1.1.1:3","state":"gone"},{"address":"1.1.1.1:4","metadata":{"ü":"✓"}}]}"#).unwrap();
        assert_eq!(r.skipped, 5);
        assert_eq!(r.instances.len(), 1);
        assert_eq!(r.unroutable, ["host:80"]);
        assert_eq!(r.instances[0].metadata.get("ü").map(String::as_str), Some("✓"));
    }

    #[test]
    fn request_shape() {
        let a = Client::new(StaticJson {
            endpoint: Endpoint { authority: "cp:80".into(), timeout_ms: 500, max_body_bytes: 1 << 20 },
            path: "/members/{service}.json".into(),
        });
        let q = ServiceQuery { service: "a b".into(), ..Default::default() };
        let (call, req) = a.request(&q, 0);
        assert_eq!(call, Call::List);
        assert_eq!(req.header(":path"), Some("/members/a%20b.json"));
        assert_eq!(req.header(":authority"), Some("cp:80"));
        assert_eq!(req.timeout_ms, 500);
    }
}
