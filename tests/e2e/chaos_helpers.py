"""Helpers of the chaos and soak tests (test_chaos.py): Envoy memory readings, the filter's log
lines, a membership sampler, PROXY-protocol requests, Envoy templates derived from the shipped
ones, and rnacos with auth.

Everything binds 127.0.0.1, every wait is bounded, every process is started through a Procs
manager (stopped by pid at teardown).
"""

import re
import socket
import threading
import time
from pathlib import Path

from harness import membership
from kit import LOOPBACK, Rnacos

# --------------------------------------------------------------------------- envoy readings

def memory(envoy):
    """Envoy's memory: VmRSS (kB) of its process plus the numbers of the admin /memory endpoint
    (tcmalloc: allocated, heap_size, pageheap_free, pageheap_unmapped ... in bytes)."""
    out = envoy.memory()
    out["rss_kb"] = envoy.rss_kib()["VmRSS"]
    # resident memory less what tcmalloc holds mapped but free (freed buffers it keeps for reuse):
    # Envoy's heap in use plus everything outside tcmalloc, such as the Wasm VMs' linear memory
    mapped = out.get("total_physical_bytes",
                     out.get("heap_size", 0) - out.get("pageheap_unmapped", 0))
    out["rss_net_kb"] = out["rss_kb"] - max(0, mapped - out.get("allocated", 0)) // 1024
    return out


def fmt_mem(m):
    return (f"RSS {m['rss_kb'] / 1024:.1f} MiB (less tcmalloc's free memory "
            f"{m['rss_net_kb'] / 1024:.1f} MiB), "
            f"allocated {m.get('allocated', 0) / 2**20:.1f} MiB, "
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
                doc = membership(self.port)
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


# --------------------------------------------------------------------------- raw requests

def raw_http(port, data, timeout=5.0):
    """Sends raw bytes on a fresh connection; returns (status, {header: value}, body bytes)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
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
    '        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.'
    'ProxyProtocol\n')


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
