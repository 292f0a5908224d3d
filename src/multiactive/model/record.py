"""Typed records at the edge: frozen dataclasses that turn into JSON and back, checked.

What the admin API returns, the CLI prints, the chaos checker and the dashboard read, is a
record class (`multiactive.records`), not a dict read by string keys in four places. A record
subclasses `Record`; `to_json()` gives plain JSON values, `from_json()` rebuilds the record
from them by its type annotations (nested records, tuples, dicts with int keys, optionals,
literals) and raises `DecodeError` naming the field that does not fit.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, Literal, Self, TypeVar, Union, get_args, get_origin

from multiactive.errors import DecodeError

T = TypeVar("T")


class Record:
    """Mixin for frozen dataclasses that cross the admin API."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        encoded: dict[str, Any] = encode(self)
        return encoded

    @classmethod
    def from_json(cls, data: Any) -> Self:
        return decode(cls, data)


def encode(value: Any) -> Any:
    """JSON-ready values: records become objects, tuples lists, mapping keys strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_key(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def _key(key: Any) -> str:
    if isinstance(key, tuple):  # a named tuple key such as StreamId: "origin/partition"
        return "/".join(str(part) for part in key)
    return str(key)


def decode(kind: type[T], data: Any, where: str = "") -> T:
    """`data` (parsed JSON) as a `kind`; DecodeError naming the path of what does not fit."""
    try:
        result: T = _decode(kind, data, where or getattr(kind, "__name__", "value"))
    except DecodeError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise DecodeError(f"{where or kind}: {exc}") from exc
    return result


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _decode(kind: Any, data: Any, where: str) -> Any:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        return _decode_union(kind, data, where)
    if origin is Literal:
        if data not in get_args(kind):
            raise DecodeError(f"{where}: {data!r} is not one of {get_args(kind)}")
        return data
    if origin in (tuple, list):
        return _decode_sequence(kind, origin, data, where)
    if origin is dict:
        key_kind, value_kind = get_args(kind)
        _check(data, dict, where)
        return {
            _decode_key(key_kind, k, where): _decode(value_kind, v, f"{where}.{k}")
            for k, v in data.items()
        }
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _decode_record(kind, data, where)
    return _decode_scalar(kind, data, where)


def _decode_union(kind: Any, data: Any, where: str) -> Any:
    options = get_args(kind)
    if data is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _decode(option, data, where)
        except DecodeError as exc:
            errors.append(str(exc))
    raise DecodeError("; ".join(errors))


def _decode_sequence(kind: Any, origin: type, data: Any, where: str) -> Any:
    _check(data, list, where)
    args = get_args(kind)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(args) != len(data):
            raise DecodeError(f"{where}: expected {len(args)} items, got {len(data)}")
        pairs = enumerate(zip(args, data, strict=True))
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    items = [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    return tuple(items) if origin is tuple else items


def _decode_key(kind: Any, key: str, where: str) -> Any:
    if kind is int:
        if not key.lstrip("-").isdigit():
            raise DecodeError(f"{where}: key {key!r} is not a whole number")
        return int(key)
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
        origin, _, partition = key.rpartition("/")
        named: Any = kind
        return named(origin, int(partition))
    return key


def _decode_record(kind: type, data: Any, where: str) -> Any:
    _check(data, dict, where)
    hints = _hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if f.name in data:
            values[f.name] = _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise DecodeError(f"{where}: field {f.name!r} is missing")
    return kind(**values)


def _decode_scalar(kind: Any, data: Any, where: str) -> Any:
    if kind is Any:
        return data
    if kind is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise DecodeError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if kind is type(None):
        if data is not None:
            raise DecodeError(f"{where}: expected null, got {data!r}")
        return None
    _check(data, kind, where)
    if kind is int and isinstance(data, bool):
        raise DecodeError(f"{where}: expected a whole number, got {data!r}")
    return data


def _check(data: Any, kind: type, where: str) -> None:
    if not isinstance(data, kind):
        raise DecodeError(f"{where}: expected {kind.__name__}, got {type(data).__name__}")
