"""Transparent mode's side-by-side release (docs/transparent-mode.md), shared by its end-to-end
test (tests/e2e/test_transparent.py) and the demo's --transparent run (demo/run.py).

The same Spring Cloud caller (Spring Cloud Alibaba Nacos Discovery with the real nacos-client,
Spring Cloud LoadBalancer at its default caches: kit.sca) in two pods captured as Istio captures
them (kit.netns): (i) behind a plain capture sidecar (tests/e2e/templates/capture-plain.yaml, what
Istio's PassthroughCluster does today), (ii) behind envoy/outbound-capture.yaml with lossless in
transparent mode. Three warm providers registered (ephemeral) through nacos-client, one rnacos in
the providers' namespace, one rolling release on one clock for both callers:

    with netns.Capture(workdir) as cap:
        release = side_by_side_release(cap, procs, workdir, rnacos_bin, sca_jar())
        release.report["lossless"]["a_failed_get"]    # figures(), one dict per run
        print(table(release.report))                  # the two runs side by side
        print("\\n".join(release.details()))           # per-second shares, failures, log lines

Requires root, iptables, java and the peers' jar (make sca-nacos iptables); LOSSLESS_WASM and
ENVOY_BIN from the environment.
"""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import netns
from .env import REPO, env_path
from .http import request
from .load import Load, percentile
from .procs import wait_until
from .sca import ScaCaller, ScaProvider, grpc_offset

CAPTURE = REPO / "envoy" / "outbound-capture.yaml"
CAPTURE_PLAIN = REPO / "tests" / "e2e" / "templates" / "capture-plain.yaml"
CAPTURE_PORT = 15001
PORT = 8080  # the providers' port

SERVICE = "sca-demo"
RATE = 100  # requests per second to each caller
POST_SHARE = 0.3
WARMUP_MS = 20_000  # the new instance's warm-up
GRACE_MS = 5000  # the politely stopped instance serves this long after deregistering
SHARE_POINTS = (0.25, 0.50, 0.75)
SHARE_WINDOW_S = 2.5  # each share is measured over +- this around its point
LAG_S = 2.0  # how long after the caller's own list changed its pick estimate still follows
KILL_TAIL_S = 40.0  # load after the kill: the callers' own 35 s list cache lets the dead one go
RUNS = (("plain", "pod"), ("lossless", "pod2"))  # (run, the pod its caller lives in)


# --------------------------------------------------------------------------------------------
# lossless in the caller's sidecar

def lossless_config(registry, service, **transparent):
    cfg = {
        "registries": {"nacos": {"type": "nacos", "cluster": "registry",
                                 "authority": registry.addr, "timeout_ms": 1000}},
        "services": [{"name": "demo", "registry": "nacos", "registry_service": service,
                      "routing": {"mode": "original_dst"}, "transparent": transparent}],
        "refresh_interval_ms": 500,
    }
    return json.dumps(cfg, separators=(",", ":"))


def lossless_sidecar(cap, procs, registry, service, pod="pod", name="sidecar-lossless",
                     concurrency=2, **transparent):
    """The caller's sidecar with lossless in transparent mode (envoy/outbound-capture.yaml), run in
    `pod` as the proxy uid; not started."""
    host, port = registry.addr.rsplit(":", 1)
    subs = {"CAPTURE_PORT": CAPTURE_PORT,
            "LOSSLESS_WASM": cap.readable_copy(env_path("LOSSLESS_WASM")),
            "LOSSLESS_CONFIG": lossless_config(registry, service, **transparent),
            "REGISTRY_ADDRESS": host, "REGISTRY_PORT": port}
    return netns.captured_envoy(cap, procs, CAPTURE, subs, name=name, pod=pod,
                                concurrency=concurrency)


def membership(cap, pod):
    """lossless' membership document, from its admin endpoint (a loopback caller in the pod)."""
    def get():
        status, _, data = request("GET", f"http://127.0.0.1:{CAPTURE_PORT}/lossless/membership",
                                  timeout=5.0)
        assert status == 200, (status, data[:300])
        return json.loads(data)
    return cap.call(pod, get)


def serving(cap, pod):
    doc = membership(cap, pod)
    return sorted(i["address"] for i in doc["services"][0]["instances"] if i["state"] == "serving")


# --------------------------------------------------------------------------------------------
# the load on a caller, and Dubbo's shares

def dubbo_weight(uptime_ms, warmup_ms, weight=100):
    """Apache Dubbo 3.3 AbstractLoadBalance.calculateWarmupWeight."""
    if uptime_ms <= 0 or uptime_ms >= warmup_ms:
        return weight if uptime_ms >= warmup_ms else 1
    ww = int(uptime_ms / (warmup_ms / weight))
    return max(1, min(ww, weight))


def judge(status, _headers, body):
    """The caller's /call answer: the provider's status as the caller saw it, who answered, and
    the caller's own pick."""
    try:
        r = json.loads(body)[0]
    except (ValueError, IndexError, KeyError, TypeError):
        return 0, None, {"pick": "", "error": f"caller answered {status}"}
    return int(r.get("status") or 0), r.get("instance"), {"pick": r.get("pick") or "",
                                                           "error": r.get("error") or ""}


class Traffic:
    """GETs and POSTs (the caller's own method: it calls /call?method=...) at `rate` in all to one
    caller, from inside its pod. Samples carry a `method` of their own and absolute times."""

    def __init__(self, cap, pod, caller, duration, rate=RATE, post_share=POST_SHARE):
        self.parts = {}
        scale = max(1.0, rate / RATE)
        for method, share, threads in (("GET", 1 - post_share, 8), ("POST", post_share, 4)):
            if share <= 0:
                continue
            self.parts[method] = Load(caller.port, threads=round(threads * scale),
                                      duration=duration, rate=rate * share, timeout=10.0,
                                      judge=judge, path=f"/call?n=1&method={method}&path=/who",
                                      max_duration=duration)
        self.cap, self.pod = cap, pod

    def start(self):
        for load in self.parts.values():
            self.cap.call(self.pod, load.start)

    def stop(self):
        for load in self.parts.values():
            load.stop()

    def samples(self):
        """(method, start, end, status, instance, pick, error) per request, times in monotonic
        s."""
        out = []
        for method, load in self.parts.items():
            for s in load.results():
                start = load.t0 + s.t
                out.append((method, start, start + s.latency, s.status, s.instance,
                            s.headers.get("pick", ""), s.headers.get("error") or s.error or ""))
        return sorted(out, key=lambda x: x[1])


def in_threads(*fns):
    with ThreadPoolExecutor(len(fns)) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


def dubbo_share(listed, t, addr, epoch0):
    """Dubbo's share of `addr` at `t` (monotonic s): its warm-up weight over the sum of those of
    the instances the registry listed (healthy, enabled) last before `t`."""
    hosts = next((h for when, h in reversed(listed) if when <= t), None)
    if not hosts or addr not in hosts:
        return 0.0
    now_ms = (t + epoch0) * 1000.0
    weights = {a: dubbo_weight(now_ms - start, warmup) for a, (start, warmup) in hosts.items()}
    return weights[addr] / sum(weights.values())


def figures(samples, old, new, new_start, t_off, t_kill, epoch0, listed, warmup_ms=WARMUP_MS):
    """The figures of one run from its samples (see Traffic.samples); Dubbo's shares over what
    the registry listed (`listed`: (monotonic s, {addr: (start ms, warm-up ms)})). `old`: the
    addresses of the politely stopped and the killed instance; `new`: the new one's."""
    o1, o2 = old[0], old[1]
    f = {"total": len(samples)}

    # (a) from the polite stop to the kill; (b) from the kill on: a request under way at the
    # kill is the kill's, even if it was sent a moment before
    phases = {"a": lambda s, e: t_off <= s and e < t_kill,
              "b": lambda s, e: s >= t_kill or t_off <= s <= t_kill <= e,
              "all": lambda s, e: True}
    for name, within in phases.items():
        for method in ("GET", "POST"):
            f[f"{name}_failed_{method.lower()}"] = sum(
                1 for m, s, e, status, _, _, _ in samples
                if m == method and status != 200 and within(s, e))
    # requests in flight on the killed instance when it died (their pick was it)
    f["b_in_flight"] = sum(1 for _, s, e, _, _, pick, _ in samples
                           if s <= t_kill <= e and pick == o2)
    # failed requests that were under way when it died, and those sent after
    f["b_failed_in_flight"] = sum(1 for _, s, e, status, _, _, _ in samples
                                  if s <= t_kill <= e and status != 200)
    f["b_failed_after"] = sum(1 for _, s, _, status, _, _, _ in samples
                              if s > t_kill and status != 200)
    ok = sorted(e - s for _, s, e, status, _, _, _ in samples if status == 200)
    f["p99_ms"] = round(1000 * percentile(ok, 0.99), 1) if ok else None
    for key, addr, since in (("a_last_s", o1, t_off), ("b_last_s", o2, t_kill)):
        ends = [e for _, _, e, status, inst, _, _ in samples if inst == addr and status == 200]
        f[key] = round(max(ends) - since, 2) if ends else None
    first_pick = [s for _, s, _, _, _, pick, _ in samples if pick == new]
    f["c_first_pick_s"] = round(first_pick[0] - new_start, 1) if first_pick else None
    served = [s for _, s, _, status, inst, _, _ in samples if inst == new and status == 200]
    f["c_first_served_s"] = round(min(served) - new_start, 1) if served else None
    for p in SHARE_POINTS:
        mid = new_start + p * warmup_ms / 1000.0
        # the caller's own list changed in the window or shortly before: the estimate of its
        # picks still follows (docs/transparent-mode.md, "The estimate lags")
        f[f"c_lag_{int(p * 100)}"] = bool(first_pick) and (
            mid - SHARE_WINDOW_S - LAG_S <= first_pick[0] <= mid + SHARE_WINDOW_S)
        window = [(s, inst) for _, s, _, status, inst, _, _ in samples
                  if abs(s - mid) <= SHARE_WINDOW_S and status == 200]
        got = sum(1 for _, inst in window if inst == new) / max(1, len(window))
        want = (sum(dubbo_share(listed, s, new, epoch0) for s, _ in window)
                / max(1, len(window)))
        f[f"c_share_{int(p * 100)}"] = round(100 * got, 1)
        f[f"c_dubbo_{int(p * 100)}"] = round(100 * want, 1)
        f[f"c_n_{int(p * 100)}"] = len(window)
    f["c_lag_windows"] = ",".join(f"{int(p * 100)} %" for p in SHARE_POINTS
                                  if f[f"c_lag_{int(p * 100)}"]) or "none"
    return f


def table(report, runs=("plain", "lossless"), heads=("(i) plain capture", "(ii) lossless")):
    """The figures of the runs side by side, as a Markdown table (one string)."""
    rows = [
        ("requests", "total"),
        ("(a) polite shutdown: failed GET / POST", ("a_failed_get", "a_failed_post")),
        ("(a) last request served by it, s after deregistering", "a_last_s"),
        ("(b) kill -9: failed GET / POST", ("b_failed_get", "b_failed_post")),
        ("(b) requests in flight on it when killed", "b_in_flight"),
        ("(b) last request served by it, s after the kill", "b_last_s"),
        ("(c) new instance: caller's first own pick of it, s after its start", "c_first_pick_s"),
        ("(c) new instance: first request served by it, s after its start", "c_first_served_s"),
    ]
    for p in SHARE_POINTS:
        k = int(p * 100)
        rows.append((f"(c) share at {k} % of its warm-up, % (Dubbo's %)",
                     (f"c_share_{k}", f"c_dubbo_{k}")))
    rows.append(("(c) windows the caller's own list changed in (or 2 s before)",
                 "c_lag_windows"))
    widths = [max(17, len(h)) for h in heads]
    lw = max(len(label) for label, _ in rows)
    head = " | ".join(f"{h:{w}}" for h, w in zip(heads, widths, strict=True))
    lines = ["| " + f"{'':{lw}} | " + head + " |",
             f"|{'-' * (lw + 2)}|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for label, keys in rows:
        cells = []
        for run in runs:
            f = report[run]
            if isinstance(keys, tuple):
                a, b = f[keys[0]], f[keys[1]]
                cells.append(f"{a} ({b})" if keys[0].startswith("c_share") else f"{a} / {b}")
            else:
                cells.append(str(f[keys]))
        row = " | ".join(f"{c:{w}}" for c, w in zip(cells, widths, strict=True))
        lines.append(f"| {label:{lw}} | " + row + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the release

class Release:
    """What one side-by-side release leaves: the figures per run (`report`), every sample
    (`samples`, per run), the times of its steps (monotonic s), what the registry listed, and the
    lossless sidecar (its stats and log, read before the capture is taken down)."""

    def __init__(self):
        self.report = {}
        self.samples = {}
        self.traffic = {}
        self.listed = []
        self.t0 = self.epoch0 = self.new_start = self.t_off = self.t_kill = None
        self.duration = None
        self.old = []  # the three old providers' addresses: stopped politely, killed, kept
        self.new = None  # the new provider's address
        self.sidecar = None  # the lossless sidecar (kit.envoy.Envoy)
        self.stats = {}  # its transparent-mode counters at the end
        self.log_text = ""  # its log at the end
        self.warmup_ms = WARMUP_MS
        self.rate = RATE
        self.post_share = POST_SHARE

    def details(self):
        """Diagnostic lines: lossless' counters, the new instance's share second by second with
        lossless, the registry's changes, each failure with lossless, lossless' log lines about
        ejections, drains and trials."""
        out = [str(self.stats)]
        lo_samples = self.samples["lossless"]
        for sec in range(0, int(self.warmup_ms / 1000)):
            win = [(st, inst) for _, st, _, status, inst, _, _ in lo_samples
                   if self.new_start + sec <= st < self.new_start + sec + 1 and status == 200]
            got = sum(1 for _, inst in win if inst == self.new) / max(1, len(win))
            want = (sum(dubbo_share(self.listed, st, self.new, self.epoch0) for st, _ in win)
                    / max(1, len(win)))
            out.append(f"lossless, new instance at +{sec:2d} s: {100 * got:5.1f} % of "
                       f"{len(win):3d} (Dubbo {100 * want:5.1f} %)")
        last = None
        for when, hosts in self.listed:
            if sorted(hosts) != last:
                last = sorted(hosts)
                out.append(f"registry at +{when - self.t0:5.1f} s (shutdown "
                           f"+{self.t_off - self.t0:.1f}, kill +{self.t_kill - self.t0:.1f}, new "
                           f"+{self.new_start - self.t0:.1f}): {last}")
        for m, s, e, status, _, pick, err in lo_samples:
            if status != 200:
                out.append(f"lossless failure: {m} +{s - self.t_off:.2f}s after the shutdown, "
                           f"+{s - self.t_kill:.2f}s after the kill, {e - s:.3f}s, status "
                           f"{status}, pick {pick}: {err[:300]}")
        for line in self.log_text.splitlines():
            if "ejected" in line or "draining" in line or "trial" in line:
                out.append("lossless log: " + line[-200:])
        return out


def side_by_side_release(cap, procs, workdir, rnacos_bin, jar, rate=RATE, post_share=POST_SHARE,
                         warmup_ms=WARMUP_MS, say=None, out=None):
    """Runs the release in `cap` (a netns.Capture; a second pod is added) with processes in
    `procs` (their files under `workdir`), the registry `rnacos_bin`, the peers' `jar`:

    Three warm providers; `rate` requests per second to each caller (`post_share` of them POSTs).
    At 4 s a new provider starts with a `warmup_ms` warm-up (c); once its share windows are over
    (26 s at the earliest) one old provider is stopped politely (SIGTERM: it deregisters, serves
    GRACE_MS more, exits) (a); 10 s later another is killed with SIGKILL (b); the load goes on
    KILL_TAIL_S more, for the callers' own 35 s list cache to let it go. Dubbo's share of the new
    instance is computed over the instances the registry lists at each moment (polled every
    0.5 s): on a busy machine nacos-client's ephemeral instances sometimes drop out of the
    registry for a while, and Dubbo, like lossless, follows the registry.

    `say(text)`, when given, is told each step as it happens. Returns `out` (a Release, a new one
    when None), whose `traffic` ({run: Traffic}) is set once the load started (for a live view)."""
    say = say or (lambda _text: None)
    out = out if out is not None else Release()
    out.warmup_ms, out.rate, out.post_share = warmup_ms, rate, post_share
    cap.add_pod()
    say("starting rnacos, three providers, two sidecars and two callers")
    registry = netns.namespaced_rnacos(cap, procs, workdir, cap.provider_ip(1),
                                       binary=rnacos_bin)
    cap.exclude([registry.http_port, registry.grpc_port])
    registry.start()
    offset = grpc_offset(registry)

    def in_ns(ns):
        return lambda name, argv: cap.start(procs, name, argv, ns=ns)

    def provider(k, name, warmup):
        return ScaProvider(procs, workdir, jar, registry.addr, offset, SERVICE,
                           ip=cap.provider_ip(k), port=PORT, warmup_ms=warmup,
                           grace_ms=GRACE_MS, name=name)

    old = [provider(2 + k, f"old{k + 1}", 1000) for k in range(3)]
    in_threads(*[lambda p=p: p.start(launch=in_ns("svc")) for p in old])
    olds = sorted(p.addr for p in old)
    out.old = [p.addr for p in old]

    plain = netns.captured_envoy(cap, procs, CAPTURE_PLAIN,
                                 {"CAPTURE_PORT": CAPTURE_PORT,
                                  "ACCESS_LOG": cap.shared_dir() / "plain-access.log"},
                                 name="sidecar-plain", pod="pod", concurrency=2)
    lossless = lossless_sidecar(cap, procs, registry, SERVICE, pod="pod2")
    out.sidecar = lossless
    in_threads(plain.start, lossless.start)
    callers = {run: ScaCaller(procs, workdir, jar, registry.addr, offset, SERVICE,
                              name=f"caller-{run}") for run, _ in RUNS}
    in_threads(*[lambda run=run, pod=pod: cap.call(pod, callers[run].start,
                                                  launch=in_ns(pod)) for run, pod in RUNS])
    for run, pod in RUNS:
        wait_until(lambda c=callers[run], pod=pod: sorted(cap.call(pod, c.instances)) == olds,
                   timeout=30, what=f"the {run} caller discovers the three providers")
    wait_until(lambda: serving(cap, "pod2") == olds, timeout=15,
               what="lossless lists the three providers")

    # the release, on one clock for both callers
    share_end = 4.0 + 0.75 * warmup_ms / 1000.0 + SHARE_WINDOW_S + 1.0
    limit = max(150.0, share_end + 10.0 + KILL_TAIL_S + 60.0)  # the loads' own bound
    traffic = {run: Traffic(cap, pod, callers[run], limit, rate, post_share)
               for run, pod in RUNS}
    for t in traffic.values():
        t.start()
    out.traffic = traffic
    t0 = out.t0 = time.monotonic()
    epoch0 = out.epoch0 = time.time() - t0  # monotonic -> epoch
    say(f"load: {rate:g} req/s to each caller, {int(post_share * 100)} % POSTs")

    def at(s):
        time.sleep(max(0.0, t0 + s - time.monotonic()))

    # what the registry lists, every half second: Dubbo's shares are over those instances
    listed = out.listed
    stop_watch = threading.Event()

    def watch():
        while not stop_watch.wait(0.5):
            try:
                hosts = registry.hosts(SERVICE)
            except (OSError, ValueError, RuntimeError):
                continue
            listed.append((time.monotonic(), {
                a: (int(h["metadata"]["timestamp"]), int(h["metadata"]["warmup"]))
                for a, h in hosts.items() if h.get("healthy") and h.get("enabled", True)}))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # (c) a new instance warms up for warmup_ms
        at(4)
        new = provider(5, "new1", warmup_ms)
        new.start(launch=in_ns("svc"))
        out.new = new.addr
        meta = registry.hosts(SERVICE)[new.addr]["metadata"]
        new_start = out.new_start = int(meta["timestamp"]) / 1000.0 - epoch0  # monotonic s
        say(f"+{new_start - t0:.1f} s: new instance {new.addr} registered, "
            f"warm-up {warmup_ms / 1000:g} s")
        # (a) a polite shutdown: deregistered, serving GRACE_MS more, then gone; after the share
        # windows of (c), so that they see no change of ours (a slow start delays it)
        at(max(26.0, new_start - t0 + 0.75 * warmup_ms / 1000.0 + SHARE_WINDOW_S + 1.0))
        t_off = out.t_off = time.monotonic()
        os.kill(procs.pid("old1"), signal.SIGTERM)
        say(f"+{t_off - t0:.1f} s: {old[0].addr} stopped politely (SIGTERM: deregisters, "
            f"serves {GRACE_MS / 1000:g} s more, exits)")
        # (b) a kill -9
        at(t_off - t0 + 10.0)
        t_kill = out.t_kill = time.monotonic()
        procs.kill("old2")
        say(f"+{t_kill - t0:.1f} s: {old[1].addr} killed (SIGKILL); load goes on "
            f"{KILL_TAIL_S:g} s")
        # long enough for the callers' own 35 s list cache to let the dead instance go
        at(t_kill - t0 + KILL_TAIL_S)
    finally:
        for t in traffic.values():
            t.stop()
        stop_watch.set()
        watcher.join(5)
    out.duration = time.monotonic() - t0

    out.samples = {run: traffic[run].samples() for run, _ in RUNS}
    stats = lossless.stats(r"wasmcustom\.lossless\..*transparent")
    out.stats = {k.removeprefix("wasmcustom.lossless."): v for k, v in stats.items()}
    out.log_text = lossless.log_text()
    for run, _ in RUNS:
        out.report[run] = figures(out.samples[run], out.old, out.new, new_start, t_off, t_kill,
                                  epoch0, listed, warmup_ms)
    return out
