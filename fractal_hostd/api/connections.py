"""How many API connections may be open at once, and giving memory back after a flood.

The API's one client is the webserver, which keeps a handful of connections. Anything beyond
`FRACTAL_API_MAX_CONNECTIONS` is a flood (a scanner, a broken client, an attack), and each
connection costs memory: an OpenSSL object with its buffers, a trio task, hypercorn's protocol
state — about 45 KiB once the TLS handshake has run (measured). So the listener refuses the
excess at accept, before any TLS object exists: the socket is reset (SO_LINGER 0, no
TIME_WAIT left on our side) and `fractal_hostd_api_connections_refused_total` counts it.

After a flood the admitted connections end (handshake timeout, keep-alive timeout), but the
memory stays: each connection leaves reference cycles that wait for a full garbage
collection, and glibc keeps freed heap (many small OpenSSL allocations fragment the main
arena, whose top rarely becomes free). Measured after 1,000 admitted connections: RSS
62 -> 107 MB, still 107 MB when they were gone; a full `gc.collect()` alone: 100 MB; then
`malloc_trim(0)`: 79 MB. The rest is CPython's own small-object arenas, kept while any object
in them lives (with PYTHONMALLOC=malloc the same sequence ends at 66 MB). `MemoryTrimmer`
does both, once the connections of a busy period are gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import socket
import struct
from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from fractal_hostd.metrics import PREFIX

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
# A busy period worth a trim: this many connections open at once since the last trim...
TRIM_AFTER_PEAK = 64
# ...and then at most this many still open (the webserver's own keep-alive connections).
TRIM_WHEN_AT_MOST = 8
# Connections close in bursts (a flood's handshake timeouts): wait for the burst to pass.
TRIM_SETTLE_SECONDS = 1.0


class ConnectionGate:
    """Admits at most `limit` connections at a time and counts the ones it refuses."""

    def __init__(self, limit: int, registry: CollectorRegistry | None = None) -> None:
        if limit < 1:
            raise ValueError(f"the connection limit must be at least 1, not {limit}")
        self.limit = limit
        self.open = 0
        self.peak = 0  # most connections open at once since `reset_peak`
        self.refused = 0
        self._refused = Counter(
            "api_connections_refused",
            "API connections closed at accept, before TLS, because "
            "FRACTAL_API_MAX_CONNECTIONS were already open.",
            namespace=PREFIX,
            registry=registry,
        )
        open_gauge = Gauge(
            "api_connections_open",
            "API connections open now (TLS handshake included).",
            namespace=PREFIX,
            registry=registry,
        )
        open_gauge.set_function(lambda: self.open)
        self._on_release: Callable[[], None] = lambda: None

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            self._refused.inc()
            return False
        self.open += 1
        self.peak = max(self.peak, self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self._on_release()

    def reset_peak(self) -> None:
        self.peak = self.open


def refuse(stream: trio.SocketStream) -> None:
    """Close an accepted connection at once with a reset: no FIN handshake, no TIME_WAIT."""
    sock = stream.socket
    with contextlib.suppress(OSError):  # the peer is already gone: a plain close does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim): nothing to give back this way
    return trim


class MemoryTrimmer:
    """Gives free heap back to the kernel once a busy period's connections are gone."""

    def __init__(
        self, gate: ConnectionGate, malloc_trim: Callable[[int], int] | None = None
    ) -> None:
        self._gate = gate
        self._wanted = trio.Event()
        self._malloc_trim = malloc_trim or _load_malloc_trim()
        self.trims = 0
        gate._on_release = self._check

    def _check(self) -> None:
        if self._gate.peak >= TRIM_AFTER_PEAK and self._gate.open <= TRIM_WHEN_AT_MOST:
            self._wanted.set()

    async def run(self) -> None:
        """Trim after each busy period; runs until cancelled (the server's nursery owns it)."""
        if self._malloc_trim is None:
            return
        while True:
            await self._wanted.wait()
            await trio.sleep(TRIM_SETTLE_SECONDS)
            self._wanted = trio.Event()
            self._gate.reset_peak()
            # Each connection leaves reference cycles (hypercorn's server <-> protocol, trio's
            # SSL stream) that only a full collection frees, and the oldest generation's
            # threshold is rarely reached: after 1,000 connections, 46,000 objects (1,000
            # MemoryBIO pairs among them) were still there. A full pass over the young,
            # unfrozen objects takes a few ms (the supervisor froze the start-up ones).
            gc.collect()
            # In a thread: on a fragmented heap of 100 MB the walk takes a few ms, which the
            # event path should not wait for. glibc locks each arena while it trims it.
            await trio.to_thread.run_sync(self._malloc_trim, 0)
            self.trims += 1
            logger.debug("gave free heap back to the kernel after a connection flood")
