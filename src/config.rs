//! The plugin configuration: JSON read by hand ([`crate::json`]: unknown fields refused, errors
//! carry the field path) and validated into a typed [`Config`].

use std::collections::BTreeMap;
use std::fmt;

use crate::balancer::Policy;
use crate::health::{CheckKind, HealthCheck, OutlierDetection};
use crate::instance::{canonical_addr, BuildOptions, MetaKey, MetadataKeys, Unit};
use crate::json::{boolean, f32_, f64_, int, list, map, nullable, pair, string, variant, Json, Obj, R};
use crate::membership::Guard;
use crate::registry::nacos::{Api, Credentials};
use crate::registry::{
    consul::Consul, eureka::Eureka, nacos::Nacos, static_json::StaticJson, Adapter, Endpoint, ServiceQuery,
};
use crate::warmup::Curve;

/// A minimal valid configuration, shown when the configuration is empty.
pub const MINIMAL_EXAMPLE: &str = r#"{"registries":{"nacos":{"type":"nacos","cluster":"registry","authority":"127.0.0.1:8848"}},"services":[{"name":"demo","registry":"nacos"}]}"#;

/// A configuration error: the field path (`services[0].routing.mode`) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "invalid lossless config: {}", self.message)
        } else {
            write!(f, "invalid lossless config at `{}`: {}", self.path, self.message)
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { path: path.into(), message: message.into() }
}

/// An error at `prefix.field`.
fn at(prefix: &str, field: &str, message: impl Into<String>) -> ConfigError {
    err(format!("{prefix}.{field}"), message)
}

// ---------------------------------------------------------------------------------------------
// The JSON shape

#[derive(Debug)]
struct Raw {
    mode: Mode,
    registries: BTreeMap<String, RawRegistry>,
    services: Vec<RawService>,
    refresh_interval_ms: u64,
    jitter_percent: u32,
    weight_refresh_ms: u64,
    drain: RawDrain,
    inbound: Option<RawInbound>,
    admin: RawAdmin,
}

fn d_refresh() -> u64 {
    1000
}
fn d_jitter() -> u32 {
    10
}
fn d_weight_refresh() -> u64 {
    100
}

/// Which side of an instance the filter sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// On a caller (gateway or client sidecar): picks upstream instances.
    #[default]
    Outbound,
    /// On an instance's own sidecar: drains it.
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegistryType {
    Nacos,
    Eureka,
    Consul,
    Static,
}

impl RegistryType {
    fn name(self) -> &'static str {
        match self {
            RegistryType::Nacos => "nacos",
            RegistryType::Eureka => "eureka",
            RegistryType::Consul => "consul",
            RegistryType::Static => "static",
        }
    }
}

#[derive(Debug)]
struct RawRegistry {
    kind: RegistryType,
    cluster: String,
    authority: String,
    timeout_ms: u64,
    max_body_bytes: usize,
    // nacos
    api: Option<String>,
    username: Option<String>,
    password: Option<String>,
    // consul
    token: Option<String>,
    wait_s: Option<u64>,
    address: Option<String>,
    // eureka
    path_prefix: Option<String>,
    // static
    path: Option<String>,
}

fn d_timeout() -> u64 {
    2000
}
fn d_max_body() -> usize {
    8 << 20
}

#[derive(Debug)]
struct RawService {
    name: String,
    registry: String,
    registry_service: Option<String>,
    group: Option<String>,
    namespace: Option<String>,
    clusters: Vec<String>,
    tag: Option<String>,
    dc: Option<String>,
    match_clusters: Vec<String>,
    routing: RawRouting,
    policy: Policy,
    warmup: RawWarmup,
    guard: Guard,
    outlier_detection: OutlierDetection,
    health_check: Option<HealthCheck>,
}

#[derive(Debug)]
struct RawRouting {
    mode: RoutingMode,
    header: String,
    fallbacks: usize,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting { mode: RoutingMode::OverrideHost, header: "x-lossless-upstream".into(), fallbacks: 2 }
    }
}

/// How the pick reaches Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// `primary,fallback1,...` in a header read by the `override_host` LB policy.
    OverrideHost,
    /// The single address in a header read by an `ORIGINAL_DST` cluster.
    OriginalDst,
}

#[derive(Debug)]
struct RawWarmup {
    default_warmup_ms: i64,
    default_weight: i32,
    weight_scale: f64,
    curve: Curve,
    metadata_keys: MetadataKeys,
}

impl Default for RawWarmup {
    fn default() -> Self {
        let b = BuildOptions::default();
        RawWarmup {
            default_warmup_ms: b.default_warmup_ms,
            default_weight: b.default_weight,
            weight_scale: b.weight_scale,
            curve: Curve::default(),
            metadata_keys: b.keys,
        }
    }
}

#[derive(Debug)]
struct RawDrain {
    header: String,
    retry_after_s: u32,
    pin_header: Option<String>,
    notify: bool,
    notify_grace_ms: u64,
}

impl Default for RawDrain {
    fn default() -> Self {
        RawDrain {
            header: "x-lossless-drain".into(),
            retry_after_s: 1,
            pin_header: None,
            notify: true,
            notify_grace_ms: 2000,
        }
    }
}

#[derive(Debug)]
struct RawInbound {
    service: String,
    self_address: String,
    warmup_ms: Option<i64>,
    registration: Option<RawRegistration>,
    self_warm: Option<RawSelfWarm>,
    admission: Option<AdmissionConfig>,
}

#[derive(Debug)]
struct RawRegistration {
    local_cluster: String,
    readiness: HealthCheck,
    heartbeat_ms: i64,
    metadata: BTreeMap<String, String>,
}

fn d_heartbeat() -> i64 {
    5000
}

#[derive(Debug)]
struct RawSelfWarm {
    requests: Vec<String>,
    count: u32,
    concurrency: u32,
    timeout_ms: i64,
    time_limit_ms: i64,
}

fn d_warm_count() -> u32 {
    50
}
fn d_warm_concurrency() -> u32 {
    2
}
fn d_warm_timeout() -> i64 {
    5000
}
fn d_warm_limit() -> i64 {
    60_000
}

#[derive(Debug)]
struct RawAdmin {
    path_prefix: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { path_prefix: "/lossless".into() }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the JSON shape: one reader per type, fields in their declared order (see `json`).

fn read_raw(v: &Json) -> R<Raw> {
    let mut o = Obj::new(v, "", "Raw", 9)?;
    let raw = Raw {
        mode: o.or("mode", read_mode, Mode::default()),
        registries: o.req("registries", |v, p| map(v, p, read_registry)),
        services: o.req("services", |v, p| list(v, p, read_service)),
        refresh_interval_ms: o.or("refresh_interval_ms", int, d_refresh()),
        jitter_percent: o.or("jitter_percent", int, d_jitter()),
        weight_refresh_ms: o.or("weight_refresh_ms", int, d_weight_refresh()),
        drain: o.or("drain", read_drain, RawDrain::default()),
        inbound: o.opt("inbound", read_inbound),
        admin: o.or("admin", read_admin, RawAdmin::default()),
    };
    o.end().map(|()| raw)
}

fn read_mode(v: &Json, p: &str) -> R<Mode> {
    variant(v, p, &[("outbound", Mode::Outbound), ("inbound", Mode::Inbound)])
}

fn read_registry(v: &Json, p: &str) -> R<RawRegistry> {
    use RegistryType::{Consul, Eureka, Nacos, Static};
    const KINDS: &[(&str, RegistryType)] =
        &[("nacos", Nacos), ("eureka", Eureka), ("consul", Consul), ("static", Static)];
    let mut o = Obj::new(v, p, "RawRegistry", 13)?;
    let r = RawRegistry {
        // a stand-in kind when absent or bad: `end` fails then
        kind: o.req("type", |v, p| variant(v, p, KINDS).map(Some)).unwrap_or(Nacos),
        cluster: o.req("cluster", string),
        authority: o.req("authority", string),
        timeout_ms: o.or("timeout_ms", int, d_timeout()),
        max_body_bytes: o.or("max_body_bytes", int, d_max_body()),
        api: o.opt("api", string),
        username: o.opt("username", string),
        password: o.opt("password", string),
        token: o.opt("token", string),
        wait_s: o.opt("wait_s", int),
        address: o.opt("address", string),
        path_prefix: o.opt("path_prefix", string),
        path: o.opt("path", string),
    };
    o.end().map(|()| r)
}

fn strings(v: &Json, p: &str) -> R<Vec<String>> {
    list(v, p, string)
}

fn read_service(v: &Json, p: &str) -> R<RawService> {
    let mut o = Obj::new(v, p, "RawService", 15)?;
    let s = RawService {
        name: o.req("name", string),
        registry: o.req("registry", string),
        registry_service: o.opt("registry_service", string),
        group: o.opt("group", string),
        namespace: o.opt("namespace", string),
        clusters: o.or("clusters", strings, Vec::new()),
        tag: o.opt("tag", string),
        dc: o.opt("dc", string),
        match_clusters: o.or("match_clusters", strings, Vec::new()),
        routing: o.or("routing", read_routing, RawRouting::default()),
        policy: o.or("policy", read_policy, Policy::default()),
        warmup: o.or("warmup", read_warmup, RawWarmup::default()),
        guard: o.or("guard", read_guard, Guard::default()),
        outlier_detection: o.or("outlier_detection", read_outlier_detection, OutlierDetection::default()),
        health_check: o.opt("health_check", read_health_check),
    };
    o.end().map(|()| s)
}

fn read_routing(v: &Json, p: &str) -> R<RawRouting> {
    let d = RawRouting::default();
    const MODES: &[(&str, RoutingMode)] =
        &[("override_host", RoutingMode::OverrideHost), ("original_dst", RoutingMode::OriginalDst)];
    let mut o = Obj::new(v, p, "RawRouting", 3)?;
    let r = RawRouting {
        mode: o.or("mode", |v, p| variant(v, p, MODES), d.mode),
        header: o.or("header", string, d.header),
        fallbacks: o.or("fallbacks", int, d.fallbacks),
    };
    o.end().map(|()| r)
}

fn read_policy(v: &Json, p: &str) -> R<Policy> {
    variant(v, p, &[("random", Policy::Random), ("round_robin", Policy::RoundRobin)])
}

fn read_warmup(v: &Json, p: &str) -> R<RawWarmup> {
    let d = RawWarmup::default();
    let mut o = Obj::new(v, p, "RawWarmup", 5)?;
    let w = RawWarmup {
        default_warmup_ms: o.or("default_warmup_ms", int, d.default_warmup_ms),
        default_weight: o.or("default_weight", int, d.default_weight),
        weight_scale: o.or("weight_scale", f64_, d.weight_scale),
        curve: o.or("curve", read_curve, d.curve),
        metadata_keys: o.or("metadata_keys", read_metadata_keys, d.metadata_keys),
    };
    o.end().map(|()| w)
}

fn read_curve(v: &Json, p: &str) -> R<Curve> {
    let d = Curve::default();
    let mut o = Obj::new(v, p, "Curve", 3)?;
    let c = Curve {
        aggression: o.or("aggression", f32_, d.aggression),
        min_weight_percent: o.or("min_weight_percent", f32_, d.min_weight_percent),
        sermant: o.or("sermant", |v, p| nullable(v, p, int), d.sermant),
    };
    o.end().map(|()| c)
}

fn read_metadata_keys(v: &Json, p: &str) -> R<MetadataKeys> {
    let d = MetadataKeys::default();
    let mut o = Obj::new(v, p, "MetadataKeys", 4)?;
    let k = MetadataKeys {
        start_time: o.or("start_time", |v, p| list(v, p, read_meta_key), d.start_time),
        warmup: o.or("warmup", |v, p| list(v, p, read_meta_key), d.warmup),
        weight: o.or("weight", strings, d.weight),
        drain: o.or("drain", strings, d.drain),
    };
    o.end().map(|()| k)
}

fn read_meta_key(v: &Json, p: &str) -> R<MetaKey> {
    let mut o = Obj::new(v, p, "MetaKey", 2)?;
    let k = MetaKey {
        key: o.req("key", string),
        unit: o.req("unit", |v, p| variant(v, p, &[("ms", Unit::Ms), ("s", Unit::S)]).map(Some)).unwrap_or(Unit::Ms),
    };
    o.end().map(|()| k)
}

fn read_guard(v: &Json, p: &str) -> R<Guard> {
    let d = Guard::default();
    let mut o = Obj::new(v, p, "Guard", 3)?;
    let g = Guard {
        protect_threshold: o.or("protect_threshold", f64_, d.protect_threshold),
        max_drop: o.or("max_drop", f64_, d.max_drop),
        confirm_refreshes: o.or("confirm_refreshes", int, d.confirm_refreshes),
    };
    o.end().map(|()| g)
}

fn read_outlier_detection(v: &Json, p: &str) -> R<OutlierDetection> {
    let d = OutlierDetection::default();
    let mut o = Obj::new(v, p, "OutlierDetection", 6)?;
    let od = OutlierDetection {
        enabled: o.or("enabled", boolean, d.enabled),
        consecutive_gateway_failure: o.or("consecutive_gateway_failure", int, d.consecutive_gateway_failure),
        consecutive_local_origin_failure: o.or(
            "consecutive_local_origin_failure",
            int,
            d.consecutive_local_origin_failure,
        ),
        base_ejection_time_ms: o.or("base_ejection_time_ms", int, d.base_ejection_time_ms),
        max_ejection_time_ms: o.or("max_ejection_time_ms", int, d.max_ejection_time_ms),
        max_ejection_percent: o.or("max_ejection_percent", int, d.max_ejection_percent),
    };
    o.end().map(|()| od)
}

fn read_health_check(v: &Json, p: &str) -> R<HealthCheck> {
    let d = HealthCheck::default();
    const KINDS: &[(&str, CheckKind)] = &[("http", CheckKind::Http), ("tcp", CheckKind::Tcp)];
    let mut o = Obj::new(v, p, "HealthCheck", 8)?;
    let hc = HealthCheck {
        kind: o.or("type", |v, p| variant(v, p, KINDS), d.kind),
        path: o.or("path", string, d.path),
        expected_statuses: o.or("expected_statuses", |v, p| list(v, p, |v, p| pair(v, p, int)), d.expected_statuses),
        interval_ms: o.or("interval_ms", int, d.interval_ms),
        timeout_ms: o.or("timeout_ms", int, d.timeout_ms),
        unhealthy_threshold: o.or("unhealthy_threshold", int, d.unhealthy_threshold),
        healthy_threshold: o.or("healthy_threshold", int, d.healthy_threshold),
        no_traffic_before_first_pass: o.or("no_traffic_before_first_pass", boolean, d.no_traffic_before_first_pass),
    };
    o.end().map(|()| hc)
}

fn read_drain(v: &Json, p: &str) -> R<RawDrain> {
    let d = RawDrain::default();
    let mut o = Obj::new(v, p, "RawDrain", 5)?;
    let r = RawDrain {
        header: o.or("header", string, d.header),
        retry_after_s: o.or("retry_after_s", int, d.retry_after_s),
        pin_header: o.or("pin_header", |v, p| nullable(v, p, string), d.pin_header),
        notify: o.or("notify", boolean, d.notify),
        notify_grace_ms: o.or("notify_grace_ms", int, d.notify_grace_ms),
    };
    o.end().map(|()| r)
}

fn read_inbound(v: &Json, p: &str) -> R<RawInbound> {
    let mut o = Obj::new(v, p, "RawInbound", 6)?;
    let ib = RawInbound {
        service: o.req("service", string),
        self_address: o.req("self_address", string),
        warmup_ms: o.opt("warmup_ms", int),
        registration: o.opt("registration", read_registration),
        self_warm: o.opt("self_warm", read_self_warm),
        admission: o.opt("admission", read_admission),
    };
    o.end().map(|()| ib)
}

fn read_registration(v: &Json, p: &str) -> R<RawRegistration> {
    let mut o = Obj::new(v, p, "RawRegistration", 4)?;
    let r = RawRegistration {
        local_cluster: o.req("local_cluster", string),
        readiness: o.or("readiness", read_health_check, HealthCheck::default()),
        heartbeat_ms: o.or("heartbeat_ms", int, d_heartbeat()),
        metadata: o.or("metadata", |v, p| map(v, p, string), BTreeMap::new()),
    };
    o.end().map(|()| r)
}

fn read_self_warm(v: &Json, p: &str) -> R<RawSelfWarm> {
    let mut o = Obj::new(v, p, "RawSelfWarm", 5)?;
    let sw = RawSelfWarm {
        requests: o.req("requests", strings),
        count: o.or("count", int, d_warm_count()),
        concurrency: o.or("concurrency", int, d_warm_concurrency()),
        timeout_ms: o.or("timeout_ms", int, d_warm_timeout()),
        time_limit_ms: o.or("time_limit_ms", int, d_warm_limit()),
    };
    o.end().map(|()| sw)
}

fn read_admission(v: &Json, p: &str) -> R<AdmissionConfig> {
    let mut o = Obj::new(v, p, "AdmissionConfig", 2)?;
    let a = AdmissionConfig { max_rps: o.req("max_rps", int), cold_factor: o.or("cold_factor", int, d_cold_factor()) };
    o.end().map(|()| a)
}

fn read_admin(v: &Json, p: &str) -> R<RawAdmin> {
    let d = RawAdmin::default();
    let mut o = Obj::new(v, p, "RawAdmin", 1)?;
    let a = RawAdmin { path_prefix: o.or("path_prefix", string, d.path_prefix) };
    o.end().map(|()| a)
}

// ---------------------------------------------------------------------------------------------
// The validated configuration

/// A registry endpoint and the adapter that talks to it.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub name: String,
    /// Envoy cluster that `dispatch_http_call` targets.
    pub cluster: String,
    pub kind: RegistryKind,
}

#[derive(Debug, Clone)]
pub enum RegistryKind {
    Nacos(Nacos),
    Eureka(Eureka),
    Consul(Consul),
    Static(StaticJson),
}

impl RegistryKind {
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            RegistryKind::Nacos(a) => &a.endpoint,
            RegistryKind::Eureka(a) => &a.endpoint,
            RegistryKind::Consul(a) => &a.endpoint,
            RegistryKind::Static(a) => &a.endpoint,
        }
    }

    pub fn adapter(&self) -> &dyn Adapter {
        match self {
            RegistryKind::Nacos(a) => a,
            RegistryKind::Eureka(a) => a,
            RegistryKind::Consul(a) => a,
            RegistryKind::Static(a) => a,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    /// Index into [`Config::registries`].
    pub registry: usize,
    pub query: ServiceQuery,
    /// Envoy clusters (`xds.cluster_name`) whose requests go to this service.
    pub match_clusters: Vec<String>,
    pub routing: RoutingMode,
    pub header: String,
    pub fallbacks: usize,
    pub policy: Policy,
    pub curve: Curve,
    pub guard: Guard,
    pub outlier_detection: OutlierDetection,
    /// Active health checking, when configured.
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone)]
pub struct DrainConfig {
    pub header: String,
    pub retry_after_s: u32,
    pub pin_header: Option<String>,
    pub notify: bool,
    /// Inbound: how long a draining instance keeps serving, with the drain header on every
    /// response, before it answers 503.
    pub notify_grace_ms: i64,
}

#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Index into [`Config::services`].
    pub service: usize,
    /// Canonical `ip:port` of this instance.
    pub self_address: String,
    /// This instance's warmup (ms): published with its registration and the period of the
    /// admission ramp. Default: the service's `warmup.default_warmup_ms`.
    pub warmup_ms: i64,
    pub registration: Option<RegistrationConfig>,
    pub self_warm: Option<SelfWarmConfig>,
    pub admission: Option<AdmissionConfig>,
}

/// `inbound.registration`: the sidecar registers the instance once the application is ready
/// ([`crate::registration`]).
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The Envoy cluster of the application itself (readiness and self-warm go there, with
    /// `:authority: localhost`).
    pub local_cluster: String,
    /// The readiness check, in `health_check`'s shape and with its defaults (`GET /`, 2xx, every
    /// 5000 ms, timeout 1000 ms): `healthy_threshold` passes in a row (default 1) make the
    /// application ready, `unhealthy_threshold` failures in a row while registered (default 2)
    /// deregister it.
    pub readiness: HealthCheck,
    /// Heartbeat period (ms, 1000..=60000, default 5000; Nacos expires an ephemeral instance
    /// after 15 s without one, Eureka a lease after 90 s). Nacos instances are registered
    /// ephemeral: one whose sidecar dies leaves the registry by itself.
    pub heartbeat_ms: i64,
    /// Metadata to publish besides the warm-up keys (a `weight` here is the instance's weight).
    pub metadata: BTreeMap<String, String>,
}

/// `inbound.self_warm`: requests sent to the application before it is registered.
#[derive(Debug, Clone)]
pub struct SelfWarmConfig {
    /// `(method, path)` pairs (configured as `"GET /path"`, or a bare path for `GET`), sent round
    /// robin.
    pub requests: Vec<(String, String)>,
    /// How many requests in all (default 50).
    pub count: u32,
    /// How many at once (default 2).
    pub concurrency: u32,
    /// Timeout of one request (ms, default 5000).
    pub timeout_ms: i64,
    /// Self-warm ends after this long whatever is left (ms, default 60000).
    pub time_limit_ms: i64,
}

/// `inbound.admission`: Sentinel's `WARM_UP` cap on admitted requests per second
/// ([`crate::admission`]).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Requests per second once warm (Sentinel's `count`).
    pub max_rps: u32,
    /// The cold rate is `max_rps / cold_factor` (default 3, Sentinel's `coldFactor`).
    pub cold_factor: u32,
}

fn d_cold_factor() -> u32 {
    3
}

/// Settings that apply to the whole filter (every service).
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub refresh_interval_ms: u64,
    pub jitter_percent: u32,
    pub weight_refresh_ms: u64,
    pub drain: DrainConfig,
    pub inbound: Option<InboundConfig>,
    pub admin_prefix: String,
}

/// The validated configuration. Immutable: what changes at run time lives in the poller and the
/// view ([`crate::service::Service`]).
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub registries: Vec<RegistryConfig>,
    pub services: Vec<ServiceConfig>,
}

impl Config {
    /// The service whose requests are routed to `cluster`.
    pub fn service_for_cluster(&self, cluster: &str) -> Option<usize> {
        self.services.iter().position(|s| s.match_clusters.iter().any(|c| c == cluster))
    }
}

fn valid_header(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Header names that HTTP itself or Envoy owns, refused for `routing.header`, `drain.header` and
/// `drain.pin_header`: hop-by-hop and framing headers (Envoy rewrites or drops them), `host`
/// (the `:authority`), the attempt count Envoy sets on retries, and lossless' own
/// `x-lossless-unreached`. Other `x-envoy-*` names stay allowed (an `ORIGINAL_DST` cluster may
/// read `x-envoy-original-dst-host`).
pub const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
    "x-envoy-attempt-count",
    crate::health::UNREACHED_HEADER,
];

/// Refuses a header name that [`valid_header`] accepts but HTTP or Envoy owns.
fn unreserved_header(path: &str, name: &str) -> Result<(), ConfigError> {
    if RESERVED_HEADERS.contains(&name) {
        return Err(err(path, format!("'{name}' is a header HTTP or Envoy itself uses; pick another name")));
    }
    Ok(())
}

/// `admin.path_prefix`: `/name` with only `[A-Za-z0-9/_.~-]`, not ending in '/'.
fn validate_admin_prefix(prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        return Err(err("admin.path_prefix", "must start with '/' and not end with '/', e.g. \"/lossless\""));
    }
    if !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.~-".contains(&b)) {
        return Err(err("admin.path_prefix", "must use only letters, digits and '/', '_', '.', '~', '-'"));
    }
    Ok(())
}

/// Parses and validates the plugin configuration.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    parse_with_env(bytes, &|_| None)
}

/// Like [`parse`], with `env` to expand `${NAME}` in `inbound.self_address` (the filter passes the
/// VM's environment: Envoy's `vm_config.environment_variables`, Istio's `vmConfig.env`, so one
/// config serves every pod, e.g. `"${INSTANCE_IP}:8080"`).
pub fn parse_with_env(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(err("", format!("the configuration is empty; a minimal valid one is {MINIMAL_EXAMPLE}")));
    }
    let doc = Json::parse(bytes).map_err(|e| {
        // the reader says where (line, column) but not which value: recover the path from the
        // position with a small scan of the text.
        let path = if e.line() == 0 { String::new() } else { path_at(bytes, e.line(), e.column()) };
        err(path, e.to_string())
    })?;
    validate(read_raw(&doc)?, env)
}

/// The JSON path (`services[0].routing.mode`) of the value or key that ends at 1-based
/// `line`/`column` of `text`, as serde_json reports error positions.
fn path_at(text: &[u8], line: usize, column: usize) -> String {
    enum Frame {
        Obj { key: Option<String>, in_value: bool },
        Arr { idx: usize },
    }
    let mut offset = 0usize;
    let mut l = 1usize;
    for (i, b) in text.iter().enumerate() {
        if l == line {
            offset = i;
            break;
        }
        if *b == b'\n' {
            l += 1;
            offset = i + 1;
        }
    }
    let end = offset.saturating_add(column).min(text.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0usize;
    while i < end {
        let b = text.get(i).copied().unwrap_or(b' ');
        match b {
            b'{' => stack.push(Frame::Obj { key: None, in_value: false }),
            b'[' => stack.push(Frame::Arr { idx: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b':' => {
                if let Some(Frame::Obj { in_value, .. }) = stack.last_mut() {
                    *in_value = true;
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Obj { key, in_value }) => {
                    *key = None;
                    *in_value = false;
                }
                Some(Frame::Arr { idx }) => *idx += 1,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < text.len() {
                    match text.get(j) {
                        Some(b'\\') => j += 2,
                        Some(b'"') => break,
                        _ => j += 1,
                    }
                }
                if let Some(Frame::Obj { key, in_value: false }) = stack.last_mut() {
                    let raw = text.get(start..j.min(text.len())).unwrap_or_default();
                    *key = Some(String::from_utf8_lossy(raw).into_owned());
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for f in &stack {
        match f {
            Frame::Obj { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Obj { key: None, .. } => {}
            Frame::Arr { idx } => {
                path.push('[');
                path.push_str(&idx.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// Expands `${NAME}` from `env`; the error names the missing variable.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i + 2..).unwrap_or_default();
        let Some(end) = after.find('}') else {
            return Err("has an unclosed ${".into());
        };
        let name = after.get(..end).unwrap_or_default();
        match env(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "uses ${{{name}}}, which is not set in the Wasm VM's environment (vm_config.environment_variables)"
                ))
            }
        }
        rest = after.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks the parsed document section by section and builds the immutable [`Config`].
/// The first failed check is returned, with the field's dotted path.
fn validate(raw: Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    validate_timing(&raw)?;
    if raw.registries.is_empty() {
        return Err(err("registries", format!("at least one registry is required, e.g. {MINIMAL_EXAMPLE}")));
    }
    if raw.services.is_empty() {
        return Err(err("services", format!("at least one service is required, e.g. {MINIMAL_EXAMPLE}")));
    }
    let mut kinds = Vec::new();
    let mut registries = Vec::new();
    for (name, r) in raw.registries {
        if name.trim().is_empty() {
            return Err(err(format!("registries.\"{name}\""), "a registry name must not be empty"));
        }
        let adapter = registry(&format!("registries.{name}"), &r)?;
        kinds.push(r.kind);
        registries.push(RegistryConfig { name, cluster: r.cluster, kind: adapter });
    }
    // drain first: every service's routing header must differ from its headers
    let drain = validate_drain(raw.drain)?;
    let mut services: Vec<ServiceConfig> = Vec::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        let service = validate_service(&format!("services[{i}]"), s, &registries, &kinds, &services, &drain)?;
        services.push(service);
    }
    let inbound = validate_inbound(raw.mode, raw.inbound, &services, &registries, env)?;
    let prefix = raw.admin.path_prefix;
    validate_admin_prefix(&prefix)?;
    Ok(Config {
        settings: Settings {
            mode: raw.mode,
            refresh_interval_ms: raw.refresh_interval_ms,
            jitter_percent: raw.jitter_percent,
            weight_refresh_ms: raw.weight_refresh_ms,
            drain,
            inbound,
            admin_prefix: prefix,
        },
        registries,
        services,
    })
}

/// The top-level intervals: `refresh_interval_ms`, `jitter_percent`, `weight_refresh_ms`.
fn validate_timing(raw: &Raw) -> Result<(), ConfigError> {
    if !(100..=3_600_000).contains(&raw.refresh_interval_ms) {
        return Err(err("refresh_interval_ms", "must be between 100 and 3600000 (ms)"));
    }
    if raw.jitter_percent > 50 {
        return Err(err("jitter_percent", "must be between 0 and 50"));
    }
    if !(10..=10_000).contains(&raw.weight_refresh_ms) {
        return Err(err("weight_refresh_ms", "must be between 10 and 10000 (ms)"));
    }
    Ok(())
}

/// One `services[i]` entry (`p` is its path); `earlier` are the entries already accepted, for
/// the uniqueness of names and matched clusters; `drain` for the headers the routing header must
/// differ from.
fn validate_service(
    p: &str,
    s: RawService,
    registries: &[RegistryConfig],
    kinds: &[RegistryType],
    earlier: &[ServiceConfig],
    drain: &DrainConfig,
) -> Result<ServiceConfig, ConfigError> {
    if s.name.is_empty() || !s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(at(p, "name", "must be non-empty and use only letters, digits, '-', '_' and '.' (it names stats)"));
    }
    if earlier.iter().any(|o| o.name == s.name) {
        return Err(at(p, "name", format!("duplicate service name '{}'", s.name)));
    }
    let Some(reg) = registries.iter().position(|r| r.name == s.registry) else {
        let defined: Vec<&str> = registries.iter().map(|r| r.name.as_str()).collect();
        return Err(at(p, "registry", format!("unknown registry '{}'; defined: {}", s.registry, defined.join(", "))));
    };
    if s.registry_service.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(at(p, "registry_service", "must not be empty (omit it to look the service up by name)"));
    }
    let kind = kinds.get(reg).copied().unwrap_or(RegistryType::Static);
    use RegistryType::{Consul as C, Nacos as N};
    let fields: [(&str, bool, &[RegistryType]); 5] = [
        ("group", s.group.is_some(), &[N]),
        ("clusters", !s.clusters.is_empty(), &[N]),
        ("namespace", s.namespace.is_some(), &[N, C]),
        ("tag", s.tag.is_some(), &[C]),
        ("dc", s.dc.is_some(), &[C]),
    ];
    for (field, set, applies) in fields {
        if set && !applies.contains(&kind) {
            return Err(at(p, field, format!("does not apply to a {} registry", kind.name())));
        }
    }
    let match_clusters = if s.match_clusters.is_empty() { vec![s.name.clone()] } else { s.match_clusters };
    for (k, c) in match_clusters.iter().enumerate() {
        if c.is_empty() {
            return Err(at(p, &format!("match_clusters[{k}]"), "must not be empty"));
        }
        if earlier.iter().any(|o| o.match_clusters.contains(c)) {
            return Err(at(
                p,
                &format!("match_clusters[{k}]"),
                format!("cluster '{c}' is already matched by another service"),
            ));
        }
    }
    validate_routing(p, &s.routing, drain)?;
    let w = &s.warmup;
    validate_warmup(p, w)?;
    if !(0.0..=1.0).contains(&s.guard.protect_threshold) {
        return Err(at(p, "guard.protect_threshold", "must be between 0 and 1"));
    }
    if !(0.0..=1.0).contains(&s.guard.max_drop) {
        return Err(at(p, "guard.max_drop", "must be between 0 and 1"));
    }
    if !(1..=100).contains(&s.guard.confirm_refreshes) {
        return Err(at(p, "guard.confirm_refreshes", "must be between 1 and 100"));
    }
    validate_outlier_detection(p, &s.outlier_detection)?;
    if let Some(hc) = &s.health_check {
        validate_health_check(&format!("{p}.health_check"), hc)?;
    }
    let build = BuildOptions {
        keys: w.metadata_keys.clone(),
        weight_scale: w.weight_scale,
        default_weight: w.default_weight,
        default_warmup_ms: w.default_warmup_ms,
    };
    Ok(ServiceConfig {
        query: ServiceQuery {
            service: s.registry_service.unwrap_or_else(|| s.name.clone()),
            group: s.group,
            namespace: s.namespace,
            clusters: s.clusters,
            tag: s.tag,
            dc: s.dc,
            build,
        },
        name: s.name,
        registry: reg,
        match_clusters,
        routing: s.routing.mode,
        header: s.routing.header,
        fallbacks: if s.routing.mode == RoutingMode::OriginalDst { 0 } else { s.routing.fallbacks },
        policy: s.policy,
        curve: s.warmup.curve,
        guard: s.guard,
        outlier_detection: s.outlier_detection,
        health_check: s.health_check,
    })
}

/// `services[i].routing`: the header (not reserved, distinct from the drain headers), and
/// fallbacks only where Envoy can use them (override_host's fallback list; original_dst has a
/// single address).
fn validate_routing(p: &str, r: &RawRouting, drain: &DrainConfig) -> Result<(), ConfigError> {
    if !valid_header(&r.header) {
        return Err(at(p, "routing.header", "must be a lowercase header name ([a-z0-9-_]+)"));
    }
    unreserved_header(&format!("{p}.routing.header"), &r.header)?;
    if r.header == drain.header {
        return Err(at(p, "routing.header", format!("'{}' is already drain.header; use another name", r.header)));
    }
    if drain.pin_header.as_deref() == Some(r.header.as_str()) {
        return Err(at(p, "routing.header", format!("'{}' is already drain.pin_header; use another name", r.header)));
    }
    if r.fallbacks > 16 {
        return Err(at(p, "routing.fallbacks", "must be between 0 and 16"));
    }
    if r.mode == RoutingMode::OriginalDst && r.fallbacks != 2 && r.fallbacks != 0 {
        return Err(at(
            p,
            "routing.fallbacks",
            "original_dst routes to a single address; fallbacks need mode override_host",
        ));
    }
    Ok(())
}

/// `services[i].warmup`: defaults, scale and the warmup curve.
fn validate_warmup(p: &str, w: &RawWarmup) -> Result<(), ConfigError> {
    if w.default_warmup_ms < 0 {
        return Err(at(p, "warmup.default_warmup_ms", "must be >= 0 (ms)"));
    }
    if w.default_weight < 0 {
        return Err(at(p, "warmup.default_weight", "must be >= 0"));
    }
    if !(w.weight_scale.is_finite() && w.weight_scale > 0.0 && w.weight_scale <= 1e6) {
        return Err(at(p, "warmup.weight_scale", "must be a number in (0, 1000000]"));
    }
    if !(w.curve.aggression.is_finite() && w.curve.aggression > 0.0 && w.curve.aggression <= 100.0) {
        return Err(at(p, "warmup.curve.aggression", "must be a number in (0, 100]"));
    }
    if !(0.0..=100.0).contains(&w.curve.min_weight_percent) {
        return Err(at(p, "warmup.curve.min_weight_percent", "must be between 0 and 100"));
    }
    Ok(())
}

/// `services[i].outlier_detection`, with the ranges Envoy's own outlier detection accepts
/// where the field shares its name.
fn validate_outlier_detection(p: &str, od: &OutlierDetection) -> Result<(), ConfigError> {
    if !(1000..=3_600_000).contains(&od.base_ejection_time_ms) {
        return Err(at(p, "outlier_detection.base_ejection_time_ms", "must be between 1000 and 3600000 (ms)"));
    }
    if !(od.base_ejection_time_ms..=3_600_000).contains(&od.max_ejection_time_ms) {
        return Err(at(
            p,
            "outlier_detection.max_ejection_time_ms",
            "must be between base_ejection_time_ms and 3600000 (ms)",
        ));
    }
    if od.max_ejection_percent > 100 {
        return Err(at(p, "outlier_detection.max_ejection_percent", "must be between 0 and 100"));
    }
    for (field, n) in [
        ("consecutive_gateway_failure", od.consecutive_gateway_failure),
        ("consecutive_local_origin_failure", od.consecutive_local_origin_failure),
    ] {
        if !(1..=1000).contains(&n) {
            return Err(at(p, &format!("outlier_detection.{field}"), "must be between 1 and 1000"));
        }
    }
    Ok(())
}

/// The `drain` section: header names (not reserved, distinct) and bounded durations.
fn validate_drain(d: RawDrain) -> Result<DrainConfig, ConfigError> {
    if !valid_header(&d.header) {
        return Err(err("drain.header", "must be a lowercase header name ([a-z0-9-_]+)"));
    }
    unreserved_header("drain.header", &d.header)?;
    if let Some(h) = &d.pin_header {
        if !valid_header(h) {
            return Err(err("drain.pin_header", "must be a lowercase header name ([a-z0-9-_]+)"));
        }
        unreserved_header("drain.pin_header", h)?;
        if *h == d.header {
            return Err(err("drain.pin_header", format!("'{h}' is already drain.header; use another name")));
        }
    }
    if d.notify_grace_ms > 600_000 {
        return Err(err("drain.notify_grace_ms", "must be between 0 and 600000 (ms)"));
    }
    if d.retry_after_s > 3600 {
        return Err(err("drain.retry_after_s", "must be between 0 and 3600"));
    }
    Ok(DrainConfig {
        header: d.header,
        retry_after_s: d.retry_after_s,
        pin_header: d.pin_header,
        notify: d.notify,
        notify_grace_ms: d.notify_grace_ms as i64,
    })
}

/// The `inbound` section: present exactly in `mode: inbound`; names a configured service and
/// this instance's own `ip:port` (`${VAR}` expanded from the environment).
fn validate_inbound(
    mode: Mode,
    inbound: Option<RawInbound>,
    services: &[ServiceConfig],
    registries: &[RegistryConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<InboundConfig>, ConfigError> {
    match (mode, inbound) {
        (Mode::Inbound, None) => {
            Err(err("inbound", "mode \"inbound\" needs {\"service\": NAME, \"self_address\": \"ip:port\"}"))
        }
        (Mode::Outbound, Some(_)) => Err(err("inbound", "only allowed with \"mode\": \"inbound\"")),
        (Mode::Outbound, None) => Ok(None),
        (Mode::Inbound, Some(ib)) => {
            let Some(service) = services.iter().position(|s| s.name == ib.service) else {
                return Err(err("inbound.service", format!("unknown service '{}'", ib.service)));
            };
            let expanded = expand(&ib.self_address, env).map_err(|m| err("inbound.self_address", m))?;
            let Some(self_address) = canonical_addr(&expanded) else {
                return Err(err(
                    "inbound.self_address",
                    format!("must be ip:port (IPv6 as [addr]:port), got '{expanded}'"),
                ));
            };
            let svc = services.get(service).ok_or_else(|| err("inbound.service", "unknown service"))?;
            let warmup_ms = ib.warmup_ms.unwrap_or(svc.query.build.default_warmup_ms);
            if !(1000..=86_400_000).contains(&warmup_ms) {
                return Err(err("inbound.warmup_ms", "must be between 1000 and 86400000 (ms)"));
            }
            let registration = ib.registration.map(|r| validate_registration(r, svc, registries)).transpose()?;
            let self_warm = match (ib.self_warm, &registration) {
                (Some(_), None) => {
                    return Err(err("inbound.self_warm", "needs inbound.registration (it runs before registering)"))
                }
                (sw, _) => sw.map(validate_self_warm).transpose()?,
            };
            if let Some(a) = &ib.admission {
                if !(1..=1_000_000).contains(&a.max_rps) {
                    return Err(err("inbound.admission.max_rps", "must be between 1 and 1000000"));
                }
                if !(2..=10).contains(&a.cold_factor) {
                    return Err(err("inbound.admission.cold_factor", "must be between 2 and 10"));
                }
                if a.max_rps < a.cold_factor {
                    // the cold rate max_rps / cold_factor would admit nothing, and a bucket that
                    // admits nothing never warms (as in Sentinel)
                    return Err(err(
                        "inbound.admission.max_rps",
                        "must be at least cold_factor (the cold rate is max_rps / cold_factor per second)",
                    ));
                }
            }
            Ok(Some(InboundConfig {
                service,
                self_address,
                warmup_ms,
                registration,
                self_warm,
                admission: ib.admission,
            }))
        }
    }
}

fn validate_registration(
    r: RawRegistration,
    svc: &ServiceConfig,
    registries: &[RegistryConfig],
) -> Result<RegistrationConfig, ConfigError> {
    const P: &str = "inbound.registration";
    match registries.get(svc.registry).map(|r| &r.kind) {
        Some(RegistryKind::Nacos(_) | RegistryKind::Eureka(_)) => {}
        _ => return Err(err(P, "registers in a nacos or eureka registry only (the service's registry is neither)")),
    }
    if r.local_cluster.is_empty() {
        return Err(at(P, "local_cluster", "must name the Envoy cluster of the application"));
    }
    validate_health_check(&format!("{P}.readiness"), &r.readiness)?;
    if !(1000..=60_000).contains(&r.heartbeat_ms) {
        return Err(at(P, "heartbeat_ms", "must be between 1000 and 60000 (ms)"));
    }
    Ok(RegistrationConfig {
        local_cluster: r.local_cluster,
        readiness: r.readiness,
        heartbeat_ms: r.heartbeat_ms,
        metadata: r.metadata,
    })
}

fn validate_self_warm(sw: RawSelfWarm) -> Result<SelfWarmConfig, ConfigError> {
    const P: &str = "inbound.self_warm";
    if sw.requests.is_empty() {
        return Err(at(P, "requests", "must list at least one request, e.g. \"GET /warm\""));
    }
    let mut requests = Vec::with_capacity(sw.requests.len());
    for (i, r) in sw.requests.iter().enumerate() {
        let (method, path) = r.split_once(' ').unwrap_or(("GET", r));
        if !matches!(method, "GET" | "HEAD" | "POST" | "PUT" | "OPTIONS") || !valid_path(path) {
            return Err(err(
                format!("{P}.requests[{i}]"),
                "must be \"METHOD /path\" (GET, HEAD, POST, PUT or OPTIONS) or \"/path\", without spaces in the path",
            ));
        }
        requests.push((method.to_string(), path.to_string()));
    }
    for (field, n, lo, hi) in [
        ("count", i64::from(sw.count), 1, 100_000),
        ("concurrency", i64::from(sw.concurrency), 1, 64),
        ("timeout_ms", sw.timeout_ms, 10, 60_000),
        ("time_limit_ms", sw.time_limit_ms, 100, 600_000),
    ] {
        if !(lo..=hi).contains(&n) {
            return Err(at(P, field, format!("must be between {lo} and {hi}")));
        }
    }
    Ok(SelfWarmConfig {
        requests,
        count: sw.count,
        concurrency: sw.concurrency,
        timeout_ms: sw.timeout_ms,
        time_limit_ms: sw.time_limit_ms,
    })
}

fn validate_health_check(p: &str, hc: &HealthCheck) -> Result<(), ConfigError> {
    if !valid_path(&hc.path) {
        return Err(at(p, "path", "must start with '/' and hold no spaces, control characters or '#'"));
    }
    if hc.expected_statuses.is_empty()
        || hc.expected_statuses.iter().any(|(lo, hi)| !(100..=599).contains(lo) || hi <= lo || *hi > 600)
    {
        return Err(err(
            format!("{p}.expected_statuses"),
            "must be [start, end) ranges within 100..600, e.g. [[200, 300]]",
        ));
    }
    if !(100..=3_600_000).contains(&hc.interval_ms) {
        return Err(at(p, "interval_ms", "must be between 100 and 3600000 (ms)"));
    }
    if !(10..=hc.interval_ms).contains(&hc.timeout_ms) {
        return Err(at(p, "timeout_ms", "must be between 10 ms and interval_ms"));
    }
    for (field, n) in [("unhealthy_threshold", hc.unhealthy_threshold), ("healthy_threshold", hc.healthy_threshold)] {
        if !(1..=100).contains(&n) {
            return Err(at(p, field, "must be between 1 and 100"));
        }
    }
    Ok(())
}

/// A path Envoy will accept in `:path`: absolute, no whitespace, controls or fragment.
fn valid_path(p: &str) -> bool {
    p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#')
}

fn registry(p: &str, r: &RawRegistry) -> Result<RegistryKind, ConfigError> {
    if r.cluster.is_empty() {
        return Err(at(p, "cluster", "must name the Envoy cluster of the registry"));
    }
    if r.authority.is_empty() || r.authority.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return Err(at(p, "authority", "must be host[:port] (the :authority of registry requests)"));
    }
    if !(10..=900_000).contains(&r.timeout_ms) {
        return Err(at(p, "timeout_ms", "must be between 10 and 900000 (ms)"));
    }
    if !(1024..=(256 << 20)).contains(&r.max_body_bytes) {
        return Err(at(p, "max_body_bytes", "must be between 1024 and 268435456"));
    }
    let ep = Endpoint { authority: r.authority.clone(), timeout_ms: r.timeout_ms, max_body_bytes: r.max_body_bytes };
    use RegistryType::{Consul as C, Eureka as E, Nacos as N, Static as S};
    let fields: [(&str, bool, &[RegistryType]); 8] = [
        ("api", r.api.is_some(), &[N]),
        ("username", r.username.is_some(), &[N]),
        ("password", r.password.is_some(), &[N]),
        ("token", r.token.is_some(), &[C]),
        ("wait_s", r.wait_s.is_some(), &[C]),
        ("address", r.address.is_some(), &[C]),
        ("path_prefix", r.path_prefix.is_some(), &[E]),
        ("path", r.path.is_some(), &[S]),
    ];
    for (field, set, applies) in fields {
        if set && !applies.contains(&r.kind) {
            return Err(at(p, field, format!("does not apply to a {} registry", r.kind.name())));
        }
    }
    let kind = match r.kind {
        N => {
            let api = match r.api.as_deref() {
                None | Some("auto") => None,
                Some("v1") => Some(Api::V1),
                Some("v2") => Some(Api::V2),
                Some("v3") => Some(Api::V3),
                Some(other) => {
                    return Err(at(p, "api", format!("'{other}' is not one of \"auto\", \"v1\", \"v2\", \"v3\"")))
                }
            };
            let auth = match (&r.username, &r.password) {
                (Some(u), Some(pw)) if !u.is_empty() => Some(Credentials { username: u.clone(), password: pw.clone() }),
                (None, None) => None,
                (Some(_), None) => return Err(at(p, "password", "is required with username")),
                _ => return Err(at(p, "username", "is required (non-empty) with password")),
            };
            RegistryKind::Nacos(Nacos::new(ep, api, auth))
        }
        E => {
            let prefix = r.path_prefix.clone().unwrap_or_else(|| "/eureka".into());
            if !valid_path(&prefix) {
                return Err(err(
                    format!("{p}.path_prefix"),
                    "must start with '/' and hold no spaces, control characters, '?' or '#'",
                ));
            }
            RegistryKind::Eureka(Eureka::new(ep, prefix.trim_end_matches('/').to_string()))
        }
        C => {
            // blocking queries by default; a blocking request's timeout is timeout_ms + wait + wait/16
            let wait = r.wait_s.unwrap_or(30);
            if wait > 600 {
                return Err(err(
                    format!("{p}.wait_s"),
                    "must be between 0 and 600 (Consul caps blocking queries at 10 minutes)",
                ));
            }
            let mut consul = Consul::new(ep, r.token.clone(), wait);
            if let Some(a) = &r.address {
                let Some(choice) = crate::registry::consul::Address::parse(a) else {
                    return Err(at(
                        p,
                        "address",
                        "must be \"service\", \"node\" or a TaggedAddresses name such as \"wan\"",
                    ));
                };
                consul.address = choice;
            }
            RegistryKind::Consul(consul)
        }
        S => {
            let Some(path) = r.path.clone().filter(|x| valid_path(x)) else {
                return Err(err(
                    format!("{p}.path"),
                    "is required for a static registry, must start with '/' and hold no spaces, control characters or '#' ({service} is replaced by the service name)",
                ));
            };
            RegistryKind::Static(StaticJson { endpoint: ep, path })
        }
    };
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const FULL: &str = r#"{
      "mode": "outbound",
      "registries": {
        "nacos": {"type": "nacos", "cluster": "nacos", "authority": "127.0.0.1:8848", "timeout_ms": 1500,
                  "max_body_bytes": 1048576, "api": "v1", "username": "nacos", "password": "secret"},
        "eureka": {"type": "eureka", "cluster": "eureka", "authority": "eureka:8761", "path_prefix": "/eureka/"},
        "consul": {"type": "consul", "cluster": "consul", "authority": "consul:8500", "token": "t", "wait_s": 30, "timeout_ms": 35000},
        "cp": {"type": "static", "cluster": "cp", "authority": "cp", "path": "/m/{service}.json"}
      },
      "services": [
        {"name": "orders", "registry": "nacos", "registry_service": "providers:com.acme.Orders::",
         "group": "DEFAULT_GROUP", "namespace": "prod", "clusters": ["DEFAULT"],
         "match_clusters": ["orders", "orders-canary"],
         "routing": {"mode": "override_host", "header": "x-lossless-upstream", "fallbacks": 3},
         "policy": "round_robin",
         "warmup": {"default_warmup_ms": 120000, "default_weight": 100, "weight_scale": 100,
                    "curve": {"aggression": 1.0, "min_weight_percent": 0},
                    "metadata_keys": {"start_time": [{"key": "timestamp", "unit": "ms"}], "warmup": [{"key": "warmup", "unit": "ms"}], "weight": ["weight"], "drain": []}},
         "guard": {"protect_threshold": 0.5, "max_drop": 0.4, "confirm_refreshes": 2}},
        {"name": "users", "registry": "eureka", "registry_service": "USERS", "routing": {"mode": "original_dst", "header": "x-dst", "fallbacks": 0}},
        {"name": "billing", "registry": "consul", "tag": "v2", "dc": "dc1"},
        {"name": "static", "registry": "cp"}
      ],
      "refresh_interval_ms": 500,
      "jitter_percent": 20,
      "weight_refresh_ms": 50,
      "drain": {"header": "x-drain", "retry_after_s": 2, "pin_header": "x-pin", "notify": true},
      "admin": {"path_prefix": "/_lossless"}
    }"#;

    #[test]
    fn full_example_parses() {
        let c = parse(FULL.as_bytes()).unwrap();
        assert_eq!(c.registries.len(), 4);
        assert_eq!(c.services.len(), 4);
        let o = &c.services[0];
        assert_eq!(o.query.service, "providers:com.acme.Orders::");
        assert_eq!(o.query.group.as_deref(), Some("DEFAULT_GROUP"));
        assert_eq!((o.routing, o.fallbacks, o.policy), (RoutingMode::OverrideHost, 3, Policy::RoundRobin));
        assert_eq!(o.guard.confirm_refreshes, 2);
        assert_eq!(c.service_for_cluster("orders-canary"), Some(0));
        assert_eq!(c.service_for_cluster("users"), Some(1));
        assert_eq!(c.service_for_cluster("nope"), None);
        assert_eq!(c.services[1].routing, RoutingMode::OriginalDst);
        assert_eq!(c.services[1].fallbacks, 0);
        assert_eq!(
            (c.settings.refresh_interval_ms, c.settings.jitter_percent, c.settings.weight_refresh_ms),
            (500, 20, 50)
        );
        assert_eq!(c.settings.drain.pin_header.as_deref(), Some("x-pin"));
        assert_eq!(c.settings.admin_prefix, "/_lossless");
        assert_eq!(c.services[0].query.build.default_warmup_ms, 120_000);
        assert_eq!(c.services[1].query.build.default_warmup_ms, 600_000, "warmup defaults are per service");
        let reg = &c.registries[c.services[0].registry];
        assert_eq!(reg.cluster, "nacos");
        match &reg.kind {
            RegistryKind::Nacos(n) => {
                assert_eq!(n.endpoint.timeout_ms, 1500);
                assert!(n.auth.is_some());
                // credentials never print
                assert!(!format!("{n:?}").contains("secret"));
            }
            other => panic!("{other:?}"),
        }
        match &c.registries[c.services[1].registry].kind {
            RegistryKind::Eureka(e) => assert_eq!(e.prefix, "/eureka"),
            other => panic!("{other:?}"),
        }
    }

    /// Consul: blocking queries by default (a 30 s wait, with the default 2 s timeout on top of
    /// it), `wait_s: 0` polls; `address` picks which address of an entry is used.
    #[test]
    fn consul_defaults_and_address() {
        use crate::registry::consul::Address as ConsulAddress;
        let consul = |extra: &str| {
            let text = format!(
                r#"{{"registries":{{"c":{{"type":"consul","cluster":"c","authority":"a"{extra}}}}},"services":[{{"name":"d","registry":"c"}}]}}"#
            );
            match parse(text.as_bytes()).unwrap().registries.remove(0).kind {
                RegistryKind::Consul(c) => c,
                other => panic!("{other:?}"),
            }
        };
        let c = consul("");
        assert_eq!((c.wait_s, c.endpoint.timeout_ms, &c.address), (30, 2000, &ConsulAddress::Service));
        assert!(c.long_poll());
        assert_eq!(consul(r#","wait_s":0"#).wait_s, 0);
        // a timeout shorter than the wait is fine: it is added to the wait
        assert_eq!(consul(r#","wait_s":600,"timeout_ms":100"#).wait_s, 600);
        assert_eq!(consul(r#","address":"wan""#).address, ConsulAddress::Tagged("wan".into()));
        assert_eq!(consul(r#","address":"node""#).address, ConsulAddress::Node);
        assert_eq!(consul(r#","address":"service""#).address, ConsulAddress::Service);
    }

    #[test]
    fn minimal_example_parses_with_defaults() {
        let c = parse(MINIMAL_EXAMPLE.as_bytes()).unwrap();
        let s = &c.services[0];
        assert_eq!((s.routing, s.fallbacks, s.header.as_str()), (RoutingMode::OverrideHost, 2, "x-lossless-upstream"));
        assert_eq!(s.policy, Policy::RoundRobin);
        assert_eq!(s.match_clusters, vec!["demo".to_string()]);
        assert_eq!(
            (c.settings.refresh_interval_ms, c.settings.drain.header.as_str(), c.settings.drain.retry_after_s),
            (1000, "x-lossless-drain", 1)
        );
        assert_eq!(c.settings.mode, Mode::Outbound);
    }

    /// Only the names HTTP or Envoy owns are refused: other `x-envoy-*` names (an ORIGINAL_DST
    /// cluster may read `x-envoy-original-dst-host`) and distinct drain headers are accepted.
    #[test]
    fn routing_headers_outside_the_reserved_list() {
        let c = parse(
            br#"{"drain":{"header":"x-d","pin_header":"x-p"},"admin":{"path_prefix":"/_ops/lossless-1.0~x"},
            "registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},
            "services":[{"name":"d","registry":"n","routing":{"mode":"original_dst","header":"x-envoy-original-dst-host"}}]}"#,
        )
        .unwrap();
        assert_eq!(c.services[0].header, "x-envoy-original-dst-host");
        assert_eq!(c.settings.admin_prefix, "/_ops/lossless-1.0~x");
        for h in RESERVED_HEADERS {
            assert!(valid_header(h), "{h} would already be refused as a name");
        }
    }

    #[test]
    fn inbound_mode() {
        let c = parse(
            br#"{"mode":"inbound","inbound":{"service":"demo","self_address":"127.0.0.1:9001"},
            "registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"demo","registry":"n"}]}"#,
        )
        .unwrap();
        let ib = c.settings.inbound.unwrap();
        assert_eq!((ib.service, ib.self_address.as_str()), (0, "127.0.0.1:9001"));
    }

    #[test]
    fn inbound_address_from_the_environment() {
        let json = br#"{"mode":"inbound","inbound":{"service":"demo","self_address":"${INSTANCE_IP}:8080"},
            "registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"demo","registry":"n"}]}"#;
        let env = |k: &str| (k == "INSTANCE_IP").then(|| "10.1.2.3".to_string());
        let c = parse_with_env(json, &env).unwrap();
        assert_eq!(c.settings.inbound.unwrap().self_address, "10.1.2.3:8080");
        let e = parse(json).unwrap_err();
        assert_eq!(e.path, "inbound.self_address");
        assert!(e.message.contains("${INSTANCE_IP}") && e.message.contains("not set"), "{e}");
        let bad_env = |_: &str| Some("not-an-ip".to_string());
        assert!(parse_with_env(json, &bad_env).unwrap_err().message.contains("got 'not-an-ip:8080'"));
        assert_eq!(expand("${A", &|_| None), Err("has an unclosed ${".into()));
        assert_eq!(expand("x${A}y${B}z", &|k| Some(k.to_lowercase())), Ok("xaybz".into()));
    }

    fn bad(json: &str) -> ConfigError {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e,
        }
    }

    fn with_service(extra: &str) -> String {
        format!(
            r#"{{"registries":{{"n":{{"type":"nacos","cluster":"n","authority":"a"}}}},"services":[{{"name":"demo","registry":"n"{extra}}}]}}"#
        )
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("".into(), "", "a minimal valid one is"),
            ("  \n".into(), "", "the configuration is empty"),
            ("{".into(), "", "EOF while parsing"),
            (r#"{"registries":{},"services":[]}"#.into(), "registries", "at least one registry"),
            (with_service(r#","routing":{"mode":"nearest"}"#), "services[0].routing.mode", "unknown variant `nearest`, expected `override_host` or `original_dst`"),
            (with_service(r#","wieght":3"#), "services[0].wieght", "unknown field `wieght`"),
            (with_service(r#","registry":"x""#), "services[0].registry", "duplicate field `registry`"),
            (r#"{"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"demo","registry":"zk"}]}"#.into(), "services[0].registry", "unknown registry 'zk'; defined: n"),
            (with_service(r#","warmup":{"default_warmup_ms":-1}"#), "services[0].warmup.default_warmup_ms", "must be >= 0"),
            (with_service(r#","warmup":{"curve":{"aggression":0}}"#), "services[0].warmup.curve.aggression", "(0, 100]"),
            (with_service(r#","routing":{"header":"X-Bad Header"}"#), "services[0].routing.header", "lowercase header name"),
            (with_service(r#","routing":{"fallbacks":"two"}"#), "services[0].routing.fallbacks", "invalid type: string \"two\", expected usize"),
            (with_service(r#","tag":"v1""#), "services[0].tag", "does not apply to a nacos registry"),
            (with_service(r#","guard":{"protect_threshold":1.5}"#), "services[0].guard.protect_threshold", "between 0 and 1"),
            (with_service(r#","outlier_detection":{"max_ejection_percent":101}"#), "services[0].outlier_detection.max_ejection_percent", "between 0 and 100"),
            (with_service(r#","outlier_detection":{"base_ejection_time_ms":60000,"max_ejection_time_ms":1000}"#), "services[0].outlier_detection.max_ejection_time_ms", "between base_ejection_time_ms"),
            (with_service(r#","outlier_detection":{"consecutive_gateway_failure":0}"#), "services[0].outlier_detection.consecutive_gateway_failure", "between 1 and 1000"),
            (with_service(r#","outlier_detection":{"interval_ms":1}"#), "services[0].outlier_detection.interval_ms", "unknown field `interval_ms`"),
            (with_service(r#","health_check":{"path":"health"}"#), "services[0].health_check.path", "must start with '/'"),
            (with_service(r#","health_check":{"timeout_ms":9000,"interval_ms":1000}"#), "services[0].health_check.timeout_ms", "between 10 ms and interval_ms"),
            (with_service(r#","health_check":{"expected_statuses":[[300,200]]}"#), "services[0].health_check.expected_statuses", "[start, end) ranges"),
            (with_service(r#","health_check":{"type":"grpc"}"#), "services[0].health_check.type", "unknown variant `grpc`"),
            (with_service(r#","health_check":{"unhealthy_threshold":0}"#), "services[0].health_check.unhealthy_threshold", "between 1 and 100"),
            (r#"{"refresh_interval_ms":5,"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "refresh_interval_ms", "between 100 and 3600000"),
            (r#"{"registries":{"n":{"type":"zookeeper","cluster":"n","authority":"a"}},"services":[]}"#.into(), "registries.n.type", "unknown variant `zookeeper`"),
            (r#"{"registries":{"n":{"type":"nacos","cluster":"n","authority":"a","api":"v4"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "registries.n.api", "'v4' is not one of"),
            (r#"{"registries":{"n":{"type":"nacos","cluster":"n","authority":"a","username":"u"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "registries.n.password", "required with username"),
            (r#"{"registries":{"c":{"type":"consul","cluster":"c","authority":"a","address":"w a n"}},"services":[{"name":"d","registry":"c"}]}"#.into(), "registries.c.address", "a TaggedAddresses name"),
            (r#"{"registries":{"c":{"type":"consul","cluster":"c","authority":"a","address":""}},"services":[{"name":"d","registry":"c"}]}"#.into(), "registries.c.address", "must be \"service\""),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","address":"wan"}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.address", "does not apply to a eureka registry"),
            (r#"{"registries":{"c":{"type":"consul","cluster":"c","authority":"a","wait_s":601}},"services":[{"name":"d","registry":"c"}]}"#.into(), "registries.c.wait_s", "between 0 and 600"),
            (r#"{"registries":{"s":{"type":"static","cluster":"s","authority":"a"}},"services":[{"name":"d","registry":"s"}]}"#.into(), "registries.s.path", "is required for a static registry"),
            (r#"{"registries":{"n":{"type":"nacos","cluster":"","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "registries.n.cluster", "must name the Envoy cluster"),
            (r#"{"mode":"inbound","registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "inbound", "needs {\"service\""),
            (r#"{"mode":"inbound","inbound":{"service":"d","self_address":"localhost:80"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "inbound.self_address", "must be ip:port"),
            (r#"{"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"},{"name":"d","registry":"n"}]}"#.into(), "services[1].name", "duplicate service name 'd'"),
            (r#"{"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"},{"name":"e","registry":"n","match_clusters":["d"]}]}"#.into(), "services[1].match_clusters[0]", "already matched"),
            (r#"{"registries":{"n":{"type":"nacos","authority":"a"}},"services":[]}"#.into(), "registries.n", "missing field `cluster`"),
            (with_service(r#","warmup":{"metadata_keys":{"start_time":[{"key":"a","unit":"ms"},{"key":"b","unit":"hours"}]}}"#), "services[0].warmup.metadata_keys.start_time[1].unit", "unknown variant `hours`"),
            ("{\n  \"registries\": {\"n\": {\"type\": \"nacos\", \"cluster\": \"n\", \"authority\": \"a\"}},\n  \"services\": [\n    {\"name\": \"d\", \"registry\": \"n\"},\n    {\"name\": \"e\", \"registry\": \"n\", \"policy\": \"least\\\"conn\"}\n  ]\n}".into(), "services[1].policy", "unknown variant"),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","path_prefix":"/eu reka"}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.path_prefix", "no spaces"),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","token":"t"}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.token", "does not apply to a eureka registry"),
            (r#"{"drain":{"header":""},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "drain.header", "lowercase header name"),
            (with_service(r#","routing":{"header":"x-lossless-drain"}"#), "services[0].routing.header", "'x-lossless-drain' is already drain.header"),
            (r#"{"drain":{"pin_header":"x-pin"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n","routing":{"header":"x-pin"}}]}"#.into(), "services[0].routing.header", "'x-pin' is already drain.pin_header"),
            (r#"{"drain":{"header":"x-d","pin_header":"x-d"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "drain.pin_header", "'x-d' is already drain.header"),
            (with_service(r#","routing":{"header":"host"}"#), "services[0].routing.header", "'host' is a header HTTP or Envoy itself uses"),
            (with_service(r#","routing":{"header":"x-envoy-attempt-count"}"#), "services[0].routing.header", "HTTP or Envoy itself uses"),
            (r#"{"drain":{"header":"connection"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "drain.header", "'connection' is a header HTTP or Envoy"),
            (r#"{"drain":{"pin_header":"x-lossless-unreached"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "drain.pin_header", "'x-lossless-unreached' is a header"),
            (r#"{"admin":{"path_prefix":"/lossless?x"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "admin.path_prefix", "only letters, digits and '/', '_', '.', '~', '-'"),
            (r#"{"admin":{"path_prefix":"/a b"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "admin.path_prefix", "only letters, digits"),
            (r#"{"admin":{"path_prefix":"lossless"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n"}]}"#.into(), "admin.path_prefix", "must start with '/'"),
            (with_service(r#","registry_service":"""#), "services[0].registry_service", "must not be empty"),
            (with_service(r#","registry_service":"  ""#), "services[0].registry_service", "must not be empty"),
            (r#"{"registries":{"":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":""}]}"#.into(), "registries.\"\"", "a registry name must not be empty"),
            (with_service(r#","guard":{"confirm_refreshes":0}"#), "services[0].guard.confirm_refreshes", "between 1 and 100"),
            (with_service(r#","guard":{"confirm_refreshes":101}"#), "services[0].guard.confirm_refreshes", "between 1 and 100"),
        ];
        for (json, path, msg) in cases {
            let e = bad(&json);
            assert_eq!(e.path, path, "path for {json}: {e}");
            assert!(e.message.contains(msg), "message for {json}: got '{}', want '{msg}'", e.message);
            let shown = e.to_string();
            if !path.is_empty() {
                assert!(shown.contains(&format!("`{path}`")), "{shown}");
            }
        }
    }
}
