#!/usr/bin/env python3
r"""Fills the ${NAME} placeholders of an Envoy config template.

    python3 envoy/render.py envoy/outbound-override-host.yaml \
        ADMIN_PORT=9901 LISTEN_PORT=10000 ... > envoy.yaml

LOSSLESS_CONFIG takes the filter's JSON config (single line, no single quotes); DEMO_ENDPOINTS a
YAML flow list of lb_endpoints, or use ENDPOINTS=127.0.0.1:9001,127.0.0.1:9002 to build it.
Exits non-zero if a placeholder of the template is left unfilled; ${NAME} inside a value (the
filter's config may use them for the Wasm VM's environment) is left as it is.

The tests, the demo and the benchmarks fill their templates with render() too (tests/kit).
"""

import json
import re
import string
import sys

LOOPBACK = "127.0.0.1"


def endpoints(addrs):
    """lb_endpoints as a JSON (so YAML flow) list, from "host:port,host:port" or an iterable of
    "host:port" strings or bare ports (host 127.0.0.1)."""
    if isinstance(addrs, str):
        addrs = [a for a in addrs.split(",") if a.strip()]
    out = []
    for a in addrs:
        host, _, port = str(a).strip().rpartition(":")
        address = {"address": host.strip("[]") or LOOPBACK, "port_value": int(port)}
        out.append({"endpoint": {"address": {"socket_address": address}}})
    return json.dumps(out)


def render(template_text, values):
    values = dict(values)
    if "ENDPOINTS" in values and "DEMO_ENDPOINTS" not in values:
        values["DEMO_ENDPOINTS"] = endpoints(values.pop("ENDPOINTS"))
    if "LOSSLESS_CONFIG" in values:
        cfg = values["LOSSLESS_CONFIG"]
        if not isinstance(cfg, str):
            cfg = json.dumps(cfg, separators=(",", ":"))
        if "'" in cfg or "\n" in cfg:
            raise ValueError("LOSSLESS_CONFIG must be one line without single quotes")
        values["LOSSLESS_CONFIG"] = cfg
    # only the template's own placeholders must be filled: a value may carry ${NAME} for the Wasm
    # VM to expand (inbound.self_address "${INSTANCE_IP}:8080"); substitution is a single pass
    left = sorted({m for m in re.findall(r"\$\{([A-Z_]+)\}", template_text) if m not in values})
    if left:
        raise ValueError(f"unfilled placeholders: {['${' + m + '}' for m in left]}")
    return string.Template(template_text).safe_substitute({k: str(v) for k, v in values.items()})


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    values = dict(a.split("=", 1) for a in argv[2:])
    with open(argv[1]) as f:
        sys.stdout.write(render(f.read(), values))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
