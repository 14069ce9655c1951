"""Smoke test of the test kit itself: rnacos, backends, plain Envoy (no wasm) and the load."""

import pytest

from harness import TEMPLATES
from kit import Envoy, Load, assert_no_wasm_crash, free_port, lb_endpoints

pytestmark = pytest.mark.compat

SERVICE = "smoke-svc"


def test_rnacos_register_and_list(rnacos):
    meta = {"timestamp": 1700000000000, "warmup": 60000}
    rnacos.register(SERVICE, "127.0.0.1", 18081, metadata=meta)
    rnacos.register(SERVICE, "127.0.0.1", 18082, weight=2.0, metadata=meta)
    hosts = rnacos.hosts(SERVICE)
    assert sorted(hosts) == ["127.0.0.1:18081", "127.0.0.1:18082"]
    for host in hosts.values():
        assert host["metadata"] == {"timestamp": "1700000000000", "warmup": "60000"}
        assert host["enabled"] is True and host["healthy"] is True
        assert host["ephemeral"] is False
    assert hosts["127.0.0.1:18082"]["weight"] == 2.0

    rnacos.set_enabled(SERVICE, "127.0.0.1", 18081, False)
    assert sorted(rnacos.hosts(SERVICE)) == ["127.0.0.1:18082"]  # disabled = absent
    assert rnacos.detail(SERVICE, "127.0.0.1", 18081)["enabled"] is False
    rnacos.deregister(SERVICE, "127.0.0.1", 18082)
    assert rnacos.hosts(SERVICE) == {}


def test_plain_envoy_round_robin(make_backend, make_envoy, tmp_logs):
    backends = [make_backend("b1"), make_backend("b2")]
    subs = {"LISTEN_PORT": free_port(), "DEMO_ENDPOINTS": lb_endpoints(b.addr for b in backends)}

    rc, out = Envoy.validate(TEMPLATES / "plain.yaml", subs, tmp_logs)
    assert rc == 0, out

    envoy = make_envoy("plain.yaml", subs, concurrency=2)
    load = Load(subs["LISTEN_PORT"], threads=32, duration=2.0, post_share=0.2).run()

    results = load.results()
    assert len(results) > 100, load.summary()
    assert load.errors() == [], load.summary() + f" first errors: {load.errors()[:3]}"
    shares = load.shares()
    assert sorted(shares) == sorted(b.addr for b in backends), load.summary()
    for share in shares.values():
        assert abs(share - 0.5) <= 0.10, load.summary()
    posts = sum(1 for s in results if s.method == "POST")
    assert abs(posts / len(results) - 0.2) < 0.02

    for backend in backends:
        assert backend.counts() == {
            "GET": load.counts(method="GET")[backend.addr],
            "POST": load.counts(method="POST")[backend.addr],
        }
    assert envoy.stat("cluster.backends.upstream_rq_2xx") == len(results)
    assert_no_wasm_crash(envoy)
