"""Packaging: the docker-compose demo topology (envoy/docker-compose.yaml, envoy/compose/), offline.

docker-compose only renders the compose file (`config`); no Docker engine is needed. Its Envoy
configs go through `envoy --mode validate`, which also loads the Wasm module and runs the filter's
own configuration check. Needs the docker-compose CLI (`make compose-cli`), ENVOY_BIN and
LOSSLESS_WASM (`make build`). The Envoy validations are marked compat: `make test` also runs them
on the oldest supported Envoy. The recipe: docs/compose.md.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kit import REPO
from shipped import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    cluster,
    dockerfile_instructions,
    dockerignore_admits,
    endpoints_of,
    envoy_validate,
    hcm,
    lossless_filters,
    template,
)

WASM_IN_CONTAINER = "/etc/envoy/lossless.wasm"
SIDECARS = {f"backend-{i}-sidecar": COMPOSE_DIR / f"sidecar-{i}.yaml" for i in (1, 2, 3)}
BACKENDS = {f"backend-{i}": f"backend-{i}-sidecar" for i in (1, 2, 3)}
ENVOYS = {"gateway": COMPOSE_DIR / "gateway.yaml", **SIDECARS}


def compose_cli():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    probe = [docker, "compose", "version"] if docker else None
    if probe and subprocess.run(probe, capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.fail("neither docker-compose nor `docker compose` is installed: run `make compose-cli`")


@pytest.fixture(scope="module")
def compose():
    """`docker-compose config` of envoy/docker-compose.yaml, parsed."""
    proc = subprocess.run(compose_cli() + ["-f", str(COMPOSE_FILE), "config"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def volumes(service):
    """(source, target, read_only) of a service's volumes, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
        else:
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def ports(service):
    """(host_ip, published, target) of a service's ports, short or long syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", ""), str(p.get("published", "")), str(p["target"])))
        else:
            spec = str(p).split("/")[0]
            parts = spec.split(":")
            if len(parts) == 3:
                out.append((parts[0], parts[1], parts[2]))
            elif len(parts) == 2:
                out.append(("", parts[0], parts[1]))
            else:
                out.append(("", "", parts[0]))
    return out


def makefile_envoy_version():
    m = re.search(r"^ENVOY_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "ENVOY_VERSION not found in the Makefile"
    return m.group(1)


def test_compose_services_and_images(compose):
    services = compose["services"]
    assert set(services) == {"nacos", "gateway", *SIDECARS, *BACKENDS}
    # the Envoy that runs in the demo is the one these tests validate the configs with
    for name in ENVOYS:
        assert services[name]["image"] == f"envoyproxy/envoy:v{makefile_envoy_version()}", name
    nacos = services["nacos"]
    assert re.fullmatch(r"nacos/nacos-server:v2\.\d+\.\d+", nacos["image"])
    assert nacos["environment"]["MODE"] == "standalone"
    for name, sidecar in BACKENDS.items():
        b = services[name]
        assert Path(b["build"]["context"]).resolve() == REPO, name
        assert b["build"]["dockerfile"] == "envoy/compose/backend.Dockerfile", name
        assert b["network_mode"] == f"service:{sidecar}", \
            f"{name} must share its sidecar's network namespace"


def test_compose_mounts_wasm_and_configs_read_only(compose):
    wasm_host = (REPO / "target" / "lossless.wasm").resolve()
    for name, config in ENVOYS.items():
        vols = {target: (Path(source).resolve(), ro)
                for source, target, ro in volumes(compose["services"][name])}
        assert vols.get(WASM_IN_CONTAINER) == (wasm_host, True), f"{name}: wasm mount {vols}"
        assert vols.get("/etc/envoy/envoy.yaml") == (config.resolve(), True), \
            f"{name}: config mount {vols}"
    assert not volumes(compose["services"]["nacos"])


def test_compose_ports_bound_to_loopback_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for host_ip, host_port, target in ports(service):
            where = host_ip or "all interfaces"
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port}:{target} on {where}"
            published[name, target] = host_port
    assert published == {("gateway", "10000"): "10000", ("gateway", "9901"): "9901",
                         ("nacos", "8848"): "8848"}


def test_compose_addresses_agree(compose):
    """A backend registers its sidecar's fixed address; that sidecar's inbound.self_address must be
    the same, and the gateway's cluster must list every sidecar by its compose DNS name."""
    services = compose["services"]
    gateway = yaml.safe_load(ENVOYS["gateway"].read_text())
    assert sorted(endpoints_of(cluster(gateway, "demo"))) == sorted((s, 10000) for s in SIDECARS)
    assert endpoints_of(cluster(gateway, "nacos")) == [("nacos", 8848)]
    for name, sidecar in BACKENDS.items():
        cmd = services[name]["command"]
        opt = dict(zip(cmd[::2], cmd[1::2], strict=True))
        ip = services[sidecar]["networks"]["lossless"]["ipv4_address"]
        assert opt["--advertise"] == f"{ip}:10000", name
        assert opt["--registry"] == "nacos:8848", name
        assert opt["--sidecar"] == "127.0.0.1:10000", name
        config = yaml.safe_load(SIDECARS[sidecar].read_text())
        [(_, lossless)] = lossless_filters(config)
        assert lossless["mode"] == "inbound"
        assert lossless["inbound"]["self_address"] == opt["--advertise"], sidecar
        assert endpoints_of(cluster(config, "local_app")) == [("127.0.0.1", int(opt["--port"]))]
        assert endpoints_of(cluster(config, "nacos")) == [("nacos", 8848)]
    assert (REPO / "demo" / "backend.py").is_file(), "the backend image copies demo/backend.py"


@pytest.mark.compat
@pytest.mark.parametrize("name", sorted(ENVOYS))
def test_compose_envoy_configs_validate(name, envoy_bin, wasm_path, tmp_path):
    """Each compose Envoy config, with the container's wasm path pointed at the built module."""
    text = ENVOYS[name].read_text()
    assert text.count(WASM_IN_CONTAINER) == 1
    config = yaml.safe_load(text)
    for _, lossless in lossless_filters(config):
        for reg in lossless["registries"].values():
            cluster(config, reg["cluster"])  # the registry cluster exists
    envoy_validate(envoy_bin, text.replace(WASM_IN_CONTAINER, str(wasm_path)), tmp_path,
                   f"{name}.yaml")


def test_compose_configs_follow_the_templates():
    """The compose configs are the envoy/ templates made concrete: same routes, retry policies
    and load balancing policy. When a template changes, change envoy/compose/ with it."""
    gateway = yaml.safe_load(ENVOYS["gateway"].read_text())
    tpl = template("outbound-override-host.yaml")
    assert hcm(gateway)["route_config"] == hcm(tpl)["route_config"]
    for key in ("load_balancing_policy", "circuit_breakers"):
        assert cluster(gateway, "demo")[key] == cluster(tpl, "demo")[key], key
    inbound_tpl = template("inbound.yaml")
    for path in SIDECARS.values():
        sidecar = yaml.safe_load(path.read_text())
        assert hcm(sidecar)["route_config"] == hcm(inbound_tpl)["route_config"], path.name
    for config in [gateway] + [yaml.safe_load(p.read_text()) for p in SIDECARS.values()]:
        names = [f["name"] for f in hcm(config)["http_filters"]]
        assert names == ["envoy.filters.http.wasm", "envoy.filters.http.router"]


def test_backend_dockerfile_copies_the_demo_backend():
    ins = dockerfile_instructions(COMPOSE_DIR / "backend.Dockerfile")
    assert ins[0][0] == "FROM" and ins[0][1].startswith("python:")
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    assert copies == [["demo/backend.py", "/app/backend.py"]]
    assert dockerignore_admits("demo/backend.py")
    entry = json.loads(dict(ins)["ENTRYPOINT"])
    assert entry[-1] == "/app/backend.py"
