"""The ``nice`` backend: the sandbox driver as a local, low-priority Python process.

An example of a third-party sandboxkit backend. Each sandbox is a local Python process started
under ``nice`` (so model-written code yields the CPU to the rest of the host) in its own process
group, with a private scratch directory as its working directory and home, and only an allowlist
of host environment variables. Like any local process it is **not a security boundary**.

    import sandboxkit
    with sandboxkit.interpreter("nice", niceness=15) as interp:
        interp.execute("6 * 7")   # -> 42
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Mapping, Sequence

import sandboxkit
from sandboxkit.backend import Availability, Backend, Capability, SandboxProcess
from sandboxkit.errors import BackendStartError

__all__ = ["NiceBackend", "NiceOptions", "NiceProcess"]

#: Host environment variables the sandbox sees; nothing that could hold a secret.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


@dataclasses.dataclass(frozen=True)
class NiceOptions:
    """Options of the ``nice`` backend. Every field has a default; sandboxkit converts strings
    such as ``niceness="15"`` to the declared type and rejects unknown names."""

    #: How much to lower the sandbox's scheduling priority: 0 (none) to 19 (lowest priority).
    niceness: int = 10
    #: The Python (3.8 or newer) that runs the driver.
    python: str = sys.executable
    #: Extra host environment variable names to pass through.
    pass_env: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.niceness <= 19:
            # sandboxkit reports a ValueError from here as an OptionError naming this backend.
            raise ValueError(f"niceness must be between 0 and 19, got {self.niceness}")


class NiceProcess(SandboxProcess):
    """A sandbox: one local process group plus its scratch directory."""

    def __init__(self, popen: subprocess.Popen[bytes], workdir: str) -> None:
        self._popen = popen
        self._workdir = workdir
        self.stdin = popen.stdin  # type: ignore[assignment]
        self.stdout = popen.stdout  # type: ignore[assignment]
        self.stderr = popen.stderr  # type: ignore[assignment]

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        # The driver leads its own process group, so this also stops any children it started.
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.wait(5)
        for stream in (self.stdin, self.stdout, self.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        shutil.rmtree(self._workdir, ignore_errors=True)


class NiceBackend(Backend):
    name = "nice"
    description = "a local Python process at low CPU priority (not a security boundary)"
    # Not ISOLATED_ENV: a process running as the host's user can read the host's /proc/PID/environ.
    capabilities = frozenset({Capability.CHILD_PROCESSES, Capability.SCRATCH_DIR})
    Options = NiceOptions
    execution_instructions = (
        "Code runs as CPython with the standard library in a persistent local process. Variables, "
        "imports and functions persist across executions. Host tools and SUBMIT are global functions; "
        "tool arguments and results must be JSON-compatible. Printed output is returned to you."
    )
    options: NiceOptions

    @classmethod
    def check(cls) -> Availability:
        if os.name != "posix":
            return Availability.unusable("the nice backend needs a POSIX system")
        if shutil.which("nice") is None:
            return Availability.unusable("the 'nice' command was not found", "install coreutils")
        return Availability.ok()

    def launch(self, argv: Sequence[str], env: Mapping[str, str]) -> SandboxProcess:
        python = shutil.which(self.options.python)
        if python is None:
            raise BackendStartError(
                f"Python {self.options.python!r} was not found; set the 'python' option to a Python 3.8+ executable"
            )
        workdir = tempfile.mkdtemp(prefix="sandboxkit-nice-")
        passed = (*ENV_ALLOWLIST, *self.options.pass_env)
        sandbox_env = {name: os.environ[name] for name in passed if name in os.environ}
        sandbox_env.update({"HOME": workdir, "TMPDIR": workdir, "PYTHONUNBUFFERED": "1"})
        sandbox_env.update(env)
        # argv[0] names "python3"; run the configured Python instead, with the same arguments.
        command = ["nice", "-n", str(self.options.niceness), python, *argv[1:]]
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=sandbox_env,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise BackendStartError(f"could not run {command[0]!r}: {exc}") from exc
        return NiceProcess(popen, workdir)


@sandboxkit.hookimpl
def sandboxkit_register_backends(register):  # type: ignore[no-untyped-def]
    register(NiceBackend)
