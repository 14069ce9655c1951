"""The demo's live view: the release's progress and each instance's state, weight and share of
the last second, redrawn in place about once a second (ANSI), or one line per second."""

import math
import sys
import threading
from collections import Counter


class LiveView:
    """Refreshes the terminal about once a second (ANSI), or prints one line per second."""

    def __init__(self, run, tty):
        self.run = run
        self.tty = tty
        self.lines = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True, name="live-view")

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)

    def loop(self):
        run = self.run
        while not self.stop.is_set():
            t = run.load.elapsed()
            # wake up on the next whole second of the load clock
            if self.stop.wait(math.floor(t) + 1.0 - t):
                break
            try:
                run.view = run.gateway_view()
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.render(math.floor(run.load.elapsed()))
            except Exception as exc:  # noqa: BLE001 - the view must never stop the demo
                print(f"live view: {exc!r}", file=sys.stderr)

    def state_of(self, inst):
        v = self.run.view.get(inst.addr)
        if inst.phase == "crashed":
            return "killed", "31"
        if inst.phase == "exited":
            if self.run.mode == "baseline" and v and v["state"] == "healthy":
                return "exited, HC healthy", "31"
            if self.run.mode == "spring" and v:
                return "gone, still routed", "31"
            return "gone", "90"
        if inst.phase == "terminating":
            return ("draining", "31") if inst.lossless else ("SIGTERM", "31")
        if not v:
            return ("registered" if self.run.mode == "spring" and inst.phase == "up"
                    else "starting"), "36"
        if v["state"] == "routed":
            if inst.uptime() < self.run.args.warmup:
                return f"routed, cold {int(100 * inst.uptime() / self.run.args.warmup)}%", "33"
            return "routed", "32"
        if v["state"] == "serving":
            if v["warming"]:
                pct_ = min(100, int(100 * inst.uptime() / self.run.args.warmup))
                return f"warming {pct_}%", "33"
            return "serving", "32"
        if v["state"] == "healthy":
            if inst.uptime() < self.run.args.warmup:
                return f"cold {int(100 * inst.uptime() / self.run.args.warmup)}%", "33"
            return "healthy", "32"
        if v["state"] == "unhealthy":
            return "starting", "36"
        return v["state"], "31"

    def render(self, second):
        run = self.run
        samples = run.load.results()
        # answered in the last second (a slow answer counts when it arrives)
        last = [s for s in samples if second - 1 <= s.t + s.latency < second]
        total_last = len(last)
        failed = sum(1 for s in samples if not 200 <= s.status < 300)
        with run.lock:
            insts = [i for i in run.instances if i.phase != "planned"]
        ok_by = Counter(s.instance for s in samples if 200 <= s.status < 300)
        fail_by = Counter(s.instance for s in samples if not 200 <= s.status < 300)
        # share of traffic: every answer from the instance, refusals of a cold one included
        last_by = Counter(s.instance for s in last if s.instance)
        prog = run.progress()
        k, phase = run.step if run.step else (0, "steady load")
        title = {"lossless": "lossless",
                 "baseline": "baseline (plain Envoy, naive instances)",
                 "spring": "Spring Cloud Gateway + LoadBalancer on Eureka, defaults"}[run.mode]
        if not self.tty:
            parts = [f"[{run.mode} {second:4d}s] release {run.steps_done}/{run.args.replace} "
                     f"{int(prog * 100):3d}% ({phase}) | req {len(samples)} fail {failed}"]
            for inst in insts:
                st, _ = self.state_of(inst)
                v = run.view.get(inst.addr) or {}
                w = v.get("weight")
                share = last_by[inst.addr] / total_last if total_last else 0.0
                parts.append(f"{inst.name} {st}" + (f" w{w}" if w is not None else "")
                             + f" {share * 100:.0f}%")
            print(" | ".join(parts), flush=True)
            return
        bar_w = 30
        filled = int(round(prog * bar_w))
        out = [f"\x1b[1m{title}\x1b[0m   t={second}s   load {run.args.rate:g} req/s, "
               f"{int(run.args.post_share * 100)}% POST   warmup {run.args.warmup:g}s",
               f"release [{'#' * filled}{'.' * (bar_w - filled)}] {int(prog * 100):3d}%  "
               f"step {min(k + 1, run.args.replace)}/{run.args.replace}: {phase}",
               "",
               f"  {'inst':<5}{'address':<18}{'state':<20}{'weight':>7}  {'share (last 1s)':<26}"
               f"{'requests':>9}{'failed':>8}"]
        for inst in insts:
            st, color = self.state_of(inst)
            v = run.view.get(inst.addr) or {}
            w = v.get("weight")
            share = last_by[inst.addr] / total_last if total_last else 0.0
            bar = "█" * int(round(share * 20))
            out.append(f"  {inst.name:<5}{inst.addr:<18}\x1b[{color}m{st:<20}\x1b[0m"
                       f"{'-' if w is None else w:>7}  {share * 100:5.1f}% {bar:<19}"
                       f"{ok_by[inst.addr]:>9}{fail_by[inst.addr]:>8}")
        fcol = "32" if failed == 0 else "31"
        out.append("")
        out.append(f"  total: {len(samples)} requests, {len(samples) - failed} ok, "
                   f"\x1b[{fcol}m{failed} failed\x1b[0m   last second: {total_last} requests")
        buf = ""
        if self.lines:
            buf += f"\x1b[{self.lines}F"
        buf += "".join(f"\x1b[2K{line}\n" for line in out)
        if self.lines > len(out):  # clear what is left of a longer previous frame
            buf += "\x1b[2K\n" * (self.lines - len(out)) + f"\x1b[{self.lines - len(out)}F"
        sys.stdout.write(buf)
        sys.stdout.flush()
        self.lines = len(out)
