"""What the packaging suites (test_packaging_*.py) share: where the shipped recipes live, reading
Envoy configs, `envoy --mode validate` on a config, the Istio manifests, and the Dockerfiles.
Starting processes, ports, HTTP and the templates' renderer are the test kit's (tests/kit)."""

import copy
import json
import re

import yaml

from kit import REPO, render_text, validate_config

ENVOY_DIR = REPO / "envoy"
COMPOSE_FILE = ENVOY_DIR / "docker-compose.yaml"
COMPOSE_DIR = ENVOY_DIR / "compose"
ISTIO_DIR = ENVOY_DIR / "istio"
DOCS = REPO / "docs"

# ------------------------------------------------------------------------------------------------
# Envoy configs


def envoy_validate(envoy, config, tmp_path, name="envoy.yaml", env=None):
    """Runs `envoy --mode validate` on `config` (dict or YAML text); fails the test with Envoy's
    own error line if Envoy refuses it."""
    out = envoy_refusal(envoy, config, tmp_path, name, env)
    assert out is None, f"envoy refused {tmp_path / name}:\n{out[-3000:]}"


def envoy_refusal(envoy, config, tmp_path, name, env=None):
    """Envoy's output if `envoy --mode validate` refuses `config` (dict or YAML text), else None."""
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path = tmp_path / name
    path.write_text(text)
    rc, out = validate_config(path, binary=envoy, env=env)
    return None if rc == 0 and "OK" in out else out


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
    return yaml.safe_load(render_text((ENVOY_DIR / name).read_text(), base))


# ------------------------------------------------------------------------------------------------
# Istio manifests

DELETE = object()


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


def mutated(doc, path, value):
    """A deep copy of `doc` with the value at `path` (keys and list indexes) replaced, appended
    (an index one past the end) or deleted (DELETE)."""
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


# ------------------------------------------------------------------------------------------------
# Dockerfiles


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
