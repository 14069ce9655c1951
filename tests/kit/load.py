"""Load generators: HTTP/1.1 keep-alive clients in threads, each sample recorded (time, method,
status, answering instance, latency, error, chosen headers), and percentiles of what they saw."""

import http.client
import statistics
import threading
import time
from collections import Counter, namedtuple

from .env import LOOPBACK

Sample = namedtuple("Sample", "t method status instance latency error headers")


class Load:
    """Bounded HTTP load: `threads` keep-alive connections for `duration` s or `count` requests,
    optionally at `rate` req/s in total; a `post_share` of requests are POSTs with `body`.
    Sample.t is seconds since start(); status 0 means an exception (Sample.error). `judge`, when
    given, reads each answer instead: judge(status, headers, body) -> (status, instance, {extra}),
    for a server that reports on a request it made itself (a caller's /call)."""

    def __init__(self, port, threads=8, duration=None, count=None, rate=None, post_share=0.0,
                 path="/", headers=None, body=b'{"op":"write"}', timeout=5.0,
                 record_headers=(), max_duration=120.0, judge=None):
        if duration is None and count is None:
            duration = 2.0
        self.port = port
        self.threads = threads
        self.duration = min(duration if duration is not None else max_duration, max_duration)
        self.count = count
        self.rate = rate
        self.post_share = post_share
        self.path = path
        self.headers = dict(headers or {})
        self.body = body
        self.timeout = timeout
        self.record_headers = tuple(h.lower() for h in record_headers)
        self.judge = judge
        self._samples = []
        self._lock = threading.Lock()
        self._issued = 0
        self._stop = threading.Event()
        self._workers = []
        self.t0 = None

    def start(self):
        self.t0 = time.monotonic()
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True,
                                      name=f"load-{i}")
            worker.start()
            self._workers.append(worker)
        return self

    def wait(self, timeout=None):
        """Join the workers (bounded by duration + request timeout + margin)."""
        limit = timeout if timeout is not None else self.duration + self.timeout + 10.0
        deadline = time.monotonic() + limit
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        if any(w.is_alive() for w in self._workers):
            raise TimeoutError("load workers did not finish")
        return self

    def run(self):
        return self.start().wait()

    def stop(self):
        self._stop.set()
        return self.wait()

    def elapsed(self):
        return time.monotonic() - self.t0

    def _claim(self):
        with self._lock:
            if self.count is not None and self._issued >= self.count:
                return False
            self._issued += 1
            return True

    def _run(self, index):
        conn = None
        interval = self.threads / self.rate if self.rate else 0.0
        next_at = self.t0 + (interval * index / self.threads if interval else 0.0)
        end = self.t0 + self.duration
        n = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if interval:
                if next_at > now:
                    time.sleep(min(next_at - now, max(0.0, end - now)))
                next_at += interval
            if time.monotonic() >= end or not self._claim():
                break
            # exact share: request n is a POST when floor(n * share) steps up
            is_post = int((n + 1) * self.post_share) > int(n * self.post_share)
            n += 1
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            conn, sample = self._one(conn, "POST" if is_post else "GET")
            with self._lock:
                self._samples.append(sample)
        if conn is not None:
            conn.close()

    def _one(self, conn, method):
        start = time.monotonic()
        headers = dict(self.headers)
        body = None
        if method == "POST":
            body = self.body
            headers.setdefault("content-type", "application/json")
        try:
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = {h: resp.getheader(h) for h in self.record_headers if resp.getheader(h)}
            status, instance = resp.status, resp.getheader("x-instance")
            if self.judge is not None:
                status, instance, extra = self.judge(status, resp.getheaders(), data)
                kept.update(extra)
            sample = Sample(start - self.t0, method, status, instance,
                            time.monotonic() - start, None, kept)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conn = None
            sample = Sample(start - self.t0, method, 0, None, time.monotonic() - start,
                            f"{type(exc).__name__}: {exc}", {})
        return conn, sample

    def results(self):
        with self._lock:
            return list(self._samples)

    def errors(self):
        """Samples with an exception or a non-2xx status."""
        return [s for s in self.results() if not 200 <= s.status < 300]

    def window(self, start=None, end=None):
        return [s for s in self.results()
                if (start is None or s.t >= start) and (end is None or s.t < end)]

    def counts(self, start=None, end=None, method=None):
        """Counter of x-instance over 2xx samples in [start, end)."""
        return Counter(s.instance for s in self.window(start, end)
                       if 200 <= s.status < 300 and (method is None or s.method == method))

    def shares(self, window_start=None, window_end=None):
        """{instance: fraction of 2xx responses} in [window_start, window_end)."""
        counts = self.counts(window_start, window_end)
        total = sum(counts.values())
        return {k: v / total for k, v in counts.items()} if total else {}

    def summary(self):
        res = self.results()
        statuses = Counter(s.status for s in res)
        return (f"{len(res)} requests, statuses {dict(statuses)}, "
                f"instances {dict(self.counts())}")


class MixedLoad:
    """Open-loop load: two Loads on one clock, GETs at (1 - post_share) x rate and POSTs at
    post_share x rate, each with enough connections (`threads` in all) that slow answers do not
    hold the sending back. (One Load makes request n of each connection a POST when
    floor(n x share) steps up: with hundreds of connections the first POSTs would come seconds
    late.) Sample.t is seconds since the first one started."""

    def __init__(self, port, rate, post_share, threads, **kwargs):
        self.parts = []
        for share, posts in ((1.0 - post_share, 0.0), (post_share, 1.0)):
            if share > 0:
                self.parts.append(Load(port, threads=max(2, int(round(threads * share))),
                                       rate=rate * share, post_share=posts, **kwargs))
        self.t0 = None

    def start(self):
        for part in self.parts:
            part.start()
        self.t0 = self.parts[0].t0
        return self

    def elapsed(self):
        return time.monotonic() - self.t0

    def stop(self):
        for part in self.parts:
            part.stop()

    def results(self):
        out = []
        for part in self.parts:
            shift = part.t0 - self.t0
            out.extend(x._replace(t=x.t + shift) for x in part.results())
        out.sort(key=lambda x: x.t)
        return out


def percentile(values, q):
    """The q-quantile (0 <= q <= 1) of values, interpolated between the closest ranks
    (statistics.quantiles, inclusive method); None for no values."""
    values = list(values)
    if not values:
        return None
    if q <= 0 or len(values) == 1:
        return min(values)
    if q >= 1:
        return max(values)
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]
