"""A site's MariaDB through asyncmy (see docs/database.md for why this driver).

One connection per DB apply: the apply is one transaction at a time by design (a round's
handlers, its watermark rows and the fence check commit together), so a pool would add
nothing. Errors from the driver are translated here into `DatabaseError`, `transient` when
retrying as-is can succeed (the server is down or read-only, a lock wait timed out).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncmy
from asyncmy.errors import MySQLError

from multiactive.db.base import SCHEMA, BufferedWrites, Dialect, Params, Row
from multiactive.db.config import DatabaseUrl
from multiactive.errors import DatabaseError

CONNECT_TIMEOUT_S = 5
DEFAULT_READ_CONNECTIONS = 4  # queries a MariaReader runs at once
# Client and server codes after which the same transaction can succeed later.
TRANSIENT_CODES = frozenset({
    1053,  # server shutdown in progress
    1205,  # lock wait timeout
    1213,  # deadlock
    1290,  # --read-only (a replica, or an old primary after a switchover)
    1792,  # read-only transaction
    1927,  # connection killed
    2003,  # cannot connect
    2006,  # server has gone away
    2013,  # lost connection during query
})  # fmt: skip
# Global privileges that write through read_only=1 on MariaDB 10.11 (SUPER alone does not:
# checked on 10.11.19, it gets error 1290 like any account).
READ_ONLY_BYPASS = ("READ ONLY ADMIN", "ALL PRIVILEGES")


def translate(exc: BaseException, where: str, url: DatabaseUrl) -> DatabaseError:
    """A driver or socket error as our DatabaseError naming the URL's setting."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    transient = code in TRANSIENT_CODES or isinstance(exc, OSError | ConnectionError)
    return DatabaseError(f"{where} ({url.redacted}): {exc}", transient=transient)


async def connect(url: DatabaseUrl, where: str, *, autocommit: bool = False) -> Any:
    """An asyncmy connection, or DatabaseError naming `where` when it does not answer."""
    try:
        return await asyncmy.connect(
            host=url.host,
            port=url.port,
            user=url.user,
            password=url.password,
            database=url.database,
            unix_socket=url.unix_socket,
            connect_timeout=CONNECT_TIMEOUT_S,
            autocommit=autocommit,
        )
    except (MySQLError, OSError) as exc:
        raise translate(exc, where, url) from exc


class MariaDatabase:
    dialect: Dialect = "mysql"

    def __init__(self, url: DatabaseUrl, where: str, *, create_schema: bool = True) -> None:
        self.url = url
        self._where = where
        self._create_schema = create_schema
        self._conn: Any = None

    async def open(self) -> None:
        """Connect, refuse an account that writes through read_only, create our tables."""
        conn = await connect(self.url, self._where)
        try:
            await check_account(conn, self._where, self.url)
            if self._create_schema:
                async with conn.cursor() as cursor:
                    if not await _read_only(cursor):
                        for statement in SCHEMA:
                            await cursor.execute(statement)
                await conn.commit()
        except MySQLError as exc:
            conn.close()
            raise translate(exc, self._where, self.url) from exc
        except DatabaseError:
            conn.close()
            raise
        self._conn = conn

    async def begin(self, *, buffered: bool = True) -> MariaTransaction:
        if self._conn is None:
            await self.open()
        try:
            await self._conn.begin()
        except (MySQLError, OSError) as exc:
            self._drop()
            raise translate(exc, self._where, self.url) from exc
        return MariaTransaction(self, self._conn, buffered)

    def _drop(self) -> None:
        """Forget a connection that failed; the next transaction reconnects."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._drop()


class MariaTransaction(BufferedWrites):
    dialect: Dialect = "mysql"

    def __init__(self, database: MariaDatabase, conn: Any, buffered: bool) -> None:
        super().__init__(buffered)
        self._database = database
        self._conn = conn

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        await self.flush()
        try:
            async with self._conn.cursor() as cursor:
                await cursor.execute(sql, tuple(params))
                return [tuple(row) for row in await cursor.fetchall()]
        except (MySQLError, OSError) as exc:
            raise self._failed(exc) from exc

    async def commit(self) -> None:
        await self.flush()
        try:
            await self._conn.commit()
        except (MySQLError, OSError) as exc:
            raise self._failed(exc) from exc

    async def rollback(self) -> None:
        self._queue.clear()
        try:
            await self._conn.rollback()
        except (MySQLError, OSError):
            self._database._drop()

    async def _run_many(self, sql: str, rows: list[Params]) -> None:
        try:
            async with self._conn.cursor() as cursor:
                if len(rows) == 1:
                    await cursor.execute(sql, tuple(rows[0]))
                else:
                    await cursor.executemany(sql, [tuple(r) for r in rows])
        except (MySQLError, OSError) as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: BaseException) -> DatabaseError:
        error = translate(exc, self._database._where, self._database.url)
        if error.transient:
            self._database._drop()
        return error


class MariaReader:
    dialect: Dialect = "mysql"

    def __init__(
        self, url: DatabaseUrl, where: str, connections: int = DEFAULT_READ_CONNECTIONS
    ) -> None:
        self.url, self.where = url, where
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(connections)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                async with conn.cursor() as cursor:
                    await cursor.execute(sql, tuple(params))
                    rows = [tuple(row) for row in await cursor.fetchall()]
            except (MySQLError, OSError) as exc:
                conn.close()
                raise translate(exc, self.where, self.url) from exc
            except BaseException:
                conn.close()  # cancelled mid-query: the connection's state is unknown
                raise
            self._idle.append(conn)
            return rows

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def _connect(self) -> Any:
        return await connect(self.url, self.where, autocommit=True)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def check_account(conn: Any, where: str, url: DatabaseUrl) -> None:
    """Refuse an account that could write through read_only=1 (an errant GTID maker)."""
    async with conn.cursor() as cursor:
        await cursor.execute("SHOW GRANTS FOR CURRENT_USER()")
        grants = [str(row[0]).upper() for row in await cursor.fetchall()]
    # Global privileges only (ON *.*): ALL PRIVILEGES on one database grants none of them.
    held = [p for p in READ_ONLY_BYPASS if any(p in g and " ON *.* " in g for g in grants)]
    if held:
        raise DatabaseError(
            f"{where}: the account {url.user!r} holds {', '.join(held)}, which writes through "
            "read_only=1 on MariaDB (an old primary would take writes and make errant GTIDs); "
            "give the processors an account without it, e.g. GRANT SELECT, INSERT, UPDATE, "
            f"DELETE, CREATE ON {url.database}.* TO ..."
        )


async def _read_only(cursor: Any) -> bool:
    await cursor.execute("SELECT @@read_only")
    row = await cursor.fetchone()
    return bool(row and row[0])
