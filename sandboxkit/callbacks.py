"""DSPy's interpreter callbacks (``on_interpreter_*``) for sandboxkit's interpreter.

DSPy fires them around ``start``, ``execute``, ``invoke_tool`` and ``shutdown`` of its own
interpreters through its ``with_callbacks`` decorator, for the global callbacks
(``dspy.configure(callbacks=...)``) and the instance's ``callbacks`` list. :func:`traced` is that
decorator on DSPy versions that have interpreter callbacks, and does nothing on older ones (which
would report the calls as module calls instead).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from dspy.utils import callback as _dspy_callback

__all__ = ["SUPPORTED", "traced"]

F = TypeVar("F", bound=Callable[..., Any])

#: Whether this DSPy has interpreter callbacks.
SUPPORTED = hasattr(_dspy_callback.BaseCallback, "on_interpreter_execute_start")


def traced(fn: F) -> F:
    """Fire DSPy's interpreter callbacks around ``fn`` (named start, execute, invoke_tool or
    shutdown) where DSPy supports them."""
    if SUPPORTED:
        return _dspy_callback.with_callbacks(fn)  # type: ignore[return-value]
    return fn
