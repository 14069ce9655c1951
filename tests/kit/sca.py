"""The Spring Cloud Alibaba peers (peers/sca-nacos, built by `make sca-nacos`): a caller that picks
instances itself (Spring Cloud LoadBalancer over Nacos discovery, default caches) and light
providers that register through the real nacos-client (ephemeral). Both talk gRPC to the
registry: nacos-client dials the HTTP port + `nacos.server.grpc.port.offset` (Nacos' default
1000), set here to the rnacos server's own gRPC port.

    provider = ScaProvider(procs, workdir, jar, rnacos, "demo-svc", port=p).start()
    caller = ScaCaller(procs, workdir, jar, rnacos, "demo-svc").start()
    caller.call(20)   # [{"pick": "ip:port", "status": 200, "instance": "ip:port", ...}, ...]

Every Java process gets its own `user.home` in the workdir (nacos-client writes its logs and its
cache under it). `argv()` gives the command line, for a caller that must run it elsewhere (in a
network namespace).
"""

import json
import time
from pathlib import Path
from urllib.parse import urlencode

from .env import LOOPBACK, env_path
from .http import request, wait_http
from .ports import free_port
from .procs import Managed, ProcessExited

JAVA_OPTS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k", "-Xms64m"]


def sca_jar(path=None):
    """The peers' jar: `path`, or env SCA_NACOS_JAR."""
    return Path(path) if path else env_path("SCA_NACOS_JAR")


def _java_props(workdir, grpc_offset):
    home = Path(workdir)
    home.mkdir(parents=True, exist_ok=True)
    return [f"-Duser.home={home}", f"-DJM.LOG.PATH={home / 'logs'}",
            f"-DJM.SNAPSHOT.PATH={home}", f"-Dnacos.server.grpc.port.offset={grpc_offset}",
            "-Dnacos.logging.default.config.enabled=false"]


class ScaProvider(Managed):
    """A provider registered (ephemeral) through nacos-client; answers every request with 200,
    `x-instance: ip:port` and what it received. SIGTERM: deregister, serve `grace_ms`, exit.
    `jvm_opts` go after the kit's own (e.g. `-Xmx128m`)."""

    def __init__(self, procs, workdir, jar, registry_addr, grpc_offset, service, port=None,
                 ip=LOOPBACK, warmup_ms=600_000, weight=None, grace_ms=0, name=None, jvm_opts=()):
        self.procs = procs
        self.ip = ip
        self.port = int(port or free_port())
        self.name = name or f"provider-{ip}-{self.port}"
        self.service = service
        self.workdir = Path(workdir) / self.name
        props = _java_props(self.workdir, grpc_offset) + [
            f"-Dip={ip}", f"-Dport={self.port}", f"-Dservice={service}",
            f"-Dserver.addr={registry_addr}", f"-Dwarmup.ms={warmup_ms}", f"-Dgrace.ms={grace_ms}"]
        if weight is not None:
            props.append(f"-Dweight={weight}")
        # the jar's launcher is Spring Boot's PropertiesLauncher: loader.main picks the class
        self._argv = ["java", *JAVA_OPTS, *jvm_opts, *props,
                      "-Dloader.main=lossless.peers.nacos.Provider",
                      "-jar", str(jar)]

    @property
    def addr(self):
        return f"{self.ip}:{self.port}"

    def argv(self):
        return list(self._argv)

    def start(self, timeout=60.0, launch=None):
        """Starts it (through `launch(name, argv)` when given, else procs) and waits until
        nacos-client accepted the registration."""
        start = launch or self.procs.start
        proc = start(self.name, self.argv())
        log = self.procs.logs[self.name]
        deadline = time.monotonic() + timeout
        while f"registered {self.addr}" not in Path(log).read_text(errors="replace"):
            if proc.poll() is not None:
                raise ProcessExited(f"provider {self.addr} exited {proc.returncode}: "
                                    f"{Path(log).read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"provider {self.addr} did not register in {timeout}s")
            time.sleep(0.1)
        return self


class ScaCaller(Managed):
    """The Spring Boot caller: `@LoadBalanced` RestClient to `http://<service>`, Spring Cloud
    LoadBalancer over Nacos discovery at their default caches. HTTP on 127.0.0.1:`port`."""

    def __init__(self, procs, workdir, jar, registry_addr, grpc_offset, service, port=None,
                 name="sca-caller", address=LOOPBACK):
        self.procs = procs
        self.name = name
        self.address = address
        self.port = int(port or free_port())
        self.workdir = Path(workdir) / name
        props = _java_props(self.workdir, grpc_offset)
        self._argv = ["java", *JAVA_OPTS, *props, "-jar", str(jar),
                      f"--server.address={address}", f"--server.port={self.port}",
                      f"--spring.cloud.nacos.discovery.server-addr={registry_addr}",
                      f"--demo.service={service}", f"--logging.file.path={self.workdir / 'logs'}"]

    @property
    def url(self):
        return f"http://{self.address}:{self.port}"

    def argv(self):
        return list(self._argv)

    def start(self, timeout=120.0, launch=None):
        start = launch or self.procs.start
        proc = start(self.name, self.argv())
        wait_http(self.url + "/instances", timeout=timeout, proc=proc)
        return self

    def instances(self):
        status, _, data = request("GET", self.url + "/instances", timeout=10.0)
        if status != 200:
            raise RuntimeError(f"/instances -> {status}: {data[:300]!r}")
        return json.loads(data)

    def call(self, n=1, method="GET", path="/who", timeout=60.0):
        """n requests in a row through the caller's balancer: one dict each (pick, status,
        instance, body, error, ms)."""
        q = urlencode({"n": n, "method": method, "path": path})
        status, _, data = request("GET", f"{self.url}/call?{q}", timeout=timeout)
        if status != 200:
            raise RuntimeError(f"/call -> {status}: {data[:300]!r}")
        return json.loads(data)


def grpc_offset(rnacos):
    """What nacos-client must add to the rnacos server's HTTP port to reach its gRPC port."""
    return int(rnacos.grpc_port) - int(rnacos.http_port)
