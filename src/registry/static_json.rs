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

use super::json::{
    loose, meta, read, Batch, Ctx, Fields, Halt, List, ListSink, Loose, Map, Meta, Mode, Obj, Rec, Seq, Sink,
};
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
    let mut doc = Doc::default();
    read(body, Mode::Struct("Doc", &["instances"]), "struct Doc", Ctx { keys: &keys, tag: None }, &mut doc)?;
    let records = match doc.instances.map(|l| l.list) {
        Some(List::Items(r)) => r,
        _ => Vec::new(),
    };
    let mut batch = Batch::default();
    for r in records {
        batch.add(r.ok().map_or(Rec::Skipped, |r| record(r, build)));
    }
    Ok(batch.finish())
}

/// The document `{"instances": [...]}`, read as a derived `struct Doc { instances: Vec<_> }` reads
/// it (the same errors: a missing or repeated `instances`, a document that is not an object).
#[derive(Default)]
struct Doc<'a> {
    instances: Option<ListSink<Obj<'a, Record<'a>>>>,
}

impl<'de> Sink<'de> for Doc<'de> {
    fn seq(&mut self, cx: Ctx<'_>, s: &mut dyn Seq<'de>) -> Result<(), Halt> {
        let mut records = ListSink { list: List::Null, one: false };
        if !s.next_seq(cx, &mut records)? {
            return Err(Halt::Empty("struct Doc with 1 element"));
        }
        self.instances = Some(records);
        Ok(())
    }
    fn map(&mut self, cx: Ctx<'_>, m: &mut dyn Map<'de>) -> Result<(), Halt> {
        while let Some(k) = m.key()? {
            if k == "instances" {
                if self.instances.is_some() {
                    return Err(Halt::Duplicate("instances"));
                }
                let mut records = ListSink { list: List::Null, one: false };
                m.seq_value(cx, &mut records)?;
                self.instances = Some(records);
            } else {
                m.ignore()?;
            }
        }
        if self.instances.is_none() {
            return Err(Halt::Missing("instances"));
        }
        Ok(())
    }
}

/// One record: the fields that are read.
#[derive(Default)]
struct Record<'a> {
    address: Loose<'a>,
    weight: Loose<'a>,
    state: Loose<'a>,
    start_ms: Loose<'a>,
    warmup_ms: Loose<'a>,
    meta: Meta,
}

impl<'de> Fields<'de> for Record<'de> {
    fn field(&mut self, cx: Ctx<'_>, k: &str, m: &mut dyn Map<'de>) -> Result<bool, Halt> {
        let r = self;
        match k {
            "address" => r.address = loose(cx, m)?,
            "weight" => r.weight = loose(cx, m)?,
            "state" => r.state = loose(cx, m)?,
            "start_ms" => r.start_ms = loose(cx, m)?,
            "warmup_ms" => r.warmup_ms = loose(cx, m)?,
            "metadata" => r.meta = meta(cx, m)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// One record; skipped when it is malformed or its address is a host name (then named).
fn record(rec: Record<'_>, build: &BuildOptions) -> Rec {
    let Some(raw) = rec.address.as_str() else {
        return Rec::Skipped;
    };
    let Some(addr) = canonical_addr(raw) else {
        let named = raw.trim().rsplit_once(':').and_then(|(h, p)| host_name_addr(h, p.parse().ok()?));
        return named.map_or(Rec::Skipped, Rec::Unroutable);
    };
    let weight = if rec.weight.is_none() {
        None
    } else {
        match rec.weight.as_i64().and_then(|w| i32::try_from(w).ok()).filter(|w| *w >= 0) {
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
    let (mut inst, bad) = build.build(addr, weight, start, state, rec.meta.kept);
    // the record's warmup_ms beats the default, metadata keys beat both
    if let Some(w) = rec.warmup_ms.as_i64().filter(|w| *w >= 0) {
        if !inst.metadata.keys().any(|k| build.keys.warmup.iter().any(|mk| &mk.key == k)) {
            inst.warmup_ms = w;
        }
    }
    Rec::Kept(inst, rec.meta.bad + bad)
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
        assert_eq!(a.metadata.get("zone"), None, "not a key that is read");
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
        assert!(r.instances[0].metadata.is_empty(), "not a key that is read");
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
