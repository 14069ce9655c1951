"""The real caller that picks instances itself (peers/sca-nacos): a Spring Boot application with
Spring Cloud Alibaba Nacos Discovery 2025.0.0.0 (its nacos-client talking gRPC to rnacos) and
Spring Cloud LoadBalancer at its default caches, calling a provider service by name through a
@LoadBalanced RestClient; providers registered (ephemeral) through the same nacos-client.
Transparent mode corrects this caller's picks; here it is proven to work on its own: both
providers are registered, discovered, and reached by the caller's own round robin."""

from collections import Counter

import pytest

from harness import TEMPLATES
from kit import netns, wait_until
from kit.sca import ScaCaller, ScaProvider, grpc_offset
from kit.sca import sca_jar as find_sca_jar

SERVICE = "sca-demo"


@pytest.fixture
def sca_jar():
    return find_sca_jar()


def test_caller_reaches_both_providers_registered_by_nacos_client(procs, tmp_logs, rnacos, sca_jar):
    offset = grpc_offset(rnacos)
    providers = [ScaProvider(procs, tmp_logs, sca_jar, rnacos.addr, offset, SERVICE).start()
                 for _ in range(2)]
    addrs = sorted(p.addr for p in providers)

    # registered through gRPC, ephemeral, with Dubbo's warm-up keys: the registry lists both
    def listed():
        hosts = rnacos.hosts(SERVICE)
        return sorted(hosts) == addrs and hosts
    hosts = wait_until(listed, timeout=20, what="both providers listed by rnacos")
    for h in hosts.values():
        assert h["ephemeral"] is True, h
        assert int(h["metadata"]["warmup"]) == 600_000
        assert int(h["metadata"]["timestamp"]) > 0

    caller = ScaCaller(procs, tmp_logs, sca_jar, rnacos.addr, offset, SERVICE).start()
    wait_until(lambda: sorted(caller.instances()) == addrs, timeout=30,
               what="the caller's discovery lists both providers")
    results = caller.call(40)
    failed = [r for r in results if r.get("status") != 200]
    assert not failed, failed
    # the caller picked ip:port itself, and the pick is who answered (no proxy in between)
    assert all(r["pick"] == r["instance"] for r in results), results[:3]
    picks = Counter(r["pick"] for r in results)
    assert sorted(picks) == addrs, picks
    # Spring Cloud LoadBalancer's round robin: the two alternate
    assert set(picks.values()) == {20}, picks
    posts = caller.call(4, method="POST")
    assert [r["status"] for r in posts] == [200] * 4
    assert all('"method":"POST"' in r["body"] for r in posts)


@pytest.mark.skipif(netns.available() is not None, reason=f"capture rig: {netns.available()}")
def test_captured_caller_goes_through_its_sidecar(procs, tmp_logs, rnacos_bin, sca_jar):
    """The same caller inside the capture rig, as in an Istio pod: its own picks (provider
    ip:port) are redirected by iptables to a plain capture sidecar, which keeps them (what Istio's
    PassthroughCluster does today); the registry's ports are excluded from capture, as
    `traffic.sidecar.istio.io/excludeOutboundPorts` would."""
    with netns.Capture(tmp_logs) as cap:
        registry_ip = cap.provider_ip(1)
        registry = netns.namespaced_rnacos(cap, procs, tmp_logs, registry_ip, binary=rnacos_bin)
        # nacos-client reaches the registry directly: its ports are left out of the capture
        cap.exclude([registry.http_port, registry.grpc_port])
        registry.start()
        offset = grpc_offset(registry)

        def in_svc(name, argv):
            return cap.start(procs, name, argv, ns="svc")

        providers = [ScaProvider(procs, tmp_logs, sca_jar, registry.addr, offset, SERVICE,
                                 ip=cap.provider_ip(2 + k), port=8080).start(launch=in_svc)
                     for k in range(2)]
        addrs = sorted(p.addr for p in providers)
        access_log = cap.shared_dir() / "access.log"
        sidecar = netns.captured_envoy(cap, procs, TEMPLATES / "capture-plain.yaml",
                                       {"CAPTURE_PORT": 15001, "ACCESS_LOG": access_log})
        sidecar.start()

        def in_pod(name, argv):
            return cap.start(procs, name, argv, ns="pod")

        caller = ScaCaller(procs, tmp_logs, sca_jar, registry.addr, offset, SERVICE)
        cap.call("pod", caller.start, launch=in_pod)
        wait_until(lambda: sorted(cap.call("pod", caller.instances)) == addrs, timeout=30,
                   what="the caller's discovery lists both providers")
        before = sidecar.stat("http.outbound_capture.downstream_rq_total", 0)
        results = cap.call("pod", caller.call, 20)
        failed = [r for r in results if r.get("status") != 200]
        assert not failed, failed
        assert all(r["pick"] == r["instance"] for r in results), results[:3]
        assert sorted(Counter(r["pick"] for r in results)) == addrs
        # every one of them went through the sidecar, to the address the caller picked
        wait_until(lambda: sidecar.stat("http.outbound_capture.downstream_rq_total", 0)
                   == before + 20, timeout=5, what="the sidecar counted the 20 requests")
        lines = wait_until(lambda: access_log.exists() and len(access_log.read_text().splitlines())
                           >= 20 and access_log.read_text().splitlines(), timeout=15,
                           what="20 access log lines")
        logged = Counter(line.split()[0] for line in lines[-20:])
        assert logged == Counter(r["pick"] for r in results), (logged, results[:3])
