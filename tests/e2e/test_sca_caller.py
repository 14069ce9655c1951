"""The real caller that picks instances itself (peers/sca-nacos): a Spring Boot application with
Spring Cloud Alibaba Nacos Discovery 2025.0.0.0 (its nacos-client talking gRPC to rnacos) and
Spring Cloud LoadBalancer at its default caches, calling a provider service by name through a
@LoadBalanced RestClient; providers registered (ephemeral) through the same nacos-client.
Transparent mode corrects this caller's picks; here it is proven to work on its own: both
providers are registered, discovered, and reached by the caller's own round robin."""

from collections import Counter

import pytest

from kit import wait_until
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
