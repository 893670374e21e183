"""Every error sandboxkit raises, in one place.

Errors that end or refuse an interpreter session subclass DSPy's ``CodeInterpreterError``, so DSPy
modules treat them as interpreter failures; a recoverable failure of submitted code (including a
timeout the session survived) subclasses DSPy's ``CodeExecutionError`` where DSPy has it.
"""

from __future__ import annotations

from dspy.primitives import code_interpreter as _dspy_ci

__all__ = [
    "BackendNotFoundError",
    "BackendStartError",
    "CodeExecutionError",
    "CodeInterpreterError",
    "ExecutionTimeoutError",
    "OptionError",
    "ProtocolError",
    "SandboxDiedError",
    "SandboxkitError",
    "SessionEndedError",
]

CodeInterpreterError = _dspy_ci.CodeInterpreterError
#: DSPy < 3.3 has no CodeExecutionError; its interpreters raised CodeInterpreterError for user errors.
CodeExecutionError = getattr(_dspy_ci, "CodeExecutionError", _dspy_ci.CodeInterpreterError)


class SandboxkitError(Exception):
    """Base of the configuration errors sandboxkit raises before any sandbox exists."""


class BackendNotFoundError(SandboxkitError, LookupError):
    """Raised by ``interpreter()``/``factory()`` for a backend name that is not installed or is
    disabled; the message lists the installed backends. ``available`` holds their names."""

    def __init__(self, message: str, name: str, available: list[str]) -> None:
        super().__init__(message)
        self.name = name
        self.available = available


class OptionError(SandboxkitError, ValueError):
    """Raised for an unknown option or a value that cannot be converted to the option's type;
    the message names the option, the expected type and the valid options."""


class BackendStartError(CodeInterpreterError):
    """Raised by ``start()`` when the backend cannot start a sandbox (missing SDK, no engine,
    missing image, no credentials); the message says what to do."""


class SessionEndedError(CodeInterpreterError):
    """Raised by ``start()``/``execute()`` after ``shutdown()`` or after a fatal failure: the
    session's state is gone, so create a new interpreter."""


class ProtocolError(CodeInterpreterError):
    """Raised when the sandbox sends something the protocol does not allow (a malformed or
    oversized line, an unknown id); the session is ended, never guessed at."""


class SandboxDiedError(CodeInterpreterError):
    """Raised when the sandbox process dies or is killed (including after an execute that ignored
    its timeout). Carries ``exit_code`` and ``stderr_tail`` from the dead process."""

    def __init__(self, message: str, exit_code: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class ExecutionTimeoutError(CodeExecutionError):
    """Raised by ``execute()`` when code ran past the timeout and was interrupted; the session and
    its state survive, so the caller (or the model) can continue."""
