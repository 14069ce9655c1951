"""The demo's rolling release: its instances (demo/backend.py, each behind a lossless sidecar
in the lossless run, registered in Eureka in the spring run) and one run of the release under
load, from the gateway's start to the collection of every instance's counts (class Run).

Modes: "lossless" (gateway Envoy + lossless, instances behind lossless sidecars, rnacos),
"baseline" (plain Envoy with health checks, naive instances) and "spring" (Spring Cloud Gateway
with Spring Cloud LoadBalancer on Eureka discovery, all at their defaults: peers/scg-gateway;
a real Eureka server: peers/eureka-server; instances that shut down as a Spring Cloud service
does)."""

import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kit import (
    HOUR_MS,
    LOOPBACK,
    REPO,
    Envoy,
    MixedLoad,
    Procs,
    env_path,
    get_json,
    lb_endpoints,
    now_ms,
    request,
    slot_port,
    wait_http,
)
from kit.eureka import JVM_FLAGS, Eureka

SERVICE = "demo-svc"
OUTBOUND = REPO / "envoy" / "outbound-override-host.yaml"
INBOUND = REPO / "envoy" / "inbound.yaml"
BASELINE = REPO / "demo" / "baseline.yaml"
BACKEND = REPO / "demo" / "backend.py"
# the spring run's gateway: requests it sends to an instance that is gone come back with the
# chosen instance in x-instance and x-gateway-error: 1 (peers/scg-gateway)
SPRING_RECENT_S = 2.0  # the spring run's live view: routed = chosen in the last 2 s
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a"]


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
        self.t_crash = None  # killed with SIGKILL without deregistering (monotonic)
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
        elif run.mode == "spring":
            argv += ["--eureka", run.eureka.url, "--service", SERVICE,
                     "--max-drain-s", a.max_drain]
        else:
            argv += ["--naive"]
        self.stats_file.unlink(missing_ok=True)
        proc = run.procs.start(self.proc_name, argv)
        wait_http(f"http://{LOOPBACK}:{self.app_port}/healthz", timeout=30, proc=proc)
        if run.mode == "spring":  # registered in Eureka (it retries while the server starts)
            run.wait_for(lambda: self.backend_stats().get("registered"), 60,
                         f"{self.name} registered in Eureka")
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
        self.run.procs.send_signal(self.proc_name, signal.SIGTERM)

    def backend_stats(self):
        return get_json(f"http://{LOOPBACK}:{self.app_port}/__stats", timeout=2)


class ScgGateway:
    """Spring Cloud Gateway (peers/scg-gateway, built by `make scg-gateway`) on 127.0.0.1."""

    def __init__(self, procs, jar, port, eureka_url, name="gateway"):
        self.procs, self.jar, self.port, self.name = procs, jar, port, name
        self.eureka_url = eureka_url

    def start(self, timeout=90.0):
        argv = ["java", *JVM_FLAGS, "-jar", self.jar, f"--server.port={self.port}",
                f"--eureka.client.service-url.defaultZone={self.eureka_url}/",
                f"--demo.service={SERVICE}"]
        proc = self.procs.start(self.name, argv)
        # before it knows an instance it answers 503 (no instance for the service)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {proc.returncode}")
            try:
                request("GET", f"http://{LOOPBACK}:{self.port}/healthz", timeout=2)
                return self
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} did not listen within {timeout:g} s")
            time.sleep(0.2)


class Run:
    """One rolling release (mode "lossless", "baseline" or "spring") under load."""

    def __init__(self, mode, args, out, rnacos=None):
        self.mode = mode
        self.args = args
        self.out = out / mode
        self.logs = out / "logs" / mode
        (self.out / "instances").mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.logs)
        self.rnacos = rnacos
        self.eureka = None  # spring run: its own Eureka server
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

    def event(self, text, at=None):
        with self.lock:
            self.events.append((time.monotonic() if at is None else at, text))

    def rel(self, mono):
        """Seconds since load start."""
        return None if mono is None or self.t0 is None else mono - self.t0

    def wall_to_rel(self, ms):
        return None if ms is None or self.wall0 is None else ms / 1000.0 - self.wall0

    # -- gateway views

    def gateway_view(self):
        """{addr: {"state", "weight", "warming"}} as the gateway sees it."""
        if self.mode == "spring":
            # Spring Cloud Gateway shows no membership: an instance it chose in the last
            # SPRING_RECENT_S seconds is "routed" (its load balancer still lists it)
            now = self.load.elapsed() if self.load else 0.0
            seen = {s.instance for s in self.load.results()
                    if s.instance and s.t >= now - SPRING_RECENT_S} if self.load else set()
            return {addr: {"state": "routed", "weight": None, "warming": False,
                           "marked": False} for addr in seen}
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
        if self.eureka is not None and not self.eureka.is_alive():
            raise RuntimeError(f"the Eureka server exited unexpectedly; logs in {self.logs}")

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
        if self.mode == "spring":
            # a rollout goes on when the new instance is ready and registered (Instance.start
            # waited for both): it does not know when the gateway's caches will list it
            return True
        v = self.gateway_view().get(inst.addr)
        if not v or v["state"] not in ("serving", "healthy"):
            return False
        if self.mode == "baseline":
            # Envoy's /clusters can show a host healthy before its first health check passed and
            # before the worker routes to it (measured): ask the gateway itself. /healthz is
            # answered outside the capacity model and not counted by the backends.
            for _ in range(2 * len(self.slots)):
                _, headers, _ = request("GET", f"http://{LOOPBACK}:{self.listen}/healthz",
                                        timeout=2)
                if headers.get("x-instance") == inst.addr:
                    return True
            return False
        return True

    def unhealthy(self, inst):
        v = self.gateway_view().get(inst.addr)
        return not v or v["state"] not in ("serving", "healthy")

    # -- lifecycle

    def routed(self, inst):
        """Spring run: the gateway sends a request to it (GET /healthz through the gateway,
        answered outside the capacity model and not counted by the backends)."""
        for _ in range(2 * len(self.slots)):
            _, headers, _ = request("GET", f"http://{LOOPBACK}:{self.listen}/healthz", timeout=2)
            if headers.get("x-instance") == inst.addr:
                return True
        return False

    def start_all(self, gateway_timeout, ready, wait_s, what, interval=0.1):
        """Starts the gateway and the first instances together (the instances as warm), then
        waits until ready(instance) holds for each of them."""
        a = self.args
        self.instances = [Instance(self, i + 1, self.slots[i]) for i in range(a.instances)]
        with ThreadPoolExecutor(max_workers=a.instances + 1) as pool:
            futures = [pool.submit(self.gateway.start, gateway_timeout)]
            futures += [pool.submit(inst.start, True) for inst in self.instances]
            for f in futures:
                f.result()
        for inst in self.instances:
            self.wait_for(lambda inst=inst: ready(inst), wait_s, f"{inst.name} {what}",
                          interval=interval)
            inst.phase, inst.t_up = "up", time.monotonic()

    def setup_spring(self):
        """Eureka server, then the instances and Spring Cloud Gateway; waits until the gateway
        routes to every instance (its first fetches and caches: up to about a minute)."""
        self.eureka = Eureka(self.procs, props={"logging.level.root": "WARN"})
        self.eureka.start(timeout=120)
        self.gateway = ScgGateway(self.procs, env_path("SCG_JAR"), self.listen, self.eureka.url)
        self.start_all(120, self.routed, 150, "routed by the gateway", interval=0.5)

    def setup(self):
        a = self.args
        if self.mode == "spring":
            return self.setup_spring()
        if self.mode == "lossless":
            eps = [f"{LOOPBACK}:{sc}" for _, sc, _ in self.slots]
            subs = {"LISTEN_PORT": self.listen, "ADMIN_PORT": self.admin,
                    "REGISTRY_PORT": self.rnacos.http_port,
                    "LOSSLESS_CONFIG": self.filter_config(), "DEMO_ENDPOINTS": lb_endpoints(eps)}
            self.gateway = Envoy(self.procs, self.logs, OUTBOUND, subs, name="gateway")
        else:
            eps = [f"{LOOPBACK}:{app}" for app, _, _ in self.slots]
            subs = {"LISTEN_PORT": self.listen, "ADMIN_PORT": self.admin,
                    "DEMO_ENDPOINTS": lb_endpoints(eps),
                    "HC_INTERVAL": f"{a.hc_interval}s"}
            self.gateway = Envoy(self.procs, self.logs, BASELINE, subs, name="gateway")
        # the instances that run at the start have been up for an hour: they are warm
        self.start_all(60, self.serving, 30, "serving at the gateway")

    def start_load(self):
        a = self.args
        # open loop: enough connections that slow answers (a cold instance takes up to ~3 s)
        # do not hold the sending back, as real independent clients would not be held back
        threads = min(400, max(16, int(a.rate * 2.5)))
        self.load = MixedLoad(self.listen, a.rate, a.post_share, threads, duration=3600,
                              max_duration=3600, timeout=8.0,
                              record_headers=("x-overloaded", "x-lossless-drain",
                                              "x-gateway-error", "x-shutting-down"))
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
            self.wait_for(lambda new=new: self.serving(new), 30,
                          f"{new.name} serving at the gateway")
            new.phase, new.t_up = "up", time.monotonic()
            self.event(f"{new.name} serving")
            self.step = (k, f"SIGTERM {old.name}")
            old.terminate()
            self.event(f"SIGTERM {old.name}" + (", cancelled" if self.mode == "spring" else ""))
            self.step = (k, f"{old.name} draining")
            self.wait_for(lambda old=old: not old.alive(), a.max_drain + 15,
                          f"{old.name} to exit", interval=0.05)
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
                    self.wait_for(lambda old=old: self.unhealthy(old), 30, "the health check")
                    old.t_unhealthy = time.monotonic()
                    self.event(f"HC drops {old.name}")
                except TimeoutError:
                    pass
            self.step = (k, f"{new.name} warming up")
            self.sleep(a.warmup + 0.5 - new.uptime())
            self.steps_done = k + 1
        if self.mode == "spring":
            self.spring_tail()
        if a.crash:
            self.crash()
        self.step = (a.replace, "done")
        self.sleep(self.crash_tail() if self.mode == "spring" and a.crash else a.tail)
        self.done = True

    # -- the spring run's tail: the gateway's stale instance list, bounded by --spring-max

    def budget(self):
        """Seconds left of the spring run (--spring-max from the load's start)."""
        return self.args.spring_max - self.load.elapsed()

    def crash_tail(self):
        """After the crash: long enough to see the gateway keep sending to the killed instance,
        within the budget."""
        return max(self.args.tail, min(20.0, self.budget()))

    def last_sent(self, inst):
        """Load time of the last request the gateway sent to inst (answered by it or not)."""
        return max((s.t for s in self.load.results() if s.instance == inst.addr), default=None)

    def spring_tail(self):
        """Keeps the load on until the gateway has not chosen any instance that left for 5 s, or
        the budget (less the crash's share) runs out; marks the last request the gateway sent
        to each."""
        a = self.args
        reserve = (a.tail + max(a.tail, 20.0)) if a.crash else a.tail
        gone = [i for i in self.instances if i.t_term is not None]
        self.step = (a.replace, "the gateway still routes to instances that left")
        while self.budget() > reserve:
            now = self.load.elapsed()
            lasts = [self.last_sent(i) for i in gone]
            if all(t is None or now - t >= 5.0 for t in lasts):
                break
            self.sleep(0.5)
        for inst in gone:
            t = self.last_sent(inst)
            if t is not None and t > self.rel(inst.t_term):
                self.event(f"last request to {inst.name}", at=self.t0 + t)

    def crash(self):
        """One serving instance dies without a goodbye: the backend and its sidecar get SIGKILL
        (a crashed pod), and its registration stays."""
        a = self.args
        victim = next((i for i in self.instances if i.phase == "up" and i.alive()), None)
        if victim is None:
            return
        self.sleep(a.tail)
        self.step = (a.replace, f"crash {victim.name}")
        victim.t_crash = time.monotonic()
        self.procs.kill(victim.proc_name)
        if victim.sidecar is not None:
            victim.sidecar.kill()
        victim.t_exit, victim.phase = time.monotonic(), "crashed"
        self.event(f"SIGKILL {victim.name}, still registered")

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
