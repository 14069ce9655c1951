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
/// parsing it. Linear in the body: the markers are found by a search eight bytes at a time for one
/// of their bytes, the bytes between them hashed 32 at a time in four independent lanes.
pub fn fingerprint(body: &[u8], volatile: &[&str]) -> u64 {
    let markers: Vec<Marker<'_>> = volatile.iter().map(|m| Marker::new(m.as_bytes())).collect();
    let mut h = Lanes::new(body.len() as u64);
    let mut from = 0;
    // the next position of each marker at or after `from`, found once per occurrence
    let mut next: Vec<Option<usize>> = markers.iter().map(|m| m.find(body, 0)).collect();
    loop {
        let first = next.iter().zip(&markers).filter_map(|(p, m)| p.map(|p| (p, m.needle.len()))).min();
        let Some((at, len)) = first else {
            h.feed(body.get(from..).unwrap_or_default());
            return h.finish();
        };
        let key_end = at + len;
        h.feed(body.get(from..key_end).unwrap_or_default());
        let after = body.get(key_end..).unwrap_or_default();
        from = key_end + after.iter().position(|b| matches!(b, b',' | b'}')).unwrap_or(after.len());
        for (p, m) in next.iter_mut().zip(&markers) {
            if p.is_some_and(|q| q < from) {
                *p = m.find(body, from);
            }
        }
    }
}

/// A marker of [`fingerprint`], searched for by one of its bytes, the rarest in JSON by a fixed
/// ranking (an upper-case letter, else the least frequent lower-case letter in English text, else
/// its first byte), eight bytes at a time; each place that byte occurs is then compared in full.
/// About three times the speed of a general substring search in the Wasm VM, where the general
/// searches compare four bytes at a time at most.
struct Marker<'a> {
    needle: &'a [u8],
    /// where in `needle` the searched byte is
    at: usize,
    /// that byte in each of 8 bytes
    splat: u64,
}

impl<'a> Marker<'a> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// lower-case letters, the most frequent in English text first
    const FREQUENT: &'static [u8] = b"etaoinshrdlcumwfgypbvkjxqz";

    fn new(needle: &'a [u8]) -> Self {
        let rank = |b: u8| match b {
            b'A'..=b'Z' => 0,
            b'a'..=b'z' => Self::FREQUENT.len() + 1 - Self::FREQUENT.iter().position(|f| *f == b).unwrap_or(0),
            _ => Self::FREQUENT.len() + 2,
        };
        let at = needle.iter().enumerate().min_by_key(|(i, b)| (rank(**b), *i)).map_or(0, |(i, _)| i);
        let byte = needle.get(at).copied().unwrap_or(0);
        Marker { needle, at, splat: u64::from_ne_bytes([byte; 8]) }
    }

    /// Where `needle` next starts in `hay` at or after `from`; never for an empty needle.
    fn find(&self, hay: &[u8], from: usize) -> Option<usize> {
        if self.needle.is_empty() {
            return None;
        }
        let mut pos = from.checked_add(self.at)?;
        let mut words = hay.get(pos..)?.chunks_exact(8);
        for word in &mut words {
            let w = word.try_into().map_or(0, u64::from_le_bytes) ^ self.splat;
            // a high bit for each byte of `w` that is zero (the searched byte), and possibly for
            // bytes after one: every candidate is compared in full
            let mut zero = w.wrapping_sub(Self::LOW) & !w & Self::HIGH;
            while zero != 0 {
                let at = pos + (zero.trailing_zeros() / 8) as usize;
                if let Some(start) = self.starts_at(hay, at) {
                    return Some(start);
                }
                zero &= zero - 1;
            }
            pos += 8;
        }
        (pos..pos + words.remainder().len()).find_map(|at| self.starts_at(hay, at))
    }

    /// The needle's start when its searched byte is at `at` of `hay`.
    fn starts_at(&self, hay: &[u8], at: usize) -> Option<usize> {
        let start = at.checked_sub(self.at)?;
        (hay.get(start..start.checked_add(self.needle.len())?) == Some(self.needle)).then_some(start)
    }
}

/// The fingerprint's hash: each run of bytes fed is hashed in four lanes of 8 bytes (a multiply
/// and a rotation per word, the lanes independent so they overlap in the CPU), then folded into
/// the running state with its length. Not a cryptographic hash: a registry reply is not an
/// adversary's choice here, and a collision costs one missed change until the list changes again.
struct Lanes {
    state: u64,
}

impl Lanes {
    const SEEDS: [u64; 4] =
        [0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f, 0x1656_67b1_9e37_79f9, 0x27d4_eb2f_1656_67c5];
    const MUL: u64 = 0x9fb2_1c65_1e98_df25;

    fn new(len: u64) -> Self {
        Lanes { state: Self::SEEDS[0] ^ len }
    }

    fn word(lane: u64, w: u64) -> u64 {
        (lane ^ w).wrapping_mul(Self::MUL).rotate_left(29)
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut lanes = Self::SEEDS.map(|s| s ^ self.state);
        let mut blocks = bytes.chunks_exact(32);
        for block in &mut blocks {
            for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                *lane = Self::word(*lane, w.try_into().map_or(0, u64::from_le_bytes));
            }
        }
        let mut tail = [0u8; 32];
        let rem = blocks.remainder();
        if let Some(t) = tail.get_mut(..rem.len()) {
            t.copy_from_slice(rem);
        }
        for (lane, w) in lanes.iter_mut().zip(tail.chunks_exact(8)) {
            *lane = Self::word(*lane, w.try_into().map_or(0, u64::from_le_bytes));
        }
        let folded = lanes.iter().fold(bytes.len() as u64, |acc, l| Self::word(acc, *l));
        self.state = Self::word(self.state, folded);
    }

    fn finish(self) -> u64 {
        let h = self.state;
        (h ^ (h >> 31)).wrapping_mul(Self::MUL) ^ (h >> 29)
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
        // where the bytes are cut between markers counts, and so does every byte of a long run
        let g = br#"[{"x":12,"lastRefTime":5},{"x":3}]"#;
        let h = br#"[{"x":1,"lastRefTime":5},{"x":23}]"#;
        assert_ne!(fingerprint(g, &keys), fingerprint(h, &keys));
        let long = vec![b'a'; 1000];
        for i in [0, 7, 31, 32, 500, 999] {
            let mut other = long.clone();
            other[i] = b'b';
            assert_ne!(fingerprint(&long, &keys), fingerprint(&other, &keys), "byte {i}");
        }
        // a value up to the end of the body, a marker at its very end
        let i = br#"{"lastRefTime":1"#;
        let j = br#"{"lastRefTime":2"#;
        assert_eq!(fingerprint(i, &keys), fingerprint(j, &keys));
        assert_ne!(fingerprint(br#"{"a":1,"lastRefTime":"#, &keys), fingerprint(br#"{"a":2,"lastRefTime":"#, &keys));
    }

    proptest::proptest! {
        /// The marker search finds what a plain window-by-window search finds, from any start,
        /// in bodies dense with the marker's bytes and its near misses.
        #[test]
        fn marker_search_finds_every_occurrence(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["\"lastRefTime\":", "\"lastRef", "Time\":", "R", "e", ",", "}", "1234567", "\"checksum\":"]),
                0..60),
            from in 0usize..200,
        ) {
            let body = parts.concat().into_bytes();
            for needle in ["\"lastRefTime\":", "\"checksum\":", "R", "Re"] {
                let m = Marker::new(needle.as_bytes());
                let expected = body
                    .windows(needle.len())
                    .enumerate()
                    .skip(from)
                    .find_map(|(i, w)| (w == needle.as_bytes()).then_some(i));
                proptest::prop_assert_eq!(m.find(&body, from), expected, "{} from {}", needle, from);
            }
        }
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
