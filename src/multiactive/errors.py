"""One exception tree for the whole package.

    MultiactiveError
    ├── ConfigError            a topology file or an option is wrong (names the field)
    │   └── UnknownSiteError   a site name the topology does not know
    ├── DecodeError            bytes that do not decode as a message, batch, frame or record
    │   └── ProtocolError      a peer broke the wire protocol; only that connection closes
    ├── RejectedError          a write was refused at ingress; nothing was journaled for it
    │   ├── PayloadTooLarge    the payload is over `max_payload_bytes`
    │   └── BatchRejected      some drafts of a batch were refused (`outcomes` says which)
    ├── JournalError           a journal invariant would break (J1/J2)
    ├── StoreError             a storage server (Redis) cannot be reached or holds data this
    │                          process did not write (names the URL and the setting)
    ├── DatabaseError          a site's database cannot be reached, refused a statement or is
    │   │                      set up wrong (names the URL's setting)
    │   └── FencedError        a DB transaction under a writer epoch that is no longer current
    ├── ConnectionLost         a connection closed before an answer arrived
    ├── ApplierError           the site's applier process did not start or exited
    └── ClusterError           processes started on this machine (a local cluster, a test
                               server) did not reach the state a caller waited for

Messages name the bad value, what was expected and the setting that controls it.
"""

from __future__ import annotations

from collections.abc import Sequence


class MultiactiveError(Exception):
    """Base of every error raised by multiactive."""


class ConfigError(MultiactiveError):
    """A configuration value is missing or wrong; the message names the field."""


class DecodeError(MultiactiveError):
    """Bytes that should hold a message, batch or frame could not be decoded."""


class ProtocolError(DecodeError):
    """A peer sent something the wire protocol does not allow."""


class RejectedError(MultiactiveError):
    """A write was refused at ingress; nothing was journaled for it."""


class PayloadTooLarge(RejectedError):
    """A payload is over the configured limit."""


class BatchRejected(RejectedError):
    """Some drafts of a batch were refused; `outcomes` has, in order, the client's Ack for
    each acknowledged draft (those are journaled) or the RejectedError of a refused one."""

    def __init__(self, outcomes: Sequence[object]) -> None:
        refused = [o for o in outcomes if isinstance(o, RejectedError)]
        super().__init__(f"{len(refused)} of {len(outcomes)} drafts refused; first: {refused[0]}")
        self.outcomes = list(outcomes)


class JournalError(MultiactiveError):
    """An append would break a journal invariant."""


class StoreError(MultiactiveError):
    """A storage server is unreachable, or its data is not what this process left there."""


class ApplierError(MultiactiveError):
    """The site's applier process (its processor) did not start, or exited."""


class ClusterError(MultiactiveError):
    """Processes started on this machine did not reach the state a caller waited for."""


class ConnectionLost(MultiactiveError):
    """The connection closed before the answer arrived; the outcome is unknown."""


class DatabaseError(MultiactiveError):
    """A site's database cannot be reached, refused a statement, or is set up wrong.
    `transient`: worth retrying as it is (unreachable, read-only, a lock timeout)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class FencedError(DatabaseError):
    """The DB-writer role moved: a transaction under an old epoch is refused."""


class UnknownSiteError(ConfigError):
    """A site name that is not in the topology."""


def format_bytes(n: int) -> str:
    """`10240` -> `'10 KiB'`, `14540` -> `'14.2 KiB'`: sizes as operators read them."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"
