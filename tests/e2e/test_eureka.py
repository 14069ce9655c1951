"""lossless against a real Eureka server: Spring Cloud Netflix's Eureka Server 4.3.0 (Spring
Cloud 2025.0.0, Netflix eureka-core 2.0.4; peers/eureka-server, built by `make eureka`).

Instances register, heartbeat, change status and cancel through Eureka's REST API (tests/kit/
eureka.py); a gateway Envoy runs lossless with a `eureka` registry, polling GET /eureka/apps/{APP}
every second. Two servers run for the whole module, both standalone, with self-preservation off
and the eviction timer at 1 s (what the lease-expiry cases need; neither touches the response
cache):
- `default`: the response cache as users run it. The server answers /apps from a read-only copy
  that a timer refreshes from the live cache every responseCacheUpdateIntervalMs = 30 s, at
  wall-clock multiples of 30 s (Netflix eureka-core, ResponseCacheImpl: the constructor schedules
  the task at ((now / interval) * interval) + interval; getValue fills a missing key from the
  live cache once, then serves the copy);
- `live`: eureka.server.use-read-only-response-cache=false: every read comes from the live cache,
  which register / renew / status / cancel / eviction invalidate (ResponseCacheImpl.invalidate).

Lease expiry (eureka-core Lease): renew() sets lastUpdateTimestamp = now + duration and
isExpired() compares now with lastUpdateTimestamp + duration, so a lease expires 2 x
durationInSecs after its last renewal; the eviction timer (EvictionTask) then cancels it, unless
self-preservation holds evictions back (PeerAwareInstanceRegistryImpl.isLeaseExpirationEnabled).
"""

import json
import threading
import time

import pytest

from harness import INBOUND, Backend, membership
from kit import (
    HOUR_MS,
    LOOPBACK,
    Load,
    Procs,
    free_port,
    lb_endpoints,
    now_ms,
    request,
    wait_until,
)
from kit.eureka import Eureka, Heartbeats

pytestmark = pytest.mark.usefixtures("no_wasm_crash")

REFRESH_S = 1.1  # refresh_interval_ms 1000 + 10 % jitter
CACHE_S = 30.0  # eureka.server.response-cache-update-interval-ms, default
LEASE_S = 2  # leaseInfo.durationInSecs of the instances whose lease expires
REREGISTER_S = 2  # guard.reregister_ms of the test of an application whose last instance left
COMMON = {"eureka.server.enable-self-preservation": "false",
          "eureka.server.eviction-interval-timer-in-ms": "1000"}


@pytest.fixture(scope="module")
def eureka_servers(tmp_path_factory, eureka_jar):
    """{"default": Eureka, "live": Eureka}, started together for the module."""
    procs = Procs(tmp_path_factory.mktemp("eureka"))
    servers = {
        "default": Eureka(procs, eureka_jar, COMMON, name="eureka-default"),
        "live": Eureka(procs, eureka_jar,
                       {**COMMON, "eureka.server.use-read-only-response-cache": "false"},
                       name="eureka-live"),
    }
    threads = [threading.Thread(target=s.start) for s in servers.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in servers.values():
        assert s.is_alive(), s.log_text()[-3000:]
    yield servers
    procs.stop_all()


@pytest.fixture
def beats(eureka_servers):
    made = []

    def make(server):
        hb = Heartbeats(server, interval=1.0)
        made.append(hb)
        return hb
    yield make
    for hb in made:
        hb.close()


def eureka_config(eureka, apps, mode=None, inbound=None, guard=None):
    """The filter's config: services demo (= `apps[0]`), then solo1... for further apps, with
    `guard` (the keep-last-good settings) if given."""
    services = [{"name": "demo" if i == 0 else f"solo{i}", "registry": "eureka",
                 "registry_service": app} for i, app in enumerate(apps)]
    if guard:
        for s in services:
            s["guard"] = guard
    cfg = {"registries": {"eureka": {"type": "eureka", "cluster": "registry",
                                     "authority": eureka.addr, "path_prefix": "/eureka",
                                     "timeout_ms": 1000}},
           "services": services, "refresh_interval_ms": 1000,
           "drain": {"pin_header": "x-pin", "notify_grace_ms": 1000}}
    if mode:
        cfg["mode"] = mode
        cfg["inbound"] = inbound
    return json.dumps(cfg, separators=(",", ":"))


def instances_of(port, service=0):
    """{address: instance} of the gateway's membership."""
    return {i["address"]: i for i in membership(port)["services"][service]["instances"]}


class Watch:
    """Polls the gateway's membership every 50 ms in a thread: `first(fn, after)` is the
    monotonic time of the first document (a list of {address: instance} per service) that
    satisfies fn, at or after `after`."""

    def __init__(self, port, services=1):
        self.port = port
        self.services = services
        self.docs = []  # (monotonic, [ {addr: inst} per service ])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="watch")
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            try:
                doc = membership(self.port)
            except (OSError, RuntimeError):
                continue
            self.docs.append((time.monotonic(), [
                {i["address"]: i for i in doc["services"][k]["instances"]}
                for k in range(self.services)]))

    def first(self, fn, after):
        return next((t for t, doc in list(self.docs) if t >= after and fn(doc)), None)

    def wait(self, fn, after, timeout, what):
        return wait_until(lambda: self.first(fn, after), timeout=timeout, interval=0.05,
                          what=what)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


def state(addr, service=0):
    """fn(doc) -> the state of `addr` in service `service` ("absent" when not listed)."""
    return lambda doc: doc[service].get(addr, {}).get("state", "absent")


def is_(addr, want, service=0):
    return lambda doc: state(addr, service)(doc) == want


def next_flush(after_s, margin_s):
    """Wall time of the read-only cache's next refresh at least `margin_s` after `after_s`."""
    t = (int(after_s / CACHE_S) + 1) * CACHE_S
    return t if t - after_s >= margin_s else t + CACHE_S


# ----------------------------------------------------------------------------------------------

def test_registered_instance_warms_up_from_its_registered_start_time(
        eureka_servers, beats, make_backend, make_gateway):
    """A registered instance is routed, ramping from leaseInfo.serviceUpTimestamp (the server's
    clock when the lease first turned UP: AbstractInstanceRegistry.register -> Lease.serviceUp)
    over the `warmup` it registered in its metadata; a `timestamp` in the metadata wins."""
    eu = eureka_servers["live"]
    hb = beats(eu)
    app = "WARM"
    b = [make_backend() for _ in range(3)]
    for x in b[:2]:
        hb.register(app, f"warm-{x.port}", x.port, metadata={"timestamp": now_ms() - HOUR_MS})
    gw = make_gateway(eu.port, eureka_config(eu, [app]), [x.addr for x in b])
    wait_until(lambda: len([i for i in instances_of(gw.listen).values()
                            if i["state"] == "serving"]) == 2, timeout=15,
               what="2 serving instances")
    warmup = 20_000
    load = Load(gw.listen, threads=8, duration=12).start()
    time.sleep(1)
    hb.register(app, "new", b[2].port, metadata={"warmup": warmup})
    up_ms = int(eu.instances(app)["new"]["leaseInfo"]["serviceUpTimestamp"])
    new = wait_until(lambda: instances_of(gw.listen).get(b[2].addr), timeout=REFRESH_S + 1,
                     what="the new instance listed")
    assert new["state"] == "serving" and new["warming"], new
    assert new["start_ms"] == up_ms and new["warmup_ms"] == warmup, (new, up_ms)
    assert abs(up_ms - now_ms()) < 5_000, "serviceUpTimestamp is the server's clock at registration"
    load.wait()
    # the share follows Dubbo's weight over the warmup: weight = uptime / warmup x 100 of 100+100
    wall0 = time.time() - load.elapsed()

    def expected_share(s):
        up = (wall0 + s.t) * 1000 - up_ms
        w = max(1, min(int(up / (warmup / 100)), 100)) if 0 < up < warmup else 100
        return w / (200 + w)

    after = [s for s in load.results()
             if (wall0 + s.t) * 1000 > up_ms + 2_000 and 200 <= s.status < 300]
    assert len(after) > 1000, load.summary()
    got = sum(1 for s in after if s.instance == b[2].addr) / len(after)
    want = sum(expected_share(s) for s in after) / len(after)
    print(f"eureka warmup: new instance share {got:.3f}, Dubbo weight share {want:.3f}")
    assert abs(got - want) <= 0.04, (got, want)
    assert got > 0.02, "the new instance is routed"
    assert not load.errors(), load.summary()
    # a start time published in the metadata wins over serviceUpTimestamp
    published = now_ms() - 5_000
    hb.register(app, "new", b[2].port, metadata={"warmup": warmup, "timestamp": published})
    wait_until(lambda: instances_of(gw.listen)[b[2].addr]["start_ms"] == published,
               timeout=REFRESH_S + 1, what="metadata timestamp applied")


def test_status_override_delete_and_cancel_apply_within_one_refresh(
        eureka_servers, beats, make_backend, make_gateway):
    """With use-read-only-response-cache=false every change reaches lossless on its next
    refresh. PUT .../status?value=OUT_OF_SERVICE sets status and overriddenStatus
    (InstanceResource.statusUpdate -> AbstractInstanceRegistry.statusUpdate): draining, no new
    request. DELETE .../status?value=UP (deleteStatusUpdate) falls back to UP: serving again.
    DELETE .../status without a value sets status UNKNOWN (down for lossless), and the next renew
    answers 404 (AbstractInstanceRegistry.renew: "Instance status UNKNOWN possibly due to deleted
    override"), so the instance registers again (as DiscoveryClient.renew does on 404) and is
    serving again. DELETE /apps/{APP}/{ID} (cancel) removes it."""
    eu = eureka_servers["live"]
    hb = beats(eu)
    app = "OPS"
    b = [make_backend() for _ in range(3)]
    for x in b:
        hb.register(app, f"ops-{x.port}", x.port, metadata={"timestamp": now_ms() - HOUR_MS})
    gw = make_gateway(eu.port, eureka_config(eu, [app]), [x.addr for x in b])
    wait_until(lambda: all(i["state"] == "serving" for i in instances_of(gw.listen).values())
               and len(instances_of(gw.listen)) == 3, timeout=15, what="3 serving")
    watch = Watch(gw.listen)
    load = Load(gw.listen, threads=8, duration=16, post_share=0.2).start()
    a0, a1, a2 = (x.addr for x in b)
    i0, i1, i2 = (f"ops-{x.port}" for x in b)
    delays = {}

    def change(name, fn, reached, timeout=REFRESH_S + 1.0):
        t0 = time.monotonic()
        fn()
        t = watch.wait(reached, t0, timeout, name)
        delays[name] = t - t0
        return t0 - load.t0, t - load.t0

    time.sleep(1.5)
    oos0, _ = change("OUT_OF_SERVICE", lambda: eu.set_status(app, i0), is_(a0, "draining"))
    time.sleep(1.5)
    back0, _ = change("delete override value=UP", lambda: eu.delete_override(app, i0, "UP"),
                      is_(a0, "serving"))
    time.sleep(1.0)
    eu.set_status(app, i1)
    watch.wait(is_(a1, "draining"), time.monotonic(), REFRESH_S + 1, "a1 draining")
    hb.pause(i1)  # its next heartbeat, held until lossless has seen UNKNOWN, re-registers it
    _, unknown_seen = change("delete override (UNKNOWN)", lambda: eu.delete_override(app, i1),
                             is_(a1, "down"))
    assert eu.instances(app)[i1]["status"] == "UNKNOWN"
    assert eu.heartbeat(app, i1) == 404, "a renew after a deleted override answers 404"
    hb.resume(i1)
    reregistered = watch.wait(is_(a1, "serving"), load.t0 + unknown_seen, 2 * REFRESH_S + 2,
                              "re-registered a1 serving") - load.t0
    time.sleep(0.5)
    cancel2, _ = change("cancel", lambda: (hb.stop(i2), eu.cancel(app, i2)),
                        is_(a2, "absent"))
    load.wait()
    watch.close()
    print("eureka live cache, change -> lossless:",
          ", ".join(f"{k} {v:.2f} s" for k, v in delays.items()))
    bound = REFRESH_S + 0.5
    for name, d in delays.items():
        assert d <= bound, f"{name} reached lossless after {d:.2f} s"
    res = load.results()
    late = [s for s in res if s.instance == a0 and oos0 + bound < s.t < back0]
    assert not late, f"{len(late)} requests reached the OUT_OF_SERVICE instance"
    assert any(s.instance == a0 and s.t > back0 + bound for s in res), "served again"
    assert any(s.instance == a1 and s.t > reregistered for s in res), "re-registered one served"
    assert not [s for s in res if s.instance == a2 and s.t > cancel2 + bound], "cancelled"
    assert any(i == f"ops-{b[1].port}" for _, i in hb.reregistered), hb.reregistered
    assert not load.errors(), load.summary()


def test_lease_expiry_and_an_application_whose_last_instance_left(
        eureka_servers, beats, make_backend, make_gateway):
    """An instance that stops heartbeating is evicted 2 x durationInSecs after its last renewal
    (plus up to one eviction interval) and leaves lossless on the next refresh; when the last
    instance is cancelled GET /apps/{APP} answers 404 (ApplicationResource.getApplication: no
    payload for the name), an empty list. lossless holds an empty list back while the registry
    may be restarting and its instances registering again (guard.reregister_ms, 2 s here, 120 s
    by default; docs/registry-bad-days.md) and for guard.confirm_refreshes (3) replies, before
    requests get no_instances."""
    eu = eureka_servers["live"]
    hb = beats(eu)
    app = "LEASE"
    b = [make_backend() for _ in range(2)]
    ids = [f"lease-{x.port}" for x in b]
    for x, i in zip(b, ids, strict=True):
        hb.register(app, i, x.port, metadata={"timestamp": now_ms() - HOUR_MS},
                    duration_s=LEASE_S, renewal_s=1)
    cfg = eureka_config(eu, [app], guard={"reregister_ms": REREGISTER_S * 1000})
    gw = make_gateway(eu.port, cfg, [x.addr for x in b])
    wait_until(lambda: len(instances_of(gw.listen)) == 2, timeout=15, what="2 listed")
    watch = Watch(gw.listen)
    load = Load(gw.listen, threads=4, duration=15).start()
    time.sleep(1)
    stopped = time.monotonic()
    hb.stop(ids[0])
    gone = watch.wait(is_(b[0].addr, "absent"), stopped, 4 * LEASE_S + 4, "lease expiry") - stopped
    assert ids[0] not in eu.instances(app)
    # the last renewal was at most one heartbeat (1 s) before `stopped`
    assert 2 * LEASE_S - 1.0 <= gone <= 2 * LEASE_S + 1.0 + REFRESH_S + 0.5, gone
    cancelled = time.monotonic()
    hb.stop(ids[1])
    eu.cancel(app, ids[1])
    assert eu.application(app) is None, "404 once the last instance left"
    empty = watch.wait(lambda doc: not doc[0], cancelled, REREGISTER_S + 3 * REFRESH_S + 2,
                       "empty membership")
    empty -= cancelled
    load.wait()
    watch.close()
    print(f"eureka live cache: lease expiry seen {gone:.2f} s after the last heartbeat stopped "
          f"(durationInSecs {LEASE_S}); last instance cancelled -> 404 -> empty list applied "
          f"after {empty:.2f} s (guard: {REREGISTER_S} s, 3 replies)")
    assert REREGISTER_S <= empty <= REREGISTER_S + 2 * REFRESH_S + 1.0, empty
    assert gw.stat("wasmcustom.lossless.demo.refresh_kept", 0) >= 2
    status, headers, _ = request("GET", f"http://{LOOPBACK}:{gw.listen}/")
    assert status == 503, (status, headers)
    errors = [s for s in load.errors() if load.t0 + s.t < cancelled + empty - 0.3]
    assert not errors, (load.summary(), [round(load.t0 + s.t - cancelled, 3) for s in errors[:5]],
                        empty, errors[:2])


@pytest.mark.parametrize("cache", ["default", "live"])
def test_response_cache_delay_and_notify_beating_it(
        eureka_servers, beats, make_backend, make_envoy, make_gateway, cache):
    """How late each change reaches lossless, measured on one Eureka server with its default
    response cache and one with use-read-only-response-cache=false. At one instant: OUT_OF_SERVICE
    (A), inbound drain on B's own sidecar (POST /lossless/drain, the preStop hook) together with
    B's cancel, a cancel (C), a new registration (D), an override deleted with
    value=UP (E), heartbeats stopped (F, lease expiry), and the cancel of the only instance of a
    second application (404). With the default cache every registry change shows at the cache's
    next 30 s flush (+ one refresh; the 404 + guard.reregister_ms), the lease expiry at the first
    flush after the eviction; the drained instance stops getting requests within ~1 s either way
    (active notify: its responses carry the drain header; then 503 + retry elsewhere)."""
    eu = eureka_servers[cache]
    hb = beats(eu)
    app, solo = f"CACHE-{cache.upper()}", f"SOLO-{cache.upper()}"
    apps = {k: make_backend() for k in "ABCDEFG"}
    old = {"timestamp": now_ms() - HOUR_MS}
    # B runs behind its own sidecar (lossless inbound mode), registered under the sidecar's port
    listen = free_port()
    me = f"{LOOPBACK}:{listen}"
    addr = {k: v.addr for k, v in apps.items()}
    addr["B"] = me
    port = {k: v.port for k, v in apps.items()}
    port["B"] = listen
    ids = {k: f"{k.lower()}-{port[k]}" for k in apps}
    # registered before anything reads the application: the first read of a name fills the
    # read-only cache, which then serves that answer until the next flush
    for k in "ABCE":
        hb.register(app, ids[k], port[k], metadata=old)
    hb.register(app, ids["F"], port["F"], metadata=old, duration_s=LEASE_S, renewal_s=1)
    hb.register(solo, ids["G"], port["G"], metadata=old)
    eu.set_status(app, ids["E"])
    cfg = eureka_config(eu, [app], mode="inbound", inbound={"service": "demo", "self_address": me})
    make_envoy(INBOUND, {"LISTEN_PORT": listen, "REGISTRY_PORT": eu.port, "LOSSLESS_CONFIG": cfg,
                         "DEMO_ENDPOINTS": lb_endpoints([]), "APP_PORT": apps["B"].port},
               name="sidecar-b")
    # the gateway's first reads fill the read-only cache from the live one: current state
    # the empty list of the application whose last instance left is held guard.reregister_ms (a
    # registry that restarted empty; docs/registry-bad-days.md): 2 s here, as in the test above
    guard = {"reregister_ms": REREGISTER_S * 1000}
    gw = make_gateway(eu.port, eureka_config(eu, [app, solo], guard=guard),
                      [addr[k] for k in "ABCDEF"])
    wait_until(lambda: [i["state"] for _, i in sorted(instances_of(gw.listen).items())]
               .count("serving") == 4, timeout=15, what="A B C F serving, E draining")
    wait_until(lambda: membership(listen)["self"]["seen_serving"], timeout=10,
               what="the sidecar saw itself serving")
    assert instances_of(gw.listen)[addr["E"]]["state"] == "draining"
    assert len(instances_of(gw.listen, 1)) == 1

    # changes at least 8 s before the next flush (so F's lease has expired by then)
    flush = next_flush(time.time(), 8.0) if cache == "default" else None
    if flush and flush - time.time() > CACHE_S:
        time.sleep(flush - CACHE_S - time.time() + 0.5)
        flush = next_flush(time.time(), 8.0)
    span = (flush - time.time() + 5) if flush else 8
    watch = Watch(gw.listen, services=2)
    load = Load(gw.listen, threads=8, duration=span + 1, post_share=0.2).start()
    time.sleep(1)
    t0 = time.monotonic()
    wall0 = time.time()
    status, _, body = request("POST", f"http://{me}/lossless/drain", body=b"")
    assert status == 200 and json.loads(body)["draining"], body
    eu.set_status(app, ids["A"])
    hb.stop(ids["B"])
    eu.cancel(app, ids["B"])
    hb.stop(ids["C"])
    eu.cancel(app, ids["C"])
    hb.register(app, ids["D"], port["D"], metadata=old)
    eu.delete_override(app, ids["E"], "UP")
    hb.stop(ids["F"])
    hb.stop(ids["G"])
    eu.cancel(solo, ids["G"])
    took = time.monotonic() - t0
    checks = {
        "OUT_OF_SERVICE": is_(addr["A"], "draining"),
        "cancel": is_(addr["C"], "absent"),
        "register": is_(addr["D"], "serving"),
        "delete override": is_(addr["E"], "serving"),
        "lease expiry": is_(addr["F"], "absent"),
        "last instance (404)": lambda doc: not doc[1],
        "inbound drain + notify": lambda doc: doc[0].get(addr["B"], {}).get("marked")
        or state(addr["B"])(doc) in ("draining", "absent"),
    }
    seen = {}
    for name, fn in checks.items():
        limit = span + 3
        seen[name] = watch.wait(fn, t0, max(1.0, limit - (time.monotonic() - t0)), name) - t0
    load.wait()
    watch.close()
    start = t0 - load.t0
    last = {k: max((s.t - start for s in load.results() if s.instance == apps[k].addr),
                   default=None) for k in "AB"}
    lines = [f"{name}: {d:.2f} s" for name, d in seen.items()]
    lines.append(f"last request to A (OUT_OF_SERVICE) {last['A']:.2f} s, "
                 f"to B (inbound drain) {last['B']:.2f} s after the change")
    if flush:
        lines.append(f"read-only cache flush {flush - wall0:.2f} s after the change")
    print(f"eureka {cache} response cache, change -> lossless:\n  " + "\n  ".join(lines))

    assert took < 1.0, took
    assert seen["inbound drain + notify"] <= 1.0, seen
    assert last["B"] is not None and last["B"] <= 1.0 + 0.2, last
    assert not load.errors(), load.summary()
    if cache == "default":
        due = flush - wall0  # every registry change waits for the flush
        for name in ("OUT_OF_SERVICE", "cancel", "register", "delete override", "lease expiry"):
            assert due - 0.3 <= seen[name] <= due + REFRESH_S + 0.5, (name, seen[name], due)
        assert (due - 0.3 + REREGISTER_S <= seen["last instance (404)"]
                <= due + REREGISTER_S + 3 * REFRESH_S + 1.0), seen
        assert due - 0.3 <= last["A"] <= due + REFRESH_S + 0.5, (last["A"], due)
    else:
        for name in ("OUT_OF_SERVICE", "cancel", "register", "delete override"):
            assert seen[name] <= took + REFRESH_S + 0.5, (name, seen[name])
        assert seen["lease expiry"] <= 2 * LEASE_S + 1.0 + REFRESH_S + 0.5, seen
        assert seen["last instance (404)"] <= took + REREGISTER_S + 3 * REFRESH_S + 1.0, seen
        assert last["A"] <= took + REFRESH_S + 0.5, last


def test_sidecar_registers_in_real_eureka(eureka_servers, procs, make_envoy):
    """inbound.registration on Eureka (Spring Cloud Netflix's server, read cache off): the
    sidecar registers its application only once /ready answers, with the InstanceInfo the
    server accepts (ipAddr, port, UP, the start-time metadata), renews the lease, and cancels it
    when the drain starts."""
    eu = eureka_servers["live"]
    app_name = "ONLINE"
    app = Backend(procs, args=["--ready-after-ms", 2000]).start()
    listen = free_port()
    me = f"{LOOPBACK}:{listen}"
    inbound = {"service": "demo", "self_address": me, "warmup_ms": 60_000,
               "registration": {"local_cluster": "local_app", "heartbeat_ms": 1000,
                                "readiness": {"path": "/ready", "interval_ms": 500,
                                              "timeout_ms": 400}}}
    cfg = eureka_config(eu, [app_name], mode="inbound", inbound=inbound)
    sc = make_envoy(INBOUND, {"LISTEN_PORT": listen, "REGISTRY_PORT": eu.port,
                              "LOSSLESS_CONFIG": cfg, "APP_PORT": app.port}, name="sidecar")
    assert eu.instances(app_name) == {}
    wait_until(lambda: eu.instances(app_name), timeout=20, interval=0.1, what="registered")
    ready_ms = now_ms()
    assert app.stats()["ready"]
    (iid, rec), = eu.instances(app_name).items()
    assert iid == f"{LOOPBACK}:online:{listen}", iid
    assert (rec["ipAddr"], rec["port"]["$"], rec["status"]) == (LOOPBACK, listen, "UP"), rec
    assert abs(int(rec["metadata"]["timestamp"]) - ready_ms) < 1500, rec["metadata"]
    assert rec["metadata"]["warmup"] == "60000"
    # renewed every second, each renewal answered 200 by the server (its list does not show
    # renewals: leaseInfo.lastRenewalTimestamp stays at the registration)
    time.sleep(3.5)
    beats = sc.stat("wasmcustom.lossless.inbound.heartbeats", 0)
    assert beats >= 2 and sc.stat("wasmcustom.lossless.inbound.heartbeat_failures", 0) == 0, beats
    assert eu.instances(app_name)[iid]["status"] == "UP"
    assert request("POST", f"http://{me}/lossless/drain", body=b"")[0] == 200
    wait_until(lambda: eu.instances(app_name) == {}, timeout=5, interval=0.1, what="cancelled")
