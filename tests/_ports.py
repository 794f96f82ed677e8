"""Free TCP ports for the servers the tests start, chosen below the kernel's ephemeral range.

Asking the kernel for port 0 and releasing the socket races with everything else on the
machine: the kernel may hand the same port to an outgoing connection or to another process's
port-0 listener before the server meant for it binds. CI lost that race once: Ray's client
server, the last of a head's processes to start, found its port taken by one of Ray's own
connections ("Failed to bind to address ...:44475"). The kernel never hands out a port below
`ip_local_port_range`, and Ray's workers take 10002-19999, so ports are drawn from between.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS = range(10002, 20000)  # `ray start`'s --min/--max-worker-port defaults


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(n: int, host: str = "0.0.0.0") -> list[int]:  # noqa: S104 - a bind test only
    """`n` distinct ports that bind on `host` now (all interfaces by default: Ray's GCS and
    client server listen there) and that the kernel does not hand out by itself."""
    low = RAY_WORKER_PORTS.stop
    high = _ephemeral_low()
    if high - low < 1000:  # an unusual port range: fall back to the kernel's choice
        return _kernel_ports(n, host)
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(low, high)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def _kernel_ports(n: int, host: str) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
