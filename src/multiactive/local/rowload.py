"""Writes of the row log (`multiactive.db.rowlog`) at a steady rate, and what the databases
hold of them: the load of the database demo, `benchmarks/failover.py` and the MariaDB tests.

    with RowLoad(cluster, sites, rate=1000) as load:   # a thread writing at every site
        ...
    rows(server)          # (rows, distinct request ids): equal when nothing was applied twice
    FirstWrite(server, "gz").wait()   # when a row written by gz first appeared there
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence

from multiactive.client import Ack, Client
from multiactive.db.rowlog import ROW_TYPE, TABLE
from multiactive.errors import ClusterError, MultiactiveError
from multiactive.local.cluster import LocalCluster
from multiactive.local.mariadb import DATABASE, MariaServer
from multiactive.model.topology import Address

TICK_S = 0.01
FIRST_WRITE_TIMEOUT_S = 60.0


async def write_rows(
    address: Address, site: str, rate: float, stop: Callable[[], bool], acked: list[str]
) -> None:
    """`rate` row-log writes per second to one site, in ticks kept on schedule, until `stop()`
    or the site goes away; the ids it acknowledged are added to `acked`."""
    loop = asyncio.get_running_loop()
    next_at, credit, n = loop.time(), 0.0, 0
    with contextlib.suppress(MultiactiveError, OSError):  # the site was killed
        async with Client(address) as client:
            while not stop():
                credit += rate * TICK_S
                keys = [f"{site}-{n + i}" for i in range(int(credit))]
                credit, n = credit - len(keys), n + len(keys)
                sent = [client.publish(ROW_TYPE, key, b"y") for key in keys]
                answers = await asyncio.gather(*sent, return_exceptions=True)
                acked += [a.id for a in answers if isinstance(a, Ack)]
                if len(answers) != sum(isinstance(a, Ack) for a in answers):
                    return  # the site went away; what it acknowledged is counted
                next_at += TICK_S
                await asyncio.sleep(max(0.0, next_at - loop.time()))


class RowLoad:
    """Row-log writes at every one of `sites`, about `rate` per second in all, from a thread,
    until stopped; `acked` holds the ids of the acknowledged writes."""

    def __init__(self, cluster: LocalCluster, sites: Sequence[str], rate: float = 1000) -> None:
        self.acked: list[str] = []
        self._stop = threading.Event()
        per_site = rate / len(sites)

        async def main() -> None:
            await asyncio.gather(*(
                write_rows(cluster.client_address(s), s, per_site, self._stop.is_set, self.acked)
                for s in sites
            ))  # fmt: skip

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def __enter__(self) -> RowLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rows(server: MariaServer) -> tuple[int, int]:
    """(rows, distinct request ids) of the row log in `server`."""
    found = server.sql(f"SELECT COUNT(*), COUNT(DISTINCT request_id) FROM {DATABASE}.{TABLE}")
    return int(found[0][0]), int(found[0][1])


def row_ids(server: MariaServer) -> set[str]:
    return {r[0] for r in server.sql(f"SELECT request_id FROM {DATABASE}.{TABLE}")}


class FirstWrite:
    """Polls servers, from a thread, until one holds a row written by its `writer` (by default
    the server's own site, whichever becomes the writer); `wait()` returns when (monotonic)."""

    def __init__(self, *servers: MariaServer, writer: str | None = None) -> None:
        self.at_s: float | None = None
        self._servers, self._writer = servers, writer
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        deadline = time.monotonic() + FIRST_WRITE_TIMEOUT_S
        while not self._done.is_set() and time.monotonic() < deadline:
            for server in self._servers:
                writer = self._writer or server.root.name
                query = f"SELECT COUNT(*) FROM {DATABASE}.{TABLE} WHERE writer = '{writer}'"
                with contextlib.suppress(ClusterError):  # a server being killed or started
                    if int(server.sql(query)[0][0]) > 0:
                        self.at_s = time.monotonic()
                        return
            time.sleep(0.005)

    def wait(self, timeout_s: float = FIRST_WRITE_TIMEOUT_S) -> float:
        self._thread.join(timeout_s)
        self._done.set()
        if self.at_s is None:
            raise ClusterError(f"no DB write by {self._writer or 'the new writer'} appeared")
        return self.at_s
