"""The capture rig (tests/kit/netns.py): a caller in its own network namespace whose outbound TCP
iptables redirects to its sidecar, as Istio's istio-iptables does, and providers in another
namespace. Proven with a plain capture sidecar (Envoy's original_dst listener filter and an
ORIGINAL_DST cluster, as Istio's virtualOutbound and PassthroughCluster): the caller's direct
`curl ip:port` goes through the sidecar and reaches the provider unchanged; the sidecar's own uid
is not captured; everything the rig made is gone afterwards."""

import json
import sys
import time
from pathlib import Path

import pytest

from harness import HERE, TEMPLATES
from kit import wait_until
from kit.netns import Capture, available, captured_envoy, namespaces_left

pytestmark = pytest.mark.skipif(available() is not None, reason=f"capture rig: {available()}")

CAPTURE_PORT = 15001
BACKEND_PORT = 8080
# what an Envoy HTTP connection manager adds to every request it forwards, sidecar or not
ENVOY_ADDS = {"x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms"}


def start_echo(cap, procs, tmp_path, k):
    ip = cap.provider_ip(k)
    log = tmp_path / f"echo{k}.jsonl"
    log.touch()
    argv = [sys.executable, HERE / "echo.py", "--host", ip, "--port", BACKEND_PORT,
            "--log", log, "--name", f"echo{k}"]
    cap.start(procs, f"echo{k}", argv, ns="svc")
    wait_until(lambda: cap.run("svc", ["curl", "-s", "-o", "/dev/null", f"http://{ip}:{BACKEND_PORT}/ready"])
               .returncode == 0, timeout=10, what=f"echo {ip} up")
    log.write_text("")  # forget the readiness probe
    return ip, log


def seen(log):
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def curl(cap, url, uid=None, data="hello=1"):
    """A POST with headers of its own, from the pod namespace (as `uid`, root when None)."""
    argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
            "-H", "x-test-id: abc-123", "-H", "content-type: application/x-www-form-urlencoded",
            "-H", "accept: */*", "--data", data, url]
    out = cap.run("pod", argv, uid=uid)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def test_caller_traffic_is_captured_and_reaches_the_upstream_unchanged(procs, tmp_path):
    with Capture(tmp_path) as cap:
        made = dict(cap.ns)
        assert set(made.values()) <= set(namespaces_left())
        ip, log = start_echo(cap, procs, tmp_path, 1)
        access_log = cap.shared_dir() / "access.log"
        sidecar = captured_envoy(cap, procs, TEMPLATES / "capture-plain.yaml",
                                 {"CAPTURE_PORT": CAPTURE_PORT, "ACCESS_LOG": access_log})
        sidecar.start()
        url = f"http://{ip}:{BACKEND_PORT}/orders/42?x=1&y=two"

        def counted():
            return (sidecar.stat("http.outbound_capture.downstream_rq_total", 0),
                    sidecar.stat("cluster.PassthroughCluster.upstream_rq_total", 0))

        # the sidecar's own uid is not captured: a direct request, Envoy counts nothing
        before = counted()
        captured_before = cap.packets()
        status, _ = curl(cap, url, uid=cap.proxy_uid)
        assert status == 200
        assert counted() == before
        assert cap.packets() == captured_before
        direct = seen(log)
        assert len(direct) == 1

        # the application's own request: redirected to the sidecar, forwarded to the same address
        status, body = curl(cap, url)
        assert status == 200
        wait_until(lambda: counted() == (before[0] + 1, before[1] + 1), timeout=5,
                   what="sidecar counts it")
        assert cap.packets() == captured_before + 1
        via = seen(log)[1:]
        assert len(via) == 1
        d, v = direct[0], via[0]
        # same destination, method, target, body
        assert v["local"] == f"{ip}:{BACKEND_PORT}" == d["local"]
        for field in ("method", "target", "version", "body"):
            assert v[field] == d[field], field
        assert json.loads(body)["target"] == "/orders/42?x=1&y=two"
        # every header the client sent arrives as sent; Envoy adds only its standard ones
        sent = {k.lower(): val for k, val in d["headers"]}
        got = {k.lower(): val for k, val in v["headers"]}
        for k, val in sent.items():
            assert got.get(k) == val, (k, val, got.get(k))
        assert set(got) - set(sent) <= ENVOY_ADDS, set(got) - set(sent)
        # what the filter reads as destination.address (the downstream connection's local
        # address) is the caller's own pick, restored by the original_dst listener filter
        lines = wait_until(lambda: access_log.exists() and access_log.read_text().splitlines(),
                           timeout=5, what="access log line")
        assert lines[-1].split() == [f"{ip}:{BACKEND_PORT}", f"{ip}:{BACKEND_PORT}", "200",
                                     f"{ip}:{BACKEND_PORT}"], lines

        # an address nobody serves: the caller's connect still succeeds (to the sidecar), the
        # sidecar answers 503 (what a caller with a stale list meets)
        gone = f"http://{cap.provider_ip(9)[:-2]}99:{BACKEND_PORT}/x"
        status, _ = curl(cap, gone)
        assert status == 503

        assert "ISTIO_REDIRECT" in cap.rules()
    # everything the rig made is gone: namespaces (with their rules), the veth pair, its dirs
    left = namespaces_left()
    assert not set(made.values()) & set(left), left
    assert not any(Path(f"/sys/class/net/{dev}").exists() for dev in cap.veth_root)
    assert not list(Path("/tmp").glob(f"lossless-capture-*-{made['pod'].rsplit('-', 1)[-1]}-*"))


def test_cleanup_on_failure(procs, tmp_path):
    """An exception inside the block still removes the namespaces and stops what ran there."""
    with pytest.raises(RuntimeError, match="boom"), Capture(tmp_path) as cap:
        made = dict(cap.ns)
        start_echo(cap, procs, tmp_path, 1)
        pid = procs.pid("echo1")
        raise RuntimeError("boom")
    assert not set(made.values()) & set(namespaces_left())
    time.sleep(0.1)
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "zombie" in status.read_text().lower()
