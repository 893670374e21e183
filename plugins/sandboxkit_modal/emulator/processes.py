"""Local processes for emulated sandboxes: start them, and kill them with everything they started.

Every process starts a session of its own (``setsid``), so killing a process kills its session:
its process group, then (on Linux, through ``/proc``) any member that moved to another group.
A descendant that starts a session of its own escapes; this is an emulator, not a sandbox.

Processes get exactly the environment they are given (the emulator's own never leaks in) and no
controlling terminal. ``python``/``python3`` as the program name mean the configured Python.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from typing import Mapping, Sequence

__all__ = ["LocalProcess", "SpawnError", "kill_session", "resolve_argv", "spawn"]

#: Program names that mean "the sandbox's Python".
PYTHON_NAMES = frozenset({"python", "python3"})


class SpawnError(Exception):
    """The program could not be started; ``exit_code`` is what a shell would report (126/127)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve_argv(argv: Sequence[str], python: str) -> list[str]:
    """``argv`` with a bare ``python``/``python3`` program replaced by ``python``."""
    argv = list(argv)
    if argv and argv[0] in PYTHON_NAMES:
        argv[0] = python
    return argv


def _session_members(sid: int) -> list[int]:
    """Pids of the live processes in session ``sid`` (Linux; elsewhere, none)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # After the command name: state, ppid, pgrp, session, ...
        if len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def kill_session(sid: int) -> None:
    """SIGKILL process group ``sid`` and every process in session ``sid``."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class LocalProcess:
    """A started process: its pipes, its exit status, and a kill for its whole session."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self._reaped = False

    async def wait(self) -> int:
        """The exit status once the process has exited: a code, or ``-signal``."""
        code = await self._proc.wait()
        self._reaped = True
        return code

    def kill(self) -> None:
        """SIGKILL the process and its session, unless its pid now names someone else's session.

        Once the leader has been reaped its pid may be reused. A live process with that pid then
        belongs to a new session that is not ours, so it is left alone.
        """
        if self._reaped and os.path.exists(f"/proc/{self.pid}"):
            return
        kill_session(self.pid)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    stdout: bool = True,
    stderr: bool = True,
) -> LocalProcess:
    """Start ``argv`` with piped stdin, and stdout/stderr piped (True) or discarded (False)."""
    if not argv:
        raise SpawnError("no command given", 127)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        raise SpawnError(f"{argv[0]}: command not found ({exc.strerror})", 127) from exc
    except PermissionError as exc:
        raise SpawnError(f"{argv[0]}: permission denied ({exc.strerror})", 126) from exc
    except OSError as exc:
        raise SpawnError(f"{argv[0]}: cannot run ({exc.strerror or exc})", 126) from exc
    return LocalProcess(proc)
