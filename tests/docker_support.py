"""Helpers for the tests that run the ``docker`` backend on a real Docker engine.

The rule every docker test follows: with no engine answering, the test is skipped with the
reason, except when ``CI`` is true, where it fails (a docker test that skips in CI did not run).
The conformance kit's fixtures apply that rule themselves; other tests call
:func:`docker_required` (or use the ``docker_client`` fixture), which applies it too.

Containers are found through labels: every sandboxkit container names its host process
(``sandboxkit.pid``), and the tests add a label of their own (:data:`TEST_LABEL`) to pick out the
container of one interpreter.
"""

from __future__ import annotations

import functools
import os
import uuid
from typing import Any, Callable, Iterator

import pytest

from sandboxkit import ownership
from sandboxkit.conformance.plugin import in_ci
from sandboxkit.conformance.suite import bounded as _kit_bounded

__all__ = [
    "sandbox",
    "BACKEND",
    "TEST_LABEL",
    "bounded",
    "container_of",
    "docker_client",
    "docker_required",
    "engine_problem",
    "needs_linux_proc",
    "no_leaked_containers",
    "owned_containers",
    "tagged_interpreter",
]

BACKEND = "docker"
#: Set by scripts/test.sh, with the reason, when it could not get an engine and the test image.
UNAVAILABLE_ENV = "SANDBOXKIT_TEST_DOCKER_UNAVAILABLE"
#: A label the tests put on their containers, to find the container of one interpreter.
TEST_LABEL = "sandboxkit-test.case"
#: Skips a test that needs Linux's /proc on the host (how sandboxkit.ownership tells owners apart).
needs_linux_proc = pytest.mark.skipif(
    not (os.path.exists("/proc/self/stat") and os.path.exists("/proc/sys/kernel/random/boot_id")),
    reason="telling a dead owner process apart needs Linux's /proc on the host",
)


@functools.lru_cache(maxsize=1)
def engine_problem() -> str | None:
    """Why the docker backend cannot run here (no SDK, no engine, ...), or None when it can."""
    from sandboxkit import plugins

    told = os.environ.get(UNAVAILABLE_ENV)
    if told:  # scripts/test.sh could not get an engine or the test image
        return told

    try:
        backend_cls = plugins.load_backend(BACKEND)
        availability = backend_cls.check()
    except Exception as exc:  # not installed, disabled, or a broken plugin
        return f"the {BACKEND!r} backend cannot be loaded: {type(exc).__name__}: {exc}"
    if availability.usable:
        return None
    hint = f" ({availability.hint})" if availability.hint else ""
    return f"backend {BACKEND!r} is not usable here: {availability.reason}{hint}"


def docker_required() -> Any:
    """A Docker SDK client for the engine the backend uses; skips the test without one (fails in CI)."""
    problem = engine_problem()
    if problem is not None:
        if in_ci():
            pytest.fail(f"{problem}; CI is set, and a docker test that skips in CI did not run", pytrace=False)
        pytest.skip(problem)
    import docker

    return docker.from_env(timeout=60)


@pytest.fixture
def docker_client() -> Any:
    """A Docker SDK client (see :func:`docker_required`)."""
    client = docker_required()
    yield client
    client.close()


def owned_containers(client: Any, pid: int | None = None, **labels: str) -> list[Any]:
    """sandboxkit containers (running or not) owned by process ``pid`` (default: this one),
    narrowed by extra ``labels``."""
    wanted = {ownership.MARKER: "true", ownership.PID: str(pid or os.getpid()), **labels}
    return client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{k}={v}" for k, v in wanted.items()]})


def tagged_interpreter(**options: Any) -> tuple[Any, str]:
    """A new, unstarted docker interpreter whose container carries a unique :data:`TEST_LABEL`."""
    import sandboxkit

    tag = uuid.uuid4().hex
    labels = {**options.pop("labels", {}), TEST_LABEL: tag}
    return sandboxkit.interpreter(BACKEND, labels=labels, **options), tag


@pytest.fixture
def sandbox() -> Iterator[Callable[..., Any]]:
    """``sandbox(**options)``: a new, unstarted docker interpreter with a 60 s execute timeout by
    default (shut down at teardown); needs an engine."""
    docker_required()
    made = []

    def make(**options: Any) -> Any:
        options.setdefault("timeout", 60)
        interp, _ = tagged_interpreter(**options)
        made.append(interp)
        return interp

    yield make
    for interp in made:
        interp.shutdown()


def container_of(client: Any, tag: str) -> Any | None:
    """This process's container carrying test tag ``tag``, or None when there is none."""
    found = owned_containers(client, **{TEST_LABEL: tag})
    assert len(found) <= 1, f"several containers carry the test tag {tag}: {found}"
    return found[0] if found else None


@pytest.fixture
def no_leaked_containers() -> Iterator[None]:
    """Fails the test (at teardown) if it left a container of this process behind, and removes it.

    Does nothing when no engine answers: the test itself is skipped or failed then.
    """
    if engine_problem() is not None:
        yield
        return
    import docker

    client = docker.from_env(timeout=60)
    try:
        before = {c.id for c in owned_containers(client)}
        yield
        leaked = [c for c in owned_containers(client) if c.id not in before]
        for container in leaked:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        assert not leaked, f"the test left sandboxkit containers behind: {[c.name for c in leaked]}"
    finally:
        client.close()


def bounded(fn: Callable[[], Any], limit: float = 120.0) -> Any:
    """Call ``fn`` on a helper thread; fail the test as hung if it has not returned within ``limit``
    seconds (the kit's helper, with a default). Returns what ``fn`` returns, raises what it raises."""
    return _kit_bounded(fn, limit)
