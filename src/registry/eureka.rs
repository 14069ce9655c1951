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

use serde_json::Value;

use super::json::{field, loose_of, read, records, Batch, Ctx, Field, Loose, Reader, Rec, Res, Sink, Slots, To, Tok};
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
}

impl Eureka {
    pub fn new(endpoint: Endpoint, prefix: String) -> Self {
        Eureka { endpoint, prefix }
    }
}

/// Parses the body of `GET {prefix}/apps/{APP}` (or `GET {prefix}/apps`, all instances). Only the
/// metadata keys `build` reads are kept.
pub fn parse(body: &[u8], build: &BuildOptions) -> Result<Parsed, RegistryError> {
    let keys = meta_keys(build);
    let cx = Ctx { keys: &keys, tag: None };
    let mut slots = Slots::default();
    // delta bodies mark removed instances DELETED: they are not members (and not malformed)
    let each = |rec: &mut Slots<'_>| {
        if rec.v[ACTION].as_str() == Some("DELETED") {
            Rec::Ignored
        } else {
            instance(rec, build)
        }
    };
    // what `application` and `applications` gave: their instances, or why they are unusable
    let mut app: Option<(Batch, Result<(), &str>)> = None;
    let mut apps: Option<(Batch, Result<(), &str>)> = None;
    read(body, |r| {
        let t = r.token()?;
        if t != Tok::Obj {
            return loose_of(r, t).map(drop);
        }
        while let Some(k) = r.key()? {
            let one = k == "application";
            if !one && k != "applications" {
                r.skip()?;
                continue;
            }
            let mut batch = Batch::default();
            let mut s = Sink { table: INST, slots: &mut slots, batch: &mut batch, each: &each };
            let ok = if one { app_of(r, cx, &mut s)? } else { apps_of(r, cx, &mut s)? };
            *(if one { &mut app } else { &mut apps }) = Some((batch, ok));
        }
        Ok(())
    })?;
    let Some((batch, ok)) = app.or(apps) else {
        return Err(RegistryError::Parse("missing \"application\"".into()));
    };
    ok.map_err(|m| RegistryError::Parse(m.into()))?;
    Ok(batch.finish())
}

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
    let keys = meta_keys(build);
    let text = serde_json::to_vec(rec).ok()?;
    let out = std::cell::Cell::new(None);
    let each = |s: &mut Slots<'_>| {
        if let Rec::Kept(i, bad) = instance(s, build) {
            out.set(Some((i, bad)));
        }
        Rec::Ignored
    };
    let (mut slots, mut batch) = (Slots::default(), Batch::default());
    let mut s = Sink { table: INST, slots: &mut slots, batch: &mut batch, each: &each };
    read(&text, |r| records(r, Ctx { keys: &keys, tag: None }, true, &mut s)).ok()?;
    out.into_inner()
}

// The slots of one `InstanceInfo`.
const IP: usize = 0;
const PORT: usize = 1;
const PORT_VALUE: usize = 2;
const PORT_ENABLED: usize = 3;
const SECURE: usize = 4;
const SECURE_VALUE: usize = 5;
const SECURE_ENABLED: usize = 6;
const LEASE: usize = 7;
const UP: usize = 8;
const STATUS: usize = 9;
const ACTION: usize = 10;

/// One `InstanceInfo`: the fields that are read (of `leaseInfo`, only `serviceUpTimestamp`).
static INST: &[Field] = &[
    field("ipAddr", To::Val(IP)),
    field("port", To::Obj(PORT, &[field("$", To::Val(PORT_VALUE)), field("@enabled", To::Val(PORT_ENABLED))], SECURE)),
    field(
        "securePort",
        To::Obj(SECURE, &[field("$", To::Val(SECURE_VALUE)), field("@enabled", To::Val(SECURE_ENABLED))], LEASE),
    ),
    field("leaseInfo", To::Obj(LEASE, &[field("serviceUpTimestamp", To::Val(UP))], STATUS)),
    field("status", To::Val(STATUS)),
    field("actionType", To::Val(ACTION)),
    field("metadata", To::Meta),
];

/// An application (the next value): its instances into `s`; `Err` with why it is unusable.
fn app_of<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, s: &mut Sink<'_, 'a>) -> Res<Result<(), &'static str>> {
    let t = r.token()?;
    app_from(r, cx, t, s)
}

/// An application, `t` its first token. A repeated `instance` replaces the instances before it.
fn app_from<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, t: Tok<'a>, s: &mut Sink<'_, 'a>) -> Res<Result<(), &'static str>> {
    if t != Tok::Obj {
        loose_of(r, t)?;
        return Ok(Err("\"application\" is not an object"));
    }
    let mark = s.batch.mark();
    let mut kind = Loose::Absent;
    while let Some(k) = r.key()? {
        if k == "instance" {
            s.batch.truncate(mark);
            kind = records(r, cx, true, s)?;
        } else {
            r.skip()?;
        }
    }
    Ok(match kind {
        Loose::Absent | Loose::Null | Loose::Array | Loose::Object => Ok(()),
        _ => Err("\"instance\" is neither a list nor an object"),
    })
}

/// `/apps`' `applications` (the next value): the instances of all its applications into `s`;
/// `Err` with why it is unusable (the first unusable application's reason).
fn apps_of<'a>(r: &mut Reader<'a>, cx: Ctx<'_>, s: &mut Sink<'_, 'a>) -> Res<Result<(), &'static str>> {
    let t = r.token()?;
    if t != Tok::Obj {
        loose_of(r, t)?;
        return Ok(Err("\"applications\" is not an object"));
    }
    let mut res = Ok(());
    while let Some(k) = r.key()? {
        if k != "application" {
            r.skip()?;
            continue;
        }
        *s.batch = Batch::default();
        res = match r.token()? {
            Tok::Arr => {
                let mut first = Ok(());
                while r.elem()? {
                    let t = r.token()?;
                    let e = app_from(r, cx, t, s)?;
                    first = first.and(e);
                }
                first
            }
            Tok::Obj => app_from(r, cx, Tok::Obj, s)?,
            Tok::Null => Ok(()),
            t => {
                loose_of(r, t)?;
                Err("\"application\" is neither a list nor an object")
            }
        };
    }
    Ok(res)
}

fn instance(rec: &mut Slots<'_>, build: &BuildOptions) -> Rec {
    let v = &rec.v;
    let Some(ip) = v[IP].as_str() else {
        return Rec::Skipped;
    };
    let port = port_info(&v[PORT], &v[PORT_VALUE], &v[PORT_ENABLED], true);
    let secure = port_info(&v[SECURE], &v[SECURE_VALUE], &v[SECURE_ENABLED], false);
    let Some(chosen) = (if !port.enabled && secure.enabled { secure.value } else { port.value }) else {
        return Rec::Skipped;
    };
    let Some(addr) = format_addr(ip, chosen) else {
        return host_name_addr(ip, chosen).map_or(Rec::Skipped, Rec::Unroutable);
    };
    let start = int_of(&v[UP]);
    let state = state_of(&v[STATUS]);
    let (inst, b) = build.build(addr, None, start, state, &rec.meta.kept[..]);
    Rec::Kept(inst, rec.meta.bad + b)
}

struct PortInfo {
    value: Option<i64>,
    enabled: bool,
}

/// Reads `{"$": 8080, "@enabled": "true"}` (`kind` the port's own: an object, or a bare number or
/// numeric string, which is an enabled port).
fn port_info(kind: &Loose<'_>, value: &Loose<'_>, enabled: &Loose<'_>, default_enabled: bool) -> PortInfo {
    match kind {
        Loose::Object => {
            let enabled = match enabled {
                Loose::Str(s) => s.trim().eq_ignore_ascii_case("true"),
                Loose::Bool(b) => *b,
                _ => default_enabled,
            };
            PortInfo { value: int_of(value), enabled }
        }
        v @ (Loose::Uint(_) | Loose::Int(_) | Loose::Float(_) | Loose::Str(_)) => {
            PortInfo { value: int_of(v), enabled: true }
        }
        _ => PortInfo { value: None, enabled: default_enabled },
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
