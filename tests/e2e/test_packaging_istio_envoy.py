"""Packaging: the Istio manifests (envoy/istio/) through Envoy and the filter, offline.

The EnvoyFilter's patches are merged (proto MERGE semantics) into the outbound cluster, virtual
host and route istiod 1.28 builds; the merged retry policy is asserted, Envoy validates the result
together with the WasmPlugins' pluginConfig (loaded and checked by the filter), runs the merged
route against a slow backend, and refuses the patched cluster where the recipe says it does. The
notes of the manifests and of docs/istio.md are checked against Istio's source. Needs ENVOY_BIN
and LOSSLESS_WASM (`make build`); the Envoy validations are marked compat: `make test` also runs
them on the oldest supported Envoy. The manifests against Istio's CRDs:
test_packaging_istio_crds.py.
"""

import copy
import json
from collections import Counter

import pytest
import yaml

from kit import HOUR_MS, REPO, free_port, now_ms, render_text, request, wait_until
from shipped import (
    DOCS,
    ENVOY_DIR,
    ISTIO_DEFAULT_RETRY_POLICY,
    ISTIO_DIR,
    envoy_refusal,
    envoy_validate,
    find,
    hcm,
    istio_route,
    merge,
    mutated,
    orders_cluster_name,
    orders_patches,
    template,
)

# ------------------------------------------------------------------------------------------------
# Istio manifests through Envoy and the filter

ISTIO_NODE = {"id": "sidecar~10.1.0.5~frontend-0.default~default.svc.cluster.local",
              "cluster": "frontend.default"}
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def static_endpoints(name, host, port):
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}


def wasm_filter(wasm, plugin_spec, vm_id):
    """The Wasm HTTP filter Istio builds from a WasmPlugin (pluginConfig as a JSON string,
    vmConfig env HOST as host_env_keys)."""
    vm_config = {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8",
                 "code": {"local": {"filename": str(wasm)}}}
    env = plugin_spec.get("vmConfig", {}).get("env", [])
    if env:
        vm_config["environment_variables"] = {
            "host_env_keys": [e["name"] for e in env if e.get("valueFrom") == "HOST"],
            "key_values": {e["name"]: e.get("value", "") for e in env
                           if e.get("valueFrom", "INLINE") == "INLINE"},
        }
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": plugin_spec.get("pluginName", "lossless"),
                "root_id": plugin_spec.get("pluginName", "lossless"),
                "fail_open": plugin_spec.get("failStrategy") == "FAIL_OPEN",
                "vm_config": vm_config,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(plugin_spec["pluginConfig"], separators=(",", ":")),
                },
            },
        },
    }


def listener(name, port, virtual_hosts, http_filters, address="0.0.0.0"):
    """An HTTP listener: `http_filters`, then the router."""
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": name,
                "route_config": {"name": str(port), "virtual_hosts": virtual_hosts},
                "http_filters": [*http_filters, ROUTER],
            },
        }]}],
    }


def istio_cluster(name):
    """An outbound cluster shaped like istiod's (EDS over ADS, LEAST_REQUEST, its circuit
    breakers)."""
    unlimited = 4294967295
    return {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"service_name": name, "eds_config": {
            "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}},
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "common_lb_config": {},
        "circuit_breakers": {"thresholds": [{
            "max_connections": unlimited, "max_pending_requests": unlimited,
            "max_requests": unlimited, "max_retries": unlimited, "track_remaining": True}]},
    }


def istio_bootstrap(listeners, clusters):
    http_options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    return {
        "node": ISTIO_NODE,
        "dynamic_resources": {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters + [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {http_options: {
                    "@type": f"type.googleapis.com/{http_options}",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": static_endpoints("xds-grpc", "127.0.0.1", 15010),
            }],
        },
    }


@pytest.mark.compat
def test_istio_outbound_config_validates(envoy_bin, wasm_path, tmp_path):
    """The callers' sidecar as Istio would render it with these manifests: orders' cluster, vhost
    and route with the EnvoyFilter's patches merged, the registry's cluster, and the outbound
    WasmPlugin's filter with its pluginConfig (checked by the filter at load)."""
    plugin = find("WasmPlugin", "lossless-outbound")["spec"]
    patches = orders_patches()
    orders = orders_cluster_name()
    host, port = orders.split("||")[1], int(orders.split("|")[1])
    route = merge(istio_route(orders), patches["HTTP_ROUTE"])
    vhost = merge({"name": f"{host}:{port}", "domains": [host, f"{host}:{port}"],
                   "routes": [route]}, patches["VIRTUAL_HOST"])
    clusters = [merge(istio_cluster(orders), patches["CLUSTER"])]
    for reg in plugin["pluginConfig"]["registries"].values():
        reg_port, reg_host = reg["cluster"].split("|")[1], reg["cluster"].split("||")[1]
        clusters.append({
            "name": reg["cluster"], "type": "STRICT_DNS", "connect_timeout": "1s",
            "load_assignment": static_endpoints(reg["cluster"], reg_host, int(reg_port)),
        })
    lossless = wasm_filter(wasm_path, plugin, "lossless-outbound")
    listeners = [listener(str(port), port, [vhost], [lossless])]
    envoy_validate(envoy_bin, istio_bootstrap(listeners, clusters), tmp_path)


def inbound_config(wasm, plugin):
    vhost = {"name": "inbound|http|8080", "domains": ["*"], "routes": [{
        "name": "default", "match": {"prefix": "/"},
        "route": {"cluster": "inbound|8080||", "timeout": "0s"}}]}
    clusters = [{
        "name": "inbound|8080||", "type": "STATIC", "connect_timeout": "10s",
        "load_assignment": static_endpoints("inbound|8080||", "127.0.0.1", 8080),
    }]
    for reg in plugin["pluginConfig"]["registries"].values():
        clusters.append(merge(istio_cluster(reg["cluster"]), {}))
    lossless = wasm_filter(wasm, plugin, "lossless-inbound")
    return istio_bootstrap([listener("virtualInbound", 15006, [vhost], [lossless])], clusters)


@pytest.mark.compat
def test_istio_inbound_config_validates(envoy_bin, wasm_path, tmp_path):
    """The inbound WasmPlugin's pluginConfig with self_address as it must read in a pod (the pod
    IP in place of ${INSTANCE_IP}): everything else in it is checked by the filter."""
    plugin = copy.deepcopy(find("WasmPlugin", "lossless-inbound")["spec"])
    ib = plugin["pluginConfig"]["inbound"]
    assert ib["self_address"].startswith("${INSTANCE_IP}:")
    assert plugin["failStrategy"] == "FAIL_OPEN", (
        "a plugin that cannot start must not take the pod down")
    ib["self_address"] = ib["self_address"].replace("${INSTANCE_IP}", "10.1.0.7")
    envoy_validate(envoy_bin, inbound_config(wasm_path, plugin), tmp_path)


def test_istio_inbound_config_as_shipped_validates(envoy_bin, wasm_path, tmp_path):
    """The inbound WasmPlugin exactly as shipped, with the sidecar's INSTANCE_IP in the Envoy
    process environment (Istio's injector sets it to the pod IP)."""
    plugin = find("WasmPlugin", "lossless-inbound")["spec"]
    envoy_validate(envoy_bin, inbound_config(wasm_path, plugin), tmp_path,
                   env={"INSTANCE_IP": "10.1.0.7"})


# ------------------------------------------------------------------------------------------------
# Istio: the merged route's retry policy and timeouts, the cluster patch's side effects

DRAIN_RETRY_ON = "connect-failure,refused-stream,retriable-headers"
REFUSALS = "self_draining|flow_limited|not_ready"
SELF_DRAINING = [{"name": "x-lossless-drain", "string_match": {"safe_regex": {"regex": REFUSALS}}}]


def seconds(duration):
    """Seconds of a protobuf JSON duration ("5s", "0.250s"); None for none or 0s."""
    if duration is None:
        return None
    value = float(duration.rstrip("s"))
    return value or None


def slow_call_problems(route):
    """Why `route` would fail a slow but healthy call. A per_try_timeout caps every attempt, the
    first one included (Envoy's RetryPolicy.per_try_timeout; Istio's HTTPRetry.perTryTimeout says
    the same: "including the initial call"). Shorter than the route's own timeout (or with none),
    it ends calls the route lets run: a 504, or, were timed-out attempts retried, a second run of a
    request that may still be executing (a POST twice)."""
    action = route["route"]
    per_try = seconds(action.get("retry_policy", {}).get("per_try_timeout"))
    overall = seconds(action.get("timeout", "15s"))  # Envoy's default when a route sets none
    if per_try is not None and (overall is None or per_try < overall):
        limit = "none" if overall is None else f"{overall:g}s"
        return [f"per_try_timeout {per_try:g}s caps the first attempt, under the route's "
                f"timeout ({limit})"]
    return []


def test_inbound_template_takes_the_address_from_the_environment(envoy_bin, wasm_path, tmp_path):
    """docs/configuration.md and docs/istio.md: inbound.self_address "${INSTANCE_IP}:8080" is
    expanded from the Wasm VM's environment. render.py leaves a value's ${NAME} alone,
    envoy/inbound.yaml passes Envoy's INSTANCE_IP to the VM, and without the variable the filter
    refuses the config."""
    cfg = {"mode": "inbound",
           "inbound": {"service": "demo", "self_address": "${INSTANCE_IP}:8080"},
           "registries": {"n": {"type": "nacos", "cluster": "registry",
                                "authority": "127.0.0.1:8848"}},
           "services": [{"name": "demo", "registry": "n"}]}
    text = render_text((ENVOY_DIR / "inbound.yaml").read_text(), {
        "ADMIN_PORT": 9902, "LISTEN_PORT": 10001, "APP_PORT": 8080, "REGISTRY_PORT": 8848,
        "LOSSLESS_WASM": str(wasm_path), "LOSSLESS_CONFIG": cfg})
    assert '"self_address":"${INSTANCE_IP}:8080"' in text
    envoy_validate(envoy_bin, text, tmp_path, env={"INSTANCE_IP": "10.1.0.7"})
    with pytest.raises(AssertionError, match="inbound.self_address"):
        envoy_validate(envoy_bin, text, tmp_path, env={"INSTANCE_IP": ""})
    with pytest.raises(ValueError, match="APP_PORT"):
        render_text((ENVOY_DIR / "inbound.yaml").read_text(), {"LOSSLESS_CONFIG": cfg})


def test_istio_merged_retry_policy():
    """The EnvoyFilter's HTTP_ROUTE patch merged into Istio 1.28's route for orders: the
    drain-safe retry policy, and nothing that fails a slow but healthy call, with Istio's default
    route (no timeout) and with a VirtualService timeout."""
    patch = orders_patches()["HTTP_ROUTE"]
    for timeout in ("0s", "10s"):
        route = merge(istio_route(orders_cluster_name(), timeout), patch)
        retry = route["route"]["retry_policy"]
        assert retry["retry_on"] == DRAIN_RETRY_ON
        assert retry["retriable_headers"] == SELF_DRAINING
        assert retry["num_retries"] == 3
        # kept from Istio's default: a retry goes to another host
        assert retry["retry_host_predicate"] == ISTIO_DEFAULT_RETRY_POLICY["retry_host_predicate"]
        assert retry["host_selection_retry_max_attempts"] == 5
        assert "retriable_status_codes" not in retry
        # no per-try timeout, and the route's own timeout is Istio's (or the VirtualService's)
        assert "per_try_timeout" not in retry
        assert route["route"]["timeout"] == timeout
        assert slow_call_problems(route) == []
    # the retry conditions of the plain-Envoy template's route for every method
    vhost = hcm(template("outbound-override-host.yaml"))["route_config"]["virtual_hosts"][0]
    every_method = vhost["routes"][-1]["route"]["retry_policy"]
    for key in ("retry_on", "retriable_headers", "num_retries"):
        assert retry[key] == every_method[key], key


def test_istio_slow_call_check_catches_a_per_try_timeout():
    """Negative control: the patch with the per_try_timeout the manifest used to carry (5s) fails
    the check on Istio's route, which has no timeout."""
    patch = mutated(orders_patches()["HTTP_ROUTE"],
                    ["route", "retry_policy", "per_try_timeout"], "5s")
    route = merge(istio_route(orders_cluster_name()), patch)
    assert slow_call_problems(route) == [
        "per_try_timeout 5s caps the first attempt, under the route's timeout (none)"]




def test_istio_merged_route_lets_slow_calls_finish(make_backend, make_envoy, tmp_path):
    """The merged route in a running Envoy: orders' cluster and route as the callers' sidecar
    gets them (static endpoints in place of EDS), a backend that takes 1.5 s. The shipped patch
    answers 200, POSTs included; the same patch with a 1 s per_try_timeout (the old manifest's
    5 s, scaled down) answers 504, which is what slow_call_problems stands for."""
    backend = make_backend()
    backend.set_delay(1500)
    name = orders_cluster_name()
    patches = orders_patches()
    orders_cluster = merge(istio_cluster(name), patches["CLUSTER"])
    del orders_cluster["eds_cluster_config"]
    orders_cluster.update(type="STATIC", load_assignment=static_endpoints(
        name, "127.0.0.1", backend.port))
    capped = mutated(patches["HTTP_ROUTE"], ["route", "retry_policy", "per_try_timeout"], "1s")
    vhosts = [merge({"name": vhost, "domains": [vhost],
                     "routes": [merge(istio_route(name), patch)]}, patches["VIRTUAL_HOST"])
              for vhost, patch in (("shipped", patches["HTTP_ROUTE"]), ("capped", capped))]
    # a template for the kit's Envoy, which fills in the ports
    outbound = listener("outbound", "${LISTEN_PORT}", vhosts, [], address="127.0.0.1")
    outbound["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["name"] = "outbound"
    config = tmp_path / "slow-calls.template.yaml"
    config.write_text(yaml.safe_dump({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": "${ADMIN_PORT}"}}},
        "static_resources": {"listeners": [outbound], "clusters": [orders_cluster]},
    }, sort_keys=False))
    port = free_port()
    make_envoy(config, {"LISTEN_PORT": port}, name="slow-calls", log_level="warning")
    for vhost, method, want in (("shipped", "GET", 200), ("shipped", "POST", 200),
                                ("capped", "GET", 504)):
        status, _, _ = request(method, f"http://127.0.0.1:{port}/",
                               body=b"x" if method == "POST" else None,
                               headers={"host": vhost}, timeout=10)
        assert status == want, (vhost, method)


def transparent_sidecar(wasm, registry_addr, backends, ports):
    """A template of the callers' sidecar with envoy/istio/transparent-orders.yaml applied: the
    port's route configuration as istiod builds it (orders' virtual host, then the `allow_any`
    catch-all to PassthroughCluster) with the EnvoyFilter's patches, orders' cluster with
    envoyfilter-orders.yaml's override_host (static endpoints in place of EDS), PassthroughCluster,
    the registry, and the transparent WasmPlugin's filter (its registry pointed at `registry_addr`).
    One listener per entry of `ports` (placeholder names), all on the same route configuration."""
    plugin = copy.deepcopy(find("WasmPlugin", "lossless-outbound-transparent")["spec"])
    cfg = plugin["pluginConfig"]
    [reg] = cfg["registries"].values()
    reg["authority"] = registry_addr
    cfg["refresh_interval_ms"] = 500
    ef = find("EnvoyFilter", "lossless-orders-transparent")["spec"]["configPatches"]
    patches = {(p["applyTo"], p["patch"]["operation"]): p["patch"]["value"] for p in ef}
    name = orders_cluster_name()
    host, port = name.split("||")[1], int(name.split("|")[1])
    orders_vhost = merge({"name": f"{host}:{port}", "domains": [host, f"{host}:{port}"],
                          "routes": [merge(istio_route(name), orders_patches()["HTTP_ROUTE"])]},
                         orders_patches()["VIRTUAL_HOST"])
    allow_any = merge({"name": "allow_any", "domains": ["*"], "routes": [
        {"name": "allow_any", "match": {"prefix": "/"},
         "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s"}}]},
        patches["VIRTUAL_HOST", "MERGE"])
    allow_any["routes"].insert(0, patches["HTTP_ROUTE", "INSERT_FIRST"])
    orders_cluster = merge(istio_cluster(name), orders_patches()["CLUSTER"])
    del orders_cluster["eds_cluster_config"]
    orders_cluster.update(type="STATIC", load_assignment={"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": b.port}}}} for b in backends]}]})
    reg_host, reg_port = registry_addr.rsplit(":", 1)
    clusters = [orders_cluster,
                {"name": "PassthroughCluster", "type": "ORIGINAL_DST",
                 "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s"},
                {"name": reg["cluster"], "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": static_endpoints(reg["cluster"], reg_host, int(reg_port))}]
    lossless = wasm_filter(wasm, plugin, "lossless-outbound")
    listeners = []
    for p in ports:
        one = listener(p, "${" + p + "}", [orders_vhost, allow_any], [lossless],
                       address="127.0.0.1")
        one["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["name"] = str(port)
        listeners.append(one)
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": "${ADMIN_PORT}"}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


@pytest.mark.compat
def test_istio_transparent_route_takes_the_pick_to_the_service(rnacos, make_backend, make_envoy,
                                                               wasm_path, tmp_path):
    """transparent-orders.yaml in a running Envoy: a caller's pick of a draining pod comes in on
    the catch-all route (PassthroughCluster); lossless moves it, names the service in
    x-lossless-service and has Envoy match the route again, and the inserted route takes it to
    orders' own cluster, whose override_host sends it to lossless' pick. Here the "pod" picked is
    the listener's own address (what destination.address reads without a capture), registered in
    Nacos as a draining instance of orders. A pick of no member (another listener) stays on
    PassthroughCluster, which has no original destination to go to here (503); so does a request
    whose client sent x-lossless-service itself: the header is removed."""
    backends = [make_backend() for _ in range(2)]
    judged, stranger = free_port(), free_port()
    hour_ago = now_ms() - HOUR_MS
    for b in backends:
        rnacos.register("orders", "127.0.0.1", b.port, metadata={"timestamp": hour_ago})
    rnacos.register("orders", "127.0.0.1", judged,
                    metadata={"timestamp": hour_ago, "lossless.drain": "true"})
    config = tmp_path / "transparent.template.yaml"
    config.write_text(yaml.safe_dump(
        transparent_sidecar(wasm_path, rnacos.addr, backends, ["JUDGED", "STRANGER"]),
        sort_keys=False))
    envoy = make_envoy(config, {"JUDGED": judged, "STRANGER": stranger}, name="transparent",
                       concurrency=2)
    addrs = {f"127.0.0.1:{b.port}" for b in backends}

    def answered(port, headers=None, method="GET"):
        status, hdrs, _ = request(method, f"http://127.0.0.1:{port}/orders/1",
                                  body=b"x" if method == "POST" else None,
                                  headers={"host": "10.1.0.7:8080", **(headers or {})})
        return status, hdrs.get("x-instance")

    wait_until(lambda: answered(judged)[1] in addrs, timeout=15,
               what="lossless knows orders and moves the draining pick")
    got = Counter(answered(judged, method=m)[1] for m in ("GET", "POST") * 20)
    assert set(got) == addrs, got
    assert answered(stranger) == (503, None)
    assert answered(stranger, {"x-lossless-service": "orders"}) == (503, None)
    # counted (on the next tick): the moved picks, and the two requests left on PassthroughCluster
    wait_until(lambda: envoy.stat("wasmcustom.lossless.orders.transparent.redirected.draining", 0)
               >= 40 and envoy.stat("wasmcustom.lossless.transparent.untouched.unknown", 0) >= 1,
               timeout=5, what="the transparent counters")


@pytest.mark.compat
def test_istio_cluster_patch_side_effects(envoy_bin, tmp_path):
    """What the EnvoyFilter's comment says about orders' patched cluster, with Envoy itself.
    A DestinationRule's simple, consistentHash and warmup settings (lb_policy and its lb configs)
    are accepted and ignored: Envoy uses load_balancing_policy when it is set (Envoy's
    source/common/upstream/upstream_impl.cc, ClusterInfoImpl). Envoy refuses the cluster with
    common_lb_config.locality_weighted_lb_config, which istiod sets for a localityLbSetting with
    distribute, for failover or failoverPriority with outlier detection or forced by a Service's
    trafficDistribution, and on every cluster with ENABLE_LOCALITY_WEIGHTED_LB_CONFIG=true
    (istio/istio 1.28.10 pilot/pkg/networking/core/cluster_traffic_policy.go
    applyLocalityLoadBalancer; pilot/pkg/networking/core/loadbalancer/loadbalancer.go
    GetLocalityLbSetting)."""
    patched = merge(istio_cluster(orders_cluster_name()), orders_patches()["CLUSTER"])
    # Istio's 10 s connect timeout (a DestinationRule's connectTimeout) gives way to 0.5 s
    assert patched["connect_timeout"] == "0.5s"
    accepted = {
        "simple": {"lb_policy": "RANDOM"},
        "consistentHash": {"lb_policy": "RING_HASH",
                           "ring_hash_lb_config": {"minimum_ring_size": 1024}},
        "warmup": {"least_request_lb_config": {"slow_start_config": {"slow_start_window": "60s"}}},
        # outlier detection on its own is fine
        "outlierDetection": {"outlier_detection": {"consecutive_5xx": 5}},
    }
    for setting, fields in accepted.items():
        config = istio_bootstrap([], [merge(patched, fields)])
        out = envoy_refusal(envoy_bin, config, tmp_path, f"{setting}.yaml")
        assert out is None, f"{setting}: {out[-2000:]}"
    locality = merge(patched, {"common_lb_config": {"locality_weighted_lb_config": {}}})
    out = envoy_refusal(envoy_bin, istio_bootstrap([], [locality]), tmp_path,
                       "locality.yaml")
    assert out is not None and "load_balancing_policy cannot be combined" in out, out


# Sources of the manifests' other notes on Istio (istio/istio 1.28.10 unless stated):
# - the floor: istiod resolves an EnvoyFilter patch's @type against the types it links
#   (pkg/config/xds/filter_types.gen.go, which has OverrideHost from tag 1.27.0 on) and refuses
#   unknown ones at admission (pkg/config/validation/envoyfilter/envoyfilter.go, "referenced type
#   unknown"); istio/proxy compiles envoy.load_balancing_policies.override_host in from the proxy
#   of Istio 1.27 on (bazel/extension_config/extensions_build_config.bzl).
# - filter order: pilot/pkg/networking/core/listener_builder.go puts metadata exchange, then a
#   CUSTOM AuthorizationPolicy's ext_authz, then AUTHN plugins, authentication, AUTHZ plugins,
#   RBAC, STATS plugins, plugins without a phase, gRPC stats, fault, CORS, telemetry, router.
# - native sidecars: pkg/kube/inject/webhook.go DetectNativeSidecar (auto on from kubelet 1.33);
#   the injection template's preStop `pilot-agent request POST drain`; pkg/envoy/agent.go (after
#   /drain, SIGTERM exits at once: terminationDrainDuration is not waited for).
STALE_NOTES = {
    "wasmplugin-inbound.yaml": ["first in the inbound chain", "every response"],
    "wasmplugin-outbound.yaml": ["last word before the router"],
    "envoyfilter-orders.yaml": ["per_try_timeout:", "retriable_status_codes stay",
                                "an istiod that knows its type"],
    "deployment-orders.yaml": ["matters less"],
}




def test_istio_notes_match_istio():
    """The recipe's Istio floor (1.27) in every manifest of it and in docs/istio.md, the Istio
    section's home, which the README links to; none of the notes found wrong against Istio's
    source (STALE_NOTES)."""
    for path in ISTIO_DIR.glob("*.yaml"):
        text = path.read_text()
        if path.name != "serviceentry-nacos.yaml":  # optional, any Istio
            assert "Istio 1.27 or later" in text, path.name
        for note in STALE_NOTES.get(path.name, []):
            assert note not in text, f"{path.name}: {note!r}"
    assert "Istio 1.27 or later" in (DOCS / "istio.md").read_text()
    assert "](docs/istio.md)" in (REPO / "README.md").read_text()
