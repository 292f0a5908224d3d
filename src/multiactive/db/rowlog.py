"""A ready-made DB handler for the demo: `demo.row` writes one row per message into
`ma_demo_rows` (request id, position, version, the writing site), loaded with
`--handlers multiactive.db.rowlog`. There is no unique key on the request id on purpose: a
message applied twice would show as two rows."""

from __future__ import annotations

from multiactive.db.handlers import DbDelivery
from multiactive.replication.handlers import HandlerRegistry

ROW_TYPE = "demo.row"
TABLE = "ma_demo_rows"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (n BIGINT AUTO_INCREMENT PRIMARY KEY, "
    "request_id VARBINARY(64) NOT NULL, origin VARCHAR(63) NOT NULL, part INT NOT NULL, "
    "seq BIGINT NOT NULL, version BIGINT NOT NULL, writer VARCHAR(63) NOT NULL, "
    "KEY (request_id))"
)


async def save_row(delivery: DbDelivery) -> None:
    m = delivery.message
    await delivery.tx.execute(
        f"INSERT INTO {TABLE} (request_id, origin, part, seq, version, writer) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (m.id, m.origin, m.partition, m.seq, m.version, delivery.site),
    )


def setup(registry: HandlerRegistry) -> None:
    registry.register_db(ROW_TYPE, save_row)
