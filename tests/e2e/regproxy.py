"""A registry front for fault injection: forwards to the real registry (rnacos) unless told to
answer list requests with garbage, a 500, an empty list, or to stall past the caller's timeout.

    python3 regproxy.py --port P --upstream 127.0.0.1:8848
    POST /__mode?m=pass|garbage|500|empty|stall   GET /__count  (list requests seen)
"""
import argparse
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LIST = "/nacos/v1/ns/instance/list"


class State:
    mode = "pass"
    lists = 0
    lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        if url.path == "/__mode":
            State.mode = parse_qs(url.query).get("m", ["pass"])[0]
            return self.reply(200, json.dumps({"mode": State.mode}).encode())
        if url.path == "/__count":
            return self.reply(200, json.dumps({"lists": State.lists}).encode())
        if url.path == LIST:
            with State.lock:
                State.lists += 1
            mode = State.mode
            if mode == "garbage":
                return self.reply(200, b"<html>not json", "text/html")
            if mode == "500":
                return self.reply(500, b'{"error":"boom"}')
            if mode == "empty":
                return self.reply(200, b'{"name":"x","hosts":[]}')
            if mode == "stall":
                time.sleep(6)
                return self.reply(200, b'{"hosts":[]}')
        conn = http.client.HTTPConnection(*self.upstream, timeout=5)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.reply(r.status, data, r.getheader("content-type") or "application/json")
        except OSError as e:
            self.reply(502, str(e).encode(), "text/plain")
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    a = ap.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    Handler.upstream = (host, int(port))
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
