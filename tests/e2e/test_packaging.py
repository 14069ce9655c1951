"""Packaging: the docker-compose demo topology, its Envoy configs, the Istio manifests and the
OCI image's Dockerfile. All offline:

- docker-compose only renders the compose file (`config`); no Docker engine is needed.
- `envoy --mode validate` checks Envoy configs without serving. It also loads the Wasm module and
  runs its configuration check, so every lossless configuration here (compose configs, the
  WasmPlugins' pluginConfig) passes through the filter's own validator.
- The Istio manifests are checked against Istio's own CRDs (WasmPlugin v1alpha1, EnvoyFilter
  v1alpha3, ServiceEntry v1 of Istio 1.28.10, ../shared/fixtures/istio/) with jsonschema, plus
  what the API server adds: unknown keys (which it would prune), list-map keys, CEL rules. Mutated
  manifests show that the check fails. Then the EnvoyFilter's patches are merged (proto MERGE
  semantics) into the outbound cluster, virtual host and route istiod 1.28 builds; the merged
  retry policy is asserted, Envoy validates the result together with the outbound WasmPlugin's
  pluginConfig, and runs the merged route against a slow backend.

Needs ENVOY_BIN; the Wasm module is LOSSLESS_WASM or target/lossless.wasm (make build). The
Envoy validations are marked compat: `make test` also runs them on the oldest supported Envoy.
"""

import copy
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

try:
    import jsonschema
except ImportError:  # a venv made before the Makefile pinned it: the Istio CRD tests say so
    jsonschema = None

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
    probe = [docker, "compose", "version"] if docker else None
    if probe and subprocess.run(probe, capture_output=True).returncode == 0:
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
    listener = envoy_config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def endpoints_of(c):
    return [(e["endpoint"]["address"]["socket_address"]["address"],
             e["endpoint"]["address"]["socket_address"]["port_value"])
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
        assert b["network_mode"] == f"service:{sidecar}", \
            f"{name} must share its sidecar's network namespace"


def test_compose_mounts_wasm_and_configs_read_only(compose):
    wasm_host = (REPO / "target" / "lossless.wasm").resolve()
    for name, config in ENVOYS.items():
        vols = {target: (Path(source).resolve(), ro)
                for source, target, ro in volumes(compose["services"][name])}
        assert vols.get(WASM_IN_CONTAINER) == (wasm_host, True), f"{name}: wasm mount {vols}"
        assert vols.get("/etc/envoy/envoy.yaml") == (config.resolve(), True), \
            f"{name}: config mount {vols}"
    assert not volumes(compose["services"]["nacos"])


def test_compose_ports_bound_to_loopback_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for host_ip, host_port, target in ports(service):
            where = host_ip or "all interfaces"
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port}:{target} on {where}"
            published[name, target] = host_port
    assert published == {("gateway", "10000"): "10000", ("gateway", "9901"): "9901",
                         ("nacos", "8848"): "8848"}


def test_compose_addresses_agree(compose):
    """A backend registers its sidecar's fixed address; that sidecar's inbound.self_address must be
    the same, and the gateway's cluster must list every sidecar by its compose DNS name."""
    services = compose["services"]
    gateway = yaml.safe_load(ENVOYS["gateway"].read_text())
    assert sorted(endpoints_of(cluster(gateway, "demo"))) == sorted((s, 10000) for s in SIDECARS)
    assert endpoints_of(cluster(gateway, "nacos")) == [("nacos", 8848)]
    for name, sidecar in BACKENDS.items():
        cmd = services[name]["command"]
        opt = dict(zip(cmd[::2], cmd[1::2], strict=True))
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
    for _, lossless in lossless_filters(config):
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
# Istio manifests against Istio's own CRDs
#
# ISTIO_CRDS holds the CustomResourceDefinitions of WasmPlugin, EnvoyFilter and ServiceEntry of
# istio/api 1.28.10 (kubernetes/customresourcedefinitions.gen.yaml, verbatim; see the note beside
# it). jsonschema checks each manifest against the openAPIV3Schema of its served version: types,
# enums, required keys, bounds, patterns, oneOf. What jsonschema cannot see is checked by walking
# the manifest along the schema, as the Kubernetes API server does:
# - unknown keys: the CRDs do not set additionalProperties: false, so a misspelt key is valid JSON
#   Schema, and Kubernetes prunes it: the setting is silently lost. Below
#   x-kubernetes-preserve-unknown-fields (WasmPlugin pluginConfig, EnvoyFilter patch values:
#   free-form protobuf Structs) any key is kept, and the walk stops there.
# - list-type map keys (x-kubernetes-list-map-keys) must be unique.
# - the CEL rules (x-kubernetes-validations) of the nodes present, each by a transcription of its
#   rule text below. A rule with no transcription fails the test, so a newer CRD cannot add one
#   unseen.

ISTIO_CRDS = REPO.parent / "shared" / "fixtures" / "istio" / "crds-1.28.10.yaml"
# Built-in Kubernetes kinds: no CRD, the API server's own schemas (not checked here).
KUBE_KINDS = {("v1", "Service"), ("apps/v1", "Deployment")}
# Every object has these; a CRD's schema leaves them out (the API server validates ObjectMeta).
OBJECT_KEYS = {"apiVersion", "kind", "metadata"}
DELETE = object()


@pytest.fixture(scope="module")
def crds():
    """{(apiVersion, kind): openAPIV3Schema} of every served version in ISTIO_CRDS."""
    if jsonschema is None:
        pytest.fail("the jsonschema package is missing: install the Makefile's pin into this "
                    "Python (or remove .venv and run `make envoy`)")
    if not ISTIO_CRDS.is_file():
        pytest.fail(f"{ISTIO_CRDS} is missing (Istio's CRDs, see the note beside it)")
    out = {}
    for crd in yaml.safe_load_all(ISTIO_CRDS.read_text()):
        if not crd:
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = openapi_nullable(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                jsonschema.Draft4Validator.check_schema(schema)
                out[f"{group}/{version['name']}", kind] = schema
    return out


def openapi_nullable(schema):
    """OpenAPI's `nullable: true` as JSON Schema (null added to the type), in place."""
    if isinstance(schema, dict):
        if schema.get("nullable") and isinstance(schema.get("type"), str):
            schema["type"] = [schema["type"], "null"]
        for value in schema.values():
            openapi_nullable(value)
    elif isinstance(schema, list):
        for value in schema:
            openapi_nullable(value)
    return schema


def dotted(parts):
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if out else str(p)
    return out or "(document)"


def url_scheme_ok(url):
    """WasmPlugin url's rule: a scheme, if any, is http, https, oci or file."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return m is None or m.group(1).lower() in ("http", "https", "oci", "file")


# The CRDs' CEL rules (whitespace-normalised text) that apply to these manifests or to the
# negative controls, each transcribed to Python. `s` is the rule's `self`.
CEL = {
    '!self.contains("*")': lambda s: "*" not in s,
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    "self.all(key, key.size() != 0)": lambda s: all(k != "" for k in s),
    "self.size() == 0": lambda s: len(s) == 0,
    'self != "*"': lambda s: s != "*",
    "0 < self && self <= 65535": lambda s: 0 < s <= 65535,
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda s: all(sum(b.get("number") == a.get("number") for b in s) == 1 for a in s),
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : '
    '(isURL("http://" + self) && '
    'url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        url_scheme_ok,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda s: s.get("valueFrom", "") != "HOST" or "value" not in s,
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) "
    "+ (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: sum(k in s for k in ("selector", "targetRef", "targetRefs")) <= 1,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: sum(k in s for k in ("workloadSelector", "targetRefs")) <= 1,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        lambda s: sum(k in s for k in ("workloadSelector", "endpoints")) <= 1,
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda s: not (any("/" in a for a in s.get("addresses", []))
                       and s.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda s: s.get("resolution", "NONE") != "NONE" or "endpoints" not in s,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    "((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true":
        lambda s: s.get("resolution", "") != "DNS_ROUND_ROBIN" or len(s.get("endpoints", [])) <= 1,
}


def cel_errors(value, schema):
    errors = []
    for v in schema.get("x-kubernetes-validations", []):
        rule = " ".join(v["rule"].split())
        if rule not in CEL:
            errors.append(f"CEL rule with no transcription in this test: {rule}")
            continue
        try:
            ok = CEL[rule](value)
        except (TypeError, AttributeError):
            ok = False  # a value of the wrong type, which jsonschema reports too
        if not ok:
            errors.append(f"{v.get('message', rule)} (CEL: {rule})")
    return errors


def structural_errors(value, schema, path=()):
    """Unknown keys, duplicate list-map keys and failed CEL rules of `value` under `schema`."""
    if value is None:
        return []
    errors = [f"{dotted(path)}: {e}" for e in cel_errors(value, schema)]
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return errors  # free-form below: Kubernetes keeps whatever is there
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is None:
                errors.append(f"{dotted(path + (k,))}: unknown field, not in the CRD's schema "
                              "(Kubernetes would drop it)")
            else:
                errors += structural_errors(v, sub, path + (k,))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys")
        if schema.get("x-kubernetes-list-type") == "map" and keys:
            seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
            dups = sorted({s for s in seen if seen.count(s) > 1}, key=str)
            if dups:
                errors.append(f"{dotted(path)}: duplicate entries for list-map keys {keys}: {dups}")
        for i, item in enumerate(value):
            errors += structural_errors(item, schema["items"], path + (i,))
    return errors


def crd_errors(doc, schema):
    """What the API server would refuse in `doc` under the CRD `schema` (or silently drop, for
    unknown keys), one 'path: message' per problem."""
    errors = [f"{dotted(e.absolute_path)}: {e.message}"
              for e in jsonschema.Draft4Validator(schema).iter_errors(doc)]
    free = {"x-kubernetes-preserve-unknown-fields": True}
    root = {**schema, "properties": {**dict.fromkeys(OBJECT_KEYS, free), **schema["properties"]}}
    return errors + structural_errors(doc, root)


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


def test_istio_manifests_match_istio_crds(crds):
    """Every Istio object of envoy/istio/ against its CRD of Istio 1.28.10, as the API server would
    take it: schema, no key it would prune, CEL rules."""
    docs = istio_docs()
    assert {d["kind"] for _, d in docs} == {
        "WasmPlugin", "EnvoyFilter", "ServiceEntry", "Service", "Deployment"}
    errors = []
    for file, doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        meta = doc.get("metadata", {})
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("name", "")):
            errors.append(f"{file}: metadata.name {meta.get('name')!r}")
        if not meta.get("namespace"):
            errors.append(f"{file}: metadata.namespace missing")
        if key in KUBE_KINDS:
            continue
        if key not in crds:
            errors.append(f"{file}: {key} is not a served version of a CRD in {ISTIO_CRDS.name}")
            continue
        errors += [f"{file}: {e}" for e in crd_errors(doc, crds[key])]
    assert not errors, "\n".join(errors)


# Negative controls: each mutation of a shipped manifest must fail the check above, with this
# text in one of its errors.
MUTATIONS = {
    "bad enum": ("WasmPlugin", "lossless-outbound", ["spec", "phase"], "FIRST",
                 "'FIRST' is not one of"),
    # WAYPOINT is an EnvoyFilter context of later Istio versions, not of 1.28's CRD
    "enum of another Istio": ("EnvoyFilter", "lossless-orders",
                              ["spec", "configPatches", 0, "match", "context"], "WAYPOINT",
                              "'WAYPOINT' is not one of"),
    "wrong type": ("EnvoyFilter", "lossless-orders",
                   ["spec", "configPatches", 0, "match", "cluster", "portNumber"], "8080",
                   "'8080' is not of type 'integer'"),
    "wrong type of a list": ("ServiceEntry", "nacos-registry", ["spec", "hosts"],
                             "nacos.registry.example.com", "is not of type 'array'"),
    # a misspelt failStrategy would be pruned: the plugin would silently be FAIL_CLOSE
    "unknown key": ("WasmPlugin", "lossless-inbound", ["spec", "failstrategy"], "FAIL_OPEN",
                    "spec.failstrategy: unknown field"),
    "unknown nested key": ("EnvoyFilter", "lossless-orders",
                           ["spec", "configPatches", 2, "match", "routeConfiguration", "vhost",
                            "routes"], {}, "vhost.routes: unknown field"),
    "missing required key": ("ServiceEntry", "nacos-registry", ["spec", "hosts"], DELETE,
                             "'hosts' is a required property"),
    "two of cluster/routeConfiguration/listener": (
        "EnvoyFilter", "lossless-orders",
        ["spec", "configPatches", 0, "match", "routeConfiguration"], {"portNumber": 8080},
        "is valid under each of"),
    "CEL: port range": ("ServiceEntry", "nacos-registry", ["spec", "ports", 0, "number"], 70000,
                        "port must be between 1-65535"),
    "CEL: one selector": ("WasmPlugin", "lossless-outbound", ["spec", "targetRefs"],
                          [{"kind": "Service", "name": "frontend"}],
                          "only one of targetRefs or selector"),
    "CEL: env value with HOST": ("WasmPlugin", "lossless-inbound",
                                 ["spec", "vmConfig", "env", 0, "value"], "10.1.0.7",
                                 "value may only be set when valueFrom is INLINE"),
    "duplicate list-map key": ("WasmPlugin", "lossless-inbound",
                               ["spec", "match", 0, "ports", 1], {"number": 8080},
                               "duplicate entries for list-map keys ['number']"),
}


def mutated(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for k in path[:-1]:
        node = node[k]
    if value is DELETE:
        del node[path[-1]]
    elif isinstance(node, list) and path[-1] == len(node):
        node.append(value)
    else:
        node[path[-1]] = value
    return doc


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_istio_crd_check_refuses_mutated_manifests(case, crds):
    kind, name, path, value, expected = MUTATIONS[case]
    doc = find(kind, name)
    schema = crds[doc["apiVersion"], kind]
    assert not crd_errors(doc, schema), "the shipped manifest must pass first"
    errors = crd_errors(mutated(doc, path, value), schema)
    assert any(expected in e for e in errors), f"{case}: expected {expected!r} in {errors}"


def test_istio_crd_check_keeps_free_form_fields(crds):
    """Below x-kubernetes-preserve-unknown-fields any key is kept: pluginConfig is the filter's own
    JSON (checked by the filter, not here), an EnvoyFilter patch value any Envoy proto."""
    plugin = mutated(find("WasmPlugin", "lossless-outbound"),
                     ["spec", "pluginConfig", "no_such_key"], {"x": 1})
    ef = mutated(find("EnvoyFilter", "lossless-orders"),
                 ["spec", "configPatches", 2, "patch", "value", "x"], [1])
    assert crd_errors(plugin, crds["extensions.istio.io/v1alpha1", "WasmPlugin"]) == []
    assert crd_errors(ef, crds["networking.istio.io/v1alpha3", "EnvoyFilter"]) == []


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
    lb_policy = patches["CLUSTER"]["patch"]["value"]["load_balancing_policy"]
    lb = lb_policy["policies"][0]["typed_extension_config"]
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
    proxy_config = yaml.safe_load(pod["metadata"]["annotations"]["proxy.istio.io/config"])
    drain = proxy_config["terminationDrainDuration"]
    drain_s = int(drain.rstrip("s"))
    # the sidecar outlives the preStop hook, and both fit in the grace period
    assert sleep + 5 < drain_s < grace
    assert "15006" not in script and "/lossless/drain" not in script


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


def merge(dst, src):
    """Proto MERGE on JSON: messages merge field by field, repeated fields append, scalars
    replace."""
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
def test_istio_outbound_config_validates(envoy, wasm, tmp_path):
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
    lossless = wasm_filter(wasm, plugin, "lossless-outbound")
    listeners = [listener(str(port), port, [vhost], [lossless])]
    envoy_validate(envoy, istio_bootstrap(listeners, clusters), tmp_path)


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
def test_istio_inbound_config_validates(envoy, wasm, tmp_path):
    """The inbound WasmPlugin's pluginConfig with self_address as it must read in a pod (the pod
    IP in place of ${INSTANCE_IP}): everything else in it is checked by the filter."""
    plugin = copy.deepcopy(find("WasmPlugin", "lossless-inbound")["spec"])
    ib = plugin["pluginConfig"]["inbound"]
    assert ib["self_address"].startswith("${INSTANCE_IP}:")
    assert plugin["failStrategy"] == "FAIL_OPEN", (
        "a plugin that cannot start must not take the pod down")
    ib["self_address"] = ib["self_address"].replace("${INSTANCE_IP}", "10.1.0.7")
    envoy_validate(envoy, inbound_config(wasm, plugin), tmp_path)


def test_istio_inbound_config_as_shipped_validates(envoy, wasm, tmp_path):
    """The inbound WasmPlugin exactly as shipped, with the sidecar's INSTANCE_IP in the Envoy
    process environment (Istio's injector sets it to the pod IP)."""
    plugin = find("WasmPlugin", "lossless-inbound")["spec"]
    envoy_validate(envoy, inbound_config(wasm, plugin), tmp_path, env={"INSTANCE_IP": "10.1.0.7"})


# ------------------------------------------------------------------------------------------------
# Istio: the merged route's retry policy and timeouts, the cluster patch's side effects

# istiod's outbound route of a service that no VirtualService routes, as Istio 1.28 builds it
# (istio/istio 1.28.10 pilot/pkg/networking/core/route/route.go BuildDefaultHTTPOutboundRoute and
# setTimeout: timeout 0s, i.e. none; route/retry/retry.go DefaultPolicy). The default retry
# policy lists no retriable_status_codes, so its retriable-status-codes is inert: 1.23 and older
# listed 503; 1.24 - 1.26 only with EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY=false (the 1.23
# compatibility profile); 1.27 removed the option. A VirtualService's `timeout` replaces the 0s.
ISTIO_DEFAULT_RETRY_POLICY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts."
                                  "v3.PreviousHostsPredicate"}}],
    "host_selection_retry_max_attempts": 5,
}
DRAIN_RETRY_ON = "connect-failure,refused-stream,retriable-headers"
REFUSALS = "self_draining|flow_limited|not_ready"
SELF_DRAINING = [{"name": "x-lossless-drain", "string_match": {"safe_regex": {"regex": REFUSALS}}}]


def istio_route(cluster_name, timeout="0s"):
    host, port = cluster_name.split("||")[1], int(cluster_name.split("|")[1])
    return {
        "name": "default",
        "match": {"prefix": "/"},
        "route": {
            "cluster": cluster_name,
            "timeout": timeout,
            "retry_policy": copy.deepcopy(ISTIO_DEFAULT_RETRY_POLICY),
            "max_grpc_timeout": timeout,
        },
        "decorator": {"operation": f"{host}:{port}/*"},
    }


def orders_patches():
    """{applyTo: patch value} of the EnvoyFilter."""
    return {p["applyTo"]: p["patch"]["value"]
            for p in find("EnvoyFilter", "lossless-orders")["spec"]["configPatches"]}


def orders_cluster_name():
    [svc] = find("WasmPlugin", "lossless-outbound")["spec"]["pluginConfig"]["services"]
    [name] = svc["match_clusters"]
    return name


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


def test_inbound_template_takes_the_address_from_the_environment(envoy, wasm, tmp_path):
    """README: inbound.self_address "${INSTANCE_IP}:8080" is expanded from the Wasm VM's
    environment. render.py leaves a value's ${NAME} alone, envoy/inbound.yaml passes Envoy's
    INSTANCE_IP to the VM, and without the variable the filter refuses the config."""
    cfg = {"mode": "inbound",
           "inbound": {"service": "demo", "self_address": "${INSTANCE_IP}:8080"},
           "registries": {"n": {"type": "nacos", "cluster": "registry",
                                "authority": "127.0.0.1:8848"}},
           "services": [{"name": "demo", "registry": "n"}]}
    text = render.render((ENVOY_DIR / "inbound.yaml").read_text(), {
        "ADMIN_PORT": 9902, "LISTEN_PORT": 10001, "APP_PORT": 8080, "REGISTRY_PORT": 8848,
        "LOSSLESS_WASM": str(wasm), "LOSSLESS_CONFIG": cfg})
    assert '"self_address":"${INSTANCE_IP}:8080"' in text
    envoy_validate(envoy, text, tmp_path, env={"INSTANCE_IP": "10.1.0.7"})
    with pytest.raises(AssertionError, match="inbound.self_address"):
        envoy_validate(envoy, text, tmp_path, env={"INSTANCE_IP": ""})
    with pytest.raises(ValueError, match="APP_PORT"):
        render.render((ENVOY_DIR / "inbound.yaml").read_text(), {"LOSSLESS_CONFIG": cfg})


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


class SlowBackend(http.server.ThreadingHTTPServer):
    """A loopback HTTP server that answers 200 after `delay` seconds."""

    daemon_threads = True

    def __init__(self, delay):
        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                time.sleep(delay)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request, client_address):
        pass  # Envoy resets the attempts it times out: the answer then has no one to go to


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port, method, host, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, "/", body=b"x" if method == "POST" else None, headers={"host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_istio_merged_route_lets_slow_calls_finish(envoy, tmp_path):
    """The merged route in a running Envoy: orders' cluster and route as the callers' sidecar
    gets them (static endpoints in place of EDS), a backend that takes 1.5 s. The shipped patch
    answers 200, POSTs included; the same patch with a 1 s per_try_timeout (the old manifest's
    5 s, scaled down) answers 504, which is what slow_call_problems stands for."""
    backend = SlowBackend(1.5)
    name = orders_cluster_name()
    patches = orders_patches()
    orders_cluster = merge(istio_cluster(name), patches["CLUSTER"])
    del orders_cluster["eds_cluster_config"]
    orders_cluster.update(type="STATIC", load_assignment=static_endpoints(
        name, "127.0.0.1", backend.server_address[1]))
    capped = mutated(patches["HTTP_ROUTE"], ["route", "retry_policy", "per_try_timeout"], "1s")
    vhosts = [merge({"name": vhost, "domains": [vhost],
                     "routes": [merge(istio_route(name), patch)]}, patches["VIRTUAL_HOST"])
              for vhost, patch in (("shipped", patches["HTTP_ROUTE"]), ("capped", capped))]
    port, admin = free_port(), free_port()
    config = tmp_path / "slow-calls.yaml"
    config.write_text(yaml.safe_dump({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [listener("outbound", port, vhosts, [], address="127.0.0.1")],
            "clusters": [orders_cluster],
        },
    }, sort_keys=False))
    log = tmp_path / "envoy.log"
    proc = subprocess.Popen([envoy, "-c", str(config), "--concurrency", "1",
                             "--disable-hot-restart", "--log-path", str(log), "-l", "warning"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"envoy exited:\n{log.read_text()[-3000:]}"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "envoy not ready in 30 s"
            time.sleep(0.1)
        for vhost, method, want in (("shipped", "GET", 200), ("shipped", "POST", 200),
                                    ("capped", "GET", 504)):
            assert http_status(port, method, vhost) == want, (vhost, method)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        backend.shutdown()
        backend.server_close()


def envoy_refusal(envoy, config, tmp_path, name):
    """Envoy's output if `envoy --mode validate` refuses `config`, else None."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    return None if proc.returncode == 0 and "OK" in out else out


@pytest.mark.compat
def test_istio_cluster_patch_side_effects(envoy, tmp_path):
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
        out = envoy_refusal(envoy, config, tmp_path, f"{setting}.yaml")
        assert out is None, f"{setting}: {out[-2000:]}"
    locality = merge(patched, {"common_lb_config": {"locality_weighted_lb_config": {}}})
    out = envoy_refusal(envoy, istio_bootstrap([], [locality]), tmp_path, "locality.yaml")
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
    """The recipe's Istio floor (1.27) in every manifest of it and in the README's Istio section;
    none of the notes found wrong against Istio's source (STALE_NOTES)."""
    for path in ISTIO_DIR.glob("*.yaml"):
        text = path.read_text()
        if path.name != "serviceentry-nacos.yaml":  # optional, any Istio
            assert "Istio 1.27 or later" in text, path.name
        for note in STALE_NOTES.get(path.name, []):
            assert note not in text, f"{path.name}: {note!r}"
    readme = (REPO / "README.md").read_text()
    start = readme.index("### Istio")
    istio = readme[start:readme.index("\n## ", start)]
    assert "Istio 1.27 or later" in istio


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
