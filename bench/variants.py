"""The variants `make bench` measures: their Envoy configurations (the shipped templates, and the
baselines derived from envoy/outbound-override-host.yaml), the pass-through filter's host calls,
lossless' routing choices, transparent mode against the capture sidecar without the filter
(derived from envoy/outbound-capture.yaml), and the wrk scripts: one sets the override header as
lossless would, one names the instance a caller picked in the Host header."""

import json
import re
from pathlib import Path

from kit import LOOPBACK, lb_endpoints

REPO = Path(__file__).resolve().parents[1]

EXT = "type.googleapis.com/envoy.extensions."
RR_TYPE = EXT + "load_balancing_policies.round_robin.v3.RoundRobin"
RR = {"policies": [{"typed_extension_config": {
    "name": "envoy.load_balancing_policies.round_robin",
    "typed_config": {"@type": RR_TYPE}}}]}
RR_SLOW = {"policies": [{"typed_extension_config": {
    "name": "envoy.load_balancing_policies.round_robin",
    "typed_config": {"@type": RR_TYPE, "slow_start_config": {"slow_start_window": "60s"}}}}]}
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": EXT + "filters.http.router.v3.Router"}}


def passthrough_filter(wasm, reads=None):
    """The pass-through filter; `reads` ("absent:N" / "present:M") adds host calls per request."""
    config = {"name": "passthrough", "root_id": "passthrough", "vm_config": {
        "vm_id": "passthrough", "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(wasm)}}}}
    if reads:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": reads}
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": EXT + "filters.http.wasm.v3.Wasm", "config": config}}


VARIANTS = {
    "a": "no filter, round_robin",
    "b": "pass-through wasm, round_robin",
    "c": "no filter, round_robin + slow_start 60s",
    "d": "lossless (override_host, round_robin)",
    "e": "pass-through wasm, override_host with a client-set header (round robin + 2 random)",
    "w": "(e) with its round robin in one shuffled order instead of the cluster's host order",
}
# what one crossing of the VM boundary costs Envoy: the pass-through filter making host calls
# (measured at the smallest size only; the cost of a host call does not depend on the cluster)
CROSSINGS = {
    "j": ("pass-through wasm + 10 reads of an absent request header per request, round_robin",
          "absent:10", "a header read that finds nothing"),
    "k": ("pass-through wasm + 10 reads of `:path` per request, round_robin",
          "present:10", "a header read that returns a value (the host allocates it in the VM)"),
    "l": ("pass-through wasm + 10 reads of all request headers per request, round_robin",
          "pairs:10", "all request headers in one call (the SDK's reader, a string per header)"),
    "m": ("pass-through wasm + 10 reads of `xds.cluster_name` per request, round_robin",
          "property:10", "the `xds.cluster_name` property"),
    "n": ("pass-through wasm + 10 reads of an empty shared-data value per request, round_robin",
          "shared:10", "a shared-data read of an empty value (the generation)"),
    "o": ("pass-through wasm + 10 request header writes per request, round_robin",
          "set:10", "a request header write"),
}
# (e) plus host calls and no logic (measured at the smallest size only, like CROSSINGS): what
# routing by lossless' header costs at least, and what lossless' routine calls cost without the
# decisions they carry
ROUTED_CALLS = {
    "p": ("(e) + `xds.cluster_name` and one request header write per request",
          "property:1,set:1",
          "the calls routing by a header needs at least: the cluster, the write"),
    "q": ("(e) + lossless' routine host calls per request, no logic",
          "block:1,shared:1,property:1,set:1,response:1",
          "lossless' routine calls: request headers, generation, cluster, write, response headers"),
}
# --matrix: lossless' routing choices, each one change from (d)'s defaults (service config)
MATRIX = {
    "f": ("policy `random`", {"policy": "random"}),
    "g": ("`routing.fallbacks` 0", {"routing": {"fallbacks": 0}}),
    "h": ("`routing.fallbacks` 1", {"routing": {"fallbacks": 1}}),
    "i": ("`routing.mode` `original_dst`", {"routing": {"mode": "original_dst"}}),
    "u": ("`stall_detection.enabled` false", {"stall_detection": {"enabled": False}}),
}
# --capture: transparent mode (docs/transparent-mode.md) against the capture sidecar without the
# filter. The caller picks the instance itself (wrk names members in turn in the Host header, as a
# caller using the sidecar as an HTTP proxy names them); the capture template takes the request's
# authority as the destination where, captured by iptables, it takes the connection's restored
# original destination: the one line that differs from envoy/outbound-capture.yaml.
CAPTURE = {
    "r": "plain capture sidecar (one hop to an ORIGINAL_DST cluster, as Istio's virtualOutbound), "
         "no filter",
    "s": "capture template without the filter (envoy/outbound-capture.yaml, both lossless filters "
         "taken out: two hops)",
    "t": "lossless transparent mode (envoy/outbound-capture.yaml, `routing.mode` `original_dst`, "
         "`transparent` {})",
}
# the capture variants run at these sizes only: an ORIGINAL_DST cluster makes each host on its
# first use (issue: 3 and 100 instances)
CAPTURE_SIZES = (3, 100)
LOSSLESS_VARIANTS = ("d", *MATRIX)
OVERRIDE_HOST_TEMPLATE = REPO / "envoy" / "outbound-override-host.yaml"
ORIGINAL_DST_TEMPLATE = REPO / "envoy" / "outbound-original-dst.yaml"


def variant_name(v):
    if v in CROSSINGS:
        return CROSSINGS[v][0]
    if v in ROUTED_CALLS:
        return ROUTED_CALLS[v][0]
    if v in MATRIX:
        return f"lossless, {MATRIX[v][0]}"
    if v in CAPTURE:
        return CAPTURE[v]
    return VARIANTS[v]


def cluster_of(v):
    """The Envoy cluster a variant's requests go to (its upstream stats)."""
    return "PassthroughCluster" if v in CAPTURE else "demo"


OVERRIDE_HOST = {"policies": [{"typed_extension_config": {
    "name": "envoy.load_balancing_policies.override_host",
    "typed_config": {"@type": EXT + "load_balancing_policies.override_host.v3.OverrideHost",
                     "override_host_sources": [{"header": "x-lossless-upstream"}],
                     "fallback_policy": RR}}}]}

# (e): wrk itself writes "a,b,c" into x-lossless-upstream, as lossless would with its defaults
# (round robin primary, 2 fallbacks at random): Envoy's share of lossless' routing (override_host
# over all hosts) without the filter's logic.
WRK_LUA = """\
math.randomseed({seed})
local base, span = {base}, {span}
local order = {{}}
for i = 0, span - 1 do order[i] = i end
if {shuffled} then
  for i = span - 1, 1, -1 do
    local j = math.random(0, i)
    order[i], order[j] = order[j], order[i]
  end
end
local turn = math.random(0, span - 1)
local function pick() return "127.0.0.1:" .. (base + math.random(0, span - 1)) end
request = function()
  turn = (turn + 1) % span
  local hosts = "127.0.0.1:" .. (base + order[turn]) .. "," .. pick() .. "," .. pick()
  return wrk.format(nil, "/", {{["x-lossless-upstream"] = hosts}})
end
"""


def wrk_override_script(variant, seed, base, span):
    """The wrk script of (e), (w) and the routed-call variants: the primaries in turn from a
    random start, in the cluster's host order (the upstream ports ascending, as lossless' round
    robin with equal weights walks its members: src/balancer.rs) or, for (w), in one order
    shuffled by `seed` (what visiting the same hosts in a shuffled order costs Envoy)."""
    shuffled = "true" if variant == "w" else "false"
    return WRK_LUA.format(seed=seed, base=base, span=span, shuffled=shuffled)


# (r)-(t): the caller's own pick, members in turn, named as the request's authority
CAPTURE_LUA = """\
local base, span, turn = {base}, {span}, {start}
request = function()
  turn = (turn + 1) % span
  return wrk.format(nil, "/", {{["Host"] = "127.0.0.1:" .. (base + turn)}})
end
"""


def lossless_config(registry_port, service, refresh_ms=None, jitter=None, service_opts=None):
    registry = {"type": "static", "cluster": "registry",
                "authority": f"{LOOPBACK}:{registry_port}", "path": "/m/{service}.json"}
    cfg = {"registries": {"reg": registry},
           "services": [{"name": "demo", "registry": "reg", "registry_service": service,
                         "match_clusters": ["demo"], **(service_opts or {})}]}
    if refresh_ms is not None:
        cfg["refresh_interval_ms"] = refresh_ms
    if jitter is not None:
        cfg["jitter_percent"] = jitter
    return cfg



def baseline_template(workdir):
    """The template of the variants without lossless: envoy/outbound-override-host.yaml itself
    (same listener, routes, retry policies, attempt-count header, cluster and circuit breakers),
    with its filter list replaced by HTTP_FILTERS and the cluster's load_balancing_policy by
    LB_POLICY (JSON, filled by envoy/render.py), written to `workdir`. Derived on every run, so a
    change to the shipped route reaches the baselines too; refuses to run if the template's
    layout moved."""
    text = OVERRIDE_HOST_TEMPLATE.read_text()
    filters = re.compile(r"^( +)http_filters:\n(?:\1 .*\n|\1- .*\n)+", re.M)
    policy = re.compile(r"^( +)load_balancing_policy:\n(?:\1 .*\n)+", re.M)
    text, n_filters = filters.subn(r"\1http_filters: ${HTTP_FILTERS}\n", text)
    text, n_policy = policy.subn(r"\1load_balancing_policy: ${LB_POLICY}\n", text)
    if (n_filters, n_policy) != (1, 1) or "envoy.filters.http.wasm" in text:
        raise RuntimeError(f"cannot derive the baselines from {OVERRIDE_HOST_TEMPLATE}: "
                           f"{n_filters} filter list(s), {n_policy} load_balancing_policy block(s)")
    out = Path(workdir) / "envoy-baseline.yaml"
    out.write_text(text)
    return out


def without_filter_template(workdir):
    """envoy/outbound-override-host.yaml with its lossless filter taken out of the filter list and
    nothing else changed (the router, routes, clusters and override_host policy as shipped),
    written to `workdir`: what the filter's startup and memory are measured against. Refuses to
    run if the template's layout moved."""
    text = OVERRIDE_HOST_TEMPLATE.read_text()
    wasm = re.compile(r"^( +)- name: envoy\.filters\.http\.wasm\n(?:\1  .*\n)+", re.M)
    text, n = wasm.subn("", text)
    if n != 1 or "envoy.filters.http.router" not in text or "${LOSSLESS_" in text:
        raise RuntimeError(f"cannot take the filter out of {OVERRIDE_HOST_TEMPLATE}: {n} wasm "
                           "filter(s) found")
    out = Path(workdir) / "envoy-without-filter.yaml"
    out.write_text(text)
    return out


CAPTURE_TEMPLATE = REPO / "envoy" / "outbound-capture.yaml"

# the destination: the request's authority instead of the connection's restored one
CAPTURE_DESTINATION = "%DOWNSTREAM_LOCAL_ADDRESS%"
AUTHORITY = "%REQ(:AUTHORITY)%"

# (r): a plain capture sidecar, one hop (bench/capture-plain.yaml)
PLAIN_CAPTURE = REPO / "bench" / "capture-plain.yaml"


def capture_templates(workdir):
    """(plain, without, with) templates of (r), (s) and (t), written to `workdir`: PLAIN_CAPTURE;
    envoy/outbound-capture.yaml with the destination taken from the request's authority, listening
    on LISTEN_PORT, its loop guard taken out (the bench connects to that port itself), its
    lossless filters taken out of both hops; the same with them. Derived on
    every run; refuses to run if the template's layout moved."""
    text = CAPTURE_TEMPLATE.read_text()
    # the loop guard answers connections made to the capture port itself: the bench makes
    # exactly those (no iptables; the destination is the request's authority), so it goes
    text, n_guard = re.subn(r"^    # Loop guard:.*?\n(?=    default_filter_chain:)", "", text,
                            flags=re.M | re.S)
    n_dest = text.count(CAPTURE_DESTINATION)
    text = text.replace(CAPTURE_DESTINATION, AUTHORITY).replace("${CAPTURE_PORT}", "${LISTEN_PORT}")
    wasm = re.compile(r"^( +)- &lossless\n(?:\1  .*\n)+", re.M)
    bare, n_wasm = wasm.subn("", text)
    bare, n_inner = re.subn(r"\[\*lossless, \*router\]", "[*router]", bare)
    if ((n_guard, n_dest, n_wasm, n_inner) != (1, 1, 1, 1) or "envoy.filters.http.wasm" in bare
            or "loop-guard" in text):
        raise RuntimeError(f"cannot derive the capture variants from {CAPTURE_TEMPLATE}: "
                           f"{n_guard} loop guard(s), {n_dest} destination(s), {n_wasm} filter "
                           f"block(s), {n_inner} inner filter list(s)")
    out = []
    for name, body in (("plain", PLAIN_CAPTURE.read_text()), ("without", bare), ("with", text)):
        path = Path(workdir) / f"envoy-capture-{name}.yaml"
        path.write_text(body)
        out.append(path)
    return tuple(out)


def capture_config(variant, registry_port, service, lossless_wasm, templates):
    """(template, subs) of (r), (s) or (t); `templates` is capture_templates()'s."""
    plain, without, with_filter = templates
    if variant == "r":
        return plain, {}
    subs = {"REGISTRY_ADDRESS": LOOPBACK, "REGISTRY_PORT": registry_port}
    if variant == "s":
        return without, subs
    cfg = lossless_config(registry_port, service)
    del cfg["services"][0]["match_clusters"]
    cfg["services"][0].update(routing={"mode": "original_dst"}, transparent={})
    return with_filter, {**subs, "LOSSLESS_WASM": lossless_wasm, "LOSSLESS_CONFIG": cfg}


def envoy_config(variant, ports, registry_port, service, lossless_wasm, passthrough_wasm,
                 baseline=None, **lossless_opts):
    """(template, subs) of one variant's Envoy (the listener port is added by start_envoy);
    `baseline` is baseline_template()'s file, for the variants without lossless."""
    subs = {"DEMO_ENDPOINTS": lb_endpoints(ports)}
    if variant in LOSSLESS_VARIANTS:
        opts = MATRIX[variant][1] if variant in MATRIX else None
        # original_dst: the cluster has no endpoint list, the picked address comes in the header
        template = ORIGINAL_DST_TEMPLATE if variant == "i" else OVERRIDE_HOST_TEMPLATE
        if variant == "i":
            del subs["DEMO_ENDPOINTS"]
        subs.update(LOSSLESS_WASM=lossless_wasm, REGISTRY_PORT=registry_port,
                    LOSSLESS_CONFIG=lossless_config(registry_port, service, service_opts=opts,
                                                    **lossless_opts))
    else:
        template = baseline
        filters = [ROUTER]
        if variant in ("b", "e", "w", *CROSSINGS, *ROUTED_CALLS):
            calls = {**CROSSINGS, **ROUTED_CALLS}
            reads = calls[variant][1] if variant in calls else None
            filters.insert(0, passthrough_filter(passthrough_wasm, reads))
        overrides = ("e", "w", *ROUTED_CALLS)
        policy = RR_SLOW if variant == "c" else OVERRIDE_HOST if variant in overrides else RR
        subs.update(HTTP_FILTERS=json.dumps(filters), LB_POLICY=json.dumps(policy),
                    REGISTRY_PORT=registry_port)
    return template, subs


# the refresh probe's Envoys (no load): tag, registry service, concurrency
PROBES = [  # (tag, registry service, concurrency)
    ("3", "svc3", 1),
    ("10k", "svc10000", 1),
    ("10k-churn", "churn", 1),
    ("3-c2", "svc3", 2),
    ("10k-c2", "svc10000", 2),
]


def variants_of(args):
    if args.matrix_only:
        chosen = list(LOSSLESS_VARIANTS)
    elif args.capture_only:
        chosen = list(CAPTURE)
    else:
        chosen = (list(VARIANTS) + list(CROSSINGS) + list(ROUTED_CALLS)
                  + (list(MATRIX) if args.matrix else [])
                  + (list(CAPTURE) if args.capture else []))
    return [v for v in chosen if not args.variants or v in args.variants]
