"""A real Apache Dubbo 3.3 provider (peers/dubbo-provider) registering into rnacos through Dubbo's
own Nacos registry, at interface level and at application level, behind a gateway Envoy with
lossless; and Dubbo's own AbstractLoadBalance.getWeight against lossless's weight over 120,000
vectors from one shared vector file.

DUBBO_PROVIDER is the folder `make dubbo-provider` builds (provider/ and weights/, each a jar and
its lib/). The providers start once for the module (a JVM takes seconds here) and bind and
register IPv6's loopback, [::1]: Dubbo refuses 127.x as an address to bind or register
(NetUtils.isInvalidLocalHost) and would take the machine's own address instead.
"""

import os
import random
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from harness import filter_config, membership
from kit import LOOPBACK, Procs, Rnacos, env_path, now_ms, request, wait_until

pytestmark = pytest.mark.usefixtures("no_wasm_crash")

REPO = Path(__file__).resolve().parents[2]
INTERFACE = "org.lossless.peer.Greeter"
IFACE_SERVICE = f"providers:{INTERFACE}::"  # Dubbo's Nacos service name, interface level
WEIGHT = 250
WARMUP_MS = 120_000  # long enough to watch the ramp over the whole module
VECTORS = 120_000
SEED = 13


def dubbo_dir():
    if not os.environ.get("DUBBO_PROVIDER"):
        pytest.skip("DUBBO_PROVIDER not set (make e2e builds and sets it)")
    return env_path("DUBBO_PROVIDER")


def classpath(part):
    """`provider` or `weights`: its jar and its lib/."""
    d = dubbo_dir() / part
    return f"{d / f'dubbo-{part}.jar'}:{d / 'lib'}/*"


class Provider:
    def __init__(self, procs, rnacos, mode, application, port):
        self.mode, self.application, self.port = mode, application, port
        self.name = f"dubbo-{mode}"
        self.launched_ms = now_ms()
        # the Nacos client finds gRPC at the HTTP port + this offset (1000 by default)
        offset = rnacos.grpc_port - rnacos.http_port
        self.proc = procs.start(self.name, [
            "java", "-Xms64m", "-Xmx256m", "-XX:TieredStopAtLevel=1",
            f"-Dnacos.server.grpc.port.offset={offset}",
            f"-DJM.LOG.PATH={procs.log_dir / 'nacos'}",
            "-cp", classpath("provider"), "org.lossless.peer.DubboProvider",
            rnacos.addr, mode, application, port, WEIGHT, WARMUP_MS])
        self.log = procs.logs[self.name]
        self.ready_ms = None

    @property
    def addr(self):
        return f"[::1]:{self.port}"

    def wait_ready(self, timeout=90):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.log}")
            return "dubbo-provider ready" in self.log.read_text(errors="replace")
        wait_until(ready, timeout=timeout, interval=0.2, what=f"{self.name} ready")
        self.ready_ms = now_ms()


def free_port6():
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dubbo(tmp_path_factory):
    """rnacos and two Dubbo providers of the same interface: one registering at interface level,
    one at application level; started once for the module."""
    dubbo_dir()
    logs = tmp_path_factory.mktemp("dubbo")
    procs = Procs(logs)
    try:
        rnacos = Rnacos(procs, logs, binary=env_path("RNACOS_BIN")).start()
        providers = {mode: Provider(procs, rnacos, mode, f"lossless-dubbo-{mode}", free_port6())
                     for mode in ("interface", "instance")}
        for p in providers.values():
            p.wait_ready()
        yield rnacos, providers
    finally:
        procs.stop_all()


def registered(rnacos, service, port):
    """The host rnacos lists for `service` at `port`, once Dubbo registered it."""
    def find():
        return next((h for h in rnacos.list(service)["hosts"] if h["port"] == port), None)
    return wait_until(find, timeout=20, what=f"{service} :{port} in rnacos")


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def dubbo_weight(weight, start_ms, warmup_ms, now):
    """Dubbo's getWeight for well-formed values, in f32 as Java computes it."""
    uptime = now - start_ms
    if uptime < 0:
        return 1
    if not 0 < uptime < warmup_ms:
        return weight
    ww = int(f32(f32(uptime) / f32(f32(warmup_ms) / f32(weight))))
    return max(1, min(ww, weight))


def instance_of(gw, service_name):
    doc = membership(gw.listen)
    svc = next(s for s in doc["services"] if s["name"] == service_name)
    return doc["now_ms"], svc["instances"]


def check_ramp(gw, name, provider, start_ms, warmup_ms, weight):
    """lossless lists the provider with Dubbo's start time, warmup and weight, and its live weight
    is Dubbo's at two times, rising."""
    seen = []
    for _ in range(2):
        now, insts = wait_until(lambda: (lambda d: d if d[1] else None)(instance_of(gw, name)),
                                timeout=15, what=f"{name} listed")
        assert [i["address"] for i in insts] == [provider.addr]
        inst = insts[0]
        assert inst["state"] == "serving", inst
        got = (inst["start_ms"], inst["warmup_ms"], inst["weight"])
        assert got == (start_ms, warmup_ms, weight), inst
        assert inst["warming"] is True, inst
        # computed at most weight_refresh_ms (100) before now_ms
        low, high = (dubbo_weight(weight, start_ms, warmup_ms, t) for t in (now - 100, now))
        assert low <= inst["live_weight"] <= high, (now, low, high, inst)
        seen.append(inst["live_weight"])
        time.sleep(2.5)
    assert 1 <= seen[0] < seen[1] < weight, seen


def call_through(gw, provider):
    status, _, body = request(
        "POST", f"http://{LOOPBACK}:{gw.listen}/{INTERFACE}/greet", body=b'["gateway"]',
        headers={"content-type": "application/json"})
    want = f'"hello gateway from {provider.application}:{provider.port}"'
    assert (status, body.decode()) == (200, want)


def test_interface_level(dubbo, make_gateway):
    """register-mode interface: the Nacos service `providers:<interface>::` holds the provider
    URL's parameters as metadata, Dubbo's timestamp, warmup and weight among them; lossless reads
    exactly those and ramps the weight; a request through the gateway reaches the provider."""
    rnacos, providers = dubbo
    p = providers["interface"]
    host = registered(rnacos, IFACE_SERVICE, p.port)
    md = host["metadata"]
    assert host["ip"] == "[::1]"
    assert (md["side"], md["protocol"], md["release"]) == ("provider", "tri", "3.3.4")
    assert (md["warmup"], md["weight"]) == (str(WARMUP_MS), str(WEIGHT))
    start_ms = int(md["timestamp"])
    assert p.launched_ms <= start_ms <= p.ready_ms
    # the application-level provider is not there
    assert [h["port"] for h in rnacos.list(IFACE_SERVICE)["hosts"]] == [p.port]

    cfg = filter_config(rnacos.addr, service={"registry_service": IFACE_SERVICE})
    gw = make_gateway(rnacos.http_port, cfg, [p.addr])
    check_ramp(gw, "demo", p, start_ms, WARMUP_MS, WEIGHT)
    call_through(gw, p)


def test_application_level(dubbo, make_gateway):
    """register-mode instance: one Nacos record named after the application, whose metadata
    carries Dubbo's `timestamp` but not `warmup` or `weight` (those stay in Dubbo's metadata
    service); with the service's default warmup and weight scale set to the provider's warmup and
    weight, lossless ramps it the same way from Dubbo's own timestamp."""
    rnacos, providers = dubbo
    p = providers["instance"]
    host = registered(rnacos, p.application, p.port)
    md = host["metadata"]
    assert host["ip"] == "[::1]"
    assert "warmup" not in md and "weight" not in md, md
    assert "dubbo.metadata.revision" in md and "tri" in md["dubbo.endpoints"], md
    start_ms = int(md["timestamp"])
    assert p.launched_ms <= start_ms <= p.ready_ms

    # Nacos' own weight of the record (1.0, Dubbo leaves it alone) wins over default_weight:
    # the provider's weight comes in through weight_scale
    assert host["weight"] == 1.0
    cfg = filter_config(rnacos.addr, service={
        "registry_service": p.application,
        "warmup": {"default_warmup_ms": WARMUP_MS, "weight_scale": WEIGHT}})
    gw = make_gateway(rnacos.http_port, cfg, [p.addr])
    check_ramp(gw, "demo", p, start_ms, WARMUP_MS, WEIGHT)
    call_through(gw, p)


# --- the weight cross-check ---------------------------------------------------------------------

ABSENT = "\\N"
MALFORMED = ["", " 5", "5 ", "5.0", "1e3", "0x10", "abc", "-", "+", "--1", "+-1", "1_000", "1,000",
             "?", "NaN", "Infinity", "true", "0.", ".5", "1 2"]
I32 = 2**31
I64 = 2**63
EDGE_INT = [0, 1, -1, -5, I32 - 1, -I32, I32, -I32 - 1, I64 - 1, -I64, I64, -I64 - 1, 10**20]


def int_text(rng, lo, hi):
    v = rng.randint(lo, hi)
    style = rng.random()
    if style < 0.05:
        return f"+{v}" if v >= 0 else str(v)
    if style < 0.08:
        return ("-" if v < 0 else "") + "00" + str(abs(v))
    return str(v)


def weight_value(rng):
    r = rng.random()
    if r < 0.05:
        return ABSENT
    if r < 0.50:
        return int_text(rng, 1, 1000)
    if r < 0.70:
        return int_text(rng, 1, I32 - 1)
    if r < 0.80:
        return str(rng.choice(EDGE_INT))
    if r < 0.88:
        return int_text(rng, -1000, 0)
    return rng.choice(MALFORMED)


def warmup_value(rng):
    r = rng.random()
    if r < 0.05:
        return ABSENT, 600_000
    if r < 0.55:
        v = rng.randint(1, 2_000_000)
    elif r < 0.70:
        v = rng.randint(1, I32 - 1)
    elif r < 0.80:
        v = rng.choice(EDGE_INT)
    elif r < 0.88:
        v = rng.randint(-1000, 0)
    else:
        return rng.choice(MALFORMED), 600_000
    return int_text(rng, v, v), v


def timestamp_value(rng, warmup):
    r = rng.random()
    span = warmup if 0 < warmup < I32 else 600_000
    if r < 0.05:
        return ABSENT
    if r < 0.55:  # on the ramp or just past it
        return f"now-{rng.randint(0, span + span // 5)}"
    if r < 0.62:
        return f"now-{rng.randint(0, 10**13)}"
    if r < 0.72:  # clock skew: started "in the future"
        return f"now+{rng.randint(1, rng.choice([1000, 10**6, 10**12]))}"
    if r < 0.75:
        return rng.choice(["+", "00"]) + f"now-{rng.randint(0, span)}"
    if r < 0.87:
        return str(rng.choice(EDGE_INT + [rng.randint(-I64, I64 - 1), rng.randint(1, 2 * 10**12)]))
    return rng.choice(MALFORMED + ["now-5.0", "now-", "now-x", " now-5"])


def write_vectors(path, n, seed):
    """The shared vector file: `weight TAB timestamp TAB warmup`, `\\N` = absent."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        warmup, w = warmup_value(rng)
        lines.append(f"{weight_value(rng)}\t{timestamp_value(rng, w)}\t{warmup}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def test_weight_cross_check(tmp_path):
    """Dubbo's own AbstractLoadBalance.getWeight (the released dubbo-cluster jar) and lossless's
    weight (tests/dubbo_weights.rs) over the same 120,000 vectors: clock skew, uptime 0 and past
    the warmup, int and long overflow, zero and negative values, and values Dubbo's parsing
    refuses; 0 differences."""
    cp = classpath("weights")
    vectors, results = tmp_path / "vectors.tsv", tmp_path / "dubbo.tsv"
    write_vectors(vectors, VECTORS, SEED)
    out = subprocess.run(["java", "-cp", cp, "org.lossless.peer.DubboWeights", vectors, results],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"dubbo getWeight: {VECTORS} vectors" in out.stdout
    env = dict(os.environ, DUBBO_WEIGHT_VECTORS=str(vectors), DUBBO_WEIGHT_RESULTS=str(results))
    out = subprocess.run(["cargo", "test", "-q", "--test", "dubbo_weights", "--", "--nocapture"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("dubbo weight cross-check:"))
    print(line)
    assert line.startswith(f"dubbo weight cross-check: {VECTORS} vectors")
    assert line.endswith(", 0 differences"), line
