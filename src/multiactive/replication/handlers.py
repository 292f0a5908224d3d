"""User handlers (P4): plain Python functions registered by message type.

    # myapp/handlers.py, loaded with `multiactive site run --handlers myapp.handlers`
    from multiactive import Delivery, HandlerRegistry

    async def on_post(delivery: Delivery) -> None:
        if delivery.retry:
            ...  # may have run before (a retry, or the first delivery after a restart)
        await delivery.cache.put([...])

    def setup(registry: HandlerRegistry) -> None:
        registry.register("status.post", on_post)

Built-in types (`kv.set`, `kv.del`) are applied by the state backend itself, atomically with
the watermark; a user handler runs at least once per message, in seq order per stream.

An attempt fails when the handler raises or runs longer than its timeout
(`[replication] handler_timeout_s`, or `timeout_s` here); a failed message is retried with
backoff and, after `apply_max_attempts`, parked as a dead letter: later messages of its stream
(its key among them) then go ahead. `on_exhausted="hold"` keeps retrying instead (at most
every HOLD_RETRY_MAX_S), holding its stream, for types whose later messages must never pass
an earlier one:

    registry.register("order.pay", on_pay, timeout_s=5.0, on_exhausted="hold")

A type may also have a DB handler (`registry.register_db`, see `multiactive.db.handlers`):
it runs where the database is written, exactly once, in the DB apply's transaction.

Cache-aside loaders are registered by key prefix (`multiactive.reads`): the site process runs
the reloads of stale fills with them, and applications load their misses with the same ones:

    registry.register_loader("user:", load_user)   # async (key, db: DbReader) -> Loaded
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from multiactive.db.handlers import DbHandler
from multiactive.errors import ConfigError
from multiactive.model.message import Message
from multiactive.reads.cache import Loader, Loaders
from multiactive.state.base import BUILTIN_TYPES, StateBackend


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler is given: the message, where it runs, and the site's handles."""

    message: Message
    site: str
    attempt: int
    retry: bool  # attempt > 1, or the first delivery of its stream since this process started
    cache: StateBackend


Handler = Callable[[Delivery], Awaitable[None]]
OnExhausted = Literal["park", "hold"]
HOLD_RETRY_MAX_S = 60.0  # a held message is retried at least this often


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """Per type: the attempt timeout (None: `[replication] handler_timeout_s`) and what
    happens once `apply_max_attempts` failed: park the message (the stream goes on) or hold
    the stream and keep retrying."""

    timeout_s: float | None = None
    on_exhausted: OnExhausted = "park"


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._options: dict[str, HandlerOptions] = {}
        self._db_handlers: dict[str, DbHandler] = {}
        self.loaders = Loaders()

    def register(
        self,
        message_type: str,
        handler: Handler,
        *,
        timeout_s: float | None = None,
        on_exhausted: OnExhausted = "park",
    ) -> None:
        if message_type in BUILTIN_TYPES:
            raise ConfigError(f"{message_type!r} is a built-in type; register another name")
        if message_type in self._handlers:
            raise ConfigError(f"a handler for {message_type!r} is already registered")
        if timeout_s is not None and not timeout_s > 0:
            raise ConfigError(f"handler {message_type!r}: timeout_s must be > 0, not {timeout_s}")
        if on_exhausted not in ("park", "hold"):
            raise ConfigError(
                f"handler {message_type!r}: on_exhausted must be 'park' or 'hold', "
                f"not {on_exhausted!r}"
            )
        self._handlers[message_type] = handler
        self._options[message_type] = HandlerOptions(timeout_s, on_exhausted)

    def handler(
        self,
        message_type: str,
        *,
        timeout_s: float | None = None,
        on_exhausted: OnExhausted = "park",
    ) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def decorate(fn: Handler) -> Handler:
            self.register(message_type, fn, timeout_s=timeout_s, on_exhausted=on_exhausted)
            return fn

        return decorate

    def get(self, message_type: str) -> Handler | None:
        return self._handlers.get(message_type)

    def options(self, message_type: str) -> HandlerOptions:
        return self._options.get(message_type, HandlerOptions())

    def register_db(self, message_type: str, handler: DbHandler) -> None:
        """A DB handler for a type (built-in types too): see `multiactive.db.handlers`."""
        if message_type in self._db_handlers:
            raise ConfigError(f"a DB handler for {message_type!r} is already registered")
        self._db_handlers[message_type] = handler

    def db_handler(self, message_type: str) -> Callable[[DbHandler], DbHandler]:
        """Decorator form of `register_db`."""

        def decorate(fn: DbHandler) -> DbHandler:
            self.register_db(message_type, fn)
            return fn

        return decorate

    def register_loader(self, prefix: str, loader: Loader) -> None:
        """The cache-aside loader of keys starting with `prefix` (see `multiactive.reads`)."""
        self.loaders.register(prefix, loader)

    def get_db(self, message_type: str) -> DbHandler | None:
        return self._db_handlers.get(message_type)

    @property
    def db_types(self) -> tuple[str, ...]:
        return tuple(sorted(self._db_handlers))

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))

    def load(self, module_name: str) -> None:
        """Import a module and call its `setup(registry)`."""
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"--handlers {module_name}: cannot import it: {exc}") from exc
        setup = getattr(module, "setup", None)
        if not callable(setup):
            raise ConfigError(
                f"--handlers {module_name}: the module has no setup(registry) function"
            )
        setup(self)
