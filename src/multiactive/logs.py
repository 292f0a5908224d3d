"""Structured logs on the standard library: an event name and key=value fields, never prose.

log = get_logger("link")
log.info("link_connected", site="gz", peer="bj-unicom", mode="push")
# 2026-11-22T10:00:00.123 INFO link link_connected site=gz peer=bj-unicom mode=push
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_ROOT = "multiactive"


class EventLogger:
    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(
        self, level: int, event: str, fields: dict[str, Any], exc: BaseException | None = None
    ) -> None:
        if self._logger.isEnabledFor(level):
            text = " ".join([event, *(f"{k}={_value(v)}" for k, v in fields.items())])
            self._logger.log(level, text, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, *, exc: BaseException | None = None, **fields: Any) -> None:
        """`exc`: an exception whose traceback follows the line."""
        self._log(logging.WARNING, event, fields, exc)

    def error(self, event: str, *, exc: BaseException | None = None, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc)


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(f"{_ROOT}.{name}"))


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix(f"{_ROOT}.")
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname} {name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "INFO", site: str | None = None) -> None:
    """Send multiactive's logs to stderr, one line per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    if site:
        handler.addFilter(_SiteFilter(site))


class _SiteFilter(logging.Filter):
    def __init__(self, site: str) -> None:
        super().__init__()
        self._site = f"site={site}"

    def filter(self, record: logging.LogRecord) -> bool:
        if self._site not in str(record.msg):
            record.msg = f"{record.msg} {self._site}"
        return True
