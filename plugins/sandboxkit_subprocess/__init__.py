"""The ``subprocess`` backend: the driver in a local Python process. The embedded default.

It is **not a security boundary**: the process runs as the host user, can read what that user
can read and reach the network. It separates the model's code from the host's memory, stdout
and environment, and limits resources when asked; use ``docker`` or ``modal`` for untrusted code.
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

__all__ = ["SubprocessBackend", "SubprocessOptions"]

#: Host variables a sandbox process receives by default: none that carry secrets.
DEFAULT_ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT")


@dataclasses.dataclass(frozen=True)
class SubprocessOptions:
    """Options of the ``subprocess`` backend."""

    #: The Python that runs the driver (3.8 or newer).
    python: str = sys.executable
    #: Further host environment variable names to pass through, beyond the safe default allowlist.
    pass_env: tuple[str, ...] = ()
    #: Extra environment variables to set in the sandbox.
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Address-space limit in MiB (Linux); memory bombs then fail with MemoryError.
    memory_mb: int | None = None
    #: CPU-time limit in seconds; the process is killed when it is used up.
    cpu_seconds: int | None = None
    #: Limit on processes for the user (RLIMIT_NPROC; counts all the user's processes, and root
    #: is exempt).
    max_processes: int | None = None
    #: Largest file the sandbox may write, in MiB; bigger writes fail with an OSError.
    max_file_mb: int | None = None


class SubprocessProcess(SandboxProcess):
    """A local process in its own session and process group, with a private scratch directory."""

    def __init__(self, popen: subprocess.Popen[bytes], workdir: str) -> None:
        self._popen = popen
        self._workdir = workdir
        assert popen.stdin and popen.stdout and popen.stderr
        self.stdin = popen.stdin
        self.stdout = popen.stdout
        self.stderr = popen.stderr

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self._popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.stdin, self.stdout, self.stderr):
            try:
                stream.close()
            except Exception:
                pass
        shutil.rmtree(self._workdir, ignore_errors=True)

    def describe_exit(self, code: int | None) -> str:
        text = super().describe_exit(code)
        if code == -signal.SIGXCPU:
            text += " (the cpu_seconds limit was reached)"
        return text


class SubprocessBackend(Backend):
    name = "subprocess"
    description = "a local Python process (isolated env and scratch dir; not a security boundary)"
    capabilities = frozenset({Capability.ISOLATED_ENV, Capability.CHILD_PROCESSES, Capability.SCRATCH_DIR,
                              Capability.MEMORY_LIMIT})
    Options = SubprocessOptions
    execution_instructions = (
        "Code runs as CPython in a persistent local process with the standard library. Variables, imports "
        "and functions persist across executions. Host tools and SUBMIT are global functions; tool "
        "arguments and results must be JSON-compatible. Output of print is returned to you."
    )
    options: SubprocessOptions

    @classmethod
    def check(cls) -> Availability:
        if os.name != "posix":
            return Availability.unusable("the subprocess backend needs a POSIX system", "use the docker backend")
        return Availability.ok()

    def _environment(self, extra: Mapping[str, str], workdir: str) -> dict[str, str]:
        names = set(DEFAULT_ENV_ALLOWLIST) | set(self.options.pass_env)
        env = {name: os.environ[name] for name in names if name in os.environ}
        env.update({"HOME": workdir, "TMPDIR": workdir, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"})
        env.update(self.options.env)
        env.update(extra)
        limits = self._rlimits()
        if limits:
            env["SANDBOXKIT_RLIMITS"] = limits
        return env

    def _rlimits(self) -> str:
        o = self.options
        parts = []
        if o.memory_mb:
            parts.append(f"as={o.memory_mb * 1024 * 1024}")
        if o.cpu_seconds:
            parts.append(f"cpu={o.cpu_seconds}")
        if o.max_processes:
            parts.append(f"nproc={o.max_processes}")
        if o.max_file_mb:
            parts.append(f"fsize={o.max_file_mb * 1024 * 1024}")
        return ",".join(parts)

    def launch(self, argv: Sequence[str], env: Mapping[str, str]) -> SandboxProcess:
        workdir = tempfile.mkdtemp(prefix="sandboxkit-")
        command = [self.options.python, *argv[1:]]
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=self._environment(env, workdir),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise BackendStartError(
                f"could not start {self.options.python!r}: {exc}; set the 'python' option to a Python 3.8+ executable"
            ) from exc
        return SubprocessProcess(popen, workdir)


@sandboxkit.hookimpl
def sandboxkit_register_backends(register):  # type: ignore[no-untyped-def]
    register(SubprocessBackend)
