"""sandboxkit's conformance kit: one test suite every backend must pass.

A backend plugin's tests run the whole kit with::

    from sandboxkit.conformance import ConformanceSuite

    class TestMine(ConformanceSuite):
        backend = "mine"
        options = {"image": "python:3.12-slim"}          # optional: options for every interpreter
        memory_limit_options = {"memory_mb": 512}         # optional: how to impose a memory limit

or, with no test code at all, ``pytest --sandboxkit-backend mine`` (or
``sandboxkit conformance --backend mine``). The fixtures come from the pytest plugin
``sandboxkit.conformance.plugin``, loaded automatically when sandboxkit is installed (with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, add ``-p sandboxkit.conformance.plugin``).

``ConformanceSuite`` combines every suite class (``CoreSuite``, made of ``LifecycleSuite``,
``StateSuite``, ..., the attacks of hostile sandbox code ``HostileSuite`` and the checks on
sandboxes outliving their host ``OrphanSuite``, and, when present, the DSPy module suite
``DSPySuite``); subclass the parts to run a subset. Tests that need a capability the backend does not declare are skipped with the
reason; mark your own with :func:`requires`.

Names are loaded on first use, so importing this package does not import pytest or DSPy.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Iterable, Mapping

__all__ = [
    "ConformanceSuite",
    "CoreSuite",
    "DSPySuite",
    "KIT_MODULE",
    "conformance_args",
    "dspy_suite_class",
    "requires",
    "run_conformance",
    *(
        "LifecycleSuite StateSuite ReturnValueSuite OutputSuite OutputLimitSuite ErrorSuite SubmitSuite "
        "ToolSuite VariableSuite TimeoutSuite RobustnessSuite DeathSuite EnvironmentSuite "
        "MemoryLimitSuite".split()
    ),
    "HostileSuite",
    "ForgedMessageSuite",
    "ToolAbuseSuite",
    "UserCodeAbuseSuite",
    "OrphanSuite",
]

#: The module that runs the whole kit against ``--sandboxkit-backend``.
KIT_MODULE = "sandboxkit.conformance.test_selected_backend"
_DSPY_MODULE = "sandboxkit.conformance.dspy_suite"
_SUITE_MODULE = "sandboxkit.conformance.suite"
#: Suites kept in modules of their own (``CoreSuite`` includes them); the rest live in _SUITE_MODULE.
_SUITE_HOMES = {
    "HostileSuite": "sandboxkit.conformance.hostile",
    "ForgedMessageSuite": "sandboxkit.conformance.hostile",
    "ToolAbuseSuite": "sandboxkit.conformance.hostile",
    "UserCodeAbuseSuite": "sandboxkit.conformance.hostile",
}
_MISSING = object()
_dspy_cache: Any = _MISSING


def requires(*capabilities: str) -> Any:
    """A pytest mark skipping the test unless the backend under test declares every capability.

    ``@requires(Capability.MEMORY_LIMIT)`` is ``@pytest.mark.sandboxkit_requires(...)``; the skip
    reason reads ``backend 'x' does not declare capability 'memory_limit'``.
    """
    import pytest

    return getattr(pytest.mark, "sandboxkit_requires")(*capabilities)


def dspy_suite_class() -> type | None:
    """The DSPy module suite (``sandboxkit.conformance.dspy_suite.DSPySuite``), or ``None`` when
    that module is not part of this installation. An existing but broken module raises."""
    global _dspy_cache
    if _dspy_cache is _MISSING:
        if importlib.util.find_spec(_DSPY_MODULE) is None:
            _dspy_cache = None
        else:
            _dspy_cache = importlib.import_module(_DSPY_MODULE).DSPySuite
    return _dspy_cache


def _conformance_suite() -> type:
    suite = importlib.import_module(_SUITE_MODULE)
    bases: list[type] = [suite.CoreSuite]
    dspy = dspy_suite_class()
    if dspy is not None:
        bases.append(dspy)
    return type(
        "ConformanceSuite",
        tuple(bases),
        {
            "__module__": __name__,
            "__doc__": "Every conformance test: subclass it and set ``backend`` (None: --sandboxkit-backend).",
        },
    )


def __getattr__(name: str) -> Any:
    if name == "ConformanceSuite":
        value = _conformance_suite()
    elif name == "DSPySuite":
        value = dspy_suite_class()
        if value is None:
            raise AttributeError("the DSPy module suite is not available in this installation")
    elif name in __all__ and name.endswith("Suite"):
        value = getattr(importlib.import_module(_SUITE_HOMES.get(name, _SUITE_MODULE)), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _option_text(value: Any) -> str:
    """An option value as the command line spells it (sandboxkit converts it back)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(item) for item in value)
    return str(value)


def conformance_args(backend: str, options: Mapping[str, Any] | None = None,
                     pytest_args: Iterable[str] = ()) -> list[str]:
    """The pytest arguments that run the whole kit against ``backend`` with ``options``."""
    import os
    from pathlib import Path

    kit_path = Path(__file__).with_name("test_selected_backend.py")
    args = [str(kit_path), "--sandboxkit-backend", backend, "-p", "no:cacheprovider"]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        args += ["-p", "sandboxkit.conformance.plugin"]
    for key, value in (options or {}).items():
        args.append(f"--sandboxkit-option={key}={_option_text(value)}")
    args.extend(pytest_args)
    return args


def run_conformance(backend: str, options: Mapping[str, Any] | None = None,
                    pytest_args: Iterable[str] = ()) -> int:
    """Run the whole kit (core and DSPy suites) against ``backend`` in this process; return
    pytest's exit code (0 when every test passed or was skipped for a reason it states)."""
    import pytest

    return int(pytest.main(conformance_args(backend, options, pytest_args)))
