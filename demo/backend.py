#!/usr/bin/env python3
"""Demo backend: a service instance that behaves like a JVM during a release (Python stdlib only).

    python3 demo/backend.py --port P [--advertise 127.0.0.1:S] [--registry 127.0.0.1:8848]
        [--sidecar 127.0.0.1:S] [--service demo-svc] [--warmup-ms 20000] [--capacity 80]
        [--started-ms MS] [--stats-file F] [--naive | --eureka http://127.0.0.1:8761/eureka]

Binds 127.0.0.1 only. What it models (see DESIGN.md §6):

- Cold start. It serves at most c(t) requests/s, c(t) = capacity * (cold + (1 - cold) * u),
  u = min(1, uptime / warmup): 10 % of full capacity at start, 100 % after the warmup (a JVM
  warming its JIT, caches and pools). It has a fixed pool of workers (capacity * service-ms);
  a request takes service-ms / (cold + (1 - cold) * u) of a worker (200 ms warm, 2 s cold) plus
  its wait in the FIFO queue for a free worker. A request that would wait longer than
  --max-queue-ms is refused at once with 503 (`x-overloaded: 1`), like an exhausted thread pool.
  `--started-ms` backdates the start (an instance that has been running for an hour is warm).
- Registration. It registers itself in Nacos (rnacos) as a persistent instance (ephemeral=false)
  under its advertised address (its sidecar's), with metadata `timestamp` (its start, ms) and
  `warmup` (ms), as strings: rnacos drops metadata with non-string values.
- Lossless shutdown (default). On SIGTERM it marks itself offline in the registry
  (PUT enabled=false) and calls its sidecar's POST /lossless/drain (the preStop pattern; one of
  the two with --drain-via registry|sidecar), keeps
  serving what arrives and what is in flight, waits until no new request arrived for --quiet-s
  (at most --max-drain-s), deregisters and exits 0.
- Naive shutdown (--naive). On SIGTERM it exits at once: requests in flight are cut off.
- Spring Cloud shutdown (--eureka URL). It registers in Eureka (POST /apps/{SERVICE}, status UP,
  instance id = its advertised address) and renews its lease every 30 s (Eureka's client
  defaults: renewal 30 s, lease 90 s), registering again when the server answers 404. On SIGTERM
  it does what a Spring Boot 3.5 service with Spring Cloud Netflix's Eureka client does by
  default: it cancels its registration (DELETE /apps/{SERVICE}/{ID}), stops accepting
  connections (graceful shutdown: a request on a connection still open is refused with 503
  `x-shutting-down: 1`), finishes the requests in flight (at most --max-drain-s) and exits 0.
  Whoever still routes to it from a cached instance list gets connection refused.

GET /__stats answers its counts as JSON; GET /healthz answers 200 outside the capacity model (a
health check sees a cold instance as healthy, as a readiness probe does). Every other request is
application traffic: 200 with {"instance", "name", "method"} and header x-instance (the advertised
address). With --stats-file the final counts are written there (atomically) before it exits.
"""

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode


def now_ms():
    return int(time.time() * 1000)


class Model:
    """Capacity that grows with uptime, one FIFO queue, counts."""

    def __init__(self, capacity, cold, warmup_ms, started_ms, max_queue_ms, service_ms):
        self.capacity = float(capacity)
        self.service = service_ms / 1000.0
        self.workers = [0.0] * max(1, int(round(capacity * self.service)))  # free at (monotonic)
        self.cold = float(cold)
        self.warmup_ms = max(1, int(warmup_ms))
        self.started_ms = int(started_ms)
        self.max_queue = max_queue_ms / 1000.0
        self.lock = threading.Lock()
        self.served = {}  # method -> 2xx responses written
        self.rejected = 0  # 503 overloaded, written
        self.refused_closing = 0  # --eureka: 503 during the graceful shutdown, written
        self.inflight = 0  # admitted, not answered yet
        self.writing = 0  # answers being written
        self.dead = False  # naive exit under way: nothing more is written
        self.last_arrival_ms = None
        self.first_arrival_ms = None
        self.offline_ms = None
        self.closing = False  # --eureka: graceful shutdown under way, new requests refused
        self.registered = False

    def warm_fraction(self, at_ms=None):
        uptime = (at_ms if at_ms is not None else now_ms()) - self.started_ms
        return min(1.0, max(0.0, uptime / self.warmup_ms))

    def speed(self):
        return self.cold + (1.0 - self.cold) * self.warm_fraction()

    def rate(self):
        return len(self.workers) / self.service * self.speed()

    def admit(self):
        """Returns the monotonic time at which the answer is due, or None (refused: overloaded)."""
        now = time.monotonic()
        with self.lock:
            ms = now_ms()
            self.last_arrival_ms = ms
            if self.first_arrival_ms is None:
                self.first_arrival_ms = ms
            w = min(range(len(self.workers)), key=self.workers.__getitem__)
            start = max(now, self.workers[w])
            if start - now > self.max_queue:
                return None
            self.workers[w] = start + self.service / self.speed()
            self.inflight += 1
            return self.workers[w]

    def done(self):
        with self.lock:
            self.inflight -= 1

    def begin_write(self):
        with self.lock:
            if self.dead:
                return False
            self.writing += 1
            return True

    def end_write(self, method, served, ok, closing=False):
        """Counts an answer once it is written, in the same step that ends the write, so that a
        naive exit (which waits for writes in progress) reports exactly what callers got."""
        with self.lock:
            self.writing -= 1
            if ok and served:
                self.served[method] = self.served.get(method, 0) + 1
            elif ok and closing:
                self.refused_closing += 1
            elif ok:
                self.rejected += 1

    def die(self, timeout=0.5):
        """Naive exit: no new writes; waits (bounded) for the ones in progress."""
        with self.lock:
            self.dead = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.writing == 0:
                    return
            time.sleep(0.005)

    def stats(self, **extra):
        with self.lock:
            served = dict(self.served)
            doc = {
                "served": served,
                "served_total": sum(served.values()),
                "rejected": self.rejected,
                "refused_closing": self.refused_closing,
                "inflight": self.inflight,
                "first_arrival_ms": self.first_arrival_ms,
                "last_arrival_ms": self.last_arrival_ms,
                "offline_ms": self.offline_ms,
                "registered": self.registered,
                "started_ms": self.started_ms,
                "warm_fraction": round(self.warm_fraction(), 4),
                "capacity_now": round(self.rate(), 2),
            }
        doc.update(extra)
        return doc


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else ~40 ms per request behind Envoy
    model: Model = None
    ident = {}

    def log_message(self, fmt, *args):
        pass

    def _send(self, code, doc, extra=()):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-instance", self.ident["instance"])
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _serve(self):
        n = int(self.headers.get("content-length") or 0)
        if n > 0:
            self.rfile.read(n)
        path = self.path.split("?", 1)[0]
        if path == "/__stats":
            return self._send(200, self.model.stats(**self.ident))
        if path == "/healthz":
            return self._send(200, {"ok": True})
        if self.model.closing:
            self.close_connection = True
            return self._answer(False, 503, {"error": "shutting down", **self.ident},
                                [("x-shutting-down", "1"), ("connection", "close")],
                                closing=True)
        due = self.model.admit()
        if due is None:
            return self._answer(False, 503, {"error": "overloaded", **self.ident},
                                [("x-overloaded", "1")])
        try:
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._answer(True, 200, {"method": self.command, **self.ident})
        finally:
            self.model.done()

    def _answer(self, served, code, doc, extra=(), closing=False):
        """An application answer, counted once written; none after a naive exit began."""
        if not self.model.begin_write():
            self.close_connection = True
            return
        ok = False
        try:
            self._send(code, doc, extra)
            ok = True
        finally:
            self.model.end_write(self.command, served, ok, closing)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve


class Registry:
    """Nacos v1 open API (form-encoded), short timeouts."""

    def __init__(self, addr, service, ip, port):
        host, _, p = addr.rpartition(":")
        self.host, self.port = host, int(p)
        self.base = {"serviceName": service, "ip": ip, "port": port, "ephemeral": "false"}

    def call(self, method, extra=None):
        params = dict(self.base)
        params.update(extra or {})
        body = urlencode(params)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
        try:
            conn.request(method, "/nacos/v1/ns/instance", body=body,
                         headers={"content-type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if resp.status != 200 or text.strip() != "ok":
            raise RuntimeError(f"{method} instance -> {resp.status}: {text[:200]}")

    def register(self, metadata):
        self.call("POST", {"weight": "1.0", "enabled": "true", "healthy": "true",
                           "metadata": json.dumps({k: str(v) for k, v in metadata.items()})})

    def offline(self):
        self.call("PUT", {"enabled": "false"})

    def deregister(self):
        self.call("DELETE")


class Eureka:
    """Netflix Eureka's REST API (JSON), as an instance's DiscoveryClient calls it."""

    def __init__(self, url, app, ip, port):
        rest = url.split("://", 1)[-1]
        hostport, _, path = rest.partition("/")
        host, _, p = hostport.rpartition(":")
        self.host, self.port, self.path = host, int(p), "/" + path.strip("/")
        self.app, self.ip, self.inst_port = app.upper(), ip, int(port)
        self.id = f"{ip}:{port}"

    def call(self, method, path, body=None, ok=(200, 204)):
        headers = {"accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["content-type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=3.0)
        try:
            conn.request(method, self.path + path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if ok and resp.status not in ok:
            raise RuntimeError(f"{method} {path} -> {resp.status}: {text[:200]}")
        return resp.status

    def register(self):
        info = {
            "instanceId": self.id, "hostName": self.ip, "app": self.app, "ipAddr": self.ip,
            "vipAddress": self.app.lower(), "status": "UP",
            "port": {"$": self.inst_port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                               "name": "MyOwn"},
            # Eureka's client defaults (LeaseInfo): renew every 30 s, expire after 90 s
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
            "metadata": {},
        }
        self.call("POST", f"/apps/{self.app}", {"instance": info})

    def renew(self):
        """Heartbeat; registers again on 404, as DiscoveryClient.renew does."""
        if self.call("PUT", f"/apps/{self.app}/{self.id}", ok=()) == 404:
            self.register()

    def cancel(self):
        self.call("DELETE", f"/apps/{self.app}/{self.id}")


def post(addr, path, timeout=2.0):
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=b"")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def register_or_exit(register, tries, pause_s, done, what):
    """Calls `register` until it works, at most `tries` times `pause_s` apart; exits the process
    when it never does."""
    for _ in range(tries):
        try:
            register()
            log(done, what)
            return
        except (OSError, RuntimeError) as exc:
            log("register failed:", exc)
            time.sleep(pause_s)
    log("giving up registering")
    sys.exit(1)


def write_stats(path, doc):
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True, help="listen port (127.0.0.1)")
    ap.add_argument("--name", default="")
    ap.add_argument("--advertise", default="", help="ip:port registered (its sidecar's listener)")
    ap.add_argument("--registry", default="", help="rnacos ip:port (none: do not register)")
    ap.add_argument("--service", default="demo-svc")
    ap.add_argument("--sidecar", default="", help="sidecar ip:port for POST /lossless/drain")
    ap.add_argument("--warmup-ms", type=int, default=20000)
    ap.add_argument("--capacity", type=float, default=80.0, help="req/s when warm")
    ap.add_argument("--service-ms", type=float, default=200.0, help="time per request when warm")
    ap.add_argument("--cold", type=float, default=0.1, help="capacity share at start")
    ap.add_argument("--max-queue-ms", type=int, default=1000)
    ap.add_argument("--started-ms", type=int, default=0, help="start time (default: now)")
    ap.add_argument("--quiet-s", type=float, default=2.0)
    ap.add_argument("--max-drain-s", type=float, default=30.0)
    ap.add_argument("--stats-file", default="")
    ap.add_argument("--drain-via", choices=("both", "registry", "sidecar"), default="both",
                    help="how it goes offline: registry enabled=false, sidecar drain, or both")
    ap.add_argument("--naive", action="store_true", help="exit at once on SIGTERM")
    ap.add_argument("--eureka", default="",
                    help="Eureka server URL (http://ip:port/eureka): register there and shut "
                         "down as a Spring Cloud service does")
    ap.add_argument("--renew-s", type=float, default=30.0, help="Eureka lease renewal, s")
    args = ap.parse_args()

    started = args.started_ms or now_ms()
    advertise = args.advertise or f"127.0.0.1:{args.port}"
    model = Model(args.capacity, args.cold, args.warmup_ms, started, args.max_queue_ms,
                  args.service_ms)
    Handler.model = model
    Handler.ident = {"instance": advertise, "name": args.name or advertise,
                     "mode": "naive" if args.naive else "spring" if args.eureka else "lossless"}
    server = Server(("127.0.0.1", args.port), Handler)
    term = threading.Event()

    def on_term(signum, frame):
        if args.naive:  # cut off whatever is in flight
            model.die()
            write_stats(args.stats_file, model.stats(exit="naive", exit_ms=now_ms(),
                                                     **Handler.ident))
            os._exit(0)
        term.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                     daemon=True).start()
    log(f"{Handler.ident['name']} listening on 127.0.0.1:{args.port} as {advertise}, "
        f"capacity {model.rate():.1f}/s of {args.capacity}/s ({len(model.workers)} workers), "
        f"warmup {args.warmup_ms} ms, "
        f"{Handler.ident['mode']}")

    reg = None
    if args.registry:
        ip, _, port = advertise.rpartition(":")
        reg = Registry(args.registry, args.service, ip, int(port))
        # bounded: rnacos may be busy
        register_or_exit(lambda: reg.register({"timestamp": started, "warmup": args.warmup_ms}),
                         20, 0.25, "registered", advertise)

    eureka = None
    if args.eureka:
        ip, _, port = advertise.rpartition(":")
        eureka = Eureka(args.eureka, args.service, ip, int(port))
        # bounded: the server may still be starting
        register_or_exit(eureka.register, 40, 0.5, "registered in Eureka", eureka.id)
        model.registered = True

        def beat():
            while not term.wait(args.renew_s):
                try:
                    eureka.renew()
                except (OSError, RuntimeError) as exc:
                    log("Eureka renew failed:", exc)

        threading.Thread(target=beat, daemon=True, name="eureka-renew").start()

    while not term.wait(0.5):
        pass

    if eureka is not None:
        return spring_shutdown(args, model, server, eureka)

    # lossless shutdown
    model.offline_ms = now_ms()
    if reg and args.drain_via in ("both", "registry"):
        try:
            reg.offline()
            log("marked offline in the registry (enabled=false)")
        except (OSError, RuntimeError) as exc:
            log("offline failed:", exc)
    if args.sidecar and args.drain_via in ("both", "sidecar"):
        try:
            log("sidecar drain ->", post(args.sidecar, "/lossless/drain"))
        except OSError as exc:
            log("sidecar drain failed:", exc)
    deadline = time.monotonic() + args.max_drain_s
    while time.monotonic() < deadline:
        with model.lock:
            last = max(model.last_arrival_ms or 0, model.offline_ms)
            idle = model.inflight == 0
        if idle and now_ms() - last >= args.quiet_s * 1000:
            break
        time.sleep(0.05)
    quiet = now_ms() - max(model.last_arrival_ms or 0, model.offline_ms) >= args.quiet_s * 1000
    if reg:
        try:
            reg.deregister()
            log("deregistered")
        except (OSError, RuntimeError) as exc:
            log("deregister failed:", exc)
    doc = model.stats(exit="lossless", exit_ms=now_ms(), quiet=quiet, **Handler.ident)
    write_stats(args.stats_file, doc)
    log("exit:", json.dumps(doc))
    server.shutdown()
    server.server_close()


def spring_shutdown(args, model, server, eureka):
    """SIGTERM as a Spring Boot service with the Eureka client handles it by default: cancel
    the registration, stop accepting, finish what is in flight, exit."""
    model.offline_ms = now_ms()
    try:
        eureka.cancel()
        log("cancelled in Eureka")
    except (OSError, RuntimeError) as exc:
        log("Eureka cancel failed:", exc)
    model.closing = True
    server.shutdown()
    server.server_close()  # new connections are refused from here on
    deadline = time.monotonic() + args.max_drain_s
    while time.monotonic() < deadline:
        with model.lock:
            if model.inflight == 0 and model.writing == 0:
                break
        time.sleep(0.02)
    doc = model.stats(exit="spring", exit_ms=now_ms(), **Handler.ident)
    write_stats(args.stats_file, doc)
    log("exit:", json.dumps(doc))


if __name__ == "__main__":
    main()
