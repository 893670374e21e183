"""Start the emulator for tests: a helper that runs the command, and pytest fixtures.

:func:`start_emulator` runs ``python -m sandboxkit_modal.emulator`` (what the
``sandboxkit-modal-emulator`` command runs) on a free port and reads the environment it prints;
on Linux the emulator stops (removing its sandboxes) if the process that started it dies.
The fixtures:

``modal_emulator_server`` (session)
    One emulator for the whole test session, running sandboxes as local processes (fast, and the
    same on every machine), stopped (with every sandbox process) at the end.
``modal_emulator`` (function)
    The same emulator, with its environment variables set in this process for one test, so the
    ``modal`` SDK talks to it. The SDK keeps one client per process, bound to the server it first
    saw; the fixture drops that cached client before and after the test.
``modal_emulator_isolated_server`` (session) and ``modal_emulator_isolated`` (function)
    The same pair for an emulator in ``--sandboxes auto`` mode: each sandbox is a hardened Docker
    container when an engine with the image answers, so Modal's isolation is real; otherwise
    local processes. :attr:`RunningEmulator.sandboxes` says which.

Use them from a test module with ``from sandboxkit_modal.emulator.testing import modal_emulator,
modal_emulator_server``, or register this module as a pytest plugin. Importing it needs only the
standard library and pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytest

__all__ = [
    "RunningEmulator",
    "forget_sdk_client",
    "modal_emulator",
    "modal_emulator_isolated",
    "modal_emulator_isolated_server",
    "modal_emulator_server",
    "sdk_pointed_at",
    "start_emulator",
]

#: The directory that holds the ``sandboxkit_modal`` package (put on the child's PYTHONPATH, so a
#: source checkout works even where the package is not installed).
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class RunningEmulator:
    """An emulator process started by :func:`start_emulator`."""

    def __init__(self, process: subprocess.Popen[str], lines: list[str], workdir: str, record_dir: str) -> None:
        self.process = process
        #: The ``NAME=value`` lines it printed, in order.
        self.lines = lines
        #: The environment those lines set.
        self.env: dict[str, str] = dict(line.split("=", 1) for line in lines)
        self.url = self.env["MODAL_SERVER_URL"]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.token_id = self.env["MODAL_TOKEN_ID"]
        self.token_secret = self.env["MODAL_TOKEN_SECRET"]
        self.record_dir = record_dir
        self._workdir = workdir
        #: Where its sandboxes run: "container" or "process" (from what it said at start).
        self.sandboxes = "container" if "sandboxes run in hardened Docker containers" in self.log() else "process"

    def record(self, sandbox_id: str) -> dict[str, Any]:
        """What the SDK asked for when it created ``sandbox_id`` (see ``--record-dir``)."""
        with open(os.path.join(self.record_dir, f"{sandbox_id}.json"), encoding="utf-8") as f:
            return json.load(f)

    def log(self) -> str:
        """Everything the emulator wrote to standard error so far."""
        try:
            with open(os.path.join(self._workdir, "stderr.log"), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the emulator (SIGTERM, then SIGKILL after ``timeout`` s); returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        return self.process.returncode


def start_emulator(
    *args: str, python: str = sys.executable, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> RunningEmulator:
    """Run the emulator with extra command-line ``args``; return once it has printed its environment.

    Fails with ``RuntimeError`` (carrying its standard error) if it exits or stays silent for
    ``timeout`` s first.
    """
    workdir = tempfile.mkdtemp(prefix="sandboxkit-modal-emulator-test-")
    record_dir = os.path.join(workdir, "records")
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, child_env.get("PYTHONPATH")]))
    stderr = open(os.path.join(workdir, "stderr.log"), "w", encoding="utf-8")
    command: Sequence[str] = [python, "-m", "sandboxkit_modal.emulator", "--record-dir", record_dir, *args]
    with stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=child_env, text=True,
            preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None,
        )
    lines: "queue.Queue[str | None]" = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
            if not line.strip():
                return
        lines.put(None)

    threading.Thread(target=read, name="sandboxkit-modal-emulator-stdout", daemon=True).start()
    printed: list[str] = []
    emulator = None
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                raise RuntimeError("the Modal emulator exited before printing its environment")
            if not line:
                break
            printed.append(line)
        _wait_for_banner(workdir, process, timeout)
        emulator = RunningEmulator(process, printed, workdir, record_dir)
        return emulator
    except (queue.Empty, RuntimeError, KeyError, ValueError) as exc:
        process.kill()
        process.wait()
        with open(os.path.join(workdir, "stderr.log"), encoding="utf-8", errors="replace") as f:
            log = f.read()
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"the Modal emulator did not start ({exc!r}); it said:\n{log}") from None


def _stop_with_parent() -> None:
    """In the emulator's process before it runs: get SIGTERM (a clean stop, which removes its
    sandboxes) when the process that started it dies, so a crashed test run leaves none behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _wait_for_banner(workdir: str, process: subprocess.Popen[str], timeout: float) -> None:
    """Wait until the emulator's stderr has its "serving on" line (written right after its environment)."""
    deadline = time.monotonic() + timeout
    path = os.path.join(workdir, "stderr.log")
    while time.monotonic() < deadline and process.poll() is None:
        with open(path, encoding="utf-8", errors="replace") as f:
            if "serving on" in f.read():
                return
        time.sleep(0.01)
    raise RuntimeError("the Modal emulator printed its environment but not what it serves")


def forget_sdk_client() -> None:
    """Drop the ``modal`` SDK's cached client, so the next SDK call reads the environment afresh."""
    client_module = sys.modules.get("modal.client")
    client_class = getattr(client_module, "_Client", None)
    if client_class is not None and hasattr(client_class, "_set_env_client"):
        client_class._set_env_client(None)


@pytest.fixture(scope="session")
def modal_emulator_server() -> Iterator[RunningEmulator]:
    """One Modal emulator for the test session; sandboxes are local processes."""
    emulator = start_emulator("--sandboxes", "process")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def modal_emulator_isolated_server() -> Iterator[RunningEmulator]:
    """One Modal emulator for the test session; sandboxes are Docker containers where possible."""
    emulator = start_emulator("--sandboxes", "auto")
    try:
        yield emulator
    finally:
        emulator.stop()


@contextlib.contextmanager
def sdk_pointed_at(env: Mapping[str, str]) -> Iterator[None]:
    """Inside the block, the ``modal`` SDK in this process talks to the emulator whose
    environment is ``env`` (its printed variables); afterwards the environment is as it was."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    forget_sdk_client()
    try:
        yield
    finally:
        forget_sdk_client()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def modal_emulator(modal_emulator_server: RunningEmulator) -> Iterator[RunningEmulator]:
    """The session's Modal emulator, with the ``modal`` SDK in this process pointed at it for one test."""
    with sdk_pointed_at(modal_emulator_server.env):
        yield modal_emulator_server


@pytest.fixture
def modal_emulator_isolated(modal_emulator_isolated_server: RunningEmulator) -> Iterator[RunningEmulator]:
    """The session's container-mode emulator, with the ``modal`` SDK pointed at it for one test."""
    with sdk_pointed_at(modal_emulator_isolated_server.env):
        yield modal_emulator_isolated_server
