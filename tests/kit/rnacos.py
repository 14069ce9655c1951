"""rnacos (a Nacos server in Rust) on free loopback ports: start (retried past its startup
panic), restart, login, and the Nacos v1 open API calls the tests and the demo make."""

import json
import shutil
from pathlib import Path
from urllib.parse import urlencode

from .env import LOOPBACK, env_path
from .http import request, wait_http
from .ports import free_port
from .procs import Managed, wait_until


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
