"""Handlers for the read-path tests: `item.save` writes a row with the message's version in
the database only (no cache handler: the cache is filled by reads, cache-aside), and the
loader of `item:` keys reads it back from the site's own copy."""

from __future__ import annotations

from multiactive.db.handlers import DbDelivery
from multiactive.reads import DbReader, Loaded
from multiactive.replication.handlers import HandlerRegistry

SAVE_TYPE = "item.save"
TABLE = "read_items"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (k VARCHAR(255) NOT NULL PRIMARY KEY, "
    "v VARBINARY(1024) NOT NULL, version BIGINT NOT NULL)"
)


async def save_item(delivery: DbDelivery) -> None:
    m = delivery.message
    row = {"k": m.key, "v": m.payload, "version": m.version}
    await delivery.tx.upsert(TABLE, row, key=["k"], version_column="version")


async def load_item(key: str, db: DbReader) -> Loaded:
    row = await db.fetchone(f"SELECT v, version FROM {TABLE} WHERE k = %s", (key,))
    return Loaded(None) if row is None else Loaded(bytes(row[0]), int(row[1]))


def setup(registry: HandlerRegistry) -> None:
    registry.register_db(SAVE_TYPE, save_item)
    registry.register_loader("item:", load_item)
