"""A registry front for fault injection: forwards to the real registry (rnacos) unless told to
answer list requests with garbage, a 500, an empty list, or to stall past the caller's timeout.

    python3 regproxy.py --port P --upstream 127.0.0.1:8848
    POST /__mode?m=pass|garbage|500|empty|stall   GET /__count  (list requests seen)

More modes (chaos tests), each for list requests only:
    partial      the upstream's reply with only its first host
    alldown      the upstream's reply with every host healthy=false (a health-check flap)
    403          403 (as a registry answers an expired token)
    slow         the upstream's reply after `delay` s (POST /__mode?m=slow&delay=3)
    huge         200 with a valid list padded to `mb` MiB (default 50), content-length known
    hugechunked  the same, chunked (no content-length)
    trickle      the upstream's reply, one byte every `every` s (default 0.2)
    echo         `status` (default 500) with the request's path and body in the reply body
    replay       the list reply saved by POST /__save (an older view, as a lagging replica or a
                 response cache answers); /__save keeps the last reply passed through unchanged
    cycle:A,B,C  each list request gets the next mode of the list (A, B, C, A, ...)
and, for login requests, POST /__mode?m=...&login=echo: answered `status` (default 403) with the
request body (the credentials) in the reply body, as a careless registry or proxy might.
GET /__count also gives {"modes": {mode: list requests answered in it}}; GET /__seen gives the
distinct accessToken values of list requests and the number of login requests forwarded.
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
LOGIN = "/nacos/v1/auth/login"


class State:
    mode = "pass"
    lists = 0
    lock = threading.Lock()
    # chaos additions
    params = {}
    cycle_pos = 0
    modes = {}
    tokens = []
    logins = 0
    last_list = None  # (status, body, content-type) of the last list reply passed through
    saved = None  # what `replay` answers


PAD_CHUNK = b" " * (1 << 20)


def next_mode():
    """The mode for this list request (advances a cycle) and counts it."""
    with State.lock:
        mode = State.mode
        if mode.startswith("cycle:"):
            seq = [m for m in mode[len("cycle:"):].split(",") if m] or ["pass"]
            mode = seq[State.cycle_pos % len(seq)]
            State.cycle_pos += 1
        State.modes[mode] = State.modes.get(mode, 0) + 1
        return mode


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
            query = parse_qs(url.query)
            with State.lock:
                State.mode = query.get("m", ["pass"])[0]
                State.params = {k: v[0] for k, v in query.items() if k != "m"}
                State.cycle_pos = 0
            return self.reply(200, json.dumps({"mode": State.mode}).encode())
        if url.path == "/__count":
            with State.lock:
                doc = {"lists": State.lists, "modes": dict(State.modes)}
            return self.reply(200, json.dumps(doc).encode())
        if url.path == "/__save":
            with State.lock:
                State.saved = State.last_list
                ok = State.saved is not None
            return self.reply(200 if ok else 409, json.dumps({"saved": ok}).encode())
        if url.path == "/__seen":
            with State.lock:
                doc = {"tokens": list(State.tokens), "logins": State.logins}
            return self.reply(200, json.dumps(doc).encode())
        if url.path == LOGIN:
            with State.lock:
                State.logins += 1
            if State.params.get("login") == "echo":
                return self.reply(int(State.params.get("status", 403)),
                                  b"login refused for " + (body or b""), "text/plain")
        if url.path == LIST:
            token = parse_qs(url.query).get("accessToken", [None])[0]
            with State.lock:
                State.lists += 1
                if token and token not in State.tokens:
                    State.tokens.append(token)
            mode = next_mode()
            if mode == "garbage":
                return self.reply(200, b"<html>not json", "text/html")
            if mode == "500":
                return self.reply(500, b'{"error":"boom"}')
            if mode == "empty":
                return self.reply(200, b'{"name":"x","hosts":[]}')
            if mode == "stall":
                time.sleep(6)
                return self.reply(200, b'{"hosts":[]}')
            if mode == "403":
                return self.reply(403, b"token invalid!", "text/plain")
            if mode == "echo":
                return self.reply(int(State.params.get("status", 500)),
                                  ("echo " + self.path + " ").encode() + (body or b""),
                                  "text/plain")
            if mode == "replay" and State.saved is not None:
                return self.reply(*State.saved)
            if mode in ("partial", "alldown", "slow", "huge", "hugechunked", "trickle"):
                return self.chaos(mode, body)
        conn = http.client.HTTPConnection(*self.upstream, timeout=5)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            ctype = r.getheader("content-type") or "application/json"
            if url.path == LIST and r.status == 200:
                with State.lock:
                    State.last_list = (r.status, data, ctype)
            self.reply(r.status, data, ctype)
        except OSError as e:
            self.reply(502, str(e).encode(), "text/plain")
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

    def forward(self, body):
        """(status, body, content-type) of the same request sent to the upstream."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=5)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.read(), r.getheader("content-type") or "application/json"
        finally:
            conn.close()

    def chaos(self, mode, body):
        params = State.params
        try:
            status, data, ctype = self.forward(body)
        except OSError as e:
            return self.reply(502, str(e).encode(), "text/plain")
        if mode == "partial":
            doc = json.loads(data)
            doc["hosts"] = sorted(doc.get("hosts") or [], key=lambda h: (h["ip"], h["port"]))[:1]
            return self.reply(status, json.dumps(doc).encode(), ctype)
        if mode == "alldown":
            doc = json.loads(data)
            for h in doc.get("hosts") or []:
                h["healthy"] = False
            return self.reply(status, json.dumps(doc).encode(), ctype)
        if mode == "slow":
            time.sleep(float(params.get("delay", 3)))
            return self.reply(status, data, ctype)
        if mode in ("huge", "hugechunked"):
            # a valid list, padded with whitespace inside the JSON object to `mb` MiB
            size = int(float(params.get("mb", 50)) * (1 << 20))
            head, tail = data.rstrip()[:-1], b"}"
            pad = max(0, size - len(head) - len(tail))
            self.send_response(status)
            self.send_header("content-type", ctype)
            chunked = mode == "hugechunked"
            if chunked:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(len(head) + pad + len(tail)))
            self.end_headers()

            def put(b):
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                else:
                    self.wfile.write(b)
            try:
                put(head)
                while pad > 0:
                    n = min(pad, len(PAD_CHUNK))
                    put(PAD_CHUNK[:n])
                    pad -= n
                put(tail)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True
            return None
        if mode == "trickle":
            every = float(params.get("every", 0.2))
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(every)
            except OSError:
                self.close_connection = True
            return None
        return self.reply(status, data, ctype)


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
