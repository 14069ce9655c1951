#!/usr/bin/env python3
"""lossless demo: a rolling release under load, with lossless and then against a plain baseline.

    LOSSLESS_WASM=... ENVOY_BIN=... RNACOS_BIN=... python3 demo/run.py [options]   (or: make demo)

Everything runs on 127.0.0.1 on free ports: rnacos; a gateway Envoy with lossless in outbound
override_host mode (envoy/outbound-override-host.yaml) whose STATIC cluster lists the sidecar
address of every instance slot, old and new; N demo instances (demo/backend.py, a JVM-like
service whose capacity grows over its warmup) each behind its own Envoy sidecar with lossless in
inbound mode (envoy/inbound.yaml); a load generator at a steady rate with a share of POSTs.

The release replaces instances one at a time: start a new instance and its sidecar on a fresh
slot, wait until the gateway's GET /lossless/membership lists it serving, SIGTERM the old one
(it marks itself offline, drains and exits), wait for it to exit, then let the new one warm up
before the next step (as a rollout's minReadySeconds would). The terminal shows the instances
live; at the end the report goes to --out: an SVG plot of each instance's share of traffic,
summary.json and summary.txt. Then the same release runs against a baseline: plain Envoy round
robin with active HTTP health checks (demo/baseline.yaml), no lossless, naive instances that exit
at once on SIGTERM; both failure counts are printed side by side.

With --spring (DEMO_SPRING=1; needs EUREKA_JAR and SCG_JAR: make eureka scg-gateway) a third run
does the same release on the stack lossless exists for: Spring Cloud Gateway routing with Spring
Cloud LoadBalancer on Eureka discovery (peers/scg-gateway), a real Eureka server
(peers/eureka-server), every cache at its default (Eureka's response cache 30 s, the client's
registry fetch 30 s, LoadBalancer's cache 35 s), instances that register in Eureka and, on
SIGTERM, cancel, finish what is in flight and exit, as a Spring Boot service does. Its tail runs
until the gateway stops sending to the instances that left, at most --spring-max seconds of load
(default 150) in all; "offline -> no new traffic" is then the time from SIGTERM to the last
request the gateway sent there.

With --transparent (DEMO_TRANSPARENT=1; needs root, iptables, java and SCA_NACOS_JAR: make
sca-nacos iptables) a last run puts lossless in the sidecar of a caller that picks the instance
itself: a Spring Boot caller with Spring Cloud LoadBalancer over Nacos discovery (the real
nacos-client, default caches; peers/sca-nacos) in a network namespace whose outbound TCP iptables
redirects to its sidecar as Istio does, side by side with the same caller behind a plain capture
sidecar, through one rolling release of providers registered through nacos-client: a new one
warming up, a polite stop (deregistered, 5 s of grace), a kill -9. It is transparent mode's
end-to-end release (tests/kit/transparent.py), at --rate to each caller; its figures join the
summary as the columns "capture" and "transparent".

Options also come from the environment: DEMO_WARMUP, DEMO_INSTANCES, DEMO_REPLACE, DEMO_RATE,
DEMO_POST_SHARE, DEMO_BASELINE (0/1), DEMO_SPRING (0/1), DEMO_TRANSPARENT (0/1), DEMO_OUT.

Code: demo/run.py (this command line), release.py (instances and the release), live.py (the
live view), summary.py (figures, text summary), report.py (SVG plot, samples), transparent.py
(the transparent run); processes, Envoy, rnacos and the load come from the test kit (tests/kit).
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # the test kit: this file is run as a script

from kit import Procs, Rnacos, env_bool, env_default, interrupt_on_signals, stop_everything  # noqa: E402
from kit.netns import available as capture_rig  # noqa: E402
from live import LiveView  # noqa: E402
from release import Run  # noqa: E402
from report import write_report  # noqa: E402
from summary import text_summary  # noqa: E402
from transparent import run_transparent, targets_met  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--warmup", type=float, default=env_default("DEMO_WARMUP", 20.0, float),
                    help="warmup of new instances, s (default 20)")
    ap.add_argument("--instances", type=int, default=env_default("DEMO_INSTANCES", 3, int),
                    help="instances serving (default 3)")
    ap.add_argument("--replace", type=int, default=env_default("DEMO_REPLACE", None, int),
                    help="instances replaced by the release (default: all)")
    ap.add_argument("--rate", type=float, default=env_default("DEMO_RATE", 100.0, float),
                    help="load, requests/s (default 100)")
    ap.add_argument("--post-share", type=float,
                    default=env_default("DEMO_POST_SHARE", 0.3, float),
                    help="share of POST requests (default 0.3)")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction,
                    default=env_bool("DEMO_BASELINE", True),
                    help="also run the release against the plain baseline (default: yes)")
    ap.add_argument("--spring", action=argparse.BooleanOptionalAction,
                    default=env_bool("DEMO_SPRING", False),
                    help="also run the release on Spring Cloud Gateway + LoadBalancer + Eureka "
                         "at their defaults (default: no; needs EUREKA_JAR and SCG_JAR)")
    ap.add_argument("--transparent", action=argparse.BooleanOptionalAction,
                    default=env_bool("DEMO_TRANSPARENT", False),
                    help="also run a caller that picks the instance itself (Spring Cloud "
                         "LoadBalancer on Nacos) behind a plain capture sidecar and behind "
                         "lossless in transparent mode (default: no; needs root, iptables, java "
                         "and SCA_NACOS_JAR)")
    ap.add_argument("--spring-max", type=float, default=150.0,
                    help="bound of the spring run's load, s (default 150)")
    ap.add_argument("--out", default=env_default("DEMO_OUT", str(REPO / "demo-out")),
                    help="report directory (default demo-out/)")
    ap.add_argument("--capacity", type=float, default=None,
                    help="req/s one warm instance serves (default 2.4 x rate / instances)")
    ap.add_argument("--service-ms", type=float, default=200.0,
                    help="time a warm instance spends per request, ms (cold: x10)")
    ap.add_argument("--lead", type=float, default=3.0, help="steady load before the release, s")
    ap.add_argument("--tail", type=float, default=3.0, help="steady load after the release, s")
    ap.add_argument("--max-drain", type=float, default=30.0,
                    help="bound of an instance's drain, s")
    ap.add_argument("--drain-via", choices=("both", "registry", "sidecar"), default="both",
                    help="how a lossless instance goes offline on SIGTERM: Nacos enabled=false, "
                         "its sidecar's POST /lossless/drain, or both (default)")
    ap.add_argument("--crash", action=argparse.BooleanOptionalAction,
                    default=env_bool("DEMO_CRASH", True),
                    help="after the release, kill one instance (and its sidecar) with SIGKILL, "
                         "without deregistering it (default: yes)")
    ap.add_argument("--hc-interval", type=float, default=2.0,
                    help="baseline health check interval, s (default 2)")
    ap.add_argument("--plain", action="store_true",
                    help="one line per second even on a terminal")
    args = ap.parse_args(argv)
    if args.replace is None:
        args.replace = args.instances
    if args.capacity is None:
        args.capacity = round(2.4 * args.rate / args.instances, 1)
    if not (1 <= args.instances <= 8 and 0 <= args.replace <= args.instances):
        ap.error("need 1 <= instances <= 8 and 0 <= replace <= instances")
    if not (args.warmup > 0 and args.rate > 0 and 0 <= args.post_share <= 1):
        ap.error("warmup and rate must be > 0, post-share in [0, 1]")
    if args.spring:
        for var in ("EUREKA_JAR", "SCG_JAR"):
            if not os.path.isfile(os.environ.get(var, "")):
                ap.error(f"--spring needs {var} (make eureka scg-gateway)")
        if not shutil.which("java"):
            ap.error("--spring needs java (17)")
    if args.transparent:
        why = capture_rig()
        if why:
            ap.error(f"--transparent {why} (make iptables; as root)")
        if not os.path.isfile(os.environ.get("SCA_NACOS_JAR", "")):
            ap.error("--transparent needs SCA_NACOS_JAR (make sca-nacos)")
        if not shutil.which("java"):
            ap.error("--transparent needs java (17)")
    return args


def run_one(mode, args, out, rnacos, tty):
    run = Run(mode, args, out, rnacos=rnacos)
    view = None
    try:
        print(f"\n{mode}: starting the gateway and {args.instances} instances ...", flush=True)
        run.setup()
        run.start_load()
        view = LiveView(run, tty).start()
        run.release()
    finally:
        if view is not None:
            view.close()
        run.finish()
    return write_report(run, out)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # our own output of an earlier run
    for stale in ("logs", "lossless", "baseline", "spring", "transparent"):
        if (out / stale).is_dir():
            shutil.rmtree(out / stale)
    for stale in ("lossless.svg", "baseline.svg", "spring.svg", "summary.json", "summary.txt"):
        (out / stale).unlink(missing_ok=True)
    tty = sys.stdout.isatty() and not args.plain

    interrupt_on_signals()  # SIGTERM and SIGINT (also when started with SIGINT ignored)
    base_procs = Procs(out / "logs")
    t_begin = time.monotonic()
    runs = {}
    transparent = None
    try:
        print(f"lossless demo: {args.instances} instances, replacing {args.replace}, warmup "
              f"{args.warmup:g} s, {args.rate:g} req/s ({int(args.post_share * 100)}% POST), "
              f"capacity {args.capacity:g} req/s per warm instance (10% when cold)", flush=True)
        rnacos = Rnacos(base_procs, out / "logs").start()
        runs["lossless"] = run_one("lossless", args, out, rnacos, tty)
        if rnacos.panicked():
            print("note: rnacos 0.8.8 logged a panic in its raft thread (a known rnacos issue: "
                  "it keeps serving from memory; the demo does not restart it)", flush=True)
        base_procs.stop_all()
        if args.baseline:
            runs["baseline"] = run_one("baseline", args, out, None, tty)
        if args.spring:
            runs["spring"] = run_one("spring", args, out, None, tty)
        if args.transparent:
            transparent = run_transparent(args, out)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", flush=True)
        return 130
    finally:
        stop_everything(timeout=5)
        if runs:
            doc = {"args": vars(args), "wall_s": round(time.monotonic() - t_begin, 1),
                   "runs": runs}
            if transparent is not None:
                doc["transparent"] = transparent
            (out / "summary.json").write_text(json.dumps(doc, indent=1))
            text = text_summary(runs, transparent)
            (out / "summary.txt").write_text(text)
            print("\n" + text, end="")
            print(f"report: {out}/summary.txt, summary.json, "
                  + ", ".join(f"{m}.svg" for m in runs)
                  + (", transparent/" if transparent is not None else "")
                  + f"; logs in {out}/logs", flush=True)
    # lossless promises no failure but the requests a killed instance held (nothing can save them)
    lossless = runs.get("lossless", {})
    held = lossless.get("failed_in_flight_at_crash") or 0
    # and, in a caller's own sidecar, none to a polite stop and only what a killed one held
    ok = transparent is None or targets_met(transparent)
    return 0 if lossless.get("failed") == held and ok else 1


if __name__ == "__main__":
    sys.exit(main())
