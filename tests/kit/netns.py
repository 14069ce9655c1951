"""Istio-style outbound capture on one machine: a caller ("pod") network namespace whose outbound
TCP is redirected by iptables to its sidecar's capture port, and a providers ("svc") namespace
reached over a veth pair. Needs root, `ip` (iproute2), `iptables` and `setpriv`.

The rules are those istio-iptables writes for a sidecar (tools/istio-iptables, Istio 1.28;
testdata/*.golden), outbound part, nat table of the pod namespace:

    -N ISTIO_REDIRECT
    -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
    -N ISTIO_OUTPUT
    -A OUTPUT -p tcp -j ISTIO_OUTPUT
    -A ISTIO_OUTPUT -p tcp -m multiport --dports P1,P2 -j RETURN     (excluded ports, if any)
    -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN             (the sidecar's own traffic)
    -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
    -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN                       (loopback)
    -A ISTIO_OUTPUT -o lo -j RETURN
    -A ISTIO_OUTPUT -j ISTIO_REDIRECT

Istio's inbound half (15006, ISTIO_IN_REDIRECT) is left out: the providers run without a sidecar.
The sidecar runs as the proxy uid (1337, like istio-proxy); the application as any other uid
(root here, as many pods run). Providers live in the other namespace: an address of the pod's own
would be routed through `lo`, which the capture skips.

    with Capture(workdir) as cap:
        cap.provider_ip(1)                      # 10.77.0.11, an address in the svc namespace
        cap.start(procs, "envoy", argv, ns="pod", uid=cap.proxy_uid)
        cap.call("pod", fn, *args)              # fn runs in a thread inside the pod namespace
        cap.add_pod()                           # "pod2": a second caller pod, captured the same
                                                # way, its own veth pair to the svc namespace

Leaving the block (also on an exception) stops every process still running in either namespace
(by pid), then deletes both namespaces, which removes the veth pair and every iptables rule made
in them; nothing is changed outside the two namespaces.
"""

import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
_seq = itertools.count(1)
_libc = None


class CaptureError(RuntimeError):
    pass


def _run(*argv, check=True):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        cmd = " ".join(map(str, argv))
        raise CaptureError(f"{cmd}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def available():
    """None when this machine can build the capture, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 iptables util-linux)"
    return None


def _setns(path):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Capture:
    """Two network namespaces joined by a veth pair, the pod one with Istio's outbound capture.

    subnet: the first three octets of the /24 both namespaces share (private to them: parallel
    runs do not collide). The pod has .1; providers get .11, .12, ... (provider_ip)."""

    def __init__(self, workdir, capture_port=15001, proxy_uid=1337, exclude_ports=(),
                 subnet="10.77.0"):
        self.workdir = Path(workdir)
        self.capture_port = int(capture_port)
        self.proxy_uid = int(proxy_uid)
        self.exclude_ports = [int(p) for p in exclude_ports]
        self.subnet = subnet
        tag = f"{os.getpid()}-{next(_seq)}"
        self.ns = {"pod": f"lossless-pod-{tag}", "svc": f"lossless-svc-{tag}"}
        # interface names are at most 15 characters; unique while they exist outside a namespace
        short = f"{os.getpid() % 100000}{next(_seq) % 100}"
        self.veth_root = (f"llp{short}", f"lls{short}")
        self.pod_ip = f"{subnet}.1"
        self.pods = ["pod"]
        self._provider_ips = set()
        self._made = []  # namespaces created, for cleanup
        self._veths = []  # veth ends of added pods, for cleanup
        self._pids = []  # (procs, name) started in a namespace

    # -- building -------------------------------------------------------------------------------

    def __enter__(self):
        why = available()
        if why:
            raise CaptureError(why)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _build(self):
        for ns in self.ns.values():
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
        pod, svc = self.ns["pod"], self.ns["svc"]
        a, b = self.veth_root
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        try:
            _run("ip", "link", "set", a, "netns", pod)
            _run("ip", "link", "set", b, "netns", svc)
        except CaptureError:
            _run("ip", "link", "del", a, check=False)
            raise
        for ns, dev in ((pod, a), (svc, b)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "set", dev, "name", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", pod, "addr", "add", f"{self.pod_ip}/24", "dev", "eth0")
        self._capture_rules()

    def _iptables(self, *args, pod="pod"):
        return _run("ip", "netns", "exec", self.ns[pod], "iptables", "-w", "5", "-t", "nat",
                    *args)

    def _capture_rules(self, pod="pod"):
        uid = str(self.proxy_uid)

        def ipt(*args):
            return self._iptables(*args, pod=pod)
        ipt("-N", "ISTIO_REDIRECT")
        ipt("-A", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports",
            str(self.capture_port))
        ipt("-N", "ISTIO_OUTPUT")
        ipt("-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT")
        if self.exclude_ports:
            ports = ",".join(map(str, self.exclude_ports))
            ipt("-A", "ISTIO_OUTPUT", "-p", "tcp", "-m", "multiport", "--dports", ports,
                "-j", "RETURN")
        ipt("-A", "ISTIO_OUTPUT", "-m", "owner", "--uid-owner", uid, "-j", "RETURN")
        ipt("-A", "ISTIO_OUTPUT", "-m", "owner", "--gid-owner", uid, "-j", "RETURN")
        ipt("-A", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN")
        ipt("-A", "ISTIO_OUTPUT", "-o", "lo", "-j", "RETURN")
        ipt("-A", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT")

    def exclude(self, ports):
        """Leaves outbound TCP to `ports` uncaptured from now on, in every pod (first rule of
        ISTIO_OUTPUT, as istio-iptables' -o / `traffic.sidecar.istio.io/excludeOutboundPorts`)."""
        ports = [int(p) for p in ports]
        for pod in self.pods:
            self._iptables("-I", "ISTIO_OUTPUT", "1", "-p", "tcp", "-m", "multiport", "--dports",
                           ",".join(map(str, ports)), "-j", "RETURN", pod=pod)
        self.exclude_ports += ports

    def rules(self, pod="pod"):
        """A pod namespace's nat table, as iptables -S prints it."""
        return self._iptables("-S", pod=pod).stdout

    def packets(self, chain="ISTIO_REDIRECT", pod="pod"):
        """Packets that went through `chain` of a pod's nat table (connections captured, for
        ISTIO_REDIRECT: nat sees the first packet of each connection)."""
        out = self._iptables("-L", chain, "-v", "-x", "-n", pod=pod).stdout.splitlines()
        return sum(int(line.split()[0]) for line in out[2:] if line.split())

    def add_pod(self):
        """Another caller namespace ("pod2", "pod3", ...), captured like the first (the same
        rules, the same excluded ports), with its own veth pair to the providers' namespace. It
        takes the next address of the subnet (.2, .3, ...); the svc side of its pair has no address
        of its own, only a host route back to the pod (the providers' addresses answer on any
        interface of their namespace). Returns the pod's key for argv/start/call."""
        k = len(self.pods) + 1
        key = f"pod{k}"
        self.ns[key] = self.ns["pod"].replace("lossless-pod-", f"lossless-pod{k}-")
        _run("ip", "netns", "add", self.ns[key])
        self._made.append(self.ns[key])
        a, b = f"{self.veth_root[0]}p{k}", f"{self.veth_root[1]}p{k}"
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self._veths += [a, b]
        _run("ip", "link", "set", a, "netns", self.ns[key])
        _run("ip", "link", "set", b, "netns", self.ns["svc"])
        ip = f"{self.subnet}.{k}"
        pod, svc = self.ns[key], self.ns["svc"]
        _run("ip", "-n", pod, "link", "set", "lo", "up")
        _run("ip", "-n", pod, "link", "set", a, "name", "eth0")
        _run("ip", "-n", pod, "link", "set", "eth0", "up")
        _run("ip", "-n", pod, "addr", "add", f"{ip}/24", "dev", "eth0")
        dev = f"eth{k - 1}"
        _run("ip", "-n", svc, "link", "set", b, "name", dev)
        _run("ip", "-n", svc, "link", "set", dev, "up")
        _run("ip", "-n", svc, "route", "add", f"{ip}/32", "dev", dev)
        self.pods.append(key)
        self._capture_rules(pod=key)
        if self.exclude_ports:
            ports = ",".join(map(str, self.exclude_ports))
            self._iptables("-I", "ISTIO_OUTPUT", "1", "-p", "tcp", "-m", "multiport", "--dports",
                           ports, "-j", "RETURN", pod=key)
        return key

    def provider_ip(self, k):
        """The k-th provider address (k >= 1), added to the svc namespace on first use."""
        ip = f"{self.subnet}.{10 + int(k)}"
        if ip not in self._provider_ips:
            _run("ip", "-n", self.ns["svc"], "addr", "add", f"{ip}/24", "dev", "eth0")
            self._provider_ips.add(ip)
        return ip

    # -- running --------------------------------------------------------------------------------

    def argv(self, ns, argv, uid=None):
        """`argv` run inside namespace `ns` ("pod" or "svc"), as `uid` when given (its group too,
        no supplementary groups)."""
        prefix = ["ip", "netns", "exec", self.ns[ns]]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return prefix + [str(a) for a in argv]

    def start(self, procs, name, argv, ns, uid=None, env=None, cwd=None):
        """Starts `argv` in namespace `ns` through `procs` (tracked by pid, stopped on exit)."""
        proc = procs.start(name, self.argv(ns, argv, uid), env=env, cwd=cwd)
        self._pids.append((procs, name))
        return proc

    def run(self, ns, argv, uid=None, timeout=30):
        """Runs `argv` in namespace `ns` to completion: the CompletedProcess."""
        return subprocess.run(self.argv(ns, argv, uid), capture_output=True, text=True,
                              timeout=timeout)

    def call(self, ns, fn, *args, **kwargs):
        """fn(*args, **kwargs) in a thread that entered namespace `ns`: its sockets (e.g. HTTP calls
        to a server bound in there) belong to that namespace. Returns fn's result or raises its
        exception."""
        box = {}

        def body():
            try:
                _setns(f"/run/netns/{self.ns[ns]}")
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def readable_copy(self, path, uid=None):
        """`path` if `uid` (default the proxy uid) can read it, else a copy in a directory of the
        workdir that it can (e.g. an Envoy binary under a 0700 home)."""
        uid = self.proxy_uid if uid is None else uid
        path = Path(path)
        check = _run("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "test", "-r",
                     path, check=False)
        if check.returncode == 0:
            return path
        out = self.shared_dir(uid) / path.name
        if not out.exists():
            shutil.copy2(path, out)
            out.chmod(0o755)
        return out

    def shared_dir(self, uid=None):
        """A directory `uid` (default the proxy uid) owns, reachable from the root: /tmp, not the
        test's own (0700) directory."""
        uid = self.proxy_uid if uid is None else uid
        d = Path(f"/tmp/lossless-capture-{os.getpid()}-{self.ns['pod'].rsplit('-', 1)[-1]}-{uid}")
        d.mkdir(mode=0o755, exist_ok=True)
        os.chown(d, uid, uid)
        return d

    # -- cleanup --------------------------------------------------------------------------------

    def _ns_pids(self, ns):
        out = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def close(self):
        """Stops what runs in the namespaces (ours, by pid), deletes them, removes shared dirs."""
        for procs, name in self._pids:
            procs.stop(name, timeout=3.0)
        self._pids.clear()
        for ns in list(self._made):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = self._ns_pids(ns)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 3.0
                while self._ns_pids(ns) and time.monotonic() < deadline:
                    time.sleep(0.05)
            _run("ip", "netns", "del", ns, check=False)
            self._made.remove(ns)
        # a veth left in the root namespace by a build that failed half-way
        for dev in [*self.veth_root, *self._veths]:
            if Path(f"/sys/class/net/{dev}").exists():
                _run("ip", "link", "del", dev, check=False)
        tag = self.ns["pod"].rsplit("-", 1)[-1]
        for d in Path("/tmp").glob(f"lossless-capture-{os.getpid()}-{tag}-*"):
            shutil.rmtree(d, ignore_errors=True)


def namespaces_left(prefix="lossless-"):
    """Network namespaces whose name starts with `prefix` (for a test that checks cleanup)."""
    out = _run("ip", "netns", "list", check=False).stdout.splitlines()
    return [line.split()[0] for line in out if line.startswith(prefix)]


def captured_envoy(cap, procs, template, subs=None, name="sidecar", binary=None, pod="pod", **kw):
    """The sidecar: an Envoy (kit.envoy.Envoy) run inside the pod namespace `pod` as the proxy
    uid, its files in a directory that uid owns, its admin API called from inside the namespace.
    Not started: call .start()."""
    from .env import env_path
    from .envoy import Envoy, real_binary

    class Captured(Envoy):
        def argv(self):
            return cap.argv(pod, super().argv(), uid=cap.proxy_uid)

        def start(self, timeout=30.0):
            cap._pids.append((self.procs, self.name))
            return cap.call(pod, super().start, timeout)

        def admin(self, method, path, body=None):
            return cap.call(pod, super().admin, method, path, body)

        def stats(self, pattern=None):
            return cap.call(pod, super().stats, pattern)

        def memory(self):
            return cap.call(pod, super().memory)

    real = cap.readable_copy(real_binary(binary or env_path("ENVOY_BIN")))
    return Captured(procs, cap.shared_dir(), template, subs, name=name, binary=real, **kw)


def namespaced_rnacos(cap, procs, workdir, host, ns="svc", **kw):
    """An rnacos server (kit.rnacos.Rnacos) run inside namespace `ns`, serving on `host` (an
    address of that namespace, e.g. cap.provider_ip(k)); its API called from inside `ns`.
    Not started: call .start()."""
    from .http import wait_http
    from .rnacos import Rnacos

    class Namespaced(Rnacos):
        @property
        def url(self):
            return f"http://{host}:{self.http_port}"

        @property
        def addr(self):
            return f"{host}:{self.http_port}"

        def _start_once(self, timeout):
            proc = cap.start(self.procs, self.name, [self.binary], ns=ns, env=self.env,
                             cwd=self.workdir)
            probe = "/nacos/v1/ns/instance/list?serviceName=__probe__&healthyOnly=false"
            cap.call(ns, wait_http, self.url + probe, timeout=timeout, proc=proc)
            return self

        def call(self, method, path, params, expect_ok=True):
            return cap.call(ns, super().call, method, path, params, expect_ok)

    env = dict(kw.pop("env", None) or {})
    env.update({"RNACOS_SDK_HOST": host, "RNACOS_CONSOLE_HOST": host})
    r = Namespaced(procs, workdir, env=env, **kw)
    r.env["RNACOS_RAFT_NODE_ADDR"] = f"{host}:{r.grpc_port}"
    return r
