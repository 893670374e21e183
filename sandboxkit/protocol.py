"""Host side of the driver protocol: the bootstrap command and validation of sandbox messages.

Everything the sandbox sends is untrusted. :func:`validate` checks each message's structure and
raises :class:`Violation` for anything the protocol does not allow; the session then ends.
See ``docs/protocol.md`` for the full specification.
"""

from __future__ import annotations

from typing import Any

from sandboxkit_driver import driver_source

__all__ = ["BOOTSTRAP", "PROTOCOL_VERSION", "Violation", "driver_argv", "validate"]

PROTOCOL_VERSION = 1

#: Run by ``python -I -c``: read exactly argv[1] bytes of driver source from fd 0 (unbuffered, so
#: nothing after the source is consumed) and run it.
BOOTSTRAP = (
    "import os,sys\n"
    "n=int(sys.argv[1]);b=bytearray()\n"
    "while len(b)<n:\n"
    " c=os.read(0,n-len(b))\n"
    " if not c:sys.exit('sandboxkit: the driver source was cut short')\n"
    " b+=c\n"
    "exec(compile(bytes(b),'sandboxkit_driver.py','exec'),"
    "{'__name__':'__sandboxkit_driver__','__builtins__':__builtins__})\n"
)

RESULT_STATUSES = {"ok", "final", "error", "syntax_error", "timeout", "protocol_error"}
_ID_MAX = 64


class Violation(Exception):
    """A message from the sandbox broke the protocol."""


def driver_argv(python: str = "python3") -> list[str]:
    """The command that starts the driver; its source must then be written to stdin."""
    return [python, "-I", "-c", BOOTSTRAP, str(len(driver_source()))]


def _need(message: dict[str, Any], key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = message.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in _as_tuple(kinds):
        raise Violation(f"{what} message field {key!r} must be {_names(kinds)}, got {type(value).__name__}")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _names(kinds: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kinds))


def _need_id(message: dict[str, Any], key: str, what: str) -> str:
    value = _need(message, key, str, what)
    if not 0 < len(value) <= _ID_MAX:
        raise Violation(f"{what} message has a malformed {key!r}")
    return value


def validate(message: Any) -> dict[str, Any]:
    """Return ``message`` if it is a well-formed sandbox-to-host message, else raise Violation."""
    if not isinstance(message, dict):
        raise Violation(f"expected a JSON object, got {type(message).__name__}")
    kind = message.get("type")
    if kind == "hello":
        _need(message, "protocol", int, "hello")
        _need(message, "python", str, "hello")
        _need(message, "pid", int, "hello")
    elif kind == "tool_call":
        _need_id(message, "id", "tool_call")
        _need_id(message, "exec", "tool_call")
        _need(message, "name", str, "tool_call")
        _need(message, "args", list, "tool_call")
        kwargs = _need(message, "kwargs", dict, "tool_call")
        if not all(isinstance(k, str) for k in kwargs):
            raise Violation("tool_call keyword names must be strings")
    elif kind == "result":
        _need_id(message, "id", "result")
        status = _need(message, "status", str, "result")
        if status not in RESULT_STATUSES:
            raise Violation(f"result message has unknown status {status!r}")
        _need(message, "output", str, "result")
        if _need(message, "dropped", int, "result") < 0:
            raise Violation("result message field 'dropped' must not be negative")
        for key, kinds in (("traceback", str), ("args", list)):
            if key in message and not isinstance(message[key], kinds):
                raise Violation(f"result message field {key!r} must be {kinds.__name__}")
        if status == "ok":
            if "value" not in message:
                raise Violation("ok result without a 'value'")
            _need(message, "has_value", bool, "result")
        elif status == "final":
            _need(message, "fields", dict, "result")
        else:
            _need(message, "ename", str, "result")
            _need(message, "evalue", str, "result")
    else:
        raise Violation(f"unknown message type {kind!r}")
    return message
