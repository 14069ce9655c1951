"""The caller's own proxy restarts while the registry cannot be reached, under load, lossless
beside plain Envoy in the same run.

Five instance slots: two warm instances, one warming (registered with a start time a few seconds
old and a 60 s warm-up), one leaving politely (its sidecar's drain header on every response, its
/healthz failing; still up, in its grace) and one killed (registered, refusing connections).
Before the fault lossless has learnt all of that: the warming one ramps, the leaving one is marked
draining, the killed one ejected; plain Envoy (templates/plain-health.yaml: GET /healthz every
1 s, down after 2 failures; outlier detection) has checked them. Then rnacos stops, and:

(a) the gateways are hot restarted (`--restart-epoch 1`, the same `--base-id`): a new process
    takes over the listen sockets, the old one drains (2 s) and exits; lossless runs in both
    routing modes (override_host and the shipped original_dst template, once without and once
    with `routing.no_membership_addresses`);
(b) lossless' listener is replaced through LDS with a changed filter configuration, in the same
    process (plain Envoy runs beside under the same load, unchanged).

Ten seconds later rnacos comes back with its data. Per gateway: failed requests (GET / POST), the
requests the new process (or configuration) sent to each instance while the registry was down
and after it came back, and how long lossless took to learn the membership again. Envoy's shared
data, where lossless keeps its membership and marks, belongs to one process
(proxy-wasm-cpp-host's `getGlobalSharedData()`, a static of the process) and lossless' keys to
one configuration (`store::Keys`), so neither survives: the new process or configuration routes
by Envoy's own load balancing until the registry answers (override_host fails open), and takes
the warm-up from the instances' registered start times once it does.
"""

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from harness import (
    ORIGINAL_DST,
    OUTBOUND,
    SERVICE,
    TEMPLATES,
    access_log,
    filter_config,
    membership,
    register,
    with_access_log,
)
from kit import (
    HOUR_MS,
    Envoy,
    MixedLoad,
    free_port,
    lb_endpoints,
    now_ms,
    render,
    resolve_template,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("no_wasm_crash")

RATE = 100  # per gateway
POST_SHARE = 0.3
WORKERS = 2
WARMUP_MS = 60_000
HOT = ["--file-flush-interval-msec", "250", "--drain-time-s", "2", "--parent-shutdown-time-s",
       "4"]
FAULT_AT = 4.0  # s after the loads start
DOWN_FOR = 10.0  # the registry stays down this long after the fault
MIN_DOWN_LIVE = 4.0  # ... and at least this long after the new processes are live
DURATION = FAULT_AT + DOWN_FOR + 8.0


def dubbo_weight(uptime_ms, warmup_ms, weight=100):
    """Dubbo's getWeight for an instance `uptime_ms` old (uptime 0 or past warmup: full)."""
    if uptime_ms <= 0 or uptime_ms >= warmup_ms:
        return weight
    return max(1, min(int(uptime_ms / (warmup_ms / weight)), weight))


class Fleet:
    def __init__(self, rnacos, make_backend, procs):
        self.a, self.b, self.warming, self.leaving, self.killed = (
            make_backend() for _ in range(5))
        self.start_ms = now_ms() - 3000
        old = now_ms() - HOUR_MS
        self.registered = {x.addr: (x.port, old, 1000)
                           for x in (self.a, self.b, self.leaving, self.killed)}
        self.registered[self.warming.addr] = (self.warming.port, self.start_ms, WARMUP_MS)
        for port, start, warmup in self.registered.values():
            register(rnacos, port, start, warmup_ms=warmup)
        self.leaving.drain_header(True)
        self.leaving.set_health(503)
        self.killed.kill()
        self.all = [self.a, self.b, self.warming, self.leaving, self.killed]

    def redo(self, rnacos):
        """What the live instances' registry clients do when the registry comes back without
        them (their redo of the registration, with the same start time): rnacos 0.8.8 sometimes
        panics in its raft apply at start and then loses what it had (kit.rnacos)."""
        listed = rnacos.hosts(SERVICE)
        for addr, (port, start, warmup) in self.registered.items():
            if addr not in listed and addr != self.killed.addr:
                register(rnacos, port, start, warmup_ms=warmup)

    @property
    def addrs(self):
        return [x.addr for x in self.all]

    def role(self, addr):
        for name in ("a", "b", "warming", "leaving", "killed"):
            if getattr(self, name).addr == addr:
                return name
        return addr


def logged(template, prefix, workdir, name):
    """`template` with an access log of its own (`<name>.access.log`), rendered in a directory of
    its own so that each epoch gets its file."""
    d = Path(workdir) / name
    d.mkdir(exist_ok=True)
    log = d / f"{name}.access.log"
    return with_access_log(template, prefix, log, d), log


def hosts(log_path, offset, lo, hi):
    """Counter of upstream hosts of the requests logged in [lo, hi) (load clock), and the
    statuses."""
    if not Path(log_path).exists():
        return Counter(), Counter()
    gw = type("G", (), {"access_log": Path(log_path)})
    rows = [(s - offset, h, st) for s, h, st, *_ in access_log(gw)]
    sel = [(h, st) for t, h, st in rows if lo <= t < hi]
    return Counter(h for h, _ in sel), Counter(st for _, st in sel)


def failed_row(load, shift=0.0):
    samples = load.results()
    failed = [s for s in samples if s.status != 200]
    by = Counter(s.method for s in failed)
    return {"requests": len(samples), "failed": len(failed), "failed_get": by.get("GET", 0),
            "failed_post": by.get("POST", 0),
            "first_failures": [(round(s.t - shift, 2), s.method, s.status, s.error)
                               for s in failed[:5]]}


def relearnt(port, fleet):
    """The membership once lossless has one again with the four live instances, else None."""
    try:
        doc = membership(port)
    except (OSError, ValueError):
        return None
    svc = doc["services"][0]
    live = {fleet.a.addr, fleet.b.addr, fleet.warming.addr, fleet.leaving.addr}
    if svc["version"] == 0 or not live <= {i["address"] for i in svc["instances"]}:
        return None
    return doc


def by_role(doc, fleet):
    return {fleet.role(i["address"]): i for i in doc["services"][0]["instances"]}


def settle(port, fleet):
    """Before the fault: lossless lists the five, the leaving one marked draining from its drain
    header, the killed one down (rnacos' own TCP probe of a persistent instance) or ejected
    after its first refused connection."""
    def ok():
        inst = by_role(membership(port), fleet)
        return (len(inst) == 5 and inst["leaving"]["state"] != "serving"
                and (inst["killed"]["state"] == "down" or inst["killed"]["ejected"] is not None)
                and inst["warming"]["warming"])
    try:
        return wait_until(ok, timeout=10, what="leaving marked, killed ejected")
    except TimeoutError as exc:
        raise AssertionError(by_role(membership(port), fleet)) from exc


def last_sent(log_path, offset, addr):
    """When `addr` got its last request (load clock), None if never."""
    if not Path(log_path).exists():
        return None
    gw = type("G", (), {"access_log": Path(log_path)})
    times = [s - offset for s, h, *_ in access_log(gw) if h == addr]
    return max(times) if times else None


def summary(kind, fleet, row, log, offset, fault, back, end):
    during, st_during = hosts(log, offset, fault, back)
    after, _ = hosts(log, offset, back + 2.0, end)
    last = last_sent(log, offset, fleet.leaving.addr)
    row.update({
        "leaving_last_request_after_fault_s": (round(max(last - fault, 0.0), 2)
                                               if last is not None else None),
        "gateway": kind,
        "sent_while_registry_down": {fleet.role(h): n for h, n in during.items()},
        "statuses_while_registry_down": dict(st_during),
        "sent_after_registry_back_plus_2s": {fleet.role(h): n for h, n in after.items()},
    })
    print(f"RESTART {row}")
    return row


def test_hot_restart_while_the_registry_is_down(rnacos, make_backend, procs, tmp_logs, envoy_bin):
    """(a) Hot restart of the gateways with rnacos down. lossless' new process has no
    membership: in override_host mode its first requests are routed (it fails open to the
    cluster's round robin), none fails; it re-learns the membership within 3 s of rnacos' return,
    with the warming instance's weight Dubbo's at its registered start time (the ramp was not
    reset), and the leaving instance gets no new request from 2 s after that on; never more
    failures than plain Envoy, hot restarted beside it. In original_dst mode (the shipped
    template) the new process has no address to send to: every request it gets before the
    membership is back is answered 503 no_membership, and none other fails. With
    `routing.no_membership_addresses` (two of the warm instances' addresses, as an operator would
    list a stable address) the same new process sends every request to those until the registry
    answers, none fails, and the membership takes over once it does (the warming instance gets
    its share, the leaving one nothing)."""
    fleet = Fleet(rnacos, make_backend, procs)
    stable = [fleet.a.addr, fleet.b.addr]
    gws, logs = {}, {}
    for kind in ("lossless", "original_dst_stable", "original_dst", "plain"):
        subs = {"LISTEN_PORT": free_port(), "REGISTRY_PORT": rnacos.http_port,
                "DEMO_ENDPOINTS": lb_endpoints(fleet.addrs)}
        prefix = "ingress"
        if kind == "plain":
            subs.update(HC_INTERVAL="1s", HC_TIMEOUT="0.5s")
            base = TEMPLATES / "plain-health.yaml"
        elif kind == "original_dst":
            subs["LOSSLESS_CONFIG"] = filter_config(
                rnacos.addr, service={"routing": {"mode": "original_dst"}})
            base, prefix = ORIGINAL_DST, "demo_pick"  # the inner hop names the instance
        elif kind == "original_dst_stable":
            subs["LOSSLESS_CONFIG"] = filter_config(
                rnacos.addr, service={"routing": {"mode": "original_dst",
                                                  "no_membership_addresses": stable}})
            base, prefix = ORIGINAL_DST, "demo_pick"
        else:
            subs["LOSSLESS_CONFIG"] = filter_config(rnacos.addr)
            base = OUTBOUND
        template, log = logged(base, prefix, tmp_logs, f"{kind}-e0")
        gw = Envoy(procs, tmp_logs, resolve_template(template, TEMPLATES), subs,
                   concurrency=WORKERS, name=kind, binary=envoy_bin, extra_args=HOT,
                   hot_restart=True).start()
        gw.listen, gw.base, gw.prefix = int(subs["LISTEN_PORT"]), base, prefix
        gws[kind], logs[kind] = gw, [log]
    loads = {k: MixedLoad(g.listen, rate=RATE, post_share=POST_SHARE, threads=40,
                          duration=DURATION, timeout=12, record_headers=("x-lossless-drain",))
             for k, g in gws.items()}
    for load in loads.values():
        load.start()
    offset = time.time() - loads["lossless"].elapsed()
    settle(gws["lossless"].listen, fleet)
    time.sleep(max(0.0, FAULT_AT - 1.0 - loads["lossless"].elapsed()))
    rnacos.stop()
    time.sleep(max(0.0, FAULT_AT - loads["lossless"].elapsed()))
    fault = time.time() - offset
    new = {}
    for kind, gw in gws.items():
        template, log = logged(gw.base, gw.prefix, tmp_logs, f"{kind}-e1")
        new[kind] = gw.hot_restarted(template=template)
        new[kind].listen = gw.listen
        logs[kind].append(log)
    live_at = time.time() - offset
    first = membership(new["lossless"].listen)
    assert first["services"][0]["version"] == 0, "shared data does not outlive the process"
    first_stable = membership(new["original_dst_stable"].listen)["services"][0]
    assert first_stable["version"] == 0 and first_stable["no_membership_fallback"] == stable, \
        first_stable
    # the registry stays down DOWN_FOR, and at least MIN_DOWN_LIVE after the last new process is
    # live (the restarts are one after the other: on a busy machine they take seconds each)
    time.sleep(max(0.0, fault + DOWN_FOR - (time.time() - offset),
                   live_at + MIN_DOWN_LIVE - (time.time() - offset)))
    rnacos.start()
    back = time.time() - offset
    fleet.redo(rnacos)
    doc = wait_until(lambda: relearnt(new["lossless"].listen, fleet), timeout=10, interval=0.05,
                     what="the membership learnt again")
    learnt = time.time() - offset
    wait_until(lambda: relearnt(new["original_dst_stable"].listen, fleet), timeout=10,
               interval=0.05, what="the membership learnt again (original_dst_stable)")
    learnt_stable = time.time() - offset
    inst = by_role(doc, fleet)
    for load in loads.values():
        for part in load.parts:
            part.wait()
    time.sleep(0.6)
    end = time.time() - offset
    rows = {}
    for kind in gws:
        rows[kind] = summary(kind, fleet, failed_row(loads[kind]), logs[kind][1], offset, fault,
                             back, end)
    uptime = doc["now_ms"] - fleet.start_ms
    print(f"fault {fault:.1f} s, epoch 1 live {live_at:.1f} s, registry back {back:.1f} s, "
          f"learnt {learnt - back:.2f} s later; warming live_weight "
          f"{inst['warming']['live_weight']} (Dubbo at {uptime} ms: "
          f"{dubbo_weight(uptime, WARMUP_MS)}); old epochs exited: "
          f"{[not gws[k].is_alive() for k in gws]}")
    ll, plain = rows["lossless"], rows["plain"]
    assert ll["failed"] <= plain["failed"], (ll, plain)
    assert ll["failed"] == 0, ll
    # the new process routed from its first requests on, with no membership (failed open): the
    # registry's instances and the leaving one alike, by Envoy's round robin
    routed = ll["sent_while_registry_down"]
    assert sum(routed.values()) >= 0.5 * RATE * (back - live_at), ll
    assert set(ll["statuses_while_registry_down"]) == {"200"}, ll
    assert routed.get("warming", 0) >= 0.8 * routed.get("a", 0), "no warm-up without a membership"
    assert learnt - back <= 3.0
    assert abs(inst["warming"]["live_weight"] - dubbo_weight(uptime, WARMUP_MS)) <= 3, inst
    assert ll["sent_after_registry_back_plus_2s"].get("leaving", 0) == 0, ll
    assert all(not gws[k].is_alive() for k in gws), "the old epochs exited after their drain"
    # original_dst has no address of its own to fail open to: while its new process knows no
    # membership it answers 503 no_membership (with retry-after), and only then
    od = loads["original_dst"].results()
    bad = [s for s in od if s.status != 200]
    refused = [s for s in bad if s.status == 503
               and s.headers.get("x-lossless-drain") == "no_membership"]
    # the load's clock starts with the lossless load's, within milliseconds
    window = (fault, learnt + 1.0)
    outside = [s for s in bad if not window[0] <= s.t <= window[1]]
    print(f"original_dst: {len(od)} requests, {len(bad)} failed, {len(refused)} of them 503 "
          f"no_membership, between {min((s.t for s in bad), default=0):.1f} and "
          f"{max((s.t for s in bad), default=0):.1f} s (epoch 1 live {live_at:.1f} s, learnt "
          f"{learnt:.1f} s)")
    assert len(refused) == len(bad), Counter((s.status, s.error) for s in bad if s not in refused)
    assert not outside, [(round(s.t, 2), s.status) for s in outside[:5]]
    # original_dst with no_membership_addresses: the new process sends to the stable addresses
    # until the registry answers, none fails; then the membership routes (the warming instance,
    # not listed, gets requests again; the leaving one none)
    st = rows["original_dst_stable"]
    fell_back = new["original_dst_stable"].stat(
        "wasmcustom.lossless.demo.routing.no_membership_fallback", 0)
    print(f"original_dst with no_membership_addresses: {st['requests']} requests, {st['failed']} "
          f"failed; {fell_back} sent to a stable address; membership learnt "
          f"{learnt_stable - back:.2f} s after the registry came back")
    assert st["failed"] == 0, st
    down = st["sent_while_registry_down"]
    assert set(down) <= {"a", "b"} and min(down.get("a", 0), down.get("b", 0)) > 0, st
    assert sum(down.values()) >= 0.5 * RATE * (back - live_at), st
    assert fell_back >= 0.5 * RATE * (back - live_at), fell_back
    assert learnt_stable - back <= 3.0
    after = st["sent_after_registry_back_plus_2s"]
    assert after.get("warming", 0) > 0 and after.get("leaving", 0) == 0, st


def write_listener(path, workdir, version, listen, cfg, log):
    """The LDS file of lds-bootstrap.yaml (templates/lds-listener.yaml with an access log),
    replaced atomically: Envoy watches the path."""
    template = with_access_log(TEMPLATES / "lds-listener.yaml", "ingress", log, workdir)
    tmp = Path(str(path) + ".tmp")
    render(template, {"VERSION": version, "LISTEN_PORT": listen, "LOSSLESS_CONFIG": cfg}, tmp)
    os.replace(tmp, path)


def test_lds_update_while_the_registry_is_down(rnacos, make_backend, make_envoy, procs,
                                                tmp_logs):
    """(b) lossless' listener replaced through LDS with a changed filter configuration (a second
    service and another refresh interval; the first service's definition unchanged) while rnacos
    is down. The new configuration starts from the previous one's membership and marks in the
    same process: its first requests are routed by the membership, the leaving instance gets
    none, the warming one keeps ramping (its share below a warm instance's), nothing fails; plain
    Envoy runs beside under the same load."""
    fleet = Fleet(rnacos, make_backend, procs)
    listen = free_port()
    lds = tmp_logs / "lds" / "listeners.yaml"
    lds.parent.mkdir()
    log = tmp_logs / "lossless.access.log"
    write_listener(lds, tmp_logs, "1", listen, filter_config(rnacos.addr), log)
    gw = make_envoy("lds-bootstrap.yaml",
                    {"LDS_PATH": lds, "REGISTRY_PORT": rnacos.http_port,
                     "DEMO_ENDPOINTS": lb_endpoints(fleet.addrs)},
                    concurrency=WORKERS, name="lossless", extra_args=HOT[:2])
    gw.listen = listen
    plain_tpl, plain_log = logged(TEMPLATES / "plain-health.yaml", "ingress", tmp_logs, "plain")
    plain_subs = {"LISTEN_PORT": free_port(), "HC_INTERVAL": "1s", "HC_TIMEOUT": "0.5s",
                  "DEMO_ENDPOINTS": lb_endpoints(fleet.addrs)}
    plain = make_envoy(plain_tpl, plain_subs, concurrency=WORKERS, name="plain",
                       extra_args=HOT[:2])
    plain.listen = int(plain.subs["LISTEN_PORT"])
    loads = {k: MixedLoad(g.listen, rate=RATE, post_share=POST_SHARE, threads=40,
                          duration=DURATION, timeout=12) for k, g in (("lossless", gw),
                                                                      ("plain", plain))}
    for load in loads.values():
        load.start()
    offset = time.time() - loads["lossless"].elapsed()
    settle(listen, fleet)
    time.sleep(max(0.0, FAULT_AT - 1.0 - loads["lossless"].elapsed()))
    rnacos.stop()
    time.sleep(max(0.0, FAULT_AT - loads["lossless"].elapsed()))
    before = gw.stat("listener_manager.lds.update_success", 0)
    services = [{"name": "demo", "registry": "nacos", "registry_service": SERVICE},
                {"name": "demo2", "registry": "nacos", "registry_service": "demo-svc2"}]
    write_listener(lds, tmp_logs, "2", listen,
                   filter_config(rnacos.addr, refresh_ms=900, services=services), log)
    wait_until(lambda: gw.stat("listener_manager.lds.update_success", 0) > before, timeout=10,
               interval=0.05, what="the LDS update")
    fault = time.time() - offset

    def new_config():
        doc = membership(listen)
        return doc if len(doc["services"]) == 2 else None
    doc = wait_until(new_config, timeout=5, interval=0.05, what="the new configuration serving")
    seen = time.time() - offset
    inst = by_role(doc, fleet)
    uptime = doc["now_ms"] - fleet.start_ms
    time.sleep(max(0.0, fault + DOWN_FOR - (time.time() - offset)))
    rnacos.start()
    back = time.time() - offset
    fleet.redo(rnacos)
    for load in loads.values():
        for part in load.parts:
            part.wait()
    time.sleep(0.6)
    end = time.time() - offset
    ll = summary("lossless", fleet, failed_row(loads["lossless"]), log, offset, fault, back, end)
    pl = summary("plain", fleet, failed_row(loads["plain"]), plain_log, offset, fault, back, end)
    print(f"LDS update at {fault:.1f} s, the new configuration answered {seen - fault:.2f} s "
          f"later with membership v{doc['services'][0]['version']}; roles "
          f"{ {r: (i['state'], i['live_weight']) for r, i in inst.items()} }; Dubbo weight of the "
          f"warming one at {uptime} ms: {dubbo_weight(uptime, WARMUP_MS)}")
    assert ll["failed"] == 0, ll
    assert ll["failed"] <= pl["failed"], (ll, pl)
    # the new configuration started from the previous one's membership and marks
    assert doc["services"][0]["version"] > 0, doc
    assert len(inst) == 5 and inst["leaving"]["state"] == "draining", inst
    assert inst["a"]["state"] == inst["b"]["state"] == "serving", inst
    assert abs(inst["warming"]["live_weight"] - dubbo_weight(uptime, WARMUP_MS)) <= 3, inst
    routed = ll["sent_while_registry_down"]
    assert routed.get("leaving", 0) == 0, ll
    assert routed.get("warming", 0) < 0.85 * routed.get("a", 1), ll
    assert sum(routed.values()) >= 0.5 * RATE * (back - fault), ll
