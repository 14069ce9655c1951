//! Registry adapters: each builds the HTTP request for a service's membership and turns the reply
//! into instances. Pure code, no proxy-wasm calls: the glue sends what [`Adapter::request`] returns
//! with `dispatch_http_call` and hands the reply to [`Adapter::on_reply`].

pub mod consul;
pub mod de;
pub mod eureka;
pub mod nacos;
pub mod static_json;

use std::fmt;

use crate::instance::{BuildOptions, Instance};

/// A request for the glue to dispatch. `headers` holds the pseudo headers (`:method`, `:path`,
/// `:authority`) first, then the others. Its `Debug` leaves out header values and the body, which
/// may hold credentials.
#[derive(Clone, PartialEq)]
pub struct HttpRequest {
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HttpRequest")
            .field("path", &self.header(":path").map(|p| p.split('?').next().unwrap_or_default()))
            .field("headers", &names)
            .field("body_bytes", &self.body.as_ref().map(Vec::len))
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A registry reply as the glue received it. `status` is `None` when the call failed before a
/// response (timeout, reset, no healthy upstream).
#[derive(Debug, Clone, Copy)]
pub struct HttpResponse<'a> {
    pub status: Option<u16>,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// The body's full size as the host reported it (the glue may not fetch an oversize body).
    pub body_size: usize,
}

impl<'a> HttpResponse<'a> {
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a refresh produced no new membership. Kept for stats and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryError {
    /// The call failed before a response (timeout, connection failure).
    Transport,
    /// A non-2xx status (with the start of the body, for the log).
    Status(u16, String),
    /// The body exceeds the configured cap.
    TooLarge { size: usize, cap: usize },
    /// The body is not the JSON we expect (syntax, type mismatch, truncation, nesting).
    Parse(String),
    /// The registry answered with an error envelope (Nacos v2 `code != 0`).
    Envelope { code: i64, message: String },
    /// Authentication failed (login refused, or 401/403 after a fresh login).
    Auth(String),
}

impl RegistryError {
    /// A short stable name used in stat names and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Transport => "transport",
            RegistryError::Status(..) => "status",
            RegistryError::TooLarge { .. } => "too_large",
            RegistryError::Parse(_) => "parse",
            RegistryError::Envelope { .. } => "envelope",
            RegistryError::Auth(_) => "auth",
        }
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Transport => write!(f, "registry call failed (timeout or connection failure)"),
            RegistryError::Status(s, body) => write!(f, "registry answered HTTP {s}: {body}"),
            RegistryError::TooLarge { size, cap } => {
                write!(f, "registry reply of {size} bytes exceeds the cap of {cap} bytes")
            }
            RegistryError::Parse(m) => write!(f, "registry reply is not valid: {m}"),
            RegistryError::Envelope { code, message } => write!(f, "registry returned error code {code}: {message}"),
            RegistryError::Auth(m) => write!(f, "registry authentication failed: {m}"),
        }
    }
}

/// A parsed membership list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// Instances sorted by address, duplicates merged.
    pub instances: Vec<Instance>,
    /// Records skipped because they were malformed (bad address, bad port, bad weight, ...).
    pub skipped: u32,
    /// Metadata values that could not be read (the instance was kept without them).
    pub malformed_meta: u32,
    /// `name:port` of records refused because their address is a host name: Envoy's
    /// `override_host` policy and `ORIGINAL_DST` cluster both take an IP literal only, and a
    /// proxy-wasm filter cannot resolve names. Each is also counted in `skipped`.
    pub unroutable: Vec<String>,
    /// The registry says it applied its protect threshold to this list (Nacos
    /// `reachProtectionThreshold`): its `healthy` flags are not the instances' own.
    pub registry_protected: bool,
}

/// What a reply means for the service.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A fresh list.
    Members(Parsed),
    /// Nothing changed (a blocking query that timed out with the same index).
    Unchanged,
    /// The reply was to a login; send the list request now.
    LoggedIn,
    /// The registry does not speak the API that was tried (Nacos `api: auto`); the next request,
    /// with the next API, goes out now. Says which, for the log.
    Again(String),
    /// No usable list: keep the last good membership.
    Error(RegistryError),
}

/// What to ask the registry for one service, and how to read its records: built from the
/// service's configuration and never changed at run time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceQuery {
    /// The service's name in the registry.
    pub service: String,
    /// Nacos group.
    pub group: Option<String>,
    /// Nacos namespace id / Consul namespace.
    pub namespace: Option<String>,
    /// Nacos clusters.
    pub clusters: Vec<String>,
    /// Consul tag filter.
    pub tag: Option<String>,
    /// Consul datacenter.
    pub dc: Option<String>,
    /// How this service's records become instances (its own metadata keys, weight scale and
    /// warmup defaults: two services of one registry may differ).
    pub build: BuildOptions,
}

/// A registry access token and its lifetime (Nacos `accessToken`).
#[derive(Clone)]
pub struct Token {
    pub value: String,
    /// ms since the epoch after which the token is no longer sent.
    pub expires_ms: i64,
    /// ms since the epoch from which a new login is due.
    pub renew_ms: i64,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token {{ value: \"***\", expires_ms: {}, renew_ms: {} }}", self.expires_ms, self.renew_ms)
    }
}

/// The run-time side of talking to one registry, kept by the poller (the configuration stays
/// immutable): the login token, shared by every service of the registry.
#[derive(Debug, Clone)]
pub struct Session {
    /// The current access token (only with credentials).
    pub token: Option<Token>,
    /// Nacos with `api: auto`: the API being tried or found (`None`: start with the newest), and
    /// whether a list reply confirmed it.
    pub api: Option<nacos::Api>,
    pub api_confirmed: bool,
    /// After a failed renewal: no new login before this time while the old token is still valid.
    pub renew_after_ms: i64,
}

impl Default for Session {
    fn default() -> Self {
        Session { token: None, renew_after_ms: i64::MIN, api: None, api_confirmed: false }
    }
}

/// The run-time side of one service's list requests, kept by the poller: Consul's blocking-query
/// index (`X-Consul-Index` of the last reply, 0 = none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub index: u64,
}

/// Where the registry is and how to talk to it, common to every adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `:authority` of every request.
    pub authority: String,
    pub timeout_ms: u64,
    /// Replies larger than this are refused.
    pub max_body_bytes: usize,
}

/// What the request was for, carried back with its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    List,
    Login,
}

/// A registry adapter: one per configured registry, immutable; what changes at run time (a login
/// token, a blocking-query index) comes in as [`Session`] and [`Cursor`], owned by the poller.
pub trait Adapter {
    /// The next request for `q` (a login when a token is needed first).
    fn request(&self, s: &Session, c: &Cursor, q: &ServiceQuery, now_ms: i64) -> (Call, HttpRequest);
    /// Interprets the reply to a request made by [`Adapter::request`].
    fn on_reply(
        &self,
        s: &mut Session,
        c: &mut Cursor,
        q: &ServiceQuery,
        call: Call,
        resp: &HttpResponse<'_>,
        now_ms: i64,
    ) -> Reply;
    /// True when the list request blocks until a change (Consul): the next request goes out as soon
    /// as the previous one returns.
    fn long_poll(&self) -> bool {
        false
    }
    /// `"key":` markers of values in a list reply that change on every call without the list
    /// changing (Nacos' `lastRefTime`), left out of [`fingerprint`].
    fn volatile_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// A list reply with the [`fingerprint`] of the last applied one, not parsed: moves the
    /// [`Cursor`] as the reply would have (Consul's index), and returns `true` when the registry
    /// says nothing changed (what [`Reply::Unchanged`] means).
    fn same_body(&self, _c: &mut Cursor, _resp: &HttpResponse<'_>) -> bool {
        false
    }
}

/// A fingerprint of a list reply that leaves out the values after `volatile` markers (up to the
/// next `,` or `}`): equal fingerprints, equal lists, so an unchanged reply is recognised without
/// parsing it. Hashes 8 bytes at a time; linear in the body.
pub fn fingerprint(body: &[u8], volatile: &[&str]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ body.len() as u64;
    let mut feed = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
        }
        for b in chunks.remainder() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let Ok(mut rest) = std::str::from_utf8(body) else {
        feed(body);
        return h;
    };
    // the next position of each marker in `rest`, found once per occurrence
    let mut next: Vec<Option<usize>> = volatile.iter().map(|k| rest.find(k)).collect();
    loop {
        let first = next.iter().enumerate().filter_map(|(k, p)| p.map(|p| (p, k))).min();
        let Some((at, k)) = first else {
            feed(rest.as_bytes());
            return h;
        };
        let key_end = at + volatile.get(k).map_or(0, |m| m.len());
        feed(rest.as_bytes().get(..key_end).unwrap_or_default());
        let after = rest.get(key_end..).unwrap_or_default();
        let skip = after.find([',', '}']).unwrap_or(after.len());
        let consumed = key_end + skip;
        rest = after.get(skip..).unwrap_or_default();
        for (j, p) in next.iter_mut().enumerate() {
            *p = match *p {
                Some(q) if q >= consumed => Some(q - consumed),
                _ => volatile.get(j).and_then(|m| rest.find(m)),
            };
        }
    }
}

/// An adapter with its own [`Session`] and [`Cursor`], for tests and benchmarks that drive one
/// service by hand.
#[derive(Debug, Clone)]
pub struct Client<A> {
    pub adapter: A,
    pub session: Session,
    pub cursor: Cursor,
}

impl<A: Adapter> Client<A> {
    pub fn new(adapter: A) -> Self {
        Client { adapter, session: Session::default(), cursor: Cursor::default() }
    }
    /// [`Adapter::request`] with this client's state.
    pub fn request(&self, q: &ServiceQuery, now_ms: i64) -> (Call, HttpRequest) {
        self.adapter.request(&self.session, &self.cursor, q, now_ms)
    }
    /// [`Adapter::on_reply`] with this client's state.
    pub fn on_reply(&mut self, q: &ServiceQuery, call: Call, resp: &HttpResponse<'_>, now_ms: i64) -> Reply {
        self.adapter.on_reply(&mut self.session, &mut self.cursor, q, call, resp, now_ms)
    }
    /// [`Adapter::volatile_keys`].
    pub fn volatile_keys(&self) -> &'static [&'static str] {
        self.adapter.volatile_keys()
    }
    /// [`Adapter::long_poll`].
    pub fn long_poll(&self) -> bool {
        self.adapter.long_poll()
    }
}

/// A `GET` of `path` on the registry, with [`request_headers`].
pub fn get_request(ep: &Endpoint, path: String) -> HttpRequest {
    HttpRequest { headers: request_headers(ep, "GET", path), body: None, timeout_ms: ep.timeout_ms }
}

/// The headers of a registry request: the pseudo headers first, then `accept: application/json`.
pub fn request_headers(ep: &Endpoint, method: &str, path: String) -> Vec<(String, String)> {
    vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path),
        (":authority".to_string(), ep.authority.clone()),
        ("accept".to_string(), "application/json".to_string()),
    ]
}

/// A list reply: the common checks, then `parse` on the body.
pub fn list_reply(
    resp: &HttpResponse<'_>,
    ep: &Endpoint,
    parse: impl FnOnce(&[u8]) -> Result<Parsed, RegistryError>,
) -> Reply {
    match check_common(resp, ep, &[]).and_then(|()| parse(resp.body)) {
        Ok(p) => Reply::Members(p),
        Err(e) => Reply::Error(e),
    }
}

/// Checks what every adapter checks first: transport failure, size cap, status. The start of an
/// error body goes into the error with every one of `secrets` (tokens, passwords: a registry may
/// echo the request) replaced by `***`.
pub fn check_common(resp: &HttpResponse<'_>, ep: &Endpoint, secrets: &[&str]) -> Result<(), RegistryError> {
    let Some(status) = resp.status else {
        return Err(RegistryError::Transport);
    };
    let size = resp.body_size.max(resp.body.len());
    if size > ep.max_body_bytes {
        return Err(RegistryError::TooLarge { size, cap: ep.max_body_bytes });
    }
    if !(200..300).contains(&status) {
        return Err(RegistryError::Status(status, snippet(resp.body, secrets)));
    }
    Ok(())
}

/// The first 200 characters of a body as text, for logs, with `secrets` replaced by `***`
/// (before the cut, so a secret straddling it cannot leak in part).
pub fn snippet(body: &[u8], secrets: &[&str]) -> String {
    let longest = secrets.iter().map(|s| s.len()).max().unwrap_or(0);
    let head = body.get(..body.len().min(200 + longest)).unwrap_or_default();
    let mut s = String::from_utf8_lossy(head).into_owned();
    for secret in secrets.iter().filter(|x| !x.is_empty()) {
        s = s.replace(secret, "***");
    }
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Sorts by address and merges duplicates deterministically: the most restrictive state wins
/// (down over draining over serving), then the highest weight, the latest start time, the longest
/// warmup; metadata of later records overrides earlier keys.
pub fn finish(mut instances: Vec<Instance>, skipped: u32, malformed_meta: u32) -> Parsed {
    instances.sort_by(|a, b| a.addr.cmp(&b.addr));
    let mut out: Vec<Instance> = Vec::with_capacity(instances.len());
    for i in instances {
        match out.last_mut() {
            Some(last) if last.addr == i.addr => {
                // State orders serving < draining < down: the most restrictive wins
                last.state = last.state.max(i.state);
                last.weight = last.weight.max(i.weight);
                last.start_ms = match (last.start_ms, i.start_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                last.warmup_ms = last.warmup_ms.max(i.warmup_ms);
            }
            _ => out.push(i),
        }
    }
    Parsed { instances: out, skipped, malformed_meta, ..Parsed::default() }
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => {
                out.push('%');
                out.push(hex(b >> 4));
                out.push(hex(b & 0xf));
            }
        }
    }
    out
}

fn hex(n: u8) -> char {
    match n {
        0..=9 => (b'0' + n) as char,
        _ => (b'A' + n - 10) as char,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::instance::State;

    fn inst(addr: &str, w: i32, st: State, start: Option<i64>) -> Instance {
        Instance { addr: addr.into(), weight: w, start_ms: start, warmup_ms: 10, state: st }
    }

    #[test]
    fn finish_sorts_and_merges() {
        let p = finish(
            vec![
                inst("10.0.0.2:80", 1, State::Serving, None),
                inst("10.0.0.1:80", 5, State::Serving, Some(3)),
                inst("10.0.0.1:80", 9, State::Draining, Some(1)),
            ],
            2,
            1,
        );
        assert_eq!(p.instances.len(), 2);
        let a = &p.instances[0];
        assert_eq!((a.addr.as_str(), a.weight, a.state, a.start_ms), ("10.0.0.1:80", 9, State::Draining, Some(3)));
        assert_eq!((p.skipped, p.malformed_meta), (2, 1));
    }

    #[test]
    fn fingerprint_ignores_volatile_values_only() {
        let keys = ["\"lastRefTime\":", "\"checksum\":"];
        let a = br#"{"hosts":[{"ip":"10.0.0.1","port":80}],"lastRefTime":1796065974088,"checksum":"1796065974088"}"#;
        let b = br#"{"hosts":[{"ip":"10.0.0.1","port":80}],"lastRefTime":1796065975001,"checksum":"1796065975001"}"#;
        let c = br#"{"hosts":[{"ip":"10.0.0.2","port":80}],"lastRefTime":1796065975001,"checksum":"1796065975001"}"#;
        assert_eq!(fingerprint(a, &keys), fingerprint(b, &keys), "only the volatile values differ");
        assert_ne!(fingerprint(a, &keys), fingerprint(c, &keys), "a host differs");
        assert_ne!(fingerprint(a, &[]), fingerprint(b, &[]), "without markers every byte counts");
        // a marker that repeats (one per instance), and one that is missing
        let d = br#"[{"x":1,"lastRefTime":5},{"x":2,"lastRefTime":6}]"#;
        let e = br#"[{"x":1,"lastRefTime":7},{"x":2,"lastRefTime":8}]"#;
        let f = br#"[{"x":1,"lastRefTime":7},{"x":3,"lastRefTime":8}]"#;
        assert_eq!(fingerprint(d, &keys), fingerprint(e, &keys));
        assert_ne!(fingerprint(e, &keys), fingerprint(f, &keys));
        // not UTF-8: every byte counts, no panic
        assert_ne!(fingerprint(b"\xff\xfe", &keys), fingerprint(b"\xff\xfd", &keys));
    }

    #[test]
    fn request_debug_hides_secrets() {
        let r = HttpRequest {
            headers: vec![(":path".into(), "/x?accessToken=SECRET".into()), ("x-consul-token".into(), "SECRET".into())],
            body: Some(b"password=SECRET".to_vec()),
            timeout_ms: 1,
        };
        let d = format!("{r:?}");
        assert!(!d.contains("SECRET") && d.contains("/x") && d.contains("x-consul-token"), "{d}");
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("providers:com.foo.Bar:1.0:g"), "providers%3Acom.foo.Bar%3A1.0%3Ag");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn common_checks() {
        let ep = Endpoint { authority: "r".into(), timeout_ms: 1, max_body_bytes: 10 };
        let h = [];
        let r = |status, body: &'static [u8], size| HttpResponse { status, headers: &h, body, body_size: size };
        assert_eq!(check_common(&r(None, b"", 0), &ep, &[]), Err(RegistryError::Transport));
        assert_eq!(check_common(&r(Some(200), b"", 11), &ep, &[]), Err(RegistryError::TooLarge { size: 11, cap: 10 }));
        assert_eq!(check_common(&r(Some(500), b"oops\n", 5), &ep, &[]), Err(RegistryError::Status(500, "oops".into())));
        assert_eq!(check_common(&r(Some(204), b"", 0), &ep, &[]), Ok(()));
        // a registry that echoes the request cannot leak a secret into the log
        let echo = r(Some(500), b"GET /x?accessToken=SECRET-TOKEN&a=1", 36);
        let big = Endpoint { max_body_bytes: 1000, ..ep.clone() };
        assert_eq!(
            check_common(&echo, &big, &["SECRET-TOKEN"]),
            Err(RegistryError::Status(500, "GET /x?accessToken=***&a=1".into()))
        );
        let long = format!("{}SECRET-TOKEN", "x".repeat(195));
        let cut = snippet(long.as_bytes(), &["SECRET-TOKEN"]);
        assert!(!cut.contains("SECRET") && cut.ends_with("***") && cut.chars().count() == 198, "{cut}");
    }
}
