"""Fixtures for the end-to-end suite: per-test log dir, process manager, rnacos, backends, Envoys,
and the gateway setups the lossless and chaos tests share."""

import re
import subprocess
from pathlib import Path

import pytest

from harness import OUTBOUND, TEMPLATES, Backend, RegFront, filter_config, register, serving
from kit import (
    HOUR_MS,
    Envoy,
    Procs,
    Rnacos,
    env_path,
    free_port,
    lb_endpoints,
    now_ms,
    resolve_template,
    wait_until,
    wasm_crash_lines,
)

TAIL_LINES = 25


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the per-test log paths and their tails to the report."""
    outcome = yield
    rep = outcome.get_result()
    log_dir = getattr(item, "_e2e_log_dir", None)
    if rep.failed and log_dir is not None and Path(log_dir).exists():
        lines = [f"logs in {log_dir}"]
        for path in sorted(Path(log_dir).rglob("*")):
            if path.is_file() and path.suffix in (".log", ".yaml"):
                lines.append(f"  {path}")
        for path in sorted(Path(log_dir).rglob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            lines.append(f"--- tail {path.name}")
            lines.extend(tail)
        rep.sections.append(("e2e logs", "\n".join(lines)))


@pytest.fixture
def tmp_logs(request, tmp_path):
    """Per-test directory for configs and logs; listed (with tails) when the test fails."""
    request.node._e2e_log_dir = tmp_path
    return tmp_path


@pytest.fixture
def procs(tmp_logs):
    manager = Procs(tmp_logs)
    yield manager
    manager.stop_all()


@pytest.fixture
def envoy_bin():
    return env_path("ENVOY_BIN")


@pytest.fixture
def rnacos_bin():
    return env_path("RNACOS_BIN")


@pytest.fixture(scope="session")
def eureka_jar():
    """Spring Cloud Netflix's Eureka Server jar (`make eureka`, peers/eureka-server)."""
    return env_path("EUREKA_JAR")


@pytest.fixture
def wasm_path():
    path = env_path("LOSSLESS_WASM")
    assert path.stat().st_size > 0, f"{path} is empty"
    return path


@pytest.fixture
def no_wasm_crash(request, tmp_logs):
    """No `[critical][wasm]` or panic line in any Envoy log of the test (used by the lossless and
    chaos suites). Envoys named badcfg* refuse their config on purpose; a test that pushes a
    refused config to a running Envoy lists Envoy's own lines about that refusal in
    `request.node.allowed_wasm_lines` (regexes)."""
    yield
    allowed = [re.compile(r) for r in getattr(request.node, "allowed_wasm_lines", ())]
    for log in sorted(tmp_logs.rglob("*.envoy.log")):
        if log.name.startswith("badcfg"):
            continue
        bad = [line for line in wasm_crash_lines(log.read_text(errors="replace"))
               if not any(a.search(line) for a in allowed)]
        assert not bad, f"{log}:\n" + "\n".join(bad[:20])


@pytest.fixture
def rnacos(procs, tmp_logs, rnacos_bin):
    """A started rnacos (no auth) on free loopback ports."""
    return Rnacos(procs, tmp_logs, binary=rnacos_bin).start()


@pytest.fixture
def make_backend(procs):
    """make_backend(name=None) -> started Backend."""
    def make(name=None):
        return Backend(procs, name=name).start()
    return make


@pytest.fixture
def make_envoy(procs, tmp_logs, envoy_bin):
    """make_envoy(template, subs, concurrency=1, name="envoy") -> started Envoy. A template is a
    path, or a name in tests/e2e/templates or the repository."""
    def make(template, subs=None, concurrency=1, name="envoy", **kwargs):
        return Envoy(procs, tmp_logs, resolve_template(template, TEMPLATES), subs,
                     concurrency=concurrency, name=name, binary=envoy_bin, **kwargs).start()
    return make


@pytest.fixture
def make_gateway(make_envoy):
    """make_gateway(registry_port, cfg, endpoints, concurrency=1, name="gateway",
    template=OUTBOUND, listen=None, **Envoy options) -> a started Envoy with the filter's config
    `cfg` in front of the `endpoints` ("ip:port"), its listener port in `.listen`."""
    def make(registry_port, cfg, endpoints, concurrency=1, name="gateway", template=OUTBOUND,
             listen=None, **kwargs):
        listen = listen or free_port()
        subs = {"LISTEN_PORT": listen, "REGISTRY_PORT": registry_port, "LOSSLESS_CONFIG": cfg,
                "DEMO_ENDPOINTS": lb_endpoints(endpoints)}
        gw = make_envoy(template, subs, concurrency=concurrency, name=name, **kwargs)
        gw.listen = int(listen)
        return gw
    return make


@pytest.fixture
def registry_front(procs, rnacos):
    """regproxy.py in front of rnacos (a RegFront: fault modes, counts)."""
    return RegFront(procs, rnacos.addr)


@pytest.fixture
def serving_gateway(rnacos, make_backend, make_gateway):
    """serving_gateway(n, registry=None, timeout=15, **make_gateway options) -> (gateway,
    backends): n started backends registered in rnacos as up for an hour (warm), a gateway over
    them whose filter lists rnacos' service (through `registry`, e.g. registry_front, if given),
    returned once it lists all n serving."""
    def make(n, registry=None, timeout=15, **kwargs):
        backends = [make_backend() for _ in range(n)]
        for b in backends:
            register(rnacos, b.port, now_ms() - HOUR_MS)
        registry = registry or rnacos
        port = int(registry.addr.rsplit(":", 1)[1])
        gw = make_gateway(port, filter_config(registry.addr), [b.addr for b in backends],
                          **kwargs)
        wait_until(lambda: len(serving(gw.listen)) == n, timeout=timeout,
                   what=f"{n} serving instances")
        return gw, backends
    return make


@pytest.fixture
def envoy_version(envoy_bin):
    """(major, minor, patch) of ENVOY_BIN."""
    out = subprocess.run([str(envoy_bin), "--version"], capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL).stdout
    match = re.search(r"/(\d+)\.(\d+)\.(\d+)/", out)
    assert match, f"cannot parse envoy version from {out!r}"
    return tuple(int(x) for x in match.groups())
