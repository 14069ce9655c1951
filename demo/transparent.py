"""The demo's transparent run (--transparent): a caller that picks the instance itself, captured as
Istio captures it, side by side behind (i) a plain capture sidecar and (ii) lossless in transparent
mode, through one rolling release (a new instance warming up, a polite stop, a kill -9).

The release is the one of transparent mode's end-to-end test, from the test kit
(tests/kit/transparent.py); this module runs it with the demo's load, prints its steps and a
line every 5 s, and writes its samples, its diagnostics and its figures (summary.json's
"transparent")."""

import threading
import time

from kit import Procs, env_path, netns
from kit.sca import sca_jar
from kit.transparent import (
    GRACE_MS,
    KILL_TAIL_S,
    RUNS,
    SHARE_POINTS,
    Release,
    side_by_side_release,
    table,
)

HEADS = {"plain": "capture", "lossless": "transparent"}  # their columns in the demo's summary


def ticker(release, stop, interval=5.0):
    """One line every `interval` s while the load runs: requests and failures of each caller."""
    while not stop.wait(interval):
        if not release.traffic or release.t0 is None:
            continue
        parts = []
        for run, _ in RUNS:
            samples = [s for load in release.traffic[run].parts.values() for s in load.results()]
            failed = sum(1 for s in samples if s.status != 200)
            parts.append(f"{run}: {len(samples)} requests, {failed} failed")
        print(f"[transparent {time.monotonic() - release.t0:4.0f}s] " + " | ".join(parts),
              flush=True)


def write_samples(path, release, run):
    with open(path, "w") as f:
        f.write("t_s,method,status,instance,pick,latency_ms,error\n")
        for m, s, e, status, inst, pick, err in release.samples[run]:
            err = (err or "").replace(",", ";").replace("\n", " ")
            f.write(f"{s - release.t0:.4f},{m},{status},{inst or ''},{pick},"
                    f"{(e - s) * 1000:.1f},{err}\n")


def run_transparent(args, out):
    """Runs the side-by-side release under the demo's load; returns its figures (a dict for
    summary.json: "plain" and "lossless" as kit.transparent.figures gives them, the steps' times
    and lossless' counters)."""
    work = out / "transparent"
    logs = out / "logs" / "transparent"
    work.mkdir(parents=True, exist_ok=True)
    procs = Procs(logs)
    release = Release()
    stop = threading.Event()
    tick = threading.Thread(target=ticker, args=(release, stop), daemon=True)
    print(f"\ntransparent: the Spring Cloud caller (LoadBalancer over Nacos discovery) picks the "
          f"instance itself, behind (i) a plain capture sidecar and (ii) lossless; "
          f"{args.rate:g} req/s to each caller", flush=True)
    try:
        with netns.Capture(logs) as cap:
            tick.start()
            side_by_side_release(cap, procs, logs, env_path("RNACOS_BIN"), sca_jar(),
                                 rate=args.rate, post_share=args.post_share,
                                 warmup_ms=int(args.warmup * 1000), out=release,
                                 say=lambda text: print(f"transparent: {text}", flush=True))
    finally:
        stop.set()
        if tick.is_alive():
            tick.join(5)
        procs.stop_all()
    for run, _ in RUNS:
        write_samples(work / f"samples-{run}.csv", release, run)
    (work / "details.txt").write_text("\n".join(release.details()) + "\n")
    text = table(release.report)
    (work / "table.md").write_text(text + "\n")

    def rel(t):
        return round(t - release.t0, 2)
    return {
        "mode": "transparent",
        "duration_s": round(release.duration, 1),
        "rate_per_caller": args.rate,
        "post_share": args.post_share,
        "warmup_s": args.warmup,
        "grace_s": GRACE_MS / 1000,
        "kill_tail_s": KILL_TAIL_S,
        "share_points": list(SHARE_POINTS),
        "new_started_s": rel(release.new_start),
        "polite_stop_s": rel(release.t_off),
        "kill_s": rel(release.t_kill),
        "old": release.old,
        "new": release.new,
        "plain": release.report["plain"],
        "lossless": release.report["lossless"],
        "lossless_counters": release.stats,
        "table": text,
        "samples_csv": [f"transparent/samples-{run}.csv" for run, _ in RUNS],
    }


def targets_met(t):
    """lossless' targets in this run: nothing lost to the polite stop, at most what was in flight
    on the killed instance and one request per Envoy worker (2) lost to the kill."""
    lo = t["lossless"]
    return (lo["a_failed_get"] + lo["a_failed_post"] == 0
            and lo["b_failed_get"] + lo["b_failed_post"] <= lo["b_in_flight"] + 2)
