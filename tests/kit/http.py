"""HTTP/1.1 helpers (http.client, no proxies): one request, a JSON GET, waiting for a URL."""

import http.client
import json
import time
from urllib.parse import urlsplit

from .procs import ProcessExited


def request(method, url, body=None, headers=None, timeout=5.0):
    """One request. Returns (status, {lowercase header: value}, bytes)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def get_json(url, timeout=5.0):
    status, _, data = request("GET", url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url} -> {status}: {data[:300]!r}")
    return json.loads(data)


def wait_http(url, timeout=10.0, status=200, proc=None):
    """Wait until GET url answers `status`; fails early if `proc` (a Popen) exits."""
    def probe():
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"process {proc.pid} exited with {proc.returncode} "
                                f"while waiting for {url}")
        return request("GET", url, timeout=1.0)[0] == status
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except ProcessExited:
            raise
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer {status} within {timeout}s")
        time.sleep(0.05)
