"""The tables `make bench` writes: figures summarised over rounds (medians, ratios and differences
taken within a round), the Markdown of each section, and the generated section of BENCHMARKS.md.

BENCHMARKS.md holds hand-written prose and one generated section between GENERATED_BEGIN and
GENERATED_END: a run rewrites that section only. Inside it, the routing choices (MATRIX_BEGIN /
MATRIX_END) and the startup figures (STARTUP_BEGIN / STARTUP_END) are blocks of their own that a
run which did not measure them keeps as they were (`--matrix-only` and bench/startup.py rewrite
just their block)."""

import os
import random
import re
import statistics
from pathlib import Path

from variants import (
    CAPTURE,
    CROSSINGS,
    LOSSLESS_VARIANTS,
    MATRIX,
    PROBES,
    ROUTED_CALLS,
    VARIANTS,
    variant_name,
)

TITLE = "# Benchmarks"
GENERATED_BEGIN = "<!-- generated: begin -->"
GENERATED_END = "<!-- generated: end -->"
# the end of the generated part in files written before the markers (everything after it was kept)
LEGACY_NOTES_MARK = "<!-- notes: everything below this line is kept by bench/run.py -->"
MATRIX_BEGIN = "<!-- routing choices: written by bench/run.py --matrix -->"
GROWTH_BEGIN = "<!-- filter cost by size: written by bench/run.py -->"
GROWTH_END = "<!-- filter cost by size: end -->"
CAPTURE_BEGIN = "<!-- transparent mode: written by bench/run.py --capture -->"
CAPTURE_END = "<!-- transparent mode: end -->"
FORMATS_BEGIN = "<!-- registry replies: written by bench/run.py -->"
FORMATS_END = "<!-- registry replies: end -->"
MATRIX_END = "<!-- routing choices: end -->"
STARTUP_BEGIN = "<!-- startup: written by bench/startup.py and bench/run.py -->"
STARTUP_END = "<!-- startup: end -->"
# where a block goes when the generated section has none yet: before the first of these headings
MATRIX_BEFORE = ("<!-- registry replies", "## Registry replies", "## Membership refresh",
                 "## Artefacts")
GROWTH_BEFORE = ("<!-- transparent mode", "<!-- routing choices", *MATRIX_BEFORE)
CAPTURE_BEFORE = ("<!-- routing choices", *MATRIX_BEFORE)
FORMATS_BEFORE = ("## Membership refresh", "<!-- startup", "## Artefacts")
STARTUP_BEFORE = ("## Artefacts", "## Native micro-benchmarks", "## Targets")
# the module's size budget, bytes (the Makefile's WASM_BUDGET)
WASM_BUDGET = int(os.environ.get("WASM_BUDGET") or 1 << 20)


# ---------------------------------------------------------------------------------------------
# the generated section of BENCHMARKS.md

def block_of(text, begin, end):
    """The block from `begin` to `end` (both included) in `text`, or None."""
    if begin in text and end in text.split(begin, 1)[1]:
        return begin + text.split(begin, 1)[1].split(end, 1)[0] + end
    return None


def splice_block(text, begin, end, block, before):
    """`text` with its block from `begin` to `end` replaced by `block`, or `block` inserted before
    the first heading of `before` found, or appended."""
    old = block_of(text, begin, end)
    if old is not None:
        return text.replace(old, block.strip("\n"), 1)
    for mark in before:
        m = re.search(r"^" + re.escape(mark), text, re.M)
        if m:
            return text[:m.start()] + block.strip("\n") + "\n\n" + text[m.start():]
    return text.rstrip("\n") + "\n\n" + block.strip("\n") + "\n"


def generated_of(text):
    """The generated section of `text` (a file written before the markers: all that came before
    the notes mark, less the title), or ""."""
    if GENERATED_BEGIN in text and GENERATED_END in text:
        return text.split(GENERATED_BEGIN, 1)[1].split(GENERATED_END, 1)[0].strip("\n")
    if LEGACY_NOTES_MARK in text:
        head = text.split(LEGACY_NOTES_MARK, 1)[0]
        return head.split(TITLE, 1)[-1].strip("\n")
    return ""


def with_generated(text, body):
    """`text` (the whole file) with its generated section replaced by `body`; everything outside
    the markers stays as it was. A file without the markers gets them: one written before them
    keeps what followed its notes mark, a new one is the title and the section."""
    section = f"{GENERATED_BEGIN}\n{body.strip(chr(10))}\n{GENERATED_END}"
    if GENERATED_BEGIN in text and GENERATED_END in text:
        head, rest = text.split(GENERATED_BEGIN, 1)
        return head + section + rest.split(GENERATED_END, 1)[1]
    tail = text.split(LEGACY_NOTES_MARK, 1)[1].lstrip("\n") if LEGACY_NOTES_MARK in text else ""
    return f"{TITLE}\n\n{section}\n" + (f"\n{tail}" if tail else "")


def write_generated(path, body):
    """Rewrites the generated section of the file `path` with `body`."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    path.write_text(with_generated(old, body))


def write_block(path, begin, end, block, before):
    """Rewrites only the block from `begin` to `end` inside the generated section of `path`."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    write_generated(path, splice_block(generated_of(old), begin, end, block, before))


# ---------------------------------------------------------------------------------------------
# figures and tables

def spread(xs, seed=1, resamples=2000):
    """(median, first quartile, third quartile, bootstrap 95 % interval of the median) of `xs`:
    the interval from `resamples` resamples with replacement (a fixed seed, so a report is
    reproducible from its figures)."""
    xs = sorted(xs)
    if len(xs) < 2:
        x = xs[0]
        return x, x, x, (x, x)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    ci = (meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1])
    return statistics.median(xs), q1, q3, ci


def spread_text(xs, digits=1):
    """'+m [q1, q3] (95 % CI lo to hi)' of spread(), in µs."""
    m, q1, q3, (lo, hi) = spread(xs)
    f = f"{{:+.{digits}f}}"
    return (f"**{f.format(m)}** [{f.format(q1)}, {f.format(q3)}] "
            f"({f.format(lo)} to {f.format(hi)})")


def command_text(info):
    """The run's command as a report prints it (without `--out`: where it was written)."""
    return re.sub(r"\s--out\s+[^\s)]+", "", info["command"])


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def summarize(load, sizes):
    by = {}
    for r in load:
        if r.get("valid", True):  # runs that did not really route are left out
            by.setdefault((r["size"], r["variant"]), []).append(r)
    summ = {}
    for (size, v), rows in by.items():
        keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req",
                "VmRSS", "cx_active_at_start", "cx_new", "load1")
        summ[(size, v)] = {k: med([r.get(k) for r in rows]) for k in keys}
        summ[(size, v)]["errors"] = sum(r["non2xx"] + r["socket_errors"] for r in rows)
        summ[(size, v)]["rps_all"] = [round(r["rps"])
                                      for r in sorted(rows, key=lambda r: r["round"])]
        summ[(size, v)]["cpu_all"] = [r["cpu_us_per_req"]
                                      for r in sorted(rows, key=lambda r: r["round"])]
        summ[(size, v)]["hosts"] = [r.get("hosts_answered") for r in rows]
        summ[(size, v)]["runs"] = len(rows)
    ratios = {}
    rounds = sorted({r["round"] for r in load})
    for size in sizes:
        for v in {r["variant"] for r in load}:
            for base in ("a", "b", "c", "d", "e"):
                per_round = []
                cpu_round = []
                user_round = []
                for rnd in rounds:
                    x = [r for r in by.get((size, v), []) if r["round"] == rnd]
                    y = [r for r in by.get((size, base), []) if r["round"] == rnd]
                    if x and y:
                        per_round.append(x[0]["rps"] / y[0]["rps"])
                        cpu_round.append(x[0]["cpu_us_per_req"] / y[0]["cpu_us_per_req"])
                        if x[0].get("user_us_per_req") and y[0].get("user_us_per_req"):
                            user_round.append(x[0]["user_us_per_req"] / y[0]["user_us_per_req"])
                if per_round:
                    ratios[(size, v, base)] = (med(per_round), min(per_round), max(per_round),
                                               med(cpu_round), min(cpu_round), max(cpu_round),
                                               med(user_round))
    return summ, ratios


def probe_summary(probe):
    by = {}
    for r in probe:
        by.setdefault(r["probe"], []).append(r)
    out = {}
    for tag, rows in by.items():
        out[tag] = {
            "cpu_ms_per_s": med([r["cpu_s"] * 1000 / r["seconds"] for r in rows]),
            "refreshes_per_s": med([r["refreshes"] / r["seconds"] for r in rows]),
            "published_per_s": med([r["published"] / r["seconds"] for r in rows]),
            "rss_mib": med([r["VmRSS"] / 1024 for r in rows]),
            "hwm_mib": med([r["VmHWM"] / 1024 for r in rows]),
            "allocated_mib": med([r["memory"].get("allocated", 0) / 2**20 for r in rows]),
            "heap_mib": med([r["memory"].get("heap_size", 0) / 2**20 for r in rows]),
            "rows": rows,
        }
    # per round: CPU per refresh, from differences taken within the round
    per_same, per_pub, vm_10k, vm_3 = [], [], [], []

    def rate(r):
        return r["cpu_s"] / r["seconds"]

    for rnd in sorted({r["round"] for r in probe}):
        g = {r["probe"]: r for r in probe if r["round"] == rnd}
        if "3" in g and "10k" in g and g["10k"]["refreshes"]:
            same = (rate(g["10k"]) - rate(g["3"])) / (g["10k"]["refreshes"] / g["10k"]["seconds"])
            per_same.append(same)
            ch = g.get("10k-churn")
            if ch and ch["published"]:
                n_same = (ch["refreshes"] - ch["published"]) / ch["seconds"]
                per_pub.append((rate(ch) - rate(g["3"]) - n_same * same)
                               / (ch["published"] / ch["seconds"]))
        if all(k in g for k in ("3", "10k", "3-c2", "10k-c2")):
            vm_10k.append((g["10k-c2"]["VmRSS"] - g["10k"]["VmRSS"]) / 1024)
            vm_3.append((g["3-c2"]["VmRSS"] - g["3"]["VmRSS"]) / 1024)
    return out, {"cpu_ms_per_same_refresh": [x * 1000 for x in per_same],
                 "cpu_ms_per_publish": [x * 1000 for x in per_pub],
                 "vm_mib_10k": vm_10k, "vm_mib_3": vm_3}


def verdict(ok):
    return "**met**" if ok else "**not met**"


def size_text(n):
    """A byte count in MiB when it is a whole number of them, else in KiB."""
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n / 1024:,.0f} KiB"


def matrix_section(args, info, load):
    """The routing-choices section: (d) and (f)-(i) side by side, ratios to (d) within rounds,
    between MATRIX_BEGIN and MATRIX_END. It names its own run, so it can stand in a file whose
    other sections come from another run (--matrix-only)."""
    summ, ratios = summarize(load, args.sizes)
    loads = [r["load1"] for r in load if r.get("load1") is not None]
    lines = [MATRIX_BEGIN, "", "## What lossless' routing choices cost Envoy", ""]
    add = lines.append
    add("Each variant changes one setting of the lossless service from its defaults (variant "
        "(d): `routing.mode` `override_host`, `policy` `round_robin`, `routing.fallbacks` 2). "
        "Variants of one size ran back to back in a rotated order each round, each in a fresh "
        "Envoy; ratios are taken within a round and the median (range) over rounds is reported. "
        "Higher req/s and lower CPU per request cost Envoy less.")
    add("")
    add(f"- **Run**: {info['date']}, `{info['command']}`, {args.rounds} round(s), sizes "
        f"{', '.join(f'{x:,}' for x in args.sizes)}; Envoy {info['envoy_version'].split('/')[1]} "
        f"`--concurrency 1`, `{info['wrk_cmd']}` after a warm-up of at least {args.warmup} s")
    wait = info.get("load_wait")
    waited = ""
    if wait:
        waited = (f"; waited {wait[0]:.0f} s for it to fall below {args.max_load} "
                  f"(it was {wait[1]:.2f} when the load test began)")
    per_run = ""
    if loads:
        per_run = (f"; at the start of each run {med(loads):.2f} median "
                   f"({min(loads):.2f}–{max(loads):.2f})")
    add(f"- **Machine**: {info['nproc']} CPUs ({info['cpu']}), shared with other work: 1-minute "
        f"load average {info['load_before']} (1, 5, 15 min) before the run{waited}{per_run}; "
        f"{info['load_after']} after. The load test itself (Envoy, wrk, nginx) keeps both CPUs "
        "busy.")
    add("")
    add("| instances | variant | req/s (median) | req/s per round | Envoy CPU µs/req | "
        "p99 ms | req/s ÷ (d) | CPU/req ÷ (d) | upstream hosts answered | runs counted | errors |")
    add("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for v in LOSSLESS_VARIANTS:
            sm = summ.get((size, v))
            if not sm:
                if any(r["size"] == size and r["variant"] == v for r in load):
                    add(f"| {size:,} | ({v}) {variant_name(v)} | no run counted (did not route) "
                        "| | | | | | | 0 | |")
                continue
            r = ratios.get((size, v, "d"))
            rps_r = f"{r[0]:.3f} ({r[1]:.2f}–{r[2]:.2f})" if r else ""
            cpu_r = f"{r[3]:.3f} ({r[4]:.2f}–{r[5]:.2f})" if r else ""
            hosts = [h for h in sm["hosts"] if h is not None]
            hosts_t = (f"{min(hosts):,}" if min(hosts) == max(hosts)
                       else f"{min(hosts):,}–{max(hosts):,}") if hosts else "?"
            rps_all = ", ".join(f"{x:,}" for x in sm["rps_all"])
            add(f"| {size:,} | ({v}) {variant_name(v)} | {sm['rps']:,.0f} | {rps_all} | "
                f"{sm['cpu_us_per_req']:.1f} | {sm['p99_ms']:.2f} | {rps_r} | {cpu_r} | "
                f"{hosts_t} of {size:,} | {sm['runs']} | {sm['errors']} |")
    add("")
    add("A run counts only when every request was answered 200 and the requests of the measured "
        "run reached more than one upstream (upstream hosts answered: ports whose connections "
        "received bytes during the run, read from the kernel on nginx's side with `ss -tin`); "
        "errors = non-2xx responses + socket errors of the counted runs. (f) builds the same "
        "`primary,fallback1,fallback2` list with a weighted random primary instead of weighted "
        "round robin (the fallbacks are drawn at random in both). (g) and (h) write one and two "
        "addresses: Envoy's override_host policy has that many to try before a retry leaves "
        "lossless' list. (i) runs `envoy/outbound-original-dst.yaml`: an ORIGINAL_DST cluster "
        "with one address per attempt, behind an internal listener so that every retry is a new "
        "pick, i.e. two HTTP streams inside Envoy per request and the filter in both.")
    add("")
    add(MATRIX_END)
    return lines


def per_round(load, key):
    """{(round, size, variant): row[key]} of the counted runs."""
    return {(r["round"], r["size"], r["variant"]): r[key] for r in load
            if r.get("valid", True) and r.get(key) is not None}


def run_lines(info, load, variants):
    """The run and machine lines of a block that names its own run."""
    rows = [r for r in load if r["variant"] in variants]
    loads = [r["load1"] for r in rows if r.get("load1") is not None]
    rounds = len({r["round"] for r in rows})
    sizes = sorted({r["size"] for r in rows})
    wait = info.get("load_wait")
    waited = (f"; waited {wait[0]:.0f} s for a quieter machine (1-minute load average "
              f"{wait[1]:.2f} when the load test began)") if wait else ""
    per_run = (f"; at the start of each run {med(loads):.2f} median ({min(loads):.2f}–"
               f"{max(loads):.2f})") if loads else ""
    return [f"- **Run**: {info['date']}, `{command_text(info)}`, {rounds} rounds, sizes "
            f"{', '.join(f'{x:,}' for x in sizes)}; Envoy "
            f"{info['envoy_version'].split('/')[1]} `--concurrency 1`, `{info['wrk_cmd']}`; "
            f"`lossless.wasm` {info['wasm_size']:,} bytes",
            f"- **Machine**: {info['nproc']} CPUs ({info['cpu']}), shared with other work: "
            f"1-minute load average {info['load_before']} (1, 5, 15 min) before the "
            f"run{waited}{per_run}; {info['load_after']} after"]


def growth_section(info, load):
    """(d) − (e) by membership size, between GROWTH_BEGIN and GROWTH_END: per size the median of
    the within-round differences with its quartiles and a bootstrap interval, and how much it
    grows from the smallest size (differences of the within-round differences, same round)."""
    cpu, user = per_round(load, "cpu_us_per_req"), per_round(load, "user_us_per_req")
    rounds = sorted({r["round"] for r in load})
    sizes = sorted({size for (_, size, v) in cpu if v == "d"})

    def diffs(table, size, x, y):
        return [table[(k, size, x)] - table[(k, size, y)] for k in rounds
                if (k, size, x) in table and (k, size, y) in table]

    sizes = [size for size in sizes if diffs(cpu, size, "d", "e")]
    if len(sizes) < 2:
        return []
    base = sizes[0]

    def growth(table, size):
        return [(table[(k, size, "d")] - table[(k, size, "e")])
                - (table[(k, base, "d")] - table[(k, base, "e")]) for k in rounds
                if all((k, z, v) in table for z in (size, base) for v in ("d", "e"))]

    how = ("round (every (size, variant) Envoy started at once and warmed up; each round gives "
           "each of them one run, in a rotated order, so the variants compared ran seconds "
           "apart)" if info.get("interleave") else
           "round (the variants of one size run back to back in a rotated order, each in a "
           "fresh Envoy)")
    lines = [GROWTH_BEGIN, "",
             "## The filter's own CPU per request by membership size: (d) − (e)", "",
             "Envoy CPU µs per request of lossless (d) over the pass-through filter with "
             f"override_host and a client-set header (e), taken within a {how}; (a), no "
             "filter, for reference. Per size: the median over rounds **in bold**, its quartiles "
             "[Q1, Q3] and a 95 % bootstrap interval of the median (2,000 resamples) in "
             "brackets. Growth: (d) − (e) at a size minus (d) − (e) at "
             f"{base:,} in the same round. (e) and (d) visit the hosts in the cluster's host "
             "order from a random start; (w) is (e) visiting them in one shuffled order: (w) − (e) "
             "is what the order alone costs Envoy.", "",
             *run_lines(info, load, ("a", "d", "e", "w")), "",
             "| instances | rounds | (a) µs/req | (w) µs/req | (e) µs/req | (d) µs/req | (d) − (e) "
             f"| (d) − (e), user CPU | growth over {base:,} | growth, user CPU | (w) − (e) "
             "| (e) − (a) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        d = diffs(cpu, size, "d", "e")

        def of(v, size=size):
            xs = [cpu[(k, size, v)] for k in rounds if (k, size, v) in cpu]
            return f"{med(xs):.1f}" if xs else ""
        du, ea = diffs(user, size, "d", "e"), diffs(cpu, size, "e", "a")
        we = diffs(cpu, size, "w", "e")
        g, gu = growth(cpu, size), growth(user, size)
        lines.append(f"| {size:,} | {len(d)} | {of('a')} | {of('w')} | {of('e')} | {of('d')} | "
                     f"{spread_text(d)} | {spread_text(du) if du else ''} | "
                     f"{spread_text(g) if size != base and g else ''} | "
                     f"{spread_text(gu) if size != base and gu else ''} | "
                     f"{spread_text(we) if we else ''} | "
                     f"{spread_text(ea) if ea else ''} |")
    top = sizes[-1]
    g = growth(cpu, top)
    if g:
        m, _, _, (lo, hi) = spread(g)
        if hi <= 1.0:
            verdict_text = (f"flat within 1 µs: from {base:,} to {top:,} instances (d) − (e) "
                            f"grows by {m:+.1f} µs, 95 % interval {lo:+.1f} to {hi:+.1f} µs")
        elif m <= 1.0:
            verdict_text = (f"within 1 µs by its median ({m:+.1f} µs from {base:,} to {top:,} "
                            f"instances), but its 95 % interval ({lo:+.1f} to {hi:+.1f} µs) "
                            "reaches above it: not shown flat at this noise")
        elif lo > 1.0:
            verdict_text = (f"grows: {m:+.1f} µs from {base:,} to {top:,} instances (95 % "
                            f"interval {lo:+.1f} to {hi:+.1f} µs)")
        else:
            verdict_text = (f"not settled at this noise: {m:+.1f} µs from {base:,} to {top:,} "
                            f"instances by its median, 95 % interval {lo:+.1f} to {hi:+.1f} µs")
        lines += ["", f"**(d) − (e) from {base:,} to {top:,} instances**: {verdict_text}."]
    lines += profiled_lines(load, rounds, sizes, base)
    lines += ["", GROWTH_END]
    return lines


# where `perf report --sort dso` puts code without a file (`[JIT] tid N`, or `[unknown]` in
# older perf): the JIT code of the Wasm VMs
JIT = ("[JIT]", "[unknown]")


def profiled_lines(load, rounds, sizes, base):
    """With `--profile`: the CPU per request of (d) and (e) split by where it ran, per size (median
    over rounds), and the growth of the filter's own code, (d)'s JIT code, over `base` within a
    round."""
    split = per_round(load, "cpu_split_us_per_req")
    if not any(v == "d" for (_, _, v) in split):
        return []

    def part(k, size, v, where):
        shares = split.get((k, size, v), {})
        if where == "jit":
            return sum(x for dso, x in shares.items() if dso.startswith(JIT))
        if where == "envoy":
            return sum(x for dso, x in shares.items() if dso.startswith("envoy"))
        if where == "kernel":
            return sum(x for dso, x in shares.items() if dso.startswith("[kernel"))
        return sum(shares.values())

    lines = ["", "Split by where the CPU ran (`--profile`: `perf record -e cpu-clock` of Envoy "
             "during each measured run of (d), (e) and (w); code without a file, `[JIT]`, is the "
             "JIT code of the Wasm VMs: the filter's own code). Per size the median over rounds "
             "of µs per request; growth: at a size minus at "
             f"{base:,} in the same round.", "",
             "| instances | rounds | variant | all | Envoy binary | kernel | JIT code | "
             f"JIT code: growth over {base:,} | Envoy binary: (d) − (e) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        for v in ("d", "e", "w"):
            ks = [k for k in rounds if (k, size, v) in split]
            if not ks:
                continue

            def of(where, ks=ks, size=size, v=v):
                return f"{med([part(k, size, v, where) for k in ks]):.1f}"
            g = [part(k, size, v, "jit") - part(k, base, v, "jit") for k in ks
                 if (k, base, v) in split]
            de = [part(k, size, "d", "envoy") - part(k, size, "e", "envoy") for k in ks
                  if (k, size, "d") in split and (k, size, "e") in split]
            lines.append(f"| {size:,} | {len(ks)} | ({v}) | {of('all')} | {of('envoy')} | "
                         f"{of('kernel')} | {of('jit')} | "
                         f"{spread_text(g) if size != base and g else ''} | "
                         f"{spread_text(de) if v == 'd' and de else ''} |")
    return lines


def capture_section(info, load):
    """Transparent mode against the capture sidecar without the filter, (r)-(t), between
    CAPTURE_BEGIN and CAPTURE_END."""
    cpu, user = per_round(load, "cpu_us_per_req"), per_round(load, "user_us_per_req")
    rps = per_round(load, "rps")
    rounds = sorted({r["round"] for r in load})
    sizes = sorted({size for (_, size, v) in cpu if v in CAPTURE})
    if not sizes:
        return []

    def diffs(table, size, x, y):
        return [table[(k, size, x)] - table[(k, size, y)] for k in rounds
                if (k, size, x) in table and (k, size, y) in table]

    def ratios(table, size, x, y):
        return [table[(k, size, x)] / table[(k, size, y)] for k in rounds
                if (k, size, x) in table and (k, size, y) in table and table[(k, size, y)]]

    lines = [CAPTURE_BEGIN, "",
             "## Transparent mode against the capture sidecar without the filter", "",
             "The caller picks the instance itself: wrk names the members in turn as the "
             "request's authority (`Host: ip:port`, as a caller using the sidecar as an HTTP "
             "proxy names them), and the capture template takes that authority as the "
             "destination where, captured by iptables, it takes the connection's restored "
             "original destination (one line differs from `envoy/outbound-capture.yaml`). "
             "Every pick here is of a serving, warm member, so transparent mode keeps it; what "
             "is measured is the cost of judging it. Variants:", "",
             *[f"- ({v}) {name}" for v, name in CAPTURE.items()], "",
             *run_lines(info, load, tuple(CAPTURE)), "",
             "| instances | variant | req/s (median) | Envoy CPU µs/req | user CPU µs/req | "
             "p99 ms | runs counted | errors |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        for v in CAPTURE:
            rows = [r for r in load if (r["size"], r["variant"]) == (size, v)
                    and r.get("valid", True)]
            if not rows:
                continue
            errors = sum(r["non2xx"] + r["socket_errors"] for r in rows)
            lines.append(f"| {size:,} | ({v}) {CAPTURE[v].split(' (')[0]} | "
                         f"{med([r['rps'] for r in rows]):,.0f} | "
                         f"{med([r['cpu_us_per_req'] for r in rows]):.1f} | "
                         f"{med([r.get('user_us_per_req') for r in rows]):.1f} | "
                         f"{med([r['p99_ms'] for r in rows]):.2f} | {len(rows)} | {errors} |")
    lines += ["", "Differences of Envoy CPU µs per request within a round: median **in bold**, "
              "quartiles [Q1, Q3], 95 % bootstrap interval of the median in brackets; ratios: "
              "median of the within-round ratios.", "",
              "| instances | rounds | (t) − (s): the filter in both hops | (t) − (s), user CPU | "
              "(t) − (r): transparent mode over a plain capture sidecar | (s) − (r): the second "
              "hop | CPU/req (t) ÷ (s) | CPU/req (t) ÷ (r) | req/s (t) ÷ (s) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        ts, tsu = diffs(cpu, size, "t", "s"), diffs(user, size, "t", "s")
        tr, sr = diffs(cpu, size, "t", "r"), diffs(cpu, size, "s", "r")
        rat_s, rat_r = ratios(cpu, size, "t", "s"), ratios(cpu, size, "t", "r")
        rps_s = ratios(rps, size, "t", "s")
        lines.append(f"| {size:,} | {len(ts)} | {spread_text(ts) if ts else ''} | "
                     f"{spread_text(tsu) if tsu else ''} | {spread_text(tr) if tr else ''} | "
                     f"{spread_text(sr) if sr else ''} | "
                     f"{f'{med(rat_s):.2f}' if rat_s else ''} | "
                     f"{f'{med(rat_r):.2f}' if rat_r else ''} | "
                     f"{f'{med(rps_s):.2f}' if rps_s else ''} |")
    kept = [r["captured"] for r in load if r["variant"] == "t" and r.get("captured")]
    if kept:
        total = {}
        for c in kept:
            for k, n in c.items():
                name = k.split(".transparent.", 1)[-1]
                if not name.endswith("permille"):  # a gauge, not a count
                    total[name] = total.get(name, 0) + n
        lines += ["", "Transparent mode's counters over the (t) runs (warm-up included): "
                  + ", ".join(f"`{k}` {n:,}" for k, n in sorted(total.items())) + "."]
    lines += ["", CAPTURE_END]
    return lines


def split_text(s):
    if s.get("user_us_per_req") is None or s.get("sys_us_per_req") is None:
        return ""
    return f"{s['user_us_per_req']:.1f} / {s['sys_us_per_req']:.1f}"


def round_diffs(load, size, x, y, key):
    """Variant `x` − variant `y` of `key`, at `size`, one difference per round that counted both."""
    def row(v, rnd):
        return next((r for r in load if (r["size"], r["variant"], r["round"]) == (size, v, rnd)
                     and r.get("valid", True) and r.get(key) is not None), None)
    out = []
    for rnd in sorted({r["round"] for r in load}):
        a, b = row(x, rnd), row(y, rnd)
        if a and b:
            out.append(a[key] - b[key])
    return out


def attribution(load, sizes):
    """Where Envoy's CPU per request goes, from this run: per size, the median over rounds of the
    within-round differences of CPU µs/req between the variants."""
    steps = (("b", "a", "(b) − (a): the Wasm floor (a filter that does nothing)"),
             ("e", "b", "(e) − (b): Envoy's override_host routing over lossless' spread"),
             ("d", "e", "(d) − (e): the lossless filter's own work"),
             ("d", "b", "(d) − (b): lossless over a filter that does nothing"),
             ("d", "c", "(d) − (c): lossless over Envoy's native slow start"),
             ("w", "e", "(w) − (e): the same override_host routing with the hosts visited in one "
              "shuffled order instead of the cluster's host order"))
    def table(key):
        rows = []
        for size in sizes:
            cells = []
            for x, y, _ in steps:
                d = round_diffs(load, size, x, y, key)
                cells.append(f"{med(d):+.1f} ({min(d):+.1f} to {max(d):+.1f})" if d else "")
            if any(cells):
                rows.append(f"| {size:,} | " + " | ".join(cells) + " |")
        return rows

    rows, user_rows = table("cpu_us_per_req"), table("user_us_per_req")
    if not rows:
        return []
    head = ["| instances | " + " | ".join(label.split(":")[0] for _, _, label in steps) + " |",
            "|---:|" + "---:|" * len(steps)]
    per_call = []
    for v, (_, _, what) in CROSSINGS.items():
        # measured at one size only: the extra calls against (b) at that size, per call
        d = [x / 10 for size in sizes for x in round_diffs(load, size, v, "b", "cpu_us_per_req")]
        if d:
            per_call.append(f"{what}: **{med(d):.2f} µs** of Envoy CPU (rounds "
                            f"{min(d):.2f}–{max(d):.2f})")
    out = ["### Where the CPU per request goes", "",
           "Envoy CPU µs per request, differences between variants taken within a round; median "
           "over rounds (range). " + "; ".join(label for _, _, label in steps) + ".", "",
           *head, *rows, ""]
    if user_rows:
        out += ["The same differences in user CPU only (the Envoy process's own code and the Wasm "
                "VM, without the kernel's share: the loopback TCP work of all three processes, "
                "which Envoy's threads partly run, and waking the load generator and the "
                "upstreams):", "",
                *head, *user_rows, ""]
    if per_call:
        out += ["What one host call costs, from the pass-through filter making 10 more calls of "
                "one kind per request, (j) to (o), against (b) in the same round, divided by 10:",
                "", *[f"- {c}" for c in per_call], ""]
    floors = []
    for v, (_, _, what) in ROUTED_CALLS.items():
        for size in sizes:
            d = round_diffs(load, size, v, "e", "cpu_us_per_req")
            base = [r["cpu_us_per_req"] for r in load if (r["size"], r["variant"]) == (size, "e")
                    and r.get("valid", True)]
            if d and base:
                floors.append(f"({v}) {what}: **{med(d):+.1f} µs** over (e) (rounds "
                              f"{min(d):+.1f} to {max(d):+.1f}), {1 + med(d) / med(base):.2f}× "
                              f"(e)'s CPU per request, at {size:,} instances")
    if floors:
        out += ["The same calls made once each by the pass-through filter on top of (e), with no "
                "logic, against (e) in the same round (lossless' own (d) − (e) is in the table "
                "above):", "", *[f"- {f}" for f in floors], ""]
    return out


def formats_section(formats, info=None):
    """The registry replies refreshed inside Envoy, between FORMATS_BEGIN and FORMATS_END."""
    if not formats:
        return []
    out = [FORMATS_BEGIN, "",
           "## Registry replies refreshed inside Envoy (10,000 instances, the filter's gauge)", "",
           "Envoy `--concurrency 1`, one loopback registry answering the filter's list "
           "request every 500 ms (`bench/refresh_in_envoy.py`): the "
           "`lossless.<svc>.refresh_duration_us` gauge of the poller VM after each refresh "
           "(fingerprint, parse, keep-last-good, compare; for a change also encode, publish and "
           "the poller's own view). Changed: two replies in turn that differ by one instance; "
           "unchanged: the same reply each time (Consul with a new `X-Consul-Index`). 13 metadata "
           "keys per instance.", "",
           "| reply | body | changed: median | range | unchanged: median | range | samples "
           "| Envoy CPU ms per refresh (changed / unchanged) "
           "| load average (changed / unchanged) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape in dict.fromkeys(f["shape"] for f in formats):
        c = next((f for f in formats if f["shape"] == shape and f["changed"]), None)
        u = next((f for f in formats if f["shape"] == shape and not f["changed"]), None)

        def cell(f):
            return (f"{f['median_ms']:.1f} ms | {f['min_ms']:.1f}–{f['max_ms']:.1f} ms"
                    if f else " | ")
        def load(f):
            if not f or f.get("load1_before") is None:
                return "?"
            return f"{f['load1_before']:.1f}–{f['load1_after']:.1f}"
        body = (c or u)["bytes"] / 1e6
        samples = "/".join(str(f["samples"]) for f in (c, u) if f)
        def cpu(f):
            if not f or f.get("cpu_ms_per_refresh") is None:
                return "?"
            return f"{f['cpu_ms_per_refresh']:.1f}"
        out.append(f"| {shape} | {body:.1f} MB | {cell(c)} | {cell(u)} | {samples} "
                   f"| {cpu(c)} / {cpu(u)} | {load(c)} / {load(u)} |")
    out.append("")
    if info:
        out.append(f"Measured {info['date']} (`{command_text(info)}`), `lossless.wasm` "
                   f"{info['wasm_size']:,} bytes. The gauge is a wall-clock duration inside the "
                   "VM: on a loaded machine it includes the time the worker waited for a CPU. "
                   "Envoy CPU ms per refresh: the Envoy process's CPU time from the first counted "
                   "refresh to the last, divided by the replies applied between them "
                   "(`refresh_ok`; a changed run also applies replies that publish nothing new) "
                   "(the reply received by Envoy's HTTP client, the filter's refresh, the idle "
                   "ticks between). Load average: the machine's 1-minute load average when each "
                   "measurement began and ended (2 CPUs, shared with other work).")
        out.append("")
    out.append(FORMATS_END)
    return out


def picks_by_id(micro):
    return {m["id"]: m for m in micro}


def report(args, info, load, probe, micro, sizes_doc, formats=(), startup=None):
    """The generated section of BENCHMARKS.md (without its markers); `startup` is the startup
    block's lines (bench/startup.py), measured in this run or kept from the last one."""
    lines = []
    add = lines.append
    summ, ratios = summarize(load, args.sizes) if load else ({}, {})
    add("Generated by `bench/run.py` (`make bench`); every figure below was measured in the run "
        "described here. Ratios compare variants run side by side in the same round (interleaved, "
        "Envoy restarted per run) and report the median over rounds with the range.")
    add("")
    add(f"- **Date**: {info['date']} (run took {info['elapsed_min']:.1f} min)")
    add(f"- **Command**: `{info['command']}`")
    add(f"- **Machine**: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']:.0f} GiB, "
        f"Linux {info['kernel']}; shared and noisy: load average {info['load_before']} before, "
        f"{info['load_after']} after")
    add(f"- **Envoy**: {info['envoy_version']}, `--concurrency 1`, V8 runtime; "
        f"**nginx** {info['nginx_version']} (`worker_processes 1` per process, "
        f"`return 200 \"ok\"`); **wrk** `{info['wrk_cmd']}` after an unrecorded warm-up "
        f"of at least {args.warmup} s, continued until 95 % of the hosts hold a keep-alive "
        f"upstream connection (at most {args.warmup_max} s)")
    add(f"- **Rust**: {info['rustc']}; micro-benchmarks with the `bench` profile (= release: "
        "opt-level 3, LTO), native x86_64")
    add("")

    def ratio_text(size, v, base):
        r = ratios.get((size, v, base))
        return f"{r[0]:.3f} ({r[1]:.2f}–{r[2]:.2f})" if r else ""

    def cpu_ratio_text(size, v, base):
        r = ratios.get((size, v, base))
        return f"{r[3]:.2f}" if r else ""

    if load:
        add("## Envoy load test")
        add("")
        add("| instances | variant | req/s (median) | req/s per round | p50 ms | p99 ms "
            "| Envoy CPU µs/req | user / system µs/req | ÷ (a) req/s | ÷ (b) req/s "
            "| ÷ (c) req/s | CPU/req ÷ (b) | CPU/req ÷ (e) | RSS MiB "
            "| upstream cx at start / new in run | errors |")
        add("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in args.sizes:
            extra = {k: c[0] for k, c in {**CROSSINGS, **ROUTED_CALLS}.items()}
            for v, name in {**VARIANTS, **extra}.items():
                s = summ.get((size, v))
                if not s:
                    continue
                rps_all = ", ".join(f"{x:,}" for x in s["rps_all"])
                add(f"| {size:,} | ({v}) {name} | {s['rps']:,.0f} | {rps_all} | "
                    f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['cpu_us_per_req']:.1f} | "
                    f"{split_text(s)} | "
                    f"{ratio_text(size, v, 'a')} | {ratio_text(size, v, 'b')} | "
                    f"{ratio_text(size, v, 'c')} | {cpu_ratio_text(size, v, 'b')} | "
                    f"{cpu_ratio_text(size, v, 'e')} | {s['VmRSS'] / 1024:.0f} | "
                    f"{s['cx_active_at_start']:,.0f} / {s['cx_new']:,.0f} | {s['errors']} |")
        add("")
        add("Errors = non-2xx responses + socket errors over all measured runs of that row. Envoy "
            "CPU µs/req is the Envoy process's user+system CPU time during the measured wrk run "
            "divided by the requests served (less sensitive to the other tenants of the machine "
            "than req/s). RSS is Envoy's after the run.")
        add("")
        lines.extend(attribution(load, args.sizes))
        growth = growth_section(info, load)
        if growth:
            lines.extend(growth)
            add("")
        if any(r["variant"] in CAPTURE for r in load):
            lines.extend(capture_section(info, load))
            add("")
        if any(r["variant"] in MATRIX for r in load):
            lines.extend(matrix_section(args, info, load))
            add("")
    if formats:
        lines.extend(formats_section(formats, info))
        add("")
    pr, derived = probe_summary(probe) if probe else ({}, {})
    if probe:
        add("## Membership refresh inside Envoy (idle, `refresh_interval_ms` 100, "
            "10,000-endpoint cluster)")
        add("")
        add("| probe | registry document | concurrency | refreshes/s | published/s "
            "| Envoy CPU ms/s | RSS MiB | peak RSS MiB | /memory allocated MiB | heap MiB |")
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for tag, service, conc in PROBES:
            p = pr.get(tag)
            if p:
                kib = sizes_doc.get(service, 0) / 1024
                add(f"| {tag} | `/m/{service}.json` ({kib:.0f} KiB) | {conc} | "
                    f"{p['refreshes_per_s']:.1f} | {p['published_per_s']:.1f} | "
                    f"{p['cpu_ms_per_s']:.0f} | {p['rss_mib']:.1f} | {p['hwm_mib']:.1f} | "
                    f"{p['allocated_mib']:.1f} | {p['heap_mib']:.1f} |")
        add("")
        same, pub = derived["cpu_ms_per_same_refresh"], derived["cpu_ms_per_publish"]
        if same:
            rounds = ", ".join(f"{x:.1f}" for x in same)
            add("- CPU per refresh of 10,000 instances that did not change (fetch 10k-instance "
                f"document + parse + keep-last-good compare): **{med(same):.1f} ms** (per round: "
                f"{rounds}), = (CPU/s with the 10k document − CPU/s with the 3-instance "
                "document) ÷ refreshes/s.")
        if pub:
            rounds = ", ".join(f"{x:.1f}" for x in pub)
            add("- CPU per refresh that publishes a changed 10,000-instance membership (the above "
                "+ encode + shared data + decode and rebuild in every VM): "
                f"**{med(pub):.1f} ms** (per round: {rounds}).")
        if derived["vm_mib_10k"]:
            v10, v3 = derived["vm_mib_10k"], derived["vm_mib_3"]
            rounds = ", ".join(f"{a - b:.1f}" for a, b in zip(v10, v3, strict=False))
            add(f"- One more worker (`--concurrency 2` − `1`) adds {med(v10):.1f} MiB RSS with the "
                f"10k membership and {med(v3):.1f} MiB with 3 instances: the 10k membership costs "
                f"**{med(v10) - med(v3):.1f} MiB per VM** (per round: {rounds}).")
        add("- The figures above are Envoy process CPU time (all threads) differences, which "
            "include Envoy's HTTP client receiving the document; the filter's own refresh-duration "
            "gauge is in \"Registry replies refreshed inside Envoy\".")
        add("")
    if startup:
        lines.extend(startup)
        add("")
    add("## Artefacts")
    add("")
    add(f"- `lossless.wasm`: **{info['wasm_size']:,} bytes** ({info['wasm_size'] / 1024:.0f} KiB); "
        f"pass-through filter: {info['pt_size']:,} bytes")
    add("- Static registry documents: "
        + ", ".join(f"`{k}.json` {v:,} bytes" for k, v in sorted(sizes_doc.items())))
    add("")
    if micro:
        add("## Native micro-benchmarks (criterion)")
        add("")
        add("| benchmark | time per op (median) | mean 95 % CI | per instance | input |")
        add("|---|---:|---|---:|---:|")
        for r in micro:
            n = None
            m = re.search(r"/(\d+)$", r["id"])
            if m and not r["id"].startswith("balancer_pick"):
                n = int(m.group(1))
            per_op = n and not r["id"].startswith("route_end_to_end/sync_route")
            per = fmt_ns(r["median_ns"] / n) if per_op else ""
            inp = f"{r['bytes'] / 1024:,.0f} KiB" if r.get("bytes") else ""
            add(f"| `{r['id']}` | {fmt_ns(r['median_ns'])} | {fmt_ns(r['mean_lo_ns'])} – "
                f"{fmt_ns(r['mean_hi_ns'])} | {per} | {inp} |")
        add("")
        add("`balancer_pick_2_fallbacks`: one primary + 2 distinct fallbacks, 10 % of the "
            "instances warming (non-uniform weights). "
            "`route_end_to_end/sync_route_warming_15k_rps`: per request, the View's generation "
            "check + `runtime::route` (pick, header value), with the clock advancing as at 15k "
            "req/s so the O(n) weight recomputation every 100 ms is amortised in. "
            "`sync_after_publish`: what each VM pays once per published change (decode + marks + "
            "rebuild). Parsers: generated bodies in each registry's real shape (Nacos hosts with "
            "13 Dubbo metadata keys, Eureka instances with port/leaseInfo/metadata, Consul "
            "Node/Service/Checks).")
        add("")
    # targets
    add("## Targets")
    add("")
    add("| target | measured | verdict |")
    add("|---|---|---|")

    def r_(size, base):
        return ratios.get((size, "d", base))

    def measured(r):
        user = f" (user CPU {r[6]:.2f}×)" if len(r) > 6 and r[6] else ""
        return f"{r[0]:.3f}× req/s (rounds {r[1]:.2f}–{r[2]:.2f}); CPU/req {r[3]:.2f}×{user}"

    for size in args.sizes:
        r = r_(size, "e")
        if r:
            add(f"| lossless ÷ (e) at {size:,} instances: ≥ 0.95× req/s and ≤ 1.05× Envoy CPU per "
                f"request | {measured(r)} | {verdict(r[0] >= 0.95 and r[3] <= 1.05)} |")
    for v, (name, _, _) in ROUTED_CALLS.items():
        for size in args.sizes:
            r = ratios.get((size, v, "e"))
            if r:
                add(f"| (reported) ({v}) {name}, ÷ (e) at {size:,} instances | {measured(r)} | |")
    for size in args.sizes:
        for base, name in (("b", "the pass-through filter (b)"),
                           ("c", "Envoy's native slow start (c)")):
            r = r_(size, base)
            if r:
                add(f"| (reported) lossless ÷ {name} at {size:,} instances | {measured(r)} | |")
    for kind, limit in (("changed", 50), ("unchanged", 5)):
        for shape, label in (("nacos_v1", "Nacos v1"), ("eureka", "Eureka"),
                             ("consul", "Consul")):
            m = picks_by_id(micro).get(f"registry_refresh/{kind}/{shape}/10000")
            if m:
                add(f"| {label}, {kind} 10,000-instance reply ≤ {limit} ms, natively (criterion) "
                    f"| {fmt_ns(m['median_ns'])} | {verdict(m['median_ns'] <= limit * 1e6)} |")
        for f in formats:
            if f["changed"] == (kind == "changed"):
                add(f"| {f['shape']}, {kind} 10,000-instance reply ≤ {limit} ms, inside Envoy "
                    f"(gauge) | {f['median_ms']:.1f} ms (range {f['min_ms']:.1f}–"
                    f"{f['max_ms']:.1f}) | {verdict(f['median_ms'] <= limit)} |")
    picks = {m["id"]: m for m in micro}
    pick = picks.get("balancer_pick_2_fallbacks/random/10000")
    pick_rr = picks.get("balancer_pick_2_fallbacks/round_robin/10000")
    if pick and pick_rr:
        worst = max(pick["median_ns"], pick_rr["median_ns"])
        add(f"| pick < 1 µs at 10k (native) | random {fmt_ns(pick['median_ns'])}, "
            f"round_robin {fmt_ns(pick_rr['median_ns'])} | {verdict(worst < 1000)} |")
    if probe and derived["cpu_ms_per_same_refresh"]:
        s = med(derived["cpu_ms_per_same_refresh"])
        p = med(derived["cpu_ms_per_publish"]) if derived["cpu_ms_per_publish"] else None
        worst = max(s, p or 0)
        add(f"| 10k refresh < 50 ms CPU | unchanged {s:.1f} ms"
            + (f", changed (publish) {p:.1f} ms" if p is not None else "")
            + f" | {verdict(worst < 50)} |")
    if probe and derived["vm_mib_10k"]:
        d = med(derived["vm_mib_10k"]) - med(derived["vm_mib_3"])
        add(f"| per-VM memory for 10k < 8 MiB | {d:.1f} MiB (marginal RSS of one VM, 10k − 3 "
            f"instances) | {verdict(d < 8)} |")
    size = info["wasm_size"]
    add(f"| .wasm ≤ {size_text(WASM_BUDGET)} ({WASM_BUDGET:,} bytes; `make build` fails above it) "
        f"| {size:,} bytes ({size / 1024:.0f} KiB) | {verdict(size <= WASM_BUDGET)} |")
    return "\n".join(lines) + "\n"


