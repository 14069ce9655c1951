"""The demo (demo/run.py, `make demo`), shortened: one instance replaced, a 6 s warmup, a short
load; the lossless release and then one instance killed without deregistering (SIGKILL, the
crash step), then the baseline. Checks what the demo claims: no failed client request with
lossless, the crash included, a plot with one series per instance, and a summary whose numbers
agree with what the backends themselves counted.
"""

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET

from kit import REPO, wasm_crash_lines

SVG_NS = "{http://www.w3.org/2000/svg}"
WARMUP = 6  # s


def run_demo(out, args, timeout=150):
    """Runs demo/run.py in its own process group; on timeout it is interrupted (it stops its
    processes), then its group is killed."""
    cmd = [sys.executable, str(REPO / "demo" / "run.py"), "--out", str(out), *args]
    with open(out.parent / "demo.stdout.log", "w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            raise
        log.seek(0)
        return rc, log.read()


def test_demo_short_release(tmp_logs, envoy_bin, rnacos_bin, wasm_path):
    out = tmp_logs / "demo-out"
    rc, output = run_demo(out, ["--warmup", str(WARMUP), "--instances", "3", "--replace", "1",
                                "--rate", "60", "--lead", "2", "--tail", "2", "--baseline"])
    assert rc == 0, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    lossless = summary["runs"]["lossless"]

    # 1. no failed client request with lossless during the release, GETs and POSTs alike; at the
    # crash only requests already on the killed instance (200 ms of work each) can be lost
    assert lossless["requests"] > 400, lossless["requests"]
    # the kill is a window: the backend's SIGKILL (crashed_s), then its sidecar's (exited_s)
    crash_s = lossless["instances"]["i2"]["crashed_s"]
    killed_s = lossless["instances"]["i2"]["exited_s"]
    with open(out / "lossless" / "samples.csv") as f:
        failed = [r for r in csv.DictReader(f) if r["status"] != "200"]
    in_flight = [r for r in failed
                 if float(r["t_s"]) < killed_s
                 and float(r["t_s"]) + float(r["latency_ms"]) / 1000 >= crash_s - 0.05]
    assert failed == in_flight, (failed, crash_s, output[-3000:])
    assert len(failed) <= 8, failed
    assert lossless["failed"] == len(failed) == lossless["failed_in_flight_at_crash"]
    posts = lossless["requests_by_method"]["POST"]
    assert abs(posts / lossless["requests"] - 0.3) < 0.05, lossless["requests_by_method"]

    # 2. the plot: one polyline series per instance (3 old + 1 new), each in the legend
    names = set(lossless["instances"])
    assert names == {"i1", "i2", "i3", "i4"}
    root = ET.parse(out / "lossless.svg").getroot()
    series = [el for el in root.iter(f"{SVG_NS}polyline") if el.get("class") == "series"]
    assert sorted(el.get("data-instance") for el in series) == sorted(names)
    for el in series:
        points = [tuple(map(float, p.split(","))) for p in el.get("points").split()]
        assert len(points) >= 3, (el.get("data-instance"), points)
        xs = [p[0] for p in points]
        assert xs == sorted(xs), "a series runs forward in time"
    legend = next(g for g in root.iter(f"{SVG_NS}g") if g.get("class") == "legend")
    legend_text = {t.text for t in legend.iter(f"{SVG_NS}text")}
    assert names <= legend_text, legend_text

    # 3. the crash step: one warm instance killed without a goodbye, still registered; nothing
    # failed after it (its sidecar refused connections, lossless ejected it, Envoy retried)
    crashed = {n for n, d in lossless["instances"].items() if "crashed_s" in d}
    assert crashed == {"i2"}, lossless["instances"]
    assert lossless["failed_after_crash"] == 0, lossless["instances"]["i2"]
    assert "SIGKILL i2" in " ".join(e["event"] for e in lossless["events"])

    # 4. the summary agrees with the backends' own counts (their final stats files): every
    # request the load generator saw succeed was served by exactly one backend, and nothing else
    # (a killed backend wrote none: the others account for everything but its own answers)
    backend = {}
    for name in names - crashed:
        doc = json.loads((out / "lossless" / "instances" / f"{name}.json").read_text())
        backend[name] = doc
        assert doc["served_total"] == lossless["instances"][name]["backend_served"]
        assert doc["served_total"] == lossless["instances"][name]["client_ok"], (name, doc)
        assert doc["rejected"] == 0, (name, doc)
    crashed_ok = sum(lossless["instances"][n]["client_ok"] for n in crashed)
    assert sum(d["served_total"] for d in backend.values()) == lossless["ok"] - crashed_ok
    assert lossless["backend_served_total"] == lossless["ok"] - crashed_ok
    assert lossless["counts_consistent"] is True
    assert lossless["client_ok_unattributed"] == 0

    # 5. the replaced instance drained: it marked itself offline, stopped getting new requests
    # within a refresh interval (in practice at once, through the drain header), exited quietly
    old = lossless["instances"]["i1"]
    assert old["exited_s"] is not None and old["drained_quietly"] is True, old
    assert old["offline_to_no_new_traffic_ms"] <= 1500, old
    assert backend["i1"]["exit"] == "lossless"
    assert backend["i1"]["served"].get("POST", 0) > 0, "POSTs reached it until it drained"
    assert lossless["max_offline_to_no_new_traffic_ms"] == old["offline_to_no_new_traffic_ms"]
    # ... and the new one warmed up: a small share at first, a full third at the end
    # (shares: [second's middle, share of that second's requests])
    shares = lossless["shares"]["i4"]
    new = lossless["instances"]["i4"]
    early = [v for t, v in shares if t - 0.5 <= new["serving_s"] < t + 0.5]
    crash_s = lossless["instances"]["i2"]["crashed_s"]
    late = [v for t, v in shares
            if t - 0.5 >= new["backend_started_s"] + WARMUP and t + 0.5 < crash_s]
    assert early and late, (new, shares)
    assert early[0] < 0.2, (new, shares)
    assert abs(statistics.fmean(late) - 1 / 3) < 0.08, (new, shares)

    # 6. the baseline ran the same release, crash included, and reported its numbers beside
    base = summary["runs"]["baseline"]
    assert base["requests"] > 300 and set(base["instances"]) == names
    assert (out / "baseline.svg").exists()
    assert "== side by side" in output and "== side by side" in (out / "summary.txt").read_text()

    # 7. no Envoy of the demo logged a wasm crash
    for log in sorted((out / "logs").rglob("*.envoy.log")):
        bad = wasm_crash_lines(log.read_text(errors="replace"))
        assert not bad, f"{log}:\n" + "\n".join(bad[:20])
