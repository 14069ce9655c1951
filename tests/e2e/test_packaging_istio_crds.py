"""Packaging: the Istio manifests (envoy/istio/) against Istio's own CRDs, offline.

The manifests are checked against the CRDs of WasmPlugin v1alpha1, EnvoyFilter v1alpha3 and
ServiceEntry v1 of Istio 1.28.10 (../shared/fixtures/istio/) with jsonschema, plus what the API
server adds: unknown keys (which it would prune), list-map keys, CEL rules. Mutated manifests show
that the check fails. Then the names and selectors that tie the manifests together, and the
preStop hook. The recipe: docs/istio.md; through Envoy: test_packaging_istio_envoy.py.
"""

import copy
import re

import pytest
import yaml

try:
    import jsonschema
except ImportError:  # a venv made before the Makefile pinned it: the Istio CRD tests say so
    jsonschema = None

from kit import REPO
from shipped import DELETE, ISTIO_DIR, find, istio_docs, mutated

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
    "bad patch operation": ("EnvoyFilter", "lossless-orders-transparent",
                            ["spec", "configPatches", 1, "patch", "operation"], "INSERT_TOP",
                            "'INSERT_TOP' is not one of"),
    "unknown key of a route match": ("EnvoyFilter", "lossless-orders-transparent",
                                     ["spec", "configPatches", 1, "match", "routeConfiguration",
                                      "vhost", "nmae"], "allow_any",
                                     "vhost.nmae: unknown field"),
}



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



def test_istio_transparent_variant_agrees_with_the_recipe():
    """envoy/istio/transparent-orders.yaml: its WasmPlugin is the outbound one plus transparent
    mode for orders (same workloads, registries and cluster names); its EnvoyFilter inserts, first
    into the port's catch-all `allow_any`, the route that takes what lossless names with
    capture.service_header to orders' own cluster (the one envoyfilter-orders.yaml patches with
    override_host), with the recipe's retry policy."""
    outbound = find("WasmPlugin", "lossless-outbound")["spec"]
    plugin = find("WasmPlugin", "lossless-outbound-transparent")["spec"]
    ef = find("EnvoyFilter", "lossless-orders-transparent")["spec"]
    orders_ef = find("EnvoyFilter", "lossless-orders")["spec"]
    assert plugin["selector"] == outbound["selector"]
    assert ef["workloadSelector"] == orders_ef["workloadSelector"]
    for key in ("url", "phase", "failStrategy", "match", "type", "pluginName"):
        assert plugin[key] == outbound[key], key
    cfg = plugin["pluginConfig"]
    assert cfg["registries"] == outbound["pluginConfig"]["registries"]
    [svc] = cfg["services"]
    [plain] = outbound["pluginConfig"]["services"]
    assert {k: v for k, v in svc.items() if k != "transparent"} == plain
    assert all(p.startswith("/") for p in svc["transparent"]["exclude_paths"])
    capture = cfg["capture"]
    assert capture["match_clusters"] == ["PassthroughCluster"], "Istio's name for it"
    header = capture["service_header"]

    [cluster] = svc["match_clusters"]
    port = int(cluster.split("|")[1])
    patches = ef["configPatches"]
    assert [(p["applyTo"], p["patch"]["operation"]) for p in patches] == [
        ("VIRTUAL_HOST", "MERGE"), ("HTTP_ROUTE", "INSERT_FIRST")]
    for p in patches:
        assert p["match"]["context"] == "SIDECAR_OUTBOUND"
        assert p["match"]["routeConfiguration"] == {"portNumber": port,
                                                    "vhost": {"name": "allow_any"}}
    assert patches[0]["patch"]["value"] == {"include_attempt_count_in_response": True}
    route = patches[1]["patch"]["value"]
    assert route["match"] == {"prefix": "/", "headers": [
        {"name": header, "string_match": {"exact": svc["name"]}}]}
    assert route["route"]["cluster"] == cluster
    orders_patches = {p["applyTo"]: p for p in orders_ef["configPatches"]}
    assert orders_patches["CLUSTER"]["match"]["cluster"]["portNumber"] == port
    recipe_retry = orders_patches["HTTP_ROUTE"]["patch"]["value"]["route"]["retry_policy"]
    retry = route["route"]["retry_policy"]
    assert {k: retry[k] for k in recipe_retry} == recipe_retry
    # a route of its own gets no Istio default to merge with: the previous-hosts predicate is
    # spelled out
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
