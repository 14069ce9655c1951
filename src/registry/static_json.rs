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

use super::json::{elements, field, read, Batch, Ctx, Field, Loose, Reader, Rec, Res, Sink, Slots, To};
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
    let mut batch = Batch::default();
    let mut slots = Slots::default();
    let each = |r: &mut Slots<'_>| record(r, build);
    let mut s = Sink { table: RECORD, slots: &mut slots, batch: &mut batch, each: &each };
    read(body, |r| doc(r, Ctx { keys: &keys, tag: None }, &mut s))?;
    Ok(batch.finish())
}

/// The document `{"instances": [...]}`, read as a derived `struct Doc { instances: Vec<_> }` reads
/// it (the same errors: a missing or repeated `instances`, an `instances` that is not an array, a
/// document that is not an object; the array form `[[...]]` of the struct; other keys dropped with
/// serde's looser checks).
fn doc<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, s: &mut Sink<'_, 'a>) -> Res<()> {
    if !r.container("struct Doc", true)? {
        if !r.elem()? {
            return Err(r.custom("invalid length 0, expected struct Doc with 1 element".into()));
        }
        r.container("a sequence", false)?;
        elements(r, cx, s)?;
        return r.end_seq();
    }
    let mut found = false;
    while let Some(k) = r.key()? {
        if k == "instances" {
            if found {
                return Err(r.custom("duplicate field `instances`".into()));
            }
            found = true;
            r.container("a sequence", false)?;
            elements(r, cx, s)?;
        } else {
            r.ignore()?;
        }
    }
    if !found {
        return Err(r.custom("missing field `instances`".into()));
    }
    Ok(())
}

const ADDRESS: usize = 0;
const WEIGHT: usize = 1;
const STATE: usize = 2;
const START_MS: usize = 3;
const WARMUP_MS: usize = 4;

/// One record: the fields that are read.
static RECORD: &[Field] = &[
    field("address", To::Val(ADDRESS)),
    field("weight", To::Val(WEIGHT)),
    field("state", To::Val(STATE)),
    field("start_ms", To::Val(START_MS)),
    field("warmup_ms", To::Val(WARMUP_MS)),
    field("metadata", To::Meta),
];

/// One record; skipped when it is malformed or its address is a host name (then named).
fn record(rec: &mut Slots<'_>, build: &BuildOptions) -> Rec {
    let Some(raw) = rec.v[ADDRESS].as_str() else {
        return Rec::Skipped;
    };
    let Some(addr) = canonical_addr(raw) else {
        let named = raw.trim().rsplit_once(':').and_then(|(h, p)| host_name_addr(h, p.parse().ok()?));
        return named.map_or(Rec::Skipped, Rec::Unroutable);
    };
    let w = &rec.v[WEIGHT];
    let weight = if w.is_none() {
        None
    } else {
        match w.as_i64().and_then(|w| i32::try_from(w).ok()).filter(|w| *w >= 0) {
            Some(w) => Some(w),
            None => return Rec::Skipped,
        }
    };
    let state = match &rec.v[STATE] {
        Loose::Absent => State::Serving,
        Loose::Str(s) if s == "serving" => State::Serving,
        Loose::Str(s) if s == "draining" => State::Draining,
        Loose::Str(s) if s == "down" => State::Down,
        _ => return Rec::Skipped,
    };
    let start = rec.v[START_MS].as_i64().filter(|t| *t > 0);
    let meta = &rec.meta;
    let (mut inst, bad) = build.build(addr, weight, start, state, &meta.kept[..]);
    // the record's warmup_ms beats the default, metadata keys beat both
    if let Some(w) = rec.v[WARMUP_MS].as_i64().filter(|w| *w >= 0) {
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
