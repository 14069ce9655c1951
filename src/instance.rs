//! The instance model shared by every registry adapter, the membership and the balancer.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// What the registry (or the instance itself) says about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Routable. Whether it is still warming up is derived from its start time.
    Serving,
    /// Deliberately taken out (Nacos `enabled=false`, Eureka `OUT_OF_SERVICE`, Consul maintenance,
    /// a drain metadata flag, or the instance's own drain header). No new requests.
    Draining,
    /// Unhealthy or not ready (Nacos `healthy=false`, Eureka `DOWN`/`STARTING`/`UNKNOWN`, a
    /// critical Consul check). No new requests.
    Down,
}

impl State {
    pub fn is_serving(self) -> bool {
        self == State::Serving
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Serving => "serving",
            State::Draining => "draining",
            State::Down => "down",
        }
    }
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `ip:port`, IPv6 in brackets: the exact form Envoy's override_host / ORIGINAL_DST headers take.
    pub addr: String,
    /// Configured weight (Dubbo scale: 100 is the default).
    pub weight: i32,
    /// Start time, ms since the epoch, when known.
    pub start_ms: Option<i64>,
    /// Warmup window in ms.
    pub warmup_ms: i64,
    pub state: State,
}

/// The member with address `addr` in `members` (sorted by address, as every membership is).
pub fn find<'a>(members: &'a [Instance], addr: &str) -> Option<&'a Instance> {
    position(members, addr).and_then(|i| members.get(i))
}

/// The index of the member with address `addr` in `members` (sorted by address).
pub fn position(members: &[Instance], addr: &str) -> Option<usize> {
    members.binary_search_by(|m| m.addr.as_str().cmp(addr)).ok()
}

/// Formats an address as Envoy expects it, validating both parts. Returns `None` for an address
/// that is not an IP literal or a port outside 1..=65535.
pub fn format_addr(ip: &str, port: i64) -> Option<String> {
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let ip = ip.trim();
    // Accept "[v6]" as well as bare v6.
    let bare = ip.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(ip);
    // IPv4, the common case, written without the formatting machinery (as `SocketAddr` shows it)
    if let Ok(v4) = bare.parse::<Ipv4Addr>() {
        let mut out = Vec::with_capacity(21);
        for (k, octet) in v4.octets().into_iter().enumerate() {
            if k > 0 {
                out.push(b'.');
            }
            push_int(&mut out, i64::from(octet));
        }
        out.push(b':');
        push_int(&mut out, i64::from(port));
        return String::from_utf8(out).ok();
    }
    let ip: IpAddr = bare.parse().ok()?;
    Some(SocketAddr::new(ip, port).to_string())
}

/// Appends `n` in decimal, as `Display` writes it.
pub fn push_int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_uint(out, n.unsigned_abs());
}

/// Appends `v` in decimal, as `Display` writes it.
pub fn push_uint(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
        start -= 1;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

/// `name:port` when `host` is a DNS host name (labels of letters, digits, `-` and `_`, at least one
/// letter) and `port` is in 1..=65535: what a registry may hold instead of an IP (Spring Cloud
/// Consul registers the machine's host name unless `prefer-ip-address` is set), which Envoy cannot
/// route to. `None` for anything else (an IP literal, an empty or malformed name).
pub fn host_name_addr(host: &str, port: i64) -> Option<String> {
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let host = host.trim();
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok =
        |l: &str| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let ok = name.len() <= 253 && name.split('.').all(label_ok) && name.bytes().any(|b| b.is_ascii_alphabetic());
    (ok && format_addr(host, 1).is_none()).then(|| format!("{host}:{port}"))
}

/// Parses `ip:port` / `[v6]:port` into the canonical form; `None` when it is not one.
pub fn canonical_addr(s: &str) -> Option<String> {
    s.trim().parse::<SocketAddr>().ok().filter(|a| a.port() != 0).map(|a| a.to_string())
}

/// Time unit of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Ms,
    S,
}

impl Unit {
    fn to_ms(self, v: i64) -> Option<i64> {
        match self {
            Unit::Ms => Some(v),
            Unit::S => v.checked_mul(1000),
        }
    }
}

/// A metadata key and the unit of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetaKey {
    pub key: String,
    pub unit: Unit,
}

impl MetaKey {
    fn pair(&self) -> (&str, Unit) {
        (self.key.as_str(), self.unit)
    }
}

/// Where start time, warmup, weight and a drain flag are read from in metadata. Keys are tried in
/// order; the first one present with a well-formed value wins (an empty value is absent, as in
/// Dubbo's `URL.getParameter(key, default)`).
///
/// Values are read as Dubbo 3.3 reads its `timestamp`, `warmup` and `weight` URL parameters
/// (`org.apache.dubbo.common.URL.getParameter(String, long|int)`: Java's `Long.parseLong` /
/// `Integer.parseInt`), and as Sermant reads its `sermant.grace.warmup.*` keys (the same two
/// parsers, `GraceSwitchInterceptor.calculate`): an optional sign and ASCII digits, nothing else,
/// start times in `long` range, warmups and weights in `int` range. Every well-formed value counts,
/// negative ones included, with the meaning `AbstractLoadBalance.getWeight` gives it: a start time
/// `<= 0` means "no start time" (no ramp), a warmup `<= 0` means no ramp, a weight `< 0` is 0.
/// Where Java would throw `NumberFormatException` (and Dubbo fail the call) the value is malformed:
/// counted, and the next key or the default is used. Java's parsers also take non-ASCII decimal
/// digits (which digits depends on the JVM's Unicode version); here those are malformed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetadataKeys {
    pub start_time: Vec<MetaKey>,
    pub warmup: Vec<MetaKey>,
    /// Integer weight on the Dubbo scale (e.g. Dubbo's `weight` URL parameter).
    pub weight: Vec<String>,
    /// A key whose value `true` marks the instance draining.
    pub drain: Vec<String>,
}

impl Default for MetadataKeys {
    fn default() -> Self {
        MetadataKeys {
            start_time: vec![
                MetaKey { key: "timestamp".into(), unit: Unit::Ms },
                MetaKey { key: "sermant.grace.warmup.inject.time".into(), unit: Unit::Ms },
            ],
            warmup: vec![
                MetaKey { key: "warmup".into(), unit: Unit::Ms },
                MetaKey { key: "sermant.grace.warmup.time".into(), unit: Unit::S },
            ],
            weight: vec!["weight".into(), "sermant.grace.warmup.weight".into()],
            drain: vec!["lossless.drain".into()],
        }
    }
}

/// Java's `Long.parseLong` (`int_range`: `Integer.parseInt`) on ASCII input: Rust's integer
/// parser accepts exactly the same strings (optional `+`/`-`, then ASCII digits, in range).
fn parse_java(s: &str, int_range: bool) -> Option<i64> {
    if int_range {
        s.parse::<i32>().ok().map(i64::from)
    } else {
        s.parse().ok()
    }
}

/// A record's metadata as [`MetadataKeys::read`] reads it: the text of a key's value.
pub trait Metadata {
    fn value(&self, key: &str) -> Option<&str>;
}

/// As registry replies are read: the keys [`MetadataKeys::names`] names, each once, with their
/// values as text (borrowed from the reply unless they were escaped or are numbers).
impl Metadata for [(Cow<'_, str>, Cow<'_, str>)] {
    fn value(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }
}

impl Metadata for BTreeMap<String, String> {
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// What metadata says about an instance. Malformed values are ignored (reported in `malformed`),
/// never fatal.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetaFacts {
    /// The first well-formed start time; `<= 0` says "none" (and hides the registry's own).
    pub start_ms: Option<i64>,
    /// The first well-formed warmup, `>= 0` (a negative one is 0: no ramp, as in Dubbo).
    pub warmup_ms: Option<i64>,
    /// The first well-formed weight, `>= 0` (a negative one is 0, Dubbo's `Math.max(weight, 0)`).
    pub weight: Option<i32>,
    pub drain: bool,
    /// Number of keys present with a value that could not be read.
    pub malformed: u32,
}

impl MetadataKeys {
    /// Every key [`MetadataKeys::read`] looks at, once each: the only ones kept from a registry's
    /// metadata.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let all = self.start_time.iter().chain(&self.warmup).map(|k| k.key.as_str());
        for k in all.chain(self.weight.iter().map(String::as_str)).chain(self.drain.iter().map(String::as_str)) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }

    pub fn read(&self, md: &(impl Metadata + ?Sized)) -> MetaFacts {
        let mut f = MetaFacts::default();
        let bad = &mut f.malformed;
        f.start_ms = first(self.start_time.iter().map(MetaKey::pair), md, false, bad);
        f.warmup_ms = first(self.warmup.iter().map(MetaKey::pair), md, true, bad).map(|v| v.max(0));
        let weight = first(self.weight.iter().map(|k| (k.as_str(), Unit::Ms)), md, true, bad);
        f.weight = weight.and_then(|w| i32::try_from(w.max(0)).ok());
        f.drain = self.drain.iter().any(|k| md.value(k).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")));
        f
    }
}

/// The value of the first of `keys` present (and not empty) with a well-formed value, in ms;
/// every malformed one on the way is counted in `bad`.
fn first<'a>(
    keys: impl Iterator<Item = (&'a str, Unit)>,
    md: &(impl Metadata + ?Sized),
    int_range: bool,
    bad: &mut u32,
) -> Option<i64> {
    for (key, unit) in keys {
        if let Some(v) = md.value(key).filter(|v| !v.is_empty()) {
            match parse_java(v, int_range).and_then(|v| unit.to_ms(v)) {
                Some(ms) => return Some(ms),
                None => *bad += 1,
            }
        }
    }
    None
}

/// Turns a registry's native weight (Nacos float 1.0, Consul integer 1) into the Dubbo scale.
/// Non-finite or negative weights are `None` (the caller skips or defaults).
pub fn scale_weight(native: f64, scale: f64) -> Option<i32> {
    if !native.is_finite() || native < 0.0 {
        return None;
    }
    let w = (native * scale).round();
    if w > i32::MAX as f64 {
        Some(i32::MAX)
    } else {
        Some(w as i32)
    }
}

/// Options every adapter needs to turn a registry record into an [`Instance`].
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    pub keys: MetadataKeys,
    /// Multiplier from the registry's native weight to the Dubbo scale (default 100).
    pub weight_scale: f64,
    /// Weight used when neither metadata nor the registry gives one.
    pub default_weight: i32,
    /// Warmup when metadata gives none (ms).
    pub default_warmup_ms: i64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            keys: MetadataKeys::default(),
            weight_scale: 100.0,
            default_weight: crate::warmup::DEFAULT_WEIGHT,
            default_warmup_ms: crate::warmup::DEFAULT_WARMUP_MS,
        }
    }
}

impl BuildOptions {
    /// Builds an instance from the registry's facts. `native_weight` is the registry's own weight
    /// (already validated), `native_start_ms` a start time the registry itself reports (Eureka's
    /// `serviceUpTimestamp`); metadata keys win over both. Returns the instance and how many
    /// metadata values were malformed.
    pub fn build(
        &self,
        addr: String,
        native_weight: Option<i32>,
        native_start_ms: Option<i64>,
        state: State,
        metadata: &(impl Metadata + ?Sized),
    ) -> (Instance, u32) {
        let facts = self.keys.read(metadata);
        let weight = facts.weight.or(native_weight).unwrap_or(self.default_weight);
        let start_ms = facts.start_ms.or(native_start_ms).filter(|t| *t > 0);
        let warmup_ms = facts.warmup_ms.unwrap_or(self.default_warmup_ms);
        let state = if facts.drain && state == State::Serving { State::Draining } else { state };
        (Instance { addr, weight, start_ms, warmup_ms, state }, facts.malformed)
    }
}

/// The instance side of warm-up overload protection ([`crate::warmup::OverloadProtection`]),
/// kept here so that `warmup` stays below the instance model.
impl crate::warmup::WarmingShare {
    /// Counts `members` at `now_ms`. O(n).
    pub fn of(members: &[Instance], now_ms: i64) -> Self {
        let mut s = Self::default();
        for m in members.iter().filter(|m| m.state.is_serving() && m.weight > 0) {
            s.candidates += 1;
            s.warming += u64::from(crate::warmup::is_warming(m.start_ms, m.warmup_ms, now_ms));
        }
        s
    }
}

impl crate::warmup::OverloadProtection {
    /// [`crate::warmup::OverloadProtection::in_force`] for `members` at `now_ms`.
    pub fn in_force_for(&self, members: &[Instance], now_ms: i64) -> bool {
        self.in_force(crate::warmup::WarmingShare::of(members, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn addresses() {
        assert_eq!(format_addr("10.0.0.1", 8080).as_deref(), Some("10.0.0.1:8080"));
        assert_eq!(format_addr("::1", 80).as_deref(), Some("[::1]:80"));
        assert_eq!(format_addr("[fe80::1]", 80).as_deref(), Some("[fe80::1]:80"));
        assert_eq!(format_addr("10.0.0.1", 0), None);
        assert_eq!(format_addr("10.0.0.1", 65536), None);
        assert_eq!(format_addr("10.0.0.1", -1), None);
        assert_eq!(format_addr("example.com", 80), None);
        assert_eq!(format_addr("", 80), None);
        assert_eq!(format_addr("[10.0.0.1]", 80).as_deref(), Some("10.0.0.1:80"));
        assert_eq!(format_addr(" 255.255.255.255 ", 65535).as_deref(), Some("255.255.255.255:65535"));
        assert_eq!(format_addr("0.0.0.0", 1).as_deref(), Some("0.0.0.0:1"));
        for bad in ["010.0.0.1", "10.0.0.256", "10.0.0", "10.0.0.1.2", "1e1.0.0.1"] {
            assert_eq!(format_addr(bad, 80), None, "{bad}");
        }
        for n in [0, 7, 10, 65535, -1, -42, i64::MAX, i64::MIN, 1_700_000_000_000] {
            let mut s = Vec::new();
            push_int(&mut s, n);
            assert_eq!(s, n.to_string().as_bytes());
        }
        let mut s = Vec::new();
        push_uint(&mut s, u64::MAX);
        assert_eq!(s, u64::MAX.to_string().as_bytes());
        assert_eq!(canonical_addr("[::1]:9"), Some("[::1]:9".into()));
        assert_eq!(canonical_addr("1.2.3.4:0"), None);
        assert_eq!(canonical_addr("1.2.3.4"), None);
        // host names: what a registry may hold, refused as unroutable (not as malformed)
        assert_eq!(host_name_addr("my-host.local", 8080).as_deref(), Some("my-host.local:8080"));
        assert_eq!(host_name_addr("redis.service.consul.", 80).as_deref(), Some("redis.service.consul.:80"));
        assert_eq!(host_name_addr("web_1", 80).as_deref(), Some("web_1:80"));
        for (h, p) in [("10.0.0.1", 80), ("::1", 80), ("10.0.0.256", 80), ("", 80), ("a b", 80), ("a..b", 80), ("h", 0)]
        {
            assert_eq!(host_name_addr(h, p), None, "{h:?}:{p}");
        }
        assert_eq!(host_name_addr(&"a".repeat(64), 80), None);
    }

    #[test]
    fn default_keys_dubbo_and_sermant() {
        // Sermant's weight key (GraceConstants.WARM_KEY_WEIGHT) after Dubbo's
        let k = MetadataKeys::default();
        assert_eq!(k.read(&md(&[("sermant.grace.warmup.weight", "30")])).weight, Some(30));
        assert_eq!(k.read(&md(&[("sermant.grace.warmup.weight", "30"), ("weight", "5")])).weight, Some(5));
        let k = MetadataKeys::default();
        let f = k.read(&md(&[("timestamp", "1700000000000"), ("warmup", "60000"), ("weight", "7")]));
        assert_eq!(
            (f.start_ms, f.warmup_ms, f.weight, f.malformed),
            (Some(1_700_000_000_000), Some(60_000), Some(7), 0)
        );
        let f =
            k.read(&md(&[("sermant.grace.warmup.inject.time", "1700000000000"), ("sermant.grace.warmup.time", "120")]));
        assert_eq!((f.start_ms, f.warmup_ms), (Some(1_700_000_000_000), Some(120_000)));
    }

    #[test]
    fn malformed_metadata_is_no_data() {
        let k = MetadataKeys::default();
        let f = k.read(&md(&[("timestamp", "yesterday"), ("warmup", "1e400"), ("weight", "1.5")]));
        assert_eq!((f.start_ms, f.warmup_ms, f.weight), (None, None, None));
        assert_eq!(f.malformed, 3);
        // a malformed first key falls through to the next one
        let f = k.read(&md(&[("timestamp", "x"), ("sermant.grace.warmup.inject.time", "5")]));
        assert_eq!((f.start_ms, f.malformed), (Some(5), 1));
        // Sermant's warmup is Integer.parseInt(...) * 1000L: beyond int range is malformed
        let f = k.read(&md(&[("sermant.grace.warmup.time", "2147483648")]));
        assert_eq!((f.warmup_ms, f.malformed), (None, 1));
        let f = k.read(&md(&[("sermant.grace.warmup.time", "2147483647")]));
        assert_eq!(f.warmup_ms, Some(2_147_483_647_000));
        // a start time in seconds that overflows i64 in ms
        let s = MetadataKeys { start_time: vec![MetaKey { key: "t".into(), unit: Unit::S }], ..k.clone() };
        assert_eq!(s.read(&md(&[("t", &i64::MAX.to_string())])).malformed, 1);
        // what Java's parsers refuse is refused here: a fraction, spaces, hex, an exponent
        for v in ["60000.0", " 60000", "60000 ", "0x10", "6e4", "+", "-", "٣"] {
            let f = k.read(&md(&[("warmup", v), ("weight", v), ("timestamp", v)]));
            assert_eq!((f.warmup_ms, f.weight, f.start_ms, f.malformed), (None, None, None, 3), "{v:?}");
        }
        // an empty value is absent (Dubbo's StringUtils.isEmpty -> default), not malformed
        let f = k.read(&md(&[("weight", ""), ("sermant.grace.warmup.weight", "9")]));
        assert_eq!((f.weight, f.malformed), (Some(9), 0));
    }

    /// Well-formed values keep Dubbo's meaning, negative and extreme ones included
    /// (`AbstractLoadBalance.getWeight`: `Math.max(weight, 0)`, `timestamp > 0`,
    /// `uptime < warmup`).
    #[test]
    fn dubbo_meaning_of_values() {
        let k = MetadataKeys::default();
        // key, value, then the weight, warmup and start time read
        type Row<'a> = (&'a str, &'a str, Option<i32>, Option<i64>, Option<i64>);
        let rows: &[Row] = &[
            ("weight", "-5", Some(0), None, None),
            ("weight", "-2147483648", Some(0), None, None),
            ("weight", "+7", Some(7), None, None),
            ("weight", "007", Some(7), None, None),
            ("weight", "2147483647", Some(i32::MAX), None, None),
            ("warmup", "-5", None, Some(0), None),
            ("warmup", "0", None, Some(0), None),
            ("warmup", "2147483647", None, Some(2_147_483_647), None),
            ("timestamp", "-1000", None, None, Some(-1000)),
            ("timestamp", "9223372036854775807", None, None, Some(i64::MAX)),
        ];
        for (key, v, weight, warmup, start) in rows {
            let f = k.read(&md(&[(key, v)]));
            assert_eq!((f.weight, f.warmup_ms, f.start_ms, f.malformed), (*weight, *warmup, *start, 0), "{key}={v}");
        }
        // a start time <= 0 is final: no ramp, and the registry's own start time is not used
        let o = BuildOptions::default();
        let (i, bad) = o.build("1.1.1.1:1".into(), None, Some(5), State::Serving, &md(&[("timestamp", "0")]));
        assert_eq!((i.start_ms, bad), (None, 0));
        let (i, _) = o.build("1.1.1.1:1".into(), Some(50), None, State::Serving, &md(&[("weight", "-1")]));
        assert_eq!(i.weight, 0, "a negative metadata weight is 0, not the registry's weight");
    }

    /// Java's `Integer.parseInt` / `Long.parseLong` as the JDK documents them, for ASCII strings:
    /// an optional sign, one or more digits, the value in range. Written for the tests, apart from
    /// the code under test.
    fn java_parse(s: &str, int_range: bool) -> Option<i64> {
        let (neg, digits) = match s.as_bytes().split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, s.as_bytes()),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut v: i128 = 0;
        for d in digits {
            v = v * 10 + i128::from(d - b'0');
            if v > i128::from(i64::MAX) + 1 {
                return None;
            }
        }
        let v = if neg { -v } else { v };
        let (lo, hi) = if int_range { (i32::MIN.into(), i32::MAX.into()) } else { (i64::MIN.into(), i64::MAX.into()) };
        (lo..=hi).contains(&v).then_some(v as i64)
    }

    const NOW: i64 = 1_700_000_000_000;

    /// Dubbo 3.3 `AbstractLoadBalance.getWeight` on metadata, each value parsed as
    /// `URL.getParameter(key, default)` does (an empty value is the default); a value Java cannot
    /// parse (Dubbo would throw and fail the call) counts as absent. The ramp itself is
    /// `crate::warmup::calculate_warmup_weight`, checked row by row against Dubbo's own test.
    fn dubbo_get_weight(md: &BTreeMap<String, String>, now: i64) -> i32 {
        let param = |key: &str, int_range: bool, default: i64| {
            md.get(key).filter(|v| !v.is_empty()).and_then(|v| java_parse(v, int_range)).unwrap_or(default)
        };
        let mut weight = param("weight", true, 100) as i32;
        if weight > 0 {
            let timestamp = param("timestamp", false, 0);
            if timestamp > 0 {
                let uptime = now - timestamp;
                if uptime < 0 {
                    return 1;
                }
                let warmup = param("warmup", true, 600_000);
                if uptime > 0 && uptime < warmup {
                    weight = crate::warmup::calculate_warmup_weight(uptime, warmup, weight);
                }
            }
        }
        weight.max(0)
    }

    fn lossless_weight(md: BTreeMap<String, String>, now: i64) -> (i32, u32) {
        let (i, bad) = BuildOptions::default().build("10.0.0.1:1".into(), None, None, State::Serving, &md);
        (crate::warmup::Curve::default().weight(i.weight, i.start_ms, i.warmup_ms, now), bad)
    }

    /// Every row of what Dubbo 3.3.4's own `getWeight` returned (tests/fixtures/weights, made by
    /// running Dubbo's jars): lossless gives the same weight. Where Dubbo's parsing throws, lossless
    /// counts the value as malformed and gives what Dubbo gives without it (a row of the table too).
    /// The only other difference: Java also parses non-ASCII digits ("٣" is 3 on Java 17).
    #[test]
    fn dubbo_getweight_fixture() {
        let text = include_str!("../tests/fixtures/weights/dubbo-3.3.4-getweight.jsonl");
        let now_rel = |s: &str| -> String {
            match s.find("now") {
                Some(at) => {
                    let (head, tail) = s.split_at(at);
                    let tail = tail.trim_start_matches("now");
                    let digits: String = tail[1..].chars().take_while(char::is_ascii_digit).collect();
                    let n: i64 = digits.parse().unwrap();
                    let t = if tail.starts_with('-') { NOW - n } else { NOW + n };
                    format!("{head}{t}{}", &tail[1 + digits.len()..])
                }
                None => s.to_string(),
            }
        };
        type Row = (Option<String>, Option<String>, Option<String>);
        let mut table: Vec<(Row, serde_json::Value)> = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let f = |k: &str| v[k].as_str().map(String::from);
            table.push(((f("weight"), f("timestamp"), f("warmup")), v["dubbo"].clone()));
        }
        assert!(table.len() > 200);
        let (mut divergent, mut via_default) = (Vec::new(), 0);
        for ((w, t, wu), dubbo) in &table {
            let mut m = BTreeMap::new();
            let mut bad = Vec::new();
            for (key, val, int_range) in [("weight", w, true), ("timestamp", t, false), ("warmup", wu, true)] {
                if let Some(val) = val {
                    let val = now_rel(val);
                    if !val.is_empty() && java_parse(&val, int_range).is_none() {
                        bad.push(key);
                    }
                    m.insert(key.to_string(), val);
                }
            }
            let (got, malformed) = lossless_weight(m, NOW);
            assert_eq!(malformed as usize, bad.len(), "{w:?} {t:?} {wu:?}");
            let want = if bad.is_empty() {
                dubbo.as_i64().unwrap_or_else(|| panic!("{w:?} {t:?} {wu:?}: {dubbo}"))
            } else {
                // the same row without the values Java cannot parse here
                let drop = |k: &str, v: &Option<String>| if bad.contains(&k) { None } else { v.clone() };
                let key = (drop("weight", w), drop("timestamp", t), drop("warmup", wu));
                let Some((_, d)) = table.iter().find(|(r, _)| *r == key) else {
                    panic!("no row {key:?} for {w:?} {t:?} {wu:?}")
                };
                via_default += 1;
                if dubbo.is_i64() {
                    // Dubbo parsed what this oracle (ASCII only) refuses
                    divergent.extend([w, t, wu].into_iter().flatten().filter(|v| !v.is_ascii()).cloned());
                }
                d.as_i64().unwrap()
            };
            assert_eq!(i64::from(got), want, "{w:?} {t:?} {wu:?}");
        }
        assert!(via_default > 50);
        divergent.sort();
        divergent.dedup();
        assert_eq!(divergent, ["\u{663}", "\u{ff17}"]);
    }

    /// Metadata values as registries carry them, and anything else.
    fn meta_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<i32>().prop_map(|v| v.to_string()),
            (-2_000_000i64..20_000_000).prop_map(|d| (NOW - d).to_string()),
            (-10i64..1_300_000).prop_map(|v| v.to_string()),
            "[+-]?[0-9]{0,20}",
            "[ +\\-0-9.eExX]{0,12}",
            ".*",
        ]
    }

    proptest! {
        /// For any metadata strings, lossless's weight is Dubbo's `getWeight` on Dubbo's own
        /// parsing of them; what Java cannot parse is counted as malformed.
        #[test]
        fn weight_is_dubbos_for_any_metadata(
            w in proptest::option::of(meta_value()),
            t in proptest::option::of(meta_value()),
            wu in proptest::option::of(meta_value()),
            dt in -1_000i64..1_000,
        ) {
            let now = NOW + dt;
            // Java parses non-ASCII digits too, and which ones depends on its Unicode version
            prop_assume!(![&w, &t, &wu].into_iter().flatten().any(|v| v.chars().any(|c| !c.is_ascii() && c.is_numeric())));
            let mut m = BTreeMap::new();
            let mut bad = 0u32;
            for (key, val, int_range) in [("weight", &w, true), ("timestamp", &t, false), ("warmup", &wu, true)] {
                if let Some(v) = val {
                    bad += u32::from(!v.is_empty() && java_parse(v, int_range).is_none());
                    m.insert(key.to_string(), v.clone());
                }
            }
            let want = dubbo_get_weight(&m, now);
            prop_assert_eq!(lossless_weight(m, now), (want, bad));
        }
    }

    #[test]
    fn build_prefers_metadata_and_drain_flag() {
        let o = BuildOptions::default();
        let (i, bad) = o.build(
            "1.1.1.1:1".into(),
            Some(200),
            Some(5),
            State::Serving,
            &md(&[("timestamp", "9"), ("lossless.drain", "true")]),
        );
        assert_eq!((i.weight, i.start_ms, i.warmup_ms, i.state, bad), (200, Some(9), 600_000, State::Draining, 0));
        let (i, _) = o.build("1.1.1.1:1".into(), None, Some(5), State::Down, &md(&[]));
        assert_eq!((i.weight, i.start_ms, i.state), (100, Some(5), State::Down));
    }

    #[test]
    fn weight_scaling() {
        assert_eq!(scale_weight(1.0, 100.0), Some(100));
        assert_eq!(scale_weight(0.5, 100.0), Some(50));
        assert_eq!(scale_weight(f64::NAN, 100.0), None);
        assert_eq!(scale_weight(-1.0, 100.0), None);
        assert_eq!(scale_weight(1e300, 100.0), Some(i32::MAX));
    }
}
