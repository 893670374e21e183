"""Options: the interpreter's own, and conversion of option values given as strings.

Values from the command line (``-o key=value``) or the environment arrive as strings; each is
converted to the type its dataclass field declares (bool, int, float, str, tuples or lists of
those, ``dict[str, str]``, optionally ``None``), with an :class:`OptionError` that says what was
expected when it cannot be.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from sandboxkit.errors import OptionError

__all__ = ["SessionOptions", "build_options", "split_options"]

#: Longer than any deadline a timer can hold (a year): "forever" is spelled None.
_FOREVER = 365 * 24 * 3600.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null", ""}


@dataclasses.dataclass(frozen=True)
class SessionOptions:
    """Options every interpreter has, whatever its backend."""

    #: Seconds one ``execute`` may take, time in host tools included; ``None`` for no limit.
    timeout: float | None = 300.0
    #: Seconds the driver gets to answer after an interrupt before the sandbox is killed.
    grace: float = 5.0
    #: Bytes of output captured per execute; the rest is dropped with a visible marker.
    output_limit: int = 1_000_000
    #: Seconds the sandbox gets to start and complete the handshake.
    start_timeout: float = 60.0
    #: Largest single protocol line accepted from the sandbox, in bytes.
    max_message_bytes: int = 256 * 1024 * 1024
    #: Deepest nesting of lists and objects accepted in one message from the sandbox.
    max_message_depth: int = 100
    #: Most values (lists, objects, strings, numbers, ...) accepted in one message from the sandbox.
    max_message_items: int = 1_000_000
    #: Tool calls of one session that run at once on the host; further calls wait in order.
    max_concurrent_tools: int = 16
    #: Tool calls of one session that may wait to run; a call beyond that fails in the sandbox.
    max_queued_tools: int = 256

    def __post_init__(self) -> None:
        if self.timeout is not None and not 0 < self.timeout < _FOREVER:
            raise OptionError("option 'timeout' must be a positive, finite number of seconds, or None for no limit")
        for name in ("grace", "start_timeout"):
            if not 0 < getattr(self, name) < _FOREVER:
                raise OptionError(f"option '{name}' must be a positive, finite number of seconds")
        for name in ("output_limit", "max_message_bytes"):
            if getattr(self, name) < 1024:
                raise OptionError(f"option '{name}' must be at least 1024 bytes")
        for name in ("max_message_depth", "max_message_items", "max_concurrent_tools"):
            if getattr(self, name) < 1:
                raise OptionError(f"option '{name}' must be at least 1")
        if self.max_queued_tools < 0:
            raise OptionError("option 'max_queued_tools' must be 0 or more")


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        errors = []
        for member in members:
            try:
                return _convert(name, value, member)
            except OptionError as exc:
                errors.append(str(exc))
        raise OptionError(errors[0] if len(errors) == 1 else f"option '{name}' expects {_describe(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise OptionError(f"option '{name}' expects true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise OptionError(f"option '{name}' expects {tp.__name__}, got {value!r}")
        if isinstance(value, (int, float)) and (tp is float or float(value).is_integer()):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                pass
        raise OptionError(f"option '{name}' expects {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise OptionError(f"option '{name}' expects a string, got {value!r}")
    if origin in (tuple, list):
        item_type = args[0] if args else str
        if isinstance(value, str):
            items: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise OptionError(f"option '{name}' expects a comma-separated list, got {value!r}")
        converted = [_convert(name, item, item_type) for item in items]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or tp is dict:
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(value, str):
            result = {}
            for part in (p.strip() for p in value.split(",")):
                if not part:
                    continue
                key, sep, val = part.partition("=")
                if not sep or not key.strip():
                    raise OptionError(f"option '{name}' expects KEY=VALUE pairs separated by commas, got {part!r}")
                result[key.strip()] = val
            return result
        raise OptionError(f"option '{name}' expects a mapping or KEY=VALUE pairs, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise OptionError(f"option '{name}' expects {_describe(tp)}, got {value!r}")


def build_options(cls: type, values: Mapping[str, Any], owner: str, also_valid: frozenset[str] = frozenset()) -> Any:
    """Make an instance of the options dataclass ``cls`` from ``values``, converting each.

    :param owner: who the options belong to, for error messages (e.g. ``backend 'docker'``).
    :param also_valid: further option names to list as valid in the error for an unknown one.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        valid = ", ".join(sorted(fields | also_valid)) or "(none)"
        raise OptionError(f"unknown option(s) for {owner}: {', '.join(unknown)}. Valid options: {valid}")
    converted = {key: _convert(key, value, hints[key]) for key, value in values.items()}
    try:
        return cls(**converted)
    except OptionError:
        raise
    except (TypeError, ValueError) as exc:
        raise OptionError(f"invalid options for {owner}: {exc}") from exc


def split_options(values: Mapping[str, Any], backend_options: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``values`` into (session options, backend options); backend fields win on a clash."""
    backend_fields = {f.name for f in dataclasses.fields(backend_options)}
    session_fields = {f.name for f in dataclasses.fields(SessionOptions)}
    session: dict[str, Any] = {}
    backend: dict[str, Any] = {}
    for key, value in values.items():
        if key in session_fields and key not in backend_fields:
            session[key] = value
        else:
            backend[key] = value
    return session, backend
