#!/usr/bin/env python3
"""A stand-in for Consul's `GET /v1/health/service/<name>` with blocking queries, for
bench/scale.py's idle-cost measurement (no Consul server can be obtained on these machines).

It follows Consul's "Blocking Queries" doc (developer.hashicorp.com/consul/api-docs/features/
blocking): every reply carries `X-Consul-Index`, the service's modify index; a request with
`index=<i>` lower than the current index is answered at once, one with `index` equal to it is
held until the service changes or `wait` passes (default 5 min, at most 10 min) plus a random
jitter of up to wait/16, then answered with the same index. The body is the endpoint's list of
{Node, Service, Checks} entries in the shape of the API doc's sample, one per instance, every
check passing.

Control (loopback only):
    POST /__register?service=S&port=P     adds 127.0.0.1:P to S (bumps its index)
    POST /__deregister?service=S&port=P   removes it (bumps its index)
    GET  /__count                         {"lists": health requests answered, "held": of which
                                          were held until the wait or a change}
Usage: consul_front.py --port N
"""

import argparse
import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

WAIT_DEFAULT_S = 300.0
WAIT_MAX_S = 600.0
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


class Registry:
    def __init__(self):
        self.cond = threading.Condition()
        self.index = 1  # the last modify index handed out (Consul's raft index: shared)
        self.services = {}  # name -> {"index": i, "ports": set()}
        self.lists = 0
        self.held = 0

    def change(self, service, port, add):
        with self.cond:
            s = self.services.setdefault(service, {"index": self.index, "ports": set()})
            self.index += 1
            s["index"] = self.index
            (s["ports"].add if add else s["ports"].discard)(port)
            self.cond.notify_all()

    def wait_for(self, service, index, wait_s):
        """(modify index, ports) once the service's index passes `index` or the wait is over."""
        deadline_s = wait_s + random.uniform(0, wait_s / 16)
        with self.cond:
            s = self.services.setdefault(service, {"index": self.index, "ports": set()})
            held = index is not None and index >= s["index"]
            if held:
                self.cond.wait_for(lambda: s["index"] > index, timeout=deadline_s)
            self.lists += 1
            self.held += held
            return s["index"], sorted(s["ports"])


def entry(service, port):
    sid = f"{service}-{port}"
    check = {"Node": "bench", "CheckID": f"service:{sid}", "Name": f"Service '{service}' check",
             "Status": "passing", "Notes": "", "Output": "", "ServiceID": sid,
             "ServiceName": service, "ServiceTags": [], "Namespace": "default"}
    return {
        "Node": {"ID": "00000000-0000-0000-0000-000000000001", "Node": "bench",
                 "Address": "127.0.0.1", "Datacenter": "dc1",
                 "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"}, "Meta": {}},
        "Service": {"ID": sid, "Service": service, "Tags": [], "Address": "127.0.0.1",
                    "Meta": {}, "Port": port, "Weights": {"Passing": 1, "Warning": 1},
                    "Namespace": "default"},
        "Checks": [check],
    }


def seconds(text):
    m = DURATION.match(text or "")
    if not m:
        return WAIT_DEFAULT_S
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return min(value / 1000 if unit == "ms" else value * 60 if unit == "m" else value, WAIT_MAX_S)


def handler(reg):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body, headers=()):
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            if url.path == "/__count":
                doc = {"lists": reg.lists, "held": reg.held}
                return self.reply(200, json.dumps(doc).encode())
            prefix = "/v1/health/service/"
            if not url.path.startswith(prefix):
                return self.reply(404, b"{}")
            service = url.path[len(prefix):]
            index = q.get("index", [None])[0]
            index = int(index) if index and index.isdigit() else None
            wait_s = seconds(q.get("wait", [""])[0])
            modify, ports = reg.wait_for(service, index, wait_s)
            body = json.dumps([entry(service, p) for p in ports]).encode()
            self.reply(200, body, [("x-consul-index", str(modify))])

        def do_POST(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            if url.path in ("/__register", "/__deregister"):
                service, port = q["service"][0], int(q["port"][0])
                reg.change(service, port, url.path == "/__register")
                return self.reply(200, b"{}")
            self.reply(404, b"{}")

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(Registry()))
    server.daemon_threads = True
    print(f"consul front listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
