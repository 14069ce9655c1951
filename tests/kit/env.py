"""The repository, the loopback address, the environment and the wall clock."""

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
HOUR_MS = 3_600_000


def now_ms():
    return int(time.time() * 1000)


def env_path(name):
    """Path from env var `name`; raises if unset or missing."""
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set")
    path = Path(value)
    if not path.exists():
        raise RuntimeError(f"{name}={value} does not exist")
    return path


def env_default(name, default, cast=str):
    """cast(env var `name`), or `default` when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return cast(value) if value else default


def env_bool(name, default):
    """False for 0/false/no/off, True for anything else, `default` when unset or blank."""
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    return value not in ("0", "false", "no", "off")
