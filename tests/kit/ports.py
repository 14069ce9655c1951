"""Free TCP ports on 127.0.0.1, never the same one twice in this process."""

import random
import socket
import threading

from .env import LOOPBACK

_given = set()
_lock = threading.Lock()


def free_port():
    """A free port chosen by the kernel (a bind to port 0). Use it at once: it lies in the
    ephemeral range, where any outgoing connection may take it later."""
    with _lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOOPBACK, 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError("no free port found")


def port_free(port):
    """True if `port` can be bound on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def ephemeral_low():
    """The first port of the kernel's ephemeral range (32768 if it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def slot_port():
    """A free port below the ephemeral range: unlike free_port(), no outgoing connection and no
    other bind to port 0 can take it before it is used, which may be a minute later."""
    low, high = 20000, ephemeral_low() - 1
    with _lock:
        for _ in range(200 if high - low >= 1000 else 0):
            port = random.randint(low, high)
            if port not in _given and port_free(port):
                _given.add(port)
                return port
    return free_port()


def port_block(n):
    """The first of `n` consecutive free ports below the ephemeral range."""
    low = ephemeral_low()
    with _lock:
        for base in list(range(20000, low - n, 500)) + list(range(2000, 20000, 500)):
            ports = range(base, base + n)
            if base + n > low or any(p in _given for p in ports):
                continue
            if all(port_free(p) for p in ports):
                _given.update(ports)
                return base
    raise RuntimeError(f"no block of {n} free ports below {low}")
