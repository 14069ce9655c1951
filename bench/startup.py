#!/usr/bin/env python3
"""What the module costs Envoy when it starts and per worker: the time from Envoy's start to admin
`/ready` answering 200, and Envoy's memory (admin `/memory` allocated and heap_size, the process
RSS) at `--concurrency` 1 and 2 (the difference is one more worker, with its own VM of each
module), with the lossless filter and without it, side by side in each round.

With the filter: envoy/outbound-override-host.yaml as shipped, lossless reading a static registry
of `--instances` instances, all served on loopback by this script. Without it: the same template
with only the filter taken out of the filter list (router, routes, clusters, override_host policy
as shipped). With the pass-through filter (bench/passthrough, a Wasm filter that does nothing;
built by `make bench`, left out if its module is missing): that template with it before the
router, the cost of a Wasm VM at all. Each run starts a fresh Envoy (the real binary, not the PyPI
launcher), polls `/ready` every 10 ms from just before the process starts, waits (with lossless)
until the first membership is published, sends `--requests` requests on connections of their own
(every worker serves some; each must be answered 200), waits `--settle` seconds, then reads
`/memory` and VmRSS and stops Envoy. The variants run back to back in a rotated order each round;
differences (with − without, concurrency 2 − 1) are taken within a round and their median and
range reported.

Usage: python3 bench/startup.py [--wasm [LABEL=]PATH ...] [--rounds 7] [--out BENCHMARKS.md]
Several --wasm measure several modules side by side (e.g. before and after a change). Prints the
Markdown table; --out rewrites only its block in the file's generated section. `make bench` runs
the same measurement (bench/run.py imports `measure` and `section`).
Environment: ENVOY_BIN (default .venv/bin/envoy), LOSSLESS_WASM (default target/lossless.wasm),
PASSTHROUGH_WASM (default target/passthrough/wasm32-wasip1/release/passthrough.wasm).
Every process is stopped by its pid; every wait is bounded.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # the test kit: this file is also run as a script

from kit import (  # noqa: E402
    LOOPBACK,
    Envoy,
    Procs,
    free_port,
    interrupt_on_signals,
    lb_endpoints,
    real_binary,
    request,
    wait_until,
)
from measure import SNAPSHOT, load_text, log, machine_info  # noqa: E402
from tables import (  # noqa: E402
    STARTUP_BEFORE,
    STARTUP_BEGIN,
    STARTUP_END,
    med,
    write_block,
)
from variants import (  # noqa: E402
    OVERRIDE_HOST,
    OVERRIDE_HOST_TEMPLATE,
    ROUTER,
    baseline_template,
    lossless_config,
    passthrough_filter,
    without_filter_template,
)

WITHOUT = "without the filter"
PASSTHROUGH = "pass-through"
READY_POLL_S = 0.01
SERVICE = "startup"
ROUNDS = 7
SETTLE_S = 2.0
INSTANCES = 3
REQUESTS = 20
PASSTHROUGH_WASM = REPO / "target/passthrough/wasm32-wasip1/release/passthrough.wasm"
KEYS = ("ready_ms", "published_ms", "rss_mib", "allocated_mib", "heap_mib")


class Loopback:
    """Loopback HTTP servers: the static registry (GET /m/<SERVICE>.json: the instances) and `n`
    instances answering 200 "ok", each a ThreadingHTTPServer on a port of its own."""

    def __init__(self, n):
        self.servers = [ThreadingHTTPServer((LOOPBACK, 0), self.handler()) for _ in range(n + 1)]
        self.port = self.servers[0].server_address[1]
        self.instances = [s.server_address[1] for s in self.servers[1:]]
        self.endpoints = lb_endpoints(self.instances)
        self.doc = json.dumps({"instances": [{"address": f"{LOOPBACK}:{p}", "weight": 100}
                                             for p in self.instances]}).encode()
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True)
                        for s in self.servers]

    def handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (the http.server name)
                registry = self.server is owner.servers[0]
                ok = not registry or self.path.split("?", 1)[0] == f"/m/{SERVICE}.json"
                body = (owner.doc if registry else b"ok") if ok else b"{}"
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "application/json" if registry else "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        for s in self.servers:
            s.shutdown()
            s.server_close()
        for th in self.threads:
            th.join(timeout=5)


def one_run(procs, envoy_bin, workdir, tag, template, subs, concurrency, with_filter, settle,
            requests, timeout):
    """One fresh Envoy: seconds from just before its process starts to /ready answering 200 (and,
    with the filter, to its first published membership); then `requests` requests, each on a
    connection of its own (so that every worker serves some), all of which must be answered
    200; then its memory after `settle` s."""
    listen = free_port()
    e = Envoy(procs, workdir, template, {**subs, "LISTEN_PORT": listen},
              concurrency=concurrency, name=f"envoy-{tag}", binary=envoy_bin,
              log_level="warning", extra_args=["--component-log-level", "wasm:info"])
    ready_url = e.admin_url + "/ready"
    load1 = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = procs.start(e.name, e.argv())
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"envoy {tag} exited with {proc.returncode}:\n{e.log_tail()}")
            try:
                if request("GET", ready_url, timeout=1.0)[0] == 200:
                    ready_s = time.monotonic() - t0
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"envoy {tag}: /ready not 200 within {timeout} s\n"
                                   f"{e.log_tail()}")
            time.sleep(READY_POLL_S)
        published_s = None
        if with_filter:
            wait_until(lambda: e.stat(SNAPSHOT, 0) >= 1, timeout, interval=0.02,
                       what=f"envoy {tag}: first membership published")
            published_s = time.monotonic() - t0
        statuses = [request("GET", f"http://{LOOPBACK}:{listen}/")[0] for _ in range(requests)]
        if any(s != 200 for s in statuses):
            raise RuntimeError(f"envoy {tag}: answers {statuses}\n{e.log_tail()}")
        time.sleep(settle)
        memory, rss = e.memory(), e.rss_kib()
    finally:
        e.stop()
    return {"ready_ms": ready_s * 1000,
            "published_ms": published_s * 1000 if published_s is not None else None,
            "rss_mib": rss["VmRSS"] / 1024, "hwm_mib": rss["VmHWM"] / 1024,
            "allocated_mib": memory.get("allocated", 0) / 2**20,
            "heap_mib": memory.get("heap_size", 0) / 2**20, "requests": requests,
            "load1": load1}


def measure(procs, envoy_bin, modules, rounds, workdir, concurrencies=(1, 2), settle=SETTLE_S,
            instances=INSTANCES, requests=REQUESTS, passthrough=None, timeout=60.0):
    """Rows of (round, variant, concurrency, figures) for Envoy without the filter, with the
    pass-through filter (bench/passthrough, a Wasm filter that does nothing: the cost of a Wasm
    filter at all) if `passthrough` is its module, and with each lossless module of `modules`
    ([(label, path)]), run side by side in a rotated order each round."""
    workdir = Path(workdir)
    without = without_filter_template(workdir)
    rows = []
    with Loopback(instances) as reg:
        config = {WITHOUT: (without, {"DEMO_ENDPOINTS": reg.endpoints,
                                      "REGISTRY_PORT": reg.port})}
        if passthrough:
            # the same template, the pass-through filter in the filter list before the router
            config[PASSTHROUGH] = (baseline_template(workdir), {
                "DEMO_ENDPOINTS": reg.endpoints, "REGISTRY_PORT": reg.port,
                "HTTP_FILTERS": json.dumps([passthrough_filter(passthrough), ROUTER]),
                "LB_POLICY": json.dumps(OVERRIDE_HOST)})
        for label, path in modules:
            config[label] = (OVERRIDE_HOST_TEMPLATE, {
                "DEMO_ENDPOINTS": reg.endpoints, "REGISTRY_PORT": reg.port,
                "LOSSLESS_WASM": path, "LOSSLESS_CONFIG": lossless_config(reg.port, SERVICE)})
        variants = list(config)
        for rnd in range(rounds):
            k = rnd % len(variants)
            c = rnd % len(concurrencies)
            for conc in [*concurrencies[c:], *concurrencies[:c]]:
                for v in [*variants[k:], *variants[:k]]:
                    template, subs = config[v]
                    tag = f"startup-r{rnd}-c{conc}-{variants.index(v)}"
                    r = one_run(procs, envoy_bin, workdir, tag, template, subs, conc,
                                v not in (WITHOUT, PASSTHROUGH), settle, requests, timeout)
                    rows.append({"round": rnd, "variant": v, "concurrency": conc, **r})
                    published = (f", membership {r['published_ms']:.0f} ms"
                                 if r["published_ms"] is not None else "")
                    log(f"startup round {rnd + 1}/{rounds} c{conc} {v}: /ready "
                        f"{r['ready_ms']:.0f} ms{published}, rss {r['rss_mib']:.1f} MiB, "
                        f"allocated {r['allocated_mib']:.1f} MiB, heap {r['heap_mib']:.1f} MiB, "
                        f"load {r['load1']:.2f}")
    return rows


# ---------------------------------------------------------------------------------------------
# the table

def _value(rows, rnd, variant, conc, key):
    r = next((r for r in rows if (r["round"], r["variant"], r["concurrency"]) ==
              (rnd, variant, conc)), None)
    return r.get(key) if r else None


def _diffs(rows, key, a, b):
    """One difference per round of `key`: a − b, each a (variant, concurrency), or a pair of them
    ((x, y): x − y) for a difference of differences."""
    def value(rnd, side):
        if isinstance(side[0], tuple):
            x, y = value(rnd, side[0]), value(rnd, side[1])
            return x - y if x is not None and y is not None else None
        return _value(rows, rnd, side[0], side[1], key)
    out = []
    for rnd in sorted({r["round"] for r in rows}):
        x, y = value(rnd, a), value(rnd, b)
        if x is not None and y is not None:
            out.append(x - y)
    return out


def _spread(xs, digits=1, sign=False):
    """median (min–max) of `xs`."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return ""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    lo, hi = f.format(min(xs)), f.format(max(xs))
    return f"{f.format(med(xs))} ({lo} to {hi})" if sign else f"{f.format(med(xs))} ({lo}–{hi})"


def section(run, rows):
    """The startup block (its markers included) as lines: `run` names the run (date, command,
    machine, Envoy, rounds, settle, modules [(label, bytes)], passthrough (bytes or None),
    load_after)."""
    seen = {r["variant"] for r in rows}
    variants = [v for v in (WITHOUT, PASSTHROUGH) if v in seen]
    variants += [label for label, _ in run["modules"]]
    sizes = {**dict(run["modules"]), PASSTHROUGH: run.get("passthrough")}

    def name_of(v):
        if v == WITHOUT:
            return v
        if v == PASSTHROUGH:
            return "with the pass-through filter"
        return f"with `{v}`"

    def module_of(v):
        return "pass-through" if v == PASSTHROUGH else f"`{v}`"
    concs = sorted({r["concurrency"] for r in rows})
    lines = [STARTUP_BEGIN, "", "## What the module costs at startup and per worker", ""]
    add = lines.append
    add("Envoy's time from its start to admin `/ready` answering 200, and its memory once the "
        f"filter has published its first membership and Envoy has served {run['requests']} "
        "requests, each on a connection of its own (admin `/memory` allocated and heap_size: "
        "Envoy's tcmalloc heap; RSS: the process, the Wasm VMs' linear memory and compiled code "
        "included), with lossless (envoy/outbound-override-host.yaml as shipped, a static registry "
        f"of {run['instances']} instances on loopback) and without it (the same template with only "
        "the filter taken out of the filter list), and with the pass-through filter "
        "(bench/passthrough: a Wasm filter that does nothing, the cost of a Wasm VM at all) in "
        "that template's filter list. Each run is a fresh Envoy; the variants ran "
        "back to back in a rotated order each round, and differences are taken within a round: "
        "median (range) over rounds. `/ready` is polled every 10 ms from just before the process "
        "starts.")
    add("")
    loads = [r["load1"] for r in rows if r.get("load1") is not None]
    per_run = (f"; at the start of each run {med(loads):.2f} median "
               f"({min(loads):.2f}–{max(loads):.2f})" if loads else "")
    modules = ", ".join(f"`{label}` {size:,} bytes" for label, size in run["modules"])
    if PASSTHROUGH in seen and run.get("passthrough"):
        modules += f"; pass-through {run['passthrough']:,} bytes"
    envoy = run["envoy_version"].split("/")[1] if "/" in run["envoy_version"] else "?"
    add(f"- **Run**: {run['date']}, `{run['command']}`, {run['rounds']} round(s), Envoy {envoy} "
        f"`--concurrency` {' and '.join(map(str, concs))}, memory read {run['settle']:g} s after "
        f"the requests; module(s): {modules}")
    add(f"- **Machine**: {run['nproc']} CPUs ({run['cpu']}), shared with other work: 1-minute "
        f"load average {run['load_before']} (1, 5, 15 min) before the run{per_run}; "
        f"{run['load_after']} after")
    add("")
    add("| Envoy | `--concurrency` | start → `/ready` ms | start → first membership ms | RSS MiB "
        "| `/memory` allocated MiB | `/memory` heap_size MiB | runs |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        name = name_of(v)
        for c in concs:
            mine = [r for r in rows if (r["variant"], r["concurrency"]) == (v, c)]
            if not mine:
                continue
            cells = [_spread([r[k] for r in mine], 0 if k.endswith("_ms") else 1) for k in KEYS]
            add(f"| {name} | {c} | " + " | ".join(cells) + f" | {len(mine)} |")
    add("")
    add("What the filter adds: with − without, same round and concurrency, median (range):")
    add("")
    add("| module | `--concurrency` | start → `/ready` ms | RSS MiB | `/memory` allocated MiB "
        "| `/memory` heap_size MiB |")
    add("|---|---:|---:|---:|---:|---:|")
    diff_keys = ("ready_ms", "rss_mib", "allocated_mib", "heap_mib")
    for v in variants[1:]:
        for c in concs:
            cells = [_spread(_diffs(rows, k, (v, c), (WITHOUT, c)), 0 if k == "ready_ms" else 2,
                             sign=True) for k in diff_keys]
            size = f" ({sizes[v]:,} bytes)" if sizes.get(v) else ""
            add(f"| {module_of(v)}{size} | {c} | " + " | ".join(cells) + " |")
    add("")
    if len(concs) >= 2:
        lo, hi = concs[0], concs[-1]
        workers = hi - lo
        per = f" ÷ {workers}" if workers > 1 else ""
        add(f"One more worker: (`--concurrency` {hi} − {lo}){per}, same round, median (range); "
            "the last row of each module is its cost per worker over Envoy's own:")
        add("")
        add("| Envoy | RSS MiB | `/memory` allocated MiB | `/memory` heap_size MiB |")
        add("|---|---:|---:|---:|")
        mem_keys = ("rss_mib", "allocated_mib", "heap_mib")

        def per_worker(xs):
            return [x / workers for x in xs]
        for v in variants:
            name = name_of(v)
            cells = [_spread(per_worker(_diffs(rows, k, (v, hi), (v, lo))), 2, sign=True)
                     for k in mem_keys]
            add(f"| {name} | " + " | ".join(cells) + " |")
        for v in variants[1:]:
            cells = [_spread(per_worker(_diffs(rows, k, ((v, hi), (v, lo)),
                                               ((WITHOUT, hi), (WITHOUT, lo)))), 2, sign=True)
                     for k in mem_keys]
            add(f"| **{module_of(v)} − without: the filter's cost per worker** | "
                + " | ".join(cells) + " |")
        add("")
    add(STARTUP_END)
    return lines


# ---------------------------------------------------------------------------------------------
# the command line

def modules_of(specs):
    """[(label, path)] of --wasm LABEL=PATH or PATH (label: the file name, numbered if repeated)."""
    out = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name, spec
        path = Path(path).resolve()
        if not path.is_file():
            raise SystemExit(f"--wasm {spec}: no such file")
        if label in (WITHOUT, PASSTHROUGH):
            raise SystemExit(f"--wasm {spec}: the label {label!r} names another variant")
        taken = {lbl for lbl, _ in out}
        label = next(f"{label} #{n}" if n > 1 else label for n in range(1, len(out) + 2)
                     if (f"{label} #{n}" if n > 1 else label) not in taken)
        out.append((label, path))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--wasm", action="append", default=[], metavar="[LABEL=]PATH",
                    help="a module to measure (repeat for side by side; default: $LOSSLESS_WASM "
                         "or target/lossless.wasm)")
    ap.add_argument("--envoy", default=os.environ.get("ENVOY_BIN") or str(REPO / ".venv/bin/envoy"))
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--concurrency", default="1,2",
                    help="Envoy --concurrency values, comma-separated (the lowest and the highest "
                         "give the cost of one more worker)")
    ap.add_argument("--settle", type=float, default=SETTLE_S,
                    help="seconds between the requests and the memory read")
    ap.add_argument("--instances", type=int, default=INSTANCES, help="instances in the registry")
    ap.add_argument("--requests", type=int, default=REQUESTS,
                    help="requests sent before the memory read, each on a connection of its own")
    ap.add_argument("--passthrough",
                    default=os.environ.get("PASSTHROUGH_WASM") or str(PASSTHROUGH_WASM),
                    help="the pass-through filter's module (\"\": leave it out)")
    ap.add_argument("--out", help="rewrite the startup block of this file's generated section "
                                  "(e.g. BENCHMARKS.md); default: print the table only")
    args = ap.parse_args()
    specs = args.wasm or [os.environ.get("LOSSLESS_WASM") or str(REPO / "target/lossless.wasm")]
    modules = modules_of(specs)
    concs = [int(c) for c in args.concurrency.split(",") if c]
    if args.rounds < 1 or not concs:
        ap.error("--rounds and --concurrency need at least one value")
    interrupt_on_signals()
    envoy_bin = real_binary(args.envoy)
    run = {**machine_info(envoy_bin),
           "command": "python3 bench/startup.py " + " ".join(sys.argv[1:]),
           "rounds": args.rounds, "settle": args.settle, "instances": args.instances,
           "requests": args.requests}
    tmp = Path(tempfile.mkdtemp(prefix="lossless-startup-"))
    log(f"work dir {tmp}")
    procs = Procs(tmp, new_session=True)
    # private copies: a concurrent `make build` must not swap a module in the middle of a run
    copies = []
    for i, (label, path) in enumerate(modules):
        copies.append((label, Path(shutil.copy(path, tmp / f"module-{i}.wasm"))))
    run["modules"] = [(label, path.stat().st_size) for label, path in copies]
    pt = None
    if args.passthrough and Path(args.passthrough).is_file():
        pt = Path(shutil.copy(args.passthrough, tmp / "passthrough.wasm"))
        run["passthrough"] = pt.stat().st_size
    elif args.passthrough:
        log(f"no pass-through module at {args.passthrough} (make bench builds it): left out")
    try:
        rows = measure(procs, envoy_bin, copies, args.rounds, tmp, concs, args.settle,
                       args.instances, args.requests, pt)
    finally:
        procs.stop_all(timeout=20)
    run["load_after"] = load_text()
    raw = REPO / "target" / "bench" / "startup.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"run": run, "rows": rows}, indent=1, default=str))
    lines = section(run, rows)
    print("\n".join(lines))
    if args.out:
        write_block(args.out, STARTUP_BEGIN, STARTUP_END, "\n".join(lines), STARTUP_BEFORE)
        log(f"wrote its block into {args.out}")
    log(f"raw figures: {raw}; work dir {tmp} kept for its logs")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: every process stopped")
        sys.exit(130)
