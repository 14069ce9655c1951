"""Overload protection for warm-up under load: a 2 -> 8 scale-out of cold instances with
`warmup.overload_protection` off and on, side by side in the same run.

Two stacks, identical but for the protection (threshold 50): each a gateway (the shipped
override_host template, lossless' defaults otherwise but outlier detection off, so that no
instance refusing under overload is ejected and the rule alone is compared) over its own
rnacos service and its own instances of the demo's cold-start backend (demo/backend.py: a warm
instance serves CAPACITY req/s; a new one starts at `cold` of that and reaches full capacity
linearly over its warmup, as a JVM warming its JIT and caches; a request that would wait more than
1 s for a worker is refused with 503 `x-overloaded`). In each stack two warm instances (started an
hour ago) carry BASE_RATE req/s. At T the load rises to RATE req/s, more than the two serve, and
the service scales out to 8: six new instances start, two at a time PAIR_GAP_S apart, and are
registered (metadata `timestamp` = their start, `warmup` = WARMUP_MS). Both stacks get the same
load on the same clock, and their k-th new instances start together.

What the protection does here (docs/warmup-overload-protection.md): 2 of 4 warming at T is 50 %,
in force at once; 6 of 8 after the third pair; when the first pair is warm 4 of 8 (still in
force, exactly the threshold); when the second is, 2 of 8: it lifts and the last pair goes back
on its ramp for its last PAIR_GAP_S.

Measured per stack, printed side by side (run with -s to see it) and written to
overload-<cold>.json in the test's log directory: the warm instances' peak requests per second
and share (1 s bins from when the gateway first sent a request to a new instance), their latency,
the failed requests (by who refused them), and how long the ramp takes (until the
warm instances carry at most 1.5 times their even share, for good). The protected gateway's
membership document and `warmup_overload_protected` gauge are polled every 200 ms.

Two cold starts, one run each:

- `cold_half`: a new instance serves half its warm rate at first, so it can take its even share
  while cold. Asserted: with the protection the warm instances' peak share is at most 0.32 (off:
  at least 0.40), about an eighth each while all 8 are listed and it is in force (off: far more),
  they refuse nothing, and the load is spread seconds earlier.
- `cold_tenth`, the demo's own model: a new instance serves a tenth of its warm rate at first.
  With the protection the new instances get their full share cold and refuse much of it, and
  more requests fail than without it: the cost moves from the warm instances to the new ones.
  Asserted as measured, so that the page that says so stays true.

In both, on every poll the document's `in_force` is Polaris' rule applied to the document's own
counts (serving instances, warming ones; polls within 0.2 s after a warmup ended left out: the
pick table is rebuilt at most 100 ms apart), while in force every serving instance's live weight is
its weight and once lifted the warming ones are below it; the gauge says 1 and 0; without the
protection the document says `null` and the gauge 0.
"""

import json
import sys
import threading
import time
from collections import Counter, defaultdict

import pytest

from harness import filter_config, membership, register, serving
from kit import (
    HOUR_MS,
    LOOPBACK,
    REPO,
    Load,
    free_port,
    now_ms,
    percentile,
    wait_http,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("no_wasm_crash")

BACKEND = REPO / "demo" / "backend.py"
CAPACITY = 40  # req/s of a warm instance
SERVICE_MS = 100  # a warm request's work: 4 workers
WARMUP_MS = 20_000
BASE_RATE = 60  # req/s before T: 75 % of what the two warm instances serve
RATE = 120  # req/s from T
PAIRS = 3
PAIR_GAP_S = 1.0
LEAD_S = 3.0  # base load before T
TAIL_S = 3.0  # after the last new instance is warm
THRESHOLD = 50
EVEN = 1 / 8
SPREAD = 1.5 * EVEN  # "the load is spread": each warm instance at most 1.5 x its even share
THREADS = 128  # per load part: enough that 2 s answers do not hold the sending back
POLL_S = 0.2
STAT = "wasmcustom.lossless.demo."
MODES = ("off", "on")


class Stack:
    """One side: its rnacos service, 8 backend ports (2 warm, 6 new), its gateway."""

    def __init__(self, mode, procs, rnacos, cold):
        self.mode = mode
        self.procs = procs
        self.rnacos = rnacos
        self.cold = cold
        self.service = f"ovl-{mode}"
        self.ports = [free_port() for _ in range(2 + 2 * PAIRS)]
        self.gw = None

    def addr(self, k):
        return f"{LOOPBACK}:{self.ports[k]}"

    @property
    def warm(self):
        return {self.addr(0), self.addr(1)}

    def start_backend(self, k, started_ms):
        """Starts instance k (its capacity model from `started_ms`), without registering it."""
        argv = [sys.executable, BACKEND, "--port", self.ports[k], "--name", f"{self.mode}-{k}",
                "--warmup-ms", WARMUP_MS, "--capacity", CAPACITY, "--service-ms", SERVICE_MS,
                "--cold", self.cold, "--started-ms", started_ms, "--naive"]
        return self.procs.start(f"{self.mode}-{k}", argv)

    def register(self, k, started_ms):
        register(self.rnacos, self.ports[k], started_ms, warmup_ms=WARMUP_MS,
                 service=self.service)

    def config(self):
        # outlier detection off on both: an instance refusing three requests in a row would be
        # ejected for 30 s (warm ones without the protection, new ones with it), and who is
        # ejected when would decide the figures instead of the rule
        service = {"registry_service": self.service, "outlier_detection": {"enabled": False}}
        if self.mode == "on":
            service["warmup"] = {"overload_protection": {"threshold_percent": THRESHOLD}}
        return filter_config(self.rnacos.addr, refresh_ms=500, service=service)


class Poller(threading.Thread):
    """Every POLL_S, for each gateway: its membership document's service and its gauge, stamped
    on the run's clock."""

    def __init__(self, stacks, epoch):
        super().__init__(daemon=True)
        self.stacks, self.epoch = stacks, epoch
        self.polls = defaultdict(list)
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(POLL_S):
            for s in self.stacks:
                t = time.monotonic() - self.epoch
                try:
                    svc = membership(s.gw.listen)["services"][0]
                    gauge = s.gw.stat(STAT + "warmup_overload_protected")
                except (OSError, ValueError):
                    continue
                self.polls[s.mode].append({"t": t, "svc": svc, "gauge": gauge})


def warm_share(stack, got):
    """The mean share of the two warm instances in `got` (Samples): 0.5 when they carry all."""
    if not got:
        return 0.0
    return sum(1 for s in got if s.instance in stack.warm) / len(got) / 2


def window(samples, start, end):
    return [s for t, s in samples if start <= t < end]


def measure(stack, samples, t_reg, t_end):
    """The figures of one stack from its samples ((t on the run's clock, Sample)), from when the
    gateway first sent a request to a new instance (`seen`) to `t_end`."""
    warm = stack.warm
    new_at = [t for t, s in samples if s.instance and s.instance not in warm]
    seen = min(new_at) if new_at else t_reg
    ramp = window(samples, seen, t_end)
    peak_rps, peak_share, timeline = 0, 0.0, []
    for i in range(int(t_end - seen)):
        got = window(samples, seen + i, seen + i + 1)
        by = Counter(s.instance for s in got)
        peak_rps = max([peak_rps, *(by[a] for a in warm)])
        peak_share = max(peak_share, warm_share(stack, got))
        timeline.append({"t": i, "requests": len(got),
                         "warm_share": round(warm_share(stack, got), 3),
                         "failed": sum(1 for s in got if not 200 <= s.status < 300)})
    # the load is spread once every later 3 s window has the warm instances at most SPREAD each
    spread = None
    t = t_end - 3.0
    while t >= seen and warm_share(stack, window(samples, t, t + 3.0)) <= SPREAD:
        spread = t
        t -= 0.5
    warm_lat = [s.latency for s in ramp if s.instance in warm]
    failed = [s for s in ramp if not 200 <= s.status < 300]
    return {
        "rate": round(len(window(samples, t_reg, t_end)) / (t_end - t_reg), 1),
        "requests": len(ramp),
        "seen_after_s": round(seen - t_reg, 2),
        "warm_peak_rps": peak_rps,
        "warm_peak_share": round(peak_share, 3),
        "warm_share_all8": None,
        "warm_p50_ms": round(1000 * (percentile(warm_lat, 0.5) or 0)),
        "warm_p99_ms": round(1000 * (percentile(warm_lat, 0.99) or 0)),
        "warm_max_ms": round(1000 * max(warm_lat, default=0)),
        "all_p99_ms": round(1000 * (percentile([s.latency for s in ramp], 0.99) or 0)),
        "failed": len(failed),
        "failed_warm": sum(1 for s in failed if s.instance in warm),
        "failed_new": sum(1 for s in failed if s.instance and s.instance not in warm),
        "failed_local": sum(1 for s in failed if not s.instance),
        "spread_after_s": None if spread is None else round(spread - seen, 1),
        "timeline": timeline,
    }


def scale_out(procs, rnacos, make_gateway, cold):
    """Runs the scale-out on both stacks; returns (report, polls of the protected gateway, polls
    of the other, when each pair's warmup ends on the run's clock)."""
    stacks = [Stack(mode, procs, rnacos, cold) for mode in MODES]
    registry_port = int(rnacos.addr.rsplit(":", 1)[1])
    hour_ago = now_ms() - HOUR_MS
    for s in stacks:
        for k in (0, 1):
            s.start_backend(k, hour_ago)
    for s in stacks:
        for k in (0, 1):
            wait_http(f"http://{s.addr(k)}/__stats", timeout=10)
            s.register(k, hour_ago)
        s.gw = make_gateway(registry_port, s.config(), [s.addr(k) for k in range(len(s.ports))],
                            name=f"gw-{s.mode}")
    for s in stacks:
        wait_until(lambda s=s: len(serving(s.gw.listen)) == 2, timeout=15,
                   what=f"{s.mode}: 2 serving")

    epoch = time.monotonic()
    t_reg = LEAD_S
    t_end = t_reg + (PAIRS - 1) * PAIR_GAP_S + WARMUP_MS / 1000 + TAIL_S
    poller = Poller(stacks, epoch)
    poller.start()
    loads = {s.mode: [Load(s.gw.listen, threads=THREADS, rate=BASE_RATE, duration=t_end,
                           timeout=10.0).start()] for s in stacks}

    # the scale-out: pair p starts at T + p x PAIR_GAP_S in both stacks, then is registered
    registered, started_at = [], []
    for p in range(PAIRS):
        time.sleep(max(0.0, epoch + t_reg + p * PAIR_GAP_S - time.monotonic()))
        if p == 0:
            for s in stacks:
                loads[s.mode].append(Load(s.gw.listen, threads=THREADS, rate=RATE - BASE_RATE,
                                          duration=t_end - t_reg, timeout=10.0).start())
        started = now_ms()
        started_at.append(time.monotonic() - epoch)
        pair = (2 + 2 * p, 3 + 2 * p)
        for s in stacks:
            for k in pair:
                s.start_backend(k, started)
        for s in stacks:
            for k in pair:
                wait_http(f"http://{s.addr(k)}/__stats", timeout=10)
        for s in stacks:
            for k in pair:
                s.register(k, started)
        registered.append(round(time.monotonic() - epoch - t_reg, 2))

    for parts in loads.values():
        for load in parts:
            load.wait()
    poller.halt.set()
    poller.join(5)
    # the other gauges of the service keep their names beside the new one
    for s in stacks:
        gauges = s.gw.stats("^" + STAT.replace(".", r"\.") + "(hosts_|refresh_duration_us|warmup_)")
        assert gauges[STAT + "hosts_total"] == 8 and gauges[STAT + "hosts_warming"] == 0, gauges
        assert gauges[STAT + "refresh_duration_us"] > 0, gauges
        assert gauges[STAT + "warmup_overload_protected"] == 0, gauges

    report = {"setup": {"capacity_rps": CAPACITY, "cold": cold, "service_ms": SERVICE_MS,
                        "warmup_ms": WARMUP_MS, "base_rps": BASE_RATE, "rps": RATE,
                        "pairs_registered_after_s": registered, "threshold_percent": THRESHOLD}}
    # all 8 listed, 6 warming (in force with the protection): from 1 s after the last pair
    # started, for 5 s
    all8 = (t_reg + (PAIRS - 1) * PAIR_GAP_S + 1.0, t_reg + (PAIRS - 1) * PAIR_GAP_S + 6.0)
    for s in stacks:
        samples = sorted(((load.t0 + x.t - epoch, x) for load in loads[s.mode]
                          for x in load.results()), key=lambda p: p[0])
        report[s.mode] = measure(s, samples, t_reg, t_end)
        report[s.mode]["warm_share_all8"] = round(warm_share(s, window(samples, *all8)), 3)
    in_force = [p["t"] - t_reg for p in poller.polls["on"]
                if (p["svc"]["overload_protection"] or {}).get("in_force")]
    report["on"]["in_force_s"] = [round(min(in_force), 2), round(max(in_force), 2)] \
        if in_force else None
    (procs.log_dir / f"overload-{cold}.json").write_text(json.dumps(report, indent=1))
    print_report(report)
    ends = [t + WARMUP_MS / 1000 for t in started_at]
    return report, poller.polls["on"], poller.polls["off"], ends


def check_document(on_polls, off_polls, ends):
    """Each poll of the protected gateway: `in_force` is the rule applied to the document's own
    counts, the live weights follow it, and the gauge says both states; the other says null
    and 0. Returns the polls kept (those not within 0.2 s after a warmup ended)."""
    kept = [p for p in on_polls if not any(0 <= p["t"] - e < 0.2 for e in ends)]
    assert len(kept) > 50, len(kept)
    for p in kept:
        svc = p["svc"]
        serving = [i for i in svc["instances"] if i["state"] == "serving" and i["weight"] > 0]
        warming = sum(1 for i in serving if i["warming"])
        want = warming > 0 and warming * 100 >= THRESHOLD * len(serving)
        assert svc["overload_protection"] == {"threshold_percent": THRESHOLD, "in_force": want}, \
            (p["t"], svc)
        for i in serving:
            # in force: every instance at its full weight; otherwise the warming ones below it
            assert (i["live_weight"] == i["weight"]) == (want or not i["warming"]), (p["t"], i)
    for want in (True, False):
        assert any(p["svc"]["overload_protection"]["in_force"] == want and p["gauge"] == int(want)
                   for p in kept), (want, [(p["t"], p["gauge"]) for p in kept])
    for p in off_polls:
        assert p["svc"]["overload_protection"] is None, p
        assert p["gauge"] == 0, p
    return kept


def test_scale_out_cold_at_half(procs, rnacos, make_gateway):
    """New instances that serve half their warm rate at first: their even share fits."""
    report, on_polls, off_polls, ends = scale_out(procs, rnacos, make_gateway, 0.5)
    off, on = report["off"], report["on"]
    for side in (off, on):
        assert side["rate"] >= 100, report
        assert side["seen_after_s"] < 1.5, report
    # the warm instances: most of the load off, about an eighth each on, never overloaded on
    assert off["warm_peak_share"] >= 0.40, report
    assert on["warm_peak_share"] <= 0.32, report
    assert on["warm_share_all8"] <= EVEN + 0.04, report
    assert off["warm_share_all8"] >= 0.22, report
    assert on["warm_peak_rps"] < off["warm_peak_rps"] * 0.7, report
    assert on["failed_warm"] == 0, report
    assert on["spread_after_s"] is not None and off["spread_after_s"] is not None, report
    assert on["spread_after_s"] + 4 < off["spread_after_s"], report

    kept = check_document(on_polls, off_polls, ends)
    # the states of the scale-out, all 8 listed: in force at 6 and exactly 4 of 8 warming,
    # lifted at 2 of 8
    states = {(p["svc"]["hosts"]["warming"], p["svc"]["overload_protection"]["in_force"])
              for p in kept if p["svc"]["hosts"]["serving"] == 8}
    assert {(6, True), (4, True), (2, False)} <= states, states


def test_scale_out_demo_cold_start(procs, rnacos, make_gateway):
    """The demo's cold start (a tenth of the warm rate at first): the protection moves the
    overload onto the new instances."""
    report, on_polls, off_polls, ends = scale_out(procs, rnacos, make_gateway, 0.1)
    off, on = report["off"], report["on"]
    for side in (off, on):
        assert side["rate"] >= 100, report
    # off: the warm instances are overloaded and refuse, the new ones are not
    assert off["failed_warm"] > 0 and off["failed_new"] == 0, report
    # on: the new ones take their share cold and refuse much of it; more requests fail
    assert on["failed_new"] > 0, report
    assert on["failed"] > off["failed"], report
    check_document(on_polls, off_polls, ends)


def print_report(report):
    off, on = report["off"], report["on"]
    rows = [
        ("load after T (req/s)", "rate"),
        ("warm instance peak req/s", "warm_peak_rps"),
        ("warm instance peak share (1 s)", "warm_peak_share"),
        ("warm instance share, all 8 listed", "warm_share_all8"),
        ("warm p50 / p99 / max (ms)", None),
        ("all requests p99 (ms)", "all_p99_ms"),
        ("failed requests", "failed"),
        ("  refused by warm / new / local", None),
        ("load spread after (s)", "spread_after_s"),
    ]
    print()
    print(f"OVERLOAD setup {report['setup']}")
    print(f"OVERLOAD {'':36} {'off':>18} {'on':>18}")
    for label, key in rows:
        if key is None and label.startswith("warm p50"):
            a, b = (f"{x['warm_p50_ms']} / {x['warm_p99_ms']} / {x['warm_max_ms']}"
                    for x in (off, on))
        elif key is None:
            a, b = (f"{x['failed_warm']} / {x['failed_new']} / {x['failed_local']}"
                    for x in (off, on))
        else:
            a, b = off[key], on[key]
        print(f"OVERLOAD {label:36} {a!s:>18} {b!s:>18}")
    print(f"OVERLOAD on: in force from/to (s after T) {on.get('in_force_s')}")
    print("OVERLOAD timeline (s after the first new instance got a request): "
          "warm share off/on, failed off/on")
    for a, b in zip(off["timeline"], on["timeline"], strict=False):
        print(f"OVERLOAD {a['t']:5d}  {a['warm_share']:.3f} {b['warm_share']:.3f}"
              f"  {a['failed']:4d} {b['failed']:4d}")
