"""Packaging: the filter's OCI image, offline. Istio's layout is `plugin.wasm` in a `FROM scratch`
image (docs/istio.md, step 1): the root Dockerfile copies the built module and nothing else, the
root .dockerignore sends only what the images copy, and the WasmPlugins pull the image of this
version.
"""

import re

from kit import REPO
from shipped import dockerfile_instructions, dockerignore_admits, find


def test_oci_dockerfile_is_scratch_with_plugin_wasm():
    ins = dockerfile_instructions(REPO / "Dockerfile")
    assert ins[0] == ("FROM", "scratch")
    layers = [i for i in ins if i[0] in ("COPY", "ADD", "RUN")]
    assert layers == [("COPY", "target/lossless.wasm ./plugin.wasm")], "one layer: /plugin.wasm"
    assert dockerignore_admits("target/lossless.wasm")
    assert not dockerignore_admits("target/wasm32-wasip1/release/lossless.wasm")
    assert not dockerignore_admits("src/lib.rs")
    # the WasmPlugins pull the image of this version
    version = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    for name in ("lossless-outbound", "lossless-inbound"):
        assert find("WasmPlugin", name)["spec"]["url"] == f"oci://REGISTRY/lossless:{version}"
