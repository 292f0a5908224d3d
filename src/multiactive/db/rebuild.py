"""Rebuild an old primary from the current one: what `multiactive db rejoin --rebuild` does
when the old primary holds errant transactions (it committed them and never shipped them; the
new primary applied those messages again from its journal, so nothing is lost by dropping
them). The steps, on the old primary (read_only = 1 all along):

    STOP SLAVE; RESET SLAVE ALL
    DROP and CREATE the application database, without binlogging (sql_log_bin = 0)
    load `mariadb-dump --single-transaction --gtid --master-data=2` of the primary's database
    RESET MASTER                                  its binlog, errant GTIDs included, is gone
    SET GLOBAL gtid_slave_pos = <the dump's position>; CHANGE MASTER TO primary; START SLAVE

It runs the `mariadb-dump` and `mariadb` clients (Debian: mariadb-client).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil

from multiactive.db.config import DatabaseUrl
from multiactive.errors import ConfigError, DatabaseError

DUMP_POSITION = re.compile(r"SET GLOBAL gtid_slave_pos='([0-9,\-]*)'")


def _client(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigError(f"db rejoin --rebuild needs {name}: apt-get install mariadb-client")
    return path


def _args(url: DatabaseUrl) -> list[str]:
    where = [f"--socket={url.unix_socket}"] if url.unix_socket else [
        f"--host={url.host}", f"--port={url.port}",
    ]  # fmt: skip
    return ["--no-defaults", *where, f"--user={url.user}"]


async def _run(command: list[str], url: DatabaseUrl, stdin: bytes | None = None) -> bytes:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MYSQL_PWD": url.password},
    )
    out, err = await process.communicate(stdin)
    if process.returncode != 0:
        raise DatabaseError(
            f"{os.path.basename(command[0])} ({url.redacted}) failed: "
            f"{err.decode(errors='replace').strip()[:400]}"
        )
    return out


async def dump(primary: DatabaseUrl) -> tuple[bytes, str]:
    """The primary's application database and the GTID position it was taken at."""
    text = await _run(
        [_client("mariadb-dump"), *_args(primary), "--single-transaction", "--gtid",
         "--master-data=2", "--databases", primary.database],
        primary,
    )  # fmt: skip
    found = DUMP_POSITION.search(text.decode(errors="replace"))
    if found is None:
        raise DatabaseError(f"mariadb-dump ({primary.redacted}) printed no gtid_slave_pos")
    return text, found.group(1)


async def load(replica: DatabaseUrl, database: str, text: bytes) -> None:
    """Replace the replica's database with the dump, without binlogging any of it."""
    prologue = (
        f"SET sql_log_bin = 0; DROP DATABASE IF EXISTS `{database}`; "
        f"CREATE DATABASE `{database}`;\n"
    ).encode()
    await _run([_client("mariadb"), *_args(replica)], replica, prologue + text)
