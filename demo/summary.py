"""The figures of a demo run (summary.json) and the plain-text summary of all runs side by side
(summary.txt)."""

import math
from collections import Counter

from kit import percentile


def summarize(run):
    """The run's figures (summary.json): requests, failures by kind, latency, per instance."""
    a = run.args
    samples = run.load.results() if run.load else []
    by_addr = {inst.addr: inst for inst in run.instances}
    ok = [s for s in samples if 200 <= s.status < 300]
    failed = [s for s in samples if not 200 <= s.status < 300]
    kinds = Counter(failure_kind(s) for s in failed)
    lat = [s.latency for s in ok]
    instances = {}
    for inst in run.instances:
        if inst.phase == "planned":
            continue
        mine = [s for s in samples if s.instance == inst.addr]
        fin = inst.final or {}
        d = {
            "address": inst.addr,
            "backend_port": inst.app_port,
            "started_s": rnd(run.rel(inst.t_start)),
            "backend_started_s": rnd(run.wall_to_rel(inst.started_ms)),
            "serving_s": rnd(run.rel(inst.t_up)),
            "sigterm_s": rnd(run.rel(inst.t_term)),
            "exited_s": rnd(run.rel(inst.t_exit)),
            "client_ok": sum(1 for s in mine if 200 <= s.status < 300),
            "client_failed": sum(1 for s in mine if not 200 <= s.status < 300),
            "backend_served": fin.get("served_total"),
            "backend_served_by_method": fin.get("served"),
            "backend_rejected_overloaded": fin.get("rejected"),
        }
        if run.mode == "spring":
            d["backend_refused_shutting_down"] = fin.get("refused_closing")
        if run.mode == "spring" and inst.t_start is not None and inst.index > a.instances:
            # a new instance: registered (and ready) -> the first request the gateway sent it
            first = min((s.t for s in mine), default=None)
            d["registered_to_first_request_ms"] = (
                None if first is None else int(max(0.0, first - run.rel(inst.t_up)) * 1000))
        if inst.t_term is not None:
            last = max((s.t for s in mine), default=None)
            if run.mode == "spring":
                # the backend is gone: the gateway's view, the last request it sent there
                # (answered, refused by the graceful shutdown, or connection refused)
                end = max((s.t for s in samples), default=0.0)
                if last is not None and last > run.rel(inst.t_term):
                    d["offline_to_no_new_traffic_ms"] = int((last - run.rel(inst.t_term)) * 1000)
                    # chosen within the last 5 s of the run: the real figure is longer
                    d["still_routed_at_end"] = end - last < 5.0
                else:
                    d["offline_to_no_new_traffic_ms"] = 0
                d["offline_s"] = rnd(run.rel(inst.t_term))
                d["failed_after_offline"] = sum(
                    1 for s in mine if s.t >= run.rel(inst.t_term) and not 200 <= s.status < 300)
            elif fin.get("offline_ms"):
                # the backend's own view: new requests after it marked itself offline
                d["offline_to_no_new_traffic_ms"] = max(
                    0, (fin.get("last_arrival_ms") or 0) - fin["offline_ms"])
                d["offline_s"] = rnd(run.wall_to_rel(fin["offline_ms"]))
                d["drained_quietly"] = fin.get("quiet")
            # the client's view: the last request it sent that this instance answered
            if last is not None:
                d["client_last_request_after_sigterm_ms"] = int(
                    max(0.0, last - run.rel(inst.t_term)) * 1000)
            if inst.sidecar_stats:
                d["sidecar_self_draining_503"] = int(inst.sidecar_stats.get(
                    "wasmcustom.lossless.demo.local_503.self_draining", 0))
            if inst.t_unhealthy is not None:
                d["sigterm_to_health_check_unhealthy_ms"] = int(
                    (inst.t_unhealthy - inst.t_term) * 1000)
        if inst.t_crash is not None:
            # a killed backend cannot report its count; the client's view: what failed after the
            # crash, and the last request that failed (the gateway was still sending there)
            d["crashed_s"] = rnd(run.rel(inst.t_crash))
            # the kill is a window: from the backend's SIGKILL (crashed_s) to its sidecar's
            # (exited_s), a few ms in which a request can still reach the half-dead instance
            crash, killed = d["crashed_s"], d["exited_s"]
            after = [s for s in failed if s.t >= killed]
            d["failed_after_crash"] = len(after)
            # requests the killed instance held: sent before the kill ended, still open when it
            # began
            d["failed_in_flight_at_crash"] = sum(
                1 for s in failed if s.t < killed and s.t + s.latency >= crash - 0.05)
            d["crash_to_last_failed_ms"] = int(
                max((s.t for s in after), default=run.rel(inst.t_crash)) * 1000
                - run.rel(inst.t_crash) * 1000)
        instances[inst.name] = d
    counted = {n: d for n, d in instances.items() if "crashed_s" not in d}
    served = [d["backend_served"] for d in counted.values()]
    backend_total = sum(x for x in served if x is not None)
    crashed_ok = sum(d["client_ok"] for d in instances.values() if "crashed_s" in d)
    crashes = [d for d in instances.values() if "crashed_s" in d]
    unattributed_ok = sum(1 for s in ok if s.instance not in by_addr)
    drains = [d["offline_to_no_new_traffic_ms"] for d in instances.values()
              if "offline_to_no_new_traffic_ms" in d]
    censored = any(d.get("still_routed_at_end") for d in instances.values())
    unseen = [d["registered_to_first_request_ms"] for d in instances.values()
              if d.get("registered_to_first_request_ms") is not None]
    hc = [d["sigterm_to_health_check_unhealthy_ms"] for d in instances.values()
          if "sigterm_to_health_check_unhealthy_ms" in d]
    return {
        "mode": run.mode,
        "duration_s": rnd(max((s.t for s in samples), default=0.0)),
        "rate": a.rate,
        "post_share": a.post_share,
        "warmup_s": a.warmup,
        "instances_replaced": a.replace,
        "requests": len(samples),
        "requests_by_method": dict(Counter(x.method for x in samples)),
        "ok": len(ok),
        "failed": len(failed),
        "failed_get": sum(1 for s in failed if s.method == "GET"),
        "failed_post": sum(1 for s in failed if s.method == "POST"),
        "failures_by_kind": dict(kinds.most_common()),
        "latency_ms": {"p50": ms(percentile(lat, 0.5)), "p99": ms(percentile(lat, 0.99)),
                       "max": ms(max(lat, default=None))},
        "backend_served_total": backend_total,
        "client_ok_total": len(ok),
        "client_ok_unattributed": unattributed_ok,
        # a crashed backend's count died with it: the check covers the others
        "counts_consistent": (None not in served and backend_total == len(ok) - crashed_ok),
        "failed_after_crash": sum(d["failed_after_crash"] for d in crashes) if crashes else None,
        "failed_in_flight_at_crash": (sum(d["failed_in_flight_at_crash"] for d in crashes)
                                      if crashes else None),
        "crash_to_last_failed_ms": max((d["crash_to_last_failed_ms"] for d in crashes),
                                       default=None),
        "max_offline_to_no_new_traffic_ms": max(drains) if drains else None,
        "max_registered_to_first_request_ms": max(unseen) if unseen else None,
        # spring run: an instance the gateway still chose at the run's end (a lower bound)
        "max_offline_to_no_new_traffic_censored": censored,
        "max_sigterm_to_health_check_unhealthy_ms": max(hc) if hc else None,
        "instances": instances,
        "events": [{"t": rnd(run.rel(t)), "event": e} for t, e in run.events],
    }

def shares(run):
    """Per instance: [(second, share of that second's requests it answered, successfully or
    not)] over its lifetime; and failed requests per second."""
    samples = run.load.results() if run.load else []
    if not samples:
        return {}, []
    seconds = max(1, int(max(s.t for s in samples)))  # the last, partial second is left out
    samples = [s for s in samples if s.t < seconds]
    totals = [0] * seconds
    fails = [0] * seconds
    per = {inst.addr: [0] * seconds for inst in run.instances}
    for s in samples:
        b = int(s.t)
        totals[b] += 1
        if s.instance in per:  # answered by it, refused (overloaded) or not
            per[s.instance][b] += 1
        if not 200 <= s.status < 300:
            fails[b] += 1
    out = {}
    for inst in run.instances:
        if inst.phase == "planned":
            continue
        first = max(0, int(math.floor(run.rel(inst.t_start) or 0)))
        end = run.rel(inst.t_exit)
        if run.mode == "spring" and end is not None:
            # the gateway goes on choosing an instance that left: its share is the requests
            # sent to it, that failed
            end = max([end] + [s.t for s in samples if s.instance == inst.addr])
        last = seconds - 1 if end is None else min(seconds - 1, int(math.ceil(end)))
        pts = [(b + 0.5, per[inst.addr][b] / totals[b] if totals[b] else 0.0)
               for b in range(first, last + 1)]
        out[inst.name] = pts
    return out, fails

def failure_kind(s):
    if s.status == 0:
        err = (s.error or "error").split(":", 1)[0]
        return f"client error {err}"
    if s.headers.get("x-overloaded"):
        return f"{s.status} overloaded (cold instance)"
    if s.headers.get("x-gateway-error"):
        return f"{s.status} from gateway: instance gone (connection refused)"
    if s.headers.get("x-shutting-down"):
        return f"{s.status} from instance (graceful shutdown)"
    if s.headers.get("x-lossless-drain"):
        return f"{s.status} drain ({s.headers['x-lossless-drain']})"
    if s.instance:
        return f"{s.status} from instance"
    return f"{s.status} from gateway (upstream reset)"


def rnd(x, n=2):
    return None if x is None else round(x, n)


def ms(seconds):
    """Seconds as milliseconds rounded to 0.1 (None stays None)."""
    return None if seconds is None else round(seconds * 1000, 1)


def text_summary(runs, transparent=None):
    """Plain text: each run, then the side-by-side table. `transparent` (demo/transparent.py's
    figures, or None): its section, and its two runs as the columns "capture" (the plain capture
    sidecar) and "transparent" (lossless in the caller's own sidecar)."""
    lines = []
    for s in runs.values():
        lines.append(f"== {s['mode']}: {s['requests']} requests in {s['duration_s']} s, "
                     f"{s['failed']} failed ({s['failed_get']} GET, {s['failed_post']} POST)")
        for kind, n in s["failures_by_kind"].items():
            lines.append(f"   {n:6d}  {kind}")
        lines.append(f"   latency of ok requests: p50 {s['latency_ms']['p50']} ms, "
                     f"p99 {s['latency_ms']['p99']} ms, max {s['latency_ms']['max']} ms")
        lines.append(f"   backends served {s['backend_served_total']}, the load generator saw "
                     f"{s['client_ok_total']} ok: "
                     + ("consistent" if s["counts_consistent"] else "NOT consistent"))
        for name, d in s["instances"].items():
            extra = []
            if "offline_to_no_new_traffic_ms" in d:
                extra.append(("offline -> last request from the gateway "
                              if "still_routed_at_end" in d else "offline -> no new traffic ")
                             + (">= " if d.get("still_routed_at_end") else "")
                             + f"{d['offline_to_no_new_traffic_ms']} ms")
            if d.get("registered_to_first_request_ms") is not None:
                extra.append("registered -> first request from the gateway "
                             f"{d['registered_to_first_request_ms']} ms")
            if "failed_after_offline" in d:
                extra.append(f"{d['failed_after_offline']} failed after offline")
            if "sidecar_self_draining_503" in d:
                extra.append(f"sidecar refusals {d['sidecar_self_draining_503']}")
            if "sigterm_to_health_check_unhealthy_ms" in d:
                extra.append("SIGTERM -> health check unhealthy "
                             f"{d['sigterm_to_health_check_unhealthy_ms']} ms")
            if "crashed_s" in d:
                extra.append(f"killed at {d['crashed_s']} s (still registered): "
                             f"{d['failed_after_crash']} failed after")
            lines.append(f"   {name} {d['address']}: client ok {d['client_ok']}, "
                         f"failed {d['client_failed']}, backend served {d['backend_served']}, "
                         f"overloaded {d['backend_rejected_overloaded']}"
                         + ("; " + ", ".join(extra) if extra else ""))
        lines.append("")
    if transparent is not None:
        t = transparent
        lines.append("== transparent: a caller that picks the instance itself (Spring Cloud "
                     "LoadBalancer on Nacos discovery)")
        lines.append("   the same caller (i) behind a plain capture sidecar (column capture), "
                     "(ii) behind lossless")
        lines.append(f"   in transparent mode (column transparent); {t['rate_per_caller']:g} req/s "
                     f"to each, {int(100 * t['post_share'])} % POSTs, {t['duration_s']} s of load")
        lines.append(f"   (c) new instance {t['new']} at {t['new_started_s']} s "
                     f"({t['warmup_s']:g} s warm-up), (a) polite stop of {t['old'][0]}")
        lines.append(f"   at {t['polite_stop_s']} s, (b) kill -9 of {t['old'][1]} at "
                     f"{t['kill_s']} s")
        lines += ["   " + line for line in t["table"].splitlines()]
        lines.append("")
    # the columns: each gateway run's figures, then the transparent run's two as the same rows
    cols = {n: dict(runs[n]) for n in runs}
    if transparent is not None:
        for run, head in (("plain", "capture"), ("lossless", "transparent")):
            cols[head] = transparent_column(transparent[run])
    names = list(cols)
    rows = [("requests", "requests"), ("failed requests", "failed"),
            ("  failed GET", "failed_get"), ("  failed POST", "failed_post")]
    width, lw = 14, 40

    def cell(v):
        return "-" if v is None else str(v)
    lines.append("== side by side")
    lines.append(f"{'':<{lw}}" + "".join(f"{n:>{width}}" for n in names))
    for label, key in rows:
        lines.append(f"{label:<{lw}}" + "".join(f"{cols[n][key]:>{width}}" for n in names))
    kinds = sorted({k for n in runs for k in runs[n]["failures_by_kind"]})
    for kind in kinds:
        label = "  " + (kind if len(kind) <= lw - 2 else kind[:lw - 5] + "...")
        lines.append(f"{label:<{lw}}" + "".join(
            f"{cell(runs[n]['failures_by_kind'].get(kind, 0) if n in runs else None):>{width}}"
            for n in names))

    def cens(n):
        return cols[n].get("max_offline_to_no_new_traffic_censored")

    def fmt_ms(v, censored=False):
        return "-" if v is None else (">= " if censored else "") + f"{v / 1000:.2f} s"
    def p99(n):
        v = cols[n]["latency_ms"]["p99"]
        return "-" if v is None else f"{v} ms"

    def consistent(n):
        return "-" if n not in runs else "yes" if runs[n]["counts_consistent"] else "no"
    lines.append(f"{'p99 latency of ok requests':<{lw}}" + "".join(
        f"{p99(n):>{width}}" for n in names))
    lines.append(f"{'max offline -> no new traffic':<{lw}}" + "".join(
        f"{fmt_ms(cols[n]['max_offline_to_no_new_traffic_ms'], cens(n)):>{width}}"
        for n in names))
    if any(cols[n].get("max_registered_to_first_request_ms") is not None for n in names):
        lines.append(f"{'max registered -> first request (new)':<{lw}}" + "".join(
            f"{fmt_ms(cols[n].get('max_registered_to_first_request_ms')):>{width}}"
            for n in names))
    lines.append(f"{'max SIGTERM -> health check drop':<{lw}}" + "".join(
        f"{fmt_ms(cols[n].get('max_sigterm_to_health_check_unhealthy_ms')):>{width}}"
        for n in names))
    lines.append(f"{'failed in flight at the crash (SIGKILL)':<{lw}}" + "".join(
        f"{cell(cols[n].get('failed_in_flight_at_crash')):>{width}}" for n in names))
    lines.append(f"{'failed after the crash':<{lw}}" + "".join(
        f"{cell(cols[n].get('failed_after_crash')):>{width}}" for n in names))
    if transparent is not None:
        lines.append(f"{'crash -> last request to it':<{lw}}" + "".join(
            f"{fmt_ms(cols[n].get('crash_to_last_request_ms')):>{width}}" for n in names))
        for p in transparent["share_points"]:
            k = int(p * 100)
            lines.append(f"{f'new: share at {k} % of warm-up (Dubbo)':<{lw}}" + "".join(
                f"{cell(cols[n].get(f'share_{k}')):>{width}}" for n in names))
    lines.append(f"{'backend counts = client ok':<{lw}}" + "".join(
        f"{consistent(n):>{width}}" for n in names))
    return "\n".join(lines) + "\n"


def transparent_column(f):
    """One run of the transparent release (kit.transparent.figures) as a column of the side by
    side table: its failures, the politely stopped instance's last request (deregistration ->
    the last request it served), the kill, the new instance's first request and shares."""
    def sec_ms(s):
        return None if s is None else max(0.0, s) * 1000
    out = {
        "requests": f["total"],
        "failed": f["all_failed_get"] + f["all_failed_post"],
        "failed_get": f["all_failed_get"],
        "failed_post": f["all_failed_post"],
        "latency_ms": {"p99": f.get("p99_ms")},
        "max_offline_to_no_new_traffic_ms": sec_ms(f["a_last_s"]),
        "max_registered_to_first_request_ms": sec_ms(f.get("c_first_served_s")),
        "failed_in_flight_at_crash": f.get("b_failed_in_flight"),
        "failed_after_crash": f.get("b_failed_after"),
        "crash_to_last_request_ms": sec_ms(f["b_last_s"]),
    }
    for key in f:
        if key.startswith("c_share_"):
            k = key.removeprefix("c_share_")
            out[f"share_{k}"] = f"{f[key]} ({f[f'c_dubbo_{k}']})"
    return out
