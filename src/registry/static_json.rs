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

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::de::{read_with, Loose, Meta, Obj, Rec, Records, Under, With};
use super::{
    get_request, list_reply, Adapter, Call, Cursor, Endpoint, HttpRequest, HttpResponse, Parsed, RegistryError, Reply,
    ServiceQuery, Session,
};
use crate::instance::{canonical_addr, host_name_addr, BuildOptions, State};

/// Serves `path` with `{service}` replaced by the URL-encoded service name.
#[derive(Debug, Clone)]
pub struct StaticJson {
    pub endpoint: Endpoint,
    pub path: String,
}

/// Parses a static JSON body. Only the metadata keys `build` reads are kept.
pub fn parse(body: &[u8], build: &BuildOptions) -> Result<Parsed, RegistryError> {
    let keys = build.keys.names();
    let mut records = Records::new(&keys, "metadata", |r: &Record<'_>, m: &Meta<'_>| record(r, m, build));
    let mut instances = Under::new("instances", false, &mut records);
    let doc = read_with(body, With::<IgnoredAny, _>::new(&mut instances))?;
    match (doc, instances.kind) {
        (Obj::Not(v), _) => Err(RegistryError::Parse(format!("expected an object with instances, got {}", v.kind()))),
        (_, None) => Err(RegistryError::Parse("missing field `instances`".into())),
        (_, Some(Loose::Array)) => Ok(records.batch.finish()),
        (_, Some(v)) => Err(RegistryError::Parse(format!("instances is {}, expected an array", v.kind()))),
    }
}

/// One record: the fields that are read (`metadata` is read by [`Records`]).
#[derive(Default, Deserialize)]
#[serde(default)]
struct Record<'a> {
    #[serde(borrow)]
    address: Loose<'a>,
    #[serde(borrow)]
    weight: Loose<'a>,
    #[serde(borrow)]
    state: Loose<'a>,
    #[serde(borrow)]
    start_ms: Loose<'a>,
    #[serde(borrow)]
    warmup_ms: Loose<'a>,
}

/// One record with its metadata; skipped when it is malformed or its address is a host name (then
/// named).
fn record(rec: &Record<'_>, meta: &Meta<'_>, build: &BuildOptions) -> Rec {
    let Some(raw) = rec.address.as_str() else {
        return Rec::Skipped;
    };
    let Some(addr) = canonical_addr(raw) else {
        let named = raw.trim().rsplit_once(':').and_then(|(h, p)| host_name_addr(h, p.parse().ok()?));
        return named.map_or(Rec::Skipped, Rec::Unroutable);
    };
    let w = &rec.weight;
    let weight = if w.is_none() {
        None
    } else {
        match w.as_i64().and_then(|w| i32::try_from(w).ok()).filter(|w| *w >= 0) {
            Some(w) => Some(w),
            None => return Rec::Skipped,
        }
    };
    let state = match &rec.state {
        Loose::Absent => State::Serving,
        Loose::Str(s) if s == "serving" => State::Serving,
        Loose::Str(s) if s == "draining" => State::Draining,
        Loose::Str(s) if s == "down" => State::Down,
        _ => return Rec::Skipped,
    };
    let start = rec.start_ms.as_i64().filter(|t| *t > 0);
    let (mut inst, bad) = build.build(addr, weight, start, state, &meta.kept[..]);
    // the record's warmup_ms beats the default, metadata keys beat both
    if let Some(w) = rec.warmup_ms.as_i64().filter(|w| *w >= 0) {
        if !meta.kept.iter().any(|(k, _)| build.keys.warmup.iter().any(|mk| mk.key == *k)) {
            inst.warmup_ms = w;
        }
    }
    Rec::Kept(inst, meta.bad + bad)
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
