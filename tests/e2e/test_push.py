"""Membership pushed by the registry (Nacos' gRPC protocol) inside a real Envoy (`--concurrency
2`) against a real rnacos: each change reaches every worker through a push, the registry's HTTP
list load falls to the reconcile polls, a cut stream keeps the membership and comes back, and the
push works with auth on; a rolling release under load with the stream cut in its middle loses
nothing.

The filter polls rnacos' HTTP API through regproxy.py (which counts list requests) and subscribes
on rnacos' gRPC port through the Envoy cluster `registry-grpc` (HTTP/2), added here to the shipped
outbound template. Each worker VM answers the admin membership call for itself (`vm` in the
document); a fresh connection per call lands on either worker.
"""

import re
import time

import pytest

from harness import (
    SERVICE,
    Gateways,
    RegFront,
    filter_config,
    membership,
    push_template,
    ready,
    redo,
    register,
    serving_of,
    warm,
)
from kit import (
    HOUR_MS,
    LOOPBACK,
    Rnacos,
    free_port,
    get_json,
    lb_endpoints,
    now_ms,
    percentile,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("no_wasm_crash")

RECONCILE_MS = 30_000
OTHER = "push-other-svc"

def push_config(http_addr, **registry):
    # api v1: rnacos has no other (with two services, `auto` would find that out by 404s)
    reg = {"api": "v1", "grpc_cluster": "registry-grpc", "reconcile_interval_ms": RECONCILE_MS}
    reg.update(registry)
    # the disable / enable round trip lists the instance again with no newer sign (Nacos gives
    # none): guard.departure_memory_ms 0 lets it back at once (docs/registry-bad-days.md, rule 2)
    services = [{"name": "demo", "registry": "nacos", "registry_service": SERVICE,
                 "guard": {"departure_memory_ms": 0}},
                {"name": "other", "registry": "nacos", "registry_service": OTHER}]
    return filter_config(http_addr, registry=reg, services=services)


def doc_of(gw):
    return get_json(f"http://{LOOPBACK}:{gw.listen}/lossless/membership")


def members(doc, service=0):
    """{address: (state, weight)} of a membership document's service."""
    return {i["address"]: (i["state"], i["weight"]) for i in doc["services"][service]["instances"]}


def worker_ids(gw, n=2):
    """The ids of the `n` worker VMs that answer requests (each call on a fresh connection)."""
    seen = set()
    wait_until(lambda: seen.add(doc_of(gw)["vm"]) or len(seen) >= n, timeout=10, interval=0.01,
               what=f"{n} worker VMs answering")
    return seen


def wait_applied(gw, workers, check, timeout=10.0):
    """Polls the membership (a fresh connection each time, ~every 5 ms) until every worker in
    `workers` shows a document for which check(doc) holds. Returns ({vm: first time seen, ms},
    the poller's `updated_ms` of the service then)."""
    first = {}
    updated = None
    deadline = time.monotonic() + timeout
    while len(first) < len(workers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not applied by every worker: {sorted(first)} of {sorted(workers)}")
        doc = doc_of(gw)
        t = now_ms()
        if doc["vm"] in workers and doc["vm"] not in first and check(doc):
            first[doc["vm"]] = t
            updated = doc["services"][0]["updated_ms"]
        time.sleep(0.005)
    return first, updated


def stat(gw, name):
    return gw.stat(f"wasmcustom.lossless.{name}", 0)


@pytest.fixture
def push_gateway(procs, tmp_logs, make_backend, make_envoy):
    """push_gateway(rnacos) -> (gateway, regfront, backends): 3 backends registered in rnacos
    (persistent, healthy, warm), a gateway (--concurrency 2) pushing from rnacos' gRPC port and
    polling through a counting regproxy, returned once push is up and both workers list the 3."""
    def make(rnacos, **registry):
        backends = [make_backend() for _ in range(3)]
        for b in backends:
            rnacos.register(SERVICE, LOOPBACK, b.port, metadata={"timestamp": now_ms() - HOUR_MS})
        rnacos.register(OTHER, LOOPBACK, backends[0].port)
        front = RegFront(procs, rnacos.addr, name=f"regproxy-{rnacos.name}")
        listen = free_port()
        subs = {"LISTEN_PORT": listen, "REGISTRY_PORT": front.port,
                "REGISTRY_GRPC_PORT": rnacos.grpc_port,
                "LOSSLESS_CONFIG": push_config(front.addr, **registry),
                "DEMO_ENDPOINTS": lb_endpoints([b.addr for b in backends])}
        gw = make_envoy(push_template(tmp_logs), subs, concurrency=2, name="gateway")
        gw.listen = listen
        wait_until(lambda: stat(gw, "push_connected") == 1, timeout=15, what="push connected")
        wait_until(lambda: len(members(doc_of(gw))) == 3, timeout=10, what="3 members")
        return gw, front, backends
    return make


def test_push_applies_changes_in_every_worker_and_idles_the_registry(rnacos, push_gateway):
    gw, front, backends = push_gateway(rnacos)
    workers = worker_ids(gw)
    a, b, c = (x.port for x in backends)
    addr = {p: f"{LOOPBACK}:{p}" for p in (a, b, c)}
    # the poll scheduled before the subscriptions went live goes out; from then on, reconcile only
    time.sleep(1.5)
    lists0, t0 = front.count()["lists"], time.monotonic()
    applied0 = stat(gw, "demo.push_applied")

    changes = [
        ("deregistration", lambda: rnacos.deregister(SERVICE, LOOPBACK, c),
         lambda d: addr[c] not in members(d)),
        ("registration", lambda: rnacos.register(SERVICE, LOOPBACK, c,
                                                 metadata={"timestamp": now_ms() - HOUR_MS}),
         lambda d: members(d).get(addr[c], ("", 0))[0] == "serving"),
        ("disable", lambda: rnacos.set_enabled(SERVICE, LOOPBACK, b, False),
         lambda d: addr[b] not in members(d)),
        ("enable", lambda: rnacos.set_enabled(SERVICE, LOOPBACK, b, True),
         lambda d: members(d).get(addr[b], ("", 0))[0] == "serving"),
        ("weight 2", lambda: rnacos.update(SERVICE, LOOPBACK, a, weight=2.0),
         lambda d: members(d)[addr[a]][1] == 200),
        ("weight 3", lambda: rnacos.update(SERVICE, LOOPBACK, a, weight=3.0),
         lambda d: members(d)[addr[a]][1] == 300),
    ]
    to_workers, fan_out = [], []
    for _round in range(3):
        for name, change, check in changes:
            change()
            changed = now_ms()
            first, updated = wait_applied(gw, workers, check)
            to_workers.append(max(first.values()) - changed)
            fan_out.append(max(first.values()) - updated)
            print(f"{name}: registry -> poller applied {updated - changed} ms, "
                  f"-> every worker {max(first.values()) - changed} ms")
    n = len(to_workers)
    p50, p99 = percentile(to_workers, 0.5), percentile(to_workers, 0.99)
    f50, f99 = percentile(fan_out, 0.5), percentile(fan_out, 0.99)
    print(f"{n} changes: registry change -> applied by every worker p50 {p50} ms, p99 {p99} ms; "
          f"poller's apply -> every worker p50 {f50} ms, p99 {f99} ms")
    # counters reach Envoy on the poller's next tick
    wait_until(lambda: stat(gw, "demo.push_applied") - applied0 >= n, timeout=2,
               what="each change applied as a push")
    # rnacos holds a change for 500 to 1000 ms before it pushes (naming_delay_nofity): that, some
    # slack for a loaded machine, and nothing like a 30 s poll
    assert p99 <= 2000, to_workers
    # once the poller applied it, every worker routes by it within a tick (100 ms)
    assert f99 <= 100, fan_out
    assert stat(gw, "push_acks") >= n

    # idle: only the reconcile polls reach the registry's HTTP API
    remaining = 62 - (time.monotonic() - t0)
    if remaining > 0:
        time.sleep(remaining)
    lists = front.count()["lists"] - lists0
    elapsed = time.monotonic() - t0
    rate = lists / elapsed / 2  # per proxy and service (2 services, 1 proxy)
    print(f"idle with push: {lists} list requests in {elapsed:.1f} s for 2 services: "
          f"{rate:.4f} per second per proxy and service (polling every 1 s: 1.0)")
    assert rate <= 0.05, (lists, elapsed)
    assert stat(gw, "push_stream_opened") == 1 and stat(gw, "push_stream_closed") == 0


def test_cut_stream_keeps_membership_polls_then_push_returns(rnacos, push_gateway):
    gw, front, backends = push_gateway(rnacos)
    before = members(doc_of(gw))
    assert len(before) == 3
    opened = stat(gw, "push_stream_opened")
    lists0 = front.count()["lists"]
    rnacos.stop()
    stopped = time.monotonic()
    # the stream is gone; polls run (and fail) every second; the membership stays
    wait_until(lambda: stat(gw, "push_connected") == 0, timeout=10, what="push down")
    print(f"push down {time.monotonic() - stopped:.2f} s after rnacos stopped")
    time.sleep(3)
    assert front.count()["lists"] - lists0 >= 2, "polls resume while the stream is down"
    assert members(doc_of(gw)) == before, "a cut stream keeps the membership"
    rnacos.start()
    started = time.monotonic()
    if len(rnacos.hosts(SERVICE)) < 3:  # a start retried past rnacos' own panic lost its data
        for x in backends:
            rnacos.register(SERVICE, LOOPBACK, x.port, metadata={"timestamp": now_ms() - HOUR_MS})
        rnacos.register(OTHER, LOOPBACK, backends[0].port)
    # the push comes back after its back-off (1 s, doubling while rnacos was away, 30 s at most)
    wait_until(lambda: stat(gw, "push_connected") == 1, timeout=40, what="push back",
               interval=0.05)
    print(f"push back {time.monotonic() - started:.2f} s after rnacos served again "
          f"(it was away {started - stopped:.1f} s)")
    assert stat(gw, "push_stream_opened") > opened
    assert members(doc_of(gw)) == before
    # and carries changes again
    time.sleep(1.5)
    lists1 = front.count()["lists"]
    workers = worker_ids(gw)
    c = f"{LOOPBACK}:{backends[2].port}"
    rnacos.deregister(SERVICE, LOOPBACK, backends[2].port)
    changed = now_ms()
    first, _ = wait_applied(gw, workers, lambda d: c not in members(d))
    print(f"after the cut: deregistration applied by every worker in "
          f"{max(first.values()) - changed} ms")
    assert max(first.values()) - changed <= 2000
    assert front.count()["lists"] - lists1 <= 1, "through the push, not a poll"


def test_push_with_auth(procs, tmp_logs, rnacos_bin, push_gateway):
    rn = Rnacos(procs, tmp_logs, binary=rnacos_bin, auth=True, name="rnacos-auth").start()
    gw, front, backends = push_gateway(rn, username="admin", password="admin")
    workers = worker_ids(gw)
    time.sleep(1.5)
    lists0 = front.count()["lists"]
    c = f"{LOOPBACK}:{backends[2].port}"
    rn.deregister(SERVICE, LOOPBACK, backends[2].port)
    changed = now_ms()
    first, _ = wait_applied(gw, workers, lambda d: c not in members(d))
    print(f"auth on: deregistration applied by every worker in {max(first.values()) - changed} ms")
    assert max(first.values()) - changed <= 2000
    assert front.count()["lists"] - lists0 <= 1, "through the push, not a poll"
    assert front.seen()["logins"] >= 1
    # a refused list logs "HTTP 403", a refused gRPC call "answered error 403:"
    refused = r"push message ignored|HTTP 40[13]\b|answered error 40[13]:"
    assert not re.search(refused, gw.log_text()), gw.log_tail()


def deregistered(rnacos, b, clock):
    """Deregisters backend `b` and returns `clock()` when rnacos stopped listing it. rnacos 0.8.8
    a few seconds after a restart has answered "ok" to a deregistration and kept listing the
    instance: the deregistration is sent again then (every 0.5 s, 10 times at most)."""
    for _ in range(10):
        rnacos.deregister(SERVICE, LOOPBACK, b.port)
        at = clock()
        time.sleep(0.5)
        if b.addr not in rnacos.hosts(SERVICE):
            return at
        print(f"rnacos still lists {b.addr} 0.5 s after its deregistration: sent again")
    raise AssertionError(f"rnacos kept {b.addr} through 10 deregistrations")


def test_rolling_release_under_load_with_the_stream_cut(rnacos, make_backend, make_envoy, procs,
                                                        tmp_logs):
    """A rolling release of three instances under load (100 req/s to each gateway, 30 % POSTs),
    lossless with the membership pushed beside plain Envoy with active checks and outlier
    detection. Each old instance leaves as a Spring application on Nacos does: a successor
    registers, then the old one deregisters and fails its readiness, and exits after a grace.
    The first leaves while the push stream is up; then the stream is cut (rnacos stopped and
    started again, each instance registered again as its client's redo would); the second leaves
    right after the registry is back, while lossless polls and its stream backs off; the third
    once the push is back. lossless loses nothing, never more than plain Envoy, and sends no new
    request to a leaving instance after its grace."""
    old = [make_backend() for _ in range(3)]
    new = [make_backend() for _ in range(3)]
    warm(rnacos, old)
    gws = Gateways(make_envoy, tmp_logs, rnacos, [b.addr for b in old + new],
                   grpc_port=rnacos.grpc_port)
    ll = gws.lossless
    wait_until(lambda: stat(ll, "push_connected") == 1, timeout=15, what="push connected")
    ready(gws, 3)
    grace_s = 3.0
    load = gws.start_load(duration=45)
    faults, regimes = {}, {}

    def step(k):
        register(rnacos, new[k].port, now_ms(), warmup_ms=2000)
        time.sleep(1.0)
        b = old[k]
        regimes[b.addr] = "push" if stat(ll, "push_connected") == 1 else "polls"
        b.set_health(503)
        faults[b.addr] = deregistered(rnacos, b, gws.elapsed)
        time.sleep(grace_s)
        b.stop()

    time.sleep(2.0)
    step(0)
    opened = stat(ll, "push_stream_opened")
    rnacos.stop()
    cut_at = gws.elapsed()
    wait_until(lambda: stat(ll, "push_connected") == 0, timeout=10, what="push down")
    time.sleep(1.0)
    rnacos.start()
    back_at = gws.elapsed()
    redo(rnacos, old[1:] + new[:1])
    step(1)
    wait_until(lambda: stat(ll, "push_connected") == 1, timeout=40, what="push back",
               interval=0.05)
    pushed_at = gws.elapsed()
    step(2)
    gws.wait()
    assert load.elapsed() > gws.elapsed() - 5
    rows = gws.rows("rolling release, push stream cut", faults, lost=3)
    lo, plain = rows["lossless"], rows["plain"]
    print(f"stream cut at {cut_at:.1f} s, registry back at {back_at:.1f} s, push back at "
          f"{pushed_at:.1f} s; each departure carried by {regimes}")
    assert list(regimes.values())[0] == "push" and list(regimes.values())[2] == "push", regimes
    assert lo["failed"] == 0, lo
    assert lo["failed"] <= plain["failed"], (lo, plain)
    for addr, late in lo["last_new_request_after_fault_s"].items():
        assert late < grace_s, (addr, lo)
    assert stat(ll, "push_stream_opened") > opened
    doc = membership(ll.listen)
    assert serving_of(doc) == sorted(b.addr for b in new), doc
