"""Lossless online from the instance's own sidecar (inbound mode): the sidecar registers the
instance in rnacos only once the application answers its readiness path and has been warmed by
the sidecar's own requests, keeps the registration alive with heartbeats, deregisters it when the
drain starts, and caps admitted requests on Sentinel's WARM_UP curve.

The application is backend.py with no registry client at all: it only answers /ready (503 until
it is ready) and is slow for its first requests (cold).
"""

import json
import math
import threading
import time
from collections import Counter

from harness import (
    INBOUND,
    SERVICE,
    TEMPLATES,
    Backend,
    filter_config,
    membership,
    serving,
)
from kit import LOOPBACK, Load, free_port, lb_endpoints, now_ms, request, wait_until
from kit.rnacos import Rnacos
from shipped import istio_route, merge, orders_cluster_name, orders_patches

# an application that becomes ready 3 s after it starts and serves its first 30 requests slowly
READY_AFTER_MS = 3000
COLD_MS = 150
WARM_AFTER = 30


def cold_app(procs, ready_after_ms=READY_AFTER_MS, cold_ms=COLD_MS, warm_after=WARM_AFTER):
    return Backend(procs, args=["--ready-after-ms", ready_after_ms, "--cold-ms", cold_ms,
                                "--warm-after", warm_after]).start()


def online_config(rnacos_addr, me, warm=WARM_AFTER, admission=None, warmup_ms=30_000):
    """The sidecar's config: registration through local_app (readiness GET /ready every 500 ms,
    2 passes), self-warm of `warm` requests (GET / and POST /orders, 3 at a time)."""
    inbound = {
        "service": "demo",
        "self_address": me,
        "warmup_ms": warmup_ms,
        "registration": {
            "local_cluster": "local_app",
            "readiness": {"path": "/ready", "interval_ms": 500, "timeout_ms": 400,
                          "healthy_threshold": 2},
            "heartbeat_ms": 2000,
            "metadata": {"version": "2"},
        },
    }
    if warm:
        inbound["self_warm"] = {"requests": ["GET /", "POST /orders"], "count": warm,
                                "concurrency": 3, "time_limit_ms": 20_000}
    if admission:
        inbound["admission"] = admission
    return filter_config(rnacos_addr, refresh_ms=500, mode="inbound", inbound=inbound)


def start_sidecar(make_envoy, registry_port, cfg, app, listen=None, name="sidecar",
                  concurrency=1, **kwargs):
    listen = listen or free_port()
    sc = make_envoy(INBOUND, {"LISTEN_PORT": listen, "REGISTRY_PORT": registry_port,
                              "LOSSLESS_CONFIG": cfg, "APP_PORT": app.port},
                    name=name, concurrency=concurrency, **kwargs)
    sc.listen, sc.addr, sc.app = listen, f"{LOOPBACK}:{listen}", app
    return sc


def registered(rnacos, addr):
    """The rnacos host record of `addr` in SERVICE, or None."""
    return rnacos.hosts(SERVICE).get(addr)


def online_of(port):
    return membership(port)["self"]["online"]


def test_registers_when_ready_and_warm_then_deregisters_on_drain(rnacos, procs, make_envoy):
    app = cold_app(procs)
    started = now_ms()
    listen = free_port()
    me = f"{LOOPBACK}:{listen}"
    # two workers: exactly one VM of the process registers (one registration, one heartbeat
    # stream, below)
    sc = start_sidecar(make_envoy, rnacos.http_port, online_config(rnacos.addr, me), app,
                       listen=listen, concurrency=2)
    # before the application is ready: not registered, and requests are refused, retry-safe
    status, headers, _ = request("GET", f"http://{me}/")
    assert status == 503 and headers.get("x-lossless-drain") == "not_ready", (status, headers)
    assert app.stats()["served"] == 0, "a refused request never reaches the application"

    seen = {}

    def watch():
        st = app.stats()
        if st["ready"] and "ready" not in seen:
            seen["ready"] = now_ms()
        host = registered(rnacos, me)
        if host:
            seen["registered"] = now_ms()
            seen["host"], seen["app_at_registration"] = host, st
        return host is not None

    wait_until(watch, timeout=20, interval=0.05, what="registration in rnacos")
    assert "ready" in seen and seen["registered"] >= seen["ready"], seen
    at = seen["app_at_registration"]
    # the self-warm requests took every cold request before the instance was registered
    assert at["cold_served"] == WARM_AFTER and at["served"] >= WARM_AFTER, at
    assert at["counts"].get("POST", 0) >= WARM_AFTER // 2 - 1, at
    meta = seen["host"]["metadata"]
    # the start time callers warm up from is the moment the application became ready
    assert started + READY_AFTER_MS <= int(meta["timestamp"]) <= seen["registered"], (meta, seen)
    assert meta["warmup"] == "30000" and meta["version"] == "2", meta
    # registered: served, warm (no request of a caller met the cold application)
    t0 = time.monotonic()
    status, headers, _ = request("GET", f"http://{me}/")
    assert status == 200 and time.monotonic() - t0 < COLD_MS / 1000, headers
    online = online_of(listen)["registration"]
    assert online["phase"] == "registered", online
    assert online["self_warm"]["ok"] == WARM_AFTER and online["self_warm"]["failed"] == 0, online
    assert online["self_warm"]["took_ms"] >= (WARM_AFTER // 3) * COLD_MS * 0.9, online

    # heartbeats keep the ephemeral instance past rnacos' ~35 s expiry
    time.sleep(38)
    assert registered(rnacos, me), "expired without heartbeats"
    time.sleep(0.3)
    beats = sc.stat("wasmcustom.lossless.inbound.heartbeats", 0)
    assert 15 <= beats <= 22, f"one heartbeat every 2 s from one VM, got {beats}"
    assert sc.stat("wasmcustom.lossless.inbound.registrations", 0) == 1
    assert sc.stat("wasmcustom.lossless.inbound.self_warm.success", 0) == WARM_AFTER

    # the preStop hook: deregistered at once, so callers of any kind stop sending
    drained_at = time.monotonic()
    assert request("POST", f"http://{me}/lossless/drain", body=b"")[0] == 200
    wait_until(lambda: registered(rnacos, me) is None, timeout=5, interval=0.05,
               what="deregistration")
    assert time.monotonic() - drained_at < 1.5
    assert online_of(listen)["registration"]["phase"] == "deregistered"
    # undrained (the release was called off): registered again, same start time, no new warm
    assert request("POST", f"http://{me}/lossless/undrain", body=b"")[0] == 200
    wait_until(lambda: registered(rnacos, me) is not None, timeout=5, what="registered again")
    assert registered(rnacos, me)["metadata"]["timestamp"] == meta["timestamp"]
    assert app.stats()["cold_served"] == WARM_AFTER


def test_registry_down_at_start_keeps_trying(procs, tmp_logs, rnacos_bin, make_envoy):
    """The registry is not there when the instance starts: the sidecar stays unregistered, says
    so once, retries with back-off, and registers once the registry is up. The application is
    served meanwhile (it is ready and warm; a caller that knows the address may use it)."""
    reg = Rnacos(procs, tmp_logs, binary=rnacos_bin)
    app = cold_app(procs, ready_after_ms=500, warm_after=5)
    listen = free_port()
    me = f"{LOOPBACK}:{listen}"
    sc = start_sidecar(make_envoy, reg.http_port, online_config(reg.addr, me, warm=5), app,
                       listen=listen)
    wait_until(lambda: online_of(listen)["registration"]["phase"] == "registering", timeout=15,
               what="ready and warm")
    time.sleep(3)
    assert online_of(listen)["registration"]["phase"] == "registering"
    assert request("GET", f"http://{me}/")[0] == 200
    reg.start()
    wait_until(lambda: registered(reg, me) is not None, timeout=40, interval=0.2,
               what="registration once the registry is up")
    assert online_of(listen)["registration"]["phase"] == "registered"
    def said():
        return [line for line in sc.log_text().splitlines() if "it stays unregistered" in line]

    wait_until(said, timeout=15, what="the log line (Envoy flushes its log file every few s)")
    assert len(said()) == 1, said()


def shipped_retry_policy():
    """The retry policy of a plain (Istio) sidecar calling the service: Istio 1.28's default
    route with the shipped EnvoyFilter's HTTP_ROUTE patch merged in (test_packaging_istio_envoy
    builds and checks the same merge): the instance's refusals and unreached attempts are
    retried, on another host (Istio's previous_hosts predicate)."""
    route = merge(istio_route(orders_cluster_name(), "10s"), orders_patches()["HTTP_ROUTE"])
    return route["route"]["retry_policy"]


# How Istio's pilot-agent runs the sidecar's Envoy (istio/istio pkg/envoy/proxy.go: "--drain-time-s"
# from the mesh's drainDuration, 45 s by default, and "--drain-strategy immediate"), with a drain
# time short enough for a test.
ISTIO_DRAIN_ARGS = ("--drain-time-s", "1", "--drain-strategy", "immediate")


def stop_as_istio(sc):
    """Stop a sidecar the way a pod's proxy stops: pilot-agent first drains Envoy's listeners
    (`POST /drain_listeners?inboundonly&graceful`, Istio's pkg/envoy agent and its native-sidecar
    preStop hook; this template's listener has no INBOUND direction, so without `inboundonly`):
    every HTTP/1 response then carries `connection: close`, so callers stop reusing their
    keep-alive connections, and the listener closes after the drain time. Then it stops Envoy.
    Killing Envoy with no drain resets a request that is on one of those connections at that
    instant; a caller whose retry policy does not retry resets (the Istio recipe's) answers it
    503. Returns the listener's count of connections the drain closed and of requests it served
    while draining."""
    served = sc.stat("http.inbound.downstream_rq_total", 0)
    assert sc.admin("POST", "/drain_listeners?graceful")[0] == 200
    time.sleep(1.5)
    closed = sc.stat("http.inbound.downstream_cx_drain_close", 0)
    served = sc.stat("http.inbound.downstream_rq_total", 0) - served
    sc.stop()
    return closed, served


def test_rolling_release_behind_lossless_and_plain_callers(rnacos, procs, make_envoy,
                                                           make_gateway):
    """Three instances whose only registry client is their sidecar are replaced one by one (a
    new one starts cold and unready; the old one is drained by its preStop hook, then its proxy
    and application stop as in a pod), under load from (i) a lossless gateway that lists rnacos
    and (ii) a plain Envoy with the shipped retry policy over all six sidecar addresses: nothing
    fails in either, and no caller's request meets a cold application."""
    old_ports = [free_port() for _ in range(3)]
    new_ports = [free_port() for _ in range(3)]
    addrs = [f"{LOOPBACK}:{p}" for pair in zip(old_ports, new_ports, strict=True) for p in pair]

    def instance(port, i, gen):
        app = cold_app(procs, ready_after_ms=2000)
        sc = start_sidecar(make_envoy, rnacos.http_port,
                           online_config(rnacos.addr, f"{LOOPBACK}:{port}"), app, listen=port,
                           name=f"sidecar-{gen}{i}", extra_args=ISTIO_DRAIN_ARGS)
        return app, sc

    olds = [instance(p, i, "old") for i, p in enumerate(old_ports)]
    for _, sc in olds:
        wait_until(lambda sc=sc: registered(rnacos, sc.addr), timeout=20, what="old registered")
    gw = make_gateway(rnacos.http_port, filter_config(rnacos.addr, refresh_ms=500), addrs)
    wait_until(lambda: len(serving(gw.listen)) == 3, timeout=10, what="3 serving")
    plain_port = free_port()
    make_envoy(TEMPLATES / "plain-retry.yaml",
               {"LISTEN_PORT": plain_port, "DEMO_ENDPOINTS": lb_endpoints(addrs),
                "RETRY_POLICY": json.dumps(shipped_retry_policy())}, name="plain")

    loads = {"lossless": Load(gw.listen, threads=4, duration=45, rate=120, post_share=0.3),
             "plain": Load(plain_port, threads=4, duration=45, rate=120, post_share=0.3)}
    for ld in loads.values():
        ld.start()
    news = []
    time.sleep(3)
    for i, port in enumerate(new_ports):
        app, sc = instance(port, i, "new")
        news.append((app, sc))
        wait_until(lambda sc=sc: registered(rnacos, sc.addr), timeout=20, what="new registered")
        time.sleep(2)  # callers learn of it
        old_app, old_sc = olds[i]
        assert request("POST", f"http://{old_sc.addr}/lossless/drain", body=b"")[0] == 200
        time.sleep(3)  # the notify grace (1 s) and the in-flight requests
        # the callers that kept sending (the plain one) were told to close their connections; a
        # caller that had already stopped sending to it (its own outlier detection ejected the
        # refusing instance) has nothing on it to reset
        closed, served = stop_as_istio(old_sc)
        assert closed > 0 or served == 0, (closed, served)
        old_app.stop()
        time.sleep(2)
    for ld in loads.values():
        ld.wait()

    # lossless loses nothing; the plain caller (the baseline) may lose the one request a stopping
    # sidecar resets on a keep-alive connection it had not closed yet (seen about once in ten runs)
    assert not loads["lossless"].errors(), loads["lossless"].summary()
    assert len(loads["plain"].errors()) <= 1, loads["plain"].summary()
    for name, ld in loads.items():
        assert len(ld.results()) > 3000, f"{name}: {ld.summary()}"
    # no caller's request met a cold application: each new one served its cold requests to its
    # own sidecar's self-warm only, then real traffic (the plain caller's slowest requests are
    # its retries' back-off over addresses not started yet, not cold instances)
    for app, _ in news:
        st = app.stats()
        assert st["cold_served"] == WARM_AFTER, st
        assert st["served"] > WARM_AFTER + 200, st
    slow = [s for s in loads["lossless"].results() if s.latency > COLD_MS / 1000 * 0.9]
    assert len(slow) <= 5, f"lossless: {len(slow)} requests took a cold instance's time"
    assert len(serving(gw.listen)) == 3


def sentinel_seconds(count, cold_factor, period_s, seconds):
    """Sentinel's WarmUpController under a load above `count`, second by second, from its
    published formulas (warningToken, maxToken, slope; warningQps = 1 / (aboveToken * slope +
    1 / count)); each second admits floor(warningQps) and the next sync takes that many tokens."""
    warning = int(period_s * count) // (cold_factor - 1)
    max_token = warning + int(2 * period_s * count / (1.0 + cold_factor))
    slope = (cold_factor - 1.0) / count / (max_token - warning)
    tokens, out = max_token, []
    for _ in range(seconds):
        qps = count if tokens < warning else 1.0 / ((tokens - warning) * slope + 1.0 / count)
        n = math.floor(qps + 1e-9)
        out.append(n)
        tokens = min(tokens + (count if tokens < warning else 0), max_token) - n
    return out


def test_admission_follows_the_warm_up_curve(rnacos, procs, make_envoy):
    """Sentinel's WARM_UP cap (max_rps 60, cold_factor 3, warm-up 20 s) on a sidecar with two
    workers, under 100 req/s offered: the admitted rate per second follows Sentinel's curve
    within ±10 % from 20 % of the warm-up on; the rest is refused flow_limited before any work."""
    app = Backend(procs).start()
    listen = free_port()
    me = f"{LOOPBACK}:{listen}"
    cfg = filter_config(rnacos.addr, mode="inbound", inbound={
        "service": "demo", "self_address": me, "warmup_ms": 20_000,
        "admission": {"max_rps": 60, "cold_factor": 3}})
    sc = start_sidecar(make_envoy, rnacos.http_port, cfg, app, listen=listen, concurrency=2)
    # align the load's start with a wall-clock second (the cap's window)
    time.sleep(1.0 - time.time() % 1.0 + 0.02)
    first_second = int(time.time())
    samples = []
    lock = threading.Lock()
    stop = time.monotonic() + 24

    def run():
        import http.client
        conn = http.client.HTTPConnection(LOOPBACK, listen, timeout=5)
        interval = 8 / 100.0
        nxt = time.monotonic()
        while time.monotonic() < stop:
            nxt += interval
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            with lock:
                samples.append((int(time.time()), resp.status, resp.getheader("x-lossless-drain")))
            time.sleep(max(0.0, nxt - time.monotonic()))
        conn.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    admitted = Counter(s for s, status, _ in samples if status == 200)
    refused = [(st, h) for _, st, h in samples if st != 200]
    assert all(r == (503, "flow_limited") for r in refused), Counter(refused).most_common(3)
    want = sentinel_seconds(60, 3, 20, 24)
    rows = [(k, admitted.get(first_second + k, 0), want[k]) for k in range(23)]
    off = [(k, got, exp) for k, got, exp in rows if k >= 4 and abs(got - exp) > 0.10 * exp]
    assert not off, f"(second, admitted, Sentinel) off by more than 10 %: {off}; all: {rows}"
    assert rows[0][1] <= 60 / 3 + 1, rows[:3]
    assert app.stats()["served"] == sum(admitted.values())
    assert online_of(listen)["admission"]["max_rps"] == 60
    time.sleep(0.3)
    assert sc.stat("wasmcustom.lossless.demo.local_503.flow_limited", 0) == len(refused)
