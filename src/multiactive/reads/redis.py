"""The reload queue in the site's Redis (`state = "redis"`): durable as the server is.

Two keys under the site's hash tag (layout in `multiactive.redisdb`), changed only by
`reads/reloads.lua`, one script call per operation, so a put's bound check and its merge with
the key's held entry are atomic however many application processes fill at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from multiactive.model.topology import DEFAULT_MAX_PENDING_RELOADS, DEFAULT_RELOAD_AFTER_S
from multiactive.reads.reloads import ROUND_LIMIT, PendingReload, ReloadQueue
from multiactive.redisdb import DEFAULT_PREFIX, Keys, RedisDb, Script, ScriptCall, lua_source

_SCRIPT = Script(lua_source("multiactive.reads", "reloads.lua"))


class RedisReloads(ReloadQueue):
    def __init__(
        self,
        url: str,
        site: str,
        setting: str,
        reload_after_s: float = DEFAULT_RELOAD_AFTER_S,
        max_pending: int = DEFAULT_MAX_PENDING_RELOADS,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__(reload_after_s, max_pending)
        self.url, self._setting = url, setting
        keys = Keys(site, prefix)
        self._keys = [keys.reloads, keys.reload_entries]
        self._db: RedisDb | None = None

    async def open(self) -> None:
        self._db = await RedisDb.connect(self.url, self._setting)
        await self._db.load(_SCRIPT)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _put(self, entry: PendingReload) -> bool:
        args = ["put", entry.key, entry.mark, entry.filled_ms, entry.due_ms, self.max_pending]
        return bool(await self._call(args, f"queueing a reload of {entry.key!r}"))

    async def pending(self, limit: int = ROUND_LIMIT) -> list[PendingReload]:
        flat = await self._call(["pending", limit], "reading the reload queue")
        found = []
        for i in range(0, len(flat), 3):
            filled, _, mark = flat[i + 1].decode().partition(":")
            found.append(PendingReload(flat[i].decode(), mark, int(filled), int(flat[i + 2])))
        return found

    async def done(self, entries: Sequence[PendingReload]) -> None:
        args: list[str] = ["done"]
        for entry in entries:
            args += [entry.key, entry.mark]
        await self._call(args, "removing finished reloads")

    async def count(self) -> int:
        return int(await self._open_db().call("HLEN", self._keys[1]))

    async def _call(self, args: Sequence[object], doing: str) -> Any:
        db = self._open_db()
        (result,) = await db.run([ScriptCall(_SCRIPT, self._keys, args)])
        if isinstance(result, Exception):
            raise db.fail(result, doing)
        return result

    def _open_db(self) -> RedisDb:
        if self._db is None:
            raise RuntimeError("the reload queue is not open")
        return self._db
