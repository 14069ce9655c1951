"""The demo's report of one run: a hand-written SVG plot of each instance's share of the traffic
(with events, warmup windows and failures per second) and the raw samples as CSV."""

import html

from summary import shares, summarize


def svg_plot(title, series, fails, events, colors, duration, warmups=()):
    """Hand-written SVG: one polyline per instance (share of each second's requests), a legend,
    axes, event markers, warmup windows and failed requests per second as red bars."""
    W, H = 960, 490
    left, right, top, bottom = 60, 170, 80, 60
    pw, ph = W - left - right, H - top - bottom
    duration = max(duration, 1.0)

    def x(t):
        return left + pw * min(max(t, 0.0), duration) / duration

    def y(share):
        return top + ph * (1.0 - share)

    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{e(title)}</text>']
    # axes and grid
    out.append('<g class="axes" stroke="#333" fill="none">'
               f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>'
               f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/></g>')
    out.append('<g class="grid" font-size="11">')
    for i in range(0, 11, 2):
        share = i / 10
        out.append(f'<line x1="{left}" y1="{y(share):.1f}" x2="{left + pw}" y2="{y(share):.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(share) + 4:.1f}" text-anchor="end">'
                   f'{int(share * 100)}%</text>')
    step = next(s for s in (5, 10, 15, 20, 30, 60, 120, 300) if duration / s <= 12)
    for t in range(0, int(duration) + 1, step):
        out.append(f'<line x1="{x(t):.1f}" y1="{top + ph}" x2="{x(t):.1f}" y2="{top + ph + 4}" '
                   'stroke="#333"/>')
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 17}" text-anchor="middle">{t}</text>')
    out.append('</g>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 18}" text-anchor="middle">time (s)</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">share of the requests of each second'
               '</text>')
    # warmup windows of the instances started during the release
    out.append('<g class="warmups">')
    for name, t0, t1 in warmups:
        out.append(f'<rect x="{x(t0):.1f}" y="{top}" width="{max(0.0, x(t1) - x(t0)):.1f}" '
                   f'height="{ph}" fill="{colors[name]}" fill-opacity="0.07"/>')
        out.append(f'<text x="{x(t0) + 3:.1f}" y="{top + 14}" font-size="10" '
                   f'fill="{colors[name]}">{e(name)} warmup</text>')
    out.append('</g>')
    # events, labels in up to 4 lanes above the plot so that they do not overlap
    out.append('<g class="events" font-size="10" fill="#555">')
    lanes = [-1e9] * 4
    for t, text in sorted((ev for ev in events if ev[0] is not None), key=lambda ev: ev[0]):
        lane = next((i for i, end in enumerate(lanes) if end < x(t)),
                    min(range(len(lanes)), key=lanes.__getitem__))
        lanes[lane] = x(t) + 2 + 5.6 * len(text)
        ty = top - 4 - 11 * lane
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + ph}" '
                   'stroke="#aaa" stroke-dasharray="3,3"/>')
        out.append(f'<text x="{x(t) + 2:.1f}" y="{ty}">{e(text)}</text>')
    out.append('</g>')
    # failures per second (own scale, right axis)
    fmax = max(fails) if fails else 0
    if fmax:
        out.append('<g class="failures" fill="#d62728" fill-opacity="0.55">')
        bw = max(1.0, pw / duration * 0.8)
        for b, f in enumerate(fails):
            if f:
                h = ph * 0.5 * f / fmax
                out.append(f'<rect x="{x(b):.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" '
                           f'height="{h:.1f}"><title>{b}s: {f} failed</title></rect>')
        out.append('</g>')
        out.append(f'<text x="{left + pw + 4}" y="{top + ph / 2 + 4:.1f}" fill="#d62728" '
                   f'font-size="10">{fmax} failed/s</text>')
    # series
    for name, pts in series.items():
        if not pts:
            continue
        coords = " ".join(f"{x(t):.1f},{y(s):.1f}" for t, s in pts)
        out.append(f'<polyline class="series" data-instance="{e(name)}" fill="none" '
                   f'stroke="{colors[name]}" stroke-width="2" points="{coords}"/>')
    # legend
    out.append(f'<g class="legend" transform="translate({left + pw + 20},{top})">')
    for n, name in enumerate(series):
        out.append(f'<line x1="0" y1="{n * 18}" x2="22" y2="{n * 18}" stroke="{colors[name]}" '
                   'stroke-width="3"/>')
        out.append(f'<text x="28" y="{n * 18 + 4}">{e(name)}</text>')
    n = len(series)
    out.append(f'<rect x="0" y="{n * 18 - 5}" width="22" height="10" fill="#d62728" '
               f'fill-opacity="0.55"/><text x="28" y="{n * 18 + 4}">failed requests</text>')
    out.append('</g></svg>')
    return "\n".join(out) + "\n"


def write_report(run, out):
    """Writes the run's SVG plot (out/<mode>.svg) and its raw samples (out/<mode>/samples.csv);
    returns its figures (summarize) with the plot's series."""
    s = summarize(run)
    series, fails = shares(run)
    colors = {inst.name: inst.color for inst in run.instances}
    events = [(run.rel(t), e) for t, e in run.events
              if not e.startswith("load") and not e.endswith("serving")]
    who = {"spring": "spring (Spring Cloud Gateway, LoadBalancer, Eureka)"}.get(run.mode, run.mode)
    title = (f"{who}: share of traffic per instance during a rolling release "
             f"({s['requests']} requests, {s['failed']} failed)")
    warmups = [(inst.name, run.wall_to_rel(inst.started_ms),
                run.wall_to_rel(inst.started_ms) + run.args.warmup)
               for inst in run.instances[run.args.instances:] if inst.started_ms is not None]
    svg = svg_plot(title, series, fails, events, colors, s["duration_s"] or 1.0, warmups)
    (out / f"{run.mode}.svg").write_text(svg)
    s["svg"] = f"{run.mode}.svg"
    # the raw samples of the load generator, one line per request
    with open(run.out / "samples.csv", "w") as f:
        f.write("t_s,method,status,instance,latency_ms,error\n")
        for x in (run.load.results() if run.load else []):
            name = next((i.name for i in run.instances if i.addr == x.instance), "")
            err = (x.error or "").replace(",", ";").replace("\n", " ")
            f.write(f"{x.t:.4f},{x.method},{x.status},{name},{x.latency * 1000:.1f},{err}\n")
    s["samples_csv"] = f"{run.mode}/samples.csv"
    s["shares"] = {k: [[round(t, 1), round(v, 4)] for t, v in pts] for k, pts in series.items()}
    s["failed_per_second"] = fails
    return s
