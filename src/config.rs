//! The plugin configuration: JSON deserialized by serde derive, one type per section with its
//! defaults beside it and unknown fields refused, then validated section by section into a typed
//! [`Config`]. Every error names the field's path (`services[0].routing.mode`), found by
//! `serde_path_to_error` for what serde refuses and by the checks for the rest.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_path_to_error::Segment;

use crate::balancer::Policy;
use crate::health::{CheckKind, HealthCheck, OutlierDetection};
use crate::instance::{canonical_addr, BuildOptions, MetaKey, MetadataKeys, Unit};
use crate::membership::{Grace, Guard};
use crate::push::{PushConfig, PushMode};
use crate::registry::nacos::{Api, Credentials};
use crate::registry::{
    consul::Consul, eureka::Eureka, nacos::Nacos, static_json::StaticJson, Adapter, Endpoint, ServiceQuery,
};
use crate::stall::StallDetection;
use crate::warmup::{Curve, OverloadProtection};

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
// The validated configuration

/// A registry endpoint and the adapter that talks to it.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub name: String,
    /// Envoy cluster that `dispatch_http_call` targets.
    pub cluster: String,
    pub kind: RegistryKind,
    /// Nacos with a `grpc_cluster` and `push` not `off`: membership pushed over gRPC
    /// ([`crate::push`]).
    pub push: Option<PushConfig>,
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
    /// `routing.no_membership_addresses` (original_dst only): canonical `ip:port` addresses one of
    /// which is written as the pick while the service has never had a membership (snapshot
    /// version 0); empty: such a request is refused (`no_membership`).
    pub no_membership_addresses: Vec<String>,
    pub policy: Policy,
    pub curve: Curve,
    /// `warmup.overload_protection`: warm-up stops while too many instances warm at once
    /// ([`OverloadProtection`]); `None` (absent, the default) keeps every instance on its curve.
    pub overload_protection: Option<OverloadProtection>,
    pub guard: Guard,
    /// How long the registry may take to settle after a restart, and how long a departure is
    /// remembered (`guard.reregister_ms`, `guard.departure_memory_ms`).
    pub grace: Grace,
    pub outlier_detection: OutlierDetection,
    /// Active health checking, when configured.
    pub health_check: Option<HealthCheck>,
    /// Transparent mode: callers' own picks of this service's instances are corrected, when
    /// configured ([`crate::transparent`]).
    pub transparent: Option<TransparentConfig>,
    /// Stall detection from the traffic ([`crate::stall`]).
    pub stall_detection: StallDetection,
}

/// `services[i].transparent`: the settings of transparent mode for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct TransparentConfig {
    /// Defaults per registry kind ([`crate::transparent::Settings::for_registry`]).
    pub settings: crate::transparent::Settings,
    /// `:path` prefixes whose requests keep the caller's own pick (metrics scrapes, actuator
    /// calls, anything meant for one instance).
    pub exclude_paths: Vec<String>,
}

/// `capture`: where transparent mode looks at requests (present when a service sets
/// `transparent`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureConfig {
    /// Envoy clusters (`xds.cluster_name`) of captured requests: the request's destination
    /// (`destination.address`) is the caller's own pick. Default `["PassthroughCluster"]`, the
    /// name Istio and the shipped capture template give it.
    pub match_clusters: Vec<String>,
    /// Set to the service's name on a captured request lossless routes, for a route that matches
    /// it (the Istio recipe re-matches the request to the service's own cluster); not set when
    /// absent. Removed from every client request like the routing headers.
    pub service_header: Option<String>,
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
/// ([`crate::admission`]). Read as it is configured; checked by `validate_admission`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Requests per second once warm (Sentinel's `count`).
    pub max_rps: u32,
    /// The cold rate is `max_rps / cold_factor` (default 3, Sentinel's `coldFactor`).
    #[serde(default = "d_cold_factor")]
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
    /// Transparent mode's capture settings: `Some` exactly when a service sets `transparent`.
    pub capture: Option<CaptureConfig>,
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

/// Which side of an instance the filter sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// On a caller (gateway or client sidecar): picks upstream instances.
    #[default]
    Outbound,
    /// On an instance's own sidecar: drains it.
    Inbound,
}

/// How the pick reaches Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    /// `primary,fallback1,...` in a header read by the `override_host` LB policy.
    OverrideHost,
    /// The single address in a header read by an `ORIGINAL_DST` cluster.
    OriginalDst,
}

// ---------------------------------------------------------------------------------------------
// Parsing

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
    validate(read(bytes)?, env)
}

/// Deserializes the document into [`Raw`]. The first error in the document is returned: a syntax
/// error with serde_json's message and position, anything else with serde's message; both with
/// the path `serde_path_to_error` tracked to it.
fn read(bytes: &[u8]) -> Result<Raw, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut segments: Vec<Segment> = e.path().iter().cloned().collect();
        let e = e.into_inner();
        let data = e.classify() == serde_json::error::Category::Data;
        let mut message = e.to_string();
        if data {
            // the path says where; serde_json's " at line L column C" only repeats it
            let position = format!(" at line {} column {}", e.line(), e.column());
            if let Some(n) = message.strip_suffix(&position).map(str::len) {
                message.truncate(n);
            }
        }
        // serde reports a duplicate field at the enclosing object, and any error inside a
        // registry section at the section (see `registry_field_at_fault`): complete the path.
        let field = named_field(&message).map(str::to_owned).or_else(|| match segments.as_slice() {
            // a missing field is the section's, and rightly reported there
            [Segment::Map { key: top }, Segment::Map { key: name }]
                if data && top == "registries" && !message.starts_with("missing field") =>
            {
                registry_field_at_fault(bytes, name, &message)
            }
            _ => None,
        });
        if let Some(field) = field {
            if !matches!(segments.last(), Some(Segment::Map { key }) if *key == field) {
                segments.push(Segment::Map { key: field });
            }
        }
        err(dotted(&segments), message)
    })?;
    de.end().map_err(|e| err("", e.to_string()))?;
    Ok(raw)
}

/// The field serde's message names: `unknown field `x`, ...`, `duplicate field `x``.
fn named_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("duplicate field `"))?;
    rest.split('`').next()
}

/// The field of `registries.NAME` whose value serde refused with `message`. A registry section is
/// internally tagged on `type`, so serde reads it from a buffer where `serde_path_to_error` does
/// not see which field fails; after such an error, the section's fields are read again one at a
/// time, and the first one refused with the same message is the one named.
fn registry_field_at_fault(bytes: &[u8], name: &str, message: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let section = doc.get("registries")?.get(name)?.as_object()?;
    let kind = section.get("type")?.as_str()?;
    let refused = |one: &serde_json::Value| {
        let e = match kind {
            "nacos" => RawNacos::deserialize(one).err(),
            "eureka" => RawEureka::deserialize(one).err(),
            "consul" => RawConsul::deserialize(one).err(),
            "static" => RawStatic::deserialize(one).err(),
            _ => None,
        };
        e.is_some_and(|e| e.to_string() == message)
    };
    section.iter().filter(|(k, _)| *k != "type").find_map(|(k, v)| {
        let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
        refused(&one).then(|| k.clone())
    })
}

/// `services[0].routing.mode` from the path's segments.
fn dotted(segments: &[Segment]) -> String {
    let mut path = String::new();
    for s in segments {
        match s {
            Segment::Map { key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Seq { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
            Segment::Enum { .. } | Segment::Unknown => {}
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

// ---------------------------------------------------------------------------------------------
// The document: the top-level settings, then one section per type below, each with its checks.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    mode: Mode,
    registries: BTreeMap<String, RawRegistry>,
    services: Vec<RawService>,
    #[serde(default = "d_refresh")]
    refresh_interval_ms: u64,
    #[serde(default = "d_jitter")]
    jitter_percent: u32,
    #[serde(default = "d_weight_refresh")]
    weight_refresh_ms: u64,
    #[serde(default)]
    drain: RawDrain,
    inbound: Option<RawInbound>,
    #[serde(default)]
    admin: RawAdmin,
    capture: Option<RawCapture>,
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
        kinds.push(r.kind());
        let p = format!("registries.{name}");
        let (cluster, kind, push) = r.validate(&p)?;
        if let Some(x) = &push {
            if let Some(other) = registries.iter().find(|o| same_grpc_cluster(o, x)) {
                return Err(at(
                    &p,
                    "grpc_cluster",
                    format!(
                        "'{}' is already the grpc_cluster of registry '{}' (one push session per cluster)",
                        x.cluster, other.name
                    ),
                ));
            }
        }
        registries.push(RegistryConfig { name, cluster, kind, push });
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
    let capture = validate_capture(raw.mode, raw.capture, &services, &drain)?;
    Ok(Config {
        settings: Settings {
            mode: raw.mode,
            refresh_interval_ms: raw.refresh_interval_ms,
            jitter_percent: raw.jitter_percent,
            weight_refresh_ms: raw.weight_refresh_ms,
            drain,
            inbound,
            admin_prefix: prefix,
            capture,
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

// ---------------------------------------------------------------------------------------------
// registries.NAME: one section per `type`; a field of another type's section is an unknown field.

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RawRegistry {
    Nacos(RawNacos),
    Eureka(RawEureka),
    Consul(RawConsul),
    Static(RawStatic),
}

/// The kind of a registry, for the service fields that apply to some kinds only.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNacos {
    cluster: String,
    authority: String,
    #[serde(default = "d_timeout")]
    timeout_ms: u64,
    #[serde(default = "d_max_body")]
    max_body_bytes: usize,
    /// `auto` (the default), `v1`, `v2` or `v3`.
    api: Option<String>,
    username: Option<String>,
    password: Option<String>,
    /// The Envoy cluster of Nacos' gRPC port (main port + 1000, HTTP/2): membership is pushed.
    grpc_cluster: Option<String>,
    /// `auto` (the default: push when `grpc_cluster` is set), `on` or `off`.
    #[serde(default)]
    push: RawPush,
    /// The HTTP poll's interval while a service's push subscription is live (ms).
    #[serde(default = "d_reconcile")]
    reconcile_interval_ms: u64,
}

/// `registries.NAME.push` of a Nacos registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawPush {
    #[default]
    Auto,
    On,
    Off,
}

fn d_reconcile() -> u64 {
    30_000
}

/// Whether registry `o` pushes over the same Envoy cluster as `p`.
fn same_grpc_cluster(o: &RegistryConfig, p: &PushConfig) -> bool {
    o.push.as_ref().is_some_and(|q| q.cluster == p.cluster)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEureka {
    cluster: String,
    authority: String,
    #[serde(default = "d_timeout")]
    timeout_ms: u64,
    #[serde(default = "d_max_body")]
    max_body_bytes: usize,
    #[serde(default = "d_eureka_prefix")]
    path_prefix: String,
    /// `application` (the default): one request per configured application per refresh; `delta`:
    /// the registry fetched whole, one delta per `registry_fetch_interval_ms`, as Eureka's client.
    fetch: Option<String>,
    /// With `fetch: "delta"`; default [`D_REGISTRY_FETCH_INTERVAL_MS`].
    registry_fetch_interval_ms: Option<u64>,
}

/// The default interval of a Eureka registry's delta fetch (ms): Eureka's client fetches every
/// 30 s (`registryFetchIntervalSeconds`), and the server's read-only response cache, which
/// answers `/apps/delta` by default, is refreshed every 30 s (`responseCacheUpdateIntervalMs`):
/// asking more often re-reads the same cached answer.
pub const D_REGISTRY_FETCH_INTERVAL_MS: u64 = 30_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsul {
    cluster: String,
    authority: String,
    #[serde(default = "d_timeout")]
    timeout_ms: u64,
    #[serde(default = "d_max_body")]
    max_body_bytes: usize,
    token: Option<String>,
    /// Blocking queries by default; a blocking request's timeout is timeout_ms + wait + wait/16.
    #[serde(default = "d_consul_wait")]
    wait_s: u64,
    /// `service` (the default), `node` or a TaggedAddresses name.
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    cluster: String,
    authority: String,
    #[serde(default = "d_timeout")]
    timeout_ms: u64,
    #[serde(default = "d_max_body")]
    max_body_bytes: usize,
    /// Required: checked with the other fields, so that its message says what it must be.
    path: Option<String>,
}

fn d_timeout() -> u64 {
    2000
}
fn d_max_body() -> usize {
    8 << 20
}
fn d_eureka_prefix() -> String {
    "/eureka".into()
}
fn d_consul_wait() -> u64 {
    30
}

impl RawRegistry {
    fn kind(&self) -> RegistryType {
        match self {
            RawRegistry::Nacos(_) => RegistryType::Nacos,
            RawRegistry::Eureka(_) => RegistryType::Eureka,
            RawRegistry::Consul(_) => RegistryType::Consul,
            RawRegistry::Static(_) => RegistryType::Static,
        }
    }

    /// The Envoy cluster, the adapter and the push settings of the registry at `p`.
    fn validate(self, p: &str) -> Result<(String, RegistryKind, Option<PushConfig>), ConfigError> {
        match self {
            RawRegistry::Nacos(r) => {
                let ep = validate_endpoint(p, &r.cluster, r.authority, r.timeout_ms, r.max_body_bytes)?;
                let api = match r.api.as_deref() {
                    None | Some("auto") => None,
                    Some("v1") => Some(Api::V1),
                    Some("v2") => Some(Api::V2),
                    Some("v3") => Some(Api::V3),
                    Some(other) => {
                        return Err(at(p, "api", format!("'{other}' is not one of \"auto\", \"v1\", \"v2\", \"v3\"")))
                    }
                };
                let auth = match (r.username, r.password) {
                    (Some(username), Some(password)) if !username.is_empty() => {
                        Some(Credentials { username, password })
                    }
                    (None, None) => None,
                    (Some(_), None) => return Err(at(p, "password", "is required with username")),
                    _ => return Err(at(p, "username", "is required (non-empty) with password")),
                };
                let push = validate_push(p, r.push, r.grpc_cluster, r.reconcile_interval_ms, ep.timeout_ms)?;
                Ok((r.cluster, RegistryKind::Nacos(Nacos::new(ep, api, auth)), push))
            }
            RawRegistry::Eureka(r) => {
                let ep = validate_endpoint(p, &r.cluster, r.authority, r.timeout_ms, r.max_body_bytes)?;
                if !valid_path(&r.path_prefix) {
                    return Err(at(
                        p,
                        "path_prefix",
                        "must start with '/' and hold no spaces, control characters, '?' or '#'",
                    ));
                }
                let prefix = r.path_prefix.trim_end_matches('/').to_string();
                let mut eureka = Eureka::new(ep, prefix);
                eureka.delta_interval_ms = validate_eureka_fetch(p, r.fetch.as_deref(), r.registry_fetch_interval_ms)?;
                Ok((r.cluster, RegistryKind::Eureka(eureka), None))
            }
            RawRegistry::Consul(r) => {
                let ep = validate_endpoint(p, &r.cluster, r.authority, r.timeout_ms, r.max_body_bytes)?;
                if r.wait_s > 600 {
                    return Err(at(
                        p,
                        "wait_s",
                        "must be between 0 and 600 (Consul caps blocking queries at 10 minutes)",
                    ));
                }
                let mut consul = Consul::new(ep, r.token, r.wait_s);
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
                Ok((r.cluster, RegistryKind::Consul(consul), None))
            }
            RawRegistry::Static(r) => {
                let ep = validate_endpoint(p, &r.cluster, r.authority, r.timeout_ms, r.max_body_bytes)?;
                let Some(path) = r.path.filter(|x| valid_path(x)) else {
                    return Err(at(
                        p,
                        "path",
                        "is required for a static registry, must start with '/' and hold no spaces, control characters or '#' ({service} is replaced by the service name)",
                    ));
                };
                Ok((r.cluster, RegistryKind::Static(StaticJson { endpoint: ep, path }), None))
            }
        }
    }
}

/// A Eureka registry's `fetch` and `registry_fetch_interval_ms` (at `p`): the delta's interval
/// when it fetches deltas. At most 90 s: the server keeps a change in its delta for 3 minutes
/// (`retentionTimeInMSInDeltaQueue`) and may answer from a cache 30 s old.
fn validate_eureka_fetch(p: &str, fetch: Option<&str>, interval_ms: Option<u64>) -> Result<Option<u64>, ConfigError> {
    match fetch {
        None | Some("application") => match interval_ms {
            Some(_) => Err(at(p, "registry_fetch_interval_ms", "applies with \"fetch\": \"delta\" only")),
            None => Ok(None),
        },
        Some("delta") => {
            let ms = interval_ms.unwrap_or(D_REGISTRY_FETCH_INTERVAL_MS);
            if !(1000..=90_000).contains(&ms) {
                return Err(at(p, "registry_fetch_interval_ms", "must be between 1000 and 90000 (ms)"));
            }
            Ok(Some(ms))
        }
        Some(other) => Err(at(p, "fetch", format!("'{other}' is not one of \"application\", \"delta\""))),
    }
}

/// A Nacos registry's `push`, `grpc_cluster` and `reconcile_interval_ms` (at `p`): the push
/// settings, `None` when it polls only (`push: off`, or `auto` without a `grpc_cluster`).
fn validate_push(
    p: &str,
    push: RawPush,
    grpc_cluster: Option<String>,
    reconcile_interval_ms: u64,
    timeout_ms: u64,
) -> Result<Option<PushConfig>, ConfigError> {
    if !(1000..=3_600_000).contains(&reconcile_interval_ms) {
        return Err(at(p, "reconcile_interval_ms", "must be between 1000 and 3600000 (ms)"));
    }
    let mode = match (push, &grpc_cluster) {
        (RawPush::Off, _) | (RawPush::Auto, None) => return Ok(None),
        (RawPush::On, None) => {
            return Err(at(
                p,
                "push",
                "\"on\" needs grpc_cluster, the Envoy cluster of Nacos' gRPC port (HTTP port + 1000)",
            ))
        }
        (RawPush::Auto, Some(_)) => PushMode::Auto,
        (RawPush::On, Some(_)) => PushMode::On,
    };
    let cluster = grpc_cluster.unwrap_or_default();
    if cluster.is_empty() || crate::push::proto::could_be_message(cluster.as_bytes()) {
        // Envoy reads a gRPC call's cluster name as a serialized GrpcService first: a name that
        // parses as one would be taken for a service without a cluster
        return Err(at(
            p,
            "grpc_cluster",
            format!("'{cluster}' cannot name the gRPC cluster: Envoy would read it as a serialized GrpcService; pick another name (e.g. \"nacos-grpc\")"),
        ));
    }
    Ok(Some(PushConfig { cluster, mode, reconcile_interval_ms, timeout_ms }))
}

/// The fields every registry section has: the Envoy cluster, and the endpoint behind it.
fn validate_endpoint(
    p: &str,
    cluster: &str,
    authority: String,
    timeout_ms: u64,
    max_body_bytes: usize,
) -> Result<Endpoint, ConfigError> {
    if cluster.is_empty() {
        return Err(at(p, "cluster", "must name the Envoy cluster of the registry"));
    }
    if authority.is_empty() || authority.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return Err(at(p, "authority", "must be host[:port] (the :authority of registry requests)"));
    }
    if !(10..=900_000).contains(&timeout_ms) {
        return Err(at(p, "timeout_ms", "must be between 10 and 900000 (ms)"));
    }
    if !(1024..=(256 << 20)).contains(&max_body_bytes) {
        return Err(at(p, "max_body_bytes", "must be between 1024 and 268435456"));
    }
    Ok(Endpoint { authority, timeout_ms, max_body_bytes })
}

// ---------------------------------------------------------------------------------------------
// services[i]. The sections whose type lives in another module (`Policy`, `Curve`,
// `MetadataKeys`, `OutlierDetection`, `HealthCheck`, `StallDetection`) are read through serde's
// remote derive (`...Def`): their fields are listed here with the configuration's shape, their
// defaults are the type's own `Default`. `guard` holds [`Guard`] and [`Grace`] (`RawGuard`).

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    registry: String,
    registry_service: Option<String>,
    group: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    clusters: Vec<String>,
    tag: Option<String>,
    dc: Option<String>,
    #[serde(default)]
    match_clusters: Vec<String>,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default, with = "PolicyDef")]
    policy: Policy,
    #[serde(default)]
    warmup: RawWarmup,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default, with = "OutlierDetectionDef")]
    outlier_detection: OutlierDetection,
    #[serde(default, deserialize_with = "optional_health_check")]
    health_check: Option<HealthCheck>,
    transparent: Option<RawTransparent>,
    #[serde(default, with = "StallDetectionDef")]
    stall_detection: StallDetection,
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
    if registries.get(reg).is_some_and(|r| r.push.is_some()) {
        // Nacos names a pushed list by group and service only: one namespace per name
        let clash = earlier.iter().find(|o| {
            o.registry == reg
                && o.query.service == s.registry_service.as_deref().unwrap_or(&s.name)
                && o.query.group == s.group
                && o.query.namespace != s.namespace
        });
        if let Some(o) = clash {
            return Err(at(
                p,
                "namespace",
                format!("service '{}' has the same group and name in another namespace of a registry with push; use one registry (and grpc_cluster) per namespace", o.name),
            ));
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
    let no_membership_addresses = validate_routing(p, &s.routing, drain)?;
    let w = &s.warmup;
    validate_warmup(p, w)?;
    validate_guard(p, &s.guard)?;
    validate_outlier_detection(p, &s.outlier_detection)?;
    if let Some(hc) = &s.health_check {
        validate_health_check(&format!("{p}.health_check"), hc)?;
    }
    let transparent = s.transparent.map(|t| validate_transparent(p, t, kind)).transpose()?;
    validate_stall_detection(p, &s.stall_detection)?;
    let (guard, grace) = s.guard.split();
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
        no_membership_addresses,
        policy: s.policy,
        curve: s.warmup.curve,
        overload_protection: s.warmup.overload_protection,
        guard,
        grace,
        outlier_detection: s.outlier_detection,
        health_check: s.health_check,
        transparent,
        stall_detection: s.stall_detection,
    })
}

/// `services[i].policy`: [`Policy`] by its snake_case name.
#[derive(Deserialize)]
#[serde(remote = "Policy", rename_all = "snake_case")]
enum PolicyDef {
    Random,
    RoundRobin,
}

/// `services[i].routing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouting {
    mode: RoutingMode,
    header: String,
    fallbacks: usize,
    no_membership_addresses: Vec<String>,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            mode: RoutingMode::OverrideHost,
            header: "x-lossless-upstream".into(),
            fallbacks: 2,
            no_membership_addresses: Vec::new(),
        }
    }
}

/// The most `routing.no_membership_addresses` a service may list.
const MAX_NO_MEMBERSHIP_ADDRESSES: usize = 64;

/// `services[i].routing`: the header (not reserved, distinct from the drain headers), fallbacks
/// only where Envoy can use them (override_host's fallback list; original_dst has a single
/// address), and the addresses used before any membership (original_dst only: override_host
/// falls back to the cluster's own hosts). Returns those addresses, canonical and each once.
fn validate_routing(p: &str, r: &RawRouting, drain: &DrainConfig) -> Result<Vec<String>, ConfigError> {
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
    let field = "routing.no_membership_addresses";
    if r.mode == RoutingMode::OverrideHost && !r.no_membership_addresses.is_empty() {
        return Err(at(
            p,
            field,
            "needs mode original_dst; under override_host a service without membership already goes to the Envoy cluster's own hosts",
        ));
    }
    if r.no_membership_addresses.len() > MAX_NO_MEMBERSHIP_ADDRESSES {
        return Err(at(p, field, format!("at most {MAX_NO_MEMBERSHIP_ADDRESSES} addresses")));
    }
    let mut addresses: Vec<String> = Vec::with_capacity(r.no_membership_addresses.len());
    for (k, a) in r.no_membership_addresses.iter().enumerate() {
        let Some(addr) = canonical_addr(a) else {
            return Err(at(
                p,
                &format!("{field}[{k}]"),
                format!("'{a}' is not an ip:port address (an IP literal, '[..]' around IPv6, a port 1..65535)"),
            ));
        };
        if addresses.contains(&addr) {
            return Err(at(p, &format!("{field}[{k}]"), format!("'{addr}' is listed twice")));
        }
        addresses.push(addr);
    }
    Ok(addresses)
}

/// `services[i].warmup`: the [`BuildOptions`] defaults and the ramp.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWarmup {
    default_warmup_ms: i64,
    default_weight: i32,
    weight_scale: f64,
    #[serde(with = "CurveDef")]
    curve: Curve,
    #[serde(with = "MetadataKeysDef")]
    metadata_keys: MetadataKeys,
    #[serde(deserialize_with = "optional_overload_protection")]
    overload_protection: Option<OverloadProtection>,
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
            overload_protection: None,
        }
    }
}

/// `services[i].warmup.curve`, with [`Curve`]'s defaults.
#[derive(Deserialize)]
#[serde(remote = "Curve", deny_unknown_fields, default = "Curve::default")]
struct CurveDef {
    aggression: f32,
    min_weight_percent: f32,
    sermant: Option<u8>,
}

/// `services[i].warmup.overload_protection`, with [`OverloadProtection`]'s default threshold
/// (Polaris' 50): `{}` turns it on.
#[derive(Deserialize)]
#[serde(remote = "OverloadProtection", deny_unknown_fields, default = "OverloadProtection::default")]
struct OverloadProtectionDef {
    threshold_percent: u32,
}

/// Absent or `null`: off.
fn optional_overload_protection<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OverloadProtection>, D::Error> {
    #[derive(Deserialize)]
    struct Rule(#[serde(with = "OverloadProtectionDef")] OverloadProtection);
    Ok(Option::<Rule>::deserialize(d)?.map(|r| r.0))
}

/// `services[i].warmup.metadata_keys`, with [`MetadataKeys`]' defaults.
#[derive(Deserialize)]
#[serde(remote = "MetadataKeys", deny_unknown_fields, default = "MetadataKeys::default")]
struct MetadataKeysDef {
    #[serde(deserialize_with = "meta_keys")]
    start_time: Vec<MetaKey>,
    #[serde(deserialize_with = "meta_keys")]
    warmup: Vec<MetaKey>,
    weight: Vec<String>,
    drain: Vec<String>,
}

/// `{"key": "timestamp", "unit": "ms"}`.
#[derive(Deserialize)]
#[serde(remote = "MetaKey", deny_unknown_fields)]
struct MetaKeyDef {
    key: String,
    #[serde(with = "UnitDef")]
    unit: Unit,
}

#[derive(Deserialize)]
#[serde(remote = "Unit", rename_all = "lowercase")]
enum UnitDef {
    Ms,
    S,
}

fn meta_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MetaKey>, D::Error> {
    #[derive(Deserialize)]
    struct Key(#[serde(with = "MetaKeyDef")] MetaKey);
    Ok(Vec::<Key>::deserialize(d)?.into_iter().map(|k| k.0).collect())
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
    if w.overload_protection.is_some_and(|o| o.threshold_percent > 100) {
        return Err(at(p, "warmup.overload_protection.threshold_percent", "must be between 0 and 100 (percent)"));
    }
    Ok(())
}

/// `services[i].guard`: the keep-last-good rules, [`Guard`] and [`Grace`], with their defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGuard {
    protect_threshold: f64,
    max_drop: f64,
    confirm_refreshes: u32,
    reregister_ms: i64,
    departure_memory_ms: i64,
}

impl Default for RawGuard {
    fn default() -> Self {
        let (g, r) = (Guard::default(), Grace::default());
        RawGuard {
            protect_threshold: g.protect_threshold,
            max_drop: g.max_drop,
            confirm_refreshes: g.confirm_refreshes,
            reregister_ms: r.reregister_ms,
            departure_memory_ms: r.departure_memory_ms,
        }
    }
}

impl RawGuard {
    fn split(&self) -> (Guard, Grace) {
        let guard = Guard {
            protect_threshold: self.protect_threshold,
            max_drop: self.max_drop,
            confirm_refreshes: self.confirm_refreshes,
        };
        (guard, Grace { reregister_ms: self.reregister_ms, departure_memory_ms: self.departure_memory_ms })
    }
}

fn validate_guard(p: &str, g: &RawGuard) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&g.protect_threshold) {
        return Err(at(p, "guard.protect_threshold", "must be between 0 and 1"));
    }
    if !(0.0..=1.0).contains(&g.max_drop) {
        return Err(at(p, "guard.max_drop", "must be between 0 and 1"));
    }
    if !(1..=100).contains(&g.confirm_refreshes) {
        return Err(at(p, "guard.confirm_refreshes", "must be between 1 and 100"));
    }
    for (field, ms) in [("reregister_ms", g.reregister_ms), ("departure_memory_ms", g.departure_memory_ms)] {
        if !(0..=3_600_000).contains(&ms) {
            return Err(at(p, &format!("guard.{field}"), "must be between 0 and 3600000 (ms)"));
        }
    }
    Ok(())
}

/// `services[i].stall_detection`, with [`StallDetection`]'s defaults.
#[derive(Deserialize)]
#[serde(remote = "StallDetection", deny_unknown_fields, default = "StallDetection::default")]
struct StallDetectionDef {
    enabled: bool,
    floor_ms: i64,
    latency_factor: f64,
    max_stalled_percent: u32,
    max_pending_ms: i64,
    exclude_paths: Vec<String>,
    probe_path: String,
    probe_interval_ms: i64,
}

/// `services[i].stall_detection`: [`StallDetection::validate`]'s ranges, its message split into
/// the field (`stall_detection.floor_ms`) and what is wrong.
fn validate_stall_detection(p: &str, sd: &StallDetection) -> Result<(), ConfigError> {
    sd.validate().map_err(|m| match m.split_once(": ") {
        Some((field, why)) => at(p, field, why),
        None => at(p, "stall_detection", m),
    })
}

/// `services[i].outlier_detection`, with [`OutlierDetection`]'s defaults.
#[derive(Deserialize)]
#[serde(remote = "OutlierDetection", deny_unknown_fields, default = "OutlierDetection::default")]
struct OutlierDetectionDef {
    enabled: bool,
    consecutive_gateway_failure: u32,
    consecutive_local_origin_failure: u32,
    base_ejection_time_ms: i64,
    max_ejection_time_ms: i64,
    max_ejection_percent: u32,
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

/// `services[i].health_check` and `inbound.registration.readiness`, with [`HealthCheck`]'s
/// defaults.
#[derive(Deserialize)]
#[serde(remote = "HealthCheck", deny_unknown_fields, default = "HealthCheck::default")]
struct HealthCheckDef {
    #[serde(rename = "type", with = "CheckKindDef")]
    kind: CheckKind,
    path: String,
    expected_statuses: Vec<(u16, u16)>,
    interval_ms: i64,
    timeout_ms: i64,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    no_traffic_before_first_pass: bool,
}

#[derive(Deserialize)]
#[serde(remote = "CheckKind", rename_all = "snake_case")]
enum CheckKindDef {
    Http,
    Tcp,
}

fn optional_health_check<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HealthCheck>, D::Error> {
    #[derive(Deserialize)]
    struct Check(#[serde(with = "HealthCheckDef")] HealthCheck);
    Ok(Option::<Check>::deserialize(d)?.map(|c| c.0))
}

fn validate_health_check(p: &str, hc: &HealthCheck) -> Result<(), ConfigError> {
    if !valid_path(&hc.path) {
        return Err(at(p, "path", "must start with '/' and hold no spaces, control characters or '#'"));
    }
    if hc.expected_statuses.is_empty()
        || hc.expected_statuses.iter().any(|(lo, hi)| !(100..=599).contains(lo) || hi <= lo || *hi > 600)
    {
        return Err(at(p, "expected_statuses", "must be [start, end) ranges within 100..600, e.g. [[200, 300]]"));
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

// ---------------------------------------------------------------------------------------------
// drain

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
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

// ---------------------------------------------------------------------------------------------
// inbound

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    service: String,
    self_address: String,
    warmup_ms: Option<i64>,
    registration: Option<RawRegistration>,
    self_warm: Option<RawSelfWarm>,
    admission: Option<AdmissionConfig>,
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
                validate_admission(a)?;
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

/// `inbound.registration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    local_cluster: String,
    #[serde(default, with = "HealthCheckDef")]
    readiness: HealthCheck,
    #[serde(default = "d_heartbeat")]
    heartbeat_ms: i64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn d_heartbeat() -> i64 {
    5000
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

/// `inbound.self_warm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelfWarm {
    requests: Vec<String>,
    #[serde(default = "d_warm_count")]
    count: u32,
    #[serde(default = "d_warm_concurrency")]
    concurrency: u32,
    #[serde(default = "d_warm_timeout")]
    timeout_ms: i64,
    #[serde(default = "d_warm_limit")]
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

/// `inbound.admission` ([`AdmissionConfig`] is read as it is).
fn validate_admission(a: &AdmissionConfig) -> Result<(), ConfigError> {
    if !(1..=1_000_000).contains(&a.max_rps) {
        return Err(err("inbound.admission.max_rps", "must be between 1 and 1000000"));
    }
    if !(2..=10).contains(&a.cold_factor) {
        return Err(err("inbound.admission.cold_factor", "must be between 2 and 10"));
    }
    if a.max_rps < a.cold_factor {
        // the cold rate max_rps / cold_factor would admit nothing, and a bucket that admits
        // nothing never warms (as in Sentinel)
        return Err(err(
            "inbound.admission.max_rps",
            "must be at least cold_factor (the cold rate is max_rps / cold_factor per second)",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// transparent mode: services[i].transparent and capture

/// `services[i].transparent`; a field left out takes the registry kind's default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransparent {
    departed_ttl_ms: Option<i64>,
    estimate_half_life_ms: Option<i64>,
    prior_picks: Option<f64>,
    replan_ms: Option<i64>,
    #[serde(default)]
    exclude_paths: Vec<String>,
}

/// At most this many `exclude_paths` per service (each request of the service is compared with
/// every one).
const MAX_EXCLUDE_PATHS: usize = 32;

fn validate_transparent(p: &str, t: RawTransparent, kind: RegistryType) -> Result<TransparentConfig, ConfigError> {
    let d = crate::transparent::Settings::for_registry(kind.name());
    let settings = crate::transparent::Settings {
        departed_ttl_ms: t.departed_ttl_ms.unwrap_or(d.departed_ttl_ms),
        estimate_half_life_ms: t.estimate_half_life_ms.unwrap_or(d.estimate_half_life_ms),
        prior_picks: t.prior_picks.unwrap_or(d.prior_picks),
        replan_ms: t.replan_ms.unwrap_or(d.replan_ms),
    };
    settings.validate().map_err(|(field, message)| at(p, &format!("transparent.{field}"), message))?;
    if t.exclude_paths.len() > MAX_EXCLUDE_PATHS {
        return Err(at(p, "transparent.exclude_paths", format!("at most {MAX_EXCLUDE_PATHS} prefixes")));
    }
    for (k, x) in t.exclude_paths.iter().enumerate() {
        if !valid_path(x) {
            return Err(at(
                p,
                &format!("transparent.exclude_paths[{k}]"),
                "must be a path prefix: start with '/' and hold no spaces, control characters or '#'",
            ));
        }
    }
    Ok(TransparentConfig { settings, exclude_paths: t.exclude_paths })
}

/// `capture`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    #[serde(default = "d_capture_clusters")]
    match_clusters: Vec<String>,
    service_header: Option<String>,
}

fn d_capture_clusters() -> Vec<String> {
    vec!["PassthroughCluster".into()]
}

/// The `capture` section: needed by, and only by, a service with `transparent`, in mode
/// `outbound`; its clusters are no service's own, its header is distinct from every other.
fn validate_capture(
    mode: Mode,
    raw: Option<RawCapture>,
    services: &[ServiceConfig],
    drain: &DrainConfig,
) -> Result<Option<CaptureConfig>, ConfigError> {
    let Some(first) = services.iter().position(|s| s.transparent.is_some()) else {
        return match raw {
            Some(_) => Err(err("capture", "has no effect: no service sets `transparent`")),
            None => Ok(None),
        };
    };
    if mode == Mode::Inbound {
        return Err(err(
            format!("services[{first}].transparent"),
            "corrects a caller's own picks: only in mode \"outbound\" (the caller's sidecar)",
        ));
    }
    let raw = raw.unwrap_or(RawCapture { match_clusters: d_capture_clusters(), service_header: None });
    if raw.match_clusters.is_empty() {
        return Err(err("capture.match_clusters", "must name at least one cluster (Istio: PassthroughCluster)"));
    }
    for (k, c) in raw.match_clusters.iter().enumerate() {
        let path = format!("capture.match_clusters[{k}]");
        if c.is_empty() {
            return Err(err(path, "must not be empty"));
        }
        if let Some(s) = services.iter().find(|s| s.match_clusters.contains(c)) {
            return Err(err(path, format!("cluster '{c}' is already matched by service '{}'", s.name)));
        }
    }
    if let Some(h) = &raw.service_header {
        const P: &str = "capture.service_header";
        if !valid_header(h) {
            return Err(err(P, "must be a lowercase header name ([a-z0-9-_]+)"));
        }
        unreserved_header(P, h)?;
        if *h == drain.header || drain.pin_header.as_deref() == Some(h.as_str()) {
            return Err(err(P, format!("'{h}' is already a drain header; use another name")));
        }
        if let Some(s) = services.iter().find(|s| s.header == *h) {
            return Err(err(P, format!("'{h}' is already the routing header of service '{}'", s.name)));
        }
    }
    Ok(Some(CaptureConfig { match_clusters: raw.match_clusters, service_header: raw.service_header }))
}

// ---------------------------------------------------------------------------------------------
// admin

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    path_prefix: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { path_prefix: "/lossless".into() }
    }
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

// ---------------------------------------------------------------------------------------------
// Header names and paths

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

/// A path Envoy will accept in `:path`: absolute, no whitespace, controls or fragment.
fn valid_path(p: &str) -> bool {
    p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#')
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
        assert!(c.services[0].no_membership_addresses.is_empty() && c.services[1].no_membership_addresses.is_empty());
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

    fn one_registry(section: &str) -> String {
        format!(r#"{{"registries":{{"r":{section}}},"services":[{{"name":"d","registry":"r"}}]}}"#)
    }

    /// Each registry `type` takes its own fields and the common ones; another type's field is an
    /// unknown field, wherever `type` stands in the section.
    #[test]
    fn registry_fields_by_type() {
        let fine = [
            r#"{"type":"nacos","cluster":"r","authority":"a","timeout_ms":100,"max_body_bytes":2048,"api":"v2","username":"u","password":"p"}"#,
            r#"{"type":"eureka","cluster":"r","authority":"a","timeout_ms":100,"max_body_bytes":2048,"path_prefix":"/e"}"#,
            r#"{"type":"consul","cluster":"r","authority":"a","timeout_ms":100,"max_body_bytes":2048,"token":"t","wait_s":0,"address":"node"}"#,
            r#"{"cluster":"r","authority":"a","timeout_ms":100,"max_body_bytes":2048,"path":"/s","type":"static"}"#,
        ];
        for section in fine {
            let c = parse(one_registry(section).as_bytes()).unwrap();
            let ep = c.registries[0].kind.endpoint();
            assert_eq!((c.registries[0].cluster.as_str(), ep.timeout_ms, ep.max_body_bytes), ("r", 100, 2048));
        }
        let foreign = [
            ("nacos", "path", r#""/s""#),
            ("nacos", "token", r#""t""#),
            ("eureka", "api", r#""v1""#),
            ("eureka", "wait_s", "1"),
            ("consul", "path_prefix", r#""/e""#),
            ("consul", "username", r#""u""#),
            ("static", "address", r#""wan""#),
            ("static", "password", r#""p""#),
        ];
        for (kind, field, value) in foreign {
            let path = if kind == "static" { r#","path":"/s""# } else { "" };
            for section in [
                format!(r#"{{"type":"{kind}","cluster":"r","authority":"a"{path},"{field}":{value}}}"#),
                format!(r#"{{"{field}":{value},"cluster":"r","authority":"a"{path},"type":"{kind}"}}"#),
            ] {
                let e = bad(&one_registry(&section));
                assert_eq!(e.path, format!("registries.r.{field}"), "{section}: {e}");
                assert!(e.message.starts_with(&format!("unknown field `{field}`, expected one of `cluster`")), "{e}");
            }
        }
    }

    /// A registry section is read from serde's buffer (it is tagged on `type`): what serde refuses
    /// there is still reported at the field, the first in the document.
    #[test]
    fn errors_inside_a_registry_name_the_field() {
        let cases = [
            (
                r#"{"type":"consul","cluster":"r","authority":"a","wait_s":"x"}"#,
                "registries.r.wait_s",
                "invalid type: string \"x\", expected u64",
            ),
            (
                r#"{"cluster":"r","wait_s":-1,"authority":"a","type":"consul"}"#,
                "registries.r.wait_s",
                "invalid value: integer `-1`, expected u64",
            ),
            (
                r#"{"type":"nacos","cluster":"r","authority":"a","timeout_ms":1.5,"api":7}"#,
                "registries.r.timeout_ms",
                "invalid type: floating point `1.5`, expected u64",
            ),
            (
                r#"{"type":"nacos","cluster":"r","authority":"a","api":7,"timeout_ms":1.5}"#,
                "registries.r.api",
                "invalid type: integer `7`, expected a string",
            ),
            (
                r#"{"type":"eureka","cluster":"r","authority":"a","cluster":"s"}"#,
                "registries.r.cluster",
                "duplicate field `cluster`",
            ),
            (r#"{"type":"static","cluster":"r","path":"/s"}"#, "registries.r", "missing field `authority`"),
            (r#"{"cluster":"r","authority":"a"}"#, "registries.r", "missing field `type`"),
            (
                r#"{"type":7,"cluster":"r","authority":"a"}"#,
                "registries.r.type",
                "invalid type: integer `7`, expected variant identifier",
            ),
            (
                r#""nacos""#,
                "registries.r",
                "invalid type: string \"nacos\", expected internally tagged enum RawRegistry",
            ),
        ];
        for (section, path, message) in cases {
            let e = bad(&one_registry(section));
            assert_eq!((e.path.as_str(), e.message.as_str()), (path, message), "{section}");
        }
    }

    /// serde's messages without serde_json's position (the path says where); a syntax error keeps
    /// it, with the path as far as the document was read.
    #[test]
    fn syntax_errors_keep_the_position() {
        let e = bad(r#"{"services":[{"name":"d",}]}"#);
        assert_eq!((e.path.as_str(), e.message.as_str()), ("services[0]", "trailing comma at line 1 column 26"));
        let e = bad(&format!("{MINIMAL_EXAMPLE} x"));
        assert_eq!(e.path, "");
        assert!(e.message.starts_with("trailing characters at line 1 column"), "{e}");
        let e = bad("{\n\"mode\": \"sideways\"}");
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("mode", "unknown variant `sideways`, expected `outbound` or `inbound`")
        );
    }

    /// A section given in part keeps the defaults of the fields it leaves out.
    #[test]
    fn sections_given_in_part_keep_their_defaults() {
        let c = parse(
            with_service(
                r#","guard":{"max_drop":0.2},"outlier_detection":{"enabled":false},"health_check":{"path":"/h"},
                "warmup":{"curve":{"sermant":2},"metadata_keys":{"weight":["w"]}},"policy":"random""#,
            )
            .as_bytes(),
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.guard, Guard { max_drop: 0.2, ..Guard::default() });
        assert_eq!(s.grace, Grace::default());
        assert_eq!(s.stall_detection, StallDetection::default());
        assert_eq!(s.outlier_detection, OutlierDetection { enabled: false, ..OutlierDetection::default() });
        assert_eq!(s.health_check, Some(HealthCheck { path: "/h".into(), ..HealthCheck::default() }));
        assert_eq!(s.curve, Curve { sermant: Some(2), ..Curve::default() });
        assert_eq!(s.query.build.keys, MetadataKeys { weight: vec!["w".into()], ..MetadataKeys::default() });
        assert_eq!(s.policy, Policy::Random);
        let c = parse(
            br#"{"mode":"inbound","registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},
            "services":[{"name":"d","registry":"n","warmup":{"default_warmup_ms":30000}}],
            "inbound":{"service":"d","self_address":"10.0.0.1:80","registration":{"local_cluster":"app"},
                       "self_warm":{"requests":["/w","HEAD /h"]},"admission":{"max_rps":100}}}"#,
        )
        .unwrap();
        let ib = c.settings.inbound.unwrap();
        assert_eq!(ib.warmup_ms, 30_000, "the service's warmup");
        let reg = ib.registration.unwrap();
        assert_eq!((reg.readiness, reg.heartbeat_ms, reg.metadata.len()), (HealthCheck::default(), 5000, 0));
        let sw = ib.self_warm.unwrap();
        assert_eq!(sw.requests, [("GET".to_string(), "/w".to_string()), ("HEAD".into(), "/h".into())]);
        assert_eq!((sw.count, sw.concurrency, sw.timeout_ms, sw.time_limit_ms), (50, 2, 5000, 60_000));
        let a = ib.admission.unwrap();
        assert_eq!((a.max_rps, a.cold_factor), (100, 3));
        let c = parse(
            with_service(
                r#","guard":{"reregister_ms":60000},"stall_detection":{"floor_ms":300,"exclude_paths":["/watch"]}"#,
            )
            .as_bytes(),
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!((s.guard, s.grace), (Guard::default(), Grace { reregister_ms: 60_000, ..Grace::default() }));
        let want = StallDetection { floor_ms: 300, exclude_paths: vec!["/watch".into()], ..StallDetection::default() };
        assert_eq!(s.stall_detection, want);
        let c = parse(one_registry(r#"{"type":"eureka","cluster":"r","authority":"a"}"#).as_bytes()).unwrap();
        match &c.registries[0].kind {
            RegistryKind::Eureka(e) => assert_eq!((e.prefix.as_str(), e.delta_interval_ms), ("/eureka", None)),
            other => panic!("{other:?}"),
        }
        // the registry-wide delta fetch: Eureka's 30 s by default, or as given
        for (extra, want) in [
            (r#","fetch":"delta""#, Some(30_000)),
            (r#","fetch":"delta","registry_fetch_interval_ms":5000"#, Some(5000)),
            (r#","fetch":"application""#, None),
        ] {
            let c =
                parse(one_registry(&format!(r#"{{"type":"eureka","cluster":"r","authority":"a"{extra}}}"#)).as_bytes())
                    .unwrap();
            match &c.registries[0].kind {
                RegistryKind::Eureka(e) => assert_eq!(e.delta_interval_ms, want, "{extra}"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// `warmup.overload_protection`: absent or null is off, `{}` is Polaris' 50, 0 and 100 are
    /// accepted as given.
    #[test]
    fn overload_protection_section() {
        let rule = |extra: &str| parse(with_service(extra).as_bytes()).unwrap().services[0].overload_protection;
        assert_eq!(rule(""), None);
        assert_eq!(rule(r#","warmup":{"default_warmup_ms":30000}"#), None);
        assert_eq!(rule(r#","warmup":{"overload_protection":null}"#), None);
        assert_eq!(rule(r#","warmup":{"overload_protection":{}}"#), Some(OverloadProtection { threshold_percent: 50 }));
        for t in [0, 1, 75, 100] {
            assert_eq!(
                rule(&format!(r#","warmup":{{"overload_protection":{{"threshold_percent":{t}}}}}"#)),
                Some(OverloadProtection { threshold_percent: t })
            );
        }
        let p = "services[0].warmup.overload_protection.threshold_percent";
        for (extra, path, msg) in [
            (r#","warmup":{"overload_protection":{"threshold_percent":101}}"#, p, "must be between 0 and 100"),
            (
                r#","warmup":{"overload_protection":{"threshold_percent":-1}}"#,
                p,
                "invalid value: integer `-1`, expected u32",
            ),
            (
                r#","warmup":{"overload_protection":{"threshold_percent":"50"}}"#,
                p,
                "invalid type: string \"50\", expected u32",
            ),
            (r#","warmup":{"overload_protection":{"threshold_percent":50.5}}"#, p, "invalid type: floating point"),
            (
                r#","warmup":{"overload_protection":{"threshold":50}}"#,
                "services[0].warmup.overload_protection.threshold",
                "unknown field `threshold`, expected `threshold_percent`",
            ),
            (
                r#","warmup":{"overload_protection":true}"#,
                "services[0].warmup.overload_protection",
                "invalid type: boolean `true`",
            ),
        ] {
            let e = bad(&with_service(extra));
            assert_eq!(e.path, path, "{extra}: {e}");
            assert!(e.message.contains(msg), "{extra}: got '{}', want '{msg}'", e.message);
        }
        // every other service keeps its own: off unless given
        let c = parse(
            br#"{"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[
                {"name":"a","registry":"n","warmup":{"overload_protection":{"threshold_percent":60}}},{"name":"b","registry":"n"}]}"#,
        )
        .unwrap();
        assert_eq!(c.services[0].overload_protection, Some(OverloadProtection { threshold_percent: 60 }));
        assert_eq!(c.services[1].overload_protection, None);
    }

    fn bad(json: &str) -> ConfigError {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e,
        }
    }

    /// A Nacos registry `n` with `reg` added to its fields, and `services` (JSON objects).
    fn nacos_with(reg: &str, services: &str) -> String {
        format!(
            r#"{{"registries":{{"n":{{"type":"nacos","cluster":"n","authority":"a"{reg}}}}},"services":[{services}]}}"#
        )
    }

    #[test]
    fn push_settings() {
        // auto (the default) pushes when there is a gRPC cluster, and only then
        let c =
            parse(nacos_with(r#","grpc_cluster":"nacos-grpc""#, r#"{"name":"d","registry":"n"}"#).as_bytes()).unwrap();
        let p = c.registries[0].push.clone().unwrap();
        assert_eq!(
            p,
            PushConfig {
                cluster: "nacos-grpc".into(),
                mode: PushMode::Auto,
                reconcile_interval_ms: 30_000,
                timeout_ms: 2000
            }
        );
        assert!(parse(nacos_with("", r#"{"name":"d","registry":"n"}"#).as_bytes()).unwrap().registries[0]
            .push
            .is_none());
        let off = nacos_with(r#","grpc_cluster":"nacos-grpc","push":"off""#, r#"{"name":"d","registry":"n"}"#);
        assert!(parse(off.as_bytes()).unwrap().registries[0].push.is_none());
        let on = nacos_with(
            r#","grpc_cluster":"nacos-grpc","push":"on","reconcile_interval_ms":60000,"timeout_ms":3000"#,
            r#"{"name":"d","registry":"n"}"#,
        );
        let p = parse(on.as_bytes()).unwrap().registries[0].push.clone().unwrap();
        assert_eq!((p.mode, p.reconcile_interval_ms, p.timeout_ms), (PushMode::On, 60_000, 3000));
        // the same service name in two namespaces is fine while polling only
        let two_ns = r#"{"name":"d","registry":"n","namespace":"a"},{"name":"e","registry":"n","registry_service":"d","namespace":"b"}"#;
        assert!(parse(nacos_with("", two_ns).as_bytes()).is_ok());
        let svc = r#"{"name":"d","registry":"n"}"#;
        let cases: Vec<(String, &str, &str)> = vec![
            (nacos_with(r#","push":"on""#, svc), "registries.n.push", "needs grpc_cluster"),
            (nacos_with(r#","push":"always""#, svc), "registries.n.push", "unknown variant `always`, expected one of `auto`, `on`, `off`"),
            (nacos_with(r#","grpc_cluster":"""#, svc), "registries.n.grpc_cluster", "Envoy would read it as a serialized GrpcService"),
            (nacos_with(r#","grpc_cluster":"hi""#, svc), "registries.n.grpc_cluster", "'hi' cannot name the gRPC cluster"),
            (nacos_with(r#","grpc_cluster":"g","reconcile_interval_ms":500"#, svc), "registries.n.reconcile_interval_ms", "between 1000 and 3600000"),
            (nacos_with(r#","grpc_cluster":"nacos-grpc""#, two_ns), "services[1].namespace", "same group and name in another namespace"),
            (
                r#"{"registries":{"a":{"type":"nacos","cluster":"n","authority":"a","grpc_cluster":"nacos-grpc"},"b":{"type":"nacos","cluster":"n","authority":"a","grpc_cluster":"nacos-grpc"}},"services":[{"name":"d","registry":"a"}]}"#.into(),
                "registries.b.grpc_cluster",
                "'nacos-grpc' is already the grpc_cluster of registry 'a'",
            ),
            (
                r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","grpc_cluster":"g"}},"services":[{"name":"d","registry":"e"}]}"#.into(),
                "registries.e.grpc_cluster",
                "unknown field `grpc_cluster`",
            ),
        ];
        for (json, path, msg) in cases {
            let e = bad(&json);
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(e.message.contains(msg), "{json}: {e}");
        }
    }

    fn with_service(extra: &str) -> String {
        format!(
            r#"{{"registries":{{"n":{{"type":"nacos","cluster":"n","authority":"a"}}}},"services":[{{"name":"demo","registry":"n"{extra}}}]}}"#
        )
    }

    #[test]
    fn no_membership_addresses_are_canonical() {
        let c = parse(
            with_service(r#","routing":{"mode":"original_dst","no_membership_addresses":["10.96.0.1:8080","[::1]:80"," 10.0.0.2:80 "]}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.services[0].no_membership_addresses, ["10.96.0.1:8080", "[::1]:80", "10.0.0.2:80"]);
        let c = parse(with_service(r#","routing":{"mode":"original_dst","no_membership_addresses":[]}"#).as_bytes())
            .unwrap();
        assert!(c.services[0].no_membership_addresses.is_empty(), "empty: today's refusal");
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
            (with_service(r#","routing":{"no_membership_addresses":["10.96.0.1:80"]}"#), "services[0].routing.no_membership_addresses", "needs mode original_dst"),
            (with_service(r#","routing":{"mode":"original_dst","no_membership_addresses":["10.96.0.1:80","orders.svc:80"]}"#), "services[0].routing.no_membership_addresses[1]", "'orders.svc:80' is not an ip:port address"),
            (with_service(r#","routing":{"mode":"original_dst","no_membership_addresses":["10.96.0.1"]}"#), "services[0].routing.no_membership_addresses[0]", "is not an ip:port address"),
            (with_service(r#","routing":{"mode":"original_dst","no_membership_addresses":["10.96.0.1:0"]}"#), "services[0].routing.no_membership_addresses[0]", "is not an ip:port address"),
            (with_service(r#","routing":{"mode":"original_dst","no_membership_addresses":["10.96.0.1:80"," 10.96.0.1:80"]}"#), "services[0].routing.no_membership_addresses[1]", "'10.96.0.1:80' is listed twice"),
            (with_service(r#","routing":{"mode":"original_dst","no_membership_addresses":"10.96.0.1:80"}"#), "services[0].routing.no_membership_addresses", "invalid type: string \"10.96.0.1:80\", expected a sequence"),
            (with_service(r#","routing":{"mode":"original_dst","fallback":["10.96.0.1:80"]}"#), "services[0].routing.fallback", "unknown field `fallback`"),
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
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","address":"wan"}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.address", "unknown field `address`, expected one of `cluster`, `authority`, `timeout_ms`, `max_body_bytes`, `path_prefix`, `fetch`, `registry_fetch_interval_ms`"),
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
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","token":"t"}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.token", "unknown field `token`"),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","fetch":"deltas"}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.fetch", "'deltas' is not one of \"application\", \"delta\""),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","fetch":"delta","registry_fetch_interval_ms":500}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.registry_fetch_interval_ms", "between 1000 and 90000"),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","fetch":"delta","registry_fetch_interval_ms":180000}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.registry_fetch_interval_ms", "between 1000 and 90000"),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","registry_fetch_interval_ms":30000}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.registry_fetch_interval_ms", "with \"fetch\": \"delta\" only"),
            (r#"{"registries":{"e":{"type":"eureka","cluster":"e","authority":"a","fetch":7}},"services":[{"name":"d","registry":"e"}]}"#.into(), "registries.e.fetch", "invalid type"),
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
            (with_service(r#","guard":{"reregister_ms":-1}"#), "services[0].guard.reregister_ms", "between 0 and 3600000"),
            (with_service(r#","guard":{"departure_memory_ms":3600001}"#), "services[0].guard.departure_memory_ms", "between 0 and 3600000"),
            (with_service(r#","guard":{"grace_ms":1}"#), "services[0].guard.grace_ms", "unknown field `grace_ms`"),
            (with_service(r#","stall_detection":{"floor_ms":5}"#), "services[0].stall_detection.floor_ms", "must be 10..60000"),
            (with_service(r#","stall_detection":{"latency_factor":0.5}"#), "services[0].stall_detection.latency_factor", "must be 1..100"),
            (with_service(r#","stall_detection":{"max_stalled_percent":101}"#), "services[0].stall_detection.max_stalled_percent", "must be 0..100"),
            (with_service(r#","stall_detection":{"max_pending_ms":100}"#), "services[0].stall_detection.max_pending_ms", "floor_ms..3600000"),
            (with_service(r#","stall_detection":{"probe_interval_ms":50}"#), "services[0].stall_detection.probe_interval_ms", "must be 100..30000"),
            (with_service(r#","stall_detection":{"probe_path":"health"}"#), "services[0].stall_detection.probe_path", "an absolute path"),
            (with_service(r#","stall_detection":{"exclude_paths":["poll"]}"#), "services[0].stall_detection.exclude_paths", "must start with '/'"),
            (with_service(r#","stall_detection":{"enabled":"yes"}"#), "services[0].stall_detection.enabled", "invalid type: string \"yes\", expected a boolean"),
            (with_service(r#","stall_detection":{"floor":200}"#), "services[0].stall_detection.floor", "unknown field `floor`"),
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

    /// `services[i].transparent`: presence turns the mode on, defaults per registry kind, the
    /// capture section defaults to Istio's PassthroughCluster; errors name the field.
    #[test]
    fn transparent_mode_settings() {
        let two = |t: &str, top: &str| {
            format!(
                r#"{{"registries":{{"n":{{"type":"nacos","cluster":"n","authority":"a"}},"e":{{"type":"eureka","cluster":"e","authority":"a"}}}},
                "services":[{{"name":"orders","registry":"n"{t}}},{{"name":"users","registry":"e","transparent":{{}}}}]{top}}}"#
            )
        };
        let c = parse(two("", "").as_bytes()).unwrap();
        assert_eq!(c.services[0].transparent, None, "absent: the mode is off for the service");
        let users = c.services[1].transparent.as_ref().unwrap();
        assert_eq!(users.settings, crate::transparent::Settings::for_registry("eureka"));
        assert_eq!(users.settings.departed_ttl_ms, 240_000);
        assert!(users.exclude_paths.is_empty());
        let capture = c.settings.capture.unwrap();
        assert_eq!(capture.match_clusters, ["PassthroughCluster"]);
        assert_eq!(capture.service_header, None);

        let c = parse(
            two(
                r#","transparent":{"departed_ttl_ms":90000,"estimate_half_life_ms":5000,"prior_picks":0,"replan_ms":100,"exclude_paths":["/actuator","/metrics"]}"#,
                r#","capture":{"match_clusters":["outbound-capture"],"service_header":"x-lossless-service"}"#,
            )
            .as_bytes(),
        )
        .unwrap();
        let orders = c.services[0].transparent.as_ref().unwrap();
        assert_eq!(
            orders.settings,
            crate::transparent::Settings {
                departed_ttl_ms: 90_000,
                estimate_half_life_ms: 5000,
                prior_picks: 0.0,
                replan_ms: 100
            }
        );
        assert_eq!(orders.exclude_paths, ["/actuator", "/metrics"]);
        let capture = c.settings.capture.unwrap();
        assert_eq!(capture.match_clusters, ["outbound-capture"]);
        assert_eq!(capture.service_header.as_deref(), Some("x-lossless-service"));
        // no service in the mode: no capture settings
        assert_eq!(parse(with_service("").as_bytes()).unwrap().settings.capture, None);

        let cases: Vec<(String, &str, &str)> = vec![
            (with_service(r#","transparent":{"departed_ttl_ms":-1}"#), "services[0].transparent.departed_ttl_ms", "0..=3600000"),
            (with_service(r#","transparent":{"estimate_half_life_ms":0}"#), "services[0].transparent.estimate_half_life_ms", "100..=600000"),
            (with_service(r#","transparent":{"prior_picks":-2}"#), "services[0].transparent.prior_picks", "0..=1000000"),
            (with_service(r#","transparent":{"replan_ms":5}"#), "services[0].transparent.replan_ms", "10..=10000"),
            (with_service(r#","transparent":{"replan":5}"#), "services[0].transparent.replan", "unknown field `replan`"),
            (with_service(r#","transparent":{"exclude_paths":["metrics"]}"#), "services[0].transparent.exclude_paths[0]", "must be a path prefix"),
            (with_service(r#","transparent":true"#), "services[0].transparent", "invalid type: boolean `true`"),
            (two("", r#","capture":{"match_clusters":[]}"#), "capture.match_clusters", "at least one cluster"),
            (two("", r#","capture":{"match_clusters":["orders"]}"#), "capture.match_clusters[0]", "already matched by service 'orders'"),
            (two("", r#","capture":{"service_header":"x-lossless-upstream"}"#), "capture.service_header", "routing header of service 'orders'"),
            (two("", r#","capture":{"service_header":"x-lossless-drain"}"#), "capture.service_header", "already a drain header"),
            (two("", r#","capture":{"service_header":"Host"}"#), "capture.service_header", "lowercase header name"),
            (two("", r#","capture":{"clusters":["x"]}"#), "capture.clusters", "unknown field `clusters`"),
            (with_service(r#"}],"capture":{"match_clusters":["PassthroughCluster"]},"x":[{"#), "capture", "no service sets `transparent`"),
            (r#"{"mode":"inbound","inbound":{"service":"d","self_address":"10.0.0.1:80"},"registries":{"n":{"type":"nacos","cluster":"n","authority":"a"}},"services":[{"name":"d","registry":"n","transparent":{}}]}"#.into(), "services[0].transparent", "only in mode \"outbound\""),
        ];
        for (json, path, msg) in cases {
            let json = json.replace(r#","x":[{}]"#, "");
            let e = bad(&json);
            assert_eq!(e.path, path, "path for {json}: {e}");
            assert!(e.message.contains(msg), "message for {json}: got '{}', want '{msg}'", e.message);
        }
    }
}
