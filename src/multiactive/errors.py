"""One exception tree for the whole package.

    MultiactiveError
    ├── ConfigError            a topology file or an option is wrong (names the field)
    │   ├── UnknownSiteError   a site name the topology does not know
    │   └── DataDirLocked      another process holds the data dir's lock (names its pid)
    ├── DecodeError            bytes that do not decode as a message, batch, frame or record
    │   └── ProtocolError      a peer broke the wire protocol; only that connection closes
    ├── RejectedError          a write was refused at ingress; nothing was journaled for it
    │   ├── PayloadTooLarge    the payload is over `max_payload_bytes`
    │   ├── BatchRejected      some drafts of a batch were refused (`outcomes` says which)
    │   └── RoutingRefused     the routing policy forbids this write here: the user's unit is
    │                          read-only or closed, or its home is another site (names it)
    ├── JournalError           a journal invariant would break (J1/J2)
    ├── StateError             a state invariant would break (P1-P3)
    │   └── StaleStep          a step whose watermark is not above the applied one (P3)
    ├── StoreError             a store (a Redis server, a SQLite file) cannot be reached, fails,
    │   │                      or holds data this process did not write (names the URL or the
    │   │                      file, and the setting)
    │   ├── StoreUnavailable   the store cannot be reached now (a server down or restarting,
    │   │                      a cluster missing a node): the same call may work later
    │   └── StoreOutcomeUnknown  a write was sent and its answer lost: it may be stored
    ├── OutcomeUnknown         whether a write was journaled is not known (the site's storage
    │                          failed mid-write, or a client's deadline passed unanswered);
    │                          publishing it again with the same id is safe
    ├── DatabaseError          a site's database cannot be reached, refused a statement or is
    │   │                      set up wrong (names the URL's setting)
    │   ├── FencedError        a DB transaction under a writer epoch that is no longer current
    │   └── DatabaseUnavailable  a cache miss could not be loaded: the site's database does
    │                          not answer (cached reads keep working: degraded mode)
    ├── ConnectionLost         a connection closed before an answer arrived
    ├── AuthenticationError    a peer, publisher or admin caller is not who it must be
    │                          (certificate name, token); `reason` says which check failed
    ├── ApplierError           the site's applier process did not start or exited
    ├── HandlerTimeout         a user handler ran past its timeout (the attempt failed)
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
    """A write was refused at ingress; nothing was journaled for it. `code` is the refusal
    code of the wire protocol (`multiactive.wire.protocol.REFUSAL_CODES`)."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


class PayloadTooLarge(RejectedError):
    """A payload is over the configured limit."""


class BatchRejected(RejectedError):
    """Some drafts of a batch were refused; `outcomes` has, in order, the client's Ack for
    each acknowledged draft (those are journaled) or the RejectedError of a refused one."""

    def __init__(self, outcomes: Sequence[object]) -> None:
        refused = [o for o in outcomes if isinstance(o, RejectedError)]
        first = f"; first: {refused[0]}" if refused else ""
        super().__init__(f"{len(refused)} of {len(outcomes)} drafts refused{first}")
        self.outcomes = list(outcomes)


class RoutingRefused(RejectedError):
    """The routing policy forbids a write at this site; `home_site` is where the user's writes
    go (empty when none may take them), `unit` and `mode` the user's unit and its mode."""

    def __init__(self, message: str, home_site: str, unit: str, mode: str) -> None:
        super().__init__(message, "routing")
        self.home_site = home_site
        self.unit = unit
        self.mode = mode


class JournalError(MultiactiveError):
    """An append would break a journal invariant."""


class StateError(MultiactiveError):
    """A state commit would break a state invariant; nothing of it was applied."""


class StaleStep(StateError):
    """A step whose watermark is not above the stream's applied one (P3: a message applies
    once). The whole commit was refused; `stream`, `applied` and `attempted` say which step."""

    def __init__(self, stream: tuple[str, int], applied: int, attempted: int) -> None:
        super().__init__(
            f"watermark of {stream} would move from {applied} to {attempted}; a step must go "
            f"past the applied seq {applied} (each message applies once)"
        )
        self.stream = stream
        self.applied = applied
        self.attempted = attempted


class StoreError(MultiactiveError):
    """A store (a Redis server, a SQLite file) is unreachable or fails, or its data is not
    what this process left there."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now: a server down or restarting, a connection refused or
    cut, a Redis Cluster whose node serving the keys is down. The same call may work later."""


class StoreOutcomeUnknown(StoreError):
    """A write reached the storage server, or may have, and no answer came back (the
    connection broke mid-pipeline): it may be stored or not."""


class OutcomeUnknown(MultiactiveError):
    """Whether a write was journaled is not known: the site's storage failed mid-write, or
    the client's deadline passed (or it was closed) before an answer. A write is stored at
    most once: publish it again with the same id at the same site, and the site answers with
    its first position if it was journaled.

    `unknown`: ids of writes that may be journaled. `not_journaled`: ids that certainly are
    not (never sent, or refused as unavailable). `outcomes`: for a batch, per draft its Ack,
    its RejectedError, or None where not known."""

    def __init__(
        self,
        message: str,
        outcomes: Sequence[object] = (),
        *,
        unknown: Sequence[str] = (),
        not_journaled: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)
        self.unknown = list(unknown)
        self.not_journaled = list(not_journaled)


class ApplierError(MultiactiveError):
    """The site's applier process (its processor) did not start, or exited."""


class HandlerTimeout(MultiactiveError):
    """A user handler did not return within its timeout; the attempt counts as failed."""


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


class DatabaseUnavailable(DatabaseError):
    """A read missed the cache and its loader could not reach the site's database; cached
    keys are still served (degraded mode). Retrying later can succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class AuthenticationError(MultiactiveError):
    """A peer, a publisher or an admin caller failed a check of who it is; `reason` is short
    and fixed (`no_certificate`, `not_a_site`, `name_mismatch`, `token`) for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownSiteError(ConfigError):
    """A site name that is not in the topology."""


class DataDirLocked(ConfigError):
    """Another process holds the lock of this data dir (`site.lock`, `applier.lock`)."""


def format_bytes(n: int) -> str:
    """`10240` -> `'10 KiB'`, `14540` -> `'14.2 KiB'`: sizes as operators read them."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"
