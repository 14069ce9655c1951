"""lossless inside a real Envoy, against a real rnacos and real backends.

Each test owns its processes (stopped by pid at teardown), binds 127.0.0.1 only, and uses free
ports. Loads are bounded in time.
"""

import json
import statistics
import time

import pytest

from harness import (
    INBOUND,
    ORIGINAL_DST,
    OUTBOUND,
    SERVICE,
    filter_config,
    membership,
    register,
    serving,
)
from kit import HOUR_MS, LOOPBACK, Envoy, Load, free_port, lb_endpoints, now_ms, request, wait_until

pytestmark = pytest.mark.usefixtures("no_wasm_crash")  # promise 9: no wasm crash in any Envoy log


def subs(registry_port, cfg, endpoints=(), listen=None, app_port=None):
    s = {"LISTEN_PORT": listen or free_port(), "REGISTRY_PORT": registry_port,
         "LOSSLESS_CONFIG": cfg, "DEMO_ENDPOINTS": lb_endpoints(endpoints)}
    if app_port:
        s["APP_PORT"] = app_port
    return s


@pytest.fixture
def backends(make_backend):
    def make(n):
        return [make_backend() for _ in range(n)]
    return make


# ----------------------------------------------------------------------------------------------
# 1 + 2: warmup follows the Dubbo weight, and survives an Envoy restart

def dubbo_weight(uptime_ms, warmup_ms, weight=100):
    """Dubbo getWeight for an instance `uptime_ms` old (uptime 0 or past warmup: full weight)."""
    if uptime_ms <= 0 or uptime_ms >= warmup_ms:
        return weight
    return max(1, min(int(uptime_ms / (warmup_ms / weight)), weight))


def test_warmup_tracks_dubbo_weight_and_survives_restart(rnacos, backends, make_gateway):
    b = backends(4)
    old = now_ms() - HOUR_MS
    for x in b[:3]:
        register(rnacos, x.port, old)
    gw = make_gateway(rnacos.http_port, filter_config(rnacos.addr), [x.addr for x in b])
    wait_until(lambda: len(serving(gw.listen)) == 3, timeout=10, what="3 serving instances")

    warmup = 40_000
    load = Load(gw.listen, threads=8, duration=56, post_share=0.2).start()
    wall0 = time.time()
    t0 = now_ms()
    register(rnacos, b[3].port, t0, warmup_ms=warmup)
    new = b[3].addr

    def at(frac):  # load-relative seconds of a point of the warmup
        return (t0 + frac * warmup) / 1000 - wall0

    def check(frac, half=2.0):
        lo, hi = at(frac) - half, at(frac) + half
        window = [s for s in load.window(lo, hi) if 200 <= s.status < 300]
        assert len(window) > 500, f"too few samples at {frac:.0%}: {len(window)}"
        weights = [dubbo_weight((wall0 + s.t) * 1000 - t0, warmup) for s in window]
        expected = statistics.fmean(w / (300 + w) for w in weights)
        got = sum(1 for s in window if s.instance == new) / len(window)
        print(f"warmup {frac:.0%}: share {got:.3f}, Dubbo weight share {expected:.3f}, "
              f"{len(window)} samples")
        assert abs(got - expected) <= 0.03, \
            f"at {frac:.0%} of warmup: share {got:.3f}, expected {expected:.3f}"
        return got

    def sleep_until(frac):
        time.sleep(max(0.0, at(frac) - (time.time() - wall0)))

    sleep_until(0.25 + 0.05)
    check(0.25)
    sleep_until(0.5 + 0.05)
    check(0.5)
    # Envoy restarts half way: the ramp continues from the instance's start time. The first
    # check after it is at 70 % of the warmup, or 2.5 s after the restart when that is later (a
    # busy machine takes longer to start Envoy), and its window begins after the restart
    down = time.time() - wall0
    gw.restart()
    restarted = time.time() - wall0

    def frac_at(t):  # the point of the warmup at load-relative second t
        return ((wall0 + t) * 1000 - t0) / warmup
    after = max(0.70, frac_at(restarted + 2.5))
    sleep_until(max(after, 0.75) + 0.05)
    check(after)
    if frac_at(restarted + 2.0) <= 0.75 - 0.05:
        check(0.75)
    sleep_until(1.0 + 0.3)
    load.wait()
    window = [s for s in load.window(at(1.0) + 0.5, None) if 200 <= s.status < 300]
    share = sum(1 for s in window if s.instance == new) / len(window)
    assert abs(share - 0.25) <= 0.03, f"after warmup: share {share:.3f}"
    # the only failures are requests on Envoy while it was stopped or down: in flight at the
    # stop (ended after it), or sent before it was back
    errors = [s for s in load.errors() if not (s.t + s.latency >= down and s.t <= restarted + 3)]
    assert not errors, errors[:5]


# ----------------------------------------------------------------------------------------------
# 3: offline in the registry -> no new request reaches it after refresh interval + 500 ms

def test_offline_instance_gets_no_new_requests(rnacos, serving_gateway):
    gw, b = serving_gateway(3)
    load = Load(gw.listen, threads=8, duration=8, post_share=0.3).start()
    time.sleep(2)
    off_at = load.elapsed()
    rnacos.set_enabled(SERVICE, LOOPBACK, b[2].port, False)
    load.wait()
    bound = off_at + 1.1 + 0.5  # refresh interval (1 s + 10 % jitter) + 500 ms
    late = [s for s in load.results() if s.instance == b[2].addr and s.t > bound]
    assert not late, \
        f"{len(late)} requests reached the offline instance after {bound - off_at:.1f} s"
    before = [s for s in load.results() if s.instance == b[2].addr and s.t < off_at]
    assert len(before) > 100, "it did serve before going offline"
    assert not load.errors(), load.summary()
    # the backend's own count agrees: nothing arrives any more
    count = b[2].total()
    time.sleep(1.5)
    assert b[2].total() == count


def test_disabling_two_of_three_applies_within_one_refresh(rnacos, serving_gateway):
    """Nacos leaves disabled instances out of its list: disabling 2 of 3 at once is a deliberate
    offline, applied within one refresh (the drop guard holds mass health failures and empty
    lists, not absences)."""
    gw, b = serving_gateway(3)
    load = Load(gw.listen, threads=8, duration=6, post_share=0.3).start()
    time.sleep(2)
    off_at = load.elapsed()
    for x in b[:2]:
        rnacos.set_enabled(SERVICE, LOOPBACK, x.port, False)
    load.wait()
    bound = off_at + 1.1 + 0.5  # refresh interval (1 s + 10 % jitter) + 500 ms
    late = [s for s in load.results() if s.instance in (b[0].addr, b[1].addr) and s.t > bound]
    assert not late, \
        f"{len(late)} requests reached a disabled instance after {bound - off_at:.1f} s"
    assert serving(gw.listen) == [b[2].addr]
    assert not load.errors(), load.summary()


# ----------------------------------------------------------------------------------------------
# 4: self-drain on the instance's sidecar + active notify + Envoy retry policy -> 0 errors

def inbound_sidecars(rnacos, make_envoy, apps):
    """An inbound lossless sidecar in front of each app, registered in rnacos as up for an hour;
    each has `.listen`, `.addr` (what is registered) and `.app`."""
    sidecars = []
    for i, app in enumerate(apps):
        listen = free_port()
        me = f"{LOOPBACK}:{listen}"
        cfg = filter_config(rnacos.addr, mode="inbound",
                            inbound={"service": "demo", "self_address": me})
        sc = make_envoy(INBOUND, subs(rnacos.http_port, cfg, listen=listen, app_port=app.port),
                        name=f"sidecar{i}")
        sc.listen, sc.addr, sc.app = listen, me, app
        sidecars.append(sc)
        register(rnacos, listen, now_ms() - HOUR_MS)
    return sidecars


def test_self_drain_notify_and_retry_lose_nothing(rnacos, backends, make_envoy, make_gateway):
    apps = backends(3)
    sidecars = inbound_sidecars(rnacos, make_envoy, apps)
    gw = make_gateway(rnacos.http_port, filter_config(rnacos.addr), [s.addr for s in sidecars])
    wait_until(lambda: len(serving(gw.listen)) == 3, timeout=10)
    for sc in sidecars:
        wait_until(lambda sc=sc: membership(sc.listen)["self"]["seen_serving"], timeout=10)

    load = Load(gw.listen, threads=8, duration=12, post_share=0.3).start()
    time.sleep(2)
    # (a) the preStop hook: POST /lossless/drain on the sidecar, from loopback
    drained_at = load.elapsed()
    status, _, body = request("POST", f"http://{LOOPBACK}:{sidecars[0].listen}/lossless/drain",
                              body=b"")
    assert status == 200 and json.loads(body)["draining"] is True
    time.sleep(4)
    # (b) the registry marks the second instance offline (Nacos enabled=false)
    offline_at = load.elapsed()
    rnacos.set_enabled(SERVICE, LOOPBACK, sidecars[1].listen, False)
    load.wait()

    assert not load.errors(), load.summary()
    # the gateway learned of the drain from the drain header on normal responses (counted in the
    # worker VMs, added to the stat on their next tick)
    time.sleep(0.3)
    marks = gw.stat("wasmcustom.lossless.notify_marks", 0)
    assert marks >= 1, (f"notify_marks = {marks}", membership(sidecars[0].listen),
                        {k: v for k, v in gw.stats().items() if "lossless" in k})
    late = [s for s in load.results() if s.instance == apps[0].addr and s.t > drained_at + 1.0]
    assert not late, f"{len(late)} requests reached the manually drained instance after 1 s"
    late = [s for s in load.results() if s.instance == apps[1].addr and s.t > offline_at + 1.6]
    assert not late, f"{len(late)} requests reached the offline instance after 1.6 s"
    # the drained sidecar answers new requests 503 + drain header + retry-after
    status, headers, _ = request("GET", f"http://{LOOPBACK}:{sidecars[0].listen}/")
    assert status == 503
    assert headers.get("x-lossless-drain") == "self_draining"
    assert headers.get("retry-after") == "1"
    # and the registry-offline one as well, within its grace
    wait_until(lambda: request("GET", f"http://{LOOPBACK}:{sidecars[1].listen}/")[0] == 503,
               timeout=5)
    # a non-loopback caller cannot drain: the endpoint checks the peer, not headers (cannot
    # be exercised from loopback; the unit of that check is in the filter)


def test_two_tiers_of_lossless_do_not_mark_each_other(rnacos, backends, make_envoy, make_gateway):
    """A lossless gateway in front of lossless gateways (a middle tier, e.g. a BFF): a draining
    instance behind the middle tier is that tier's business. Its drain header stops at the
    middle tier, which must not read as "draining" one tier up; nor must the middle tier's own
    503 `none_serving` when all of its instances are gone. Otherwise the front tier would mark
    every middle gateway out for good (no new start time ever clears such a mark)."""
    sidecars = inbound_sidecars(rnacos, make_envoy, backends(2))
    upstreams = [s.addr for s in sidecars]
    middle = [make_gateway(rnacos.http_port, filter_config(rnacos.addr), upstreams,
                           name=f"middle{i}") for i in range(2)]
    for gw in middle:
        register(rnacos, gw.listen, now_ms() - HOUR_MS, service="front-svc")
    front_cfg = filter_config(rnacos.addr, service={"registry_service": "front-svc"})
    front = make_gateway(rnacos.http_port, front_cfg, [f"{LOOPBACK}:{gw.listen}" for gw in middle],
                         name="front")
    for gw in middle + [front]:
        wait_until(lambda gw=gw: len(serving(gw.listen)) == 2, timeout=10, what="2 serving")

    def send(n):
        out = []
        for _ in range(n):
            status, headers, _ = request("GET", f"http://{LOOPBACK}:{front.listen}/")
            out.append((status, headers.get("x-lossless-drain")))
        return out

    assert all(r == (200, None) for r in send(10))
    # one instance behind the middle tier drains (served with the drain header during its grace,
    # then refused): the middle tier marks it; nothing reaches the front tier's caller
    drain = f"http://{LOOPBACK}:{sidecars[0].listen}/lossless/drain"
    assert request("POST", drain, body=b"")[0] == 200
    results = send(40)
    time.sleep(1.2)  # past notify_grace_ms: refusals now
    results += send(40)
    assert all(r == (200, None) for r in results), results
    time.sleep(0.3)  # worker stats reach the process on the next tick
    assert sum(gw.stat("wasmcustom.lossless.notify_marks", 0) for gw in middle) >= 1
    assert front.stat("wasmcustom.lossless.notify_marks", 0) == 0
    assert len(serving(front.listen)) == 2, membership(front.listen)
    # the last instance drains too: the middle tier answers 503 none_serving itself
    request("POST", f"http://{LOOPBACK}:{sidecars[1].listen}/lossless/drain", body=b"")
    wait_until(lambda: send(1)[0][0] == 503, timeout=5, what="503 from the middle tier")
    assert all(r[1] is None for r in send(10))
    assert front.stat("wasmcustom.lossless.notify_marks", 0) == 0
    drained = [i for i in membership(front.listen)["services"][0]["instances"] if i["marked"]]
    assert not drained, drained
    # the instances restart (undrained, a newer start time in the registry): the middle tier's
    # marks go, and the front tier, which marked nothing, routes again at once
    for sc in sidecars:
        request("POST", f"http://{LOOPBACK}:{sc.listen}/lossless/undrain", body=b"")
        register(rnacos, sc.listen, now_ms() - HOUR_MS + 60_000)
    wait_until(lambda: send(1)[0][0] == 200, timeout=10, what="200 again")
    assert all(r == (200, None) for r in send(10))


# ----------------------------------------------------------------------------------------------
# 5: registry killed for 20 s, then garbage / 500 / stalls: traffic continues, only stats change

def test_registry_outage_and_garbage_change_only_stats(rnacos, registry_front, serving_gateway):
    front = registry_front
    gw, b = serving_gateway(3, registry=front)
    load = Load(gw.listen, threads=8, duration=37, post_share=0.2).start()
    time.sleep(2)
    failed0 = gw.stat("wasmcustom.lossless.demo.refresh_failed", 0)
    rnacos.kill()
    time.sleep(20)
    failed1 = gw.stat("wasmcustom.lossless.demo.refresh_failed", 0)
    assert failed1 - failed0 >= 10, "refresh failures are counted while the registry is down"
    rnacos.start()
    # rnacos 0.8.8 can lose its data on restart (a known panic in its raft apply thread):
    # register again, as the instances' own heartbeats would
    for x in b:
        register(rnacos, x.port, now_ms() - HOUR_MS)
    # an empty list is held back for guard.confirm_refreshes (3) refreshes: 1.5 s is one or two
    for mode, secs in (("garbage", 3), ("500", 3), ("stall", 4), ("empty", 1.5)):
        front.mode(mode)
        time.sleep(secs)
        assert serving(gw.listen) == sorted(x.addr for x in b), f"membership changed in mode {mode}"
    front.mode("pass")
    load.wait()
    assert not load.errors(), load.summary()
    counts = load.counts()
    assert all(counts[x.addr] > 200 for x in b), counts
    st = gw.stats()
    assert st["wasmcustom.lossless.demo.refresh_failed"] > failed1
    assert st["wasmcustom.lossless.demo.refresh_kept"] >= 1, "the empty list was held back"
    assert st["wasmcustom.lossless.demo.hosts_serving"] == 3


# ----------------------------------------------------------------------------------------------
# 6: --concurrency 4 -> one registry list request per interval, not four

def test_one_poller_per_process(registry_front, serving_gateway):
    gw, _ = serving_gateway(2, registry=registry_front, concurrency=4)
    # traffic on every worker while we count
    load = Load(gw.listen, threads=8, duration=11).start()
    c0 = registry_front.count()["lists"]
    time.sleep(10)
    c1 = registry_front.count()["lists"]
    load.wait()
    assert 8 <= c1 - c0 <= 12, f"{c1 - c0} list requests in 10 s with --concurrency 4"
    assert not load.errors(), load.summary()


def test_one_poller_from_the_first_tick(registry_front, make_gateway):
    """--concurrency 8, all workers starting together: the lease is taken by compare-and-swap on
    a key created with a CAS no live key carries, so exactly one VM polls from the first tick
    (Envoy's shared data does not check a CAS on an absent key). Counted at a registry front from
    Envoy's start: one list request per interval (api v1 here, so no API detection requests)."""
    port = int(registry_front.addr.rsplit(":", 1)[1])
    c0 = registry_front.count()["lists"]
    cfg = filter_config(registry_front.addr, registry={"api": "v1"})
    gw = make_gateway(port, cfg, [], concurrency=8,
                      extra_args=["--file-flush-interval-msec", "100"])
    started = time.monotonic()
    time.sleep(5.0)
    c1 = registry_front.count()["lists"]
    elapsed = time.monotonic() - started
    # one per interval (1 s +- 10 %) since the first tick, whatever the start-up took
    n = c1 - c0
    assert 3 <= n <= elapsed / 0.9 + 1, f"{n} list requests in {elapsed:.1f} s with 8 workers"
    time.sleep(0.3)  # the log file is flushed every 100 ms
    polls = gw.log_text().count("this VM now polls the registry")
    assert polls == 1, f"{polls} VMs took the poller lease"


# ----------------------------------------------------------------------------------------------
# an instance killed without goodbye: Envoy retries elsewhere, lossless ejects it for everyone

def test_killed_instance_is_left_out_for_all_workers(serving_gateway):
    gw, b = serving_gateway(3, concurrency=2)
    # GETs: a request in flight on the crashed instance is retried too (retry_on reset applies to
    # idempotent methods only; a POST in flight at the crash cannot be retried blindly)
    load = Load(gw.listen, threads=8, duration=6).start()
    time.sleep(2)
    killed_at = load.elapsed()
    b[0].kill()
    load.wait()
    # a response the instance had started to send when it died cannot be saved by any proxy (its
    # headers are already with the client); every request that had no answer yet is retried
    lost = [s for s in load.errors()
            if not (s.error and "IncompleteRead" in s.error and s.t <= killed_at + 0.05)]
    assert not lost, load.summary()
    assert len(load.errors()) <= 3, load.summary()
    ejected = gw.stat("wasmcustom.lossless.demo.outlier_detection.ejections_enforced", 0)
    assert ejected == 1, f"ejections_enforced = {ejected}"
    doc = membership(gw.listen)
    dead = [i for i in doc["services"][0]["instances"] if i["address"] == b[0].addr][0]
    assert dead["state"] == "down" and dead["ejected"]["times"] == 1, dead
    # after the mark, requests stop going to the dead address at all: no more retries needed
    retried_late = gw.stat("cluster.demo.upstream_rq_retry", 0)
    time.sleep(1)
    Load(gw.listen, threads=4, count=400).run()
    assert gw.stat("cluster.demo.upstream_rq_retry", 0) == retried_late


# ----------------------------------------------------------------------------------------------
# 7: a client's own routing header never reaches an address outside the membership

@pytest.mark.compat
@pytest.mark.parametrize("template", [OUTBOUND, ORIGINAL_DST],
                         ids=["override_host", "original_dst"])
def test_client_cannot_steer_routing(rnacos, backends, make_gateway, template):
    member, secret = backends(2)
    register(rnacos, member.port, now_ms() - HOUR_MS)
    mode = "original_dst" if template == ORIGINAL_DST else "override_host"
    gw = make_gateway(rnacos.http_port,
                      filter_config(rnacos.addr, service={"routing": {"mode": mode}}),
                      [member.addr, secret.addr], template=template)
    wait_until(lambda: serving(gw.listen) == [member.addr], timeout=10)
    for headers in ({"x-lossless-upstream": secret.addr},
                    {"x-lossless-upstream": f"{secret.addr},{secret.addr}"},
                    {"x-pin": secret.addr},
                    # a value that is not UTF-8 (obs-text, RFC 9110 5.5) must not stop the filter
                    {"x-lossless-upstream": "\xff" + secret.addr},
                    {"x-envoy-original-dst-host": secret.addr},
                    {"host": secret.addr}):
        for _ in range(20):
            status, h, _ = request("GET", f"http://{LOOPBACK}:{gw.listen}/", headers=headers)
            assert status == 200 and h.get("x-instance") == member.addr, (headers, status, h)
    assert secret.total() == 0
    # counted in each worker VM, added to Envoy's stat on its next tick (100 ms)
    wait_until(lambda: gw.stat("wasmcustom.lossless.client_header_stripped", 0) >= 40, timeout=2,
               what="client_header_stripped >= 40")
    # nor can an upstream stop the filter with a drain header that is not UTF-8: it is no
    # notice (the instance keeps its traffic), and it does not travel on to the client
    member.drain_header(value=b"\xffself_draining")
    for _ in range(20):
        status, h, _ = request("GET", f"http://{LOOPBACK}:{gw.listen}/")
        assert status == 200 and h.get("x-instance") == member.addr, (status, h)
        assert "x-lossless-drain" not in h, h
    assert serving(gw.listen) == [member.addr]


# ----------------------------------------------------------------------------------------------
# 8: a bad config makes Envoy refuse the filter with a message naming the field

@pytest.mark.compat
def test_bad_config_is_refused_naming_the_field(procs, tmp_logs, envoy_bin, wasm_path):
    bad = json.dumps({"registries": {"nacos": {"type": "nacos", "cluster": "registry",
                                               "authority": "x"}},
                      "services": [{"name": "demo", "registry": "nacos",
                                    "routing": {"mode": "nearest"}}]})
    env = Envoy(procs, tmp_logs, OUTBOUND, subs(free_port(), bad), name="badcfg", binary=envoy_bin)
    with pytest.raises(RuntimeError):
        env.start(timeout=20)
    log = env.log_text()
    assert "services[0].routing.mode" in log and "unknown variant `nearest`" in log, env.log_tail()
    wait_until(lambda: not env.is_alive(), timeout=10, what="envoy to exit")


# ----------------------------------------------------------------------------------------------
# Envoy configs shipped in envoy/ are valid

@pytest.mark.compat
@pytest.mark.parametrize("template", [OUTBOUND, ORIGINAL_DST, INBOUND], ids=lambda p: p.stem)
def test_shipped_configs_validate(tmp_logs, envoy_bin, wasm_path, template):
    cfg = filter_config("127.0.0.1:8848")
    rc, out = Envoy.validate(template, subs(8848, cfg, ["127.0.0.1:9001"], app_port=9002),
                             tmp_logs, binary=envoy_bin)
    assert rc == 0, out
