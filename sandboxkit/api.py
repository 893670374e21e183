"""The public entry points: ``interpreter()``, ``factory()`` and ``backends()``."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sandboxkit import plugins
from sandboxkit.backend import Backend
from sandboxkit.stdio_interpreter import SandboxInterpreter
from sandboxkit.options import SessionOptions, build_options, split_options

__all__ = ["InterpreterFactory", "backends", "factory", "interpreter", "resolve_backend_name"]

DEFAULT_BACKEND = "subprocess"
BACKEND_ENV = "SANDBOXKIT_BACKEND"


def resolve_backend_name(backend: str | None) -> str:
    """``backend``, else ``$SANDBOXKIT_BACKEND``, else ``"subprocess"``."""
    return backend or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND


class InterpreterFactory:
    """A zero-argument callable making fresh, unstarted interpreters on one configured backend.

    Pass it as ``interpreter_factory=`` to DSPy's code-running modules or to
    ``dspy.configure``. ``execution_instructions`` describes the runtime for RLM's prompt.
    """

    def __init__(self, backend_cls: type[Backend], session_options: SessionOptions, backend_options: Any,
                 callbacks: list[Any] | None = None) -> None:
        self.backend_cls = backend_cls
        self.session_options = session_options
        self.backend_options = backend_options
        #: DSPy callbacks every interpreter made gets as its own ``callbacks``.
        self.callbacks: list[Any] = list(callbacks or [])
        self.execution_instructions: str = backend_cls.execution_instructions

    @property
    def backend_name(self) -> str:
        return self.backend_cls.name

    def __call__(self) -> SandboxInterpreter:
        """A new interpreter; nothing starts (and nothing is checked) until it is used."""
        return SandboxInterpreter(self.backend_cls(self.backend_options), self.session_options,
                                  callbacks=self.callbacks)

    def __repr__(self) -> str:
        return f"<sandboxkit factory backend={self.backend_cls.name!r}>"


def factory(backend: str | None = None, *, callbacks: list[Any] | None = None, **options: Any) -> InterpreterFactory:
    """A factory of interpreters on the named backend (see :func:`resolve_backend_name`).

    ``options`` mix the interpreter's own (:class:`sandboxkit.options.SessionOptions`:
    ``timeout``, ``grace``, ``output_limit``, ...) and the backend's; string values are converted
    to each option's type. ``callbacks`` are DSPy callbacks for each interpreter, besides the
    global ones. Raises ``BackendNotFoundError`` listing the installed backends for an unknown
    name and ``OptionError`` for a bad option.
    """
    name = resolve_backend_name(backend)
    backend_cls = plugins.load_backend(name)
    session_values, backend_values = split_options(options, backend_cls.Options)
    session_options = build_options(SessionOptions, session_values, "the interpreter")
    session_names = frozenset(f.name for f in dataclasses.fields(SessionOptions))
    backend_options = build_options(backend_cls.Options, backend_values, f"backend {name!r}", session_names)
    return InterpreterFactory(backend_cls, session_options, backend_options, callbacks)


def interpreter(backend: str | None = None, *, callbacks: list[Any] | None = None, **options: Any) -> SandboxInterpreter:
    """A new, not yet started interpreter on the named backend; options as for :func:`factory`."""
    return factory(backend, callbacks=callbacks, **options)()


def backends() -> list[plugins.BackendInfo]:
    """The installed backends: name, distribution, version, and whether each is usable now."""
    return plugins.describe_backends()
