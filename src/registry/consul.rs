//! Consul adapter: `GET /v1/health/service/{name}` with blocking queries.
//!
//! The reply is an array of `{"Node": {"Address", "TaggedAddresses"}, "Service": {"Address", "Port",
//! "TaggedAddresses", "Meta", "Weights": {"Passing", "Warning"}}, "Checks": [{"CheckID", "Status"}]}`.
//! Per entry:
//! - address and port, chosen by the registry's `address` option ([`Address`]), the way Consul's own
//!   `CheckServiceNode.BestAddress(wan)` (agent/structs) picks them: by default `Service.Address`,
//!   or `Node.Address` when that is empty or missing, with `Service.Port` (a JSON integer). It must
//!   be an IP literal: Envoy's `ORIGINAL_DST` cluster parses its header with
//!   `parseInternetAddressAndPortNoThrow` (no name resolution), and the `override_host` policy only
//!   picks hosts its cluster already lists by address; a proxy-wasm filter cannot resolve names.
//!   An entry whose address is a host name (Spring Cloud Consul registers the machine's host name
//!   unless `spring.cloud.consul.discovery.prefer-ip-address=true`) is refused and named in
//!   [`Parsed::unroutable`];
//! - state: a node or service maintenance check (`_node_maintenance`, `_service_maintenance:*`)
//!   makes it draining (maintenance wins: its own status is critical); otherwise any `critical`
//!   check (or a status Consul does not define) makes it down; otherwise it is serving, with the
//!   `Warning` weight when a check is `warning` and the `Passing` weight when all pass;
//! - weights: integers, default 1 each (Consul's defaults), scaled by `weight_scale`; metadata
//!   weight keys still win (inside `build`);
//! - `Service.Meta` is the metadata (Consul has no native start time: it comes from there).
//!
//! An entry with no `Service` object, no usable address or port, a negative or non-integer weight,
//! `Checks` that is not a list or a check without a string `Status` is skipped and counted.
//!
//! Blocking queries (`wait_s > 0`, the default): the `X-Consul-Index` of a reply is sent back as
//! `index=` with `wait=`, following Consul's rules ("Blocking Queries", Implementation Details): a missing or unparsable index resets to 0 (the next request
//! does not block), an index that went backwards resets to 0, an index equal to the stored one means
//! the query timed out with no change ([`Reply::Unchanged`], the body is not parsed), and an index
//! of 0 is taken as 1. The index is tracked without blocking queries too (`wait_s = 0`): an
//! unchanged index then skips the parse. A body that fails to parse also resets the index, so the
//! next request fetches a fresh list instead of waiting for the next change. A blocking request's
//! timeout is `timeout_ms` on top of the longest time Consul may hold it (`wait` plus its jitter of
//! up to `wait / 16`). The loop is rate-limited as Consul prescribes, by the poller (a token bucket
//! with a burst of 2, [`crate::poller`]): a request without an index returns at once.

use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::de::{read_with, Batch, Each, Field, List, Loose, Member, Meta, MetaSide, Obj, Rec, Side, With};
use super::{
    check_common, encode, request_headers, Adapter, Call, Cursor, Endpoint, HttpRequest, HttpResponse, Parsed,
    RegistryError, Reply, ServiceQuery, Session,
};
use crate::instance::{format_addr, host_name_addr, scale_weight, BuildOptions, State};

#[derive(Clone)]
pub struct Consul {
    pub endpoint: Endpoint,
    pub token: Option<String>,
    /// Blocking query `wait`, seconds (0 = no blocking queries).
    pub wait_s: u64,
    /// Which of an entry's addresses is used.
    pub address: Address,
}

/// Which address of a Consul entry lossless routes to (the registry's `address` option).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Address {
    /// `"service"`: `Service.Address`, else `Node.Address` (Consul's `BestAddress(false)`).
    #[default]
    Service,
    /// `"node"`: `Node.Address` (the agent's), for services registered with a host name whose
    /// instances all run on their agent's host.
    Node,
    /// Any other name, e.g. `"wan"`, `"lan"`, `"lan_ipv4"`, `"wan_ipv6"`: the `TaggedAddresses`
    /// entry of that name, in the order of Consul's `BestAddress(true)` for `"wan"`: the
    /// service's (its own port when non-zero), else `Service.Address`, else the node's, else
    /// `Node.Address`.
    Tagged(String),
}

impl Address {
    /// The option's value; `None` when it is not a tagged-address name (`[A-Za-z0-9_-]+`).
    pub fn parse(s: &str) -> Option<Address> {
        match s {
            "service" => Some(Address::Service),
            "node" => Some(Address::Node),
            t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {
                Some(Address::Tagged(t.to_string()))
            }
            _ => None,
        }
    }
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("wait_s", &self.wait_s)
            .field("address", &self.address)
            .finish()
    }
}

impl Consul {
    pub fn new(endpoint: Endpoint, token: Option<String>, wait_s: u64) -> Self {
        Consul { endpoint, token, wait_s, address: Address::Service }
    }
}

/// Parses the body of `GET /v1/health/service/{name}` with the default address choice.
pub fn parse(body: &[u8], build: &BuildOptions) -> Result<Parsed, RegistryError> {
    parse_with(body, build, &Address::Service)
}

/// Parses the body of `GET /v1/health/service/{name}`, taking each entry's address as `choice` says.
/// Only the metadata keys `build` reads are kept.
pub fn parse_with(body: &[u8], build: &BuildOptions, choice: &Address) -> Result<Parsed, RegistryError> {
    let keys = build.keys.names();
    let mut entries = Entries { keys: &keys, build, choice, meta: Meta::default(), batch: Batch::default() };
    match read_with(body, List { each: &mut entries, one: false })? {
        Loose::Array => Ok(entries.batch.finish()),
        v => Err(RegistryError::Parse(format!("expected an array of entries, got {}", v.kind()))),
    }
}

/// One `ServiceEntry`: what is read of it besides `Service` and `Node` (read by [`EntrySide`]).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Entry {
    checks: Checks,
}

/// `Node`: its `Address` (its `TaggedAddresses` entry of the configured name is read by
/// [`Tagged`]).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Node<'a> {
    #[serde(borrow)]
    address: Loose<'a>,
}

/// `Service` (its `Meta` and its `TaggedAddresses` entry of the configured name are read by
/// [`ServiceSide`]).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Service<'a> {
    #[serde(borrow)]
    address: Loose<'a>,
    #[serde(borrow)]
    port: Loose<'a>,
    #[serde(borrow)]
    weights: Obj<'a, Weights<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Weights<'a> {
    #[serde(borrow)]
    passing: Loose<'a>,
    #[serde(borrow)]
    warning: Loose<'a>,
}

/// An entry of `Service.TaggedAddresses` (`api.ServiceAddress`; the API docs' sample spells its
/// keys in lower case).
#[derive(Default, Deserialize)]
#[serde(default)]
struct ServiceAddress<'a> {
    #[serde(rename = "Address", borrow)]
    address: Loose<'a>,
    #[serde(rename = "address", borrow)]
    address_lower: Loose<'a>,
    #[serde(rename = "Port", borrow)]
    port: Loose<'a>,
    #[serde(rename = "port", borrow)]
    port_lower: Loose<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Check<'a> {
    #[serde(rename = "CheckID", borrow)]
    check_id: Loose<'a>,
    #[serde(rename = "Status", borrow)]
    status: Loose<'a>,
}

/// `Checks`, folded as they are read: whether a check is a maintenance one, critical (or of a
/// status Consul does not define) or warning; `malformed` when it is not a list (or `null`) or a
/// check has no string `Status`.
#[derive(Default)]
struct Checks {
    maintenance: bool,
    critical: bool,
    warning: bool,
    malformed: bool,
}

impl<'de> Deserialize<'de> for Checks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ChecksVisitor)? {
            Some(c) => Ok(c),
            None => Ok(Checks { malformed: true, ..Checks::default() }),
        }
    }
}

/// `Some` with the checks of a list or `null`, `None` for anything else.
struct ChecksVisitor;

impl<'de> Visitor<'de> for ChecksVisitor {
    type Value = Option<Checks>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Option<Checks>, E> {
        Ok(Some(Checks::default()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Option<Checks>, A::Error> {
        let mut c = Checks::default();
        while let Some(check) = a.next_element::<Obj<Check>>()? {
            let status = check.get().and_then(|k| Some((k.check_id.as_str().unwrap_or_default(), k.status.as_str()?)));
            let Some((id, status)) = status else {
                c.malformed = true;
                continue;
            };
            let status = status.trim();
            if id == "_node_maintenance" || id.starts_with("_service_maintenance:") {
                c.maintenance = true;
            }
            if status.eq_ignore_ascii_case("warning") {
                c.warning = true;
            } else if !status.eq_ignore_ascii_case("passing") {
                c.critical = true;
            }
        }
        Ok(Some(c))
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Option<Checks>, A::Error> {
        Loose::deserialize(MapAccessDeserializer::new(a)).map(|_| None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<Checks>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<Checks>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<Checks>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<Checks>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<Checks>, E> {
        Ok(None)
    }
}

/// The entries of the reply, each read as it comes and made an instance at once.
struct Entries<'k, 'b, 'a> {
    keys: &'k [&'k str],
    build: &'b BuildOptions,
    choice: &'b Address,
    /// One entry's metadata at a time.
    meta: Meta<'a>,
    batch: Batch,
}

impl<'de: 'a, 'a> Each<'de> for Entries<'_, '_, 'a> {
    fn element<D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        let tag = match self.choice {
            Address::Tagged(t) => Some(t.as_str()),
            Address::Service | Address::Node => None,
        };
        let mut side = EntrySide { keys: self.keys, tag, meta: &mut self.meta, service: None, node: None };
        let rec = match With::<Entry, _>::new(&mut side).deserialize(d)? {
            Obj::Obj(e) => entry(&e, &side, self.build, self.choice),
            Obj::Not(_) => Rec::Skipped,
        };
        self.batch.add(rec);
        Ok(())
    }
}

/// The `TaggedAddresses` entry named `tag` (when there is one), read as `T`.
#[allow(clippy::type_complexity)]
fn tagged<T>(tag: Option<&str>) -> Option<Field<Member<'_, T>, Option<T>>> {
    tag.map(|t| Field::new("TaggedAddresses", Member::new(t)))
}

/// An entry's `Service` and `Node`, each read with what it needs: the service's metadata keys, the
/// configured tagged-address name (`tag`); each with that entry, when it is read.
struct EntrySide<'s, 'a> {
    keys: &'s [&'s str],
    tag: Option<&'s str>,
    meta: &'s mut Meta<'a>,
    service: Option<(Obj<'a, Service<'a>>, Option<Obj<'a, ServiceAddress<'a>>>)>,
    node: Option<(Obj<'a, Node<'a>>, Option<Loose<'a>>)>,
}

impl<'de: 'a, 'a> Side<'de> for EntrySide<'_, 'a> {
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "Service" if self.service.is_none() => {
                let mut side = (MetaSide::new("Meta", self.keys, &mut *self.meta), tagged(self.tag));
                let service = map.next_value_seed(With::<Service, _>::new(&mut side))?;
                self.service = Some((service, side.1.and_then(|f| f.value).flatten()));
            }
            "Node" if self.node.is_none() => {
                let mut side = tagged(self.tag);
                let node = map.next_value_seed(With::<Node, _>::new(&mut side))?;
                self.node = Some((node, side.and_then(|f| f.value).flatten()));
            }
            "Service" | "Node" => {
                return Err(de::Error::duplicate_field(if key == "Node" { "Node" } else { "Service" }))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A string field (`None`: missing or null; `Err`: another type).
fn text<'a>(v: &'a Loose<'_>) -> Result<Option<&'a str>, ()> {
    match v {
        Loose::Absent | Loose::Null => Ok(None),
        Loose::Str(s) => Ok(Some(s.trim())),
        _ => Err(()),
    }
}

/// The entry's address and port as `choice` says, from its `Service` (with its tagged address of
/// the configured name) and its `Node` (the same); `None` when a field has the wrong type.
fn pick<'e>(
    (svc, svc_tag): (&'e Service<'_>, Option<&'e Obj<'_, ServiceAddress<'_>>>),
    node: Option<&'e (Obj<'_, Node<'_>>, Option<Loose<'_>>)>,
    choice: &Address,
) -> Option<(&'e str, i64)> {
    let mut port = svc.port.as_i64()?;
    let mut addr = text(&svc.address).ok()?.unwrap_or_default();
    match choice {
        Address::Service => {}
        Address::Node => addr = "",
        Address::Tagged(_) => {
            // Service.TaggedAddresses: {"wan": {"Address": "..", "Port": 80}}
            if let Some(Obj::Obj(t)) = svc_tag {
                let field = |k: &'e Loose<'_>, lower: &'e Loose<'_>| if *k == Loose::Absent { lower } else { k };
                addr = field(&t.address, &t.address_lower).as_str().map(str::trim).unwrap_or_default();
                port = field(&t.port, &t.port_lower).as_i64().filter(|p| *p != 0).unwrap_or(port);
            }
            if addr.is_empty() {
                addr = node.and_then(|(_, t)| t.as_ref()?.as_str()).map(str::trim).unwrap_or_default();
            }
        }
    }
    if addr.is_empty() {
        let node = node.and_then(|(n, _)| n.get()).map_or(&Loose::Absent, |n| &n.address);
        addr = text(node).ok().flatten()?;
    }
    Some((addr, port))
}

/// One `ServiceEntry` (its `Service` and `Node` as `side` read them): skipped when it is
/// malformed, or its address is a host name (then named).
fn entry(e: &Entry, side: &EntrySide<'_, '_>, build: &BuildOptions, choice: &Address) -> Rec {
    let Some((Obj::Obj(svc), svc_tag)) = &side.service else {
        return Rec::Skipped;
    };
    let Some((host, port)) = pick((svc, svc_tag.as_ref()), side.node.as_ref(), choice) else {
        return Rec::Skipped;
    };
    let Some(addr) = format_addr(host, port) else {
        return host_name_addr(host, port).map_or(Rec::Skipped, Rec::Unroutable);
    };
    let Some((passing, warning)) = weights(&svc.weights, build.weight_scale) else {
        return Rec::Skipped;
    };
    let c = &e.checks;
    if c.malformed {
        return Rec::Skipped;
    }
    let (state, weight) = if c.maintenance {
        (State::Draining, passing)
    } else if c.critical {
        (State::Down, passing)
    } else if c.warning {
        (State::Serving, warning)
    } else {
        (State::Serving, passing)
    };
    let meta = &*side.meta;
    let (inst, b) = build.build(addr, Some(weight), None, state, &meta.kept[..]);
    Rec::Kept(inst, meta.bad + b)
}

/// `Weights: {Passing, Warning}` scaled; `None` when present but malformed.
fn weights(w: &Obj<'_, Weights<'_>>, scale: f64) -> Option<(i32, i32)> {
    let one = |w: &Loose<'_>| -> Option<i32> {
        match w {
            Loose::Absent | Loose::Null => scale_weight(1.0, scale),
            Loose::Uint(_) | Loose::Int(_) => scale_weight(w.as_f64()?, scale),
            _ => None,
        }
    };
    match w {
        Obj::Not(Loose::Absent | Loose::Null) => Some((one(&Loose::Absent)?, one(&Loose::Absent)?)),
        Obj::Obj(w) => Some((one(&w.passing)?, one(&w.warning)?)),
        Obj::Not(_) => None,
    }
}

/// Takes a reply's `X-Consul-Index` into the cursor, following Consul's rules (see the module
/// doc); `true` when the index is the one stored (the query timed out with no change).
fn take_index(c: &mut Cursor, resp: &HttpResponse<'_>) -> bool {
    let stored = c.index;
    match resp.header("x-consul-index").and_then(|v| v.trim().parse::<u64>().ok()) {
        None => c.index = 0,
        Some(index) => {
            // "indexes must be > 0": treat 0 as 1
            let index = index.max(1);
            if stored > 0 && index == stored {
                return true;
            }
            c.index = if index < stored { 0 } else { index };
        }
    }
    false
}

impl Adapter for Consul {
    fn request(&self, _s: &Session, c: &Cursor, q: &ServiceQuery, _now_ms: i64) -> (Call, HttpRequest) {
        let mut params: Vec<String> = Vec::new();
        for (k, v) in [("dc", &q.dc), ("tag", &q.tag), ("ns", &q.namespace)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                params.push(format!("{k}={}", encode(v)));
            }
        }
        let mut timeout_ms = self.endpoint.timeout_ms;
        if self.wait_s > 0 && c.index > 0 {
            params.push(format!("index={}", c.index));
            params.push(format!("wait={}s", self.wait_s));
            // Consul holds the request up to wait + wait/16 (structs.JitterFraction)
            timeout_ms = timeout_ms.saturating_add(self.wait_s * 1000 + self.wait_s * 1000 / 16);
        }
        let mut path = format!("/v1/health/service/{}", encode(&q.service));
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        let mut headers = request_headers(&self.endpoint, "GET", path);
        if let Some(t) = self.token.as_deref().filter(|t| !t.is_empty()) {
            headers.push(("x-consul-token".to_string(), t.to_string()));
        }
        (Call::List, HttpRequest { headers, body: None, timeout_ms })
    }

    fn on_reply(
        &self,
        _s: &mut Session,
        c: &mut Cursor,
        q: &ServiceQuery,
        _call: Call,
        resp: &HttpResponse<'_>,
        _now_ms: i64,
    ) -> Reply {
        let secrets: &[&str] = match self.token.as_deref() {
            Some(t) => &[t],
            None => &[],
        };
        if let Err(e) = check_common(resp, &self.endpoint, secrets) {
            return Reply::Error(e);
        }
        if take_index(c, resp) {
            return Reply::Unchanged;
        }
        match parse_with(resp.body, &q.build, &self.address) {
            Ok(p) => Reply::Members(p),
            Err(e) => {
                c.index = 0;
                Reply::Error(e)
            }
        }
    }

    fn long_poll(&self) -> bool {
        self.wait_s > 0
    }

    /// The index moves as it does for a parsed reply; the same index is [`Reply::Unchanged`].
    fn same_body(&self, c: &mut Cursor, resp: &HttpResponse<'_>) -> bool {
        take_index(c, resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Client;

    const SAMPLE: &[u8] = include_bytes!("../../../shared/fixtures/registry/consul-health-service.json");

    fn p(body: &str) -> Result<Parsed, RegistryError> {
        parse(body.as_bytes(), &BuildOptions::default())
    }

    /// One entry with the given `Service` fields (after Address/Port) and `Checks`.
    fn one(service_extra: &str, checks: &str) -> Parsed {
        p(&format!(r#"[{{"Node":{{"Address":"10.0.0.9"}},"Service":{{"Address":"10.0.0.1","Port":80{service_extra}}},"Checks":{checks}}}]"#)).unwrap()
    }

    fn check(id: &str, status: &str) -> String {
        format!(r#"{{"CheckID":"{id}","Status":"{status}"}}"#)
    }

    #[test]
    fn fixture_docs_sample() {
        let r = parse(SAMPLE, &BuildOptions::default()).unwrap();
        assert_eq!((r.instances.len(), r.skipped, r.malformed_meta), (1, 0, 0));
        let i = &r.instances[0];
        // both checks (service:redis, serfHealth) passing: Passing weight 10 on the Dubbo scale
        assert_eq!(
            (i.addr.as_str(), i.state, i.weight, i.start_ms, i.warmup_ms),
            ("10.1.10.12:8000", State::Serving, 1000, None, 600_000)
        );
        // redis_version is not a key that is read; Node.Meta is not service metadata
        assert_eq!(r.malformed_meta, 0);
    }

    #[test]
    fn fixture_with_changed_checks() {
        let text = std::str::from_utf8(SAMPLE).unwrap();
        // the service check warns: Warning weight 1
        let warn = text.replacen(r#""Status": "passing""#, r#""Status": "warning""#, 1);
        let i = &p(&warn).unwrap().instances[0];
        assert_eq!((i.state, i.weight), (State::Serving, 100));
        // serf health critical: down
        let crit = text.replacen(
            r#""CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing""#,
            r#""CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "critical""#,
            1,
        );
        assert_ne!(crit, text);
        assert_eq!(p(&crit).unwrap().instances[0].state, State::Down);
        // node in maintenance
        let maint = text.replacen(r#""CheckID": "serfHealth""#, r#""CheckID": "_node_maintenance""#, 1);
        assert_eq!(p(&maint).unwrap().instances[0].state, State::Draining);
    }

    #[test]
    fn states_and_weights() {
        let w = r#","Weights":{"Passing":10,"Warning":3}"#;
        let st = |checks: &str| {
            let i = one(w, checks).instances.into_iter().next().unwrap();
            (i.state, i.weight)
        };
        assert_eq!(st("[]"), (State::Serving, 1000));
        assert_eq!(st("null"), (State::Serving, 1000));
        assert_eq!(st(&format!("[{}]", check("serfHealth", "passing"))), (State::Serving, 1000));
        assert_eq!(
            st(&format!("[{},{}]", check("serfHealth", "passing"), check("service:a", "warning"))),
            (State::Serving, 300)
        );
        assert_eq!(
            st(&format!("[{},{}]", check("service:a", "warning"), check("serfHealth", "critical"))),
            (State::Down, 1000)
        );
        assert_eq!(st(&format!("[{}]", check("serfHealth", "CRITICAL"))), (State::Down, 1000));
        // a status Consul does not define is not healthy
        assert_eq!(st(&format!("[{}]", check("serfHealth", "bogus"))), (State::Down, 1000));
        // maintenance wins over critical (its own status is critical)
        assert_eq!(
            st(&format!("[{},{}]", check("serfHealth", "passing"), check("_node_maintenance", "critical"))),
            (State::Draining, 1000)
        );
        assert_eq!(
            st(&format!("[{},{}]", check("_service_maintenance:a", "critical"), check("serfHealth", "critical"))),
            (State::Draining, 1000)
        );
        assert_eq!(st(&format!("[{}]", check("_service_maintenance:", "passing"))), (State::Draining, 1000));
        // similar names are not maintenance
        assert_eq!(st(&format!("[{}]", check("_service_maintenance", "critical"))), (State::Down, 1000));
        assert_eq!(st(&format!("[{}]", check("my_node_maintenance", "critical"))), (State::Down, 1000));
        // a check without CheckID still counts
        assert_eq!(st(r#"[{"Status":"critical"}]"#), (State::Down, 1000));
        // default weights are 1
        assert_eq!(one("", "[]").instances[0].weight, 100);
        assert_eq!(
            one(r#","Weights":{"Passing":5}"#, &format!("[{}]", check("c", "warning"))).instances[0].weight,
            100
        );
        assert_eq!(one(r#","Weights":null"#, "[]").instances[0].weight, 100);
        assert_eq!(one(r#","Weights":{"Passing":0,"Warning":0}"#, "[]").instances[0].weight, 0);
        // a metadata weight wins over the native one; a metadata drain flag drains
        assert_eq!(one(&format!(r#"{w},"Meta":{{"weight":"7"}}"#), "[]").instances[0].weight, 7);
        assert_eq!(one(r#","Meta":{"lossless.drain":"true"}"#, "[]").instances[0].state, State::Draining);
        // a custom scale
        let b = BuildOptions { weight_scale: 1.0, ..BuildOptions::default() };
        let r = parse(br#"[{"Service":{"Address":"10.0.0.1","Port":80,"Weights":{"Passing":10,"Warning":1}}}]"#, &b)
            .unwrap();
        assert_eq!(r.instances[0].weight, 10);
    }

    #[test]
    fn addresses_and_metadata() {
        let addr = |entry: &str| p(&format!("[{entry}]")).unwrap().instances.first().map(|i| i.addr.clone());
        assert_eq!(
            addr(r#"{"Node":{"Address":"10.0.0.9"},"Service":{"Address":"10.0.0.1","Port":80}}"#).as_deref(),
            Some("10.0.0.1:80")
        );
        assert_eq!(
            addr(r#"{"Node":{"Address":"10.0.0.9"},"Service":{"Address":"","Port":80}}"#).as_deref(),
            Some("10.0.0.9:80")
        );
        assert_eq!(addr(r#"{"Node":{"Address":"10.0.0.9"},"Service":{"Port":80}}"#).as_deref(), Some("10.0.0.9:80"));
        assert_eq!(
            addr(r#"{"Node":{"Address":"10.0.0.9"},"Service":{"Address":null,"Port":80}}"#).as_deref(),
            Some("10.0.0.9:80")
        );
        assert_eq!(
            addr(r#"{"Node":{"Address":"10.0.0.9"},"Service":{"Address":"2001:db8::1","Port":80}}"#).as_deref(),
            Some("[2001:db8::1]:80")
        );
        // metadata, unicode included
        let r = one(
            r#","Meta":{"zone":"a","ключ":"значение ✓","emoji":"🦀","timestamp":"1700000000000","warmup":"60000"}"#,
            "[]",
        );
        let i = &r.instances[0];
        assert_eq!((i.start_ms, i.warmup_ms), (Some(1_700_000_000_000), 60_000));
        // Meta of the wrong type: kept without it, counted
        let r = one(r#","Meta":"zone=a""#, "[]");
        assert_eq!((r.instances.len(), r.malformed_meta), (1, 1));
        // duplicates merge (two service IDs on the same address): the worst state wins
        let r = p(&format!(
            r#"[{{"Service":{{"Address":"10.0.0.1","Port":80}},"Checks":[{}]}},{{"Service":{{"Address":"10.0.0.1","Port":80}},"Checks":[{}]}}]"#,
            check("a", "passing"),
            check("b", "critical")
        ))
        .unwrap();
        assert_eq!((r.instances.len(), r.instances[0].state), (1, State::Down));
        assert_eq!(p("[]").unwrap(), Parsed::default());
    }

    fn parse_as(body: &[u8], choice: &str) -> Parsed {
        parse_with(body, &BuildOptions::default(), &Address::parse(choice).unwrap()).unwrap()
    }

    /// The `address` option on the API docs' sample (Node.TaggedAddresses lan/wan 10.1.10.12,
    /// Service.TaggedAddresses lan 10.1.10.12:8000, wan 198.18.1.2:80).
    #[test]
    fn fixture_tagged_addresses() {
        let addr = |body: &[u8], choice: &str| parse_as(body, choice).instances[0].addr.clone();
        assert_eq!(addr(SAMPLE, "service"), "10.1.10.12:8000");
        assert_eq!(addr(SAMPLE, "wan"), "198.18.1.2:80");
        assert_eq!(addr(SAMPLE, "lan"), "10.1.10.12:8000");
        assert_eq!(addr(SAMPLE, "node"), "10.1.10.12:8000");
        // a tag nobody registered: Service.Address, as BestAddress does without a wan entry
        assert_eq!(addr(SAMPLE, "lan_ipv6"), "10.1.10.12:8000");
        // no service-level wan entry and no Service.Address: the node's wan address, the service port
        let text = std::str::from_utf8(SAMPLE).unwrap();
        let no_svc = text
            .replacen(
                r#""Address": "10.1.10.12",
      "TaggedAddresses": {
        "lan": {"#,
                r#""Address": "",
      "TaggedAddresses": {
        "lan": {"#,
                1,
            )
            .replace(
                r#""wan": {
          "address": "198.18.1.2",
          "port": 80
        }"#,
                r#""x": {}"#,
            )
            .replacen(r#""wan": "10.1.10.12""#, r#""wan": "203.0.113.9""#, 1);
        assert_ne!(no_svc, text);
        assert_eq!(addr(no_svc.as_bytes(), "wan"), "203.0.113.9:8000");
        assert_eq!(addr(no_svc.as_bytes(), "service"), "10.1.10.12:8000");
        assert_eq!(Address::parse(""), None);
        assert_eq!(Address::parse("w a n"), None);
        assert_eq!(Address::parse("consul-virtual"), Some(Address::Tagged("consul-virtual".into())));
    }

    /// Consul's `CheckServiceNode.BestAddress(wan)` order (agent/structs/structs.go: wan: service
    /// wan, service address, node wan, node address; lan: service address, node address), with
    /// the Go API's field names (`api.ServiceAddress{Address, Port}`).
    #[test]
    fn best_address_order() {
        let e = |svc_addr: &str, svc_wan: &str, node_wan: &str| {
            format!(
                r#"[{{"Node":{{"Address":"10.0.0.9","TaggedAddresses":{{{node_wan}}}}},"Service":{{"Address":"{svc_addr}","Port":80,"TaggedAddresses":{{{svc_wan}}}}}}}]"#
            )
        };
        let rows: &[(&str, &str, &str, &str, &str)] = &[
            (
                "wan",
                "10.0.0.1",
                r#""wan":{"Address":"192.0.2.1","Port":8443}"#,
                r#""wan":"192.0.2.9""#,
                "192.0.2.1:8443",
            ),
            ("wan", "10.0.0.1", r#""wan":{"Address":"192.0.2.1","Port":0}"#, "", "192.0.2.1:80"),
            ("wan", "10.0.0.1", "", r#""wan":"192.0.2.9""#, "10.0.0.1:80"),
            ("wan", "", "", r#""wan":"192.0.2.9""#, "192.0.2.9:80"),
            ("wan", "", "", "", "10.0.0.9:80"),
            ("service", "10.0.0.1", r#""wan":{"Address":"192.0.2.1","Port":8443}"#, "", "10.0.0.1:80"),
            ("service", "", r#""wan":{"Address":"192.0.2.1","Port":8443}"#, r#""wan":"192.0.2.9""#, "10.0.0.9:80"),
            ("node", "10.0.0.1", "", "", "10.0.0.9:80"),
            ("lan_ipv4", "10.0.0.1", r#""lan_ipv4":{"Address":"10.0.0.2","Port":81}"#, "", "10.0.0.2:81"),
        ];
        for (choice, svc_addr, svc_wan, node_wan, want) in rows {
            let body = e(svc_addr, svc_wan, node_wan);
            assert_eq!(parse_as(body.as_bytes(), choice).instances[0].addr, *want, "{choice}: {body}");
        }
    }

    /// Spring Cloud Consul registers `Service.Address` = the machine's host name unless
    /// `prefer-ip-address` is set (ConsulDiscoveryProperties: `preferIpAddress = false`,
    /// `getHostname()`). Such an entry is refused, named and counted — unless the `address` option
    /// points at an IP the entry also carries.
    #[test]
    fn host_names_are_refused_loudly() {
        let body = br#"[{"Node":{"Address":"10.0.0.9","TaggedAddresses":{"lan":"10.0.0.9"}},"Service":{"Address":"orders-7f9c.example.internal","Port":8080}},
            {"Node":{"Address":"10.0.0.8"},"Service":{"Address":"10.0.0.8","Port":8080}}]"#;
        let r = parse_as(body, "service");
        assert_eq!((r.instances.len(), r.skipped), (1, 1));
        assert_eq!(r.unroutable, ["orders-7f9c.example.internal:8080"]);
        let r = parse_as(body, "node");
        assert_eq!(r.instances.iter().map(|i| i.addr.as_str()).collect::<Vec<_>>(), ["10.0.0.8:8080", "10.0.0.9:8080"]);
        assert!(r.unroutable.is_empty());
        // a node registered by name has nothing to fall back to
        let r = parse_as(br#"[{"Node":{"Address":"node-1"},"Service":{"Address":"","Port":80}}]"#, "service");
        assert_eq!((r.instances.len(), r.unroutable.as_slice()), (0, ["node-1:80".to_string()].as_slice()));
    }

    #[test]
    fn hostile() {
        let parse_err = |body: &str| matches!(p(body), Err(RegistryError::Parse(_)));
        for body in [
            "",
            "null",
            "{}",
            r#"{"Service":{"Address":"10.0.0.1","Port":80}}"#,
            r#""[]""#,
            "7",
            r#"[{"Service":{"Address":"10.0.0.1","Port":80}}"#,
            r#"[{"Service":{"Address":"10.0.0.1","Port":8"#,
            "[]]",
            r#"[{"Service":{"Address":"10.0.0.1","Port":1e400}}]"#,
            "\u{feff}[]",
        ] {
            assert!(parse_err(body), "{body:?}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_err(&deep));
        let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert!(parse_err(&format!(r#"[{{"Service":{{"Address":"10.0.0.1","Port":80,"Meta":{deep_obj}}}}}]"#)));
        assert!(matches!(
            parse(b"[{\"Service\":{\"Address\":\"\xfe\"}}]", &BuildOptions::default()),
            Err(RegistryError::Parse(_))
        ));

        // malformed entries are skipped and counted; each line is one skip
        let bad = [
            r#"null"#,
            r#"7"#,
            r#"[]"#,
            r#"{}"#, // no Service
            r#"{"Service":null}"#,
            r#"{"Service":"redis"}"#,
            r#"{"Service":{"Address":"10.0.0.1"}}"#,             // no Port
            r#"{"Service":{"Address":"10.0.0.1","Port":"80"}}"#, // Port as string
            r#"{"Service":{"Address":"10.0.0.1","Port":80.5}}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":-80}}"#, // negative
            r#"{"Service":{"Address":"10.0.0.1","Port":0}}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":65536}}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":18446744073709551615}}"#, // huge
            r#"{"Service":{"Address":"10.0.0.1","Port":1e300}}"#,
            r#"{"Service":{"Address":"redis.service.consul","Port":80}}"#, // host name (unroutable)
            r#"{"Service":{"Address":7,"Port":80},"Node":{"Address":"10.0.0.9"}}"#, // Address wrong type
            r#"{"Service":{"Address":"","Port":80}}"#,                     // no address at all
            r#"{"Service":{"Address":"","Port":80},"Node":{"Address":""}}"#,
            r#"{"Service":{"Address":"","Port":80},"Node":"n1"}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":80},"Checks":{"Status":"passing"}}"#, // Checks as object
            r#"{"Service":{"Address":"10.0.0.1","Port":80},"Checks":"passing"}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":80},"Checks":[{"CheckID":"a"}]}"#, // no Status
            r#"{"Service":{"Address":"10.0.0.1","Port":80},"Checks":[{"Status":1}]}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":80},"Checks":[null]}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":80,"Weights":{"Passing":-1}}}"#, // negative weight
            r#"{"Service":{"Address":"10.0.0.1","Port":80,"Weights":{"Warning":-1}}}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":80,"Weights":{"Passing":1.5}}}"#, // not an integer
            r#"{"Service":{"Address":"10.0.0.1","Port":80,"Weights":{"Passing":"10"}}}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":80,"Weights":[10,1]}}"#,
            r#"{"Service":{"Address":"10.0.0.1","Port":80,"Weights":1}}"#,
        ];
        let good =
            r#"{"Service":{"Address":"10.0.0.2","Port":80,"Weights":{"Passing":18446744073709551615,"Warning":1}}}"#;
        let r = p(&format!("[{},{good}]", bad.join(","))).unwrap();
        assert_eq!((r.skipped as usize, r.instances.len()), (bad.len(), 1));
        assert_eq!(r.unroutable, ["redis.service.consul:80"]);
        // a huge weight is clamped
        assert_eq!((r.instances[0].addr.as_str(), r.instances[0].weight), ("10.0.0.2:80", i32::MAX));
        let r = one(r#","Weights":{"Passing":9223372036854775807}"#, "[]");
        assert_eq!(r.instances[0].weight, i32::MAX);
    }

    fn adapter(wait_s: u64, token: Option<&str>) -> Client<Consul> {
        Client::new(Consul::new(
            Endpoint { authority: "consul:8500".into(), timeout_ms: 35_000, max_body_bytes: 1 << 20 },
            token.map(String::from),
            wait_s,
        ))
    }

    #[test]
    fn request_shape() {
        let mut a = adapter(30, Some("secret"));
        let mut q = ServiceQuery { service: "my svc/é".into(), ..Default::default() };
        let (call, req) = a.request(&q, 0);
        assert_eq!(call, Call::List);
        let h: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            h,
            [
                (":method", "GET"),
                (":path", "/v1/health/service/my%20svc%2F%C3%A9"),
                (":authority", "consul:8500"),
                ("accept", "application/json"),
                ("x-consul-token", "secret")
            ]
        );
        assert_eq!((req.body, req.timeout_ms), (None, 35_000));
        q.dc = Some("dc 1".into());
        q.tag = Some("v2&x=1".into());
        q.namespace = Some("team-a".into());
        assert_eq!(
            a.request(&q, 0).1.header(":path"),
            Some("/v1/health/service/my%20svc%2F%C3%A9?dc=dc%201&tag=v2%26x%3D1&ns=team-a")
        );
        a.cursor.index = 42;
        // a blocking request may be held wait + wait/16 (30 s + 1875 ms) on top of timeout_ms
        assert_eq!(a.request(&q, 0).1.timeout_ms, 35_000 + 31_875);
        assert_eq!(
            a.request(&q, 0).1.header(":path"),
            Some("/v1/health/service/my%20svc%2F%C3%A9?dc=dc%201&tag=v2%26x%3D1&ns=team-a&index=42&wait=30s")
        );
        a.cursor.index = 7;
        let q = ServiceQuery { service: "web".into(), tag: Some("blue".into()), ..Default::default() };
        assert_eq!(a.request(&q, 0).1.header(":path"), Some("/v1/health/service/web?tag=blue&index=7&wait=30s"));
        let q = ServiceQuery { service: "web".into(), dc: Some(String::new()), ..Default::default() };
        assert_eq!(a.request(&q, 0).1.header(":path"), Some("/v1/health/service/web?index=7&wait=30s"));
        // no blocking queries: never an index
        let mut a = adapter(0, None);
        a.cursor.index = 7;
        let (_, req) = a.request(&q, 0);
        assert_eq!(req.header(":path"), Some("/v1/health/service/web"));
        assert_eq!(req.header("x-consul-token"), None);
        assert_eq!(req.headers.len(), 4);
        assert!(!a.long_poll());
        assert!(adapter(1, None).long_poll());
        // an empty token sends no header
        assert_eq!(adapter(0, Some("")).request(&q, 0).1.header("x-consul-token"), None);
    }

    #[test]
    fn debug_hides_token() {
        let s = format!("{:?}", adapter(5, Some("s3cr3t-token")).adapter);
        assert!(!s.contains("s3cr3t"), "{s}");
        assert!(s.contains("***"), "{s}");
    }

    fn reply(a: &mut Client<Consul>, q: &ServiceQuery, status: Option<u16>, index: Option<&str>, body: &[u8]) -> Reply {
        let headers: Vec<(String, String)> =
            index.map(|i| ("X-Consul-Index".to_string(), i.to_string())).into_iter().collect();
        a.on_reply(q, Call::List, &HttpResponse { status, headers: &headers, body, body_size: body.len() }, 0)
    }

    fn path(a: &mut Client<Consul>, q: &ServiceQuery) -> String {
        a.request(q, 0).1.header(":path").unwrap().to_string()
    }

    #[test]
    fn index_sequence() {
        let mut a = adapter(60, None);
        let q = ServiceQuery { service: "redis".into(), ..Default::default() };
        let members = |r: Reply| match r {
            Reply::Members(p) => p.instances.len(),
            r => panic!("{r:?}"),
        };
        // first call: no index
        assert_eq!(path(&mut a, &q), "/v1/health/service/redis");
        assert_eq!(members(reply(&mut a, &q, Some(200), Some("100"), SAMPLE)), 1);
        assert_eq!(a.cursor.index, 100);
        assert_eq!(path(&mut a, &q), "/v1/health/service/redis?index=100&wait=60s");
        // the blocking query timed out: same index, body not even parsed
        assert_eq!(reply(&mut a, &q, Some(200), Some("100"), b"not json"), Reply::Unchanged);
        assert_eq!(a.cursor.index, 100);
        // a change
        assert_eq!(members(reply(&mut a, &q, Some(200), Some(" 150 "), b"[]")), 0);
        assert_eq!(a.cursor.index, 150);
        // went backwards: reset to 0, the list is still used
        assert_eq!(members(reply(&mut a, &q, Some(200), Some("120"), SAMPLE)), 1);
        assert_eq!(a.cursor.index, 0);
        assert_eq!(path(&mut a, &q), "/v1/health/service/redis");
        // after a reset the same index as before is not "unchanged"
        assert_eq!(members(reply(&mut a, &q, Some(200), Some("120"), SAMPLE)), 1);
        assert_eq!(a.cursor.index, 120);
        // missing header: reset to 0, list used
        assert_eq!(members(reply(&mut a, &q, Some(200), None, SAMPLE)), 1);
        assert_eq!(a.cursor.index, 0);
        // unparsable header: same
        a.cursor.index = 120;
        assert_eq!(members(reply(&mut a, &q, Some(200), Some("abc"), SAMPLE)), 1);
        assert_eq!(a.cursor.index, 0);
        a.cursor.index = 120;
        assert_eq!(members(reply(&mut a, &q, Some(200), Some("-5"), SAMPLE)), 1);
        assert_eq!(a.cursor.index, 0);
        // "0" is taken as 1
        assert_eq!(members(reply(&mut a, &q, Some(200), Some("0"), SAMPLE)), 1);
        assert_eq!(a.cursor.index, 1);
        assert_eq!(path(&mut a, &q), "/v1/health/service/redis?index=1&wait=60s");
        assert_eq!(reply(&mut a, &q, Some(200), Some("0"), SAMPLE), Reply::Unchanged);
        assert_eq!(reply(&mut a, &q, Some(200), Some("1"), SAMPLE), Reply::Unchanged);
        // a huge index is fine
        assert_eq!(members(reply(&mut a, &q, Some(200), Some("18446744073709551615"), SAMPLE)), 1);
        assert_eq!(a.cursor.index, u64::MAX);
        // the header name is case-insensitive
        a.cursor.index = 5;
        let headers = [("x-consul-index".to_string(), "5".to_string())];
        let r = a.on_reply(
            &q,
            Call::List,
            &HttpResponse { status: Some(200), headers: &headers, body: b"[]", body_size: 2 },
            0,
        );
        assert_eq!(r, Reply::Unchanged);
    }

    #[test]
    fn index_without_blocking() {
        // wait_s = 0: no index in the request, but an unchanged index still skips the parse
        let mut a = adapter(0, None);
        let q = ServiceQuery { service: "redis".into(), ..Default::default() };
        assert!(matches!(reply(&mut a, &q, Some(200), Some("9"), SAMPLE), Reply::Members(_)));
        assert_eq!(a.cursor.index, 9);
        assert_eq!(path(&mut a, &q), "/v1/health/service/redis");
        assert_eq!(reply(&mut a, &q, Some(200), Some("9"), SAMPLE), Reply::Unchanged);
    }

    #[test]
    fn errors_and_index() {
        let mut a = adapter(60, None);
        let q = ServiceQuery { service: "redis".into(), ..Default::default() };
        a.cursor.index = 100;
        // transport failure or an error status: the index is kept
        assert_eq!(reply(&mut a, &q, None, None, b""), Reply::Error(RegistryError::Transport));
        assert_eq!(a.cursor.index, 100);
        assert_eq!(
            reply(&mut a, &q, Some(500), Some("200"), b"rpc error"),
            Reply::Error(RegistryError::Status(500, "rpc error".into()))
        );
        assert_eq!(a.cursor.index, 100);
        assert_eq!(
            reply(&mut a, &q, Some(403), None, b"Permission denied"),
            Reply::Error(RegistryError::Status(403, "Permission denied".into()))
        );
        assert_eq!(a.cursor.index, 100);
        // a new index with a body that does not parse: reset, so the next request fetches afresh
        assert!(matches!(
            reply(&mut a, &q, Some(200), Some("200"), br#"[{"Service":"#),
            Reply::Error(RegistryError::Parse(_))
        ));
        assert_eq!(a.cursor.index, 0);
        // 10 MB body with a 1 MB cap: refused before parsing, index kept
        a.cursor.index = 100;
        let big = vec![b' '; 10 << 20];
        assert_eq!(
            reply(&mut a, &q, Some(200), Some("300"), &big),
            Reply::Error(RegistryError::TooLarge { size: 10 << 20, cap: 1 << 20 })
        );
        assert_eq!(a.cursor.index, 100);
    }
}
