"""What `make bench` measures and how: nginx upstreams and the static registry, a fresh Envoy per
run, wrk load with a warm-up, what reached which upstream (seen by the kernel), the load test over
the variants, the refresh probe, the registry replies refreshed inside Envoy, and the criterion
micro-benchmarks. Every process is tracked by pid and stopped; every wait is bounded."""

import datetime
import glob
import json
import os
import platform
import re
import resource
import subprocess
import time
from pathlib import Path

import refresh_in_envoy
from kit import LOOPBACK, Envoy, free_port, port_block, request, wait_until
from variants import (
    CAPTURE,
    CAPTURE_LUA,
    CAPTURE_SIZES,
    CROSSINGS,
    LOSSLESS_VARIANTS,
    PROBES,
    ROUTED_CALLS,
    baseline_template,
    capture_config,
    capture_templates,
    cluster_of,
    envoy_config,
    variants_of,
    wrk_override_script,
)

REPO = Path(__file__).resolve().parents[1]
# nginx processes split the upstream ports so each stays well inside the fd hard limit
PORTS_PER_NGINX = 5000


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def body_of(url, timeout=5.0):
    return request("GET", url, timeout=timeout)[2]


# ---------------------------------------------------------------------------------------------
# nginx

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/json;
    # the churn document flips between two versions at random (half of the replies differ)
    map $request_id $churn {{ "~[0-7]$" a; default b; }}
    server {{
{listens}
        location / {{ return 200 "ok"; }}
    }}
{registry}
}}
"""

REGISTRY_SERVER = """\
    server {{
        listen {addr};
        root {www};
        location = /m/churn.json {{ try_files /m/churn-$churn.json =404; }}
        location /m/ {{ }}
    }}
"""


class Nginx:
    """nginx processes listening on a block of `n_ports` upstream ports (answering "ok"), the first
    one also serving the static registry documents of www/m/."""

    def __init__(self, procs, binary, n_ports, ports_per_process=PORTS_PER_NGINX):
        self.procs = procs
        self.binary = binary
        self.tmp = procs.log_dir
        self.base = port_block(n_ports)
        self.ports = list(range(self.base, self.base + n_ports))
        self.registry_port = free_port()
        self.www = self.tmp / "www"
        (self.www / "m").mkdir(parents=True, exist_ok=True)
        self.names = []
        self.ports_per_process = ports_per_process

    def doc(self, name, ports, weight_of=lambda i: 100):
        inst = [{"address": f"{LOOPBACK}:{p}", "weight": weight_of(i)}
                for i, p in enumerate(ports)]
        path = self.www / "m" / f"{name}.json"
        path.write_text(json.dumps({"instances": inst}, separators=(",", ":")))
        return path.stat().st_size

    def start(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        step = self.ports_per_process
        chunks = [self.ports[i:i + step] for i in range(0, len(self.ports), step)]
        os.chmod(self.tmp, 0o755)  # a root master runs its worker as nobody: it must read www/
        registry = REGISTRY_SERVER.format(addr=f"{LOOPBACK}:{self.registry_port}", www=self.www)
        for k, chunk in enumerate(chunks):
            d = self.tmp / f"nginx-{k}"
            d.mkdir(exist_ok=True)
            conf = NGINX_CONF.format(
                nofile=hard - 100, conns=hard - 200, dir=d,
                listens="\n".join(f"        listen {LOOPBACK}:{p};" for p in chunk),
                registry=registry if k == 0 else "")
            (d / "nginx.conf").write_text(conf)
            name = f"nginx-{k}"
            self.procs.start(name, [self.binary, "-p", d, "-c", d / "nginx.conf"],
                             log_path=d / "stdout.log")
            self.names.append(name)
        for name, chunk in zip(self.names, chunks, strict=True):
            for port in (chunk[0], chunk[-1]):
                wait_until(lambda name=name, port=port: self.procs.is_alive(name)
                           and body_of(f"http://{LOOPBACK}:{port}/") == b"ok",
                           60, what=f"nginx on port {port}")
        doc = f"http://{LOOPBACK}:{self.registry_port}/m/svc3.json"
        wait_until(lambda: request("GET", doc)[0] == 200, 30, what="registry doc")
        log(f"nginx: {len(self.names)} process(es), upstream ports "
            f"{self.ports[0]}..{self.ports[-1]}, registry {self.registry_port}, fd limit {hard}")

    def stop(self):
        for name in self.names:
            self.procs.stop(name, timeout=20)


SNAPSHOT = "wasmcustom.lossless.demo.snapshot_version"


def start_envoy(procs, binary, tag, config, concurrency=1, timeout=120, host=None):
    """A fresh Envoy for one run: `config` = (template, subs) of envoy_config(); waits until it is
    ready, (lossless) has published its first membership, and routes (a request with the Host
    header `host`, when given: the capture variants route by it). Its listener port is in
    `.listen_port`, its time to get ready in `.ready_s`."""
    template, subs = config
    listen = free_port()
    e = Envoy(procs, procs.log_dir, template, {**subs, "LISTEN_PORT": listen},
              concurrency=concurrency, name=f"envoy-{tag}", binary=binary, log_level="warning",
              extra_args=["--component-log-level", "wasm:info"])
    t0 = time.monotonic()
    e.start(timeout)

    def alive():
        if not e.is_alive():
            raise RuntimeError(f"envoy {tag} exited; see {e.log_path}:\n{e.log_tail()}")
        return True

    if "LOSSLESS_CONFIG" in subs:
        wait_until(lambda: alive() and e.stat(SNAPSHOT, 0) >= 1, timeout,
                   what=f"envoy {tag}: first membership published")
    e.ready_s = time.monotonic() - t0
    e.listen_port = listen
    headers = {"host": host} if host else None
    wait_until(lambda: request("GET", f"http://{LOOPBACK}:{listen}/", headers=headers)[2] == b"ok",
               30, what=f"envoy {tag} routes")
    return e


def publishes(e):
    """Membership versions the filter logged as published."""
    text = e.log_path.read_text(errors="replace")
    return len(re.findall(r"membership v\d+: \d+ instances", text))


# ---------------------------------------------------------------------------------------------
# wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(binary, port, seconds, connections, script=None):
    cmd = [binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    cmd += (["-s", str(script)] if script else []) + [f"http://{LOOPBACK}:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    r = {"cmd": " ".join(cmd)}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    r["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        r[f"p{pct}_ms"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return r


# ---------------------------------------------------------------------------------------------
# phases

def cx_active(v):
    return f"cluster.{cluster_of(v)}.upstream_cx_active"


def cx_total(v):
    return f"cluster.{cluster_of(v)}.upstream_cx_total"


class CpuSplit:
    """`perf record -e cpu-clock` of one process for `seconds` (a software clock: it works where the
    machine has no hardware counters), then the share of the samples by where they ran: the
    Envoy binary, the kernel, libc, and `[JIT]`, code without a file: the JIT code of the Wasm VMs
    (V8 writes no perf map here). Started before the measured run, read after it; a missing
    or failing perf leaves `shares` empty."""

    def __init__(self, pid, seconds, out):
        self.out = Path(out)
        self.shares = {}
        try:
            self.proc = subprocess.Popen(
                ["perf", "record", "-q", "-e", "cpu-clock", "-p", str(pid), "-o", str(self.out),
                 "--", "sleep", str(seconds)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            self.proc = None
        self.seconds = seconds

    def read(self):
        if self.proc is None:
            return self.shares
        try:
            self.proc.wait(timeout=self.seconds + 30)
            report = subprocess.run(
                ["perf", "report", "-i", str(self.out), "--stdio", "--sort", "dso"],
                capture_output=True, text=True, timeout=120).stdout
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait(timeout=10)
            return self.shares
        for line in report.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
            if m:
                self.shares[m.group(2)] = float(m.group(1)) / 100
        self.out.unlink(missing_ok=True)
        return self.shares

    def stop(self):
        """Stops perf if it still runs (a run that failed before `read`), by its pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def warm_up(args, e, size, script=None, variant="a"):
    """Unrecorded load until (nearly) every host has a keep-alive upstream connection, so the
    measured run is not dominated by connection setup (with 10,000 hosts, picks spread over all of
    them). Bounded by --warmup-max seconds."""
    t0 = time.monotonic()
    wrk(args.wrk, e.listen_port, args.warmup, args.connections, script)
    active = e.stat(cx_active(variant), 0)
    while active < 0.95 * size and time.monotonic() - t0 < args.warmup_max:
        wrk(args.wrk, e.listen_port, 2, args.connections, script)
        active = e.stat(cx_active(variant), 0)
    return time.monotonic() - t0, active


def upstream_reads(ports):
    """Bytes each open connection into an upstream port has received so far, by (upstream port,
    peer), read from the kernel (`ss -tin`) on nginx's side: what reached which upstream, seen
    outside Envoy (an ORIGINAL_DST cluster's per-host counters in admin /clusters can miss
    requests sent while the host was being added)."""
    out = subprocess.run(["ss", "-Htin", "state", "established",
                          f"( sport >= :{ports[0]} and sport <= :{ports[-1]} )"],
                         capture_output=True, text=True, timeout=60).stdout
    reads, key = {}, None
    for line in out.splitlines():
        if not line[:1].isspace():
            parts = line.split()
            key = (int(parts[-2].rsplit(":", 1)[1]), parts[-1])
            reads[key] = 0
        elif key is not None:
            m = re.search(r"bytes_received:(\d+)", line)
            reads[key] = int(m.group(1)) if m else 0
    return reads


def hosts_reached(before, after):
    """Upstream ports that received bytes between two upstream_reads()."""
    return {k[0] for k, n in after.items() if n > before.get(k, 0)}


def wait_for_quiet(args):
    """Before the load test: waits (polling every 15 s) until the 1-minute load average is below
    --max-load, at most --max-load-wait seconds; returns (seconds waited, load when it started)."""
    t0 = time.monotonic()
    while args.max_load and os.getloadavg()[0] >= args.max_load:
        if time.monotonic() - t0 >= args.max_load_wait:
            log(f"load average still {os.getloadavg()[0]:.2f} after {args.max_load_wait} s: "
                "running anyway")
            break
        log(f"load average {os.getloadavg()[0]:.2f} >= {args.max_load}: waiting")
        time.sleep(15)
    return time.monotonic() - t0, os.getloadavg()[0]


# the variants `--profile` records
PROFILED = ("d", "e", "w")


def measured_run(args, e, v, seconds, profile_s, script, perf_out):
    """One measured wrk run of `seconds` against Envoy `e` (variant `v`): wrk's figures and
    Envoy's CPU µs per request, all, user and system. With --profile and `v` in PROFILED, also
    `cpu_split_us_per_req`: that CPU split by where it ran, by the shares of a profile of the
    run's first `profile_s` seconds (written to `perf_out`)."""
    profile = (CpuSplit(e.pid, profile_s, perf_out)
               if args.profile and v in PROFILED else None)
    try:
        (u0, s0), cpu0 = e.cpu_split(), e.cpu_seconds()
        w = wrk(args.wrk, e.listen_port, seconds, args.connections, script)
        (u1, s1), cpu1 = e.cpu_split(), e.cpu_seconds()
        served = max(w["requests"], 1)
        w.update(cpu_us_per_req=(cpu1 - cpu0) * 1e6 / served,
                 user_us_per_req=(u1 - u0) * 1e6 / served,
                 sys_us_per_req=(s1 - s0) * 1e6 / served)
        if profile is not None and (shares := profile.read()):
            w["cpu_split_us_per_req"] = {
                dso: share * w["cpu_us_per_req"] for dso, share in shares.items()}
        return w
    finally:
        if profile is not None:
            profile.stop()


def load_matrix(args, procs, ng, wasm, pt, envoy_bin):
    results = []  # one dict per (round, size, variant)
    variants = variants_of(args)
    baseline = baseline_template(procs.log_dir)
    captures = capture_templates(procs.log_dir)
    for rnd in range(args.rounds):
        for size in args.sizes:
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for v in order:
                if v in (*CROSSINGS, *ROUTED_CALLS) and size != min(args.sizes):
                    continue
                if v in CAPTURE and size not in CAPTURE_SIZES:
                    continue
                tag = f"r{rnd}-{size}-{v}"
                host = None
                if v in CAPTURE:
                    config = capture_config(v, ng.registry_port, f"svc{size}", wasm, captures)
                    host = f"{LOOPBACK}:{ng.ports[0]}"
                else:
                    config = envoy_config(v, ng.ports[:size], ng.registry_port, f"svc{size}", wasm,
                                          pt, baseline=baseline)
                script = None
                if v in ("e", "w", *ROUTED_CALLS):
                    script = procs.log_dir / f"override-{v}-{size}.lua"
                    script.write_text(wrk_override_script(v, rnd + 1, ng.ports[0], size))
                elif v in CAPTURE:
                    script = procs.log_dir / f"capture-{size}-{rnd}.lua"
                    script.write_text(CAPTURE_LUA.format(base=ng.ports[0], span=size,
                                                         start=rnd % size))
                load1 = os.getloadavg()[0]
                e = start_envoy(procs, envoy_bin, tag, config, host=host)
                try:
                    warm_s, cx_active = warm_up(args, e, size, script, v)
                    reads0 = upstream_reads(ng.ports[:size])
                    cx0 = e.stat(cx_total(v), 0)
                    w = measured_run(args, e, v, args.duration, max(args.duration - 2, 1),
                                     script, procs.log_dir / f"perf-{tag}.data")
                    row = dict(round=rnd, size=size, variant=v, ready_s=round(e.ready_s, 2),
                               warmup_s=round(warm_s, 1), cx_active_at_start=cx_active,
                               cx_new=e.stat(cx_total(v), 0) - cx0, **w, **e.rss_kib())
                    if v in (*LOSSLESS_VARIANTS, "t"):
                        row["picks"] = e.stat("wasmcustom.lossless.demo.picks", 0)
                        row["local_503"] = sum(
                            e.stats(r"^wasmcustom\.lossless\.demo\.local_503").values())
                    if v == "t":
                        # what transparent mode decided about the callers' picks
                        row["captured"] = e.stats(r"^wasmcustom\.lossless\.demo\.transparent\.")
                    row["upstream_cx"] = e.stat(cx_total(v), 0)
                    row["retries"] = e.stat(f"cluster.{cluster_of(v)}.upstream_rq_retry", 0)
                    row["load1"] = load1
                    # it really routed: every request answered 200, and the requests of the
                    # measured run reached more than one upstream (seen by the kernel)
                    row["hosts_answered"] = len(hosts_reached(reads0,
                                                              upstream_reads(ng.ports[:size])))
                    row["valid"] = (w["requests"] > 0 and w["non2xx"] == 0
                                    and row["hosts_answered"] >= min(size, 2))
                    if not row["valid"]:
                        log(f"{tag}: left out: {w['requests']} requests, {w['non2xx']} non-2xx, "
                            f"{row['hosts_answered']} upstream(s) reached")
                    results.append(row)
                    log(f"round {rnd + 1}/{args.rounds} size {size:>5} {v}: "
                        f"{w['rps']:>9.0f} req/s p50 {w['p50_ms']:.2f} ms "
                        f"p99 {w['p99_ms']:.2f} ms cpu {row['cpu_us_per_req']:.1f} us/req "
                        f"rss {row['VmRSS'] / 1024:.0f} MiB non2xx {w['non2xx']} "
                        f"sockerr {w['socket_errors']} warm-up {warm_s:.0f} s cx {cx_active} "
                        f"new cx {row['cx_new']} hosts {row['hosts_answered']} "
                        f"load {load1:.2f}")
                finally:
                    e.stop()
    return results


def load_interleaved(args, procs, ng, wasm, pt, envoy_bin):
    """`--interleave` (the growth block): every (size, variant) Envoy started at once and warmed up,
    then `--rounds` cycles, each giving every Envoy one `--slice`-second wrk run in a rotated
    order. Variants compared within a cycle ran seconds apart, so a drift of the machine's speed
    (another tenant, the host) reaches them alike; with one fresh Envoy per run they ran minutes
    apart. Rows as load_matrix()'s, `round` being the cycle."""
    variants = variants_of(args)
    baseline = baseline_template(procs.log_dir)
    envoys, results = [], []
    for size in args.sizes:
        for v in variants:
            if v in (*CROSSINGS, *ROUTED_CALLS, *CAPTURE):
                continue
            tag = f"i-{size}-{v}"
            config = envoy_config(v, ng.ports[:size], ng.registry_port, f"svc{size}", wasm, pt,
                                  baseline=baseline)
            script = None
            if v in ("e", "w"):
                script = procs.log_dir / f"override-{v}-{size}.lua"
                script.write_text(wrk_override_script(v, 1, ng.ports[0], size))
            e = start_envoy(procs, envoy_bin, tag, config)
            warm_s, active = warm_up(args, e, size, script, v)
            log(f"{tag}: ready in {e.ready_s:.1f} s, warmed in {warm_s:.0f} s, cx {active}")
            envoys.append((size, v, e, script))
    for rnd in range(args.rounds):
        k = rnd % len(envoys)
        for size, v, e, script in envoys[k:] + envoys[:k]:
            load1 = os.getloadavg()[0]
            w = measured_run(args, e, v, args.slice, max(args.slice - 1, 1), script,
                             procs.log_dir / f"perf-{rnd}-{size}-{v}.data")
            row = dict(round=rnd, size=size, variant=v, **w, load1=load1,
                       valid=w["requests"] > 0 and w["non2xx"] == 0, **e.rss_kib())
            results.append(row)
            log(f"cycle {rnd + 1}/{args.rounds} size {size:>5} {v}: {w['rps']:>9.0f} req/s cpu "
                f"{row['cpu_us_per_req']:.1f} us/req non2xx {w['non2xx']} load {load1:.2f}")
    for _, _, e, _ in envoys:
        e.stop()
    return results


REFRESH_OK = "wasmcustom.lossless.demo.refresh_ok"
REFRESH_STATS = r"^wasmcustom\.lossless\.demo\.(refresh_ok|snapshot_version)$"


def refresh_probe(args, procs, ng, wasm, envoy_bin):
    """Idle Envoys (lossless, 10,000-endpoint cluster, refresh every 100 ms): CPU per refresh,
    publishes, memory."""
    n = min(10_000, len(ng.ports))
    out = []
    for rnd in range(args.probe_rounds or args.rounds):
        for tag, service, conc in PROBES:
            config = envoy_config("d", ng.ports[:n], ng.registry_port, service, wasm, None,
                                  refresh_ms=100, jitter=0)
            e = start_envoy(procs, envoy_bin, f"probe{rnd}-{tag}", config, concurrency=conc)
            try:
                time.sleep(args.settle)
                s0 = e.stats(REFRESH_STATS)
                c0, p0, t0 = e.cpu_seconds(), publishes(e), time.monotonic()
                time.sleep(args.probe_seconds)
                s1 = e.stats(REFRESH_STATS)
                c1, p1, t1 = e.cpu_seconds(), publishes(e), time.monotonic()
                refreshes = s1.get(REFRESH_OK, 0) - s0.get(REFRESH_OK, 0)
                versions = s1.get(SNAPSHOT, 0) - s0.get(SNAPSHOT, 0)
                row = dict(round=rnd, probe=tag, service=service, concurrency=conc,
                           seconds=t1 - t0, cpu_s=c1 - c0, refreshes=refreshes,
                           published=versions, publish_log_lines=p1 - p0,
                           memory=e.memory(), **e.rss_kib())
                out.append(row)
                log(f"probe round {rnd + 1} {tag:>9}: {refreshes} refreshes, "
                    f"{versions} published, cpu {row['cpu_s'] * 1000 / row['seconds']:.0f} ms/s, "
                    f"rss {row['VmRSS'] / 1024:.1f} MiB")
            finally:
                e.stop()
    return out


def registry_formats(args, workdir, wasm):
    """The filter's refresh-duration gauge inside Envoy for a changed and an unchanged reply of
    10,000 instances in each registry's shape (bench/refresh_in_envoy.py)."""
    out = []
    for shape in refresh_in_envoy.SHAPES:
        for changed in (True, False):
            kind = "changed" if changed else "unchanged"
            log(f"registry format {shape}, {kind} 10,000-instance reply")
            r = refresh_in_envoy.measure(shape, 10_000, args.format_samples,
                                         Path(workdir) / f"format-{shape}-{kind}", changed, wasm)
            log(f"  refresh {r['median_ms']:.1f} ms ({r['min_ms']:.1f}–{r['max_ms']:.1f}), load "
                f"average {r['load1_before']:.2f} → {r['load1_after']:.2f}")
            out.append(r)
    return out


def criterion(args, since):
    if args.skip_micro:
        since = 0
    else:
        log("cargo bench --bench micro")
        subprocess.run(["cargo", "bench", "--bench", "micro"], cwd=REPO, check=True)
    rows = []
    pattern = REPO / "target" / "criterion" / "**" / "new" / "benchmark.json"
    for bj in glob.glob(str(pattern), recursive=True):
        if os.path.getmtime(bj) < since:
            continue
        meta = json.loads(Path(bj).read_text())
        est = json.loads((Path(bj).parent / "estimates.json").read_text())
        tp = meta.get("throughput") or {}
        rows.append({"id": meta["full_id"], "median_ns": est["median"]["point_estimate"],
                     "mean_lo_ns": est["mean"]["confidence_interval"]["lower_bound"],
                     "mean_hi_ns": est["mean"]["confidence_interval"]["upper_bound"],
                     "bytes": tp.get("Bytes"), "elements": tp.get("Elements")})
    return sorted(rows, key=lambda r: r["id"])


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return cpu


def version_of(argv, stream="stdout"):
    return getattr(subprocess.run(argv, capture_output=True, text=True), stream).strip()


def load_text():
    """The 1-, 5- and 15-minute load averages, as a report prints them."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def machine_info(envoy_bin):
    """What every report says of its run: date, machine, load average before it, Envoy."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": machine(), "kernel": platform.release(),
        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "load_before": load_text(),
        "envoy_version": version_of([envoy_bin, "--version"]).split("version: ")[-1],
    }
