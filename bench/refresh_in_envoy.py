#!/usr/bin/env python3
"""The poller's refresh of a 10,000-instance registry reply, measured inside Envoy: the filter's own
`lossless.<svc>.refresh_duration_us` gauge (fingerprint, parse, keep-last-good, publish, in the
Wasm VM).

For each registry shape (Nacos v1 list, Eureka application, Consul health service; 13 metadata
keys per instance, as the criterion `registry_refresh` group), a loopback HTTP server answers the
filter's list requests. "changed": two replies in turn that differ by one instance, so every
refresh is a change that is parsed and published. "unchanged": the same reply every time (Consul:
with a growing X-Consul-Index), so every refresh after the first is recognised as the one applied.
Envoy (--concurrency 1, envoy/outbound-override-host.yaml) polls it every 500 ms; the gauge is
read after each of `--samples` refreshes and the median and the range are printed (a Markdown
table row per shape). `make bench` runs the same measurement (bench/run.py imports `measure`).

Usage: python3 bench/refresh_in_envoy.py [--instances 10000] [--samples 15] [--shapes eureka,consul]
Environment: ENVOY_BIN, LOSSLESS_WASM. Every process is stopped by its pid; every wait is bounded.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # the test kit: this file is also run as a script

from kit import LOOPBACK, Envoy, Procs, env_path, free_port, lb_endpoints  # noqa: E402

GAUGE = "wasmcustom.lossless.demo.refresh_duration_us"
VERSION = "wasmcustom.lossless.demo.snapshot_version"
# every applied reply counts refresh_ok, a changed one also publishes a new version
REFRESHED = "wasmcustom.lossless.demo.refresh_ok"


def meta(i):
    """13 metadata keys, Dubbo-provider-like values."""
    return {"timestamp": str(1_700_000_000_000 + i), "warmup": "600000", "weight": "100",
            "side": "provider", "application": "orders", "dubbo": "2.0.2", "release": "3.3.4",
            "interface": "org.example.OrderService", "methods": "create,get,list,cancel",
            "pid": str(1000 + i), "protocol": "tri", "version": "1.0.0", "group": "prod"}


def ip(i):
    return f"10.{i // 62_500}.{(i // 250) % 250}.{i % 250 + 1}"


def nacos(n):
    hosts = [{"instanceId": f"{ip(i)}#20880#DEFAULT#DEFAULT_GROUP@@orders", "ip": ip(i),
              "port": 20880, "weight": 1.0, "healthy": True, "enabled": True, "ephemeral": True,
              "clusterName": "DEFAULT", "serviceName": "DEFAULT_GROUP@@orders",
              "metadata": meta(i)} for i in range(n)]
    return {"name": "DEFAULT_GROUP@@orders", "groupName": "DEFAULT_GROUP", "clusters": "",
            "cacheMillis": 10000, "hosts": hosts, "lastRefTime": 1, "checksum": "x",
            "allIPs": False, "reachProtectionThreshold": False, "valid": True}


def eureka(n):
    inst = [{"instanceId": f"{ip(i)}:orders:20880", "hostName": ip(i), "app": "ORDERS",
             "ipAddr": ip(i), "status": "UP", "overriddenStatus": "UNKNOWN",
             "port": {"$": 20880, "@enabled": "true"},
             "securePort": {"$": 443, "@enabled": "false"},
             "countryId": 1, "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$"
                                                          "DefaultDataCenterInfo", "name": "MyOwn"},
             "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90,
                           "registrationTimestamp": 1, "lastRenewalTimestamp": 1,
                           "evictionTimestamp": 0, "serviceUpTimestamp": 1},
             "metadata": meta(i), "vipAddress": "orders", "secureVipAddress": "orders",
             "isCoordinatingDiscoveryServer": "false", "lastUpdatedTimestamp": "1",
             "lastDirtyTimestamp": "1", "actionType": "ADDED"} for i in range(n)]
    return {"application": {"name": "ORDERS", "instance": inst}}


def consul(n):
    return [{"Node": {"ID": f"node-{i}", "Node": f"node-{i}", "Address": ip(i),
                      "Datacenter": "dc1", "TaggedAddresses": {"lan": ip(i), "wan": ip(i)}},
             "Service": {"ID": f"orders-{i}", "Service": "orders", "Tags": ["prod"],
                         "Address": ip(i), "Meta": meta(i), "Port": 20880,
                         "Weights": {"Passing": 1, "Warning": 1}},
             "Checks": [{"Node": f"node-{i}", "CheckID": "serfHealth", "Status": "passing"},
                        {"Node": f"node-{i}", "CheckID": f"service:orders-{i}",
                         "Status": "passing"}]} for i in range(n)]


SHAPES = {
    "nacos": (nacos, {"type": "nacos", "api": "v1"}),
    "eureka": (eureka, {"type": "eureka"}),
    "consul": (consul, {"type": "consul", "wait_s": 0}),
}


class Registry:
    """Answers every request with the two bodies in turn (Consul: a growing X-Consul-Index)."""

    def __init__(self, bodies):
        self.bodies = bodies
        self.count = 0
        self.lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                with registry.lock:
                    registry.count += 1
                    n = registry.count
                body = registry.bodies[n % 2]
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.send_header("x-consul-index", str(n))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def measure(shape, n, samples, workdir, changed=True, wasm=None):
    """{shape, changed, bytes, median_ms, min_ms, max_ms, samples, values_ms} of `samples`
    refreshes of `shape`'s reply of `n` instances: a changed reply each time, or (changed=False)
    the same one. `wasm`: the module (default: the environment's LOSSLESS_WASM)."""
    build, registry = SHAPES[shape]
    full = json.dumps(build(n), separators=(",", ":")).encode()
    less = json.dumps(build(n - 1), separators=(",", ":")).encode() if changed else full
    bodies = [full, less]
    procs = Procs(workdir)
    load1_before = os.getloadavg()[0]
    with Registry(bodies) as reg:
        cfg = {"registries": {"r": {**registry, "cluster": "registry",
                                    "authority": f"{LOOPBACK}:{reg.port}",
                                    "max_body_bytes": 64 << 20, "timeout_ms": 5000}},
               "services": [{"name": "demo", "registry": "r", "registry_service": "orders"}],
               "refresh_interval_ms": 500, "jitter_percent": 0}
        listen = free_port()
        envoy = Envoy(procs, workdir, REPO / "envoy" / "outbound-override-host.yaml",
                      {"LISTEN_PORT": listen, "REGISTRY_PORT": reg.port,
                       "LOSSLESS_CONFIG": json.dumps(cfg, separators=(",", ":")),
                       "DEMO_ENDPOINTS": lb_endpoints([f"{LOOPBACK}:1"]),
                       **({"LOSSLESS_WASM": str(wasm)} if wasm else {})},
                      concurrency=1, name=f"envoy-{shape}", binary=env_path("ENVOY_BIN")).start()
        values, cpu, applied, last = [], [], [], None
        deadline = time.monotonic() + samples * 3 + 60
        # a changed refresh publishes a new version; an unchanged one only counts refresh_ok
        # (flushed on the 100 ms tick, well within the 500 ms between refreshes)
        counter = VERSION if changed else REFRESHED
        while len(values) < samples + 2 and time.monotonic() < deadline:
            seen = envoy.stat(counter, 0)
            if seen != last:
                last = seen
                values.append(envoy.stat(GAUGE, 0))
                cpu.append(envoy.cpu_seconds())
                applied.append(envoy.stat(REFRESHED, 0))
            time.sleep(0.05)
        procs.stop_all()
    # the first ones start from an empty membership (changed) or are the first publish
    got = values[2:]
    if not got:
        raise RuntimeError(f"{shape}: no {'changed' if changed else 'unchanged'} refresh seen")
    # Envoy's process CPU time from the first counted sample to the last, per reply applied in
    # between (refresh_ok): the receive of the reply by Envoy's HTTP client, the filter's refresh
    # and the idle ticks between (less sensitive to other work on the machine than the gauge, a
    # wall-clock duration)
    replies = applied[-1] - applied[2] if len(applied) > 3 else 0
    cpu_ms = (cpu[-1] - cpu[2]) * 1000 / replies if replies > 0 else None
    return {"shape": shape, "changed": changed, "bytes": len(bodies[0]),
            "load1_before": load1_before, "load1_after": os.getloadavg()[0],
            "cpu_ms_per_refresh": cpu_ms,
            "median_ms": statistics.median(got) / 1000, "min_ms": min(got) / 1000,
            "max_ms": max(got) / 1000, "samples": len(got), "values_ms": [v / 1000 for v in got]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--workdir", default="/tmp/lossless-refresh-in-envoy")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help=f"comma-separated, of {', '.join(SHAPES)}")
    args = ap.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    if unknown := [s for s in shapes if s not in SHAPES]:
        ap.error(f"--shapes: unknown {', '.join(unknown)}")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print("| reply | body | refresh | in Envoy (median) | range | samples | load average |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for shape in shapes:
        for changed in (True, False):
            kind = "changed" if changed else "unchanged"
            r = measure(shape, args.instances, args.samples, Path(args.workdir) / f"{shape}-{kind}",
                        changed=changed)
            print(f"| {shape} ({args.instances:,} instances) | {r['bytes'] / 1e6:.1f} MB | {kind} "
                  f"| {r['median_ms']:.1f} ms | {r['min_ms']:.1f}–{r['max_ms']:.1f} ms "
                  f"| {r['samples']} | {r['load1_before']:.1f}–{r['load1_after']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
