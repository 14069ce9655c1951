//! The instance model shared by every registry adapter, the membership and the balancer.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

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
    /// Registry metadata as read (not carried into the shared snapshot).
    pub metadata: BTreeMap<String, String>,
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
    let ip: IpAddr = bare.parse().ok()?;
    Some(SocketAddr::new(ip, port).to_string())
}

/// Parses `ip:port` / `[v6]:port` into the canonical form; `None` when it is not one.
pub fn canonical_addr(s: &str) -> Option<String> {
    s.trim().parse::<SocketAddr>().ok().filter(|a| a.port() != 0).map(|a| a.to_string())
}

/// Time unit of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetaKey {
    pub key: String,
    pub unit: Unit,
}

/// Where start time, warmup, weight and a drain flag are read from in metadata. Keys are tried in
/// order; the first one present with a well-formed value wins.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
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
            weight: vec!["weight".into()],
            drain: vec!["lossless.drain".into()],
        }
    }
}

/// An integer in a metadata string: decimal, optionally with a fractional part that is ignored
/// when zero ("60000", "60000.0"). Anything else is `None`.
fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<i64>() {
        return Some(v);
    }
    let f: f64 = s.parse().ok()?;
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(f as i64)
    } else {
        None
    }
}

/// What metadata says about an instance. Malformed values are ignored (reported in `malformed`),
/// never fatal.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetaFacts {
    pub start_ms: Option<i64>,
    pub warmup_ms: Option<i64>,
    pub weight: Option<i32>,
    pub drain: bool,
    /// Number of keys present with a value that could not be read.
    pub malformed: u32,
}

impl MetadataKeys {
    pub fn read(&self, md: &BTreeMap<String, String>) -> MetaFacts {
        let mut f = MetaFacts::default();
        f.start_ms = self.first_time(&self.start_time, md, &mut f.malformed).filter(|v| *v > 0);
        f.warmup_ms = self.first_time(&self.warmup, md, &mut f.malformed).filter(|v| *v >= 0);
        for k in &self.weight {
            if let Some(v) = md.get(k) {
                match parse_int(v).and_then(|v| i32::try_from(v).ok()).filter(|v| *v >= 0) {
                    Some(w) => {
                        f.weight = Some(w);
                        break;
                    }
                    None => f.malformed += 1,
                }
            }
        }
        f.drain = self.drain.iter().any(|k| md.get(k).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")));
        f
    }

    fn first_time(&self, keys: &[MetaKey], md: &BTreeMap<String, String>, bad: &mut u32) -> Option<i64> {
        for k in keys {
            if let Some(v) = md.get(&k.key) {
                match parse_int(v).and_then(|v| k.unit.to_ms(v)) {
                    Some(ms) => return Some(ms),
                    None => *bad += 1,
                }
            }
        }
        None
    }
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
        metadata: BTreeMap<String, String>,
    ) -> (Instance, u32) {
        let facts = self.keys.read(&metadata);
        let weight = facts.weight.or(native_weight).unwrap_or(self.default_weight);
        let start_ms = facts.start_ms.or(native_start_ms.filter(|t| *t > 0));
        let warmup_ms = facts.warmup_ms.unwrap_or(self.default_warmup_ms);
        let state = if facts.drain && state == State::Serving { State::Draining } else { state };
        (Instance { addr, weight, start_ms, warmup_ms, state, metadata }, facts.malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(canonical_addr("[::1]:9"), Some("[::1]:9".into()));
        assert_eq!(canonical_addr("1.2.3.4:0"), None);
        assert_eq!(canonical_addr("1.2.3.4"), None);
    }

    #[test]
    fn default_keys_dubbo_and_sermant() {
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
        let f = k.read(&md(&[("timestamp", "yesterday"), ("warmup", "1e400"), ("weight", "-1")]));
        assert_eq!((f.start_ms, f.warmup_ms, f.weight), (None, None, None));
        assert_eq!(f.malformed, 3);
        // a malformed first key falls through to the next one
        let f = k.read(&md(&[("timestamp", "x"), ("sermant.grace.warmup.inject.time", "5")]));
        assert_eq!(f.start_ms, Some(5));
        // seconds that overflow i64 in ms
        let f = k.read(&md(&[("sermant.grace.warmup.time", &i64::MAX.to_string())]));
        assert_eq!((f.warmup_ms, f.malformed), (None, 1));
        // "60000.0" is accepted
        assert_eq!(k.read(&md(&[("warmup", "60000.0")])).warmup_ms, Some(60_000));
    }

    #[test]
    fn build_prefers_metadata_and_drain_flag() {
        let o = BuildOptions::default();
        let (i, bad) = o.build(
            "1.1.1.1:1".into(),
            Some(200),
            Some(5),
            State::Serving,
            md(&[("timestamp", "9"), ("lossless.drain", "true")]),
        );
        assert_eq!((i.weight, i.start_ms, i.warmup_ms, i.state, bad), (200, Some(9), 600_000, State::Draining, 0));
        let (i, _) = o.build("1.1.1.1:1".into(), None, Some(5), State::Down, md(&[]));
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
