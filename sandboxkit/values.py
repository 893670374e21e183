"""Values crossing the sandbox boundary: DSPy's conversions, name rules, and the variable cache.

Conversions follow DSPy's ``PythonInterpreter``: variables become JSON-compatible values
(pydantic models dumped, tuples to lists, sets to sorted lists, non-finite floats kept); tool
results go through the same structured-type conversion and fall back to ``str`` when they are
not JSON-compatible (so ``NaN`` arrives as ``"nan"``), with ``None`` arriving as ``""``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import keyword
import weakref
from typing import Any, Callable

from sandboxkit.errors import CodeInterpreterError

__all__ = ["RESERVED_NAMES", "VariableCache", "bind_tool_call", "check_tool_names", "check_variable_names",
           "tool_result_value", "to_json_compatible"]

#: Names the interpreter owns in the sandbox namespace.
RESERVED_NAMES = frozenset({"SUBMIT", "__builtins__", "__name__"})


def _dump_model(value: Any) -> Any:
    try:
        return value.model_dump(mode="json")
    except Exception as exc:  # pydantic's serialization errors
        raise CodeInterpreterError(f"Unable to serialize {type(value).__name__} as JSON: {exc}") from exc


def _is_model(value: Any) -> bool:
    return hasattr(value, "model_dump") and hasattr(type(value), "model_fields")


def to_json_compatible(value: Any) -> Any:
    """Convert a variable to a JSON-compatible value the way DSPy's interpreters do."""
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if _is_model(value):
        return to_json_compatible(_dump_model(value))
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: to_json_compatible(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_json_compatible(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    try:
        coerced = to_jsonable_python(value)
    except PydanticSerializationError:
        raise CodeInterpreterError(
            f"Unsupported value type: {type(value).__name__}; variables must be JSON-compatible, "
            "pydantic models, dataclasses or containers of those"
        ) from None
    return to_json_compatible(coerced)


def _structured(value: Any) -> Any:
    """DSPy's tool-result conversion of structured types (pydantic, dataclasses, named tuples)."""
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if _is_model(value):
        return _structured(_dump_model(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return _structured(dataclasses.asdict(value))
        except Exception:
            return value
    if isinstance(value, tuple) and hasattr(value, "_fields") and hasattr(value, "_asdict"):
        return _structured(value._asdict())
    if isinstance(value, dict):
        return {k: _structured(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_structured(v) for v in value]
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError:
        return value


def tool_result_value(result: Any) -> Any:
    """What sandbox code receives for a tool's return value."""
    kind = type(result)
    if kind is str or kind is int or kind is bool:  # the common answers, already final
        return result
    result = _structured(result)
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        return str(result)
    return result


def _bad_name(name: Any) -> bool:
    return not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED_NAMES


def check_tool_names(tools: dict[str, Any]) -> None:
    invalid = [name for name in tools if _bad_name(name)]
    if invalid:
        raise CodeInterpreterError(
            f"tool names must be Python identifiers that are not keywords or reserved "
            f"({', '.join(sorted(RESERVED_NAMES))}); invalid: {invalid!r}"
        )
    not_callable = [name for name, fn in tools.items() if not callable(fn)]
    if not_callable:
        raise CodeInterpreterError(f"tools must be callables; not callable: {not_callable!r}")


def check_variable_names(variables: dict[str, Any], tools: dict[str, Any]) -> None:
    """Raise CodeInterpreterError, worded like DSPy's ("Invalid variable name: 'for'"), for a name
    that is not an identifier, is a keyword, is reserved or is a tool's name."""
    invalid = [name for name in variables if _bad_name(name) or name in tools]
    if invalid:
        raise CodeInterpreterError(
            f"Invalid variable name: {invalid[0]!r}; variable names must be Python identifiers that are not "
            f"keywords, reserved names ({', '.join(sorted(RESERVED_NAMES))}) or tool names; invalid: {invalid!r}"
        )


_signatures: weakref.WeakKeyDictionary[Any, inspect.Signature | None] = weakref.WeakKeyDictionary()


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``inspect.signature(fn)``, remembered for as long as ``fn`` lives; None if it has none."""
    try:
        return _signatures[fn]
    except (KeyError, TypeError):
        pass
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    try:
        _signatures[fn] = signature
    except TypeError:  # not weak-referenceable or unhashable
        pass
    return signature


_plain_names: weakref.WeakKeyDictionary[Any, tuple[str, ...] | None] = weakref.WeakKeyDictionary()


def _plain_parameters(fn: Callable[..., Any], signature: inspect.Signature) -> tuple[str, ...] | None:
    """The parameter names when every parameter is plain positional-or-keyword, else None."""
    try:
        return _plain_names[fn]
    except (KeyError, TypeError):
        pass
    kinds = {p.kind for p in signature.parameters.values()}
    names = tuple(signature.parameters) if kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD} else None
    try:
        _plain_names[fn] = names
    except TypeError:
        pass
    return names


def bind_tool_call(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Map a sandbox call's positional arguments onto the tool's parameter names.

    DSPy hands tools keyword arguments (RLM wraps tools as ``**kwargs`` functions that carry the
    original signature), so positional arguments become keywords wherever the signature allows.
    Raises ``TypeError`` (shown in the sandbox) when the arguments do not fit the signature.
    """
    signature = _signature(fn)
    if signature is None:
        return list(args), dict(kwargs)
    names = _plain_parameters(fn, signature)
    if names is not None and len(args) <= len(names) and not kwargs.keys() & names[: len(args)]:
        # Plain parameters: positions name them; whatever is missing or unknown the call reports.
        if kwargs.keys() <= set(names) and len(args) + len(kwargs) == len(names):
            # In parameter order, as Signature.bind gives them.
            positional = len(args)
            return [], {name: args[i] if i < positional else kwargs[name] for i, name in enumerate(names)}
    bound = signature.bind(*args, **kwargs)
    call_args: list[Any] = []
    call_kwargs: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.POSITIONAL_ONLY:
            call_args.append(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            call_args.extend(value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            call_kwargs.update(value)
        else:
            call_kwargs[name] = value
    return call_args, call_kwargs


@dataclasses.dataclass
class _Entry:
    key: str
    stamp: Any  # the str itself for strings, else the JSON text


class VariableCache:
    """Sends each large variable once per session; afterwards only a reference.

    A reference has exactly the semantics of re-sending: the driver rebinds the name on every
    execute, to the same immutable string or to a fresh copy of a container. Entries become
    usable only after the driver has acknowledged the execute that carried them (:meth:`commit`).
    """

    MIN_SIZE = 16 * 1024

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._staged: dict[str, _Entry | None] = {}
        self._keys = itertools.count(1)

    def encode(self, variables: dict[str, Any]) -> tuple[str, list[bytes]]:
        """The JSON text of the execute message's ``variables`` object, and its raw blobs.

        Large strings travel as raw UTF-8 blobs after the message line (no JSON escaping).
        """
        parts = []
        self._staged = {}
        self._blobs: list[bytes] = []
        for name, value in variables.items():
            parts.append(f"{json.dumps(name)}:{self._encode_one(name, value)}")
        return "{" + ",".join(parts) + "}", self._blobs

    def _encode_one(self, name: str, value: Any) -> str:
        entry = self._entries.get(name)
        if isinstance(value, str):
            if entry is not None and isinstance(entry.stamp, str) and entry.stamp is value:
                return '{"ref":"%s"}' % entry.key
            if entry is not None and isinstance(entry.stamp, str) and len(entry.stamp) == len(value) and entry.stamp == value:
                return '{"ref":"%s"}' % entry.key
            if len(value) >= self.MIN_SIZE:
                key = f"v{next(self._keys)}"
                self._staged[name] = _Entry(key, value)
                self._blobs.append(value.encode("utf-8", "surrogatepass"))
                return '{"blob":%d,"key":"%s"}' % (len(self._blobs) - 1, key)
            text = json.dumps(value, ensure_ascii=False)
            stamp: Any = value
        else:
            try:
                text = json.dumps(to_json_compatible(value), ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise CodeInterpreterError(f"variable {name!r} is not JSON-compatible: {exc}") from exc
            if entry is not None and isinstance(entry.stamp, _JsonText) and entry.stamp == text:
                return '{"ref":"%s"}' % entry.key
            stamp = _JsonText(text)
        if len(text) < self.MIN_SIZE:
            self._staged[name] = None
            return '{"v":%s}' % text
        key = f"v{next(self._keys)}"
        self._staged[name] = _Entry(key, stamp)
        return '{"v":%s,"key":"%s"}' % (text, key)

    def commit(self) -> None:
        """The driver has bound the last encoded variables: their cache keys are now valid."""
        for name, entry in self._staged.items():
            if entry is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = entry
        self._staged = {}


class _JsonText(str):
    """Marks a cache stamp as JSON text (so a str variable never matches a container's text)."""
