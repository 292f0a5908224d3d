"""SQLite access shared by the journal, the state and the audit store: connecting with the
project's pragmas, one thread per connection, and translating SQLite's errors.

A `SqliteDb` is one connection to one file, used from one thread: its own worker thread
(`thread=` names it), or, with `thread=None`, the caller's (a process whose event loop does
nothing else, such as the applier, where two thread hand-offs cost more than the statement).
`run(fn)` runs `fn` there; `fn` reads the connection as `db.conn`. With `inline_small=True`,
`run(fn, small=True)` runs `fn` right on the event loop instead when the thread has nothing
queued or running and every earlier caller has resumed: the journal's small appends, for which
the hand-offs cost more than the append with its fdatasync. Work stays one call at a time
either way, and callers see their results in the order they were made.

Pragmas: WAL (readers proceed beside the writer), `synchronous=NORMAL` (each store says why
no sync per commit is needed: the journal's segments, the state's journal, the audit's
nature), and a busy timeout of BUSY_TIMEOUT_MS (a site and its applier share files).

A `WalCheckpointer` moves a busy writer's checkpoints to a thread of its own (the state in
the applier): see its docstring.

Errors from sqlite3 are translated here, as `redisdb` does for Redis: a file that cannot be
opened, read or written (locked past the busy timeout, read-only, disk full, I/O error,
damaged or not a database, a constraint another writer broke) raises `StoreError` naming the
file, the setting and what to do. `ProgrammingError` and `InterfaceError` (a wrong use of the
API, a bug here rather than a state of the file) pass through as they are.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from multiactive.errors import StoreError

BUSY_TIMEOUT_MS = 10_000
# WalCheckpointer: the WAL's size, in frames (pages), past which its writer waits for the WAL
# to start over (64 MiB of 16 KiB pages); how long a restart may wait for readers and for
# the thread's checkpoint in progress before the writer goes on and tries again one bound
# later; the rows committed since the thread's last checkpoint that wake it at once (bulk
# commits: it stays close behind the writer, and a restart waits for little), and how often
# it checkpoints a trickle of small commits (a checkpoint with frames to copy costs two
# fsyncs: one a commit would be hundreds a second; every 0.2 s kept the p99 of a trickle
# lower than every 1 s).
WAL_RESTART_FRAMES = 4096
WAL_RESTART_WAIT_S = 0.5
WAL_WAKE_ROWS = 1000
WAL_CHECKPOINT_S = 0.2
T = TypeVar("T")
log = logging.getLogger(__name__)

_HINTS = {
    sqlite3.SQLITE_BUSY: "another process held it locked past the busy timeout "
    "({busy_s:g} s): is a second site process using this {setting}?",
    sqlite3.SQLITE_LOCKED: "another connection held it locked: is a second site process "
    "using this {setting}?",
    sqlite3.SQLITE_READONLY: "it cannot be written: check the permissions and the mount of "
    "{setting}",
    sqlite3.SQLITE_FULL: "the disk is full: free space where {setting} lies",
    sqlite3.SQLITE_IOERR: "the disk failed to read or write it: check the disk under {setting}",
    sqlite3.SQLITE_CANTOPEN: "it cannot be opened: {setting} must be a folder this process "
    "may write, and the file a regular file",
    sqlite3.SQLITE_CORRUPT: "it is damaged: restore it from a backup or move it away",
    sqlite3.SQLITE_NOTADB: "it is not an SQLite database (damaged or replaced): restore it "
    "from a backup or move it away",
    sqlite3.SQLITE_CONSTRAINT: "a write broke a constraint of data this process had read: "
    "another process may be writing this file (one site process per {setting})",
}


def connect(path: Path, page_size: int | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the project's pragmas,
    usable from the thread that runs it (not only the one that made it). `page_size` applies
    to a file this connection creates (a file's page size is fixed once it holds a page)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        if page_size is not None:
            conn.execute(f"PRAGMA page_size={int(page_size)}")  # before WAL writes page 1
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteDb:
    """One connection to one SQLite file, on one thread; every error names the file."""

    def __init__(
        self,
        path: Path,
        what: str,
        *,
        thread: str | None,
        setting: str = "data_dir",
        inline_small: bool = False,
        page_size: int | None = None,
    ) -> None:
        """`what` names the store in messages ("journal", "state"); `setting` is what
        decides where the file lies; `page_size`: of the file, if this creates it."""
        self.path = path
        self.page_size = page_size
        self.what = what
        self.setting = setting
        self._thread = None if thread is None else ThreadPoolExecutor(1, thread_name_prefix=thread)
        self._conn: sqlite3.Connection | None = None
        # With inline_small: jobs handed to the thread and not done yet (a cancelled one is
        # done), and the callers still waiting for theirs.
        self._inline_small = inline_small and self._thread is not None
        self._jobs: deque[Future[Any]] = deque()
        self._waiting = 0

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for functions `run` runs."""
        if self._conn is None:
            raise RuntimeError(f"{self.what} {self.path} is not open")
        return self._conn

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def open(self, setup: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Connect on the db's thread, then run `setup` (schema, claim) there. If `setup`
        fails the connection stays, for `close`."""
        await self.run(lambda: self._open_sync(setup))

    def _open_sync(self, setup: Callable[[sqlite3.Connection], None] | None) -> None:
        conn = self._conn = connect(self.path, self.page_size)
        if setup is not None:
            setup(conn)

    async def close(self, finish: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Run `finish` (a checkpoint, say), close the connection, stop the thread."""
        if self._conn is not None:
            await self.run(lambda: self._close_sync(finish))
        if self._thread is not None:
            self._thread.shutdown(wait=True)

    def _close_sync(self, finish: Callable[[sqlite3.Connection], None] | None) -> None:
        conn = self.conn
        if finish is not None:
            finish(conn)
        conn.close()
        self._conn = None

    async def run(self, fn: Callable[[], T], *, small: bool = False) -> T:
        """`fn()` on the db's thread (or inline: see the module docstring); a SQLite error
        becomes a StoreError naming the file."""
        try:
            if self._thread is None:
                return fn()
            if not self._inline_small:
                return await asyncio.get_running_loop().run_in_executor(self._thread, fn)
            if small and self.idle():
                return fn()
            self._forget_finished()
            job = self._thread.submit(fn)
            self._jobs.append(job)
            self._waiting += 1
            try:
                return await asyncio.wrap_future(job)
            finally:
                self._waiting -= 1
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self.fail(exc) from exc

    def idle(self) -> bool:
        """Nothing queued or running on the thread, and every caller resumed (inline_small)."""
        self._forget_finished()
        return not self._jobs and not self._waiting

    def _forget_finished(self) -> None:
        """Drop the jobs the thread has finished (in order: it runs one at a time). A job holds
        its result, an append's batches with them, until it is dropped: a run of large appends
        with no small one between must not keep them all."""
        jobs = self._jobs
        while jobs and jobs[0].done():
            jobs.popleft()

    def fail(self, exc: sqlite3.Error) -> StoreError:
        """The StoreError for a SQLite error of this file."""
        return StoreError(describe(exc, f"{self.what} {self.path}", self.setting))


class WalCheckpointer:
    """Checkpoints one file's WAL on a thread of its own, beside the file's one busy writer.

    SQLite's automatic checkpoint runs inside the commit that takes the WAL past
    `wal_autocheckpoint` pages: the writer waits while the pages are copied into the file and
    both are fsynced (on this machine a third of the applier's time in a catch-up). Here the
    writer's connection turns that off (`writer_setup`) and tells the thread what it
    committed (`committed`); the thread runs a PASSIVE checkpoint on its own connection as
    soon as `wake_rows` rows were committed since its last one, else every `interval_s`:
    it never blocks the writer or readers, and the GIL is released while SQLite copies and
    syncs.

    A WAL starts over only when a write begins with every frame checkpointed, which a writer
    that never pauses does not meet: the WAL would grow by everything written. So after each
    commit (`committed`), once the thread saw more than `restart_frames` frames, the writer
    runs a RESTART checkpoint itself (what is left after the thread's), and the next
    write starts the WAL over. A restart that readers or the thread's checkpoint hold up for
    longer than WAL_RESTART_WAIT_S is tried again one bound later. Durability is SQLite's
    with `synchronous=NORMAL` either way: a checkpoint syncs the WAL before it copies and
    the file after.
    """

    def __init__(
        self,
        db: SqliteDb,
        *,
        restart_frames: int = WAL_RESTART_FRAMES,
        interval_s: float = WAL_CHECKPOINT_S,
        wake_rows: int = WAL_WAKE_ROWS,
    ) -> None:
        self._db = db
        self.restart_frames = restart_frames
        self.interval_s = interval_s
        self.wake_rows = wake_rows
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rows = 0  # committed since the thread's last checkpoint began
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self.frames = 0  # in the WAL at the thread's last checkpoint
        self._next_restart = restart_frames
        self.checkpoints = 0
        self.restarts = 0
        self.deferred = 0  # restarts held up past WAL_RESTART_WAIT_S, or failed
        self.error: str | None = None  # the thread's last failure, until a checkpoint works

    @staticmethod
    def writer_setup(conn: sqlite3.Connection) -> None:
        """For the writer's connection: no checkpoints inside its commits."""
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def start(self) -> None:
        self._conn = connect(self._db.path)
        name = f"checkpoint-{self._db.what}"
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def committed(self, rows: int) -> None:
        """After the writer committed `rows` rows, on its thread: wake the thread for a bulk
        commit, and restart a WAL grown past its bound. The commit is durable whatever
        happens here: a restart that fails, or that readers or the thread's checkpoint hold
        up past WAL_RESTART_WAIT_S, is logged or counted and tried again one bound later."""
        self._rows += rows
        if self._rows >= self.wake_rows:
            self._wake.set()
        if self.frames >= self._next_restart:
            if await self._restart():
                self.restarts += 1
                self.frames, self._next_restart = 0, self.restart_frames
            else:
                self.deferred += 1
                self._next_restart = self.frames + self.restart_frames

    async def _restart(self) -> bool:
        conn = self._db.conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAL_RESTART_WAIT_S
        try:
            conn.execute(f"PRAGMA busy_timeout={int(WAL_RESTART_WAIT_S * 1000)}")
            try:
                while conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()[0][0]:
                    if loop.time() >= deadline:  # readers hold it up
                        return False
                    await asyncio.sleep(0.002)  # the thread's checkpoint holds the lock
            finally:
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
        except sqlite3.Error as exc:
            where = f"{self._db.what} {self._db.path}"
            log.warning("wal_restart_failed: %s", describe(exc, where, self._db.setting))
            return False
        return True

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._rows = 0
            self.checkpoint()

    def checkpoint(self) -> None:
        """One PASSIVE checkpoint on the thread's connection: what the thread runs (and a
        test, with the thread's timer and wake out of reach: not both at once)."""
        conn = self._conn
        if conn is None:
            return
        try:
            _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        except sqlite3.Error as exc:  # the writer meets the same file and reports it
            if self.error is None:
                where = f"{self._db.what} {self._db.path}"
                log.warning("checkpoints: %s", describe(exc, where, self._db.setting))
            self.error = str(exc)
            return
        self.error = None
        self.frames = max(frames, 0)
        self.checkpoints += 1


def describe(exc: sqlite3.Error, where: str, setting: str) -> str:
    """What failed, where, why and what to do: `state /d/state.sqlite3 (data_dir): it is not
    an SQLite database (...): restore it ... [SQLITE_NOTADB: file is not a database]`."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    hint = _HINTS.get(code & 0xFF) if isinstance(code, int) else None
    if hint is None:
        hint = "SQLite failed"
    text = hint.format(setting=setting, busy_s=BUSY_TIMEOUT_MS / 1000)
    return f"{where} ({setting}): {text} [{name}: {exc}]"
