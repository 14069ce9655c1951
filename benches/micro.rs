//! Native micro-benchmarks of the per-request and per-refresh paths (`cargo bench --bench micro`).
//!
//! Built with the `bench` profile, which inherits `[profile.release]` (opt-level "z", LTO): the same
//! optimisation the shipped `.wasm` gets, so the figures are not flattered by -O3. Sample counts are
//! small so the whole run takes a few minutes; `make bench` reads the estimates back from
//! `target/criterion/` into BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use serde_json::{json, Value};

use lossless::balancer::{Balancer, Policy};
use lossless::clock::Rng;
use lossless::config;
use lossless::headers::Headers;
use lossless::instance::{BuildOptions, Instance, State};
use lossless::membership::Snapshot;
use lossless::poller::{PollState, RefreshOutcome};
use lossless::registry::nacos::Api;
use lossless::registry::{self, Call, HttpResponse};
use lossless::router::{route, Route};
use lossless::store::Shared;
use lossless::store::{bump_gen, FakeShared};
use lossless::vm::{Exchange, Host, Vm};
use lossless::warmup::{self, Curve};

/// A fixed "now" (ms since the epoch) so every run sees the same warmup fractions.
const NOW: i64 = 1_800_000_000_000;
/// Dubbo's default warmup window.
const WARMUP: i64 = 600_000;

/// The i-th instance's IP (10.0.x.y, distinct up to 62,500 instances).
fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1)
}

/// Start time of instance i: every 10th instance is warming (somewhere in its 10 min window), the
/// rest started an hour ago.
fn start_of(i: usize) -> i64 {
    if i % 10 == 0 {
        NOW - 1_000 - (i as i64 * 7_919) % (WARMUP - 2_000)
    } else {
        NOW - 3_600_000
    }
}

/// Instances as the balancer sees them: weight 100, 10 % warming.
fn members(n: usize) -> Vec<Instance> {
    let mut v: Vec<Instance> = (0..n)
        .map(|i| Instance {
            addr: format!("{}:20880", ip(i)),
            weight: 100,
            start_ms: Some(start_of(i)),
            warmup_ms: WARMUP,
            state: State::Serving,
        })
        .collect();
    v.sort_by(|a, b| a.addr.cmp(&b.addr));
    v
}

/// Dubbo provider URL parameters, as Dubbo registers them as Nacos instance metadata (12 keys).
fn dubbo_metadata(i: usize) -> Value {
    json!({
        "anyhost": "true",
        "application": "orders-provider",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "dynamic": "true",
        "generic": "false",
        "interface": "com.acme.orders.OrderService",
        "methods": "cancel,create,get,list,update",
        "pid": (10_000 + i).to_string(),
        "release": "3.3.0",
        "side": "provider",
        "timestamp": start_of(i).to_string(),
        "warmup": WARMUP.to_string(),
    })
}

/// `GET /nacos/v1/ns/instance/list` reply with n hosts.
fn nacos_body(n: usize) -> Vec<u8> {
    let svc = "DEFAULT_GROUP@@providers:com.acme.orders.OrderService:1.0.0:";
    let hosts: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "instanceId": format!("{}#20880#DEFAULT#{svc}", ip(i)),
                "ip": ip(i),
                "port": 20880,
                "weight": 1.0,
                "healthy": true,
                "enabled": true,
                "ephemeral": true,
                "clusterName": "DEFAULT",
                "serviceName": svc,
                "metadata": dubbo_metadata(i),
                "instanceHeartBeatInterval": 5000,
                "instanceHeartBeatTimeOut": 15000,
                "ipDeleteTimeout": 30000,
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "name": svc,
        "groupName": "DEFAULT_GROUP",
        "clusters": "",
        "cacheMillis": 10000,
        "hosts": hosts,
        "lastRefTime": NOW,
        "checksum": "3bbcf6dd1175203a8afdade0e77a27cd",
        "allIPs": false,
        "reachProtectionThreshold": false,
        "valid": true,
    }))
    .unwrap()
}

/// `GET /eureka/apps/ORDERS` reply (Jackson codec) with n instances.
fn eureka_body(n: usize) -> Vec<u8> {
    let inst: Vec<Value> = (0..n)
        .map(|i| {
            let host = ip(i);
            json!({
                "instanceId": format!("{host}:orders:8080"),
                "hostName": host,
                "app": "ORDERS",
                "ipAddr": host,
                "status": "UP",
                "overriddenStatus": "UNKNOWN",
                "port": {"$": 8080, "@enabled": "true"},
                "securePort": {"$": 443, "@enabled": "false"},
                "countryId": 1,
                "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
                "leaseInfo": {
                    "renewalIntervalInSecs": 30,
                    "durationInSecs": 90,
                    "registrationTimestamp": start_of(i),
                    "lastRenewalTimestamp": NOW - 5_000,
                    "evictionTimestamp": 0,
                    "serviceUpTimestamp": start_of(i),
                },
                "metadata": {"management.port": "8080", "zone": "zone-a", "version": "1.4.2", "warmup": WARMUP.to_string()},
                "homePageUrl": format!("http://{host}:8080/"),
                "statusPageUrl": format!("http://{host}:8080/actuator/info"),
                "healthCheckUrl": format!("http://{host}:8080/actuator/health"),
                "vipAddress": "orders",
                "secureVipAddress": "orders",
                "isCoordinatingDiscoveryServer": "false",
                "lastUpdatedTimestamp": start_of(i).to_string(),
                "lastDirtyTimestamp": start_of(i).to_string(),
                "actionType": "ADDED",
            })
        })
        .collect();
    serde_json::to_vec(&json!({"application": {"name": "ORDERS", "instance": inst}})).unwrap()
}

/// `GET /v1/health/service/orders` reply with n entries.
fn consul_body(n: usize) -> Vec<u8> {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            let host = ip(i);
            let node = format!("node-{i}");
            json!({
                "Node": {
                    "ID": format!("{i:08x}-0000-0000-0000-000000000000"),
                    "Node": node,
                    "Address": host,
                    "Datacenter": "dc1",
                    "TaggedAddresses": {"lan": host, "wan": host},
                    "Meta": {"consul-network-segment": ""},
                    "CreateIndex": 10 + i,
                    "ModifyIndex": 10 + i,
                },
                "Service": {
                    "ID": format!("orders-{i}"),
                    "Service": "orders",
                    "Tags": ["v1", "http"],
                    "Address": host,
                    "Meta": {"timestamp": start_of(i).to_string(), "warmup": WARMUP.to_string(), "version": "1.4.2"},
                    "Port": 8080,
                    "Weights": {"Passing": 1, "Warning": 1},
                    "EnableTagOverride": false,
                    "CreateIndex": 20 + i,
                    "ModifyIndex": 20 + i,
                },
                "Checks": [
                    {"Node": node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "Notes": "",
                     "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "", "ServiceTags": []},
                    {"Node": node, "CheckID": format!("service:orders-{i}"), "Name": "Service 'orders' check", "Status": "passing",
                     "Notes": "", "Output": "HTTP GET http://localhost/health: 200 OK", "ServiceID": format!("orders-{i}"),
                     "ServiceName": "orders", "ServiceTags": ["v1", "http"]},
                ],
            })
        })
        .collect();
    serde_json::to_vec(&entries).unwrap()
}

/// lossless's static JSON document with n instances (every 10th with a start time, warming).
fn static_body(n: usize) -> Vec<u8> {
    let inst: Vec<Value> = (0..n)
        .map(|i| {
            if i % 10 == 0 {
                json!({"address": format!("{}:8080", ip(i)), "weight": 100, "start_ms": start_of(i), "warmup_ms": WARMUP})
            } else {
                json!({"address": format!("{}:8080", ip(i)), "weight": 100})
            }
        })
        .collect();
    serde_json::to_vec(&json!({ "instances": inst })).unwrap()
}

fn bench_warmup(c: &mut Criterion) {
    let mut g = c.benchmark_group("warmup");
    g.bench_function("dubbo_weight", |b| {
        b.iter(|| {
            warmup::dubbo_weight(black_box(100), black_box(Some(NOW - 300_000)), black_box(WARMUP), black_box(NOW))
        })
    });
    g.finish();
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Random => "random",
        Policy::RoundRobin => "round_robin",
    }
}

fn bench_balancer(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_pick_2_fallbacks");
    for n in [10usize, 1_000, 10_000] {
        let ms = members(n);
        for policy in [Policy::Random, Policy::RoundRobin] {
            let mut rng = Rng::new(7);
            let mut bal = Balancer::new(policy, Curve::default(), 100);
            bal.rebuild(&ms, NOW, &mut rng);
            assert!(bal.warming(), "10 % of the instances warm up");
            let mut out = Vec::with_capacity(3);
            g.bench_with_input(BenchmarkId::new(policy_name(policy), n), &n, |b, _| {
                b.iter(|| {
                    bal.pick(&mut rng, 2, &mut out).unwrap();
                    black_box(out.len())
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("balancer_rebuild");
    g.sample_size(20);
    for n in [10_000usize] {
        let ms = members(n);
        g.throughput(Throughput::Elements(n as u64));
        for policy in [Policy::Random, Policy::RoundRobin] {
            let mut rng = Rng::new(7);
            let mut bal = Balancer::new(policy, Curve::default(), 100);
            g.bench_with_input(BenchmarkId::new(policy_name(policy), n), &n, |b, _| {
                b.iter(|| {
                    bal.rebuild(black_box(&ms), NOW, &mut rng);
                    black_box(bal.serving())
                })
            });
        }
    }
    g.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(20);
    for n in [1_000usize, 10_000] {
        let snap = Snapshot { version: 3, updated_ms: NOW, members: members(n) };
        let bytes = snap.encode();
        assert_eq!(Snapshot::decode(&bytes).unwrap().members.len(), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("encode", n), &n, |b, _| b.iter(|| black_box(snap.encode()).len()));
        g.bench_with_input(BenchmarkId::new("decode", n), &n, |b, _| {
            b.iter(|| Snapshot::decode(black_box(&bytes)).unwrap().members.len())
        });
    }
    g.finish();
}

type Parser = fn(&[u8], &BuildOptions) -> Result<registry::Parsed, registry::RegistryError>;
/// Makes a registry body with n instances.
type BodyGen = fn(usize) -> Vec<u8>;

fn nacos_v1(body: &[u8], build: &BuildOptions) -> Result<registry::Parsed, registry::RegistryError> {
    registry::nacos::parse_list(body, Api::V1, build)
}

/// An unchanged reply is recognised by its fingerprint (volatile stamps left out) instead of a
/// parse: the cost every refresh of an unchanged 10,000-instance service pays.
fn bench_unchanged(c: &mut Criterion) {
    let nacos_keys: &[&str] = &["\"lastRefTime\":", "\"checksum\":"];
    let eureka_keys: &[&str] = &["\"lastRenewalTimestamp\":"];
    let cases: [(&str, BodyGen, &[&str]); 3] =
        [("nacos_v1", nacos_body, nacos_keys), ("eureka", eureka_body, eureka_keys), ("static_json", static_body, &[])];
    let mut g = c.benchmark_group("registry_unchanged");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(20);
    for (name, body_of, keys) in cases {
        let body = body_of(10_000);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new(name, 10_000), &10_000, |b, _| {
            b.iter(|| registry::fingerprint(black_box(&body), keys))
        });
    }
    g.finish();
}

fn bench_parsers(c: &mut Criterion) {
    let parsers: [(&str, BodyGen, Parser); 4] = [
        ("nacos_v1", nacos_body, nacos_v1),
        ("eureka", eureka_body, registry::eureka::parse),
        ("consul", consul_body, registry::consul::parse),
        ("static_json", static_body, registry::static_json::parse),
    ];
    let build = BuildOptions::default();
    let mut g = c.benchmark_group("registry_parse");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    for (name, body_of, parse) in parsers {
        for n in [1_000usize, 10_000] {
            let body = body_of(n);
            let parsed = parse(&body, &build).unwrap();
            assert_eq!((parsed.instances.len(), parsed.skipped), (n, 0), "{name}: every generated record parses");
            let warming = parsed.instances.iter().filter(|i| warmup::is_warming(i.start_ms, i.warmup_ms, NOW)).count();
            assert_eq!(warming, n / 10, "{name}: start time and warmup read from the record");
            g.throughput(Throughput::Bytes(body.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| parse(black_box(&body), &build).unwrap().instances.len())
            });
        }
    }
    g.finish();
}

/// `GET /eureka/apps/ORDERS` reply as [`eureka_body`], with the 13 Dubbo metadata keys.
fn eureka_body_dubbo(n: usize) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(&eureka_body(n)).unwrap();
    for (i, inst) in doc["application"]["instance"].as_array_mut().unwrap().iter_mut().enumerate() {
        inst["metadata"] = dubbo_metadata(i);
    }
    serde_json::to_vec(&doc).unwrap()
}

/// `GET /v1/health/service/orders` reply as [`consul_body`], with the 13 Dubbo metadata keys.
fn consul_body_dubbo(n: usize) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(&consul_body(n)).unwrap();
    for (i, e) in doc.as_array_mut().unwrap().iter_mut().enumerate() {
        e["Service"]["Meta"] = dubbo_metadata(i);
    }
    serde_json::to_vec(&doc).unwrap()
}

/// One registry of each kind (Consul with blocking queries, its default), each with one service.
fn refresh_config(kind: &str) -> config::Config {
    let reg = match kind {
        "nacos_v1" => r#"{"type":"nacos","api":"v1""#,
        "eureka" => r#"{"type":"eureka""#,
        _ => r#"{"type":"consul""#,
    };
    let cfg = format!(
        r#"{{"registries":{{"r":{reg},"cluster":"r","authority":"r","max_body_bytes":67108864}}}},"services":[{{"name":"orders","registry":"r"}}]}}"#
    );
    config::parse(cfg.as_bytes()).unwrap()
}

/// A refresh of a 10,000-instance service through the poller (fingerprint, parse, keep-last-good,
/// compare), 13 metadata keys per instance. `changed`: the reply adds an instance to the published
/// 9,999, so it is parsed and published. `unchanged`: the published reply again (Consul: with a
/// new `X-Consul-Index`, which a blocking query returns when the index moved without the list
/// changing).
fn bench_refresh(c: &mut Criterion) {
    let cases: [(&str, BodyGen); 3] =
        [("nacos_v1", nacos_body), ("eureka", eureka_body_dubbo), ("consul", consul_body_dubbo)];
    let n = 10_000usize;
    let mut g = c.benchmark_group("registry_refresh");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    for (name, body_of) in cases {
        let cfg = refresh_config(name);
        let (reg, sc) = (&cfg.registries[0], &cfg.services[0]);
        let mut session = registry::Session::default();
        let mut index = 1u64;
        let mut reply = |ps: &mut PollState, current: &Snapshot, body: &[u8], index: u64| {
            let headers = vec![("x-consul-index".to_string(), index.to_string())];
            let resp = HttpResponse { status: Some(200), headers: &headers, body, body_size: body.len() };
            ps.on_reply(reg, &mut session, sc, current, Call::List, &resp, NOW, 1000)
        };
        let fewer = body_of(n - 1);
        let body = body_of(n);
        // the published membership: n - 1 instances
        let mut ps = PollState::default();
        let (out, snap) = reply(&mut ps, &Snapshot::default(), &fewer, index);
        assert!(matches!(out, RefreshOutcome::Published { hosts, skipped: 0, .. } if hosts == n - 1), "{out:?}");
        let before = snap.unwrap();
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new(format!("changed/{name}"), n), &n, |b, _| {
            b.iter(|| {
                index += 1;
                let mut ps = PollState::default();
                let (out, snap) = reply(&mut ps, &before, black_box(&body), index);
                assert!(matches!(out, RefreshOutcome::Published { .. }), "{out:?}");
                snap.map(|s| s.members.len())
            })
        });
        // the same reply as the one published
        index += 1;
        let (out, snap) = reply(&mut ps, &before, &body, index);
        assert!(matches!(out, RefreshOutcome::Published { hosts, .. } if hosts == n), "{out:?}");
        let current = snap.unwrap();
        g.bench_with_input(BenchmarkId::new(format!("unchanged/{name}"), n), &n, |b, _| {
            b.iter(|| {
                index += 1;
                let (out, snap) = reply(&mut ps, &current, black_box(&body), index);
                assert!(matches!(out, RefreshOutcome::Same { skipped: 0, .. }), "{out:?}");
                snap.is_none()
            })
        });
    }
    g.finish();
}

/// A VM and a fake shared store with `n` instances published through the real refresh path
/// (static registry reply -> keep-last-good -> encode -> shared data -> decode -> balancer).
struct World {
    vm: Vm,
    shared: FakeShared,
}

const WORLD_CFG: &[u8] =
    br#"{"registries":{"s":{"type":"static","cluster":"registry","authority":"registry","path":"/m/{service}.json"}},
    "services":[{"name":"demo","registry":"s","match_clusters":["demo"]}]}"#;

fn new_vm() -> Vm {
    Vm::new(config::parse(WORLD_CFG).unwrap(), WORLD_CFG, 1, Rng::new(1))
}

fn world(n: usize) -> World {
    world_of(n, &static_body(n))
}

/// A VM that published `body`, a static document of `n` instances.
fn world_of(n: usize, body: &[u8]) -> World {
    let mut vm = new_vm();
    let shared = FakeShared::default();
    vm.on_start(&shared);
    let due = vm.on_tick(&shared, NOW);
    vm.dispatched(1, due.first().unwrap());
    let headers = vec![(":status".to_string(), "200".to_string())];
    let resp = HttpResponse { status: Some(200), headers: &headers, body, body_size: body.len() };
    let (_, out) = vm.on_call_reply(&shared, 1, &resp, NOW).unwrap();
    assert!(matches!(out, RefreshOutcome::Published { hosts, .. } if hosts == n), "{out:?}");
    World { vm, shared }
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_end_to_end");
    for n in [10usize, 1_000, 10_000] {
        let mut w = world(n);
        let mut scratch = Vec::with_capacity(3);
        // the clock advances 1 ms every 15 requests (15k req/s on this VM): with 10 % of the
        // instances warming, the weights are recomputed every 100 ms, i.e. every ~1,500 requests,
        // and that O(n) rebuild is amortised into the figure
        let mut k: i64 = 0;
        g.bench_with_input(BenchmarkId::new("sync_route_warming_15k_rps", n), &n, |b, _| {
            b.iter(|| {
                k += 1;
                let now = NOW + k / 15;
                let World { vm, shared } = &mut w;
                vm.sync(shared, now);
                let s = &mut vm.services[0];
                match route(0, &s.cfg, &mut s.view, None, None, now, &mut vm.rng, &mut scratch) {
                    Route::Forward { value, .. } => value.len(),
                    other => panic!("{other:?}"),
                }
            })
        });
    }
    // a membership change costs every VM a decode and a rebuild: the per-VM share of a publish
    for n in [1_000usize, 10_000] {
        let w = world(n);
        g.bench_with_input(BenchmarkId::new("sync_after_publish", n), &n, |b, _| {
            b.iter_batched(
                || {
                    bump_gen(&w.shared, &w.vm.keys);
                    // a fresh VM, as another worker: decodes the snapshot
                    new_vm()
                },
                |mut vm| {
                    vm.sync(&w.shared, NOW);
                    vm.services[0].view.balancer.serving()
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// The host as one exchange of the Envoy load test sees it: wrk's request headers, the cluster,
/// the response 200 from the address written first.
struct BenchHost<'a> {
    shared: &'a FakeShared,
    now: i64,
    request: Headers,
    response: Headers,
    upstream: RefCell<String>,
}

impl Shared for BenchHost<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.shared.set(key, value, cas)
    }
}

impl Host for BenchHost<'_> {
    fn now_ms(&self) -> i64 {
        self.now
    }
    fn request_headers(&self) -> Headers {
        self.request.clone()
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool {
        if name == "x-lossless-upstream" {
            let first = value.and_then(|v| v.split(',').next()).unwrap_or_default();
            *self.upstream.borrow_mut() = first.to_string();
        }
        true
    }
    fn response_headers(&self) -> Headers {
        self.response.clone()
    }
    fn set_response_header(&self, _: &str, _: Option<&str>) -> bool {
        true
    }
    fn property(&self, path: &[&str]) -> Option<String> {
        match path {
            ["xds", "cluster_name"] => Some("demo".into()),
            ["upstream", "address"] => Some(self.upstream.borrow().clone()),
            _ => None,
        }
    }
    fn clear_route_cache(&self) -> bool {
        true
    }
}

/// lossless' whole request path in one VM by membership size, as the Envoy load test drives it
/// (variant (d): every instance warm, weights equal): the request (headers, generation, cluster,
/// decision, header write), its end and its response (outlier detection, stall detection), with
/// the clock advancing 1 ms every 20 requests (20k req/s) and the VM's 100 ms tick amortised in.
fn bench_request_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_path");
    for n in [3usize, 100, 10_000] {
        let inst: Vec<Value> = (0..n).map(|i| json!({"address": format!("{}:8080", ip(i)), "weight": 100})).collect();
        let World { mut vm, shared } = world_of(n, &serde_json::to_vec(&json!({ "instances": inst })).unwrap());
        let request = Headers::from_pairs(&[
            (":authority", "127.0.0.1:10000"),
            (":path", "/"),
            (":method", "GET"),
            (":scheme", "http"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "8a5c5d3e-1f43-4f0e-9a57-3c1f3b0f2d11"),
        ]);
        let response = Headers::from_pairs(&[
            (":status", "200"),
            ("content-length", "2"),
            ("content-type", "application/json"),
            ("x-envoy-upstream-service-time", "0"),
        ]);
        let mut k: i64 = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                k += 1;
                let now = NOW + k / 20;
                if k % 2000 == 0 {
                    black_box(vm.on_tick(&shared, now));
                }
                let h = BenchHost {
                    shared: &shared,
                    now,
                    request: request.clone(),
                    response: response.clone(),
                    upstream: RefCell::default(),
                };
                let mut ex = Exchange::default();
                black_box(vm.on_request(&h, &mut ex));
                vm.on_request_end(&h, &ex);
                vm.on_response(&h, &ex);
                ex.written.len()
            })
        });
    }
    g.finish();
}

/// The poller VM's 100 ms tick by membership size, as Envoy runs it under load (variant (d)):
/// the lease, the view's sync (nothing changed), stall detection's check, what is due, and the
/// gauges the glue sets from [`Vm::gauges`]. Its share of a request is this over the requests
/// served in 100 ms (about 1,000 at 10k req/s).
fn bench_tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("tick");
    for n in [3usize, 10_000] {
        let inst: Vec<Value> = (0..n).map(|i| json!({"address": format!("{}:8080", ip(i)), "weight": 100})).collect();
        let World { mut vm, shared } = world_of(n, &serde_json::to_vec(&json!({ "instances": inst })).unwrap());
        let mut now = NOW;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                now += 100;
                let due = vm.on_tick(&shared, now).len();
                let hosts: u64 = vm.gauges(now).map(|(_, g)| g.hosts.total).sum();
                black_box((due, hosts))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).without_plots();
    targets = bench_warmup, bench_balancer, bench_snapshot, bench_parsers, bench_unchanged, bench_refresh, bench_route,
        bench_request_path, bench_tick
}
criterion_main!(micro);
