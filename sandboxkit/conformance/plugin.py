"""sandboxkit's pytest plugin: the options and fixtures of the conformance kit.

Installed with sandboxkit (entry point ``pytest11: sandboxkit``) and inert unless used: it adds
command-line options, two markers and fixtures that only do something when a test requests them.

Options
    ``--sandboxkit-backend NAME``  the backend under test for kit classes whose ``backend`` is
    ``None``. Given without test paths (``pytest --sandboxkit-backend NAME``), pytest runs the
    whole kit (``sandboxkit/conformance/test_selected_backend.py``) instead of the directory's
    own tests.
    ``--sandboxkit-option KEY=VALUE``  (repeatable) an interpreter or backend option for the
    backend under test, converted like every sandboxkit option given as a string.

Fixtures
    ``sandboxkit_backend_name``  the backend under test: the test class's ``backend`` attribute,
    else ``--sandboxkit-backend``, else the test is skipped. An unusable backend
    (``Backend.check()``) skips the test with the backend's reason, except when ``CI`` is true,
    where it fails: a backend test that skips in CI did not run. Tests marked
    ``sandboxkit_requires(*capabilities)`` are skipped when the backend does not declare them.
    ``sandboxkit_backend_class``, ``sandboxkit_capabilities``  the backend's class and its
    declared capabilities.
    ``sandboxkit_options``  the options every interpreter of the test gets: the class's
    ``sandboxkit_default_options``, then its ``options``, then ``--sandboxkit-option`` values
    (which apply when no ``--sandboxkit-backend`` is given or it names the backend under test).
    ``make_interpreter(**extra)``  a new, not yet started interpreter with those options updated
    by ``extra``. ``make_factory(**extra)``  an interpreter factory likewise. Every interpreter
    either makes (a factory's included) is shut down when the test ends.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

__all__ = [
    "KIT_PATH",
    "REQUIRES_MARKER",
    "make_factory",
    "make_interpreter",
    "sandboxkit_backend_class",
    "sandboxkit_backend_name",
    "sandboxkit_capabilities",
    "sandboxkit_options",
]

#: The test module that runs the whole kit against ``--sandboxkit-backend``.
KIT_PATH = Path(__file__).with_name("test_selected_backend.py")
#: ``@pytest.mark.sandboxkit_requires(Capability.X, ...)``: skip unless the backend declares them.
REQUIRES_MARKER = "sandboxkit_requires"

_NO_BACKEND = "no backend selected: pass --sandboxkit-backend NAME"
_CI_VALUES = {"1", "true", "yes", "on"}

# The kit's test classes live in library modules, which pytest does not rewrite by default.
pytest.register_assert_rewrite("sandboxkit.conformance.suite", "sandboxkit.conformance.dspy_suite")

_cli_options_key = pytest.StashKey[dict]()
_backend_cache_key = pytest.StashKey[dict]()


# -- options and configuration ----------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sandboxkit", "sandboxkit conformance kit")
    group.addoption(
        "--sandboxkit-backend",
        metavar="NAME",
        default=None,
        help="run the sandboxkit conformance kit against backend NAME (without test paths: the whole kit)",
    )
    group.addoption(
        "--sandboxkit-option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="an interpreter or backend option for the backend under test (repeatable)",
    )


def parse_option_args(items: list[str]) -> dict[str, str]:
    """``["timeout=30", "env=A=1,B=2"]`` -> ``{"timeout": "30", "env": "A=1,B=2"}``.

    Raises ``pytest.UsageError`` for an item without ``=`` or with an empty key.
    """
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(f"--sandboxkit-option expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value
    return parsed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{REQUIRES_MARKER}(*capabilities): skip unless the sandboxkit backend under test declares "
        "every named capability",
    )
    config.addinivalue_line("markers", "dspy_e2e: end-to-end runs of DSPy modules on a sandboxkit backend")
    config.stash[_cli_options_key] = parse_option_args(config.getoption("sandboxkit_option") or [])
    config.stash[_backend_cache_key] = {}
    if config.getoption("sandboxkit_backend") and not _explicit_args(config):
        # `pytest --sandboxkit-backend NAME` with no paths: run the kit, not the directory.
        config.args = [str(KIT_PATH)]


def _explicit_args(config: pytest.Config) -> bool:
    source = getattr(config, "args_source", None)
    if source is None:  # very old pytest: cannot tell, so leave the arguments alone
        return True
    return source == pytest.Config.ArgsSource.ARGS


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    name = config.getoption("sandboxkit_backend")
    if not name:
        return None
    options = config.stash.get(_cli_options_key, {})
    shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
    return [f"sandboxkit: backend under test: {name} (options: {shown})"]


# -- helpers ------------------------------------------------------------------------------------
def in_ci() -> bool:
    """True when the ``CI`` environment variable says we run in continuous integration."""
    return os.environ.get("CI", "").strip().lower() in _CI_VALUES


def _class_attr(request: pytest.FixtureRequest, name: str, default: Any) -> Any:
    cls = getattr(request, "cls", None)
    return getattr(cls, name, default) if cls is not None else default


def _load_backend(config: pytest.Config, name: str) -> Any:
    """The backend class registered as ``name`` (cached); fails the test if there is none."""
    cache = config.stash[_backend_cache_key]
    if name not in cache:
        from sandboxkit import plugins

        try:
            backend_cls = plugins.load_backend(name)
            cache[name] = (backend_cls, backend_cls.check(), None)
        except Exception as exc:  # not installed, disabled, a broken plugin or check()
            cache[name] = (None, None, f"{type(exc).__name__}: {exc}")
    backend_cls, availability, error = cache[name]
    if error is not None:
        pytest.fail(f"sandboxkit backend {name!r} could not be loaded: {error}", pytrace=False)
    return backend_cls, availability


def _selected_name(request: pytest.FixtureRequest) -> str:
    name = _class_attr(request, "backend", None) or request.config.getoption("sandboxkit_backend")
    if not name:
        pytest.skip(_NO_BACKEND)
    return str(name)


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def sandboxkit_backend_class(request: pytest.FixtureRequest) -> type:
    """The backend class under test, once it is known to be usable and to have what the test needs."""
    name = _selected_name(request)
    backend_cls, availability = _load_backend(request.config, name)
    if not availability.usable:
        hint = f" ({availability.hint})" if availability.hint else ""
        message = f"backend {name!r} is not usable here: {availability.reason}{hint}"
        if in_ci():
            pytest.fail(f"{message}; CI is set, and a backend test that skips in CI did not run", pytrace=False)
        pytest.skip(message)
    declared = frozenset(getattr(backend_cls, "capabilities", frozenset()))
    for marker in request.node.iter_markers(REQUIRES_MARKER):
        for capability in marker.args:
            if capability not in declared:
                pytest.skip(f"backend {name!r} does not declare capability {capability!r}")
    return backend_cls


@pytest.fixture
def sandboxkit_backend_name(sandboxkit_backend_class: type, request: pytest.FixtureRequest) -> str:
    """The name of the backend under test (see the module docstring for how it is chosen)."""
    return _selected_name(request)


@pytest.fixture
def sandboxkit_capabilities(sandboxkit_backend_class: type) -> frozenset[str]:
    """The capabilities the backend under test declares."""
    return frozenset(getattr(sandboxkit_backend_class, "capabilities", frozenset()))


@pytest.fixture
def sandboxkit_options(sandboxkit_backend_name: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Options for every interpreter this test makes (a fresh dict; see the module docstring)."""
    merged: dict[str, Any] = {}
    merged.update(_class_attr(request, "sandboxkit_default_options", None) or {})
    merged.update(_class_attr(request, "options", None) or {})
    cli_backend = request.config.getoption("sandboxkit_backend")
    if not cli_backend or cli_backend == sandboxkit_backend_name:
        merged.update(request.config.stash.get(_cli_options_key, {}))
    return merged


class _Tracker:
    """Every interpreter a test made, to shut down when it ends (thread-safe: tools make some)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Any] = []

    def add(self, interpreter: Any) -> Any:
        with self._lock:
            self._items.append(interpreter)
        return interpreter

    def close_all(self) -> None:
        with self._lock:
            items, self._items = self._items[::-1], []
        failures = []
        for interpreter in items:
            try:
                interpreter.shutdown()
            except Exception as exc:  # shutdown must not raise; report it after closing the rest
                failures.append(f"{interpreter!r}: {type(exc).__name__}: {exc}")
        if failures:
            pytest.fail("shutdown() raised:\n" + "\n".join(failures), pytrace=False)


@pytest.fixture
def _sandboxkit_tracker() -> Iterator[_Tracker]:
    tracker = _Tracker()
    yield tracker
    tracker.close_all()


@pytest.fixture
def make_interpreter(
    sandboxkit_backend_name: str, sandboxkit_options: dict[str, Any], _sandboxkit_tracker: _Tracker
) -> Callable[..., Any]:
    """``make_interpreter(**extra)``: a new, unstarted interpreter on the backend under test."""
    from sandboxkit import api  # ``sandboxkit.interpreter(...)``, without the lazy attribute lookup

    def make(**extra: Any) -> Any:
        options = {**sandboxkit_options, **extra}
        return _sandboxkit_tracker.add(api.interpreter(sandboxkit_backend_name, **options))

    return make


@pytest.fixture
def make_factory(
    sandboxkit_backend_name: str, sandboxkit_options: dict[str, Any], _sandboxkit_tracker: _Tracker
) -> Callable[..., Any]:
    """``make_factory(**extra)``: an ``InterpreterFactory`` whose interpreters are shut down at teardown."""
    from sandboxkit import api

    def make(**extra: Any) -> Any:
        options = {**sandboxkit_options, **extra}
        return _tracking(api.factory(sandboxkit_backend_name, **options), _sandboxkit_tracker)

    return make


def _tracking(factory: Any, tracker: _Tracker) -> Any:
    """A copy of ``factory`` (same class, same configuration) that registers what it makes."""

    class TrackedFactory(type(factory)):  # type: ignore[misc]
        def __call__(self) -> Any:
            return tracker.add(super().__call__())

    tracked = TrackedFactory.__new__(TrackedFactory)
    tracked.__dict__.update(factory.__dict__)
    return tracked
