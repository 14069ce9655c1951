"""A real Eureka server (peers/eureka-server: Spring Cloud Netflix's Eureka Server, built by
`make eureka`) on a free loopback port, and the REST calls an instance makes to it: register,
heartbeat, status override, delete override, cancel; plus the list lossless reads.

The REST API is Netflix Eureka's (`eureka-core`'s Jersey resources, served under /eureka by
Spring Cloud Netflix): POST /apps/{APP} registers (204), PUT /apps/{APP}/{ID} renews (404 when
the server holds no lease, or holds one whose status is UNKNOWN after a deleted override: the
instance must register again, as Eureka's own DiscoveryClient does), PUT .../status?value=S
overrides the status, DELETE .../status[?value=S] removes the override, DELETE /apps/{APP}/{ID}
cancels; GET /apps/{APP} answers 404 once the application has no instance.
"""

import json
import threading
from pathlib import Path

from .env import LOOPBACK, env_path, now_ms
from .http import request, wait_http
from .ports import free_port
from .procs import Managed

DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m", "-Xss512k")


class EurekaError(RuntimeError):
    pass


class Eureka(Managed):
    """A standalone Eureka server on 127.0.0.1 (it neither registers itself nor fetches from
    peers: peers/eureka-server/src/main/resources/application.properties). `props` are extra
    Spring properties passed as --key=value, e.g. {"eureka.server.use-read-only-response-cache":
    "false"}; without them every eureka.server.* setting is the server's default."""

    def __init__(self, procs, jar=None, props=None, name="eureka", java="java"):
        self.procs = procs
        self.name = name
        self.jar = Path(jar) if jar else env_path("EUREKA_JAR")
        self.props = dict(props or {})
        self.java = java
        self.port = free_port()
        self.proc = None

    @property
    def addr(self):
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self):
        return f"http://{self.addr}/eureka"

    def start(self, timeout=90.0):
        argv = [self.java, *JVM_FLAGS, "-jar", self.jar, f"--server.port={self.port}",
                f"--server.address={LOOPBACK}"]
        argv += [f"--{k}={v}" for k, v in self.props.items()]
        self.proc = self.procs.start(self.name, argv)
        wait_http(self.url + "/apps", timeout=timeout, proc=self.proc)
        return self

    def log_text(self):
        path = self.procs.logs.get(self.name)
        return Path(path).read_text(errors="replace") if path else ""

    # ------------------------------------------------------------------ the instance's calls

    def _call(self, method, path, body=None, ok=(200, 204)):
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
            body = json.dumps(body)
        status, _, data = request(method, self.url + path, body=body, headers=headers)
        if ok and status not in ok:
            raise EurekaError(f"{method} {path} -> {status}: {data[:300]!r}")
        return status, data

    def register(self, app, instance_id, port, ip=LOOPBACK, status="UP", metadata=None,
                 duration_s=90, renewal_s=30):
        """POST /apps/{APP} with an InstanceInfo (JSON, root-wrapped in "instance"). Metadata
        values are sent as strings (Eureka's metadata is a Map<String, String>)."""
        info = {
            "instanceId": instance_id, "hostName": ip, "app": app.upper(), "ipAddr": ip,
            "vipAddress": app.lower(), "status": status,
            "port": {"$": int(port), "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "dataCenterInfo": DATA_CENTER,
            "leaseInfo": {"renewalIntervalInSecs": renewal_s, "durationInSecs": duration_s},
            "metadata": {k: str(v) for k, v in (metadata or {}).items()},
        }
        return self._call("POST", f"/apps/{app}", {"instance": info})[0]

    def heartbeat(self, app, instance_id):
        """PUT /apps/{APP}/{ID}: the status code (200 renewed, 404 no lease: register again)."""
        return self._call("PUT", f"/apps/{app}/{instance_id}", ok=())[0]

    def set_status(self, app, instance_id, value="OUT_OF_SERVICE"):
        return self._call("PUT", f"/apps/{app}/{instance_id}/status?value={value}")[0]

    def delete_override(self, app, instance_id, value=None):
        """DELETE .../status; `value` is the status to fall back to (without one the server sets
        UNKNOWN and the next heartbeat answers 404)."""
        query = f"?value={value}" if value else ""
        return self._call("DELETE", f"/apps/{app}/{instance_id}/status{query}")[0]

    def cancel(self, app, instance_id):
        return self._call("DELETE", f"/apps/{app}/{instance_id}")[0]

    def application(self, app):
        """GET /apps/{APP} as lossless reads it: the parsed reply, or None on 404."""
        status, data = self._call("GET", f"/apps/{app}", ok=(200, 404))
        return json.loads(data) if status == 200 else None

    def instances(self, app):
        """{instanceId: InstanceInfo dict} of GET /apps/{APP} ({} on 404)."""
        doc = self.application(app)
        if doc is None:
            return {}
        records = doc["application"].get("instance", [])
        if isinstance(records, dict):
            records = [records]
        return {r["instanceId"]: r for r in records}


class Heartbeats:
    """Renews registered instances every `interval` s in a thread, as Eureka's client does, and
    registers again when the server answers 404 (its DiscoveryClient.renew does the same);
    stop(id) ends one instance's heartbeats (its lease then expires), pause(id) / resume(id) hold
    them for a while, close() ends all of them."""

    def __init__(self, eureka, interval=1.0):
        self.eureka = eureka
        self.interval = interval
        self.beating = {}  # instance_id -> (app, register kwargs)
        self.reregistered = []  # (ms, instance_id)
        self.paused = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="eureka-beats")
        self._thread.start()

    def register(self, app, instance_id, port, **kwargs):
        self.eureka.register(app, instance_id, port, **kwargs)
        with self._lock:
            self.beating[instance_id] = (app, port, kwargs)

    def stop(self, instance_id):
        with self._lock:
            self.beating.pop(instance_id, None)

    def pause(self, instance_id):
        with self._lock:
            self.paused.add(instance_id)

    def resume(self, instance_id):
        with self._lock:
            self.paused.discard(instance_id)

    def _run(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                items = [i for i in self.beating.items() if i[0] not in self.paused]
            for instance_id, (app, port, kwargs) in items:
                try:
                    if self.eureka.heartbeat(app, instance_id) == 404:
                        with self._lock:
                            if instance_id not in self.beating or instance_id in self.paused:
                                continue
                        self.eureka.register(app, instance_id, port, **kwargs)
                        self.reregistered.append((now_ms(), instance_id))
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
