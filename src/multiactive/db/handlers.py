"""DB handlers: what a message type does to the site's database.

    from multiactive import HandlerRegistry
    from multiactive.db import DbDelivery

    async def save_post(delivery: DbDelivery) -> None:
        m = delivery.message
        await delivery.tx.upsert(
            "posts",
            {"id": m.key, "body": m.payload, "version": m.version},
            key=["id"],
            version_column="version",   # a late or replayed message never overwrites newer
        )

    def setup(registry: HandlerRegistry) -> None:
        registry.register_db("status.post", save_post)

A DB handler runs where DB handlers run (the writer site in `writer` mode, every site in
`independent` mode), inside the round's transaction: its writes commit together with the DB
watermark, so each message's DB effect happens exactly once. It must write only through
`delivery.tx` and must not commit. A message type may have a cache handler, a DB handler, or
both; built-in types (`kv.set`, ...) may have a DB handler too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from multiactive.db.base import Transaction
from multiactive.model.message import Message


@dataclass(frozen=True, slots=True)
class DbDelivery:
    """What a DB handler is given: the message, where it runs, and the open transaction."""

    message: Message
    site: str
    attempt: int  # > 1: an earlier attempt raised and was rolled back
    tx: Transaction


DbHandler = Callable[[DbDelivery], Awaitable[None]]
