#!/usr/bin/env python3
"""`make bench-scale`: what N proxies cost one registry, polled against pushed.

N Envoy processes (`--concurrency 2`, the shipped outbound template, lossless with S services of 3
instances each) against one rnacos, for each N of --proxies and each mode:
  poll  every service listed over Nacos' HTTP API every `refresh_interval_ms` (1000, the default)
  push  every service subscribed over Nacos' gRPC protocol (`grpc_cluster`), HTTP lists only as
        the reconciling poll (`reconcile_interval_ms`, 30 s)
  consul  Consul's health endpoint with blocking queries (`wait_s` 30, the default), against
        bench/consul_front.py, which answers as Consul's "Blocking Queries" doc says (no Consul
        server can be obtained here); its CPU is a Python stand-in's and is not reported
  delta  a real Eureka server (EUREKA_JAR, the kit's peers/eureka-server at its defaults: a 30 s
        read-only response cache), `fetch: "delta"`: one /apps/delta per proxy every 30 s for
        every service (--delta-changes changes, each waited for up to a minute and more)
Measured per run, once every proxy lists every service:
  - idle registry load: the requests the proxies sent the registry over --idle seconds, from each
    Envoy's own upstream counters (`cluster.registry.upstream_rq_total`: HTTP lists and logins;
    `cluster.registry-grpc.upstream_rq_total`: the gRPC unary calls plus the one bi-stream, which
    carries the pushes and their acknowledgements), per second, per proxy and per proxy-service;
  - the registry's CPU over the same window (rnacos' utime + stime), in total and per proxy;
  - the time from a change in the registry (an instance deregistered or registered again by
    rnacos' HTTP API) to the moment each proxy's poller applied it (the timestamp of its log line
    "service '<name>' membership v<n>"), --changes changes: p50 and p99 over every proxy and
    change, and p50 / p99 of the last proxy of each change. The workers route by the poller's
    membership on their next tick (100 ms; measured in tests/e2e/test_push.py), not added here.
Per 1,000 proxies, the registry's load is the per-proxy figure times 1,000 (each proxy asks on its
own: nothing is shared between proxies).

Results go to stdout and, with --out, into the block between `<!-- scale: begin -->` and
`<!-- scale: end -->` of that file (BENCHMARKS.md).

Environment: ENVOY_BIN, LOSSLESS_WASM, RNACOS_BIN (required); EUREKA_JAR for the delta mode.
Python stdlib only. Every process is tracked by pid and stopped; every wait is bounded.
"""

import argparse
import json
import re
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "tests", REPO / "tests" / "e2e"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))  # the test kit and the e2e harness: this file runs as a script

from harness import OUTBOUND, push_template  # noqa: E402
from kit import (  # noqa: E402
    HOUR_MS,
    LOOPBACK,
    Envoy,
    Procs,
    Rnacos,
    cpu_seconds,
    free_port,
    interrupt_on_signals,
    lb_endpoints,
    now_ms,
    percentile,
    request,
    wait_http,
    wait_until,
)

RECONCILE_MS = 30_000
INSTANCES = 3
# The instances' addresses: loopback ports this process listens on (and never answers), so that
# rnacos' TCP probe of persistent instances finds them up and no health flap mixes with the
# changes measured. Every service lists the same INSTANCES addresses.
PORTS = []
# Envoy's log line prefix and the poller's line for a published membership
APPLIED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]"
                     r".*service '([^']+)' membership v\d+")
BEGIN, END = "<!-- scale: begin -->", "<!-- scale: end -->"


def log(msg):
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def service_name(i):
    return f"scale-svc-{i}"


def filter_config(mode, registry, services):
    if mode == "consul":
        reg = {"type": "consul", "cluster": "registry", "authority": registry.addr}
    elif mode == "delta":
        reg = {"type": "eureka", "cluster": "registry", "authority": registry.addr,
               "timeout_ms": 2000, "fetch": "delta"}
    else:
        reg = {"type": "nacos", "cluster": "registry", "authority": registry.addr,
               "timeout_ms": 1000, "api": "v1"}
    if mode == "push":
        reg.update(grpc_cluster="registry-grpc", reconcile_interval_ms=RECONCILE_MS)
    svcs = [{"name": service_name(i), "registry": "reg",
             "registry_service": registry.service(service_name(i)),
             "guard": {"departure_memory_ms": 0}} for i in range(services)]
    cfg = {"registries": {"reg": reg}, "services": svcs, "refresh_interval_ms": 1000}
    return json.dumps(cfg, separators=(",", ":"))


def template(mode, workdir):
    return push_template(workdir) if mode == "push" else OUTBOUND


def applied_times(envoy, service, since_ms):
    """Epoch ms of each log line in which `envoy`'s poller published `service`, at or after
    `since_ms` (Envoy logs local time with ms)."""
    out = []
    for line in envoy.log_path.read_text(errors="replace").splitlines():
        m = APPLIED.match(line)
        if m and m.group(2) == service:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() * 1000
            if t >= since_ms:
                out.append(t)
    return out


def registry_requests(envoys):
    total = 0
    for e in envoys:
        stats = e.stats(r"^cluster\.registry(-grpc)?\.upstream_rq_total$")
        total += sum(int(v) for v in stats.values())
    return total


class Registry:
    """What a run needs of its registry: `addr` ("ip:port" of its HTTP API), `http_port`,
    `grpc_port`, the service name it keeps a service under, register / deregister one instance
    (127.0.0.1:port) of a service, and its process for the CPU columns (`cpu_pid`, None when its
    CPU says nothing about the real registry's). `idle_cpu`: its own CPU share with no proxy."""

    cpu_pid = None
    idle_cpu = 0.0

    def service(self, name):
        return name


class NacosRegistry(Registry):
    def __init__(self, rnacos):
        self.rnacos = rnacos
        self.addr, self.http_port, self.grpc_port = rnacos.addr, rnacos.http_port, rnacos.grpc_port
        self.cpu_pid = rnacos.pid

    def register(self, service, port):
        self.rnacos.register(service, LOOPBACK, port, metadata={"timestamp": now_ms() - HOUR_MS})

    def deregister(self, service, port):
        self.rnacos.deregister(service, LOOPBACK, port)


class EurekaRegistry(Registry):
    """The kit's real Eureka server; leases of an hour, so that nothing expires during a run."""

    def __init__(self, procs):
        from kit.eureka import Eureka  # only this mode needs EUREKA_JAR

        self.eureka = Eureka(procs).start()
        self.addr = self.eureka.addr
        self.http_port = self.grpc_port = self.eureka.port
        self.cpu_pid = self.eureka.pid

    def service(self, name):
        return name.upper()

    def register(self, service, port):
        self.eureka.register(service.upper(), f"{service}-{port}", port, duration_s=3600,
                             metadata={"timestamp": now_ms() - HOUR_MS})

    def deregister(self, service, port):
        self.eureka.cancel(service.upper(), f"{service}-{port}")


class ConsulFront(Registry):
    """bench/consul_front.py, started by `procs`."""

    def __init__(self, procs):
        self.procs, self.name, self.port = procs, "consul-front", free_port()
        self.http_port = self.grpc_port = self.port
        script = Path(__file__).parent / "consul_front.py"
        proc = procs.start(self.name, [sys.executable, script, "--port", self.port])
        wait_http(f"http://{LOOPBACK}:{self.port}/__count", timeout=10, proc=proc)

    @property
    def addr(self):
        return f"{LOOPBACK}:{self.port}"

    def _post(self, path, service, port):
        status, _, _ = request("POST", f"http://{self.addr}{path}?service={service}&port={port}",
                               body=b"")
        assert status == 200, status

    def register(self, service, port):
        self._post("/__register", service, port)

    def deregister(self, service, port):
        self._post("/__deregister", service, port)


def run_one(mode, n, args, registries, workdir):
    registry = registries[mode]
    changes = args.delta_changes if mode == "delta" else args.changes
    change_timeout = 150.0 if mode == "delta" else args.change_timeout
    procs = Procs(Path(workdir) / f"{mode}-{n}")
    envoys = []
    try:
        tpl = template(mode, workdir)
        cfg = filter_config(mode, registry, args.services)
        for i in range(n):
            subs = {"LISTEN_PORT": free_port(), "REGISTRY_PORT": registry.http_port,
                    "REGISTRY_GRPC_PORT": registry.grpc_port, "LOSSLESS_CONFIG": cfg,
                    "DEMO_ENDPOINTS": lb_endpoints([f"{LOOPBACK}:1"])}
            e = Envoy(procs, procs.log_dir, tpl, subs, concurrency=2, name=f"envoy{i}",
                      extra_args=["--file-flush-interval-msec", "100"])
            procs.start(e.name, e.argv())
            envoys.append(e)
        for e in envoys:
            wait_http(e.admin_url + "/ready", timeout=300, proc=procs.procs[e.name])
        want = {service_name(i) for i in range(args.services)}

        def all_listed():
            return all(applied_times(e, s, 0) for e in envoys for s in want)
        wait_until(all_listed, timeout=120, interval=0.5, what=f"{n} proxies list every service")
        if mode == "push":
            wait_until(lambda: all(e.stat("wasmcustom.lossless.push_connected", 0) == 1
                                   for e in envoys), timeout=60, interval=0.5,
                       what="every proxy's push session up")
        time.sleep(args.settle)

        # idle
        def cpu():
            return cpu_seconds(registry.cpu_pid) if registry.cpu_pid else 0.0
        rq0, cpu0, t0 = registry_requests(envoys), cpu(), time.monotonic()
        time.sleep(args.idle)
        rq1, cpu1, t1 = registry_requests(envoys), cpu(), time.monotonic()
        window = t1 - t0
        added = (max((cpu1 - cpu0) / window - registry.idle_cpu, 0.0) if registry.cpu_pid
                 else None)
        rps = (rq1 - rq0) / window

        # changes to service 0: deregister / register again its third instance, in turn
        svc = service_name(0)
        lags, last = [], []
        for k in range(changes):
            port = PORTS[-1]
            before = now_ms()
            if k % 2 == 0:
                registry.deregister(svc, port)
            else:
                registry.register(svc, port)
            deadline = time.monotonic() + change_timeout
            seen = {}
            while len(seen) < n and time.monotonic() < deadline:
                time.sleep(0.2)
                for i, e in enumerate(envoys):
                    if i not in seen:
                        ts = applied_times(e, svc, before)
                        if ts:
                            seen[i] = min(ts) - before
            missing = n - len(seen)
            if missing:
                log(f"{mode} n={n}: change {k} not applied by {missing} proxies within "
                    f"{change_timeout} s")
            lags.extend(seen.values())
            if seen and not missing:
                last.append(max(seen.values()))
            time.sleep(args.gap)
        row = {
            "mode": mode, "proxies": n, "services": args.services, "idle_s": round(window, 1),
            "registry_rps": round(rps, 3),
            "rps_per_proxy": round(rps / n, 4),
            "rps_per_proxy_service": round(rps / n / args.services, 4),
            "registry_cpu_pct": None if added is None else round(100 * added, 2),
            "registry_cpu_ms_per_proxy_s": None if added is None else round(1000 * added / n, 3),
            "changes": changes,
            "applied_p50_ms": round(percentile(lags, 0.5)) if lags else None,
            "applied_p99_ms": round(percentile(lags, 0.99)) if lags else None,
            "last_proxy_p50_ms": round(percentile(last, 0.5)) if last else None,
            "last_proxy_p99_ms": round(percentile(last, 0.99)) if last else None,
            "not_applied": changes * n - len(lags),
        }
        log(f"ROW {json.dumps(row)}")
        return row
    finally:
        procs.stop_all()


def table(rows, args, load):
    head = ("| mode | proxies | registry requests/s | per proxy | per proxy and service | "
            "registry CPU added | per proxy (ms/s) | change → poller applied p50 / p99 | "
            "last proxy p50 / p99 |")
    lines = [
        f"{BEGIN}",
        f"Generated by `bench/scale.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{args.services} services of {INSTANCES} instances, Envoy `--concurrency 2`, "
        f"rnacos 0.8.8, "
        f"idle window {args.idle} s, {args.changes} changes per run; load average at the start "
        f"{load}; each registry's own CPU with no proxy subtracted: {args.idle_note}; the delta "
        f"mode's changes are {args.delta_changes} per run).",
        "",
        head,
        "|---" * (head.count("|") - 1) + "|",
    ]
    def cpu(v, unit=""):
        return "–" if v is None else f"{v}{unit}"
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['proxies']} | {r['registry_rps']} | {r['rps_per_proxy']} | "
            f"{r['rps_per_proxy_service']} | "
            f"{cpu(r['registry_cpu_pct'], ' %')} | {cpu(r['registry_cpu_ms_per_proxy_s'])} | "
            f"{r['applied_p50_ms']} / {r['applied_p99_ms']} ms | "
            f"{r['last_proxy_p50_ms']} / {r['last_proxy_p99_ms']} ms |")
    per_k = {r["mode"]: r for r in rows if r["proxies"] == max(x["proxies"] for x in rows)}
    lines.append("")
    lines.append("Per 1,000 proxies (each proxy's own requests times 1,000; "
                 f"{args.services} services each):")
    for mode, r in per_k.items():
        lines.append(f"- {mode}: {round(r['rps_per_proxy'] * 1000, 1)} registry requests/s "
                     f"({r['rps_per_proxy_service']} per proxy and service).")
    lines.append(END)
    return "\n".join(lines)


def write_block(path, block):
    text = Path(path).read_text()
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block")
    Path(path).write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxies", default="1,10,30")
    ap.add_argument("--modes", default="poll,push,consul,delta")
    ap.add_argument("--services", type=int, default=10)
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--gap", type=float, default=1.5, help="seconds between two changes")
    ap.add_argument("--change-timeout", type=float, default=15.0)
    ap.add_argument("--delta-changes", type=int, default=2)
    ap.add_argument("--out", help="rewrite the scale block of this file (BENCHMARKS.md)")
    args = ap.parse_args()
    interrupt_on_signals()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    workdir = Path(tempfile.mkdtemp(prefix="lossless-scale-"))
    procs = Procs(workdir)
    listeners = []
    for _ in range(INSTANCES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOOPBACK, 0))
        sock.listen(1024)
        listeners.append(sock)
        PORTS.append(sock.getsockname()[1])
    rows = []
    try:
        modes = args.modes.split(",")
        nacos = NacosRegistry(Rnacos(procs, workdir).start())
        registries = {"poll": nacos, "push": nacos}
        if "consul" in modes:
            registries["consul"] = ConsulFront(procs)
        if "delta" in modes:
            registries["delta"] = EurekaRegistry(procs)
        notes = []
        for name, registry in (("rnacos", nacos), ("Eureka", registries.get("delta"))):
            if registry is None:
                continue
            for i in range(args.services):
                for port in PORTS:
                    registry.register(service_name(i), port)
            # its own CPU with no proxy at all, over the same window: the registry CPU columns
            # are what the proxies add to it
            time.sleep(args.settle)
            c0, t0 = cpu_seconds(registry.cpu_pid), time.monotonic()
            time.sleep(args.idle)
            registry.idle_cpu = (cpu_seconds(registry.cpu_pid) - c0) / (time.monotonic() - t0)
            notes.append(f"{name} {100 * registry.idle_cpu:.2f} %")
            log(f"{name} alone: {100 * registry.idle_cpu:.2f} % CPU")
        if "consul" in registries:
            for i in range(args.services):
                for port in PORTS:
                    registries["consul"].register(service_name(i), port)
        args.idle_note = ", ".join(notes)
        for n in (int(x) for x in args.proxies.split(",")):
            for mode in modes:
                log(f"{mode}, {n} proxies")
                try:
                    rows.append(run_one(mode, n, args, registries, workdir))
                except (TimeoutError, RuntimeError, OSError) as exc:
                    log(f"{mode}, {n} proxies: left out ({exc})")
                # leave service 0 as it started
                if (args.delta_changes if mode == "delta" else args.changes) % 2:
                    registries[mode].register(service_name(0), PORTS[-1])
    finally:
        procs.stop_all()
        for sock in listeners:
            sock.close()
    block = table(rows, args, load)
    print(block)
    if args.out:
        write_block(args.out, block)
    lat = [r["last_proxy_p99_ms"] for r in rows if r["last_proxy_p99_ms"] is not None]
    if lat:
        log(f"median of the runs' last-proxy p99: {statistics.median(lat)} ms")


if __name__ == "__main__":
    main()
