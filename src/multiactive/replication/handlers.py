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

A type may also have a DB handler (`registry.register_db`, see `multiactive.db.handlers`):
it runs where the database is written, exactly once, in the DB apply's transaction.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from multiactive.db.handlers import DbHandler
from multiactive.errors import ConfigError
from multiactive.model.message import Message
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


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._db_handlers: dict[str, DbHandler] = {}

    def register(self, message_type: str, handler: Handler) -> None:
        if message_type in BUILTIN_TYPES:
            raise ConfigError(f"{message_type!r} is a built-in type; register another name")
        if message_type in self._handlers:
            raise ConfigError(f"a handler for {message_type!r} is already registered")
        self._handlers[message_type] = handler

    def handler(self, message_type: str) -> Callable[[Handler], Handler]:
        """Decorator form of `register`."""

        def decorate(fn: Handler) -> Handler:
            self.register(message_type, fn)
            return fn

        return decorate

    def get(self, message_type: str) -> Handler | None:
        return self._handlers.get(message_type)

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
