"""Processes: started by name with their logs, tracked by pid, stopped (TERM, then KILL) one by
one, all at exit and on Ctrl-C or SIGTERM. Bounded waits."""

import atexit
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

_managers = []


class ProcessExited(RuntimeError):
    pass


def _raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Procs:
    """Starts named processes with logs in log_dir; stop_all() ends every one (TERM, then KILL).

    new_session: each process in a session of its own (Ctrl-C on the terminal reaches only this
    one, which then stops them); raise_nofile: the open-files soft limit raised to the hard one."""

    def __init__(self, log_dir, new_session=False, raise_nofile=False):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.new_session = new_session
        self.raise_nofile = raise_nofile
        self.procs = {}  # name -> Popen
        self.logs = {}  # name -> Path
        _managers.append(self)

    def start(self, name, argv, env=None, log_path=None, cwd=None):
        """Start argv (no shell) with os.environ + env; stdout and stderr appended to log_path."""
        if self.is_alive(name):
            raise RuntimeError(f"process {name} is already running")
        log_path = Path(log_path or self.log_dir / f"{name}.log")
        full_env = dict(os.environ)
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        with open(log_path, "ab") as log:
            log.write(f"--- start {name}: {' '.join(map(str, argv))}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [str(a) for a in argv], env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=self.new_session,
                preexec_fn=_raise_nofile if self.raise_nofile else None)
        self.procs[name] = proc
        self.logs[name] = log_path
        return proc

    def pid(self, name):
        return self.procs[name].pid

    def is_alive(self, name):
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def send_signal(self, name, sig):
        """Send `sig` to process `name` (if it still runs)."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)

    def stop(self, name, timeout=5.0, sig=signal.SIGTERM):
        """Send sig, wait up to timeout, then SIGKILL. Returns the exit code (None if unknown)."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
            except ProcessLookupError:
                pass
        try:
            return proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, name):
        """SIGKILL at once."""
        return self.stop(name, timeout=0.0, sig=signal.SIGKILL)

    def stop_all(self, timeout=5.0):
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in alive:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)

    def log_paths(self):
        return sorted(self.log_dir.iterdir())


@atexit.register
def stop_everything(timeout=2.0):
    """Stops every process of every Procs of this interpreter (also run at exit)."""
    for procs in _managers:
        procs.stop_all(timeout=timeout)


def interrupt_on_signals():
    """SIGTERM (and SIGINT, even when inherited as ignored) raise KeyboardInterrupt in the main
    thread: the `finally` blocks and the exit handler then stop every process."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


class Managed:
    """A process started through `self.procs` under `self.name`."""

    def stop(self):
        return self.procs.stop(self.name)

    def kill(self):
        return self.procs.kill(self.name)

    def is_alive(self):
        return self.procs.is_alive(self.name)

    @property
    def pid(self):
        return self.procs.pid(self.name)


def wait_until(fn, timeout=10.0, interval=0.1, what="condition"):
    """Poll fn() until it returns a truthy value (returned); raise TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of process `pid` (all its threads), s."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_split(pid):
    """(user, system) CPU time of process `pid` (all its threads), s."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_kib(pid):
    """{"VmRSS": resident KiB, "VmHWM": peak resident KiB} of process `pid`."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out
