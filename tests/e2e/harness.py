"""What the end-to-end suites share beyond the test kit (tests/kit: processes, ports, Envoy,
rnacos, templates, load): the rnacos service and the shipped Envoy templates they run, the
filter's JSON config, registration and membership helpers, the test backend (backend.py) and the
registry front (regproxy.py).
"""

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote_from_bytes

from kit import (
    HOUR_MS,
    LOOPBACK,
    REPO,
    Managed,
    MixedLoad,
    free_port,
    get_json,
    lb_endpoints,
    now_ms,
    request,
    wait_http,
    wait_until,
)

HERE = Path(__file__).resolve().parent

TEMPLATES = HERE / "templates"
SERVICE = "demo-svc"
OUTBOUND = REPO / "envoy" / "outbound-override-host.yaml"
ORIGINAL_DST = REPO / "envoy" / "outbound-original-dst.yaml"
INBOUND = REPO / "envoy" / "inbound.yaml"
# one access-log line per request: start (epoch s), upstream host, status, flags, method
LOG_FORMAT = "%START_TIME(%s.%3f)% %UPSTREAM_HOST% %RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:METHOD)%"


def filter_config(registry_addr, refresh_ms=1000, timeout_ms=1000, services=None, registry=None,
                  service=None, **top):
    """The filter's JSON config (one line). Default: service `demo` = rnacos service demo-svc,
    with the fields of `service` added; `registry` adds to the registry's fields, `top` (None
    values left out) to the top level."""
    reg = {"type": "nacos", "cluster": "registry", "authority": registry_addr,
           "timeout_ms": timeout_ms}
    reg.update(registry or {})
    default = {"name": "demo", "registry": "nacos", "registry_service": SERVICE}
    default.update(service or {})
    cfg = {
        "registries": {"nacos": reg},
        "services": services or [default],
        "refresh_interval_ms": refresh_ms,
        "drain": {"pin_header": "x-pin", "notify_grace_ms": 1000},
    }
    cfg.update({k: v for k, v in top.items() if v is not None})
    return json.dumps(cfg, separators=(",", ":"))


def register(rnacos, port, started_ms, warmup_ms=30_000, service=SERVICE, **meta):
    """Registers 127.0.0.1:port in rnacos with metadata timestamp (and warmup unless None)."""
    metadata = {"timestamp": started_ms}
    if warmup_ms is not None:
        metadata["warmup"] = warmup_ms
    metadata.update(meta)
    rnacos.register(service, LOOPBACK, port, weight=1.0, metadata=metadata)


def membership(port):
    """GET /lossless/membership of the listener on `port`."""
    return get_json(f"http://{LOOPBACK}:{port}/lossless/membership")


def serving_of(doc, service=0):
    """Sorted addresses of the serving instances of a membership document's service."""
    return sorted(i["address"] for i in doc["services"][service]["instances"]
                  if i["state"] == "serving")


def serving(port, service=0):
    return serving_of(membership(port), service)


# --------------------------------------------------------------------------- backends

class Backend(Managed):
    """A backend.py server on a free port (or `port`); answers with x-instance: 127.0.0.1:P."""

    def __init__(self, procs, name=None, port=None, args=()):
        self.procs = procs
        self.port = port or free_port()
        self.name = name or f"backend-{self.port}"
        self.proc = None
        self.args = [str(a) for a in args]

    @property
    def addr(self):
        return f"{LOOPBACK}:{self.port}"

    instance = addr

    @property
    def url(self):
        return f"http://{self.addr}"

    def start(self, timeout=10.0):
        argv = [sys.executable, str(HERE / "backend.py"), "--port", self.port,
                "--name", self.name, *self.args]
        self.proc = self.procs.start(self.name, argv)
        wait_http(self.url + "/__stats", timeout=timeout, proc=self.proc)
        return self

    def restart(self, timeout=10.0):
        self.stop()
        return self.start(timeout)

    def stats(self):
        return get_json(self.url + "/__stats")

    def counts(self):
        """{method: requests served} (control endpoints not counted)."""
        return self.stats()["counts"]

    def total(self):
        return self.stats()["total"]

    def _control(self, what, value):
        status, _, data = request("POST", f"{self.url}/{what}{value}", body=b"")
        if status != 200:
            raise RuntimeError(f"backend {self.name} {what} -> {status}: {data!r}")
        return json.loads(data)

    def drain_header(self, on=True, value=None):
        """Answer with x-lossless-drain: 1 (on) or none; `value` (bytes) sets its exact bytes."""
        if value is not None:
            return self._control("__drain_header?value=", quote_from_bytes(value))
        return self._control("__drain_header?on=", 1 if on else 0)

    def set_status(self, code):
        return self._control("__status?code=", code)

    def set_health(self, code):
        """GET /healthz answers `code` (as an application's readiness does when it stops)."""
        return self._control("__health?code=", code)

    def set_delay(self, ms):
        return self._control("__delay?ms=", ms)

    def reset(self):
        return self._control("__reset", "")


# --------------------------------------------------------------------------- registry front

class RegFront(Managed):
    """regproxy.py in front of a registry: counts list requests and injects faults in them (see
    its docstring)."""

    def __init__(self, procs, upstream, name="regproxy"):
        self.procs = procs
        self.name = name
        self.port = free_port()
        self.proc = procs.start(name, [sys.executable, str(HERE / "regproxy.py"),
                                       "--port", self.port, "--upstream", upstream])
        wait_http(f"{self.url}/__count", timeout=10, proc=self.proc)

    @property
    def url(self):
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def addr(self):
        return f"{LOOPBACK}:{self.port}"

    def mode(self, m, **params):
        query = "&".join([f"m={m}"] + [f"{k}={v}" for k, v in params.items()])
        status, _, data = request("POST", f"{self.url}/__mode?{query}", body=b"")
        assert status == 200, (status, data)

    def count(self):
        return get_json(f"{self.url}/__count")

    def save(self):
        """Keeps the last list reply passed through: what mode `replay` answers."""
        status, _, data = request("POST", f"{self.url}/__save", body=b"")
        assert status == 200, (status, data)

    def seen(self):
        return get_json(f"{self.url}/__seen")


def with_access_log(template, stat_prefix, log_path, workdir):
    """`template` with a file access log on the HTTP connection manager of `stat_prefix`."""
    text = Path(template).read_text()
    m = re.search(rf"^( *)stat_prefix: {stat_prefix}\n", text, re.M)
    assert m, (template, stat_prefix)
    pad = m.group(1)
    kind = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
    fmt = f'{{text_format_source: {{inline_string: "{LOG_FORMAT}\\n"}}}}'
    block = (f"{pad}access_log:\n"
             f"{pad}- name: envoy.access_loggers.file\n"
             f"{pad}  typed_config:\n"
             f'{pad}    "@type": {kind}\n'
             f"{pad}    path: {log_path}\n"
             f"{pad}    log_format: {fmt}\n")
    out = Path(workdir) / f"{Path(template).stem}-{stat_prefix}-logged.yaml"
    out.write_text(text[:m.end()] + block + text[m.end():])
    return out


def access_log(gw):
    """[(start time s, upstream host, status, flags, method)] of every request the gateway
    logged."""
    out = []
    for line in gw.access_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:
            out.append((float(parts[0]), parts[1], parts[2], parts[3], parts[4]))
    return out


# The active check the side-by-side suites give lossless and plain Envoy alike: GET /healthz every
# 1 s, 0.5 s timeout, down after 2 failures, up after 1 success.
SIDE_HC = {"path": "/healthz", "interval_ms": 1000, "timeout_ms": 500, "unhealthy_threshold": 2,
           "healthy_threshold": 1}


def logged_gateway(kind, registry, make_envoy, workdir, endpoints, svc, workers=2, tag="",
                   hc=SIDE_HC, grpc_port=None):
    """A gateway of `kind` over `endpoints` ("ip:port"), its registry the Nacos API at
    `registry.addr` ("ip:port": rnacos or a RegFront before it), logging every request to
    `<workdir>/<kind><tag>.access.log` (flushed every 250 ms; see `access_log`): `override_host` or
    `original_dst`, lossless on the shipped template with the service fields `svc` (its routing
    mode set to `kind`); `plain`, Envoy with the active check `hc` and outlier detection
    (templates/plain-health.yaml). `tag` tells apart the processes and files of another attempt.
    With `grpc_port` (lossless only) the membership is pushed from the registry's gRPC port there
    (api v1, a reconciling poll every 30 s, polls every second while the stream is down).
    Its `.listen`, `.kind` and `.access_log` are set."""
    listen = free_port()
    log = Path(workdir) / f"{kind}{tag}.access.log"
    subs = {"LISTEN_PORT": listen, "REGISTRY_PORT": registry.addr.rsplit(":", 1)[1],
            "DEMO_ENDPOINTS": lb_endpoints(list(endpoints))}
    if kind == "plain":
        subs.update(HC_INTERVAL=f"{hc['interval_ms'] / 1000}s",
                    HC_TIMEOUT=f"{hc['timeout_ms'] / 1000}s")
        template = with_access_log(TEMPLATES / "plain-health.yaml", "ingress", log, workdir)
    else:
        shipped, prefix = ((OUTBOUND, "ingress") if kind == "override_host"
                           else (ORIGINAL_DST, "demo_pick"))
        reg = None
        if grpc_port:
            reg = {"api": "v1", "grpc_cluster": "registry-grpc", "reconcile_interval_ms": 30_000}
            subs["REGISTRY_GRPC_PORT"] = grpc_port
            shipped = push_template(workdir, shipped)
        subs["LOSSLESS_CONFIG"] = filter_config(registry.addr, registry=reg,
                                                service={**svc, "routing": {"mode": kind}})
        template = with_access_log(shipped, prefix, log, workdir)
    gw = make_envoy(template, subs, concurrency=workers, name=f"{kind}{tag}",
                    extra_args=["--file-flush-interval-msec", "250"])
    gw.listen, gw.kind, gw.access_log = listen, kind, log
    return gw


# The Envoy cluster of the registry's gRPC port (Nacos push), HTTP/2, added after the clusters
# of a shipped template (clusters come last in them).
GRPC_CLUSTER = """
  - name: registry-grpc
    type: STATIC
    connect_timeout: 0.5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: registry-grpc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: ${REGISTRY_GRPC_PORT}}
"""


def push_template(workdir, template=OUTBOUND):
    """`template` (the shipped outbound one) with the registry's gRPC cluster, written to
    `<workdir>/outbound-push.yaml`."""
    path = Path(workdir) / "outbound-push.yaml"
    path.write_text(Path(template).read_text().rstrip("\n") + "\n" + GRPC_CLUSTER)
    return path


# The load each of `Gateways` carries, and its Envoy workers.
GATEWAY_RATE = 100
GATEWAY_POST_SHARE = 0.3
GATEWAY_WORKERS = 2


class Gateways:
    """lossless (override_host) and plain Envoy over the same slots, each with its access log and
    its own open-loop load of RATE req/s with POST_SHARE POSTs, on one clock (`elapsed`, seconds
    since the loads started). `grpc_port`: lossless takes pushes from the registry's gRPC port
    (see `logged_gateway`)."""

    def __init__(self, make_envoy, workdir, registry, slots, service=None, grpc_port=None):
        self.gws = {
            "lossless": logged_gateway("override_host", registry, make_envoy, workdir, slots,
                                       service or {}, workers=GATEWAY_WORKERS,
                                       grpc_port=grpc_port),
            "plain": logged_gateway("plain", registry, make_envoy, workdir, slots, {},
                                    workers=GATEWAY_WORKERS),
        }
        self.loads = {}
        self.offset = None  # epoch seconds at elapsed() == 0

    @property
    def lossless(self):
        return self.gws["lossless"]

    def start_load(self, duration):
        for kind, gw in self.gws.items():
            self.loads[kind] = MixedLoad(gw.listen, rate=GATEWAY_RATE,
                                         post_share=GATEWAY_POST_SHARE, threads=40,
                                         duration=duration, timeout=12)
        for load in self.loads.values():
            load.start()
        first = self.loads["lossless"]
        self.offset = time.time() - first.elapsed()
        return first

    def elapsed(self):
        return time.time() - self.offset

    def wait(self):
        for load in self.loads.values():
            for part in load.parts:
                part.wait()
        time.sleep(0.6)  # the access logs' last flush

    def rows(self, scenario, faults, lost):
        """One row per gateway: requests, failed (GET / POST), per lost instance, and for each
        address of `faults` ({addr: fault time}) the last new request after its fault (s; 0 when
        none after it) and the requests sent to it after the fault plus 1 s."""
        out = {}
        for kind, load in self.loads.items():
            shift = self.loads["lossless"].t0 - load.t0  # both on the lossless load's clock
            samples = [s._replace(t=s.t - shift) for s in load.results()]
            failed = [s for s in samples if s.status != 200]
            by_method = Counter(s.method for s in failed)
            sent = {}
            late = Counter()
            for start, host, *_ in access_log(self.gws[kind]):
                t = start - self.offset
                sent[host] = max(sent.get(host, -1e9), t)
                if host in faults and t > faults[host] + 1.0:
                    late[host] += 1
            out[kind] = {
                "scenario": scenario, "gateway": kind, "requests": len(samples),
                "failed": len(failed), "failed_get": by_method.get("GET", 0),
                "failed_post": by_method.get("POST", 0),
                "failed_per_lost": round(len(failed) / max(lost, 1), 1),
                "last_new_request_after_fault_s": {
                    a: round(max(sent.get(a, t) - t, 0.0), 2) for a, t in faults.items()},
                "sent_after_fault_plus_1s": dict(late),
                "statuses": dict(Counter(s.status for s in failed)),
                "first_failures": [(round(s.t, 2), s.method, s.status, s.error)
                                   for s in failed[:5]],
            }
            print(f"BADDAY {out[kind]}")
        return out


def warm(rnacos, backends, service=SERVICE):
    """Registers each of `backends` started an hour ago (warm), warm-up 1 s."""
    for b in backends:
        register(rnacos, b.port, now_ms() - HOUR_MS, warmup_ms=1000, service=service)


def ready(gws, n):
    """Waits until lossless of `gws` serves `n` instances, then plain Envoy's first checks."""
    wait_until(lambda: len(serving_of(membership(gws.lossless.listen))) == n, timeout=15,
               what=f"{n} serving in lossless")
    time.sleep(2.5)  # plain Envoy: its first health checks


def redo(rnacos, backends, started=None, warmup_ms=1000):
    """What the instances' registry clients do when the registry comes back without them (redo
    of the registration): registers again each of `backends` it does not list. rnacos 0.8.8
    sometimes panics in its raft apply at start and then loses what it had (kit.rnacos)."""
    listed = rnacos.hosts(SERVICE)
    for b in backends:
        if b.addr not in listed:
            start = (started or {}).get(b.port, now_ms() - HOUR_MS)
            register(rnacos, b.port, start, warmup_ms=warmup_ms)


def stall_quiet_and_bound(gw, addr=None):
    """[quiet ms, bound ms] of the first stall `gw`'s lossless logged (of `addr` when given), or
    None when it logged none."""
    prefix = re.escape(addr) + " " if addr else ""
    said = prefix + r"stalled: it answered nothing for (\d+) ms .*?its bound (\d+) ms"
    bounds = re.findall(said, gw.log_text())
    return [int(x) for x in bounds[0]] if bounds else None
