"""Process helpers shared by whatever starts servers and sites on this machine: the applier,
local clusters, the database and Redis servers of the tests and benchmarks."""

from __future__ import annotations

import ctypes
import random
import signal
import socket

from multiactive.errors import ClusterError

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child, before exec: get SIGKILL when the parent dies (Linux), so no applier or
    test process outlives whoever started it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


# Ports handed out by `free_port` come from below the kernel's ephemeral range (32768-60999 on
# Linux), so an outgoing connection cannot take one between the pick and the server's bind; and
# a port is never handed out twice by one process, even before its server has bound it.
PORT_RANGE = (20000, 32767)
_given_ports: set[int] = set()
_port_random = random.Random()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on and this process has not handed out yet."""
    low, high = PORT_RANGE
    for _ in range(high - low):
        port = _port_random.randint(low, high)
        if port in _given_ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _given_ports.add(port)
        return port
    raise ClusterError(f"no free TCP port on {host} in {low}-{high}")
