"""DB handlers for the MariaDB tests, loaded with `--handlers db_handlers`.

`test.row` inserts one row per message into `writes` (no unique key on the request id, on
purpose: a message applied twice would show as two rows with one request id).
"""

from __future__ import annotations

from multiactive.db.handlers import DbDelivery
from multiactive.replication.handlers import HandlerRegistry

WRITES_TABLE = (
    "CREATE TABLE IF NOT EXISTS app.writes (n BIGINT AUTO_INCREMENT PRIMARY KEY, "
    "request_id VARBINARY(64) NOT NULL, origin VARCHAR(63) NOT NULL, part INT NOT NULL, "
    "seq BIGINT NOT NULL, version BIGINT NOT NULL, writer VARCHAR(63) NOT NULL, "
    "KEY (request_id))"
)


async def save_row(delivery: DbDelivery) -> None:
    m = delivery.message
    await delivery.tx.execute(
        "INSERT INTO writes (request_id, origin, part, seq, version, writer) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (m.id, m.origin, m.partition, m.seq, m.version, delivery.site),
    )


def setup(registry: HandlerRegistry) -> None:
    registry.register_db("test.row", save_row)
