"""Test backend: answers 200 + its identity, counts requests, has /__ control endpoints.

Run: python3 backend.py --port P [--host IP] [--name NAME] [--ready-after-ms MS]
[--cold-ms MS --warm-after N]. Binds 127.0.0.1 unless --host names another address of this
machine (an address inside a test's own network namespace). With --ready-after-ms, GET /ready
answers 503 until that long after the start, then 200 (an application with no registry client: it
only says whether it is ready). With --cold-ms, each of its first N requests (any path but /ready
and /__*) takes that long: an application that is slow until warmed, like a JVM before its JIT
and caches.
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class State:
    def __init__(self, instance, name):
        self.instance = instance
        self.name = name
        self.lock = threading.Lock()
        self.counts = {}
        self.drain = None  # the x-lossless-drain value to answer with
        self.status = 200
        self.health = None  # the status GET /healthz answers with, when set
        self.delay_ms = 0
        self.started = time.monotonic()
        self.ready_after_ms = 0
        self.cold_ms = 0
        self.warm_after = 0
        self.served = 0
        self.cold_served = 0

    def count(self, method):
        with self.lock:
            self.counts[method] = self.counts.get(method, 0) + 1

    def stats(self):
        with self.lock:
            counts = dict(self.counts)
        return {
            "instance": self.instance,
            "name": self.name,
            "counts": counts,
            "total": sum(counts.values()),
            "drain": self.drain is not None,
            "status": self.status,
            "delay_ms": self.delay_ms,
            "ready": self.ready(),
            "served": self.served,
            "cold_served": self.cold_served,
        }

    def ready(self):
        return (time.monotonic() - self.started) * 1000.0 >= self.ready_after_ms

    def take_cold(self):
        """Counts one served request; True while the application is still cold."""
        with self.lock:
            self.served += 1
            cold = self.served <= self.warm_after and self.cold_ms > 0
            if cold:
                self.cold_served += 1
            return cold


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else ~40 ms per request behind Envoy
    state: State = None

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, code, body, extra=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-instance", self.state.instance)
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _control(self, path, query):
        st = self.state
        arg = parse_qs(query)
        val = (arg.get("on") or arg.get("code") or arg.get("ms") or ["0"])[0]
        if self.command == "GET" and path == "/__stats":
            return self._send(200, st.stats())
        if self.command != "POST":
            return self._send(405, {"error": "use POST"})
        if path == "/__drain_header":
            # ?value= sets the header's exact bytes (percent-encoded, read as latin-1, so %FF is
            # the byte 0xFF); ?on=1 the drain notice "1"
            raw = parse_qs(query, encoding="latin-1").get("value")
            st.drain = raw[0] if raw else ("1" if val not in ("0", "false", "") else None)
        elif path == "/__status":
            st.status = int(val)
        elif path == "/__health":
            st.health = int(val)
        elif path == "/__delay":
            st.delay_ms = int(val)
        elif path == "/__reset":
            with st.lock:
                st.counts.clear()
        else:
            return self._send(404, {"error": "unknown control " + path})
        return self._send(200, st.stats())

    def _serve(self):
        body = self._read_body()
        url = urlsplit(self.path)
        if url.path.startswith("/__"):
            return self._control(url.path, url.query)
        st = self.state
        if url.path == "/healthz" and st.health is not None:
            return self._send(st.health, {"health": st.health})
        if url.path == "/ready" and st.ready_after_ms > 0:
            return self._send(200 if st.ready() else 503, {"ready": st.ready()})
        if st.take_cold():
            time.sleep(st.cold_ms / 1000.0)
        st.count(self.command)
        if st.delay_ms > 0:
            time.sleep(st.delay_ms / 1000.0)
        extra = [("x-lossless-drain", st.drain)] if st.drain is not None else []
        self._send(st.status, {"instance": st.instance, "name": st.name,
                               "method": self.command, "path": url.path,
                               "received": len(body)}, extra)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--name", default="")
    ap.add_argument("--ready-after-ms", type=int, default=0)
    ap.add_argument("--cold-ms", type=int, default=0)
    ap.add_argument("--warm-after", type=int, default=0)
    args = ap.parse_args()
    instance = f"{args.host}:{args.port}"
    Handler.state = State(instance, args.name or instance)
    Handler.state.ready_after_ms = args.ready_after_ms
    Handler.state.cold_ms = args.cold_ms
    Handler.state.warm_after = args.warm_after
    server = Server((args.host, args.port), Handler)
    print(f"backend {args.name} listening on {instance}", flush=True)
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
