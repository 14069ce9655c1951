//! Nacos adapter for Nacos 1, 2 and 3 (with optional username/password auth).
//!
//! List: `GET /nacos/v1/ns/instance/list` (a bare `{hosts: [...]}` object),
//! `GET /nacos/v2/ns/instance/list` (an envelope `{code, message, data: {hosts: [...]}}`), both
//! with `healthyOnly=false` (rnacos defaults it to true and would hide unhealthy instances), or
//! Nacos 3's client API `GET /nacos/v3/client/ns/instance/list` (an envelope whose `data` is the
//! array of instances; it never filters by health: naming InstanceOpenApiController.list).
//!
//! `api: auto` (the default) works on all three without the user knowing which: it tries v3, then
//! v2, then v1, and keeps the first that answers a list. An API the server does not have answers
//! HTTP 410 (Nacos 3.0/3.1 for v2) or a 404 that is not a Nacos envelope (a path the server does not
//! know; a Nacos "not found" error comes in its `{code, message, data}` envelope). Such an answer
//! later, on the API that worked (the server was upgraded), starts the detection again.
//!
//! Each host gives `ip`, `port`, `weight` (a float, 1.0 = Dubbo 100), `healthy`, `enabled` and
//! `metadata` (Dubbo providers carry `timestamp` and `warmup` there). `enabled=false` is a
//! deliberate drain and wins over `healthy=false` (so a protect threshold never revives it);
//! `healthy=false` is down. Note that Nacos drops disabled instances from the list altogether and
//! reports unhealthy ones as healthy when the protect threshold is reached.
//!
//! Auth: with credentials, the first request is a login, `POST /nacos/v1/auth/login` (v1, v2) or
//! `POST /nacos/v3/auth/user/login` (v3); the token goes into every list as `accessToken=` (and,
//! for v3, the `accessToken` header). It is renewed ahead of expiry (within 10 % of its TTL or 60 s,
//! whichever is larger, but never more than half the TTL, so a fresh token is always used at
//! least once) and dropped after a 401/403, so the next request logs in again.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::de::{read, read_with, Field, List, Loose, Meta, Obj, Rec, Records, Under, With};
use super::{
    check_common, encode, request_headers, snippet, Adapter, Call, Cursor, Endpoint, HttpRequest, HttpResponse, Parsed,
    RegistryError, Reply, ServiceQuery, Session, Token,
};
use crate::instance::{format_addr, scale_weight, BuildOptions, Instance, State};

/// Path of the login endpoint of Nacos 1.x and 2.x (and rnacos).
pub const LOGIN_PATH: &str = "/nacos/v1/auth/login";
/// Path of Nacos 3's login endpoint (the v1 one is gone from Nacos 3.2).
pub const LOGIN_PATH_V3: &str = "/nacos/v3/auth/user/login";
/// TTL assumed when a login reply has no usable `tokenTtl` (seconds).
const DEFAULT_TTL_S: i64 = 300;
/// A token is renewed at least this long before it expires (unless the TTL is shorter than twice
/// this).
const MIN_MARGIN_MS: i64 = 60_000;
/// After a failed renewal while the old token is still valid, lists go on with the old token and
/// the next login is tried after this long.
const RENEW_RETRY_MS: i64 = 10_000;

/// Which Nacos open API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V2,
    /// Nacos 3's client API.
    V3,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::V1 => "v1",
            Api::V2 => "v2",
            Api::V3 => "v3",
        }
    }

    /// The next older API `auto` tries after this one.
    fn older(self) -> Option<Api> {
        match self {
            Api::V3 => Some(Api::V2),
            Api::V2 => Some(Api::V1),
            Api::V1 => None,
        }
    }
}

/// Username and password for `POST /nacos/v1/auth/login`.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: \"***\" }}", self.username)
    }
}

/// A Nacos registry: where it is, which API, which credentials. Immutable; the token lives in the
/// poller's [`Session`].
#[derive(Debug, Clone)]
pub struct Nacos {
    pub endpoint: Endpoint,
    /// The API to call; `None`: `auto` (detected, kept in the [`Session`]).
    pub api: Option<Api>,
    pub auth: Option<Credentials>,
}

impl Nacos {
    pub fn new(endpoint: Endpoint, api: Option<Api>, auth: Option<Credentials>) -> Self {
        Nacos { endpoint, api, auth }
    }

    /// The API the next request uses: the configured one, or the one `auto` tries or found.
    pub fn api(&self, s: &Session) -> Api {
        self.api.or(s.api).unwrap_or(Api::V3)
    }

    /// `auto` only: the server does not have the API just tried (HTTP 410, or a 404 that is not a
    /// Nacos envelope). Moves to the next older API, or, if the API had worked before, starts
    /// over from the newest; returns what to log, `None` when every API was tried.
    fn api_missing(&self, s: &mut Session, resp: &HttpResponse<'_>) -> Option<String> {
        if self.api.is_some() || !missing_api(resp) {
            return None;
        }
        let tried = self.api(s);
        let next = if s.api_confirmed { Some(Api::V3) } else { tried.older() };
        s.api = next;
        s.api_confirmed = false;
        s.token = None;
        let status = resp.status.unwrap_or(0);
        next.map(|n| format!("Nacos answered HTTP {status} to its {} API; trying {}", tried.name(), n.name()))
    }

    /// True when the next request has to be a login.
    fn needs_login(&self, s: &Session, now_ms: i64) -> bool {
        if self.auth.is_none() {
            return false;
        }
        match &s.token {
            None => true,
            Some(t) if now_ms >= t.expires_ms => true,
            Some(t) if now_ms >= t.renew_ms => now_ms >= s.renew_after_ms,
            Some(_) => false,
        }
    }

    fn headers(&self, method: &str, path: String) -> Vec<(String, String)> {
        request_headers(&self.endpoint, method, path)
    }

    fn login_request(&self, c: &Credentials, api: Api) -> HttpRequest {
        let path = if api == Api::V3 { LOGIN_PATH_V3 } else { LOGIN_PATH };
        let mut headers = self.headers("POST", path.to_string());
        headers.push(("content-type".to_string(), "application/x-www-form-urlencoded".to_string()));
        let body = format!("username={}&password={}", encode(&c.username), encode(&c.password));
        HttpRequest { headers, body: Some(body.into_bytes()), timeout_ms: self.endpoint.timeout_ms }
    }

    /// The `:path` of the `api` list request for `q` (with `token` as `accessToken` when given).
    pub fn list_path(&self, api: Api, q: &ServiceQuery, token: Option<&str>) -> String {
        let (prefix, cluster_key) = match api {
            Api::V1 => ("/nacos/v1/ns/instance/list", "clusters"),
            Api::V2 => ("/nacos/v2/ns/instance/list", "clusterName"),
            Api::V3 => ("/nacos/v3/client/ns/instance/list", "clusterName"),
        };
        let mut p = format!("{prefix}?serviceName={}", encode(&q.service));
        push_param(&mut p, "groupName", q.group.as_deref());
        push_param(&mut p, "namespaceId", q.namespace.as_deref());
        let clusters: Vec<&str> = q.clusters.iter().map(String::as_str).filter(|c| !c.is_empty()).collect();
        push_param(&mut p, cluster_key, Some(clusters.join(",").as_str()));
        if api != Api::V3 {
            p.push_str("&healthyOnly=false");
        }
        push_param(&mut p, "accessToken", token);
        p
    }

    /// Everything secret in play (password, raw and encoded; the token): kept out of error
    /// messages.
    fn secrets(&self, s: &Session) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = &self.auth {
            out.push(c.password.clone());
            out.push(encode(&c.password));
        }
        if let Some(t) = &s.token {
            out.push(t.value.clone());
        }
        out.retain(|x| !x.is_empty());
        out
    }

    fn check(&self, s: &Session, resp: &HttpResponse<'_>) -> Result<(), RegistryError> {
        let secrets = self.secrets(s);
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        check_common(resp, &self.endpoint, &refs)
    }

    fn on_login(&self, s: &mut Session, resp: &HttpResponse<'_>, now_ms: i64) -> Reply {
        if let Some(why) = self.api_missing(s, resp) {
            return Reply::Again(why);
        }
        let err = match self.check(s, resp) {
            Ok(()) => match parse_login(resp.body) {
                Ok((value, ttl_s)) => {
                    let ttl_ms = ttl_s.saturating_mul(1000);
                    let margin = (ttl_ms / 10).max(MIN_MARGIN_MS).min(ttl_ms / 2);
                    let expires_ms = now_ms.saturating_add(ttl_ms);
                    s.token = Some(Token { value, expires_ms, renew_ms: expires_ms.saturating_sub(margin) });
                    s.renew_after_ms = i64::MIN;
                    return Reply::LoggedIn;
                }
                Err(m) => RegistryError::Auth(format!("login reply: {m}")),
            },
            Err(RegistryError::Status(st, body)) => RegistryError::Auth(format!("login answered HTTP {st}: {body}")),
            Err(e) => e,
        };
        // Keep a still valid token and retry the renewal a little later; without one, the next
        // request logs in again.
        s.token = s.token.take().filter(|t| now_ms < t.expires_ms);
        s.renew_after_ms = now_ms.saturating_add(RENEW_RETRY_MS);
        Reply::Error(err)
    }

    fn on_list(&self, s: &mut Session, q: &ServiceQuery, resp: &HttpResponse<'_>) -> Reply {
        let api = self.api(s);
        if let Some(why) = self.api_missing(s, resp) {
            return Reply::Again(why);
        }
        match self.check(s, resp) {
            Ok(()) => {}
            Err(RegistryError::Status(st @ (401 | 403), body)) if self.auth.is_some() => {
                let msg = format!("list answered HTTP {st}: {body}");
                s.token = None;
                s.renew_after_ms = i64::MIN;
                return Reply::Error(RegistryError::Auth(msg));
            }
            Err(e) => return Reply::Error(e),
        }
        match parse_list(resp.body, api, &q.build) {
            Ok(p) => {
                s.api_confirmed = true;
                Reply::Members(p)
            }
            Err(e) => Reply::Error(e),
        }
    }
}

/// The token to send with a list, if any (an expired one is never sent).
fn live_token(s: &Session, now_ms: i64) -> Option<&str> {
    s.token.as_ref().filter(|t| now_ms < t.expires_ms).map(|t| t.value.as_str())
}

/// Appends `&key=value` (value encoded) when `value` is set and not empty.
pub(crate) fn push_param(p: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        p.push('&');
        p.push_str(key);
        p.push('=');
        p.push_str(&encode(v));
    }
}

/// A reply that says the server does not have the API asked for: HTTP 410 (Nacos 3.0/3.1 for
/// the v2 API), or a 404 that is not a Nacos envelope (a path the server does not know; Nacos'
/// own "not found" errors come as `{code, message, data}`).
fn missing_api(resp: &HttpResponse<'_>) -> bool {
    /// What tells a Nacos envelope: an integer `code`.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Code<'a> {
        #[serde(borrow)]
        code: Loose<'a>,
    }
    match resp.status {
        Some(410) => true,
        Some(404) => !read::<Obj<Code>>(resp.body).is_ok_and(|o| o.get().is_some_and(|c| c.code.as_i64().is_some())),
        _ => false,
    }
}

/// A login reply: `{accessToken, tokenTtl}`, at the top or in a `data` envelope.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Login<'a> {
    #[serde(borrow)]
    access_token: Loose<'a>,
    #[serde(borrow)]
    token_ttl: Loose<'a>,
    #[serde(borrow)]
    data: Obj<'a, LoginData<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LoginData<'a> {
    #[serde(borrow)]
    access_token: Loose<'a>,
    #[serde(borrow)]
    token_ttl: Loose<'a>,
}

/// Reads `{accessToken, tokenTtl}` (at the top, or in a `data` envelope); a missing or unusable
/// TTL is taken as [`DEFAULT_TTL_S`].
fn parse_login(body: &[u8]) -> Result<(String, i64), String> {
    let reply = read::<Obj<Login>>(body).map_err(|e| match e {
        RegistryError::Parse(m) => format!("not JSON ({m})"),
        e => e.to_string(),
    })?;
    let (token, ttl) = match (reply.get(), reply.get().and_then(|l| l.data.get())) {
        (Some(l), Some(d)) if l.access_token == Loose::Absent => (&d.access_token, &d.token_ttl),
        (Some(l), _) => (&l.access_token, &l.token_ttl),
        (None, _) => return Err("no accessToken".to_string()),
    };
    let token = match token.as_str() {
        Some(t) if !t.is_empty() && !t.chars().any(char::is_control) => t.to_string(),
        _ => return Err("no accessToken".to_string()),
    };
    let ttl = ttl
        .as_i64()
        .or_else(|| ttl.as_f64().filter(|f| f.is_finite() && *f < 1e15).map(|f| f as i64))
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TTL_S);
    Ok((token, ttl))
}

/// One host record: the fields that are read (`metadata` is read by [`Records`]).
#[derive(Default, Deserialize)]
#[serde(default)]
struct Host<'a> {
    #[serde(borrow)]
    ip: Loose<'a>,
    #[serde(borrow)]
    port: Loose<'a>,
    #[serde(borrow)]
    weight: Loose<'a>,
    #[serde(borrow)]
    healthy: Loose<'a>,
    #[serde(borrow)]
    enabled: Loose<'a>,
}

/// The `{hosts, reachProtectionThreshold}` object (v1, and the v2 envelope's `data`; `hosts` is
/// read by [`Under`]).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct HostList<'a> {
    #[serde(borrow)]
    reach_protection_threshold: Loose<'a>,
}

/// The v2/v3 envelope `{code, message, data}` (`data` is read by a [`Field`]).
#[derive(Default, Deserialize)]
#[serde(default)]
struct Envelope<'a> {
    #[serde(borrow)]
    code: Loose<'a>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

/// Parses an instance list reply (v1 object, v2 envelope around it, or v3 envelope around the
/// array of instances). Malformed hosts are skipped and counted; a body that is not the expected
/// shape is an error. `reachProtectionThreshold` (v1, v2) becomes [`Parsed::registry_protected`].
/// Only the metadata keys `build` reads are kept.
pub fn parse_list(body: &[u8], api: Api, build: &BuildOptions) -> Result<Parsed, RegistryError> {
    let keys = build.keys.names();
    let mut records = Records::new(&keys, "metadata", |h: &Host<'_>, m: &Meta<'_>| Rec::of(host(h, m, build)));
    let protected = match api {
        Api::V1 => {
            let mut hosts = Under::new("hosts", false, &mut records);
            let doc = read_with(body, With::<HostList, _>::new(&mut hosts))?;
            protect_flag(doc, hosts.kind)?
        }
        Api::V2 => {
            let mut hosts = Under::new("hosts", false, &mut records);
            let mut data = Field::new("data", With::<HostList, _>::new(&mut hosts));
            let envelope = read_with(body, With::<Envelope, _>::new(&mut data))?;
            let list = open(envelope, data.value)?;
            protect_flag(list, hosts.kind)?
        }
        Api::V3 => {
            let mut data = Field::new("data", List { each: &mut records, one: false });
            let envelope = read_with(body, With::<Envelope, _>::new(&mut data))?;
            match open(envelope, data.value)? {
                Loose::Array | Loose::Null => false,
                v => return Err(RegistryError::Parse(format!("envelope data is {}, expected an array", v.kind()))),
            }
        }
    };
    let mut parsed = records.batch.finish();
    parsed.registry_protected = protected;
    Ok(parsed)
}

/// Whether the registry applied its protect threshold to a `{hosts, reachProtectionThreshold}`
/// object (`hosts`: the kind of its hosts, `None` when it has none); an error when there is no
/// usable list.
fn protect_flag(doc: Obj<'_, HostList<'_>>, hosts: Option<Loose<'_>>) -> Result<bool, RegistryError> {
    let list = match doc {
        Obj::Obj(l) => l,
        Obj::Not(v) => return Err(RegistryError::Parse(format!("expected an object with hosts, got {}", v.kind()))),
    };
    match hosts {
        Some(Loose::Array | Loose::Null) => Ok(list.reach_protection_threshold.as_bool().unwrap_or(false)),
        Some(other) => Err(RegistryError::Parse(format!("hosts is {}, expected an array", other.kind()))),
        None => Err(RegistryError::Parse("no hosts field".to_string())),
    }
}

/// The `data` of a `code: 0` envelope, an [`RegistryError::Envelope`] otherwise.
fn open<D>(envelope: Obj<'_, Envelope<'_>>, data: Option<D>) -> Result<D, RegistryError> {
    let e = match envelope {
        Obj::Obj(e) => e,
        Obj::Not(v) => return Err(RegistryError::Parse(format!("expected an envelope object, got {}", v.kind()))),
    };
    let code = match &e.code {
        Loose::Absent => return Err(RegistryError::Parse("envelope has no code".to_string())),
        c => c
            .as_i64()
            .ok_or_else(|| RegistryError::Parse(format!("envelope code is {}, expected an integer", c.kind())))?,
    };
    if code != 0 {
        // a string as its text, anything else as its JSON
        let message = match e.message.map(RawValue::get) {
            None => String::new(),
            Some(raw) => match serde_json::from_str::<String>(raw) {
                Ok(s) => snippet(s.as_bytes(), &[]),
                Err(_) => snippet(raw.as_bytes(), &[]),
            },
        };
        return Err(RegistryError::Envelope { code, message });
    }
    data.ok_or_else(|| RegistryError::Parse("envelope has no data".to_string()))
}

/// A boolean flag: absent or null means `true` (Nacos' default); anything but a boolean is malformed.
fn flag(v: &Loose<'_>) -> Option<bool> {
    if v.is_none() {
        Some(true)
    } else {
        v.as_bool()
    }
}

/// One host record with its metadata; `None` when malformed.
fn host(h: &Host<'_>, meta: &Meta<'_>, build: &BuildOptions) -> Option<(Instance, u32)> {
    let ip = h.ip.as_str()?;
    let port = h.port.as_i64()?;
    let addr = format_addr(ip, port)?;
    let w = &h.weight;
    let weight = if w.is_none() { None } else { Some(scale_weight(w.as_f64()?, build.weight_scale)?) };
    let healthy = flag(&h.healthy)?;
    let enabled = flag(&h.enabled)?;
    // A deliberate drain wins over ill health (the protect threshold may revive `Down`, never
    // `Draining`).
    let state = if !enabled {
        State::Draining
    } else if !healthy {
        State::Down
    } else {
        State::Serving
    };
    let (inst, bad) = build.build(addr, weight, None, state, &meta.kept[..]);
    Some((inst, meta.bad + bad))
}

impl Adapter for Nacos {
    /// Nacos stamps every list with the time of the call (`lastRefTime`, `checksum`).
    fn volatile_keys(&self) -> &'static [&'static str] {
        &["\"lastRefTime\":", "\"checksum\":"]
    }

    fn request(&self, s: &Session, _c: &Cursor, q: &ServiceQuery, now_ms: i64) -> (Call, HttpRequest) {
        let api = self.api(s);
        if self.needs_login(s, now_ms) {
            if let Some(c) = &self.auth {
                return (Call::Login, self.login_request(c, api));
            }
        }
        let token = live_token(s, now_ms);
        let mut headers = self.headers("GET", self.list_path(api, q, token));
        if let (Api::V3, Some(t)) = (api, token) {
            headers.push(("accesstoken".to_string(), t.to_string()));
        }
        (Call::List, HttpRequest { headers, body: None, timeout_ms: self.endpoint.timeout_ms })
    }

    fn on_reply(
        &self,
        s: &mut Session,
        _c: &mut Cursor,
        q: &ServiceQuery,
        call: Call,
        resp: &HttpResponse<'_>,
        now_ms: i64,
    ) -> Reply {
        match call {
            Call::Login => self.on_login(s, resp, now_ms),
            Call::List => self.on_list(s, q, resp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Client;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../../shared/fixtures/registry/", $name, ".json")).as_slice()
        };
    }

    const T0: i64 = 1_800_000_000_000;

    fn v1(body: &[u8]) -> Result<Parsed, RegistryError> {
        parse_list(body, Api::V1, &BuildOptions::default())
    }
    fn v2(body: &[u8]) -> Result<Parsed, RegistryError> {
        parse_list(body, Api::V2, &BuildOptions::default())
    }
    fn ep() -> Endpoint {
        Endpoint { authority: "nacos.local:8848".into(), timeout_ms: 1500, max_body_bytes: 8 << 20 }
    }
    fn creds() -> Credentials {
        Credentials { username: "nacos user".into(), password: "p&ss=w0rd!".into() }
    }
    fn adapter(api: Api, auth: bool) -> Client<Nacos> {
        Client::new(Nacos::new(ep(), Some(api), auth.then(creds)))
    }
    fn q(service: &str) -> ServiceQuery {
        ServiceQuery { service: service.into(), ..Default::default() }
    }
    fn resp(status: Option<u16>, body: &[u8]) -> HttpResponse<'_> {
        HttpResponse { status, headers: &[], body, body_size: body.len() }
    }
    /// (addr, weight, start_ms, warmup_ms, state)
    fn row(i: &Instance) -> (&str, i32, Option<i64>, i64, State) {
        (i.addr.as_str(), i.weight, i.start_ms, i.warmup_ms, i.state)
    }
    fn host_json(extra: &str) -> String {
        format!(r#"{{"hosts":[{{"ip":"10.0.0.1","port":80{extra}}}]}}"#)
    }

    // ---- fixtures -------------------------------------------------------------------------

    #[test]
    fn fixture_nacos_v1_list() {
        let p = v1(fixture!("nacos-v1-instance-list")).unwrap();
        assert_eq!((p.skipped, p.malformed_meta), (0, 0));
        assert_eq!(p.instances.len(), 1);
        // weight 1 -> 100, healthy:false -> down, empty metadata -> defaults
        assert_eq!(row(&p.instances[0]), ("10.10.10.10:8888", 100, None, 600_000, State::Down));
        // the v1 body is not a v2 envelope
        assert_eq!(v2(fixture!("nacos-v1-instance-list")), Err(RegistryError::Parse("envelope has no code".into())));
    }

    #[test]
    fn fixture_nacos_v2_list() {
        let p = v2(fixture!("nacos-v2-instance-list")).unwrap();
        assert_eq!(p.instances.len(), 1);
        let i = &p.instances[0];
        assert_eq!(row(i), ("127.0.0.1:8080", 100, None, 600_000, State::Serving));
        // the envelope read as v1 has no hosts at the top
        assert_eq!(v1(fixture!("nacos-v2-instance-list")), Err(RegistryError::Parse("no hosts field".into())));
    }

    #[test]
    fn fixture_nacos_v3_list() {
        let body = include_bytes!("../../tests/fixtures/registry/nacos-v3-instance-list-docs.json").as_slice();
        let p = parse_list(body, Api::V3, &BuildOptions::default()).unwrap();
        assert_eq!((p.instances.len(), p.skipped, p.registry_protected), (1, 0, false));
        assert_eq!(row(&p.instances[0]), ("127.0.0.1:3306", 100, None, 600_000, State::Serving));
        // the v3 data is an array, not {hosts}: the other shapes are refused in v3 and v3 in them
        assert!(matches!(
            parse_list(fixture!("nacos-v2-instance-list"), Api::V3, &BuildOptions::default()),
            Err(RegistryError::Parse(_))
        ));
        assert!(matches!(v2(body), Err(RegistryError::Parse(_))));
        // an unknown service: success with an empty array (Nacos' own integration test)
        let empty =
            parse_list(br#"{"code":0,"message":"success","data":[]}"#, Api::V3, &BuildOptions::default()).unwrap();
        assert!(empty.instances.is_empty());
        let err = parse_list(
            br#"{"code":10000,"message":"parameter missing","data":"serviceName"}"#,
            Api::V3,
            &BuildOptions::default(),
        );
        assert_eq!(err, Err(RegistryError::Envelope { code: 10000, message: "parameter missing".into() }));
    }

    #[test]
    fn registry_protection_is_read() {
        let p =
            v1(br#"{"hosts":[{"ip":"10.0.0.1","port":80,"healthy":true}],"reachProtectionThreshold":true}"#).unwrap();
        assert!(p.registry_protected);
        let p = v2(br#"{"code":0,"message":"success","data":{"hosts":[],"reachProtectionThreshold":true}}"#).unwrap();
        assert!(p.registry_protected);
        assert!(!v1(fixture!("rnacos-instance-list-captured")).unwrap().registry_protected);
    }

    /// `api: auto` on the servers as they answer: Nacos 3.2 (v3 only), Nacos 3.0/3.1 (v2 is 410
    /// Gone), Nacos 2 and rnacos (v3 is an unknown path: 404 without a Nacos envelope; rnacos 0.8.8
    /// has no v2 either). A Nacos "not found" in its envelope is an answer, not a missing API.
    #[test]
    fn auto_detects_the_api_and_remembers_it() {
        let mut a = Client::new(Nacos::new(ep(), None, None));
        let path = |a: &Client<Nacos>| a.request(&q("s"), T0).1.header(":path").unwrap().to_string();
        assert!(path(&a).starts_with("/nacos/v3/client/ns/instance/list?serviceName=s"));
        assert!(!path(&a).contains("healthyOnly"), "v3 ignores it");
        // rnacos: 404 with an empty body, twice, then v1 answers
        assert!(matches!(a.on_reply(&q("s"), Call::List, &resp(Some(404), b""), T0), Reply::Again(_)));
        assert!(path(&a).starts_with("/nacos/v2/ns/instance/list"));
        let spring_404 = br#"{"timestamp":"2026-11-30T12:00:00.000+00:00","status":404,"error":"Not Found","path":"/nacos/v2/ns/instance/list"}"#;
        assert!(matches!(a.on_reply(&q("s"), Call::List, &resp(Some(404), spring_404), T0), Reply::Again(_)));
        assert!(path(&a).starts_with("/nacos/v1/ns/instance/list"));
        assert!(matches!(
            a.on_reply(&q("s"), Call::List, &resp(Some(200), fixture!("rnacos-instance-list-captured")), T0),
            Reply::Members(_)
        ));
        assert!(path(&a).starts_with("/nacos/v1/"), "remembered");
        // an error that is not a missing API changes nothing
        assert!(matches!(a.on_reply(&q("s"), Call::List, &resp(Some(500), b"boom"), T0), Reply::Error(_)));
        let not_found = br#"{"code":21008,"message":"service not exist","data":null}"#;
        assert!(matches!(a.on_reply(&q("s"), Call::List, &resp(Some(404), not_found), T0), Reply::Error(_)));
        assert!(path(&a).starts_with("/nacos/v1/"));
        // the server was upgraded (v1 gone): start over from the newest
        assert!(matches!(a.on_reply(&q("s"), Call::List, &resp(Some(410), b""), T0), Reply::Again(_)));
        assert!(path(&a).starts_with("/nacos/v3/"));
        // Nacos 3.0/3.1 with v3: found at once
        let v3 = include_bytes!("../../tests/fixtures/registry/nacos-v3-instance-list-docs.json").as_slice();
        assert!(matches!(a.on_reply(&q("s"), Call::List, &resp(Some(200), v3), T0), Reply::Members(_)));
        // nothing answers: after v1 an error, and the next round starts at v3 again (no tight loop)
        let mut a = Client::new(Nacos::new(ep(), None, None));
        for _ in 0..2 {
            assert!(matches!(a.on_reply(&q("s"), Call::List, &resp(Some(404), b""), T0), Reply::Again(_)));
        }
        assert!(matches!(
            a.on_reply(&q("s"), Call::List, &resp(Some(404), b""), T0),
            Reply::Error(RegistryError::Status(404, _))
        ));
        assert!(path(&a).starts_with("/nacos/v3/"));
        // a configured API is never switched
        let mut fixed = adapter(Api::V2, false);
        assert!(matches!(
            fixed.on_reply(&q("s"), Call::List, &resp(Some(410), b""), T0),
            Reply::Error(RegistryError::Status(410, _))
        ));
    }

    #[test]
    fn auto_logs_in_where_the_api_is() {
        let mut a = Client::new(Nacos::new(ep(), None, Some(creds())));
        let (call, req) = a.request(&q("s"), T0);
        assert_eq!((call, req.header(":path")), (Call::Login, Some(LOGIN_PATH_V3)));
        // Nacos 3 answers its login with the token at the top
        assert_eq!(
            a.on_reply(
                &q("s"),
                Call::Login,
                &resp(Some(200), br#"{"accessToken":"t3","tokenTtl":18000,"globalAdmin":true}"#),
                T0
            ),
            Reply::LoggedIn
        );
        let (call, req) = a.request(&q("s"), T0);
        assert_eq!(call, Call::List);
        assert!(req.header(":path").unwrap().ends_with("&accessToken=t3"));
        assert_eq!(req.header("accesstoken"), Some("t3"));
        // Nacos 2: no v3 login; the v1 login is tried with the v2 API
        let mut a = Client::new(Nacos::new(ep(), None, Some(creds())));
        assert!(matches!(a.on_reply(&q("s"), Call::Login, &resp(Some(404), b""), T0), Reply::Again(_)));
        let (call, req) = a.request(&q("s"), T0);
        assert_eq!((call, req.header(":path")), (Call::Login, Some(LOGIN_PATH)));
        // a token wrapped in an envelope is read too
        assert_eq!(
            a.on_reply(
                &q("s"),
                Call::Login,
                &resp(Some(200), br#"{"code":0,"data":{"accessToken":"t2","tokenTtl":60}}"#),
                T0
            ),
            Reply::LoggedIn
        );
        assert_eq!(a.session.token.as_ref().unwrap().value, "t2");
    }

    #[test]
    fn fixture_rnacos_list() {
        let p = v1(fixture!("rnacos-instance-list-captured")).unwrap();
        assert_eq!((p.skipped, p.malformed_meta), (0, 0));
        assert_eq!(p.instances.len(), 2);
        // weight 2.0 -> 200; Dubbo timestamp / warmup from metadata
        assert_eq!(row(&p.instances[0]), ("10.0.0.1:8080", 200, Some(1_700_000_000_000), 60_000, State::Serving));
        assert_eq!(row(&p.instances[1]), ("10.0.0.2:8080", 100, None, 600_000, State::Serving));
    }

    #[test]
    fn fixture_rnacos_after_disable_is_absence() {
        let p = v1(fixture!("rnacos-instance-list-after-disable-captured")).unwrap();
        assert_eq!(p.instances.len(), 1);
        assert_eq!(row(&p.instances[0]), ("10.0.0.2:8080", 100, None, 600_000, State::Serving));
    }

    #[test]
    fn fixture_rnacos_unhealthy() {
        let p = v1(fixture!("rnacos-instance-list-unhealthy-captured")).unwrap();
        assert_eq!(p.instances.len(), 2);
        assert_eq!(row(&p.instances[0]), ("10.0.0.1:8080", 500, Some(1_700_000_000_000), 60_000, State::Down));
        assert_eq!(row(&p.instances[1]), ("10.0.0.2:8080", 100, None, 600_000, State::Serving));
    }

    #[test]
    fn fixture_rnacos_protect_threshold_reports_healthy() {
        // The server lies under its protect threshold: the list says healthy.
        let p = v1(fixture!("rnacos-instance-list-protect-threshold-captured")).unwrap();
        assert_eq!(p.instances.len(), 1);
        assert_eq!(row(&p.instances[0]), ("10.0.0.9:9090", 100, None, 600_000, State::Serving));
    }

    #[test]
    fn fixture_beat_is_not_a_list() {
        assert_eq!(v1(fixture!("rnacos-beat-captured")), Err(RegistryError::Parse("no hosts field".into())));
    }

    #[test]
    fn fixture_logins() {
        for (body, token, ttl_s) in [
            (
                fixture!("nacos-auth-login"),
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJuYWNvcyIsImV4cCI6MTYwNTYyOTE2Nn0.2TogGhhr11_vLEjqKko1HJHUJEmsPuCxkur-CfNojDo",
                18_000i64,
            ),
            (fixture!("rnacos-login-captured"), "c377fe23ad5e4a99b7cf5f800d483c23d027d7191a324850a327539276bd78fa", 3_600),
        ] {
            let mut a = adapter(Api::V1, true);
            assert_eq!(a.on_reply(&q("s"), Call::Login, &resp(Some(200), body), T0), Reply::LoggedIn);
            let t = a.session.token.clone().unwrap();
            assert_eq!(t.value, token);
            assert_eq!(t.expires_ms, T0 + ttl_s * 1000);
            // 10 % of 18000 s (1800 s) > 60 s; 10 % of 3600 s is 360 s > 60 s
            assert_eq!(t.renew_ms, T0 + ttl_s * 1000 - ttl_s * 100);
            let (call, req) = a.request(&q("s"), T0 + 1);
            assert_eq!(call, Call::List);
            assert!(req.header(":path").unwrap().ends_with(&format!("&healthyOnly=false&accessToken={token}")));
        }
    }

    #[test]
    fn fixture_rnacos_403() {
        let body = fixture!("rnacos-403-captured");
        // without auth: a plain status error
        let mut a = adapter(Api::V1, false);
        match a.on_reply(&q("s"), Call::List, &resp(Some(403), body), T0) {
            Reply::Error(RegistryError::Status(403, s)) => assert!(s.contains("unknown user!"), "{s}"),
            other => panic!("{other:?}"),
        }
        // with auth: an auth error that drops the token
        let mut a = adapter(Api::V1, true);
        a.on_reply(&q("s"), Call::Login, &resp(Some(200), fixture!("rnacos-login-captured")), T0);
        match a.on_reply(&q("s"), Call::List, &resp(Some(403), body), T0 + 1) {
            Reply::Error(RegistryError::Auth(s)) => {
                assert!(s.contains("HTTP 403") && s.contains("unknown user!"), "{s}")
            }
            other => panic!("{other:?}"),
        }
        assert!(a.session.token.is_none());
        assert_eq!(a.request(&q("s"), T0 + 2).0, Call::Login);
    }

    // ---- hostile input --------------------------------------------------------------------

    #[derive(Debug)]
    enum Want {
        Parse,
        Hosts { kept: usize, skipped: u32 },
        Envelope(i64, &'static str),
    }

    #[test]
    fn hostile_table() {
        let deep = format!(r#"{{"hosts":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let deep_meta = format!(
            r#"{{"hosts":[{{"ip":"1.1.1.1","port":1,"metadata":{}1{}}}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let cases: Vec<(&str, Api, String, Want)> = vec![
            ("empty body", Api::V1, String::new(), Want::Parse),
            ("whitespace", Api::V1, " \n".into(), Want::Parse),
            ("null", Api::V1, "null".into(), Want::Parse),
            ("null v2", Api::V2, "null".into(), Want::Parse),
            ("array", Api::V1, "[]".into(), Want::Parse),
            ("string", Api::V1, r#""hosts""#.into(), Want::Parse),
            ("empty object", Api::V1, "{}".into(), Want::Parse),
            ("hosts null", Api::V1, r#"{"hosts":null}"#.into(), Want::Hosts { kept: 0, skipped: 0 }),
            ("hosts empty", Api::V1, r#"{"hosts":[]}"#.into(), Want::Hosts { kept: 0, skipped: 0 }),
            ("hosts object", Api::V1, r#"{"hosts":{"ip":"1.1.1.1","port":1}}"#.into(), Want::Parse),
            ("hosts string", Api::V1, r#"{"hosts":"1.1.1.1:1"}"#.into(), Want::Parse),
            ("host not object", Api::V1, r#"{"hosts":[1,"x",null,[]]}"#.into(), Want::Hosts { kept: 0, skipped: 4 }),
            (
                "port as string",
                Api::V1,
                r#"{"hosts":[{"ip":"1.1.1.1","port":"80"}]}"#.into(),
                Want::Hosts { kept: 0, skipped: 1 },
            ),
            (
                "port float",
                Api::V1,
                r#"{"hosts":[{"ip":"1.1.1.1","port":80.5}]}"#.into(),
                Want::Hosts { kept: 0, skipped: 1 },
            ),
            ("port 0", Api::V1, host_json("").replace("80", "0"), Want::Hosts { kept: 0, skipped: 1 }),
            ("port negative", Api::V1, host_json("").replace("80", "-80"), Want::Hosts { kept: 0, skipped: 1 }),
            ("port 65536", Api::V1, host_json("").replace("80", "65536"), Want::Hosts { kept: 0, skipped: 1 }),
            ("port 65535", Api::V1, host_json("").replace("80", "65535"), Want::Hosts { kept: 1, skipped: 0 }),
            (
                "port huge",
                Api::V1,
                host_json("").replace("80", "99999999999999999999999"),
                Want::Hosts { kept: 0, skipped: 1 },
            ),
            ("port missing", Api::V1, r#"{"hosts":[{"ip":"1.1.1.1"}]}"#.into(), Want::Hosts { kept: 0, skipped: 1 }),
            ("ip missing", Api::V1, r#"{"hosts":[{"port":1}]}"#.into(), Want::Hosts { kept: 0, skipped: 1 }),
            (
                "ip hostname",
                Api::V1,
                r#"{"hosts":[{"ip":"db.local","port":1}]}"#.into(),
                Want::Hosts { kept: 0, skipped: 1 },
            ),
            (
                "ip number",
                Api::V1,
                r#"{"hosts":[{"ip":167772161,"port":1}]}"#.into(),
                Want::Hosts { kept: 0, skipped: 1 },
            ),
            (
                "ip with port",
                Api::V1,
                r#"{"hosts":[{"ip":"1.1.1.1:80","port":1}]}"#.into(),
                Want::Hosts { kept: 0, skipped: 1 },
            ),
            ("weight x", Api::V1, host_json(r#","weight":"x""#), Want::Hosts { kept: 0, skipped: 1 }),
            ("weight bool", Api::V1, host_json(r#","weight":true"#), Want::Hosts { kept: 0, skipped: 1 }),
            ("weight negative", Api::V1, host_json(r#","weight":-1.0"#), Want::Hosts { kept: 0, skipped: 1 }),
            // JSON cannot carry NaN/Infinity; serde_json refuses an overflowing literal outright
            ("weight 1e999", Api::V1, host_json(r#","weight":1e999"#), Want::Parse),
            ("weight NaN literal", Api::V1, host_json(r#","weight":NaN"#), Want::Parse),
            ("weight null", Api::V1, host_json(r#","weight":null"#), Want::Hosts { kept: 1, skipped: 0 }),
            ("healthy string", Api::V1, host_json(r#","healthy":"false""#), Want::Hosts { kept: 0, skipped: 1 }),
            ("enabled number", Api::V1, host_json(r#","enabled":0"#), Want::Hosts { kept: 0, skipped: 1 }),
            ("truncated", Api::V1, r#"{"hosts":[{"ip":"1.1.1.1","port":1}"#.into(), Want::Parse),
            ("truncated mid-string", Api::V1, r#"{"hosts":[{"ip":"1.1"#.into(), Want::Parse),
            ("trailing garbage", Api::V1, r#"{"hosts":[]} x"#.into(), Want::Parse),
            ("deep nesting", Api::V1, deep, Want::Parse),
            ("deep metadata", Api::V1, deep_meta, Want::Parse),
            ("invalid utf-8 escape", Api::V1, r#"{"hosts":[{"ip":"\udc00","port":1}]}"#.into(), Want::Parse),
            (
                "v2 error code",
                Api::V2,
                r#"{"code":20004,"message":"service not found: DEFAULT_GROUP@@x","data":null}"#.into(),
                Want::Envelope(20004, "service not found: DEFAULT_GROUP@@x"),
            ),
            ("v2 error no message", Api::V2, r#"{"code":-1}"#.into(), Want::Envelope(-1, "")),
            (
                "v2 error odd message",
                Api::V2,
                r#"{"code":500,"message":{"a":1}}"#.into(),
                Want::Envelope(500, r#"{"a":1}"#),
            ),
            ("v2 code string", Api::V2, r#"{"code":"0","data":{"hosts":[]}}"#.into(), Want::Parse),
            ("v2 no code", Api::V2, r#"{"data":{"hosts":[]}}"#.into(), Want::Parse),
            ("v2 data null", Api::V2, r#"{"code":0,"message":"success","data":null}"#.into(), Want::Parse),
            ("v2 data array", Api::V2, r#"{"code":0,"data":[]}"#.into(), Want::Parse),
            (
                "v2 hosts null",
                Api::V2,
                r#"{"code":0,"data":{"hosts":null}}"#.into(),
                Want::Hosts { kept: 0, skipped: 0 },
            ),
            (
                "v2 ok",
                Api::V2,
                r#"{"code":0,"data":{"hosts":[{"ip":"1.1.1.1","port":1},{"ip":"x","port":1}]}}"#.into(),
                Want::Hosts { kept: 1, skipped: 1 },
            ),
        ];
        for (name, api, body, want) in cases {
            let got = parse_list(body.as_bytes(), api, &BuildOptions::default());
            let ok = match (&want, &got) {
                (Want::Parse, Err(RegistryError::Parse(_))) => true,
                (Want::Hosts { kept, skipped }, Ok(p)) => p.instances.len() == *kept && p.skipped == *skipped,
                (Want::Envelope(c, m), Err(RegistryError::Envelope { code, message })) => c == code && m == message,
                _ => false,
            };
            assert!(ok, "{name}: wanted {want:?}, got {got:?}");
        }
    }

    #[test]
    fn weights_and_states() {
        let body = br#"{"hosts":[
            {"ip":"10.0.0.1","port":1,"weight":0.5},
            {"ip":"10.0.0.2","port":1,"weight":0},
            {"ip":"10.0.0.3","port":1,"weight":1e300},
            {"ip":"10.0.0.4","port":1,"weight":3,"metadata":{"weight":"7"}},
            {"ip":"10.0.0.5","port":1,"healthy":false,"enabled":false},
            {"ip":"10.0.0.6","port":1,"enabled":false},
            {"ip":"10.0.0.7","port":1,"metadata":{"lossless.drain":"true"}},
            {"ip":"10.0.0.8","port":1,"weight":-0.0}
        ]}"#;
        let p = v1(body).unwrap();
        let got: Vec<(i32, State)> = p.instances.iter().map(|i| (i.weight, i.state)).collect();
        assert_eq!(
            got,
            vec![
                (50, State::Serving),
                (0, State::Serving),
                (i32::MAX, State::Serving),
                (7, State::Serving),    // Dubbo's weight param wins over the Nacos weight
                (100, State::Draining), // a deliberate drain wins over ill health
                (100, State::Draining),
                (100, State::Draining),
                (0, State::Serving),
            ]
        );
        // a custom scale
        let b = BuildOptions { weight_scale: 1.0, ..Default::default() };
        assert_eq!(
            parse_list(br#"{"hosts":[{"ip":"1.1.1.1","port":1,"weight":2.6}]}"#, Api::V1, &b).unwrap().instances[0]
                .weight,
            3
        );
    }

    #[test]
    fn ipv6_duplicates_and_metadata() {
        let body = r#"{"hosts":[
            {"ip":"fe80::1","port":8080,"metadata":{"zone":"ü✓","n":1,"b":true,"nested":{"x":1},"arr":[1]}},
            {"ip":"[::1]","port":80},
            {"ip":"10.0.0.1","port":80,"weight":1},
            {"ip":" 10.0.0.1 ","port":80,"weight":3,"healthy":false},
            {"ip":"10.0.0.1","port":80,"metadata":"oops"}
        ]}"#;
        let p = v1(body.as_bytes()).unwrap();
        let addrs: Vec<&str> = p.instances.iter().map(|i| i.addr.as_str()).collect();
        assert_eq!(addrs, vec!["10.0.0.1:80", "[::1]:80", "[fe80::1]:8080"]);
        // duplicates merged: the worst state and the highest weight
        assert_eq!((p.instances[0].weight, p.instances[0].state), (300, State::Down));
        // two nested values and one non-object metadata
        assert_eq!((p.skipped, p.malformed_meta), (0, 3));
        // malformed time metadata is counted, the instance is kept with defaults
        let p = v1(br#"{"hosts":[{"ip":"1.1.1.1","port":1,"metadata":{"timestamp":"soon","warmup":"-"}}]}"#).unwrap();
        assert_eq!(row(&p.instances[0]), ("1.1.1.1:1", 100, None, 600_000, State::Serving));
        assert_eq!(p.malformed_meta, 2);
    }

    #[test]
    fn ten_megabytes_is_too_large() {
        let mut body = br#"{"hosts":["#.to_vec();
        while body.len() < 10_000_000 {
            body.extend_from_slice(br#"{"ip":"10.0.0.1","port":80},"#);
        }
        body.extend_from_slice(br#"{"ip":"10.0.0.1","port":80}]}"#);
        let size = body.len();
        assert_eq!(
            check_common(&resp(Some(200), &body), &ep(), &[]),
            Err(RegistryError::TooLarge { size, cap: 8 << 20 })
        );
        let mut a = adapter(Api::V1, false);
        assert_eq!(
            a.on_reply(&q("s"), Call::List, &resp(Some(200), &body), T0),
            Reply::Error(RegistryError::TooLarge { size, cap: 8 << 20 })
        );
        // the glue may report the size without fetching the body
        let small = HttpResponse { status: Some(200), headers: &[], body: b"", body_size: 10_000_000 };
        assert_eq!(
            a.on_reply(&q("s"), Call::List, &small, T0),
            Reply::Error(RegistryError::TooLarge { size: 10_000_000, cap: 8 << 20 })
        );
    }

    #[test]
    fn list_replies() {
        let mut a = adapter(Api::V1, false);
        let sq = q("s");
        assert_eq!(a.on_reply(&sq, Call::List, &resp(None, b""), T0), Reply::Error(RegistryError::Transport));
        assert_eq!(
            a.on_reply(&sq, Call::List, &resp(Some(500), b"boom"), T0),
            Reply::Error(RegistryError::Status(500, "boom".into()))
        );
        assert_eq!(
            a.on_reply(&sq, Call::List, &resp(Some(401), b"no"), T0),
            Reply::Error(RegistryError::Status(401, "no".into()))
        );
        match a.on_reply(&sq, Call::List, &resp(Some(200), fixture!("rnacos-instance-list-captured")), T0) {
            Reply::Members(p) => assert_eq!(p.instances.len(), 2),
            other => panic!("{other:?}"),
        }
        let mut a = adapter(Api::V2, false);
        let body = br#"{"code":20004,"message":"service not found","data":null}"#;
        assert_eq!(
            a.on_reply(&sq, Call::List, &resp(Some(200), body), T0),
            Reply::Error(RegistryError::Envelope { code: 20004, message: "service not found".into() })
        );
        match a.on_reply(&sq, Call::List, &resp(Some(200), fixture!("nacos-v2-instance-list")), T0) {
            Reply::Members(p) => assert_eq!(p.instances[0].addr, "127.0.0.1:8080"),
            other => panic!("{other:?}"),
        }
    }

    // ---- requests ---------------------------------------------------------------------------

    #[test]
    fn v1_request_shape() {
        let a = adapter(Api::V1, false);
        let (call, req) = a.request(&q("demo-svc"), T0);
        assert_eq!(call, Call::List);
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec![":method", ":path", ":authority", "accept"]);
        assert_eq!(req.header(":method"), Some("GET"));
        assert_eq!(req.header(":path"), Some("/nacos/v1/ns/instance/list?serviceName=demo-svc&healthyOnly=false"));
        assert_eq!(req.header(":authority"), Some("nacos.local:8848"));
        assert_eq!(req.header("accept"), Some("application/json"));
        assert_eq!((req.body, req.timeout_ms), (None, 1500));

        let full = ServiceQuery {
            service: "providers:com.acme.Orders:1.0.0:".into(),
            group: Some("DUBBO GROUP".into()),
            namespace: Some("prod/ns&x=1".into()),
            clusters: vec!["A".into(), String::new(), "b c".into()],
            ..Default::default()
        };
        let (_, req) = a.request(&full, T0);
        assert_eq!(
            req.header(":path"),
            Some("/nacos/v1/ns/instance/list?serviceName=providers%3Acom.acme.Orders%3A1.0.0%3A&groupName=DUBBO%20GROUP&namespaceId=prod%2Fns%26x%3D1&clusters=A%2Cb%20c&healthyOnly=false")
        );
        // empty optional values are left out
        let empty = ServiceQuery {
            service: "s".into(),
            group: Some(String::new()),
            namespace: Some(String::new()),
            clusters: vec![String::new()],
            ..Default::default()
        };
        assert_eq!(
            a.request(&empty, T0).1.header(":path"),
            Some("/nacos/v1/ns/instance/list?serviceName=s&healthyOnly=false")
        );
    }

    #[test]
    fn v2_request_shape() {
        let a = adapter(Api::V2, false);
        let full = ServiceQuery {
            service: "providers:com.acme.Orders:1.0.0:".into(),
            group: Some("DEFAULT_GROUP".into()),
            namespace: Some("public".into()),
            clusters: vec!["c1".into(), "c2".into()],
            tag: Some("ignored".into()),
            ..Default::default()
        };
        let (call, req) = a.request(&full, T0);
        assert_eq!(call, Call::List);
        assert_eq!(
            req.header(":path"),
            Some("/nacos/v2/ns/instance/list?serviceName=providers%3Acom.acme.Orders%3A1.0.0%3A&groupName=DEFAULT_GROUP&namespaceId=public&clusterName=c1%2Cc2&healthyOnly=false")
        );
        assert_eq!(
            a.request(&q("x"), T0).1.header(":path"),
            Some("/nacos/v2/ns/instance/list?serviceName=x&healthyOnly=false")
        );
    }

    #[test]
    fn token_in_query_is_encoded() {
        for (api, prefix) in [(Api::V1, "/nacos/v1/ns/instance/list"), (Api::V2, "/nacos/v2/ns/instance/list")] {
            let mut a = adapter(api, true);
            let login = br#"{"accessToken":"a+b/c=","tokenTtl":18000}"#;
            assert_eq!(a.on_reply(&q("s"), Call::Login, &resp(Some(200), login), T0), Reply::LoggedIn);
            let (call, req) = a.request(&ServiceQuery { group: Some("g".into()), ..q("s") }, T0);
            assert_eq!(call, Call::List);
            assert_eq!(
                req.header(":path").unwrap(),
                format!("{prefix}?serviceName=s&groupName=g&healthyOnly=false&accessToken=a%2Bb%2Fc%3D")
            );
        }
    }

    // ---- auth -------------------------------------------------------------------------------

    fn login_ok(a: &mut Client<Nacos>, token: &str, ttl_s: i64, now: i64) {
        let body = format!(r#"{{"accessToken":"{token}","tokenTtl":{ttl_s},"globalAdmin":false}}"#);
        assert_eq!(a.on_reply(&q("s"), Call::Login, &resp(Some(200), body.as_bytes()), now), Reply::LoggedIn);
    }

    #[test]
    fn login_comes_first() {
        let mut a = adapter(Api::V1, true);
        let (call, req) = a.request(&q("s"), T0);
        assert_eq!(call, Call::Login);
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec![":method", ":path", ":authority", "accept", "content-type"]);
        assert_eq!(req.header(":method"), Some("POST"));
        assert_eq!(req.header(":path"), Some("/nacos/v1/auth/login"));
        assert_eq!(req.header(":authority"), Some("nacos.local:8848"));
        assert_eq!(req.header("content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(req.body.as_deref(), Some(b"username=nacos%20user&password=p%26ss%3Dw0rd%21".as_slice()));
        assert_eq!(req.timeout_ms, 1500);
        // v2 logs in at the same place
        assert_eq!(adapter(Api::V2, true).request(&q("s"), T0).1.header(":path"), Some("/nacos/v1/auth/login"));
        // no token yet: asking again still logs in
        assert_eq!(a.request(&q("s"), T0 + 5).0, Call::Login);
        login_ok(&mut a, "tok", 3600, T0);
        let (call, req) = a.request(&q("s"), T0);
        assert_eq!(call, Call::List);
        assert_eq!(
            req.header(":path"),
            Some("/nacos/v1/ns/instance/list?serviceName=s&healthyOnly=false&accessToken=tok")
        );
        assert_eq!(req.body, None);
    }

    #[test]
    fn expiry_triggers_relogin() {
        // 3600 s: margin is 10 % = 360 s
        let mut a = adapter(Api::V1, true);
        login_ok(&mut a, "t1", 3600, T0);
        assert_eq!(a.request(&q("s"), T0 + 3_239_999).0, Call::List);
        assert_eq!(a.request(&q("s"), T0 + 3_240_000).0, Call::Login);
        login_ok(&mut a, "t2", 3600, T0 + 3_240_000);
        assert!(a.request(&q("s"), T0 + 3_240_001).1.header(":path").unwrap().ends_with("accessToken=t2"));

        // 300 s: 10 % is 30 s, so the 60 s floor applies
        let mut a = adapter(Api::V1, true);
        login_ok(&mut a, "t", 300, T0);
        assert_eq!(a.request(&q("s"), T0 + 239_999).0, Call::List);
        assert_eq!(a.request(&q("s"), T0 + 240_000).0, Call::Login);

        // 30 s: the margin is capped at half the TTL so a fresh token is always used
        let mut a = adapter(Api::V1, true);
        login_ok(&mut a, "t", 30, T0);
        assert_eq!(a.request(&q("s"), T0).0, Call::List);
        assert_eq!(a.request(&q("s"), T0 + 14_999).0, Call::List);
        assert_eq!(a.request(&q("s"), T0 + 15_000).0, Call::Login);

        // no usable tokenTtl: the default TTL
        for body in [
            r#"{"accessToken":"t"}"#,
            r#"{"accessToken":"t","tokenTtl":0}"#,
            r#"{"accessToken":"t","tokenTtl":"x"}"#,
            r#"{"accessToken":"t","tokenTtl":-5}"#,
        ] {
            let mut a = adapter(Api::V1, true);
            assert_eq!(
                a.on_reply(&q("s"), Call::Login, &resp(Some(200), body.as_bytes()), T0),
                Reply::LoggedIn,
                "{body}"
            );
            assert_eq!(a.session.token.as_ref().unwrap().expires_ms, T0 + DEFAULT_TTL_S * 1000, "{body}");
        }
        // a huge TTL saturates instead of overflowing
        let mut a = adapter(Api::V1, true);
        login_ok(&mut a, "t", i64::MAX, T0);
        assert_eq!(a.session.token.as_ref().unwrap().expires_ms, i64::MAX);
        assert_eq!(a.request(&q("s"), T0 + 1).0, Call::List);
    }

    #[test]
    fn forbidden_list_triggers_relogin() {
        for status in [401u16, 403] {
            let mut a = adapter(Api::V2, true);
            login_ok(&mut a, "t1", 18000, T0);
            assert_eq!(a.request(&q("s"), T0 + 1).0, Call::List);
            match a.on_reply(&q("s"), Call::List, &resp(Some(status), b"token expired!"), T0 + 2) {
                Reply::Error(RegistryError::Auth(m)) => {
                    assert!(m.contains(&format!("HTTP {status}")) && m.contains("token expired!"), "{m}")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(a.request(&q("s"), T0 + 3).0, Call::Login);
            login_ok(&mut a, "t2", 18000, T0 + 4);
            assert!(a.request(&q("s"), T0 + 5).1.header(":path").unwrap().ends_with("accessToken=t2"));
        }
        // other errors keep the token
        let mut a = adapter(Api::V1, true);
        login_ok(&mut a, "t1", 18000, T0);
        assert_eq!(
            a.on_reply(&q("s"), Call::List, &resp(Some(500), b""), T0),
            Reply::Error(RegistryError::Status(500, String::new()))
        );
        assert_eq!(a.request(&q("s"), T0).0, Call::List);
    }

    #[test]
    fn login_failures() {
        let pw = creds().password;
        let cases: Vec<(Option<u16>, Vec<u8>, &str)> = vec![
            (Some(403), b"unknown user!".to_vec(), "auth"),
            (Some(401), format!("bad password {pw} / {}", encode(&pw)).into_bytes(), "auth"),
            (Some(200), b"not json".to_vec(), "auth"),
            (Some(200), br#"{"tokenTtl":3600}"#.to_vec(), "auth"),
            (Some(200), br#"{"accessToken":"","tokenTtl":3600}"#.to_vec(), "auth"),
            (Some(200), br#"{"accessToken":7,"tokenTtl":3600}"#.to_vec(), "auth"),
            (Some(200), br#"{"accessToken":"a\nb","tokenTtl":3600}"#.to_vec(), "auth"),
            (Some(500), b"down".to_vec(), "auth"),
            (None, Vec::new(), "transport"),
        ];
        for (status, body, want) in cases {
            let mut a = adapter(Api::V1, true);
            match a.on_reply(&q("s"), Call::Login, &resp(status, &body), T0) {
                Reply::Error(e) => {
                    assert_eq!(e.kind(), want, "{status:?} {e:?}");
                    let shown = format!("{e} {e:?}");
                    assert!(!shown.contains(&pw) && !shown.contains(&encode(&pw)), "password leaked: {shown}");
                }
                other => panic!("{status:?}: {other:?}"),
            }
            assert!(a.session.token.is_none());
            // still no token: the next request logs in again
            assert_eq!(a.request(&q("s"), T0 + 1).0, Call::Login);
        }
    }

    #[test]
    fn failed_renewal_keeps_valid_token() {
        let mut a = adapter(Api::V1, true);
        login_ok(&mut a, "old", 3600, T0);
        let renew = T0 + 3_240_000;
        assert_eq!(a.request(&q("s"), renew).0, Call::Login);
        assert!(matches!(
            a.on_reply(&q("s"), Call::Login, &resp(Some(503), b""), renew),
            Reply::Error(RegistryError::Auth(_))
        ));
        // the old token still works for a while: list with it, retry the login later
        let (call, req) = a.request(&q("s"), renew + 1);
        assert_eq!(call, Call::List);
        assert!(req.header(":path").unwrap().ends_with("accessToken=old"));
        assert_eq!(a.request(&q("s"), renew + RENEW_RETRY_MS).0, Call::Login);
        // once expired it is neither kept nor sent
        let end = T0 + 3_600_000;
        assert!(matches!(
            a.on_reply(&q("s"), Call::Login, &resp(None, b""), end),
            Reply::Error(RegistryError::Transport)
        ));
        assert!(a.session.token.is_none());
        assert_eq!(a.request(&q("s"), end + 1).0, Call::Login);
    }

    #[test]
    fn secrets_never_print() {
        let mut a = adapter(Api::V1, true);
        login_ok(&mut a, "sekrit-token", 3600, T0);
        let shown = format!("{a:?}");
        assert!(!shown.contains("p&ss=w0rd!") && !shown.contains("sekrit-token"), "{shown}");
        assert!(shown.contains("nacos user"));
        // a 403 body echoing the token is redacted
        match a.on_reply(&q("s"), Call::List, &resp(Some(403), b"token sekrit-token expired"), T0) {
            Reply::Error(RegistryError::Auth(m)) => assert_eq!(m, "list answered HTTP 403: token *** expired"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_auth_never_logs_in() {
        let a = adapter(Api::V1, false);
        for t in [i64::MIN, 0, T0, i64::MAX] {
            let (call, req) = a.request(&q("s"), t);
            assert_eq!(call, Call::List);
            assert!(!req.header(":path").unwrap().contains("accessToken"));
        }
    }
}
