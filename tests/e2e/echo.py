"""An upstream that records exactly what reached it: every request as one JSON line in --log
(method, target, version, headers in order as sent, body, the peer's and its own address), and
the same object as its 200 answer with `x-instance: host:port`. For tests that compare what a
client sent with what the upstream received.

Run: python3 echo.py --host H --port P --log FILE [--name NAME]
"""

import argparse
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--name", default="")
    args = ap.parse_args()
    instance = f"{args.host}:{args.port}"
    lock = threading.Lock()
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - open for the server's life

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *a):
            pass

        def handle_one_request(self):
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = {
                "instance": instance,
                "name": args.name,
                "method": self.command,
                "target": self.path,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": body.decode("utf-8", "replace"),
                "peer": "{}:{}".format(*self.client_address[:2]),
                "local": "{}:{}".format(*self.connection.getsockname()[:2]),
            }
            out = json.dumps(seen).encode()
            with lock:
                log.write(json.dumps(seen) + "\n")
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.send_header("x-instance", instance)
            self.end_headers()
            self.wfile.write(out)
            self.wfile.flush()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"echo listening on {instance}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
