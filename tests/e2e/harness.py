"""End-to-end harness: processes (rnacos, backends, Envoy), HTTP helpers and a load generator.

Everything binds 127.0.0.1, every wait is bounded, every process is tracked and stopped.
Binaries come from the environment: ENVOY_BIN, RNACOS_BIN, LOSSLESS_WASM.
"""

import atexit
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections import Counter, namedtuple
from pathlib import Path
from urllib.parse import urlencode, urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TEMPLATES = HERE / "templates"
LOOPBACK = "127.0.0.1"

# What the lossless suites share: the rnacos service, the shipped Envoy templates, time helpers.
SERVICE = "demo-svc"
OUTBOUND = REPO / "envoy" / "outbound-override-host.yaml"
ORIGINAL_DST = REPO / "envoy" / "outbound-original-dst.yaml"
INBOUND = REPO / "envoy" / "inbound.yaml"
HOUR_MS = 3_600_000


def now_ms():
    return int(time.time() * 1000)


def env_path(name):
    """Path from env var `name`; raises if unset or missing."""
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set")
    path = Path(value)
    if not path.exists():
        raise RuntimeError(f"{name}={value} does not exist")
    return path


_given_ports = set()
_ports_lock = threading.Lock()


def free_port():
    """A free loopback TCP port, never the same one twice in this process."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOOPBACK, 0))
                port = s.getsockname()[1]
            if port not in _given_ports:
                _given_ports.add(port)
                return port
    raise RuntimeError("no free port found")


def wait_until(fn, timeout=10.0, interval=0.1, what="condition"):
    """Poll fn() until it returns a truthy value (returned); raise TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def request(method, url, body=None, headers=None, timeout=5.0):
    """One HTTP/1.1 request (no proxies). Returns (status, {lowercase header: value}, bytes)."""
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


class ProcessExited(RuntimeError):
    pass


# --------------------------------------------------------------------------- processes

_all_procs = []


class Procs:
    """Starts named processes with logs in log_dir; stop_all() ends every one (TERM, then KILL)."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs = {}  # name -> Popen
        self.logs = {}  # name -> Path
        _all_procs.append(self)

    def start(self, name, argv, env=None, log_path=None, cwd=None):
        """Start argv (no shell) with os.environ + env; stdout and stderr appended to log_path."""
        if self.is_alive(name):
            raise RuntimeError(f"process {name} is already running")
        log_path = Path(log_path or self.log_dir / f"{name}.log")
        full_env = dict(os.environ)
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        with open(log_path, "ab") as log:
            log.write(f"--- start {name}: {' '.join(map(str, argv))}\n".encode())
            log.flush()
            proc = subprocess.Popen([str(a) for a in argv], env=full_env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.procs[name] = proc
        self.logs[name] = log_path
        return proc

    def is_alive(self, name):
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop(self, name, timeout=5.0, sig=signal.SIGTERM):
        """Send sig, wait up to timeout, then SIGKILL. Returns the exit code (None if unknown)."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
            except ProcessLookupError:
                pass
        try:
            return proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, name):
        """SIGKILL at once."""
        return self.stop(name, timeout=0.0, sig=signal.SIGKILL)

    def stop_all(self, timeout=5.0):
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in alive:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)

    def log_paths(self):
        return sorted(self.log_dir.iterdir())


@atexit.register
def _stop_everything():
    for procs in _all_procs:
        procs.stop_all(timeout=2.0)


# --------------------------------------------------------------------------- rnacos

class Managed:
    """A process started through `self.procs` under `self.name`."""

    def stop(self):
        return self.procs.stop(self.name)

    def kill(self):
        return self.procs.kill(self.name)

    def is_alive(self):
        return self.procs.is_alive(self.name)


class RnacosError(RuntimeError):
    pass


class Rnacos(Managed):
    """An rnacos server on free loopback ports with its own data dir (kept across restart()).

    Measured on 0.8.8: persistent (ephemeral=false) instances are TCP-probed every
    `probe_interval` s (default 60, min 5) and listed healthy=false while nothing listens;
    ephemeral ones are removed ~35 s after the last beat (env RNACOS_NAMING_*_TIMEOUT_SECOND).
    """

    def __init__(self, procs, workdir, binary=None, auth=False, name="rnacos",
                 probe_interval=None, env=None):
        self.procs = procs
        self.name = name
        self.binary = Path(binary) if binary else env_path("RNACOS_BIN")
        self.workdir = Path(workdir) / name
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.auth = auth
        self.token = None
        self.env = {
            "RNACOS_HTTP_PORT": self.http_port,
            "RNACOS_GRPC_PORT": self.grpc_port,
            "RNACOS_HTTP_CONSOLE_PORT": 0,  # 0 = no console server
            "RNACOS_DATA_DIR": self.data_dir,
            "RNACOS_SDK_HOST": LOOPBACK,
            "RNACOS_CONSOLE_HOST": LOOPBACK,
            "RNACOS_RAFT_NODE_ADDR": f"{LOOPBACK}:{self.grpc_port}",
            "RNACOS_ENABLE_OPEN_API_AUTH": "true" if auth else "false",
            "RUST_LOG": "warn",
        }
        if probe_interval is not None:  # TCP probe of persistent instances (default 60 s, min 5)
            self.env["RNACOS_NAMING_PERPETUAL_INSTANCE_PROBE_INTERVAL_SECOND"] = probe_interval
        self.env.update(env or {})

    @property
    def url(self):
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def addr(self):
        return f"{LOOPBACK}:{self.http_port}"

    def start(self, timeout=30.0, attempts=3):
        """Start and wait until it serves (and, with auth, logs in). rnacos 0.8.8 sometimes panics
        in its raft thread right at startup and then refuses logins ("Mailbox has closed"): such a
        start is retried with a fresh data dir, up to `attempts` times."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except (TimeoutError, RnacosError):
                if attempt + 1 == attempts or not self.panicked():
                    raise
                self.kill()
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.data_dir.mkdir(parents=True, exist_ok=True)
                log = self.procs.logs.get(self.name)
                if log:  # keep the evidence, clear panicked() for the next try
                    Path(log).rename(Path(log).with_suffix(f".panic{attempt}.log"))
        return self

    def _start_once(self, timeout):
        # cwd = workdir so that rnacos' dotenv does not pick up a stray .env
        proc = self.procs.start(self.name, [self.binary], env=self.env, cwd=self.workdir)
        probe = "/nacos/v1/ns/instance/list?serviceName=__probe__&healthyOnly=false"
        wait_http(self.url + probe, timeout=timeout, status=403 if self.auth else 200, proc=proc)
        if self.auth:  # the admin user is created asynchronously after startup
            wait_until(self.login, timeout=timeout, interval=0.2, what="rnacos login")
        return self

    def restart(self, timeout=30.0):
        """Same ports and data dir. Persistent instances survive unless panicked() (see there)."""
        self.stop()
        return self.start(timeout)

    def panicked(self):
        """True if a thread of rnacos panicked (0.8.8 sometimes does in its raft apply under
        write bursts: it keeps serving from memory, but loses the instances on restart)."""
        path = self.procs.logs.get(self.name)
        return bool(path) and "panicked" in Path(path).read_text(errors="replace")

    def login(self, username="admin", password="admin"):
        status, _, data = request("POST", self.url + "/nacos/v1/auth/login",
                                  body=urlencode({"username": username, "password": password}),
                                  headers={"content-type": "application/x-www-form-urlencoded"})
        if status != 200:
            raise RnacosError(f"login -> {status}: {data[:300]!r}")
        self.token = json.loads(data)["accessToken"]
        return self.token

    def call(self, method, path, params, expect_ok=True):
        """Form-encoded call (query string for GET); returns the body text, raises unless 200."""
        params = {k: v for k, v in params.items() if v is not None}
        if self.token:
            params["accessToken"] = self.token
        form = urlencode(params)
        if method == "GET":
            status, _, data = request(method, f"{self.url}{path}?{form}")
        else:
            status, _, data = request(
                method, self.url + path, body=form,
                headers={"content-type": "application/x-www-form-urlencoded"})
        text = data.decode(errors="replace")
        if status != 200 or (expect_ok and text.strip() != "ok"):
            raise RnacosError(f"{method} {path} {params} -> {status}: {text[:300]}")
        return text

    @staticmethod
    def _instance(service, ip, port, ephemeral):
        return {"serviceName": service, "ip": ip, "port": port,
                "ephemeral": "true" if ephemeral else "false"}

    def register(self, service, ip, port, weight=1.0, metadata=None, ephemeral=False,
                 enabled=True):
        """POST /nacos/v1/ns/instance. Metadata values are sent as strings (rnacos silently
        drops a metadata object with non-string values). On an existing instance this is an
        update: weight=1.0 and empty metadata leave the old values (rnacos)."""
        params = self._instance(service, ip, port, ephemeral)
        params.update(weight=weight, enabled="true" if enabled else "false", healthy="true")
        if metadata:
            params["metadata"] = json.dumps({k: str(v) for k, v in metadata.items()})
        return self.call("POST", "/nacos/v1/ns/instance", params)

    def update(self, service, ip, port, ephemeral=False, **fields):
        """PUT /nacos/v1/ns/instance with fields (weight, enabled, metadata dict...). rnacos:
        creates an unknown instance; ignores weight=1.0 and metadata={}; metadata replaces."""
        params = self._instance(service, ip, port, ephemeral)
        for key, value in fields.items():
            if key == "metadata" and isinstance(value, dict):
                value = json.dumps({k: str(v) for k, v in value.items()})
            elif isinstance(value, bool):
                value = "true" if value else "false"
            params[key] = value
        return self.call("PUT", "/nacos/v1/ns/instance", params)

    def set_enabled(self, service, ip, port, enabled, ephemeral=False):
        return self.update(service, ip, port, ephemeral=ephemeral, enabled=enabled)

    def deregister(self, service, ip, port, ephemeral=False):
        return self.call("DELETE", "/nacos/v1/ns/instance",
                         self._instance(service, ip, port, ephemeral))

    def beat(self, service, ip, port):
        """Heartbeat for an ephemeral instance; returns the JSON reply."""
        beat = json.dumps({"serviceName": service, "ip": ip, "port": port})
        text = self.call("PUT", "/nacos/v1/ns/instance/beat",
                         {"serviceName": service, "ip": ip, "port": port, "beat": beat},
                         expect_ok=False)
        return json.loads(text)

    def list(self, service, healthy_only=False):
        """GET /nacos/v1/ns/instance/list (healthyOnly=false unless asked) -> parsed JSON."""
        text = self.call("GET", "/nacos/v1/ns/instance/list",
                         {"serviceName": service,
                          "healthyOnly": "true" if healthy_only else "false"},
                         expect_ok=False)
        return json.loads(text)

    def hosts(self, service):
        """{"ip:port": host dict} from list()."""
        return {f"{h['ip']}:{h['port']}": h for h in self.list(service).get("hosts", [])}

    def detail(self, service, ip, port, ephemeral=False):
        """GET /nacos/v1/ns/instance (also returns disabled instances)."""
        text = self.call("GET", "/nacos/v1/ns/instance",
                         self._instance(service, ip, port, ephemeral), expect_ok=False)
        return json.loads(text)


# --------------------------------------------------------------------------- backends

class Backend(Managed):
    """A backend.py server on a free port (or `port`); answers with x-instance: 127.0.0.1:P."""

    def __init__(self, procs, name=None, port=None):
        self.procs = procs
        self.port = port or free_port()
        self.name = name or f"backend-{self.port}"
        self.proc = None

    @property
    def addr(self):
        return f"{LOOPBACK}:{self.port}"

    instance = addr

    @property
    def url(self):
        return f"http://{self.addr}"

    def start(self, timeout=10.0):
        argv = [sys.executable, str(HERE / "backend.py"), "--port", self.port,
                "--name", self.name]
        self.proc = self.procs.start(self.name, argv)
        wait_http(self.url + "/__stats", timeout=timeout, proc=self.proc)
        return self

    def restart(self, timeout=10.0):
        self.stop()
        return self.start(timeout)

    def stats(self):
        return get_json(self.url + "/__stats")

    def counts(self):
        """{method: requests served} (control endpoints not counted)."""
        return self.stats()["counts"]

    def total(self):
        return self.stats()["total"]

    def _control(self, what, value):
        status, _, data = request("POST", f"{self.url}/{what}{value}", body=b"")
        if status != 200:
            raise RuntimeError(f"backend {self.name} {what} -> {status}: {data!r}")
        return json.loads(data)

    def drain_header(self, on=True):
        return self._control("__drain_header?on=", 1 if on else 0)

    def set_status(self, code):
        return self._control("__status?code=", code)

    def set_delay(self, ms):
        return self._control("__delay?ms=", ms)

    def reset(self):
        return self._control("__reset", "")


# --------------------------------------------------------------------------- envoy

_base_ids = itertools.count(1)


def resolve_template(template):
    """An absolute/existing path, else relative to tests/e2e/templates, else to the repo."""
    path = Path(template)
    for candidate in (path, TEMPLATES / path, REPO / path):
        if candidate.exists():
            return candidate.resolve()
    raise FileNotFoundError(f"envoy template {template} not found")


def render(template, subs, out_path):
    """Substitute ${NAME} placeholders (LOSSLESS_WASM defaults from env); none may remain."""
    values = {}
    if os.environ.get("LOSSLESS_WASM"):
        values["LOSSLESS_WASM"] = os.environ["LOSSLESS_WASM"]
    values.update({k: str(v) for k, v in subs.items()})
    text = string.Template(resolve_template(template).read_text()).safe_substitute(values)
    left = sorted(set(re.findall(r"\$\{[^}]*\}", text)))
    if left:
        hint = " (set env LOSSLESS_WASM)" if "${LOSSLESS_WASM}" in left else ""
        raise ValueError(f"unsubstituted placeholders in {template}: {', '.join(left)}{hint}")
    out_path = Path(out_path)
    out_path.write_text(text)
    return out_path


def lb_endpoints(addrs):
    """YAML flow list of lb_endpoints for 'ip:port' strings or ports (for ${ENDPOINTS})."""
    items = []
    for addr in addrs:
        host, _, port = str(addr).rpartition(":")
        host = host or LOOPBACK
        items.append("{endpoint: {address: {socket_address: "
                     f"{{address: {host}, port_value: {int(port)}}}}}}}}}")
    return "[" + ", ".join(items) + "]"


class Envoy(Managed):
    """Envoy from a template; subs need ADMIN_PORT (a free one is added if missing)."""

    def __init__(self, procs, workdir, template, subs=None, concurrency=1, name="envoy",
                 binary=None, log_level="info", extra_args=()):
        self.procs = procs
        self.name = name
        self.binary = Path(binary) if binary else env_path("ENVOY_BIN")
        self.template = template
        self.subs = dict(subs or {})
        self.subs.setdefault("ADMIN_PORT", free_port())
        self.admin_port = int(self.subs["ADMIN_PORT"])
        self.workdir = Path(workdir)
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.envoy.log"
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.base_id = (os.getpid() % 20000) * 50 + next(_base_ids) % 50
        render(template, self.subs, self.config_path)

    @property
    def admin_url(self):
        return f"http://{LOOPBACK}:{self.admin_port}"

    def argv(self):
        return [self.binary, "-c", self.config_path, "--concurrency", self.concurrency,
                "--base-id", self.base_id, "--disable-hot-restart", "-l", self.log_level,
                "--log-path", self.log_path, *self.extra_args]

    def start(self, timeout=30.0):
        proc = self.procs.start(self.name, self.argv())
        try:
            wait_http(self.admin_url + "/ready", timeout=timeout, proc=proc)
        except (TimeoutError, ProcessExited) as exc:
            raise RuntimeError(f"envoy {self.name} not ready: {exc}\n{self.log_tail()}") from exc
        return self

    def restart(self, timeout=30.0):
        self.stop()
        return self.start(timeout)

    def admin(self, method, path, body=None):
        """(status, text) of an admin call."""
        status, _, data = request(method, self.admin_url + path, body=body)
        return status, data.decode(errors="replace")

    def stats(self):
        """{name: value} of counters, gauges and text readouts (histograms left out)."""
        doc = get_json(self.admin_url + "/stats?format=json")
        return {s["name"]: s["value"] for s in doc.get("stats", []) if "value" in s}

    def stat(self, name, default=None):
        return self.stats().get(name, default)

    def log_text(self):
        parts = []
        for path in (self.log_path, self.procs.logs.get(self.name)):
            if path and Path(path).exists():
                parts.append(Path(path).read_text(errors="replace"))
        return "\n".join(parts)

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    @staticmethod
    def validate(template, subs, workdir, binary=None, name="validate"):
        """`envoy --mode validate` on the rendered template -> (returncode, output)."""
        binary = Path(binary) if binary else env_path("ENVOY_BIN")
        subs = dict(subs)
        subs.setdefault("ADMIN_PORT", 0)
        cfg = render(template, subs, Path(workdir) / f"{name}.yaml")
        res = subprocess.run([str(binary), "--mode", "validate", "-c", str(cfg),
                              "--disable-hot-restart", "-l", "warn"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=60)
        return res.returncode, res.stdout + res.stderr


_CRASH = re.compile(r"\[critical\].*wasm|wasm.*\[critical\]|panicked|wasm log.*panic",
                    re.IGNORECASE)


def wasm_crash_lines(text):
    return [line for line in text.splitlines() if _CRASH.search(line)]


def assert_no_wasm_crash(envoy):
    """Fail if Envoy's log shows a wasm critical error or a Rust panic."""
    bad = wasm_crash_lines(envoy.log_text())
    assert not bad, f"wasm crash in {envoy.log_path}:\n" + "\n".join(bad[:20])


# --------------------------------------------------------------------------- load

Sample = namedtuple("Sample", "t method status instance latency error headers")


class Load:
    """Bounded HTTP load: `threads` keep-alive connections for `duration` s or `count` requests,
    optionally at `rate` req/s in total; a `post_share` of requests are POSTs with `body`.
    Sample.t is seconds since start(); status 0 means an exception (Sample.error)."""

    def __init__(self, port, threads=8, duration=None, count=None, rate=None, post_share=0.0,
                 path="/", headers=None, body=b'{"op":"write"}', timeout=5.0,
                 record_headers=(), max_duration=120.0):
        if duration is None and count is None:
            duration = 2.0
        self.port = port
        self.threads = threads
        self.duration = min(duration if duration is not None else max_duration, max_duration)
        self.count = count
        self.rate = rate
        self.post_share = post_share
        self.path = path
        self.headers = dict(headers or {})
        self.body = body
        self.timeout = timeout
        self.record_headers = tuple(h.lower() for h in record_headers)
        self._samples = []
        self._lock = threading.Lock()
        self._issued = 0
        self._stop = threading.Event()
        self._workers = []
        self.t0 = None

    def start(self):
        self.t0 = time.monotonic()
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True,
                                      name=f"load-{i}")
            worker.start()
            self._workers.append(worker)
        return self

    def wait(self, timeout=None):
        """Join the workers (bounded by duration + request timeout + margin)."""
        limit = timeout if timeout is not None else self.duration + self.timeout + 10.0
        deadline = time.monotonic() + limit
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        if any(w.is_alive() for w in self._workers):
            raise TimeoutError("load workers did not finish")
        return self

    def run(self):
        return self.start().wait()

    def stop(self):
        self._stop.set()
        return self.wait()

    def elapsed(self):
        return time.monotonic() - self.t0

    def _claim(self):
        with self._lock:
            if self.count is not None and self._issued >= self.count:
                return False
            self._issued += 1
            return True

    def _run(self, index):
        conn = None
        interval = self.threads / self.rate if self.rate else 0.0
        next_at = self.t0 + (interval * index / self.threads if interval else 0.0)
        end = self.t0 + self.duration
        n = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if interval:
                if next_at > now:
                    time.sleep(min(next_at - now, max(0.0, end - now)))
                next_at += interval
            if time.monotonic() >= end or not self._claim():
                break
            # exact share: request n is a POST when floor(n * share) steps up
            is_post = int((n + 1) * self.post_share) > int(n * self.post_share)
            n += 1
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            conn, sample = self._one(conn, "POST" if is_post else "GET")
            with self._lock:
                self._samples.append(sample)
        if conn is not None:
            conn.close()

    def _one(self, conn, method):
        start = time.monotonic()
        headers = dict(self.headers)
        body = None
        if method == "POST":
            body = self.body
            headers.setdefault("content-type", "application/json")
        try:
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            kept = {h: resp.getheader(h) for h in self.record_headers if resp.getheader(h)}
            sample = Sample(start - self.t0, method, resp.status, resp.getheader("x-instance"),
                            time.monotonic() - start, None, kept)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conn = None
            sample = Sample(start - self.t0, method, 0, None, time.monotonic() - start,
                            f"{type(exc).__name__}: {exc}", {})
        return conn, sample

    def results(self):
        with self._lock:
            return list(self._samples)

    def errors(self):
        """Samples with an exception or a non-2xx status."""
        return [s for s in self.results() if not 200 <= s.status < 300]

    def window(self, start=None, end=None):
        return [s for s in self.results()
                if (start is None or s.t >= start) and (end is None or s.t < end)]

    def counts(self, start=None, end=None, method=None):
        """Counter of x-instance over 2xx samples in [start, end)."""
        return Counter(s.instance for s in self.window(start, end)
                       if 200 <= s.status < 300 and (method is None or s.method == method))

    def shares(self, window_start=None, window_end=None):
        """{instance: fraction of 2xx responses} in [window_start, window_end)."""
        counts = self.counts(window_start, window_end)
        total = sum(counts.values())
        return {k: v / total for k, v in counts.items()} if total else {}

    def summary(self):
        res = self.results()
        statuses = Counter(s.status for s in res)
        return (f"{len(res)} requests, statuses {dict(statuses)}, "
                f"instances {dict(self.counts())}")
