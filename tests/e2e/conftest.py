"""Fixtures for the end-to-end suite: per-test log dir, process manager, rnacos, factories."""

import re
import subprocess
from pathlib import Path

import pytest

from harness import Backend, Envoy, Procs, Rnacos, env_path

TAIL_LINES = 25


def pytest_configure(config):
    config.addinivalue_line("markers", "compat: also runs on the oldest supported Envoy")
    config.addinivalue_line("markers", "chaos: chaos and soak tests (make chaos)")
    config.addinivalue_line("markers", "soak: long soak, not part of make test (-m 'not soak')")


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


@pytest.fixture
def wasm_path():
    path = env_path("LOSSLESS_WASM")
    assert path.stat().st_size > 0, f"{path} is empty"
    return path


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
    """make_envoy(template, subs, concurrency=1, name="envoy") -> started Envoy."""
    def make(template, subs=None, concurrency=1, name="envoy", **kwargs):
        return Envoy(procs, tmp_logs, template, subs, concurrency=concurrency, name=name,
                     binary=envoy_bin, **kwargs).start()
    return make


@pytest.fixture
def envoy_version(envoy_bin):
    """(major, minor, patch) of ENVOY_BIN."""
    out = subprocess.run([str(envoy_bin), "--version"], capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL).stdout
    match = re.search(r"/(\d+)\.(\d+)\.(\d+)/", out)
    assert match, f"cannot parse envoy version from {out!r}"
    return tuple(int(x) for x in match.groups())

