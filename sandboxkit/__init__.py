"""sandboxkit: run the Python code a language model writes in the sandbox of your choice.

    import dspy, sandboxkit
    dspy.configure(interpreter_factory=sandboxkit.factory("docker"))
    rlm = dspy.RLM("question -> answer")                       # DSPy >= 3.3
    rlm = dspy.RLM("question -> answer", interpreter=sandboxkit.interpreter())  # DSPy 3.1

Names are loaded on first use, so ``import sandboxkit`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from sandboxkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Availability",
    "Backend",
    "BackendInfo",
    "Capability",
    "InterpreterFactory",
    "SandboxInterpreter",
    "SandboxProcess",
    "SessionOptions",
    "backends",
    "factory",
    "hookimpl",
    "interpreter",
]

_LAZY = {
    "Availability": "sandboxkit.backend",
    "Backend": "sandboxkit.backend",
    "Capability": "sandboxkit.backend",
    "SandboxProcess": "sandboxkit.backend",
    "BackendInfo": "sandboxkit.plugins",
    "InterpreterFactory": "sandboxkit.api",
    "backends": "sandboxkit.api",
    "factory": "sandboxkit.api",
    "interpreter": "sandboxkit.api",
    "SandboxInterpreter": "sandboxkit.stdio_interpreter",
    "SessionOptions": "sandboxkit.options",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandboxkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
