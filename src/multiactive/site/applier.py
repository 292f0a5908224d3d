"""The processor in a process of its own: the site's applier.

A site process relays (ingress, journal, links) and applies (processor, state, user handlers).
In one CPython interpreter the two share one GIL, and applying is the heavier half: on our
2-core machines a site acknowledged ~36 000 writes/s while applying its own, ~60 000 with
apply elsewhere (docs/benchmarks.md). So by default a site with durable backends (sqlite or
redis journal and state) starts its processor in a child process:

    site process                                   applier process (`multiactive site apply`)
      journal: writes ─────── "heads" ────────────▶  journal: reads (same files / same Redis)
      state: reads, dead-letter cleanup               state: commits (P3), Processor, handlers
      ProcessorProcess ◀── "ready" "applied" "stats" "reapplied" ── serve_applier

The site tells the applier the heads it made durable; the applier reads those batches from
storage, applies them exactly as the inline processor does (it *is* `Processor`), and reports
each commit ("applied": watermarks, counts, dead letters) and, every STATS_INTERVAL_S, its
statistics. Re-drives and replays of dead letters go to it by position ("reapply"). The
applier dies with its site (PR_SET_PDEATHSIG). If it exits on its own (killed, out of
memory), the site logs one line (`applier_exited`, with its exit status) and starts a new one,
up to APPLIER_MAX_RESTARTS times within APPLIER_RESTART_WINDOW_S; past that it stops with
`ApplierError` naming the exit status, so a supervisor restarts the whole site. A new applier
can never apply twice what an old one committed: the state refuses a watermark that does not
advance (P3), and the new one starts from the state's watermarks.

Memory journals and states live inside the site's process; with them the processor runs
inline, as it also does with `[replication] separate_processor = false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from multiactive.aio import Pulse, run_together, wait_until
from multiactive.clock import SYSTEM_CLOCK
from multiactive.db.apply import DbApplySummary
from multiactive.db.site import open_db_apply
from multiactive.errors import ApplierError, ConnectionLost, ProtocolError, StoreError
from multiactive.journal import Journal, open_journal
from multiactive.logs import get_logger
from multiactive.model.batch import RecordBatch, parse_batch
from multiactive.model.clock import wall_ms
from multiactive.model.message import Message, Position, StreamId
from multiactive.model.topology import Topology
from multiactive.procs import die_with_parent
from multiactive.replication.handlers import HandlerRegistry
from multiactive.replication.processor import (
    Observer,
    Processor,
    ProcessorStatistics,
    RetryState,
    RunningHandler,
    StreamProgress,
    canary_ages,
    overdue_canaries,
)
from multiactive.site.channel import Channel
from multiactive.site.startup import when_available
from multiactive.state import open_state
from multiactive.state.base import DeadLetter

READY_TIMEOUT_S = 60.0
# A new applier waits this long for the data dir's `applier.lock`: after its site was killed,
# the old applier exits at once (PR_SET_PDEATHSIG) but may still finish its current commit.
APPLIER_LOCK_WAIT_S = 20.0
STOP_TIMEOUT_S = 10.0
APPLIER_MAX_RESTARTS = 3  # restarts of an applier that exited, within the window below
APPLIER_RESTART_WINDOW_S = 60.0
STATS_INTERVAL_S = 0.25
# The applier runs at a lower CPU priority than its site: when cores are short, relaying
# (ingress, links, durability) goes first and applying takes what is left. On 2 cores this
# took a catch-up from 145-150 k to 220-237 k msg/s with the same apply rate (docs/benchmarks.md).
APPLIER_NICENESS = 10
# Batches up to this size travel to the applier with the heads that announce them, so it
# applies them from memory; larger ones (a catch-up) it reads from the journal's storage.
PASS_BATCH_BYTES = 64 * 1024
PASS_BYTES_PER_MESSAGE = 1024 * 1024

log = get_logger("applier")


@dataclass(frozen=True, slots=True)
class ApplierLaunch:
    """How a site starts its applier: the same topology file, handler modules and log level."""

    topology_path: Path
    handlers: tuple[str, ...] = ()
    log_level: str = "INFO"


# -- the site's side ------------------------------------------------------------------------


class ProcessorProcess:
    """Stands in the site for a `Processor` running in the applier process: the same
    questions, answered from what the applier reported."""

    def __init__(self, site: str, journal: Journal, launch: ApplierLaunch) -> None:
        self.site = site
        self._journal = journal
        self._launch = launch
        self.observers: list[Observer] = []
        self.progress = Pulse()
        self.started_ms = wall_ms()
        self._applied: dict[StreamId, int] = {}
        self._counts: dict[StreamId, int] = {}
        self._stats: dict[str, Any] = {}
        self._stats_at = time.monotonic()
        self._process: asyncio.subprocess.Process | None = None
        self._channel: Channel | None = None
        self._requests: dict[int, asyncio.Future[str | None]] = {}
        self._next_request = 1
        self._unsent_heads: dict[StreamId, int] = {}
        self._unsent_batches: list[RecordBatch] = []
        self._unsent_bytes = 0
        self._restarts: list[float] = []  # monotonic times of restarts after an exit

    # -- lifecycle ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Start the applier and wait until it has loaded its watermarks."""
        ours, theirs = socket.socketpair()
        launch = self._launch
        command = [
            sys.executable, "-m", "multiactive", "site", "apply",
            "--topology", str(launch.topology_path), "--site", self.site,
            "--log-level", launch.log_level, "--channel-fd", str(theirs.fileno()),
            *(arg for module in launch.handlers for arg in ("--handlers", module)),
        ]  # fmt: skip
        self._process = await asyncio.create_subprocess_exec(
            *command, pass_fds=(theirs.fileno(),), preexec_fn=die_with_parent
        )
        theirs.close()
        self._channel = await Channel.open(ours)
        try:
            ready = await asyncio.wait_for(self._channel.recv(), READY_TIMEOUT_S)
        except (TimeoutError, ConnectionLost) as exc:
            raise ApplierError(
                f"the applier of site {self.site} did not start ({self._exit()}); "
                "its error is in the log above"
            ) from exc
        if ready[0] != "ready":
            raise ProtocolError(f"the applier of site {self.site} began with {ready[0]!r}")
        for origin, partition, applied, count in ready[1]:
            stream = StreamId(origin, partition)
            before = self._applied.get(stream, 0)
            self._applied[stream] = applied
            self._counts[stream] = count
            if applied > before and self._restarts:  # committed by the applier that died
                for observer in self.observers:
                    observer(stream, before + 1, applied, [])
        if self._on_stored not in self._journal.observers:
            self._journal.observers.append(self._on_stored)
        self._unsent_heads.update(self._journal.heads())
        self._send_heads()
        log.info("applier_started", site=self.site, pid=self._process.pid)

    async def run(self) -> None:
        """Follow the applier's reports; start a new applier when it exits (bounded)."""
        while True:
            try:
                await self._follow()
            except ConnectionLost:
                await self._exited()

    async def _follow(self) -> None:
        assert self._channel is not None
        while True:
            self._dispatch(await self._channel.recv())

    async def _exited(self) -> None:
        """One line with the exit status; a new applier, or ApplierError past the bound."""
        process = self._process
        if process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 2.0)
        status = self._exit()
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < APPLIER_RESTART_WINDOW_S]
        giving_up = len(self._restarts) >= APPLIER_MAX_RESTARTS
        log.error("applier_exited", site=self.site, pid=process and process.pid, status=status,
                  restart=not giving_up)  # fmt: skip
        self._fail_requests(f"the applier of site {self.site} exited ({status})")
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if giving_up:
            raise ApplierError(
                f"the applier of site {self.site} exited ({status}), the "
                f"{APPLIER_MAX_RESTARTS + 1}th time within {APPLIER_RESTART_WINDOW_S:g} s; the "
                "site stops (its applier's error, if any, is in the log above)"
            )
        self._restarts.append(now)
        await self.load()

    def _fail_requests(self, reason: str) -> None:
        """Re-drives the dead applier will never answer: tell their callers."""
        requests, self._requests = self._requests, {}
        for future in requests.values():
            if not future.done():
                future.set_result(reason)

    async def close(self) -> None:
        """Ask the applier to stop after its current commit; kill it if it does not."""
        if self._on_stored in self._journal.observers:
            self._journal.observers.remove(self._on_stored)
        if self._channel is not None:
            with contextlib.suppress(ConnectionLost):
                self._channel.send(["stop"])
                await self._channel.drain()
        process = self._process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
                log.warning("applier_killed", site=self.site, after_s=STOP_TIMEOUT_S)
        if self._channel is not None:
            await self._channel.close()

    def _exit(self) -> str:
        if self._process is None:
            return "never started"
        return exit_status(self._process.returncode)

    # -- messages -------------------------------------------------------------------------

    def _on_stored(self, local: bool, batches: Sequence[RecordBatch]) -> None:
        """Journal observer: the heads move; tell the applier once per loop turn, with the
        bytes of small batches."""
        if not self._unsent_heads:
            asyncio.get_running_loop().call_soon(self._send_heads)
        for batch in batches:
            self._unsent_heads[batch.stream] = self._journal.head(batch.stream)
            if (
                batch.size <= PASS_BATCH_BYTES
                and self._unsent_bytes + batch.size <= PASS_BYTES_PER_MESSAGE
            ):
                self._unsent_batches.append(batch)
                self._unsent_bytes += batch.size

    def _resend_heads(self) -> None:
        """Every heads of the journal again, with each statistics report (4 a second): the
        applier follows heads it is told, and a notice lost on the way (an append that failed
        after storing some batches, a restart of the applier) must not stall a stream."""
        if not self._unsent_heads:
            self._unsent_heads.update(self._journal.heads())
            self._send_heads()

    def _send_heads(self) -> None:
        heads, self._unsent_heads = self._unsent_heads, {}
        batches, self._unsent_batches, self._unsent_bytes = self._unsent_batches, [], 0
        if heads and self._channel is not None:
            positions = [[s.origin, s.partition, h] for s, h in heads.items()]
            with contextlib.suppress(ConnectionLost):
                self._channel.send(["heads", positions, [bytes(b.data) for b in batches]])

    def _dispatch(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == "applied":
            self._on_applied(message[1])
            self._stats.update(zip(("applied", "parked", "failures"), message[2], strict=True))
        elif kind == "stats":
            self._stats, self._stats_at = message[1], time.monotonic()
            self._resend_heads()
        elif kind == "reapplied":
            future = self._requests.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message[2])
        else:
            raise ProtocolError(f"the applier of site {self.site} sent {kind!r}")

    def _on_applied(self, commits: list[Any]) -> None:
        for origin, partition, first, last, count, dead in commits:
            stream = StreamId(origin, partition)
            self._applied[stream] = last
            self._counts[stream] = count
            letters = [DeadLetter(*letter) for letter in dead]
            for observer in self.observers:
                observer(stream, first, last, letters)
        self.progress.fire()

    # -- what the site asks ---------------------------------------------------------------

    def applied(self, stream: StreamId) -> int:
        return self._applied.get(stream, 0)

    def caught_up(self) -> bool:
        return all(self.applied(s) >= h for s, h in self._journal.heads().items())

    async def wait_caught_up(self, timeout_s: float) -> bool:
        return await wait_until(self.caught_up, self.progress, timeout_s)

    async def reapply(self, message: Message, attempt: int) -> str | None:
        """Run a parked message's handler again, in the applier; None on success."""
        if self._channel is None:
            raise ApplierError(f"the applier of site {self.site} is not running")
        number = self._next_request
        self._next_request += 1
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._requests[number] = future
        self._channel.send(
            ["reapply", number, message.origin, message.partition, message.seq, attempt]
        )
        return await future

    def statistics(self) -> ProcessorStatistics:
        stats, heads = self._stats, self._journal.heads()
        reported = {
            StreamId(o, p): (created, wait) for o, p, created, wait in stats.get("streams", [])
        }
        streams = {}
        for stream in sorted(set(heads) | set(self._applied)):
            created, wait = reported.get(stream, (0, 0.0))
            streams[stream] = StreamProgress(
                self.applied(stream), self._counts.get(stream, 0), heads.get(stream, 0),
                created, self._stats_at + wait if wait else 0.0,
            )  # fmt: skip
        return ProcessorStatistics(
            stats.get("applied", 0), stats.get("parked", 0), stats.get("failures", 0),
            streams, stats.get("p50"), stats.get("p99"), tuple(self.stuck_handlers()),
            None if stats.get("db") is None else DbApplySummary.from_json(stats["db"]),
        )  # fmt: skip

    def stuck_handlers(self) -> list[RunningHandler]:
        since = time.monotonic() - self._stats_at
        return [
            RunningHandler(o, p, seq, id_, type_, attempt, round(running + since, 3), timeout)
            for o, p, seq, id_, type_, attempt, running, timeout in self._stats.get("stuck", [])
        ]

    def _canary_times(self) -> dict[str, tuple[int, int]]:
        return {origin: (created, applied) for origin, created, applied in self._stats.get(
            "canaries", []
        )}  # fmt: skip

    def canaries(self) -> dict[str, dict[str, float]]:
        return canary_ages(self._canary_times(), wall_ms())

    def overdue_canaries(self, interval_s: float, sites: Sequence[str]) -> list[str]:
        started = self._stats.get("started_ms", self.started_ms)
        return overdue_canaries(
            self.site, self._canary_times(), started, interval_s, sites, wall_ms()
        )

    def retry_state(self, stream: StreamId) -> RetryState | None:
        for origin, partition, seq, attempts, wait, error in self._stats.get("retrying", []):
            if StreamId(origin, partition) == stream:
                left = max(0.0, wait - (time.monotonic() - self._stats_at))
                return RetryState(seq, attempts, round(left, 3), error)
        return None


def exit_status(code: int | None) -> str:
    """`exit code 1`, `killed by SIGKILL`, `still running`: a process's end as people say it."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# -- the applier's side ---------------------------------------------------------------------


async def serve_applier(
    topology: Topology, site: str, registry: HandlerRegistry, channel_fd: int
) -> None:
    """The applier process: follow the site's journal, apply, report; until told to stop."""
    journal = open_journal(topology.site(site), topology.replication)
    # this loop has nothing else to do; its commits are the state's writes in bulk
    state = open_state(topology, site, inline=True, checkpoint_thread=True)
    await when_available(journal.open_for_reading, site=site, what="journal", undo=journal.close)
    try:
        await when_available(state.open, site=site, what="state", undo=state.close)
        db = open_db_apply(topology, site, journal, registry, SYSTEM_CLOCK)
        processor = Processor(site, journal, state, registry, topology.replication, db=db)
        await when_available(processor.load, site=site, what="watermarks")
        channel = await Channel.open(socket.socket(fileno=channel_fd))
        try:
            await _Applier(channel, journal, processor).serve()
        finally:
            await processor.close()
            await channel.close()
            await processor.close()
    finally:
        await state.close()
        await journal.close()


class _Applier:
    def __init__(self, channel: Channel, journal: Journal, processor: Processor) -> None:
        self._channel = channel
        self._journal = journal
        self._processor = processor
        self._commits: list[list[Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        processor.observers.append(self._on_commit)

    async def serve(self) -> None:
        marks = [
            [s.origin, s.partition, *self._processor.watermark(s)]
            for s in self._processor.statistics().streams
        ]
        self._channel.send(["ready", marks])
        await run_together(self._processor.run(), self._listen(), self._report())

    def _on_commit(
        self, stream: StreamId, first: int, last: int, dead: Sequence[DeadLetter]
    ) -> None:
        self._commits.append([stream, first, last, [list(astuple(d)) for d in dead]])

    async def _listen(self) -> None:
        """Until "stop", or until the site is gone."""
        with contextlib.suppress(ConnectionLost):
            while True:
                message = await self._channel.recv()
                if message[0] == "heads":
                    heads = {StreamId(o, p): h for o, p, h in message[1]}
                    self._journal.follow(heads, [parse_batch(data) for data in message[2]])
                elif message[0] == "reapply":
                    task = asyncio.create_task(self._reapply(*message[1:]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif message[0] == "stop":
                    return
                else:
                    raise ProtocolError(f"the site sent its applier {message[0]!r}")

    async def _reapply(
        self, number: int, origin: str, partition: int, seq: int, attempt: int
    ) -> None:
        error: str | None
        try:
            message = await self._journal.find_message(Position(origin, partition, seq))
            if message is None:
                error = f"{origin}/{partition}@{seq} is not in the journal any more"
            else:
                error = await self._processor.reapply(message, attempt)
        except StoreError as exc:
            error = str(exc)
        self._channel.send(["reapplied", number, error])

    async def _report(self) -> None:
        last_stats = 0.0
        while True:
            await self._processor.progress.wait(STATS_INTERVAL_S)
            if self._commits:
                self._send_commits()
            if time.monotonic() - last_stats >= STATS_INTERVAL_S:
                self._channel.send(["stats", self._statistics()])
                last_stats = time.monotonic()
            await self._channel.drain()

    def _send_commits(self) -> None:
        """Watermarks, counts and dead letters of the commits since the last report, and the
        totals they moved (so a reader of the site's status never sees them out of step)."""
        commits, self._commits = self._commits, []
        totals = list(self._processor.totals())
        watermark = self._processor.watermark
        self._channel.send(
            ["applied", [[s.origin, s.partition, first, last, watermark(s)[1], dead]
                         for s, first, last, dead in commits], totals]
        )  # fmt: skip

    def _statistics(self) -> dict[str, Any]:
        processor = self._processor
        stats = processor.statistics()
        now = time.monotonic()
        retrying = []
        streams = []
        for stream, progress in stats.streams.items():
            wait = max(0.0, progress.retry_at_s - now) if progress.retry_at_s else 0.0
            streams.append([stream.origin, stream.partition, progress.last_created_ms, wait])
            retry = processor.retry_state(stream)
            if retry is not None:
                retrying.append([stream.origin, stream.partition, *astuple(retry)])
        return {
            "applied": stats.applied_messages,
            "parked": stats.parked_messages,
            "failures": stats.handler_failures,
            "p50": stats.latency_ms_p50,
            "p99": stats.latency_ms_p99,
            "started_ms": processor.started_ms,
            "streams": streams,
            "retrying": retrying,
            "stuck": [list(astuple(r)) for r in processor.stuck_handlers()],
            "canaries": [[o, c, a] for o, (c, a) in processor.canary_times().items()],
            "db": None if stats.db is None else stats.db.to_json(),
        }
