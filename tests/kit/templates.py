"""Envoy config templates with ${NAME} placeholders, filled by envoy/render.py's render() (the
renderer shipped for users): LOSSLESS_WASM defaults to the environment's, none may remain."""

import importlib.util
import os
from pathlib import Path

from .env import REPO

_spec = importlib.util.spec_from_file_location("lossless_render", REPO / "envoy" / "render.py")
_render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_render)

render_text = _render.render
lb_endpoints = _render.endpoints  # for ${DEMO_ENDPOINTS}: from "ip:port" strings or ports


def resolve_template(template, *dirs):
    """An absolute or existing path, else relative to each of `dirs`, else to the repo."""
    path = Path(template)
    for candidate in (path, *(Path(d) / path for d in dirs), REPO / path):
        if candidate.exists():
            return candidate.resolve()
    raise FileNotFoundError(f"envoy template {template} not found")


def render(template, subs, out_path):
    """Renders the template file into out_path (returned)."""
    values = {}
    if os.environ.get("LOSSLESS_WASM"):
        values["LOSSLESS_WASM"] = os.environ["LOSSLESS_WASM"]
    values.update(subs)
    try:
        text = render_text(resolve_template(template).read_text(), values)
    except ValueError as exc:
        hint = " (set env LOSSLESS_WASM)" if "${LOSSLESS_WASM}" in str(exc) else ""
        raise ValueError(f"{template}: {exc}{hint}") from exc
    out_path = Path(out_path)
    out_path.write_text(text)
    return out_path
