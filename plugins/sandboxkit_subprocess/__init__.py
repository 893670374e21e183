"""The ``subprocess`` backend: the driver in a local Python process. The embedded default.

It is **not a security boundary**: the process runs as the host user, can read what that user
can read (the host process's environment through ``/proc`` included) and reach the network. It
keeps the model's code out of the host's memory and stdout, gives it a minimal environment and a
private scratch directory, limits resources when asked, and dies with its host; use ``docker`` or
``modal`` for untrusted code.

Each sandbox is a small supervisor process (:data:`SUPERVISOR`) with the driver as its only
child. On Linux the kernel signals the supervisor when the host process dies
(``PR_SET_PDEATHSIG``), the driver is SIGKILLed when the supervisor dies, and the supervisor is
the child subreaper of everything the sandbox starts, so it can kill all of it: no cooperation
from the sandbox's code is needed, whatever signals it ignores.
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

#: How long :meth:`SubprocessProcess.kill` lets the supervisor kill the sandbox's processes
#: before it kills the supervisor's process group itself.
_SUPERVISOR_STOP_SECONDS = 2.0

#: The supervisor, run as ``PYTHON -I -c SUPERVISOR HOST_PID ARGV...`` (ARGV: the driver command
#: without its ``python3``). Python 3.8+, stdlib only. It forks the driver, which runs ARGV in the
#: same interpreter when ARGV is ``-I -c CODE ...`` (no second start-up) and execs it otherwise,
#: then waits for it and exits as it did. Linux: SIGHUP arrives when the thread that forked the
#: supervisor exits (PR_SET_PDEATHSIG), which is a host death only once the parent pid is no
#: longer HOST_PID (another thread of the host inherits the supervisor otherwise); SIGTERM is the
#: host asking it to stop. Either way it SIGKILLs every process below it (it is their child
#: subreaper, so none escapes by leaving the process group or the session) and dies by SIGKILL.
#: The driver gets SIGKILL if the supervisor dies in any way. Elsewhere it polls its parent pid
#: and kills its process group.
SUPERVISOR = r"""
import os, signal, sys, time
host = int(sys.argv[1])
command = sys.argv[2:]
libc = None
if sys.platform.startswith("linux"):
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:
        libc = None


def prctl(option, value):
    if libc is None:
        return False
    c = ctypes.c_ulong
    return libc.prctl(ctypes.c_int(option), c(value), c(0), c(0), c(0)) == 0


use_proc = os.path.exists("/proc/self/stat")
driver = 0
status = None


def descendants():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/" + name + "/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2:].split()[1]), []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


def reap():
    global status
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        if pid == driver:
            status = st


def kill_descendants():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP, signal.SIGTERM])
    if not use_proc:
        os.killpg(0, signal.SIGKILL)
    end = time.monotonic() + 5
    while True:
        for pid in descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not reap() or time.monotonic() > end:
            return
        time.sleep(0.005)


def stop(*_):
    kill_descendants()
    os.kill(os.getpid(), signal.SIGKILL)


def on_parent_signal(*_):
    if os.getppid() != host:
        stop()


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, on_parent_signal)
watched = prctl(1, signal.SIGHUP)
prctl(36, 1)
if os.getppid() != host:
    os._exit(1)
supervisor = os.getpid()
driver = os.fork()
if driver == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    prctl(1, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(1)
    if command[:2] == ["-I", "-c"] and len(command) > 2:
        sys.argv = ["-c"] + command[3:]
        exec(compile(command[2], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        os.execv(sys.executable, [sys.executable] + command)
else:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while status is None:
        if watched:
            try:
                pid, st = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == driver:
                status = st
        else:
            if not reap():
                break
            if os.getppid() != host:
                stop()
            time.sleep(0.2)
    kill_descendants()
    if status is None:
        os._exit(1)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if not prctl(4, 0):
            try:
                import resource
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            except Exception:
                pass
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))
"""


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
    """A sandbox's supervisor (see :data:`SUPERVISOR`) in its own session and process group, with
    the driver as its child and a private scratch directory; its exit status is the driver's."""

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
        """Ask the supervisor to kill every process of the sandbox; if it has not within
        :data:`_SUPERVISOR_STOP_SECONDS`, SIGKILL its process group (the driver then dies with it)."""
        if self._popen.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT: sandbox code may have stopped it
                try:
                    self._popen.send_signal(sig)
                except OSError:
                    pass
            try:
                self._popen.wait(_SUPERVISOR_STOP_SECONDS)
            except subprocess.TimeoutExpired:
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
    description = "a local Python process (minimal env, scratch dir, dies with its host; not a security boundary)"
    # Not ISOLATED_ENV: code running as the host's user reads the host's environment in /proc.
    capabilities = frozenset({Capability.CHILD_PROCESSES, Capability.SCRATCH_DIR, Capability.MEMORY_LIMIT})
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
        command = [self.options.python, "-I", "-c", SUPERVISOR, str(os.getpid()), *argv[1:]]
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
