"""Packaging: the docker-compose demo topology, its Envoy configs, the Istio manifests and the
OCI image's Dockerfile. All offline:

- docker-compose only renders the compose file (`config`); no Docker engine is needed.
- `envoy --mode validate` checks Envoy configs without serving. It also loads the Wasm module and
  runs its configuration check, so every lossless configuration here (compose configs, the
  WasmPlugins' pluginConfig) passes through the filter's own validator.
- The Istio manifests are checked against the fields and enums of their CRDs (WasmPlugin
  v1alpha1, EnvoyFilter v1alpha3, ServiceEntry v1), transcribed below from Istio's
  customresourcedefinitions.gen.yaml: unknown fields are errors, as with kubectl's strict field
  validation. Then the EnvoyFilter's patches are merged (proto MERGE semantics) into an
  Istio-shaped outbound cluster, virtual host and route, and Envoy validates the result together
  with the outbound WasmPlugin's pluginConfig.

Needs ENVOY_BIN; the Wasm module is LOSSLESS_WASM or target/lossless.wasm (make build). The
Envoy validations are marked compat: `make test` also runs them on the oldest supported Envoy.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY_DIR = REPO / "envoy"
COMPOSE_FILE = ENVOY_DIR / "docker-compose.yaml"
COMPOSE_DIR = ENVOY_DIR / "compose"
ISTIO_DIR = ENVOY_DIR / "istio"
WASM_IN_CONTAINER = "/etc/envoy/lossless.wasm"

sys.path.insert(0, str(ENVOY_DIR))
import render  # noqa: E402  (envoy/render.py)


# ------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def envoy():
    value = os.environ.get("ENVOY_BIN", "")
    if not value or not Path(value).exists():
        pytest.fail(f"ENVOY_BIN must name the Envoy binary (got {value!r})")
    return value


@pytest.fixture(scope="module")
def wasm():
    path = Path(os.environ.get("LOSSLESS_WASM") or REPO / "target" / "lossless.wasm")
    if not path.is_file() or path.stat().st_size == 0:
        pytest.fail(f"{path} is missing: run `make build` (or set LOSSLESS_WASM)")
    return path


def envoy_validate(envoy, config, tmp_path, name="envoy.yaml", env=None):
    """Runs `envoy --mode validate` on `config` (dict or YAML text); fails the test with Envoy's
    own error line if Envoy refuses it."""
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path = tmp_path / name
    path.write_text(text)
    proc = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, **(env or {})},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "OK" in out, f"envoy refused {path}:\n{out[-3000:]}"


def compose_cli():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.fail("neither docker-compose nor `docker compose` is installed: run `make compose-cli`")


@pytest.fixture(scope="module")
def compose():
    """`docker-compose config` of envoy/docker-compose.yaml, parsed."""
    proc = subprocess.run(compose_cli() + ["-f", str(COMPOSE_FILE), "config"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def volumes(service):
    """(source, target, read_only) of a service's volumes, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
        else:
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def ports(service):
    """(host_ip, published, target) of a service's ports, short or long syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", ""), str(p.get("published", "")), str(p["target"])))
        else:
            spec = str(p).split("/")[0]
            parts = spec.split(":")
            if len(parts) == 3:
                out.append((parts[0], parts[1], parts[2]))
            elif len(parts) == 2:
                out.append(("", parts[0], parts[1]))
            else:
                out.append(("", "", parts[0]))
    return out


def lossless_filters(envoy_config):
    """The lossless Wasm filters' (config, parsed configuration JSON) of an Envoy config."""
    found = []
    for listener in envoy_config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        cfg = hf["typed_config"]["config"]
                        found.append((cfg, json.loads(cfg["configuration"]["value"])))
    return found


def cluster(envoy_config, name):
    matches = [c for c in envoy_config["static_resources"]["clusters"] if c["name"] == name]
    assert len(matches) == 1, f"cluster {name!r}: {len(matches)} found"
    return matches[0]


def hcm(envoy_config):
    return envoy_config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def endpoints_of(c):
    return [(e["endpoint"]["address"]["socket_address"]["address"], e["endpoint"]["address"]["socket_address"]["port_value"])
            for group in c["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]


def template(name, **values):
    """An envoy/ template rendered with dummy values, parsed."""
    base = {"ADMIN_PORT": 9901, "LISTEN_PORT": 10000, "REGISTRY_PORT": 8848, "APP_PORT": 8080,
            "ENDPOINTS": "127.0.0.1:9001", "LOSSLESS_WASM": "/x.wasm", "LOSSLESS_CONFIG": "{}"}
    base.update(values)
    return yaml.safe_load(render.render((ENVOY_DIR / name).read_text(), base))


# ------------------------------------------------------------------------------------------------
# docker-compose

SIDECARS = {f"backend-{i}-sidecar": COMPOSE_DIR / f"sidecar-{i}.yaml" for i in (1, 2, 3)}
BACKENDS = {f"backend-{i}": f"backend-{i}-sidecar" for i in (1, 2, 3)}
ENVOYS = {"gateway": COMPOSE_DIR / "gateway.yaml", **SIDECARS}


def makefile_envoy_version():
    m = re.search(r"^ENVOY_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "ENVOY_VERSION not found in the Makefile"
    return m.group(1)


def test_compose_services_and_images(compose):
    services = compose["services"]
    assert set(services) == {"nacos", "gateway", *SIDECARS, *BACKENDS}
    # the Envoy that runs in the demo is the one these tests validate the configs with
    for name in ENVOYS:
        assert services[name]["image"] == f"envoyproxy/envoy:v{makefile_envoy_version()}", name
    nacos = services["nacos"]
    assert re.fullmatch(r"nacos/nacos-server:v2\.\d+\.\d+", nacos["image"])
    assert nacos["environment"]["MODE"] == "standalone"
    for name, sidecar in BACKENDS.items():
        b = services[name]
        assert Path(b["build"]["context"]).resolve() == REPO, name
        assert b["build"]["dockerfile"] == "envoy/compose/backend.Dockerfile", name
        assert b["network_mode"] == f"service:{sidecar}", f"{name} must share its sidecar's network namespace"


def test_compose_mounts_wasm_and_configs_read_only(compose):
    wasm_host = (REPO / "target" / "lossless.wasm").resolve()
    for name, config in ENVOYS.items():
        vols = {target: (Path(source).resolve(), ro) for source, target, ro in volumes(compose["services"][name])}
        assert vols.get(WASM_IN_CONTAINER) == (wasm_host, True), f"{name}: wasm mount {vols}"
        assert vols.get("/etc/envoy/envoy.yaml") == (config.resolve(), True), f"{name}: config mount {vols}"
    assert not volumes(compose["services"]["nacos"])


def test_compose_ports_bound_to_loopback_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for host_ip, host_port, target in ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port}:{target} on {host_ip or 'all interfaces'}"
            published[name, target] = host_port
    assert published == {("gateway", "10000"): "10000", ("gateway", "9901"): "9901", ("nacos", "8848"): "8848"}


def test_compose_addresses_agree(compose):
    """A backend registers its sidecar's fixed address; that sidecar's inbound.self_address must be
    the same, and the gateway's cluster must list every sidecar by its compose DNS name."""
    services = compose["services"]
    gateway = yaml.safe_load(ENVOYS["gateway"].read_text())
    assert sorted(endpoints_of(cluster(gateway, "demo"))) == sorted((s, 10000) for s in SIDECARS)
    assert endpoints_of(cluster(gateway, "nacos")) == [("nacos", 8848)]
    for name, sidecar in BACKENDS.items():
        cmd = services[name]["command"]
        opt = dict(zip(cmd[::2], cmd[1::2]))
        ip = services[sidecar]["networks"]["lossless"]["ipv4_address"]
        assert opt["--advertise"] == f"{ip}:10000", name
        assert opt["--registry"] == "nacos:8848", name
        assert opt["--sidecar"] == "127.0.0.1:10000", name
        config = yaml.safe_load(SIDECARS[sidecar].read_text())
        [(_, lossless)] = lossless_filters(config)
        assert lossless["mode"] == "inbound"
        assert lossless["inbound"]["self_address"] == opt["--advertise"], sidecar
        assert endpoints_of(cluster(config, "local_app")) == [("127.0.0.1", int(opt["--port"]))]
        assert endpoints_of(cluster(config, "nacos")) == [("nacos", 8848)]
    assert (REPO / "demo" / "backend.py").is_file(), "the backend image copies demo/backend.py"


@pytest.mark.compat
@pytest.mark.parametrize("name", sorted(ENVOYS))
def test_compose_envoy_configs_validate(name, envoy, wasm, tmp_path):
    """Each compose Envoy config, with the container's wasm path pointed at the built module."""
    text = ENVOYS[name].read_text()
    assert text.count(WASM_IN_CONTAINER) == 1
    config = yaml.safe_load(text)
    for cfg, lossless in lossless_filters(config):
        for reg in lossless["registries"].values():
            cluster(config, reg["cluster"])  # the registry cluster exists
    envoy_validate(envoy, text.replace(WASM_IN_CONTAINER, str(wasm)), tmp_path, f"{name}.yaml")


def test_compose_configs_follow_the_templates():
    """The compose configs are the envoy/ templates made concrete: same routes, retry policies
    and load balancing policy. When a template changes, change envoy/compose/ with it."""
    gateway = yaml.safe_load(ENVOYS["gateway"].read_text())
    tpl = template("outbound-override-host.yaml")
    assert hcm(gateway)["route_config"] == hcm(tpl)["route_config"]
    for key in ("load_balancing_policy", "circuit_breakers"):
        assert cluster(gateway, "demo")[key] == cluster(tpl, "demo")[key], key
    inbound_tpl = template("inbound.yaml")
    for path in SIDECARS.values():
        sidecar = yaml.safe_load(path.read_text())
        assert hcm(sidecar)["route_config"] == hcm(inbound_tpl)["route_config"], path.name
    for config in [gateway] + [yaml.safe_load(p.read_text()) for p in SIDECARS.values()]:
        names = [f["name"] for f in hcm(config)["http_filters"]]
        assert names == ["envoy.filters.http.wasm", "envoy.filters.http.router"]


# ------------------------------------------------------------------------------------------------
# Istio manifests: schemas transcribed from the CRDs (fields, types, enums, required)


def obj(required=(), **props):
    return {"type": "object", "properties": props, "required": list(required)}


def enum(*values):
    return {"type": "string", "enum": list(values)}


def arr(items, max_items=None):
    return {"type": "array", "items": items, "maxItems": max_items}


def smap(values):
    return {"type": "object", "additionalProperties": values}


STR, INT = {"type": "string"}, {"type": "integer"}
PRESERVE = {"type": "object", "preserve": True}
TARGET_REF = obj(["kind", "name"], group=STR, kind=STR, name=STR, namespace=STR)
WORKLOAD_SELECTOR = obj(labels=smap(STR))

WASMPLUGIN = obj(
    ["url"],
    selector=obj(matchLabels=smap(STR)),
    targetRef=TARGET_REF,
    targetRefs=arr(TARGET_REF, 16),
    url=STR,
    sha256=STR,
    imagePullPolicy=enum("UNSPECIFIED_POLICY", "IfNotPresent", "Always"),
    imagePullSecret=STR,
    verificationKey=STR,
    pluginConfig=PRESERVE,
    pluginName=STR,
    phase=enum("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"),
    priority=INT,
    failStrategy=enum("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"),
    vmConfig=obj(env=arr(obj(["name"], name=STR, value=STR, valueFrom=enum("INLINE", "HOST")), 256)),
    match=arr(obj(mode=enum("UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"),
                  ports=arr(obj(["number"], number=INT)))),
    type=enum("UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"),
)

SUB_FILTER = obj(name=STR, subFilter=obj(name=STR))
ENVOYFILTER = obj(
    workloadSelector=WORKLOAD_SELECTOR,
    targetRefs=arr(TARGET_REF, 16),
    priority=INT,
    configPatches=arr(obj(
        applyTo=enum("INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER",
                     "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER",
                     "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"),
        match=obj(
            context=enum("ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"),
            proxy=obj(proxyVersion=STR, metadata=smap(STR)),
            listener=obj(name=STR, portName=STR, portNumber=INT, listenerFilter=STR,
                         filterChain=obj(name=STR, sni=STR, transportProtocol=STR,
                                         applicationProtocols=STR, destinationPort=INT,
                                         filter=SUB_FILTER)),
            routeConfiguration=obj(name=STR, gateway=STR, portName=STR, portNumber=INT,
                                   vhost=obj(name=STR, domainName=STR,
                                             route=obj(name=STR, action=enum("ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE")))),
            cluster=obj(name=STR, portNumber=INT, service=STR, subset=STR),
            waypoint=obj(filter=SUB_FILTER, portNumber=INT, route=obj(name=STR)),
        ),
        patch=obj(operation=enum("INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER",
                                 "INSERT_FIRST", "REPLACE", "MERGE_AND_REPLACE_LIST"),
                  value=PRESERVE,
                  filterClass=enum("UNSPECIFIED", "AUTHN", "AUTHZ", "STATS")),
    )),
)

SERVICEENTRY = obj(
    ["hosts"],
    hosts=arr(STR),
    addresses=arr(STR),
    ports=arr(obj(["number", "name"], number=INT, protocol=STR, name=STR, targetPort=INT)),
    location=enum("MESH_EXTERNAL", "MESH_INTERNAL"),
    resolution=enum("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"),
    endpoints=arr(obj(address=STR, ports=smap(INT), labels=smap(STR), network=STR, locality=STR,
                      weight=INT, serviceAccount=STR)),
    workloadSelector=WORKLOAD_SELECTOR,
    exportTo=arr(STR),
    subjectAltNames=arr(STR),
)

KINDS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): WASMPLUGIN,
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): ENVOYFILTER,
    ("networking.istio.io/v1", "ServiceEntry"): SERVICEENTRY,
    ("v1", "Service"): None,
    ("apps/v1", "Deployment"): None,
}


def check(value, schema, path="spec"):
    """Errors of `value` against a schema of the shapes above."""
    t = schema["type"]
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
    if not isinstance(value, types[t]) or (t == "integer" and isinstance(value, bool)):
        return [f"{path}: expected {t}, got {type(value).__name__}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if t == "array":
        if schema.get("maxItems") is not None and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += check(item, schema["items"], f"{path}[{i}]")
    if t == "object" and not schema.get("preserve"):
        if "additionalProperties" in schema:
            for k, v in value.items():
                errors += check(v, schema["additionalProperties"], f"{path}.{k}")
        else:
            props = schema["properties"]
            for k in schema.get("required", []):
                if k not in value:
                    errors.append(f"{path}: {k} is required")
            for k, v in value.items():
                if k not in props:
                    errors.append(f"{path}: unknown field {k!r}")
                else:
                    errors += check(v, props[k], f"{path}.{k}")
    return errors


def istio_docs():
    docs = []
    for path in sorted(ISTIO_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def find(kind, name):
    matches = [d for _, d in istio_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def test_istio_manifests_match_their_crds():
    docs = istio_docs()
    assert {d["kind"] for _, d in docs} == {"WasmPlugin", "EnvoyFilter", "ServiceEntry", "Service", "Deployment"}
    errors = []
    for file, doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in KINDS:
            errors.append(f"{file}: unexpected apiVersion/kind {key}")
            continue
        meta = doc.get("metadata", {})
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("name", "")):
            errors.append(f"{file}: metadata.name {meta.get('name')!r}")
        if not meta.get("namespace"):
            errors.append(f"{file}: metadata.namespace missing")
        if set(doc) - {"apiVersion", "kind", "metadata", "spec"}:
            errors.append(f"{file}: unexpected top-level keys {set(doc) - {'apiVersion', 'kind', 'metadata', 'spec'}}")
        if KINDS[key] is not None:
            errors += [f"{file}: {e}" for e in check(doc["spec"], KINDS[key])]
        spec = doc["spec"]
        # the CRDs' CEL rules that apply here
        if doc["kind"] == "WasmPlugin":
            if sum(k in spec for k in ("selector", "targetRef", "targetRefs")) > 1:
                errors.append(f"{file}: at most one of selector, targetRef, targetRefs")
            for env in spec.get("vmConfig", {}).get("env", []):
                if env.get("valueFrom") == "HOST" and "value" in env:
                    errors.append(f"{file}: env {env['name']}: value only with valueFrom INLINE")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env["name"]):
                    errors.append(f"{file}: env name {env['name']!r} is not a C identifier")
            url = spec["url"]
            if not re.match(r"(oci|https?|file)://", url):
                errors.append(f"{file}: url scheme of {url!r}")
        if doc["kind"] == "EnvoyFilter":
            if "workloadSelector" in spec and "targetRefs" in spec:
                errors.append(f"{file}: at most one of workloadSelector, targetRefs")
            for i, p in enumerate(spec["configPatches"]):
                if sum(k in p.get("match", {}) for k in ("listener", "routeConfiguration", "cluster", "waypoint")) > 1:
                    errors.append(f"{file}: configPatches[{i}].match: one of listener, routeConfiguration, cluster, waypoint")
        if doc["kind"] == "ServiceEntry":
            for p in spec.get("ports", []):
                if not 0 < p["number"] <= 65535:
                    errors.append(f"{file}: port {p['number']}")
    assert not errors, "\n".join(errors)


def test_istio_selectors_and_names_agree():
    service = find("Service", "orders")
    deploy = find("Deployment", "orders")
    outbound = find("WasmPlugin", "lossless-outbound")["spec"]
    inbound = find("WasmPlugin", "lossless-inbound")["spec"]
    ef = find("EnvoyFilter", "lossless-orders")["spec"]

    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # the inbound plugin runs on orders' pods; the outbound plugin and the EnvoyFilter on the
    # same callers, which are not orders' pods
    assert inbound["selector"]["matchLabels"].items() <= pod_labels.items()
    assert outbound["selector"]["matchLabels"] == ef["workloadSelector"]["labels"]
    assert not outbound["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [m["mode"] for m in outbound["match"]] == ["CLIENT"]
    assert [m["mode"] for m in inbound["match"]] == ["SERVER"]

    ns = service["metadata"]["namespace"]
    [port] = service["spec"]["ports"]
    host = f"{service['metadata']['name']}.{ns}.svc.cluster.local"
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] in [p["containerPort"] for p in container["ports"]]
    assert [p["number"] for p in inbound["match"][0]["ports"]] == [port["targetPort"]]
    for doc in ("WasmPlugin", "EnvoyFilter"):
        assert all(d["metadata"]["namespace"] == ns for _, d in istio_docs() if d["kind"] == doc)

    # lossless's service is routed to orders' outbound cluster, which the EnvoyFilter patches
    [svc] = outbound["pluginConfig"]["services"]
    assert svc["match_clusters"] == [f"outbound|{port['port']}||{host}"]
    patches = {p["applyTo"]: p for p in ef["configPatches"]}
    assert patches["CLUSTER"]["match"]["cluster"] == {"service": host, "portNumber": port["port"]}
    for kind in ("VIRTUAL_HOST", "HTTP_ROUTE"):
        rc = patches[kind]["match"]["routeConfiguration"]
        assert rc["portNumber"] == port["port"] and rc["vhost"]["name"] == f"{host}:{port['port']}"
    assert all(p["match"]["context"] == "SIDECAR_OUTBOUND" and p["patch"]["operation"] == "MERGE"
               for p in ef["configPatches"])
    lb = patches["CLUSTER"]["patch"]["value"]["load_balancing_policy"]["policies"][0]["typed_extension_config"]
    assert lb["name"] == "envoy.load_balancing_policies.override_host"
    header = svc.get("routing", {}).get("header", "x-lossless-upstream")
    assert lb["typed_config"]["override_host_sources"] == [{"header": header}]

    # the registry cluster is an Istio cluster name for the registry's authority
    for plugin in (outbound, inbound):
        for reg in plugin["pluginConfig"]["registries"].values():
            m = re.fullmatch(r"outbound\|(\d+)\|\|(.+)", reg["cluster"])
            assert m, f"{reg['cluster']!r} is not an Istio outbound cluster name"
            assert reg["authority"] == f"{m.group(2)}:{m.group(1)}"
    assert inbound["pluginConfig"]["registries"] == outbound["pluginConfig"]["registries"]
    assert inbound["pluginConfig"]["inbound"]["service"] == svc["name"]
    assert inbound["pluginConfig"]["inbound"]["self_address"].endswith(f":{port['targetPort']}")
    # the ServiceEntry's host gives the cluster name its comment tells to use
    se = find("ServiceEntry", "nacos-registry")["spec"]
    [se_port] = se["ports"]
    text = (ISTIO_DIR / "serviceentry-nacos.yaml").read_text()
    assert f'"outbound|{se_port["number"]}||{se["hosts"][0]}"' in text
    assert f'"{se["hosts"][0]}:{se_port["number"]}"' in text


def test_istio_prestop_drains_through_nacos():
    deploy = find("Deployment", "orders")
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    script = cmd[-1]
    assert cmd[:2] == ["/bin/sh", "-c"]
    assert "PUT" in script and "/nacos/v1/ns/instance?" in script and "enabled=false" in script
    assert "ip=${POD_IP}" in script and "port=8080" in script
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    nacos = find("WasmPlugin", "lossless-outbound")["spec"]["pluginConfig"]["registries"]["nacos"]
    assert env["NACOS_ADDR"]["value"] == nacos["authority"]
    sleep = int(re.search(r"sleep (\d+)", script).group(1))
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    drain = yaml.safe_load(pod["metadata"]["annotations"]["proxy.istio.io/config"])["terminationDrainDuration"]
    drain_s = int(drain.rstrip("s"))
    # the sidecar outlives the preStop hook, and both fit in the grace period
    assert sleep + 5 < drain_s < grace
    assert "15006" not in script and "/lossless/drain" not in script


# ------------------------------------------------------------------------------------------------
# Istio manifests through Envoy and the filter

ISTIO_NODE = {"id": "sidecar~10.1.0.5~frontend-0.default~default.svc.cluster.local", "cluster": "frontend.default"}


def merge(dst, src):
    """Proto MERGE on JSON: messages merge field by field, repeated fields append, scalars replace."""
    out = copy.deepcopy(dst)
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and "@type" not in v:
            out[k] = merge(out[k], v)
        elif isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = out[k] + copy.deepcopy(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def wasm_filter(wasm, plugin_spec, vm_id):
    """The Wasm HTTP filter Istio builds from a WasmPlugin (pluginConfig as a JSON string,
    vmConfig env HOST as host_env_keys)."""
    vm_config = {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}}
    env = plugin_spec.get("vmConfig", {}).get("env", [])
    if env:
        vm_config["environment_variables"] = {
            "host_env_keys": [e["name"] for e in env if e.get("valueFrom") == "HOST"],
            "key_values": {e["name"]: e.get("value", "") for e in env if e.get("valueFrom", "INLINE") == "INLINE"},
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


def listener(name, port, virtual_hosts, wasm_http_filter):
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": str(port), "virtual_hosts": virtual_hosts},
                "http_filters": [wasm_http_filter, {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }


def istio_cluster(name):
    """An outbound cluster shaped like istiod's (EDS over ADS, LEAST_REQUEST, its circuit breakers)."""
    return {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"service_name": name, "eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}},
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "common_lb_config": {},
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                             "max_requests": 4294967295, "max_retries": 4294967295,
                                             "track_remaining": True}]},
    }


def istio_bootstrap(listeners, clusters):
    return {
        "node": ISTIO_NODE,
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters + [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15010}}}}]}]},
            }],
        },
    }


@pytest.mark.compat
def test_istio_outbound_config_validates(envoy, wasm, tmp_path):
    """The callers' sidecar as Istio would render it with these manifests: orders' cluster, vhost
    and route with the EnvoyFilter's patches merged, the registry's cluster, and the outbound
    WasmPlugin's filter with its pluginConfig (checked by the filter at load)."""
    plugin = find("WasmPlugin", "lossless-outbound")["spec"]
    patches = {p["applyTo"]: p["patch"]["value"] for p in find("EnvoyFilter", "lossless-orders")["spec"]["configPatches"]}
    [svc] = plugin["pluginConfig"]["services"]
    [orders] = svc["match_clusters"]
    host, port = orders.split("||")[1], int(orders.split("|")[1])
    route = {
        "name": "default",
        "match": {"prefix": "/"},
        "route": {
            "cluster": orders,
            "timeout": "0s",
            # istiod's default retry policy, which the patch merges into
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                "num_retries": 2,
                "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                "host_selection_retry_max_attempts": 5,
                "retriable_status_codes": [503],
            },
            "max_grpc_timeout": "0s",
        },
        "decorator": {"operation": f"{host}:{port}/*"},
    }
    route = merge(route, patches["HTTP_ROUTE"])
    retry = route["route"]["retry_policy"]
    assert retry["retry_on"] == "connect-failure,refused-stream,retriable-headers"
    assert retry["retriable_headers"] == [{"name": "x-lossless-drain", "string_match": {"exact": "self_draining"}}]
    vhost = merge({"name": f"{host}:{port}", "domains": [host, f"{host}:{port}"], "routes": [route]}, patches["VIRTUAL_HOST"])
    orders_cluster = merge(istio_cluster(orders), patches["CLUSTER"])
    clusters = [orders_cluster]
    for reg in plugin["pluginConfig"]["registries"].values():
        reg_port, reg_host = reg["cluster"].split("|")[1], reg["cluster"].split("||")[1]
        clusters.append({
            "name": reg["cluster"], "type": "STRICT_DNS", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": reg["cluster"], "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": reg_host, "port_value": int(reg_port)}}}}]}]},
        })
    config = istio_bootstrap([listener(str(port), port, [vhost], wasm_filter(wasm, plugin, "lossless-outbound"))], clusters)
    envoy_validate(envoy, config, tmp_path)


def inbound_config(wasm, plugin):
    vhost = {"name": "inbound|http|8080", "domains": ["*"], "routes": [{
        "name": "default", "match": {"prefix": "/"},
        "route": {"cluster": "inbound|8080||", "timeout": "0s"}}]}
    clusters = [{
        "name": "inbound|8080||", "type": "STATIC", "connect_timeout": "10s",
        "load_assignment": {"cluster_name": "inbound|8080||", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}]},
    }]
    for reg in plugin["pluginConfig"]["registries"].values():
        clusters.append(merge(istio_cluster(reg["cluster"]), {}))
    return istio_bootstrap([listener("virtualInbound", 15006, [vhost], wasm_filter(wasm, plugin, "lossless-inbound"))], clusters)


@pytest.mark.compat
def test_istio_inbound_config_validates(envoy, wasm, tmp_path):
    """The inbound WasmPlugin's pluginConfig with self_address as it must read in a pod (the pod
    IP in place of ${INSTANCE_IP}): everything else in it is checked by the filter."""
    plugin = copy.deepcopy(find("WasmPlugin", "lossless-inbound")["spec"])
    ib = plugin["pluginConfig"]["inbound"]
    assert ib["self_address"].startswith("${INSTANCE_IP}:")
    assert plugin["failStrategy"] == "FAIL_OPEN", "a plugin that cannot start must not take the pod down"
    ib["self_address"] = ib["self_address"].replace("${INSTANCE_IP}", "10.1.0.7")
    envoy_validate(envoy, inbound_config(wasm, plugin), tmp_path)


def test_istio_inbound_config_as_shipped_validates(envoy, wasm, tmp_path):
    """The inbound WasmPlugin exactly as shipped, with the sidecar's INSTANCE_IP in the Envoy
    process environment (Istio's injector sets it to the pod IP)."""
    plugin = find("WasmPlugin", "lossless-inbound")["spec"]
    envoy_validate(envoy, inbound_config(wasm, plugin), tmp_path, env={"INSTANCE_IP": "10.1.0.7"})


# ------------------------------------------------------------------------------------------------
# OCI image of the filter


def dockerfile_instructions(path):
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignore_admits(path):
    """Whether the root .dockerignore sends `path` (last matching pattern wins)."""
    admitted = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            admitted = negate
    return admitted


def test_oci_dockerfile_is_scratch_with_plugin_wasm():
    ins = dockerfile_instructions(REPO / "Dockerfile")
    assert ins[0] == ("FROM", "scratch")
    layers = [i for i in ins if i[0] in ("COPY", "ADD", "RUN")]
    assert layers == [("COPY", "target/lossless.wasm ./plugin.wasm")], "one layer: /plugin.wasm"
    assert dockerignore_admits("target/lossless.wasm")
    assert not dockerignore_admits("target/wasm32-wasip1/release/lossless.wasm")
    assert not dockerignore_admits("src/lib.rs")
    # the WasmPlugins pull the image of this version
    version = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    for name in ("lossless-outbound", "lossless-inbound"):
        assert find("WasmPlugin", name)["spec"]["url"] == f"oci://REGISTRY/lossless:{version}"


def test_backend_dockerfile_copies_the_demo_backend():
    ins = dockerfile_instructions(COMPOSE_DIR / "backend.Dockerfile")
    assert ins[0][0] == "FROM" and ins[0][1].startswith("python:")
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    assert copies == [["demo/backend.py", "/app/backend.py"]]
    assert dockerignore_admits("demo/backend.py")
    entry = json.loads(dict(ins)["ENTRYPOINT"])
    assert entry[-1] == "/app/backend.py"
