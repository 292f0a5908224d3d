"""The replicated control message that moves the DB-writer role.

`ma.db.writer` is an ordinary journaled message (key `ma:db:writer`) published at any site by
`multiactive db switchover|failover`; every site's processor applies it like any write, so
every site learns the change within one round trip. Its payload is JSON:
`{"writer": "gz", "epoch": 2}`. A site keeps the highest epoch it has seen; the fence row in
the database is the authority a transaction checks (see `multiactive.db.apply`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from multiactive.errors import DecodeError

WRITER_TYPE = "ma.db.writer"
WRITER_KEY = "ma:db:writer"


@dataclass(frozen=True, slots=True, order=True)
class WriterRole:
    epoch: int
    writer: str

    def encode(self) -> bytes:
        return json.dumps({"writer": self.writer, "epoch": self.epoch}).encode()


def decode_writer(payload: bytes) -> WriterRole:
    try:
        raw = json.loads(payload)
        role = WriterRole(int(raw["epoch"]), str(raw["writer"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"{WRITER_TYPE}: bad payload {payload[:80]!r}: {exc}") from exc
    if role.epoch < 1:
        raise DecodeError(f"{WRITER_TYPE}: epoch must be >= 1, got {role.epoch}")
    return role
