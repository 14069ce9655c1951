"""The registry's bad days under load, lossless beside plain Envoy in the same run
(docs/registry-bad-days.md has the rules these runs prove).

Each run: instances of backend.py registered in rnacos; two gateways over the same instance slots,
each under its own open-loop load of 100 req/s with 30 % POSTs: lossless in override_host mode
(the shipped template) and plain Envoy with active health checks and outlier detection
(templates/plain-health.yaml: GET /healthz every 1 s, 0.5 s timeout, down after 2 failures).
Plain Envoy has no registry: it follows the instances' own health checks, so each scenario's
registry fault does not reach it; its figures say what the same release costs without lossless.
Every request is logged by both gateways (start, upstream host, status, flags, method): "last new
request" to an instance is the start of the last request a gateway sent it.

(a) rnacos stopped (the process gone) for the length of a polite release: three successors
    registered, then the registry goes away and the three old instances leave one by one, each
    the polite way (its sidecar's drain header on its responses and its /healthz failing, then
    stopped after a grace); the registry comes back only after the last one stopped.
(b) rnacos restarted without its data (a fresh, empty process) while the instances register again
    one by one, 2 s apart, as Nacos clients' redo tasks do.
(c) an older view: the registry front answers every other list request with a reply saved before
    an instance left (a lagging replica or response cache beside an up-to-date one); the instance
    that left stays up and answering, so any request sent to it would be seen.
"""

import shutil
import threading
import time

import pytest

from harness import (
    GATEWAY_WORKERS,
    SERVICE,
    Gateways,
    RegFront,
    membership,
    ready,
    redo,
    register,
    serving_of,
    warm,
)
from kit import HOUR_MS, LOOPBACK, now_ms, wait_until

pytestmark = pytest.mark.usefixtures("no_wasm_crash")

GRACE_S = 3.0  # a departing instance answers with its drain header this long, then stops
STEP_S = 4.0  # between two departures


class Sampler(threading.Thread):
    """The lossless gateway's membership every 200 ms: [(t, [listed], [serving])] (None, None
    when the call failed). Listed is every member whatever its state; serving leaves out the
    draining and down ones, and those ejected or stalled from the traffic."""

    def __init__(self, port, clock):
        super().__init__(daemon=True)
        self.port, self.clock = port, clock
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = self.clock()
            try:
                doc = membership(self.port)
                listed = sorted(i["address"] for i in doc["services"][0]["instances"])
                self.samples.append((t, listed, serving_of(doc)))
            except (OSError, ValueError, KeyError):
                self.samples.append((t, None, None))
            self.halt.wait(0.2)

    def stop(self):
        self.halt.set()
        self.join(5)
        return self.samples


def bs_addr(backends):
    return sorted(b.addr for b in backends)


def leave_politely(b):
    """What a departing instance's sidecar and readiness do: the drain header on every response
    (lossless callers mark it draining at the first one), /healthz failing (plain Envoy's checks
    take it out)."""
    b.drain_header(True)
    b.set_health(503)


def test_registry_down_for_a_whole_polite_release(rnacos, make_backend, make_envoy, procs,
                                                   tmp_logs):
    """(a) rnacos is stopped from just after the successors registered until after the last old
    instance stopped: lossless keeps its last good membership, marks each leaving instance from
    its drain header, and loses nothing; it sends no new request to a leaving instance later than
    1 s after it started to leave; no more failures than plain Envoy."""
    old = [make_backend() for _ in range(3)]
    new = [make_backend() for _ in range(3)]
    warm(rnacos, old)
    gws = Gateways(make_envoy, tmp_logs, rnacos,
                   [b.addr for b in old + new])
    ready(gws, 3)
    for b in new:
        register(rnacos, b.port, now_ms(), warmup_ms=3000)
    wait_until(lambda: len(serving_of(membership(gws.lossless.listen))) == 6, timeout=10,
               what="6 serving")
    load = gws.start_load(duration=2 + 3 * STEP_S + 6)
    time.sleep(1.0)
    rnacos.stop()
    down_at = gws.elapsed()
    time.sleep(1.0)
    faults = {}
    for b in old:
        faults[b.addr] = gws.elapsed()
        leave_politely(b)
        time.sleep(GRACE_S)
        b.stop()
        time.sleep(STEP_S - GRACE_S)
    rnacos.start()
    up_at = gws.elapsed()
    redo(rnacos, new, warmup_ms=3000)
    # the old instances' deregistration failed while it was down: it is done now, as their
    # clients' redo or the registry's expiry of ephemeral instances would
    listed = rnacos.hosts(SERVICE)
    for b in old:
        if b.addr in listed:
            rnacos.deregister(SERVICE, LOOPBACK, b.port)
    gws.wait()
    assert load.elapsed() > up_at + 2
    rows = gws.rows("registry down for a polite release", faults, lost=3)
    ll, plain = rows["lossless"], rows["plain"]
    print(f"registry down from {down_at:.1f} s to {up_at:.1f} s")
    assert ll["failed"] == 0, ll
    assert ll["failed"] <= plain["failed"], (ll, plain)
    for addr, late in ll["last_new_request_after_fault_s"].items():
        assert late <= 1.0, (addr, ll)
    # the membership was kept all along: the refreshes failed and were counted
    assert gws.lossless.stat("wasmcustom.lossless.demo.refresh_failed", 0) >= 3
    doc = membership(gws.lossless.listen)
    assert serving_of(doc) == sorted(b.addr for b in new), doc


def test_registry_back_empty_never_empties_the_membership(rnacos, make_backend, make_envoy,
                                                           procs, tmp_logs):
    """(b) rnacos restarted without its data while the three instances register again one by
    one, 2 s apart: every sample of lossless' membership lists the three (at least two of them
    serving: stall detection may take one out for a moment on a busy machine, never the
    registry), and no request fails; once all are back the window closes and a departure applies
    within a refresh."""
    bs = [make_backend() for _ in range(3)]
    warm(rnacos, bs)
    gws = Gateways(make_envoy, tmp_logs, rnacos, [b.addr for b in bs])
    ready(gws, 3)
    started = {b.port: now_ms() - HOUR_MS for b in bs}
    for b in bs:  # the same start times as registered (their registry client keeps them)
        register(rnacos, b.port, started[b.port], warmup_ms=1000)
    gws.start_load(duration=18)
    sampler = Sampler(gws.lossless.listen, gws.elapsed)
    sampler.start()
    time.sleep(2.0)
    rnacos.stop()
    shutil.rmtree(rnacos.data_dir, ignore_errors=True)
    rnacos.data_dir.mkdir(parents=True)
    rnacos.start()
    restart_at = gws.elapsed()
    assert rnacos.hosts(SERVICE) == {}, "a fresh rnacos knows no instance"
    time.sleep(2.5)  # a few empty replies first
    back = []
    for b in bs:
        register(rnacos, b.port, started[b.port], warmup_ms=1000)
        back.append((b.addr, round(gws.elapsed(), 1)))
        time.sleep(2.0)
    time.sleep(1.5)
    # all listed again: the window closed; a departure now applies within a refresh
    gone = bs[2]
    rnacos.deregister(SERVICE, LOOPBACK, gone.port)
    gone_at = gws.elapsed()
    wait_until(lambda: gone.addr not in serving_of(membership(gws.lossless.listen)),
               timeout=3, what="the departure applied at once")
    applied_after = gws.elapsed() - gone_at
    gws.wait()
    samples = sampler.stop()
    during = [(t, listed, srv) for t, listed, srv in samples if t < gone_at]
    fewest = min((len(srv) for _, _, srv in during if srv is not None), default=None)
    print(f"rnacos back empty at {restart_at:.1f} s; registered again {back}; "
          f"departure applied after {applied_after:.2f} s; {len(during)} membership samples, "
          f"all listing {sorted(bs_addr(bs))}: "
          f"{all(listed == bs_addr(bs) for _, listed, _ in during)}; fewest serving {fewest}")
    rows = gws.rows("registry back empty", {}, lost=0)
    ll = rows["lossless"]
    # the membership never shrank (a member can be out for a moment by its own traffic: a
    # stall; that is not the registry's doing, and never all of them)
    short = [(round(t, 1), listed) for t, listed, _ in during if listed != bs_addr(bs)]
    assert not short, short[:10]
    assert fewest is not None and fewest >= 2, during
    assert len(during) >= 40, len(during)
    assert ll["failed"] == 0, ll
    assert ll["failed"] <= rows["plain"]["failed"], rows
    assert applied_after <= 2.5


def test_older_view_never_brings_a_departed_instance_back(rnacos, make_backend, make_envoy, procs,
                                                         tmp_logs):
    """(c) an instance leaves the registry (deregistered; it stays up and answers, as in its
    grace) and every other list reply is the older view that still lists it, for 15 s (within
    `guard.departure_memory_ms`, 30 s): lossless sends it no new request later than a refresh
    plus 1 s after it left, no membership sample lists it serving after that, and no request
    fails."""
    bs = [make_backend() for _ in range(3)]
    warm(rnacos, bs)
    front = RegFront(procs, rnacos.addr)
    gws = Gateways(make_envoy, tmp_logs, front, [b.addr for b in bs])
    ready(gws, 3)
    front.save()  # the view with all three: what a lagging replica keeps answering
    gws.start_load(duration=20)
    sampler = Sampler(gws.lossless.listen, gws.elapsed)
    sampler.start()
    time.sleep(2.0)
    gone = bs[2]
    gone.set_health(503)  # plain Envoy's way to see it leave: its checks
    rnacos.deregister(SERVICE, LOOPBACK, gone.port)
    left_at = gws.elapsed()
    time.sleep(1.5)
    front.mode("cycle:pass,replay")
    replay_from = gws.elapsed()
    time.sleep(15.0)
    front.mode("pass")
    gws.wait()
    samples = sampler.stop()
    rows = gws.rows("older view", {gone.addr: left_at}, lost=0)
    ll = rows["lossless"]
    modes = front.count()["modes"]
    print(f"left at {left_at:.1f} s; older view every other reply from {replay_from:.1f} s; "
          f"front modes {modes}")
    assert modes.get("replay", 0) >= 5, modes
    back = [(round(t, 1), srv) for t, _, srv in samples
            if t > left_at + 2.0 and srv and gone.addr in srv]
    assert not back, back[:10]
    late = ll["last_new_request_after_fault_s"][gone.addr]
    assert late <= 2.0, ll  # refresh interval (1 s) + margin
    assert ll["sent_after_fault_plus_1s"].get(gone.addr, 0) <= 2 * GATEWAY_WORKERS * 3, ll
    assert ll["failed"] == 0, ll
    assert ll["failed"] <= rows["plain"]["failed"], rows
    # the rest kept their share
    assert len(serving_of(membership(gws.lossless.listen))) == 2
