//! Eureka adapter: `GET {prefix}/apps/{APP}` with `Accept: application/json`.
//!
//! The reply (Eureka's Jackson codec) is root-wrapped:
//! ```json
//! {"application": {"name": "USERS", "instance": [
//!   {"ipAddr": "10.0.0.1", "status": "UP", "overriddenStatus": "UNKNOWN",
//!    "port": {"$": 8080, "@enabled": "true"}, "securePort": {"$": 8443, "@enabled": "false"},
//!    "leaseInfo": {"serviceUpTimestamp": 1700000000000}, "metadata": {"zone": "a"}}
//! ]}}
//! ```
//! What is read, per instance:
//! - `ipAddr` (an IP literal; a host name cannot be routed to: the instance is refused and named in
//!   [`Parsed::unroutable`]);
//! - `port` / `securePort` as `{"$": 8080, "@enabled": "true"}` (`$` a number or a numeric string;
//!   `@enabled` a string or a bool, missing = enabled for `port`, disabled for `securePort`, as in
//!   Eureka's `InstanceInfo`). The plain port is used unless it is disabled and the secure port is
//!   enabled; a bare number instead of the object is accepted as an enabled port;
//! - `status`, and only that: the server has already applied its override rules to it. On every
//!   register and renew, Netflix Eureka's `AbstractInstanceRegistry` sets `status` to what
//!   `getOverriddenInstanceStatus` decides with `PeerAwareInstanceRegistryImpl`'s rule chain
//!   (`FirstMatchWinsCompositeRule`: `DownOrStartingRule` — a `DOWN` or `STARTING` from the instance
//!   wins over any override —, then `OverrideExistsRule`, then `LeaseExistsRule`), and
//!   `statusUpdate` / `deleteStatusOverride` set `status` together with `overriddenStatus`. Eureka's
//!   own client keeps `status == UP` (`Applications.shuffleAndFilterInstances`) and never reads
//!   `overriddenStatus`. Names are matched case-insensitively and an unrecognised name is `UNKNOWN`,
//!   as `InstanceStatus.toEnum` does. `UP` is serving, `OUT_OF_SERVICE` draining, everything else
//!   (`DOWN`, `STARTING`, `UNKNOWN`, missing) down;
//! - `leaseInfo.serviceUpTimestamp` (ms) as the native start time (metadata keys still win). It is
//!   the Eureka server's clock at the lease's first `UP`, kept per server: a restarted Eureka node
//!   rebuilds its registry from its peers or from re-registrations and stamps the time anew, so an
//!   instance can look freshly started. Start times an instance publishes in its metadata
//!   (`timestamp`, Sermant's inject time) do not move and win;
//! - `metadata`, without the `@class` marker Eureka writes for an empty map.
//!
//! Eureka has no weight: it comes from metadata or the default. An instance without a usable
//! address or port is skipped and counted.
//!
//! `404` on `/apps/{APP}` is the server saying the application has no instances
//! (`ApplicationResource.getApplication` answers 404 when the response cache holds nothing for the
//! name; `AbstractInstanceRegistry.getApplication` gives nothing once the last lease is gone): it is
//! an empty list, which the membership's keep-last-good guard treats like any other empty list. A
//! wrong `path_prefix` answers 404 too, and shows as `no_instances`.
//!
//! The `/apps` shape `{"applications": {"application": [...]}}` is accepted too and yields the
//! instances of *all* its applications (useful for fixtures and a registry that serves one app per
//! path); instances marked `"actionType": "DELETED"` (only found in `/apps/delta` bodies) are left
//! out. In both shapes a list of one element may be serialised as the bare object; a missing
//! instance (or application) list is an empty one. A missing `application`, or a list of the wrong
//! type, is a parse error.

pub mod delta;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess};
use serde::Deserialize;
use serde_json::Value;

use std::marker::PhantomData;

use super::de::{read_with, Batch, Each, Field, Loose, Meta, MetaSide, Obj, Rec, Records, Side, Under, With};
use super::{
    encode, get_request, list_reply, Adapter, Call, Cursor, Endpoint, HttpRequest, HttpResponse, Parsed, RegistryError,
    Reply, ServiceQuery, Session,
};
use crate::instance::{format_addr, host_name_addr, BuildOptions, Instance, State};

#[derive(Debug, Clone)]
pub struct Eureka {
    pub endpoint: Endpoint,
    /// Path prefix of the Eureka REST API, default `/eureka`.
    pub prefix: String,
    /// `fetch: "delta"`: the registry is fetched whole, one delta per this interval (ms), as
    /// Eureka's own client does ([`delta`]); `None`: one request per application per refresh.
    pub delta_interval_ms: Option<u64>,
}

impl Eureka {
    pub fn new(endpoint: Endpoint, prefix: String) -> Self {
        Eureka { endpoint, prefix, delta_interval_ms: None }
    }
}

/// Parses the body of `GET {prefix}/apps/{APP}` (or `GET {prefix}/apps`, all instances). Only the
/// metadata keys `build` reads are kept.
pub fn parse(body: &[u8], build: &BuildOptions) -> Result<Parsed, RegistryError> {
    let keys = meta_keys(build);
    let mut each = |i: &Inst<'_>, m: &Meta<'_>| {
        // delta bodies mark removed instances DELETED: they are not members (and not malformed)
        if i.action_type.as_str() == Some("DELETED") {
            Rec::Ignored
        } else {
            instance(i, m, build)
        }
    };
    let mut records = Records::new(&keys, "metadata", &mut each as EachInst<'_, '_>);
    let mut top = Top { records: &mut records, app: None, apps: None, hash: None };
    read_with(body, With::<IgnoredAny, _>::new(&mut top))?;
    // `application` wins when both are there
    let Some((batch, ok)) = top.app.or(top.apps) else {
        return Err(RegistryError::Parse("missing \"application\"".into()));
    };
    ok.map_err(|m| RegistryError::Parse(m.into()))?;
    Ok(batch.finish())
}

/// What becomes of each `InstanceInfo` record, behind one pointer type so that the per-application
/// parse and the registry-wide fetch ([`delta`]) share one copy of the record reader in the module.
type EachInst<'f, 'a> = &'f mut dyn FnMut(&Inst<'a>, &Meta<'a>) -> Rec;

/// The metadata keys read, without the `@class` marker Eureka writes for an empty map.
fn meta_keys(build: &BuildOptions) -> Vec<&str> {
    let mut keys = build.keys.names();
    keys.retain(|k| *k != "@class");
    keys
}

/// Parses one `InstanceInfo` object. `None` when it has no usable address or port; otherwise the
/// instance and the number of malformed metadata values.
pub fn parse_instance_value(rec: &Value, build: &BuildOptions) -> Option<(Instance, u32)> {
    if !rec.is_object() {
        return None;
    }
    let text = serde_json::to_string(rec).ok()?;
    let keys = meta_keys(build);
    let mut meta = Meta::default();
    let mut side = MetaSide::new("metadata", &keys, &mut meta);
    let Obj::Obj(inst) = read_with(text.as_bytes(), With::<Inst, _>::new(&mut side)).ok()? else {
        return None;
    };
    match instance(&inst, &meta, build) {
        Rec::Kept(i, bad) => Some((i, bad)),
        _ => None,
    }
}

/// One `InstanceInfo`: the fields that are read (`metadata` is read by [`Records`]).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Inst<'a> {
    #[serde(borrow)]
    ip_addr: Loose<'a>,
    /// `instanceId`, `hostName` and `app`: read by the registry-wide fetch only ([`delta`]).
    #[serde(borrow)]
    instance_id: Loose<'a>,
    #[serde(borrow)]
    host_name: Loose<'a>,
    #[serde(borrow)]
    app: Loose<'a>,
    #[serde(borrow)]
    port: Obj<'a, Port<'a>>,
    #[serde(borrow)]
    secure_port: Obj<'a, Port<'a>>,
    #[serde(borrow)]
    lease_info: Obj<'a, Lease<'a>>,
    #[serde(borrow)]
    status: Loose<'a>,
    #[serde(borrow)]
    action_type: Loose<'a>,
}

/// `{"$": 8080, "@enabled": "true"}`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Port<'a> {
    #[serde(rename = "$", borrow)]
    value: Loose<'a>,
    #[serde(rename = "@enabled", borrow)]
    enabled: Loose<'a>,
}

/// `leaseInfo`: only `serviceUpTimestamp` is read.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Lease<'a> {
    #[serde(borrow)]
    service_up_timestamp: Loose<'a>,
}

/// What `application` and `applications` gave, each into a batch of its own: its instances, or why
/// it is unusable.
type Got = Option<(Batch, Result<(), &'static str>)>;

/// The reply's `application` (`/apps/{APP}`) and `applications` (`/apps`).
struct Top<'r, R> {
    records: &'r mut R,
    app: Got,
    apps: Got,
    /// `applications.apps__hashcode`, when it is a string (read by [`delta`]).
    hash: Option<String>,
}

impl<'de: 'a, 'a, F: FnMut(&Inst<'a>, &Meta<'a>) -> Rec> Side<'de> for Top<'_, Records<'_, 'a, Inst<'a>, F>> {
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        let ok = match key {
            "application" if self.app.is_none() => app(&mut *self.records, map)?,
            "applications" if self.apps.is_none() => apps(&mut *self.records, map, &mut self.hash)?,
            "application" => return Err(de::Error::duplicate_field("application")),
            "applications" => return Err(de::Error::duplicate_field("applications")),
            _ => return Ok(false),
        };
        let got = Some((self.records.take_batch(), ok));
        if key == "application" {
            self.app = got;
        } else {
            self.apps = got;
        }
        Ok(true)
    }
}

/// An application (the next value of `map`): its instances into `records`; `Err` with why it is
/// unusable.
fn app<'de, E: Each<'de>, A: MapAccess<'de>>(
    records: &mut E,
    map: &mut A,
) -> Result<Result<(), &'static str>, A::Error> {
    let mut list = Under::new("instance", true, records);
    let app = map.next_value_seed(With::<IgnoredAny, _>::new(&mut list))?;
    Ok(app_ok(&app, list.kind.as_ref()))
}

/// Whether an application is usable: an object whose `instance` is a list, one object, or nothing.
fn app_ok(app: &Obj<'_, IgnoredAny>, instance: Option<&Loose<'_>>) -> Result<(), &'static str> {
    match (app, instance) {
        (Obj::Not(_), _) => Err("\"application\" is not an object"),
        (_, None | Some(Loose::Null | Loose::Array | Loose::Object)) => Ok(()),
        (_, Some(_)) => Err("\"instance\" is neither a list nor an object"),
    }
}

/// `/apps`' `applications` (the next value of `map`): the instances of all its applications into
/// `records`, its `apps__hashcode` into `hash`; `Err` with why it is unusable (the first unusable
/// application's reason).
fn apps<'de, E: Each<'de>, A: MapAccess<'de>>(
    records: &mut E,
    map: &mut A,
    hash: &mut Option<String>,
) -> Result<Result<(), &'static str>, A::Error> {
    let mut each = Apps { records, ok: Ok(()) };
    let list = Under::new("application", true, &mut each);
    let code = Field::new("apps__hashcode", PhantomData::<Loose<'de>>);
    let mut side = (list, code);
    let doc = map.next_value_seed(With::<IgnoredAny, _>::new(&mut side))?;
    let (list, code) = side;
    *hash = code.value.and_then(|v| v.as_str().map(str::to_string));
    Ok(match (doc, list.kind) {
        (Obj::Not(_), _) => Err("\"applications\" is not an object"),
        (_, None | Some(Loose::Null)) => Ok(()),
        (_, Some(Loose::Array | Loose::Object)) => each.ok,
        (_, Some(_)) => Err("\"application\" is neither a list nor an object"),
    })
}

/// The applications of `/apps`, each read as it comes.
struct Apps<'r, E> {
    records: &'r mut E,
    /// The first unusable application's reason.
    ok: Result<(), &'static str>,
}

impl<'de, E: Each<'de>> Each<'de> for Apps<'_, E> {
    fn element<D: Deserializer<'de>>(&mut self, d: D) -> Result<(), D::Error> {
        let mut list = Under::new("instance", true, &mut *self.records);
        let app = With::<IgnoredAny, _>::new(&mut list).deserialize(d)?;
        let ok = app_ok(&app, list.kind.as_ref());
        self.ok = std::mem::replace(&mut self.ok, Ok(())).and(ok);
        Ok(())
    }
}

fn instance(i: &Inst<'_>, meta: &Meta<'_>, build: &BuildOptions) -> Rec {
    let Some(ip) = i.ip_addr.as_str() else {
        return Rec::Skipped;
    };
    let port = port_info(&i.port, true);
    let secure = port_info(&i.secure_port, false);
    let Some(chosen) = (if !port.enabled && secure.enabled { secure.value } else { port.value }) else {
        return Rec::Skipped;
    };
    let Some(addr) = format_addr(ip, chosen) else {
        return host_name_addr(ip, chosen).map_or(Rec::Skipped, Rec::Unroutable);
    };
    let start = i.lease_info.get().and_then(|l| int_of(&l.service_up_timestamp));
    let state = state_of(&i.status);
    let (inst, b) = build.build(addr, None, start, state, &meta.kept[..]);
    Rec::Kept(inst, meta.bad + b)
}

struct PortInfo {
    value: Option<i64>,
    enabled: bool,
}

/// Reads `{"$": 8080, "@enabled": "true"}`, or a bare number or numeric string, which is an
/// enabled port.
fn port_info(port: &Obj<'_, Port<'_>>, default_enabled: bool) -> PortInfo {
    match port {
        Obj::Obj(p) => {
            let enabled = match &p.enabled {
                Loose::Str(s) => s.trim().eq_ignore_ascii_case("true"),
                Loose::Bool(b) => *b,
                _ => default_enabled,
            };
            PortInfo { value: int_of(&p.value), enabled }
        }
        Obj::Not(v @ (Loose::Uint(_) | Loose::Int(_) | Loose::Float(_) | Loose::Str(_))) => {
            PortInfo { value: int_of(v), enabled: true }
        }
        Obj::Not(_) => PortInfo { value: None, enabled: default_enabled },
    }
}

/// An integer given as a JSON integer or a decimal string.
fn int_of(v: &Loose<'_>) -> Option<i64> {
    match v {
        Loose::Str(s) => s.trim().parse().ok(),
        n => n.as_i64(),
    }
}

/// `status` as Eureka's `InstanceStatus.toEnum` reads it (the name, case-insensitive; anything
/// else is `UNKNOWN`): `UP` serving, `OUT_OF_SERVICE` draining, everything else down.
fn state_of(status: &Loose<'_>) -> State {
    match status.as_str() {
        Some(s) if s.eq_ignore_ascii_case("UP") => State::Serving,
        Some(s) if s.eq_ignore_ascii_case("OUT_OF_SERVICE") => State::Draining,
        _ => State::Down,
    }
}

impl Adapter for Eureka {
    /// Each heartbeat (every 30 s by default) moves an instance's `lastRenewalTimestamp`.
    fn volatile_keys(&self) -> &'static [&'static str] {
        &["\"lastRenewalTimestamp\":"]
    }

    fn request(&self, _s: &Session, _c: &Cursor, q: &ServiceQuery, _now_ms: i64) -> (Call, HttpRequest) {
        let path = format!("{}/apps/{}", self.prefix, encode(&q.service));
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
        // no instances (see the module doc); an oversize 404 is still refused
        if resp.status == Some(404) && resp.body_size.max(resp.body.len()) <= self.endpoint.max_body_bytes {
            return Reply::Members(Parsed::default());
        }
        list_reply(resp, &self.endpoint, |body| parse(body, &q.build))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Client;

    const APP: &[u8] = include_bytes!("../../../shared/fixtures/registry/eureka-app-captured.json");
    const APPS: &[u8] = include_bytes!("../../../shared/fixtures/registry/eureka-apps-captured.json");
    const FULL: &[u8] = include_bytes!("../../../shared/fixtures/registry/eureka-apps-full-steeltoe.json");
    const DELTA: &[u8] = include_bytes!("../../../shared/fixtures/registry/eureka-apps-delta-steeltoe.json");
    const OVERRIDDEN: &[u8] =
        include_bytes!("../../../shared/fixtures/registry/eureka-instance-overridden-steeltoe.json");

    fn p(body: &str) -> Result<Parsed, RegistryError> {
        parse(body.as_bytes(), &BuildOptions::default())
    }

    /// One instance record inside an `/apps/{APP}` reply.
    fn one(rec: &str) -> Parsed {
        p(&format!(r#"{{"application":{{"name":"A","instance":[{rec}]}}}}"#)).unwrap()
    }

    #[test]
    fn fixture_app_captured() {
        let r = parse(APP, &BuildOptions::default()).unwrap();
        assert_eq!((r.instances.len(), r.skipped, r.malformed_meta), (1, 0, 0));
        let i = &r.instances[0];
        // both ports enabled: the plain one is used
        assert_eq!(
            (i.addr.as_str(), i.state, i.start_ms, i.weight, i.warmup_ms),
            ("10.8.30.55:8080", State::Serving, Some(1_606_976_860_846), 100, 600_000)
        );
    }

    #[test]
    fn fixture_apps_captured() {
        let r = parse(APPS, &BuildOptions::default()).unwrap();
        assert_eq!((r.instances.len(), r.skipped), (1, 0));
        let i = &r.instances[0];
        assert_eq!(
            (i.addr.as_str(), i.state, i.start_ms, i.weight),
            ("10.8.30.55:9002", State::Serving, Some(1_606_972_240_279), 100)
        );
    }

    #[test]
    fn fixture_apps_full_steeltoe() {
        let r = parse(FULL, &BuildOptions::default()).unwrap();
        assert_eq!((r.instances.len(), r.skipped, r.malformed_meta), (1, 0, 0));
        let i = &r.instances[0];
        assert_eq!(
            (i.addr.as_str(), i.state, i.start_ms, i.weight),
            ("192.168.56.1:8080", State::Serving, Some(1_457_714_988_223), 100)
        );
        // {"@class":"java.util.Collections$EmptyMap"} is an empty map
        assert_eq!(r.malformed_meta, 0);
    }

    #[test]
    fn fixture_apps_delta_steeltoe() {
        // legacy "overriddenstatus": "UNKNOWN" does not override "UP"
        let r = parse(DELTA, &BuildOptions::default()).unwrap();
        assert_eq!(r.instances.len(), 1);
        let i = &r.instances[0];
        assert_eq!(
            (i.addr.as_str(), i.state, i.start_ms),
            ("192.168.56.1:8080", State::Serving, Some(1_457_714_988_223))
        );
        // a DELETED delta record is no member
        let deleted = std::str::from_utf8(DELTA).unwrap().replace("\"MODIFIED\"", "\"DELETED\"");
        let r = p(&deleted).unwrap();
        assert_eq!((r.instances.len(), r.skipped), (0, 0));
    }

    #[test]
    fn fixture_instance_overridden_steeltoe() {
        // a bare InstanceInfo (test-authored): status UP, overriddenStatus OUT_OF_SERVICE, legacy
        // overriddenstatus DOWN. `status` is what the server computed: UP, whatever the overrides say
        let v: Value = serde_json::from_slice(OVERRIDDEN).unwrap();
        let (i, bad) = parse_instance_value(&v, &BuildOptions::default()).unwrap();
        assert_eq!(
            (i.addr.as_str(), i.state, i.start_ms, i.weight, bad),
            ("192.168.56.1:8080", State::Serving, Some(1_457_714_988_223), 100, 0)
        );
        // wrapped as an /apps/{APP} reply, and as a single object instead of a list
        let wrapped =
            format!(r#"{{"application":{{"name":"FOO","instance":{}}}}}"#, std::str::from_utf8(OVERRIDDEN).unwrap());
        let r = p(&wrapped).unwrap();
        assert_eq!(r.instances.len(), 1);
        assert_eq!(r.instances[0].state, State::Serving);
    }

    /// What a Eureka server serves after its own status rules ran, and what lossless makes of it.
    /// Sources (Netflix/eureka, eureka-core): `AbstractInstanceRegistry.register` / `renew` set
    /// `status` from the rule chain; `statusUpdate` sets `status` and `overriddenStatus` together;
    /// `deleteStatusOverride` sets `overriddenStatus` UNKNOWN and `status` to the given one; the
    /// cases are those of `InstanceRegistryTest`.
    #[test]
    fn server_status_rules() {
        let rows: &[(&str, &str, State, &str)] = &[
            // testStatusOverrideSetAndRemoval: PUT .../status?value=OUT_OF_SERVICE
            ("OUT_OF_SERVICE", "OUT_OF_SERVICE", State::Draining, "statusUpdate"),
            // ... then DELETE .../status?value=DOWN
            ("DOWN", "UNKNOWN", State::Down, "deleteStatusOverride"),
            // testStatusOverrideStartingStatus: DownOrStartingRule, the instance's STARTING wins
            ("STARTING", "OUT_OF_SERVICE", State::Down, "DownOrStartingRule"),
            // the instance reports DOWN (health check) while an operator override says UP
            ("DOWN", "UP", State::Down, "DownOrStartingRule"),
            // OverrideExistsRule: the override wins over the instance's UP, and status says so
            ("OUT_OF_SERVICE", "OUT_OF_SERVICE", State::Draining, "OverrideExistsRule"),
            ("UP", "UP", State::Serving, "OverrideExistsRule"),
            // testStatusOverrideWithExistingLeaseOutOfService: LeaseExistsRule keeps OUT_OF_SERVICE
            ("OUT_OF_SERVICE", "UNKNOWN", State::Draining, "LeaseExistsRule"),
            ("UP", "UNKNOWN", State::Serving, "AlwaysMatchInstanceStatusRule"),
        ];
        for (status, overridden, want, rule) in rows {
            let rec = format!(
                r#"{{"ipAddr":"10.0.0.1","port":{{"$":80}},"status":"{status}","overriddenStatus":"{overridden}","overriddenstatus":"{overridden}"}}"#
            );
            assert_eq!(one(&rec).instances[0].state, *want, "{status}/{overridden} ({rule})");
        }
    }

    #[test]
    fn statuses() {
        let st = |extra: &str| {
            let r = one(&format!(r#"{{"ipAddr":"10.0.0.1","port":{{"$":80,"@enabled":"true"}}{extra}}}"#));
            assert_eq!(r.instances.len(), 1, "{extra}");
            r.instances[0].state
        };
        assert_eq!(st(r#","status":"UP""#), State::Serving);
        assert_eq!(st(r#","status":"up""#), State::Serving);
        assert_eq!(st(r#","status":"OUT_OF_SERVICE""#), State::Draining);
        assert_eq!(st(r#","status":"DOWN""#), State::Down);
        assert_eq!(st(r#","status":"STARTING""#), State::Down);
        assert_eq!(st(r#","status":"UNKNOWN""#), State::Down);
        assert_eq!(st(r#","status":"SLEEPING""#), State::Down);
        assert_eq!(st(r#","status":7"#), State::Down);
        assert_eq!(st(""), State::Down);
        // InstanceStatus.toEnum does not trim
        assert_eq!(st(r#","status":" UP""#), State::Down);
        // status is authoritative: the overridden status is never read
        assert_eq!(st(r#","status":"DOWN","overriddenStatus":"UP""#), State::Down);
        assert_eq!(st(r#","status":"UP","overriddenStatus":"OUT_OF_SERVICE""#), State::Serving);
        assert_eq!(st(r#","status":"OUT_OF_SERVICE","overriddenStatus":"UP""#), State::Draining);
        assert_eq!(st(r#","status":"STARTING","overriddenstatus":"UP""#), State::Down);
        // metadata drain flag (inside build)
        assert_eq!(st(r#","status":"UP","metadata":{"lossless.drain":"true"}"#), State::Draining);
    }

    #[test]
    fn ports() {
        let addr = |ports: &str| {
            let r = one(&format!(r#"{{"ipAddr":"10.0.0.1","status":"UP"{ports}}}"#));
            r.instances.first().map(|i| i.addr.clone())
        };
        assert_eq!(
            addr(r#","port":{"$":80,"@enabled":"true"},"securePort":{"$":443,"@enabled":"true"}"#).as_deref(),
            Some("10.0.0.1:80")
        );
        assert_eq!(
            addr(r#","port":{"$":80,"@enabled":"false"},"securePort":{"$":443,"@enabled":"true"}"#).as_deref(),
            Some("10.0.0.1:443")
        );
        assert_eq!(
            addr(r#","port":{"$":80,"@enabled":false},"securePort":{"$":"443","@enabled":true}"#).as_deref(),
            Some("10.0.0.1:443")
        );
        // both disabled: the plain port, as Eureka clients do
        assert_eq!(
            addr(r#","port":{"$":80,"@enabled":"false"},"securePort":{"$":443,"@enabled":"false"}"#).as_deref(),
            Some("10.0.0.1:80")
        );
        // secure port without @enabled is disabled (Eureka's default)
        assert_eq!(
            addr(r#","port":{"$":80,"@enabled":"false"},"securePort":{"$":443}"#).as_deref(),
            Some("10.0.0.1:80")
        );
        // "$" as a string, no @enabled, a bare number
        assert_eq!(addr(r#","port":{"$":"8080"}"#).as_deref(), Some("10.0.0.1:8080"));
        assert_eq!(addr(r#","port":8081"#).as_deref(), Some("10.0.0.1:8081"));
        // only a secure port
        assert_eq!(
            addr(r#","port":{"@enabled":"false"},"securePort":{"$":443,"@enabled":"true"}"#).as_deref(),
            Some("10.0.0.1:443")
        );
        // IPv6
        let r = one(r#"{"ipAddr":"fe80::1","status":"UP","port":{"$":80}}"#);
        assert_eq!(r.instances[0].addr, "[fe80::1]:80");
    }

    #[test]
    fn native_start_and_metadata() {
        let r = one(
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80},"leaseInfo":{"serviceUpTimestamp":"1700000000000"},"metadata":{"weight":"7","warmup":"30000","zone":"a"}}"#,
        );
        let i = &r.instances[0];
        assert_eq!((i.start_ms, i.weight, i.warmup_ms), (Some(1_700_000_000_000), 7, 30_000));
        // metadata timestamp wins over serviceUpTimestamp; 0 means never up
        let r = one(
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80},"leaseInfo":{"serviceUpTimestamp":5},"metadata":{"timestamp":"9"}}"#,
        );
        assert_eq!(r.instances[0].start_ms, Some(9));
        let r =
            one(r#"{"ipAddr":"10.0.0.1","status":"STARTING","port":{"$":80},"leaseInfo":{"serviceUpTimestamp":0}}"#);
        assert_eq!((r.instances[0].start_ms, r.instances[0].state), (None, State::Down));
        // malformed metadata values are counted, the instance is kept
        let r = one(
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80},"metadata":{"weight":"heavy","nested":{"a":1}}}"#,
        );
        assert_eq!((r.instances.len(), r.malformed_meta, r.instances[0].weight), (1, 2, 100));
    }

    #[test]
    fn shapes() {
        // single application object with a single instance object
        let r = p(r#"{"application":{"name":"A","instance":{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80}}}}"#)
            .unwrap();
        assert_eq!(r.instances.len(), 1);
        // no instances
        assert_eq!(p(r#"{"application":{"name":"A"}}"#).unwrap(), Parsed::default());
        assert_eq!(p(r#"{"application":{"name":"A","instance":[]}}"#).unwrap(), Parsed::default());
        // /apps: several applications, one as a bare object, none at all
        let r = p(r#"{"applications":{"application":[
            {"name":"A","instance":[{"ipAddr":"10.0.0.2","status":"UP","port":{"$":80}}]},
            {"name":"B","instance":{"ipAddr":"10.0.0.1","status":"DOWN","port":{"$":80}}}]}}"#)
        .unwrap();
        assert_eq!(
            r.instances.iter().map(|i| (i.addr.as_str(), i.state)).collect::<Vec<_>>(),
            [("10.0.0.1:80", State::Down), ("10.0.0.2:80", State::Serving)]
        );
        let r = p(r#"{"applications":{"application":{"name":"A","instance":{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80}}}}}"#).unwrap();
        assert_eq!(r.instances.len(), 1);
        assert_eq!(
            p(r#"{"applications":{"versions__delta":"1","apps__hashcode":"","application":[]}}"#).unwrap(),
            Parsed::default()
        );
        assert_eq!(p(r#"{"applications":{"versions__delta":"1"}}"#).unwrap(), Parsed::default());
        // duplicates merge: the most restrictive state wins
        let r = one(
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80}},{"ipAddr":"10.0.0.1","status":"OUT_OF_SERVICE","port":{"$":80}}"#,
        );
        assert_eq!((r.instances.len(), r.instances[0].state), (1, State::Draining));
    }

    #[test]
    fn hostile() {
        let parse_err = |body: &str| matches!(p(body), Err(RegistryError::Parse(_)));
        for body in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"application":null}"#,
            r#"{"application":[]}"#,
            r#"{"application":"USERS"}"#,
            r#"{"application":{"instance":"x"}}"#,
            r#"{"application":{"instance":7}}"#,
            r#"{"applications":[]}"#,
            r#"{"applications":{"application":"x"}}"#,
            r#"{"applications":{"application":[1]}}"#,
            r#"{"application":{"name":"A","instance":[{"ipAddr":"10.0.0.1","port":{"$":80}}"#,
            "{\"application\":{\"name\":\"A\"}}trailing",
            "\u{feff}{\"application\":{}}",
            // out of f64 range: serde_json refuses the whole document
            r#"{"application":{"name":"A","instance":[{"ipAddr":"10.0.0.1","port":{"$":1e400}}]}}"#,
        ] {
            assert!(parse_err(body), "{body:?}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_err(&format!(r#"{{"application":{{"instance":{deep}}}}}"#)));
        let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert!(parse_err(&format!(
            r#"{{"application":{{"instance":[{{"ipAddr":"10.0.0.1","port":{{"$":80}},"metadata":{deep_obj}}}]}}}}"#
        )));

        // malformed instances are skipped and counted; each line is one skip
        let bad = [
            r#"{"status":"UP","port":{"$":80}}"#,                                // no ipAddr
            r#"{"ipAddr":"","status":"UP","port":{"$":80}}"#,                    // empty ipAddr
            r#"{"ipAddr":"my-host.local","status":"UP","port":{"$":80}}"#,       // host name (unroutable)
            r#"{"ipAddr":7,"status":"UP","port":{"$":80}}"#,                     // wrong type
            r#"{"ipAddr":"10.0.0.1","status":"UP"}"#,                            // no port
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"@enabled":"true"}}"#, // port object without "$"
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":-1}}"#,            // negative
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":0}}"#,             // zero
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":65536}}"#,         // too big
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":1e300}}"#,         // huge float
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":18446744073709551615}}"#,
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80.5}}"#, // not an integer
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":"eighty"}}"#, // not a number
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":[80]}"#,       // array
            r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80,"@enabled":"false"},"securePort":{"$":-5,"@enabled":"true"}}"#,
            r#"null"#,
            r#""10.0.0.1:80""#,
            r#"[]"#,
        ];
        let good = r#"{"ipAddr":"10.0.0.9","status":"UP","port":{"$":80},"metadata":{"région":"€ü✓","@class":"x","emoji":"🦀"}}"#;
        let r = one(&format!("{},{good}", bad.join(",")));
        assert_eq!((r.skipped as usize, r.instances.len()), (bad.len(), 1));
        assert_eq!(r.unroutable, ["my-host.local:80"]);
        assert_eq!(r.malformed_meta, 0, "keys that are not read are not looked at");
        // metadata of the wrong type: kept without it, counted
        let r = one(r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80},"metadata":["a"]}"#);
        assert_eq!((r.instances.len(), r.malformed_meta), (1, 1));
        // leaseInfo of the wrong type: no start time
        let r = one(r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80},"leaseInfo":[1]}"#);
        assert_eq!(r.instances[0].start_ms, None);
        let r = one(r#"{"ipAddr":"10.0.0.1","status":"UP","port":{"$":80},"leaseInfo":{"serviceUpTimestamp":-5}}"#);
        assert_eq!(r.instances[0].start_ms, None);
        // invalid UTF-8
        assert!(matches!(
            parse(b"{\"application\":{\"name\":\"\xff\"}}", &BuildOptions::default()),
            Err(RegistryError::Parse(_))
        ));
    }

    /// The last instance of an application is gone: the 404 that follows is an empty list, held by
    /// the keep-last-good guard for `confirm_refreshes` replies and then applied (no instances).
    #[test]
    fn last_instance_gone_goes_through_the_empty_list_guard() {
        use crate::membership::{Decision, Guard, Hold, Tracker};
        let mut a = adapter(1 << 20);
        let q = ServiceQuery { service: "MYMICROSERVICE2".into(), ..Default::default() };
        let prev = parse(APP, &BuildOptions::default()).unwrap().instances;
        let (mut t, g) = (Tracker::default(), Guard::default());
        let mut decide = |a: &mut Client<Eureka>| {
            let h = [];
            match a.on_reply(
                &q,
                Call::List,
                &HttpResponse { status: Some(404), headers: &h, body: b"", body_size: 0 },
                0,
            ) {
                Reply::Members(p) => t.decide(&prev, p, &g),
                r => panic!("{r:?}"),
            }
        };
        for _ in 1..g.confirm_refreshes {
            assert_eq!(decide(&mut a), Decision::Keep(Hold::Empty));
        }
        assert_eq!(decide(&mut a), Decision::Apply { members: vec![], protected: false });
    }

    fn adapter(cap: usize) -> Client<Eureka> {
        Client::new(Eureka::new(
            Endpoint { authority: "eureka:8761".into(), timeout_ms: 700, max_body_bytes: cap },
            "/eureka".into(),
        ))
    }

    #[test]
    fn request_shape() {
        let mut a = adapter(1 << 20);
        let q = ServiceQuery { service: "USERS".into(), ..Default::default() };
        let (call, req) = a.request(&q, 0);
        assert_eq!(call, Call::List);
        let h: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            h,
            [
                (":method", "GET"),
                (":path", "/eureka/apps/USERS"),
                (":authority", "eureka:8761"),
                ("accept", "application/json")
            ]
        );
        assert_eq!((req.body, req.timeout_ms), (None, 700));
        // the name is sent as configured (no upper-casing), URL-encoded
        let q = ServiceQuery { service: "my app/é?x=1".into(), ..Default::default() };
        assert_eq!(a.request(&q, 0).1.header(":path"), Some("/eureka/apps/my%20app%2F%C3%A9%3Fx%3D1"));
        // an empty prefix (config trims the trailing '/')
        a.adapter.prefix = String::new();
        let q = ServiceQuery { service: "users".into(), ..Default::default() };
        assert_eq!(a.request(&q, 0).1.header(":path"), Some("/apps/users"));
    }

    #[test]
    fn replies() {
        let mut a = adapter(1 << 20);
        let q = ServiceQuery { service: "MYMICROSERVICE2".into(), ..Default::default() };
        let h = [];
        let resp = |status, body: &'static [u8]| HttpResponse { status, headers: &h, body, body_size: body.len() };
        match a.on_reply(&q, Call::List, &resp(Some(200), APP), 0) {
            Reply::Members(p) => assert_eq!(p.instances[0].addr, "10.8.30.55:8080"),
            r => panic!("{r:?}"),
        }
        assert_eq!(a.on_reply(&q, Call::List, &resp(None, b""), 0), Reply::Error(RegistryError::Transport));
        // an application without instances: ApplicationResource.getApplication answers 404
        // (Response.status(Status.NOT_FOUND).build(), no body) — an empty list, not a failure
        assert_eq!(a.on_reply(&q, Call::List, &resp(Some(404), b""), 0), Reply::Members(Parsed::default()));
        assert_eq!(
            a.on_reply(&q, Call::List, &resp(Some(404), b"{\"error\":\"Not Found\"}"), 0),
            Reply::Members(Parsed::default())
        );
        let big404 = vec![b' '; 2 << 20];
        let r = HttpResponse { status: Some(404), headers: &h, body: &big404, body_size: big404.len() };
        assert!(matches!(a.on_reply(&q, Call::List, &r, 0), Reply::Error(RegistryError::TooLarge { .. })));
        // other errors stay errors
        assert_eq!(
            a.on_reply(&q, Call::List, &resp(Some(503), b""), 0),
            Reply::Error(RegistryError::Status(503, String::new()))
        );
        assert_eq!(
            a.on_reply(&q, Call::List, &resp(Some(403), b""), 0),
            Reply::Error(RegistryError::Status(403, String::new()))
        );
        assert!(matches!(
            a.on_reply(&q, Call::List, &resp(Some(200), b"<applications/>"), 0),
            Reply::Error(RegistryError::Parse(_))
        ));
        // 10 MB body against a 1 MB cap: refused before parsing
        let big = vec![b' '; 10 << 20];
        let r = HttpResponse { status: Some(200), headers: &h, body: &big, body_size: big.len() };
        assert_eq!(
            a.on_reply(&q, Call::List, &r, 0),
            Reply::Error(RegistryError::TooLarge { size: 10 << 20, cap: 1 << 20 })
        );
        // the host reported a size larger than what the glue fetched
        let r = HttpResponse { status: Some(200), headers: &h, body: b"", body_size: 10 << 20 };
        assert_eq!(
            a.on_reply(&q, Call::List, &r, 0),
            Reply::Error(RegistryError::TooLarge { size: 10 << 20, cap: 1 << 20 })
        );
        assert!(!a.long_poll());
    }
}
