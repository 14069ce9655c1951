"""lossless with `fetch: "delta"` against a real Eureka server (Spring Cloud Netflix's Eureka Server
4.3.0, Netflix eureka-core 2.0.4; peers/eureka-server, built by `make eureka`).

The registry is fetched whole, as Eureka's own client fetches it (DiscoveryClient.fetchRegistry):
one GET /eureka/apps, then one GET /eureka/apps/delta per registry_fetch_interval_ms for every
configured application at once, each checked by the reconcile hash code (apps__hashcode) and a
full fetch again when it disagrees.

The server answers both from its read-only response cache, refreshed every
responseCacheUpdateIntervalMs (30 s by default: a delta fetched more often re-reads the same
answer). So that the test takes a minute and not five, its server refreshes that cache every 5 s
(eureka.server.response-cache-update-interval-ms=5000) and lossless fetches every 5 s: the same
rule (fetch as often as the cache changes) at a sixth of the scale. Self-preservation is off and
the eviction timer runs every second, as in test_eureka.py.

The requests lossless makes are counted by a front in this file, which forwards to the server
and can leave one instance out of every delta reply: a change the delta lost, which only the hash
code can reveal.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import membership
from kit import HOUR_MS, LOOPBACK, Procs, free_port, now_ms, request, wait_until
from kit.eureka import Eureka, Heartbeats

pytestmark = pytest.mark.usefixtures("no_wasm_crash")

CACHE_MS = 5000  # the server's responseCacheUpdateIntervalMs in this test (default 30000)
FETCH_MS = 5000  # registry_fetch_interval_ms, the same
APPS = ["ALPHA", "BETA", "GAMMA"]  # the configured applications
OTHER = "OTHER"  # an application no service uses
# a change reaches lossless within one cache refresh and one fetch (+10 % jitter), plus slack
REACH_S = (CACHE_MS + FETCH_MS * 1.1) / 1000 + 2.0


@pytest.fixture(scope="module")
def eureka(tmp_path_factory, eureka_jar):
    procs = Procs(tmp_path_factory.mktemp("eureka-delta"))
    server = Eureka(procs, eureka_jar, {
        "eureka.server.enable-self-preservation": "false",
        "eureka.server.eviction-interval-timer-in-ms": "1000",
        "eureka.server.response-cache-update-interval-ms": str(CACHE_MS),
    }, name="eureka-delta").start()
    yield server
    procs.stop_all()


class Front:
    """Forwards every request to the Eureka server and counts them by path; with `lose` set to an
    instance id, leaves that instance out of every /apps/delta reply (the hash code is the
    server's)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.seen = []  # (monotonic, path)
        self.lose = None
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, headers, body = request(
                    "GET", f"http://{front.upstream}{self.path}",
                    headers={"accept": self.headers.get("accept", "application/json")})
                with front.lock:
                    front.seen.append((time.monotonic(), self.path))
                    lose = front.lose
                if lose and self.path.endswith("/apps/delta") and status == 200:
                    body = drop_instance(body, lose)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paths(self, since=0.0):
        with self.lock:
            return [p for t, p in self.seen if t >= since]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def drop_instance(body, instance_id):
    doc = json.loads(body)
    apps = doc["applications"].get("application", [])
    for app in apps if isinstance(apps, list) else [apps]:
        recs = app.get("instance", [])
        recs = recs if isinstance(recs, list) else [recs]
        app["instance"] = [r for r in recs if r.get("instanceId") != instance_id]
    return json.dumps(doc).encode()


@pytest.fixture
def front(eureka):
    f = Front(eureka.addr)
    yield f
    f.close()


def config(front, fetch):
    services = [{"name": app.lower(), "registry": "eureka", "registry_service": app,
                 "match_clusters": ["demo"] if i == 0 else [f"none{i}"]}
                for i, app in enumerate(APPS)]
    registry = {"type": "eureka", "cluster": "registry", "authority": f"{LOOPBACK}:{front.port}",
                "timeout_ms": 1000, "fetch": fetch}
    if fetch == "delta":
        registry["registry_fetch_interval_ms"] = FETCH_MS
    return json.dumps({"registries": {"eureka": registry}, "services": services,
                       "refresh_interval_ms": 1000}, separators=(",", ":"))


def counters(gw):
    """The filter's eureka.* counters of the gateway, by short name."""
    prefix = "wasmcustom.lossless.eureka."
    stats = gw.stats("^" + prefix.replace(".", r"\."))
    names = ("delta_applied", "full_applied", "delta_hash_mismatch", "fetch_failed")
    return {n: stats.get(prefix + n, 0) for n in names}


def counted(gw, name, at_least):
    """The counters once `name` reached `at_least` (they reach Envoy on the filter's next tick)."""
    def enough():
        c = counters(gw)
        return c if c[name] >= at_least else None
    return wait_until(enough, timeout=2, what=f"{name} >= {at_least}")


def listed(port):
    """[{address: state} per configured application] of the gateway's membership."""
    doc = membership(port)
    return [{i["address"]: i["state"] for i in s["instances"]} for s in doc["services"]]


def test_one_delta_per_interval_for_every_application(eureka, front, make_backend, make_gateway):
    """Three configured applications and one that no service uses, each with one instance. With
    `fetch: "delta"` lossless asks GET /apps once, then GET /apps/delta once per interval for all
    three; with the per-application fetch (the default) it asks GET /apps/{APP} for each of them
    every second. A registration, a status change and a cancel each reach lossless through a
    delta; a change that the delta lost (the front leaves it out) is caught by the hash code and
    brought by a full fetch."""
    hb = Heartbeats(eureka, interval=5.0)
    try:
        b = [make_backend() for _ in range(5)]
        up = now_ms() - HOUR_MS
        for app, x in zip(APPS, b[:len(APPS)], strict=True):
            hb.register(app, f"{app.lower()}-{x.port}", x.port, metadata={"timestamp": up})
        hb.register(OTHER, "other-1", b[3].port)
        delta_gw = make_gateway(front.port, config(front, "delta"), [x.addr for x in b],
                                name="gateway-delta")
        wait_until(lambda: all(len(s) == 1 for s in listed(delta_gw.listen)), timeout=15,
                   what="every application listed")
        per_app_gw = make_gateway(front.port, config(front, "application"), [x.addr for x in b],
                                  name="gateway-per-app")
        wait_until(lambda: all(len(s) == 1 for s in listed(per_app_gw.listen)), timeout=15,
                   what="every application listed (per application)")

        # requests over a window of 6 intervals
        window_s = 6 * FETCH_MS / 1000
        t0 = time.monotonic()
        time.sleep(window_s)
        paths = front.paths(since=t0)
        deltas = paths.count("/eureka/apps/delta")
        fulls = paths.count("/eureka/apps")
        per_app = sum(1 for p in paths if p.rsplit("/", 1)[-1] in APPS)
        print(f"eureka delta: {window_s:.0f} s window, {len(APPS)} applications: delta mode "
              f"{deltas} delta + {fulls} full requests; per-application mode {per_app} requests")
        # one per interval (10 % jitter): 6 +- 1 in six intervals; no full fetch while in line
        assert 5 <= deltas <= 7, paths
        assert fulls == 0, paths
        assert per_app >= len(APPS) * window_s * 0.8, paths
        per_app_gw.stop()

        # a registration, a status change, a cancel: each through a delta
        alpha = b[4]
        t = time.monotonic()
        hb.register("ALPHA", "alpha-new", alpha.port, metadata={"timestamp": up})
        wait_until(lambda: listed(delta_gw.listen)[0].get(alpha.addr) == "serving",
                   timeout=REACH_S, what="registration applied")
        reg_s = time.monotonic() - t
        t = time.monotonic()
        eureka.set_status("BETA", f"beta-{b[1].port}")
        # another application's change at the same time moves the hash code only
        eureka.set_status(OTHER, "other-1")
        wait_until(lambda: listed(delta_gw.listen)[1].get(b[1].addr) == "draining",
                   timeout=REACH_S, what="OUT_OF_SERVICE applied")
        oos_s = time.monotonic() - t
        t = time.monotonic()
        hb.stop("alpha-new")
        eureka.cancel("ALPHA", "alpha-new")
        wait_until(lambda: alpha.addr not in listed(delta_gw.listen)[0],
                   timeout=REACH_S, what="cancel applied")
        cancel_s = time.monotonic() - t
        print(f"eureka delta: registration {reg_s:.1f} s, OUT_OF_SERVICE {oos_s:.1f} s, "
              f"cancel {cancel_s:.1f} s (cache {CACHE_MS} ms, fetch {FETCH_MS} ms)")
        stats = counted(delta_gw, "delta_applied", 6)
        assert (stats["full_applied"], stats["delta_hash_mismatch"]) == (1, 0), stats

        # a change the delta lost: the hash code disagrees, a full fetch brings it
        gamma = b[4]
        front.lose = "gamma-lost"
        t = time.monotonic()
        hb.register("GAMMA", "gamma-lost", gamma.port, metadata={"timestamp": up})
        wait_until(lambda: listed(delta_gw.listen)[2].get(gamma.addr) == "serving",
                   timeout=REACH_S + FETCH_MS / 1000, what="the lost registration applied")
        lost_s = time.monotonic() - t
        stats = counted(delta_gw, "full_applied", 2)
        assert stats["delta_hash_mismatch"] >= 1 and stats["fetch_failed"] == 0, stats
        fulls = front.paths(since=t).count("/eureka/apps")
        print(f"eureka delta: a registration the delta lost applied after {lost_s:.1f} s "
              f"by {fulls} full fetch(es); stats {stats}")
        # in line again: deltas only, no full fetch
        t = time.monotonic()
        time.sleep(2 * FETCH_MS / 1000 + 1)
        assert front.paths(since=t).count("/eureka/apps") == 0, front.paths(since=t)
    finally:
        hb.close()
