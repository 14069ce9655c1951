"""The test kit shared by the end-to-end tests (tests/e2e), the demo (demo/) and the benchmarks
(bench/): everything binds 127.0.0.1, every wait is bounded, every process is tracked by pid and
stopped. Python stdlib only.

    env        REPO, LOOPBACK, HOUR_MS, now_ms, env_path, env_default, env_bool
    ports      free_port, slot_port, port_block, port_free
    procs      Procs, Managed, ProcessExited, stop_everything, interrupt_on_signals, wait_until,
               cpu_seconds, rss_kib
    http       request, get_json, wait_http
    templates  render, render_text, resolve_template, lb_endpoints (envoy/render.py underneath)
    envoy      Envoy, validate_config, real_binary, wasm_crash_lines, assert_no_wasm_crash
    rnacos     Rnacos, RnacosError
    netns      Capture, captured_envoy, available: Istio-style capture in network namespaces
               (root; imported as kit.netns, not re-exported here)
    sca        ScaCaller, ScaProvider: the Spring Cloud Alibaba peers (kit.sca)
    transparent  side_by_side_release, figures, table: transparent mode's side-by-side rolling
               release of a caller that picks instances itself (kit.transparent; the e2e test
               and the demo's --transparent run)
    load       Load, MixedLoad, Sample, percentile

`import kit` (or `from kit import ...`): pytest finds it through pyproject.toml's pythonpath;
the scripts (demo/run.py, bench/run.py, bench/startup.py, bench/refresh_in_envoy.py) put tests/
on sys.path themselves.
"""

from .env import HOUR_MS, LOOPBACK, REPO, env_bool, env_default, env_path, now_ms
from .envoy import Envoy, assert_no_wasm_crash, real_binary, validate_config, wasm_crash_lines
from .http import get_json, request, wait_http
from .load import Load, MixedLoad, Sample, percentile
from .ports import free_port, port_block, port_free, slot_port
from .procs import (
    Managed,
    ProcessExited,
    Procs,
    cpu_seconds,
    interrupt_on_signals,
    rss_kib,
    stop_everything,
    wait_until,
)
from .rnacos import Rnacos, RnacosError
from .templates import lb_endpoints, render, render_text, resolve_template

__all__ = [
    "HOUR_MS", "LOOPBACK", "REPO", "Envoy", "Load", "Managed", "MixedLoad", "ProcessExited",
    "Procs", "Rnacos", "RnacosError", "Sample", "assert_no_wasm_crash", "cpu_seconds",
    "env_bool", "env_default", "env_path", "free_port", "get_json", "interrupt_on_signals",
    "lb_endpoints", "now_ms", "percentile", "port_block", "port_free", "real_binary", "render",
    "render_text", "request", "resolve_template", "rss_kib", "slot_port", "stop_everything",
    "validate_config", "wait_http", "wait_until", "wasm_crash_lines",
]
