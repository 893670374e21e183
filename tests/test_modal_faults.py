"""Fault tests for the ``modal`` backend, driving the real ``modal`` SDK against the emulator.

Each test breaks something underneath a running interpreter -- the sandbox is terminated from
outside, the driver's exec dies, the connections to Modal drop mid-execute, the sandbox's own
timeout fires -- and checks that sandboxkit either recovers transparently or ends the session
with a clear ``CodeInterpreterError`` that says what happened. Every call that could hang runs
under :func:`bounded`, so a hang fails the test instead of stalling the run, and every test checks
(through the tags the sandbox carries) that no sandbox is left running afterwards.

Every test runs twice: on an emulator whose sandboxes are local processes, and on one whose
sandboxes are Docker containers (skipped without an engine, except in CI, where that fails).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import Any, Callable, Iterator

import pytest

import sandboxkit
from sandboxkit.conformance.plugin import in_ci
from sandboxkit.conformance.suite import assert_fatal, bounded
from sandboxkit.errors import CodeInterpreterError, SandboxDiedError

if in_ci():
    import modal  # in CI the modal extra is installed: a missing SDK is a failure, not a skip
else:
    modal = pytest.importorskip("modal", reason="the modal extra (modal SDK) is not installed")

from sandboxkit_modal.emulator.testing import (  # noqa: E402,F401  (fixtures)
    modal_emulator,
    modal_emulator_isolated,
    modal_emulator_isolated_server,
    modal_emulator_server,
    sdk_pointed_at,
)

#: Longest a step that must not hang may take (s).
LIMIT = 60.0
#: The tag key that marks the sandboxes of one test.
TAG = "fault-test"


def run(fn: Callable[[], Any], limit: float = LIMIT) -> Any:
    """``fn()``, failing the test if it does not return within ``limit`` s."""
    return bounded(fn, limit)


def raised(fn: Callable[[], Any], limit: float = LIMIT) -> BaseException:
    """The exception ``fn()`` raises within ``limit`` s; fails the test if it returns or hangs."""
    try:
        value = bounded(fn, limit)
    except Exception as exc:  # the outcome under test
        return exc
    pytest.fail(f"expected a sandboxkit error, but the call returned {value!r}")


class Faulty:
    """Interpreters whose sandboxes carry a tag unique to one test, in an app of the test's own."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex
        self.app_name = f"sandboxkit-faults-{self.run_id[:12]}"
        self.interpreters: list[Any] = []

    def interpreter(self, **options: Any) -> Any:
        options.setdefault("timeout", 30)
        options.setdefault("grace", 2)
        interp = sandboxkit.interpreter(
            "modal", app_name=self.app_name, tags={TAG: self.run_id}, **options
        )
        self.interpreters.append(interp)
        run(interp.start)
        return interp

    def running(self) -> list[Any]:
        """This test's sandboxes that Modal lists as running."""
        app = run(lambda: modal.App.lookup(self.app_name, create_if_missing=True))
        return run(lambda: list(modal.Sandbox.list(app_id=app.app_id, tags={TAG: self.run_id})))

    def only_sandbox(self) -> Any:
        """The single running sandbox of this test, found by its tags."""
        sandboxes = self.running()
        assert len(sandboxes) == 1, f"expected one running sandbox, found {sandboxes}"
        return sandboxes[0]

    def shutdown(self) -> None:
        for interp in self.interpreters:
            run(interp.shutdown)


SANDBOX_MODES = ["process", "container"]


def need_containers(mode: str, available: bool, said: str = "") -> None:
    """Skip (fail in CI) a container-mode test when the emulator cannot run containers here."""
    if mode == "container" and not available:
        message = f"the Modal emulator cannot run sandboxes in Docker containers here {said}".rstrip()
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(params=SANDBOX_MODES)
def faulty(request: pytest.FixtureRequest) -> Iterator[Faulty]:
    """A :class:`Faulty` for one test, on an emulator in each sandbox mode; at its end every
    interpreter is shut down, and the test fails if one of its sandboxes is still running."""
    emulator = request.getfixturevalue("modal_emulator" if request.param == "process" else "modal_emulator_isolated")
    need_containers(request.param, emulator.sandboxes == "container", f"(it said: {emulator.log().strip()})")
    faults = Faulty()
    try:
        yield faults
    finally:
        faults.shutdown()
    assert faults.running() == [], "a sandbox was left running"


def assert_ended(interp: Any, sandbox: Any) -> None:
    """The sandbox has finished, and the interpreter refuses further work with a clear error."""
    assert run(sandbox.poll) is not None, "the sandbox is still running"
    later = raised(lambda: interp.execute("1 + 1"))
    assert isinstance(later, CodeInterpreterError), f"expected a CodeInterpreterError, got {later!r}"
    assert "create a new interpreter" in str(later).lower(), str(later)


# -- the sandbox is terminated from outside ------------------------------------------------------


def test_a_sandbox_terminated_from_outside_ends_the_execute_with_sandbox_died(faulty: Faulty) -> None:
    interp = faulty.interpreter()
    assert run(lambda: interp.execute("41 + 1")) == 42
    sandbox_id = faulty.only_sandbox().object_id

    def terminate_from_elsewhere() -> None:
        modal.Sandbox.from_id(sandbox_id).terminate()

    killer = threading.Timer(1.0, terminate_from_elsewhere)
    killer.start()
    try:
        # Well under both the sleep and the execute timeout: waiting for either is a hang here.
        error = raised(lambda: interp.execute("import time\ntime.sleep(30)"), limit=20)
    finally:
        killer.join()
    assert_fatal(error)
    assert isinstance(error, SandboxDiedError), repr(error)
    assert "terminated from outside" in str(error), str(error)
    assert "create a new interpreter" in str(error).lower(), str(error)
    assert_ended(interp, modal.Sandbox.from_id(sandbox_id))
    assert faulty.running() == []


# -- the driver's exec dies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected_code", "expected_text"),
    [
        ("import os\nos._exit(3)", 3, "exit code 3"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", None, "SIGKILL"),
    ],
    ids=["exit-3", "sigkill"],
)
def test_the_exec_dying_ends_the_session_with_its_exit_status(
    faulty: Faulty, code: str, expected_code: int | None, expected_text: str
) -> None:
    interp = faulty.interpreter()
    run(lambda: interp.execute("x = 1"))
    sandbox = faulty.only_sandbox()
    error = raised(lambda: interp.execute(code))
    assert_fatal(error)
    assert isinstance(error, SandboxDiedError), repr(error)
    assert expected_text in str(error), str(error)
    if expected_code is not None:
        assert error.exit_code == expected_code
    assert "create a new interpreter" in str(error).lower(), str(error)
    # The dead driver takes its sandbox with it: nothing is left to bill or to leak.
    assert_ended(interp, sandbox)
    assert faulty.running() == []


# -- the connections to Modal drop mid-execute ---------------------------------------------------


def drop_connections_to(port: int) -> int:
    """Shut down every TCP connection this process has open to 127.0.0.1:``port``; returns how many.

    Works on the sockets underneath the SDK's gRPC channels (found through ``/proc/self/fd``), so
    the SDK sees the connections break exactly as it would if the network dropped them.
    """
    dropped = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            duplicate = os.dup(int(name))
        except OSError:
            continue  # already closed (e.g. the listing's own descriptor)
        try:
            sock = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)  # not a socket: a leaked copy of a pipe end would keep it open
            continue
        try:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            if sock.getpeername() == ("127.0.0.1", port) and sock.getsockname()[1] != port:
                sock.shutdown(socket.SHUT_RDWR)
                dropped += 1
        except OSError:
            pass  # not connected
        finally:
            sock.close()  # only the duplicate: the SDK's descriptor stays, now on a dead connection
    return dropped


@pytest.fixture(params=SANDBOX_MODES)
def emulator_in_thread(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An emulator served from this process, so a test can count the RPCs it received."""
    from sandboxkit_modal.emulator import EmulatorConfig, EmulatorThread

    try:
        config = EmulatorConfig(sandboxes=request.param)
        thread = EmulatorThread(config)
    except ValueError as exc:
        need_containers(request.param, False, f"({exc})")
        raise
    with thread as emulator, sdk_pointed_at(emulator.environment()):
        yield emulator


def test_dropped_connections_mid_execute_are_recovered_transparently(emulator_in_thread: Any) -> None:
    port = int(emulator_in_thread.url.rsplit(":", 1)[1])
    calls = emulator_in_thread.server.calls
    faulty = Faulty()
    try:
        interp = faulty.interpreter()
        run(lambda: interp.execute("x = 41"))
        reads_before = calls["TaskCommandRouter/TaskExecStdioRead"]
        dropped: list[int] = []
        # Cut the connections while the code below sleeps between its two prints: the SDK must
        # reopen its output reads at the offsets it had reached and keep writing stdin.
        cutter = threading.Timer(0.7, lambda: dropped.append(drop_connections_to(port)))
        cutter.start()
        try:
            output = run(lambda: interp.execute(
                "import time\nprint('before', flush=True)\ntime.sleep(1.5)\nprint('after')"
            ))
        finally:
            cutter.join()
        assert dropped and dropped[0] >= 1, "no connection to the emulator was open to drop"
        assert output == "before\nafter\n"  # nothing lost, nothing read twice
        # The output streams really were reopened.
        assert calls["TaskCommandRouter/TaskExecStdioRead"] > reads_before
        # The session survived, with its state.
        assert run(lambda: interp.execute("x + 1")) == 42
        sandbox = faulty.only_sandbox()
    finally:
        faulty.shutdown()
    assert run(sandbox.poll) is not None, "the sandbox is still running after shutdown"
    assert faulty.running() == []


def test_connections_dropped_twice_still_allow_execute_and_shutdown(emulator_in_thread: Any) -> None:
    port = int(emulator_in_thread.url.rsplit(":", 1)[1])
    faulty = Faulty()
    try:
        interp = faulty.interpreter()
        run(lambda: interp.execute("x = 41"))
        assert drop_connections_to(port) >= 1  # between executes
        assert run(lambda: interp.execute("x + 1")) == 42
        assert drop_connections_to(port) >= 1  # and again
        assert run(lambda: interp.execute("print('again'); x")) == 41
        sandbox = faulty.only_sandbox()
    finally:
        faulty.shutdown()
    assert run(sandbox.poll) is not None, "the sandbox is still running after shutdown"
    assert faulty.running() == []


# -- the sandbox's own timeout fires -------------------------------------------------------------


def test_the_sandbox_timeout_ends_a_running_execute_with_sandbox_died(faulty: Faulty) -> None:
    interp = faulty.interpreter(sandbox_timeout=2, timeout=30)
    sandbox = faulty.only_sandbox()
    # The sleep outlasts the sandbox but not the execute timeout: the sandbox's end must be seen.
    error = raised(lambda: interp.execute("import time\ntime.sleep(10)"), limit=25)
    assert_fatal(error)
    assert isinstance(error, SandboxDiedError), repr(error)
    assert "sandbox_timeout" in str(error), str(error)
    assert "create a new interpreter" in str(error).lower(), str(error)
    assert_ended(interp, sandbox)
    assert faulty.running() == []
