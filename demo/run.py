#!/usr/bin/env python3
"""lossless demo: a rolling release under load, with lossless and then against a plain baseline.

    LOSSLESS_WASM=... ENVOY_BIN=... RNACOS_BIN=... python3 demo/run.py [options]   (or: make demo)

Everything runs on 127.0.0.1 on free ports: rnacos; a gateway Envoy with lossless in outbound
override_host mode (envoy/outbound-override-host.yaml) whose STATIC cluster lists the sidecar
address of every instance slot, old and new; N demo instances (demo/backend.py, a JVM-like
service whose capacity grows over its warmup) each behind its own Envoy sidecar with lossless in
inbound mode (envoy/inbound.yaml); a load generator at a steady rate with a share of POSTs.

The release replaces instances one at a time: start a new instance and its sidecar on a fresh
slot, wait until the gateway's GET /lossless/membership lists it serving, SIGTERM the old one
(it marks itself offline, drains and exits), wait for it to exit, then let the new one warm up
before the next step (as a rollout's minReadySeconds would). The terminal shows the instances
live; at the end the report goes to --out: an SVG plot of each instance's share of traffic,
summary.json and summary.txt. Then the same release runs against a baseline: plain Envoy round
robin with active HTTP health checks (demo/baseline.yaml), no lossless, naive instances that exit
at once on SIGTERM; both failure counts are printed side by side.

Options also come from the environment: DEMO_WARMUP, DEMO_INSTANCES, DEMO_REPLACE, DEMO_RATE,
DEMO_POST_SHARE, DEMO_BASELINE (0/1), DEMO_OUT.
"""

import argparse
import html
import json
import math
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402  (tests/e2e/harness.py: processes, rnacos, Envoy, load)
from harness import (LOOPBACK, Envoy, Load, Procs, Rnacos, free_port, get_json,  # noqa: E402
                     lb_endpoints)

SERVICE = "demo-svc"
OUTBOUND = REPO / "envoy" / "outbound-override-host.yaml"
INBOUND = REPO / "envoy" / "inbound.yaml"
BASELINE = REPO / "demo" / "baseline.yaml"
BACKEND = REPO / "demo" / "backend.py"
HOUR_MS = 3_600_000
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a"]


def now_ms():
    return int(time.time() * 1000)


_ports_taken = set()


def slot_port():
    """A free loopback port below the kernel's ephemeral range: unlike harness.free_port() (a
    bind to port 0), no outgoing connection and no other test's bind(0) can take it between now
    and the time its slot is used, which may be a minute later."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = int(f.read().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        high = 32767
    low = 20000
    for _ in range(200 if high - low >= 1000 else 0):
        port = random.randint(low, high)
        if port in _ports_taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        _ports_taken.add(port)
        return port
    return free_port()


def env_default(name, default, cast=str):
    value = os.environ.get(name, "")
    return cast(value) if value != "" else default


def env_bool(name, default):
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    return value not in ("0", "false", "no", "off")


# --------------------------------------------------------------------------------- instances

class Instance:
    """One service instance (a demo/backend.py process, plus its sidecar in the lossless run)."""

    def __init__(self, run, index, slot):
        self.run = run
        self.name = f"i{index}"
        self.index = index
        self.app_port, self.sc_port, self.sc_admin = slot
        self.color = COLORS[(index - 1) % len(COLORS)]
        self.lossless = run.mode == "lossless"
        # the address the gateway routes to and the backend answers in x-instance
        self.addr = f"{LOOPBACK}:{self.sc_port if self.lossless else self.app_port}"
        self.proc_name = f"{run.mode}-{self.name}"
        self.sidecar = None
        self.phase = "planned"  # planned, starting, up, terminating, exited
        self.t_start = self.t_up = self.t_term = self.t_exit = None  # monotonic
        self.t_unhealthy = None  # baseline: gateway health check noticed the exit
        self.started_ms = None
        self.final = None  # the backend's final stats
        self.sidecar_stats = {}
        self.stats_file = run.out / "instances" / f"{self.name}.json"

    def start(self, warm=False):
        """Starts the sidecar (lossless run) and the backend; does not wait for registration."""
        run, a = self.run, self.run.args
        self.t_start = time.monotonic()
        self.phase = "starting"
        if self.lossless:
            cfg = run.filter_config(mode="inbound",
                                    inbound={"service": "demo", "self_address": self.addr})
            self.sidecar = Envoy(run.procs, run.logs, INBOUND,
                                 {"LISTEN_PORT": self.sc_port, "ADMIN_PORT": self.sc_admin,
                                  "APP_PORT": self.app_port,
                                  "REGISTRY_PORT": run.rnacos.http_port,
                                  "LOSSLESS_CONFIG": cfg},
                                 name=f"{self.proc_name}-sidecar")
            self.sidecar.start(timeout=60)
        # the JVM starts now: its warmup (capacity model and registered timestamp) counts from here
        self.started_ms = now_ms() - (HOUR_MS if warm else 0)
        argv = [sys.executable, BACKEND, "--port", self.app_port, "--name", self.name,
                "--advertise", self.addr, "--warmup-ms", int(a.warmup * 1000),
                "--capacity", a.capacity, "--service-ms", a.service_ms,
                "--started-ms", self.started_ms, "--stats-file", self.stats_file]
        if self.lossless:
            argv += ["--registry", run.rnacos.addr, "--service", SERVICE,
                     "--sidecar", f"{LOOPBACK}:{self.sc_port}", "--drain-via", a.drain_via]
        else:
            argv += ["--naive"]
        self.stats_file.unlink(missing_ok=True)
        proc = run.procs.start(self.proc_name, argv)
        harness.wait_http(f"http://{LOOPBACK}:{self.app_port}/healthz", timeout=30, proc=proc)
        return self

    def alive(self):
        return self.run.procs.is_alive(self.proc_name)

    def process_names(self):
        return [self.proc_name] + ([self.sidecar.name] if self.sidecar else [])

    def uptime(self):
        return (now_ms() - self.started_ms) / 1000.0 if self.started_ms else 0.0

    def terminate(self):
        self.t_term = time.monotonic()
        self.phase = "terminating"
        self.run.procs.procs[self.proc_name].send_signal(signal.SIGTERM)

    def backend_stats(self):
        return get_json(f"http://{LOOPBACK}:{self.app_port}/__stats", timeout=2)


# --------------------------------------------------------------------------------- load

class MixedLoad:
    """Two harness.Load generators on one clock: GETs at (1 - post_share) x rate and POSTs at
    post_share x rate. (One Load makes request n of each connection a POST when
    floor(n x share) steps up: with hundreds of connections the first POSTs would come seconds
    late.) Sample.t is seconds since the first one started."""

    def __init__(self, port, rate, post_share, threads, **kwargs):
        self.parts = []
        for share, posts in ((1.0 - post_share, 0.0), (post_share, 1.0)):
            if share > 0:
                self.parts.append(Load(port, threads=max(2, int(round(threads * share))),
                                       rate=rate * share, post_share=posts, **kwargs))
        self.t0 = None

    def start(self):
        for part in self.parts:
            part.start()
        self.t0 = self.parts[0].t0
        return self

    def elapsed(self):
        return time.monotonic() - self.t0

    def stop(self):
        for part in self.parts:
            part.stop()

    def results(self):
        out = []
        for part in self.parts:
            shift = part.t0 - self.t0
            out.extend(x._replace(t=x.t + shift) for x in part.results())
        out.sort(key=lambda x: x.t)
        return out


# --------------------------------------------------------------------------------- one run

class Run:
    """One rolling release (mode "lossless" or "baseline") under load."""

    def __init__(self, mode, args, out, rnacos=None):
        self.mode = mode
        self.args = args
        self.out = out / mode
        self.logs = out / "logs" / mode
        (self.out / "instances").mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.logs)
        self.rnacos = rnacos
        n_slots = args.instances + args.replace
        # (backend port, sidecar listener, sidecar admin) per slot
        self.slots = [(slot_port(), slot_port(), slot_port()) for _ in range(n_slots)]
        self.instances = []
        self.gateway = None
        self.listen = slot_port()
        self.admin = slot_port()
        self.load = None
        self.t0 = None  # monotonic time of load start
        self.wall0 = None  # wall clock (s) at load start
        self.step = None  # (k, phase) of the release
        self.steps_done = 0
        self.done = False
        self.events = []  # (monotonic, text)
        self.view = {}  # last sampled gateway view: addr -> dict
        self.lock = threading.Lock()

    # -- configuration

    def filter_config(self, mode="outbound", inbound=None):
        cfg = {
            "mode": mode,
            "registries": {"nacos": {"type": "nacos", "cluster": "registry",
                                     "authority": self.rnacos.addr, "timeout_ms": 1000}},
            "services": [{"name": "demo", "registry": "nacos", "registry_service": SERVICE,
                          "policy": "round_robin"}],
            "refresh_interval_ms": 1000,
        }
        if inbound:
            cfg["inbound"] = inbound
        return json.dumps(cfg, separators=(",", ":"))

    def event(self, text):
        with self.lock:
            self.events.append((time.monotonic(), text))

    def rel(self, mono):
        """Seconds since load start."""
        return None if mono is None or self.t0 is None else mono - self.t0

    def wall_to_rel(self, ms):
        return None if ms is None or self.wall0 is None else ms / 1000.0 - self.wall0

    # -- gateway views

    def gateway_view(self):
        """{addr: {"state", "weight", "warming"}} as the gateway sees it."""
        if self.mode == "lossless":
            doc = get_json(f"http://{LOOPBACK}:{self.listen}/lossless/membership", timeout=2)
            svc = doc["services"][0]
            return {i["address"]: {"state": i["state"], "weight": i["live_weight"],
                                   "warming": i["warming"], "marked": i["marked"]}
                    for i in svc["instances"]}
        doc = get_json(self.gateway.admin_url + "/clusters?format=json", timeout=2)
        view = {}
        for cluster in doc.get("cluster_statuses", []):
            if cluster.get("name") != "demo":
                continue
            for host in cluster.get("host_statuses", []):
                sock = host["address"]["socket_address"]
                hs = host.get("health_status", {})
                bad = [k for k, v in hs.items() if v is True]
                healthy = hs.get("eds_health_status") == "HEALTHY" and not bad
                view[f"{sock['address']}:{sock['port_value']}"] = {
                    "state": "healthy" if healthy else "unhealthy", "weight": None,
                    "warming": False, "marked": False}
        return view

    def check(self):
        """Raises if a process this run needs has died (its log says why)."""
        needed = [self.gateway.name] if self.gateway else []
        for inst in self.instances:
            if inst.phase in ("starting", "up"):
                needed += inst.process_names()
        for name in needed:
            if name in self.procs.procs and not self.procs.is_alive(name):
                raise RuntimeError(f"{name} exited unexpectedly; logs in {self.logs}")
        if self.rnacos is not None and not self.rnacos.is_alive():
            raise RuntimeError(f"rnacos exited unexpectedly; see {self.rnacos.workdir}.log")

    def wait_for(self, pred, timeout, what, interval=0.1):
        """Polls pred() until true; bounded; fails at once if a needed process died."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                if pred():
                    return
            except (OSError, RuntimeError, ValueError, KeyError):
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.mode}: timed out after {timeout:g} s waiting for "
                                   f"{what}; logs in {self.logs}")
            time.sleep(interval)

    def serving(self, inst):
        v = self.gateway_view().get(inst.addr)
        if not v or v["state"] not in ("serving", "healthy"):
            return False
        if self.mode == "baseline":
            # Envoy's /clusters can show a host healthy before its first health check passed and
            # before the worker routes to it (measured): ask the gateway itself. /healthz is
            # answered outside the capacity model and not counted by the backends.
            for _ in range(2 * len(self.slots)):
                _, headers, _ = harness.request("GET", f"http://{LOOPBACK}:{self.listen}/healthz",
                                                timeout=2)
                if headers.get("x-instance") == inst.addr:
                    return True
            return False
        return True

    def unhealthy(self, inst):
        v = self.gateway_view().get(inst.addr)
        return not v or v["state"] not in ("serving", "healthy")

    # -- lifecycle

    def setup(self):
        a = self.args
        if self.mode == "lossless":
            eps = [f"{LOOPBACK}:{sc}" for _, sc, _ in self.slots]
            subs = {"LISTEN_PORT": self.listen, "ADMIN_PORT": self.admin,
                    "REGISTRY_PORT": self.rnacos.http_port,
                    "LOSSLESS_CONFIG": self.filter_config(), "DEMO_ENDPOINTS": lb_endpoints(eps)}
            self.gateway = Envoy(self.procs, self.logs, OUTBOUND, subs, name="gateway")
        else:
            eps = [f"{LOOPBACK}:{app}" for app, _, _ in self.slots]
            subs = {"LISTEN_PORT": self.listen, "ADMIN_PORT": self.admin,
                    "ENDPOINTS": lb_endpoints(eps),
                    "HC_INTERVAL": f"{a.hc_interval}s"}
            self.gateway = Envoy(self.procs, self.logs, BASELINE, subs, name="gateway")
        self.instances = [Instance(self, i + 1, self.slots[i]) for i in range(a.instances)]
        # the instances that run at the start have been up for an hour: they are warm
        with ThreadPoolExecutor(max_workers=a.instances + 1) as pool:
            futures = [pool.submit(self.gateway.start, 60)]
            futures += [pool.submit(inst.start, True) for inst in self.instances]
            for f in futures:
                f.result()
        for inst in self.instances:
            self.wait_for(lambda inst=inst: self.serving(inst), 30,
                          f"{inst.name} serving at the gateway")
            inst.phase, inst.t_up = "up", time.monotonic()

    def start_load(self):
        a = self.args
        # open loop: enough connections that slow answers (a cold instance takes up to ~3 s)
        # do not hold the sending back, as real independent clients would not be held back
        threads = min(400, max(16, int(a.rate * 2.5)))
        self.load = MixedLoad(self.listen, a.rate, a.post_share, threads, duration=3600,
                              max_duration=3600, timeout=8.0,
                              record_headers=("x-overloaded", "x-lossless-drain"))
        self.load.start()
        self.t0, self.wall0 = self.load.t0, time.time() - (time.monotonic() - self.load.t0)
        self.event("load starts")

    def release(self):
        a = self.args
        self.sleep(a.lead)
        for k in range(a.replace):
            old = self.instances[k]
            new = Instance(self, a.instances + k + 1, self.slots[a.instances + k])
            with self.lock:
                self.instances.append(new)
            self.step = (k, "starting " + new.name)
            self.event(f"{new.name} starts")
            new.start()
            self.step = (k, f"waiting for {new.name} to serve")
            self.wait_for(lambda: self.serving(new), 30, f"{new.name} serving at the gateway")
            new.phase, new.t_up = "up", time.monotonic()
            self.event(f"{new.name} serving")
            self.step = (k, f"SIGTERM {old.name}")
            old.terminate()
            self.event(f"SIGTERM {old.name}")
            self.step = (k, f"{old.name} draining")
            self.wait_for(lambda: not old.alive(), a.max_drain + 15, f"{old.name} to exit",
                          interval=0.05)
            old.t_exit, old.phase = time.monotonic(), "exited"
            self.event(f"{old.name} exits")
            if old.sidecar is not None:
                try:
                    old.sidecar_stats = {k2: v for k2, v in old.sidecar.stats().items()
                                         if k2.startswith("wasmcustom.lossless")}
                except (OSError, RuntimeError, ValueError):
                    pass
                old.sidecar.stop()
            if self.mode == "baseline":
                self.step = (k, f"waiting for the health check to drop {old.name}")
                # how long the gateway keeps the dead instance in rotation (stale membership)
                try:
                    self.wait_for(lambda: self.unhealthy(old), 30, "the health check")
                    old.t_unhealthy = time.monotonic()
                    self.event(f"HC drops {old.name}")
                except TimeoutError:
                    pass
            self.step = (k, f"{new.name} warming up")
            self.sleep(a.warmup + 0.5 - new.uptime())
            self.steps_done = k + 1
        self.step = (a.replace, "done")
        self.sleep(a.tail)
        self.done = True

    def sleep(self, seconds):
        end = time.monotonic() + max(0.0, seconds)
        while time.monotonic() < end:
            self.check()
            time.sleep(max(0.0, min(0.1, end - time.monotonic())))

    def progress(self):
        """Fraction of the release done."""
        a = self.args
        if self.step is None:
            return 0.0
        k = self.steps_done
        if k >= a.replace:
            return 1.0
        frac = 0.0
        if len(self.instances) > a.instances + k:
            new = self.instances[a.instances + k]
            frac = 0.1 if new.phase == "starting" else 0.2
            old = self.instances[k]
            if old.phase == "terminating":
                frac = 0.3
            elif old.phase == "exited":
                frac = 0.4 + 0.6 * min(1.0, new.uptime() / a.warmup)
        return (k + frac) / a.replace

    def finish(self):
        """Stops the load, collects every instance's counts, stops this run's processes."""
        if self.load is not None:
            try:
                self.load.stop()
            except TimeoutError:
                pass
        for inst in self.instances:
            if inst.phase == "planned":
                continue
            if inst.final is None and inst.stats_file.exists():
                inst.final = json.loads(inst.stats_file.read_text())
            if inst.final is None and inst.alive():
                try:
                    inst.final = inst.backend_stats()
                    inst.stats_file.write_text(json.dumps(inst.final))
                except (OSError, RuntimeError, ValueError):
                    pass
        # counts are in: stop the backends at once (by pid), then the Envoys
        for inst in self.instances:
            if inst.alive():
                self.procs.kill(inst.proc_name)
        self.procs.stop_all(timeout=5)

    # -- results

    def summary(self):
        a = self.args
        samples = self.load.results() if self.load else []
        by_addr = {inst.addr: inst for inst in self.instances}
        ok = [s for s in samples if 200 <= s.status < 300]
        failed = [s for s in samples if not 200 <= s.status < 300]
        kinds = Counter(failure_kind(s) for s in failed)
        lat = sorted(s.latency for s in ok)
        instances = {}
        for inst in self.instances:
            if inst.phase == "planned":
                continue
            mine = [s for s in samples if s.instance == inst.addr]
            fin = inst.final or {}
            d = {
                "address": inst.addr,
                "backend_port": inst.app_port,
                "started_s": rnd(self.rel(inst.t_start)),
                "backend_started_s": rnd(self.wall_to_rel(inst.started_ms)),
                "serving_s": rnd(self.rel(inst.t_up)),
                "sigterm_s": rnd(self.rel(inst.t_term)),
                "exited_s": rnd(self.rel(inst.t_exit)),
                "client_ok": sum(1 for s in mine if 200 <= s.status < 300),
                "client_failed": sum(1 for s in mine if not 200 <= s.status < 300),
                "backend_served": fin.get("served_total"),
                "backend_served_by_method": fin.get("served"),
                "backend_rejected_overloaded": fin.get("rejected"),
            }
            if inst.t_term is not None:
                last = max((s.t for s in mine), default=None)
                if fin.get("offline_ms"):
                    # the backend's own view: new requests after it marked itself offline
                    d["offline_to_no_new_traffic_ms"] = max(
                        0, (fin.get("last_arrival_ms") or 0) - fin["offline_ms"])
                    d["offline_s"] = rnd(self.wall_to_rel(fin["offline_ms"]))
                    d["drained_quietly"] = fin.get("quiet")
                # the client's view: the last request it sent that this instance answered
                if last is not None:
                    d["client_last_request_after_sigterm_ms"] = int(
                        max(0.0, last - self.rel(inst.t_term)) * 1000)
                if inst.sidecar_stats:
                    d["sidecar_self_draining_503"] = int(inst.sidecar_stats.get(
                        "wasmcustom.lossless.demo.local_503.self_draining", 0))
                if inst.t_unhealthy is not None:
                    d["sigterm_to_health_check_unhealthy_ms"] = int(
                        (inst.t_unhealthy - inst.t_term) * 1000)
            instances[inst.name] = d
        served = [d["backend_served"] for d in instances.values()]
        backend_total = sum(x for x in served if x is not None)
        unattributed_ok = sum(1 for s in ok if s.instance not in by_addr)
        drains = [d["offline_to_no_new_traffic_ms"] for d in instances.values()
                  if "offline_to_no_new_traffic_ms" in d]
        hc = [d["sigterm_to_health_check_unhealthy_ms"] for d in instances.values()
              if "sigterm_to_health_check_unhealthy_ms" in d]
        return {
            "mode": self.mode,
            "duration_s": rnd(max((s.t for s in samples), default=0.0)),
            "rate": a.rate,
            "post_share": a.post_share,
            "warmup_s": a.warmup,
            "instances_replaced": a.replace,
            "requests": len(samples),
            "requests_by_method": dict(Counter(x.method for x in samples)),
            "ok": len(ok),
            "failed": len(failed),
            "failed_get": sum(1 for s in failed if s.method == "GET"),
            "failed_post": sum(1 for s in failed if s.method == "POST"),
            "failures_by_kind": dict(kinds.most_common()),
            "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": pct(lat, 100)},
            "backend_served_total": backend_total,
            "client_ok_total": len(ok),
            "client_ok_unattributed": unattributed_ok,
            "counts_consistent": (None not in served and backend_total == len(ok)),
            "max_offline_to_no_new_traffic_ms": max(drains) if drains else None,
            "max_sigterm_to_health_check_unhealthy_ms": max(hc) if hc else None,
            "instances": instances,
            "events": [{"t": rnd(self.rel(t)), "event": e} for t, e in self.events],
        }

    def shares(self):
        """Per instance: [(second, share of that second's requests it answered, successfully or
        not)] over its lifetime; and failed requests per second."""
        samples = self.load.results() if self.load else []
        if not samples:
            return {}, []
        seconds = max(1, int(max(s.t for s in samples)))  # the last, partial second is left out
        samples = [s for s in samples if s.t < seconds]
        totals = [0] * seconds
        fails = [0] * seconds
        per = {inst.addr: [0] * seconds for inst in self.instances}
        for s in samples:
            b = int(s.t)
            totals[b] += 1
            if s.instance in per:  # answered by it, refused (overloaded) or not
                per[s.instance][b] += 1
            if not 200 <= s.status < 300:
                fails[b] += 1
        out = {}
        for inst in self.instances:
            if inst.phase == "planned":
                continue
            first = max(0, int(math.floor(self.rel(inst.t_start) or 0)))
            end = self.rel(inst.t_exit)
            last = seconds - 1 if end is None else min(seconds - 1, int(math.ceil(end)))
            pts = [(b + 0.5, per[inst.addr][b] / totals[b] if totals[b] else 0.0)
                   for b in range(first, last + 1)]
            out[inst.name] = pts
        return out, fails


def failure_kind(s):
    if s.status == 0:
        err = (s.error or "error").split(":", 1)[0]
        return f"client error {err}"
    if s.headers.get("x-overloaded"):
        return f"{s.status} overloaded (cold instance)"
    if s.headers.get("x-lossless-drain"):
        return f"{s.status} drain ({s.headers['x-lossless-drain']})"
    if s.instance:
        return f"{s.status} from instance"
    return f"{s.status} from gateway (upstream reset)"


def rnd(x, n=2):
    return None if x is None else round(x, n)


def pct(sorted_values, p):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(math.ceil(p / 100.0 * len(sorted_values))) - 1))
    return round(sorted_values[i] * 1000, 1)


# --------------------------------------------------------------------------------- live view

class LiveView:
    """Refreshes the terminal about once a second (ANSI), or prints one line per second."""

    def __init__(self, run, tty):
        self.run = run
        self.tty = tty
        self.lines = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True, name="live-view")

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)

    def loop(self):
        run = self.run
        while not self.stop.is_set():
            t = run.load.elapsed()
            # wake up on the next whole second of the load clock
            if self.stop.wait(math.floor(t) + 1.0 - t):
                break
            try:
                run.view = run.gateway_view()
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.render(math.floor(run.load.elapsed()))
            except Exception as exc:  # noqa: BLE001 - the view must never stop the demo
                print(f"live view: {exc!r}", file=sys.stderr)

    def state_of(self, inst):
        v = self.run.view.get(inst.addr)
        if inst.phase == "exited":
            if self.run.mode == "baseline" and v and v["state"] == "healthy":
                return "exited, HC healthy", "31"
            return "gone", "90"
        if inst.phase == "terminating":
            return ("draining", "31") if inst.lossless else ("SIGTERM", "31")
        if not v:
            return "starting", "36"
        if v["state"] == "serving":
            if v["warming"]:
                pct_ = min(100, int(100 * inst.uptime() / self.run.args.warmup))
                return f"warming {pct_}%", "33"
            return "serving", "32"
        if v["state"] == "healthy":
            if inst.uptime() < self.run.args.warmup:
                return f"cold {int(100 * inst.uptime() / self.run.args.warmup)}%", "33"
            return "healthy", "32"
        if v["state"] == "unhealthy":
            return "starting", "36"
        return v["state"], "31"

    def render(self, second):
        run = self.run
        samples = run.load.results()
        # answered in the last second (a slow answer counts when it arrives)
        last = [s for s in samples if second - 1 <= s.t + s.latency < second]
        total_last = len(last)
        failed = sum(1 for s in samples if not 200 <= s.status < 300)
        with run.lock:
            insts = [i for i in run.instances if i.phase != "planned"]
        ok_by = Counter(s.instance for s in samples if 200 <= s.status < 300)
        fail_by = Counter(s.instance for s in samples if not 200 <= s.status < 300)
        # share of traffic: every answer from the instance, refusals of a cold one included
        last_by = Counter(s.instance for s in last if s.instance)
        prog = run.progress()
        k, phase = run.step if run.step else (0, "steady load")
        title = "lossless" if run.mode == "lossless" else "baseline (plain Envoy, naive instances)"
        if not self.tty:
            parts = [f"[{run.mode} {second:4d}s] release {run.steps_done}/{run.args.replace} "
                     f"{int(prog * 100):3d}% ({phase}) | req {len(samples)} fail {failed}"]
            for inst in insts:
                st, _ = self.state_of(inst)
                v = run.view.get(inst.addr) or {}
                w = v.get("weight")
                share = last_by[inst.addr] / total_last if total_last else 0.0
                parts.append(f"{inst.name} {st}" + (f" w{w}" if w is not None else "")
                             + f" {share * 100:.0f}%")
            print(" | ".join(parts), flush=True)
            return
        bar_w = 30
        filled = int(round(prog * bar_w))
        out = [f"\x1b[1m{title}\x1b[0m   t={second}s   load {run.args.rate:g} req/s, "
               f"{int(run.args.post_share * 100)}% POST   warmup {run.args.warmup:g}s",
               f"release [{'#' * filled}{'.' * (bar_w - filled)}] {int(prog * 100):3d}%  "
               f"step {min(k + 1, run.args.replace)}/{run.args.replace}: {phase}",
               "",
               f"  {'inst':<5}{'address':<18}{'state':<20}{'weight':>7}  {'share (last 1s)':<26}"
               f"{'requests':>9}{'failed':>8}"]
        for inst in insts:
            st, color = self.state_of(inst)
            v = run.view.get(inst.addr) or {}
            w = v.get("weight")
            share = last_by[inst.addr] / total_last if total_last else 0.0
            bar = "█" * int(round(share * 20))
            out.append(f"  {inst.name:<5}{inst.addr:<18}\x1b[{color}m{st:<20}\x1b[0m"
                       f"{'-' if w is None else w:>7}  {share * 100:5.1f}% {bar:<19}"
                       f"{ok_by[inst.addr]:>9}{fail_by[inst.addr]:>8}")
        fcol = "32" if failed == 0 else "31"
        out.append("")
        out.append(f"  total: {len(samples)} requests, {len(samples) - failed} ok, "
                   f"\x1b[{fcol}m{failed} failed\x1b[0m   last second: {total_last} requests")
        buf = ""
        if self.lines:
            buf += f"\x1b[{self.lines}F"
        buf += "".join(f"\x1b[2K{line}\n" for line in out)
        if self.lines > len(out):  # clear what is left of a longer previous frame
            buf += "\x1b[2K\n" * (self.lines - len(out)) + f"\x1b[{self.lines - len(out)}F"
        sys.stdout.write(buf)
        sys.stdout.flush()
        self.lines = len(out)


# --------------------------------------------------------------------------------- SVG

def svg_plot(title, shares, fails, events, colors, duration, warmups=()):
    """Hand-written SVG: one polyline per instance (share of each second's requests), a legend,
    axes, event markers, warmup windows and failed requests per second as red bars."""
    W, H = 960, 490
    left, right, top, bottom = 60, 170, 80, 60
    pw, ph = W - left - right, H - top - bottom
    duration = max(duration, 1.0)

    def x(t):
        return left + pw * min(max(t, 0.0), duration) / duration

    def y(share):
        return top + ph * (1.0 - share)

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{e(title)}</text>']
    # axes and grid
    out.append('<g class="axes" stroke="#333" fill="none">'
               f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>'
               f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/></g>')
    out.append('<g class="grid" font-size="11">')
    for i in range(0, 11, 2):
        share = i / 10
        out.append(f'<line x1="{left}" y1="{y(share):.1f}" x2="{left + pw}" y2="{y(share):.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(share) + 4:.1f}" text-anchor="end">'
                   f'{int(share * 100)}%</text>')
    step = next(s for s in (5, 10, 15, 20, 30, 60, 120, 300) if duration / s <= 12)
    for t in range(0, int(duration) + 1, step):
        out.append(f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" y2="{top + ph + 4}" '
                   'stroke="#333"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 17}" text-anchor="middle">{t}</text>')
    out.append('</g>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 18}" text-anchor="middle">time (s)</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">share of the requests of each second'
               '</text>')
    # warmup windows of the instances started during the release
    out.append('<g class="warmups">')
    for name, t0, t1 in warmups:
        out.append(f'<rect x="{x(t0):.1f}" y="{top}" width="{max(0.0, x(t1) - x(t0)):.1f}" '
                   f'height="{ph}" fill="{colors[name]}" fill-opacity="0.07"/>')
        out.append(f'<text x="{x(t0) + 3:.1f}" y="{top + 14}" font-size="10" '
                   f'fill="{colors[name]}">{e(name)} warmup</text>')
    out.append('</g>')
    # events, labels in up to 4 lanes above the plot so that they do not overlap
    out.append('<g class="events" font-size="10" fill="#555">')
    lanes = [-1e9] * 4
    for t, text in sorted((ev for ev in events if ev[0] is not None), key=lambda ev: ev[0]):
        lane = next((i for i, end in enumerate(lanes) if end < x(t)),
                    min(range(len(lanes)), key=lanes.__getitem__))
        lanes[lane] = x(t) + 2 + 5.6 * len(text)
        ty = top - 4 - 11 * lane
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + ph}" '
                   'stroke="#aaa" stroke-dasharray="3,3"/>')
        out.append(f'<text x="{x(t) + 2:.1f}" y="{ty}">{e(text)}</text>')
    out.append('</g>')
    # failures per second (own scale, right axis)
    fmax = max(fails) if fails else 0
    if fmax:
        out.append(f'<g class="failures" fill="#d62728" fill-opacity="0.55">')
        bw = max(1.0, pw / duration * 0.8)
        for b, f in enumerate(fails):
            if f:
                h = ph * 0.5 * f / fmax
                out.append(f'<rect x="{x(b):.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" '
                           f'height="{h:.1f}"><title>{b}s: {f} failed</title></rect>')
        out.append('</g>')
        out.append(f'<text x="{left + pw + 4}" y="{top + ph / 2 + 4:.1f}" fill="#d62728" '
                   f'font-size="10">{fmax} failed/s</text>')
    # series
    for name, pts in shares.items():
        if not pts:
            continue
        coords = " ".join(f"{x(t):.1f},{y(s):.1f}" for t, s in pts)
        out.append(f'<polyline class="series" data-instance="{e(name)}" fill="none" '
                   f'stroke="{colors[name]}" stroke-width="2" points="{coords}"/>')
    # legend
    out.append(f'<g class="legend" transform="translate({left + pw + 20},{top})">')
    for n, name in enumerate(shares):
        out.append(f'<line x1="0" y1="{n * 18}" x2="22" y2="{n * 18}" stroke="{colors[name]}" '
                   'stroke-width="3"/>')
        out.append(f'<text x="28" y="{n * 18 + 4}">{e(name)}</text>')
    n = len(shares)
    out.append(f'<rect x="0" y="{n * 18 - 5}" width="22" height="10" fill="#d62728" '
               f'fill-opacity="0.55"/><text x="28" y="{n * 18 + 4}">failed requests</text>')
    out.append('</g></svg>')
    return "\n".join(out) + "\n"


def write_report(run, out):
    s = run.summary()
    shares, fails = run.shares()
    colors = {inst.name: inst.color for inst in run.instances}
    events = [(run.rel(t), e) for t, e in run.events
              if not e.startswith("load") and not e.endswith("serving")]
    title = (f"{run.mode}: share of traffic per instance during a rolling release "
             f"({s['requests']} requests, {s['failed']} failed)")
    warmups = [(inst.name, run.wall_to_rel(inst.started_ms),
                run.wall_to_rel(inst.started_ms) + run.args.warmup)
               for inst in run.instances[run.args.instances:] if inst.started_ms is not None]
    svg = svg_plot(title, shares, fails, events, colors, s["duration_s"] or 1.0, warmups)
    (out / f"{run.mode}.svg").write_text(svg)
    s["svg"] = f"{run.mode}.svg"
    # the raw samples of the load generator, one line per request
    with open(run.out / "samples.csv", "w") as f:
        f.write("t_s,method,status,instance,latency_ms,error\n")
        for x in (run.load.results() if run.load else []):
            name = next((i.name for i in run.instances if i.addr == x.instance), "")
            err = (x.error or "").replace(",", ";").replace("\n", " ")
            f.write(f"{x.t:.4f},{x.method},{x.status},{name},{x.latency * 1000:.1f},{err}\n")
    s["samples_csv"] = f"{run.mode}/samples.csv"
    s["shares"] = {k: [[round(t, 1), round(v, 4)] for t, v in pts] for k, pts in shares.items()}
    s["failed_per_second"] = fails
    return s


def text_summary(runs):
    """Plain text: each run, then the side-by-side table."""
    lines = []
    for s in runs.values():
        lines.append(f"== {s['mode']}: {s['requests']} requests in {s['duration_s']} s, "
                     f"{s['failed']} failed ({s['failed_get']} GET, {s['failed_post']} POST)")
        for kind, n in s["failures_by_kind"].items():
            lines.append(f"   {n:6d}  {kind}")
        lines.append(f"   latency of ok requests: p50 {s['latency_ms']['p50']} ms, "
                     f"p99 {s['latency_ms']['p99']} ms, max {s['latency_ms']['max']} ms")
        lines.append(f"   backends served {s['backend_served_total']}, the load generator saw "
                     f"{s['client_ok_total']} ok: "
                     + ("consistent" if s["counts_consistent"] else "NOT consistent"))
        for name, d in s["instances"].items():
            extra = []
            if "offline_to_no_new_traffic_ms" in d:
                extra.append(f"offline -> no new traffic {d['offline_to_no_new_traffic_ms']} ms")
            if "sidecar_self_draining_503" in d:
                extra.append(f"sidecar refusals {d['sidecar_self_draining_503']}")
            if "sigterm_to_health_check_unhealthy_ms" in d:
                extra.append("SIGTERM -> health check unhealthy "
                             f"{d['sigterm_to_health_check_unhealthy_ms']} ms")
            lines.append(f"   {name} {d['address']}: client ok {d['client_ok']}, "
                         f"failed {d['client_failed']}, backend served {d['backend_served']}, "
                         f"overloaded {d['backend_rejected_overloaded']}"
                         + ("; " + ", ".join(extra) if extra else ""))
        lines.append("")
    names = list(runs)
    rows = [("requests", "requests"), ("failed requests", "failed"),
            ("  failed GET", "failed_get"), ("  failed POST", "failed_post")]
    width, lw = 14, 40
    lines.append("== side by side")
    lines.append(f"{'':<{lw}}" + "".join(f"{n:>{width}}" for n in names))
    for label, key in rows:
        lines.append(f"{label:<{lw}}" + "".join(f"{runs[n][key]:>{width}}" for n in names))
    kinds = sorted({k for n in names for k in runs[n]["failures_by_kind"]})
    for kind in kinds:
        label = "  " + (kind if len(kind) <= lw - 2 else kind[:lw - 5] + "...")
        lines.append(f"{label:<{lw}}" + "".join(
            f"{runs[n]['failures_by_kind'].get(kind, 0):>{width}}" for n in names))

    def fmt_ms(v):
        return "-" if v is None else f"{v / 1000:.2f} s"
    lines.append(f"{'p99 latency of ok requests':<{lw}}" + "".join(
        f"{str(runs[n]['latency_ms']['p99']) + ' ms':>{width}}" for n in names))
    lines.append(f"{'max offline -> no new traffic':<{lw}}" + "".join(
        f"{fmt_ms(runs[n]['max_offline_to_no_new_traffic_ms']):>{width}}" for n in names))
    lines.append(f"{'max SIGTERM -> health check drop':<{lw}}" + "".join(
        f"{fmt_ms(runs[n]['max_sigterm_to_health_check_unhealthy_ms']):>{width}}"
        for n in names))
    lines.append(f"{'backend counts = client ok':<{lw}}" + "".join(
        f"{'yes' if runs[n]['counts_consistent'] else 'no':>{width}}" for n in names))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--warmup", type=float, default=env_default("DEMO_WARMUP", 20.0, float),
                    help="warmup of new instances, s (default 20)")
    ap.add_argument("--instances", type=int, default=env_default("DEMO_INSTANCES", 3, int),
                    help="instances serving (default 3)")
    ap.add_argument("--replace", type=int, default=env_default("DEMO_REPLACE", None, int),
                    help="instances replaced by the release (default: all)")
    ap.add_argument("--rate", type=float, default=env_default("DEMO_RATE", 100.0, float),
                    help="load, requests/s (default 100)")
    ap.add_argument("--post-share", type=float,
                    default=env_default("DEMO_POST_SHARE", 0.3, float),
                    help="share of POST requests (default 0.3)")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction,
                    default=env_bool("DEMO_BASELINE", True),
                    help="also run the release against the plain baseline (default: yes)")
    ap.add_argument("--out", default=env_default("DEMO_OUT", str(REPO / "demo-out")),
                    help="report directory (default demo-out/)")
    ap.add_argument("--capacity", type=float, default=None,
                    help="req/s one warm instance serves (default 2.4 x rate / instances)")
    ap.add_argument("--service-ms", type=float, default=200.0,
                    help="time a warm instance spends per request, ms (cold: x10)")
    ap.add_argument("--lead", type=float, default=3.0, help="steady load before the release, s")
    ap.add_argument("--tail", type=float, default=3.0, help="steady load after the release, s")
    ap.add_argument("--max-drain", type=float, default=30.0,
                    help="bound of an instance's drain, s")
    ap.add_argument("--drain-via", choices=("both", "registry", "sidecar"), default="both",
                    help="how a lossless instance goes offline on SIGTERM: Nacos enabled=false, "
                         "its sidecar's POST /lossless/drain, or both (default)")
    ap.add_argument("--hc-interval", type=float, default=2.0,
                    help="baseline health check interval, s (default 2)")
    ap.add_argument("--plain", action="store_true",
                    help="one line per second even on a terminal")
    args = ap.parse_args(argv)
    if args.replace is None:
        args.replace = args.instances
    if args.capacity is None:
        args.capacity = round(2.4 * args.rate / args.instances, 1)
    if not (1 <= args.instances <= 8 and 0 <= args.replace <= args.instances):
        ap.error("need 1 <= instances <= 8 and 0 <= replace <= instances")
    if not (args.warmup > 0 and args.rate > 0 and 0 <= args.post_share <= 1):
        ap.error("warmup and rate must be > 0, post-share in [0, 1]")
    return args


def run_one(mode, args, out, rnacos, tty):
    run = Run(mode, args, out, rnacos=rnacos)
    view = None
    try:
        print(f"\n{mode}: starting the gateway and {args.instances} instances ...", flush=True)
        run.setup()
        run.start_load()
        view = LiveView(run, tty).start()
        run.release()
    finally:
        if view is not None:
            view.close()
        run.finish()
    return write_report(run, out)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("logs", "lossless", "baseline"):  # our own output of an earlier run
        if (out / stale).is_dir():
            shutil.rmtree(out / stale)
    for stale in ("lossless.svg", "baseline.svg", "summary.json", "summary.txt"):
        (out / stale).unlink(missing_ok=True)
    tty = sys.stdout.isatty() and not args.plain

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored
    base_procs = Procs(out / "logs")
    t_begin = time.monotonic()
    runs = {}
    try:
        print(f"lossless demo: {args.instances} instances, replacing {args.replace}, warmup "
              f"{args.warmup:g} s, {args.rate:g} req/s ({int(args.post_share * 100)}% POST), "
              f"capacity {args.capacity:g} req/s per warm instance (10% when cold)", flush=True)
        rnacos = Rnacos(base_procs, out / "logs").start()
        runs["lossless"] = run_one("lossless", args, out, rnacos, tty)
        if rnacos.panicked():
            print("note: rnacos 0.8.8 logged a panic in its raft thread (a known rnacos issue: "
                  "it keeps serving from memory; the demo does not restart it)", flush=True)
        base_procs.stop_all()
        if args.baseline:
            runs["baseline"] = run_one("baseline", args, out, None, tty)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", flush=True)
        return 130
    finally:
        for procs in harness._all_procs:
            procs.stop_all(timeout=5)
        if runs:
            (out / "summary.json").write_text(json.dumps(
                {"args": vars(args), "wall_s": round(time.monotonic() - t_begin, 1),
                 "runs": runs}, indent=1))
            text = text_summary(runs)
            (out / "summary.txt").write_text(text)
            print("\n" + text, end="")
            print(f"report: {out}/summary.txt, summary.json, "
                  + ", ".join(f"{m}.svg" for m in runs) + f"; logs in {out}/logs", flush=True)
    failed = runs.get("lossless", {}).get("failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
