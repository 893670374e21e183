"""The orphan test: a sandbox whose host process was killed does not live on unnoticed.

:class:`OrphanSuite` starts a separate host process (``sys.executable`` running
:data:`HOST_SCRIPT`) that makes ``sandboxkit.interpreter(backend, **options)``, has the sandbox
report who it is, then runs sandbox code that ignores SIGTERM and SIGHUP and swallows every
exception in a busy loop. The test SIGKILLs that host and then requires, within
``orphan_limit`` seconds, one of:

(B) the sandbox process is gone. This can only be checked when the sandbox runs in the test's
    own pid namespace (a local process): its pid is then missing, a zombie, or a process with
    another start time.
(A) the backend's ``sandboxkit_gc`` hook, in a dry run, names a sandbox "of pid HOST_PID" (the
    dead host); a real ``gc`` then removes it, and a second dry run no longer names it.

Anything else fails the test with what it saw. The options of the test class (``options``,
``--sandboxkit-option``) reach the host process as JSON. Linux hosts only: it reads ``/proc``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, ClassVar

import pytest

from sandboxkit.conformance.suite import SuiteBase, bounded
from sandboxkit.ownership import process_start_time

__all__ = ["HOST_SCRIPT", "OrphanSuite"]

#: Sandbox code: its pid, pid namespace and start time (field 22 of /proc/self/stat).
REPORT_CODE = textwrap.dedent("""
    import os
    def _identity():
        try:
            with open("/proc/self/stat") as f:
                stat = f.read()
            return {"pid": os.getpid(), "pid_ns": os.readlink("/proc/self/ns/pid"),
                    "start": stat[stat.rfind(")") + 2:].split()[19]}
        except OSError:
            return {"pid": os.getpid(), "pid_ns": None, "start": None}
    _identity()
""")

#: Sandbox code that tells the host it started (a tool call), then never stops on its own.
SPIN_CODE = textwrap.dedent("""
    import signal
    for _name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), signal.SIG_IGN)
    spinning()
    while True:
        try:
            pass
        except BaseException:
            pass
""")

#: The host process: ``python -c HOST_SCRIPT BACKEND OPTIONS_JSON REPORT_CODE SPIN_CODE``. It
#: prints the sandbox's identity as one JSON line, then "spinning" once the endless code runs.
HOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import sandboxkit

    name, options, report_code, spin_code = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    interp = sandboxkit.interpreter(name, **options)

    def spinning():
        print("spinning", flush=True)

    interp.tools["spinning"] = spinning
    print(json.dumps(interp.execute(report_code)), flush=True)
    interp.execute(spin_code)
    print("the endless code returned", flush=True)
""")


def _own_pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _gc(backend: str, dry_run: bool) -> list[str]:
    from sandboxkit import plugins

    try:
        return plugins.collect_garbage([backend], dry_run=dry_run).get(backend, [])
    except Exception as exc:  # the plugin is not there as a plugin: it has no gc to ask
        return [f"error: {type(exc).__name__}: {exc}"]


class OrphanSuite(SuiteBase):
    """A sandbox whose host was SIGKILLed while its code spins is stopped, or found by ``gc``."""

    #: Seconds the sandbox (or the engine) has to end it, or gc to name it, after the host died.
    orphan_limit: ClassVar[float] = 60.0
    #: Seconds between checks.
    orphan_poll: ClassVar[float] = 0.5

    @pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the orphan test reads Linux's /proc")
    def test_sandbox_of_a_killed_host_is_stopped_or_collected(
        self, sandboxkit_backend_name: str, sandboxkit_options: dict[str, Any]
    ) -> None:
        name = sandboxkit_backend_name
        with tempfile.TemporaryFile() as host_stderr:
            host = subprocess.Popen(
                [sys.executable, "-c", HOST_SCRIPT, name, json.dumps(sandboxkit_options, default=str),
                 REPORT_CODE, SPIN_CODE],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=host_stderr, text=True,
            )
            identity: dict[str, Any] = {}
            try:
                assert host.stdout is not None
                for expected in ("identity", "spinning"):
                    line = bounded(host.stdout.readline, self.hang_limit)
                    if not line:
                        host.wait(self.hang_limit)
                        host_stderr.seek(0)
                        pytest.fail(f"the host process ended (exit {host.returncode}) before reporting the "
                                    f"sandbox's {expected}:\n{host_stderr.read().decode(errors='replace')}",
                                    pytrace=False)
                    if expected == "identity":
                        identity = json.loads(line)
                    else:
                        assert line.strip() == "spinning", f"unexpected host output: {line!r}"
                host.send_signal(signal.SIGKILL)
                host.wait(self.hang_limit)
                outcome = bounded(lambda: self._await_end(name, host.pid, identity), self.orphan_limit + self.hang_limit)
            finally:
                if host.poll() is None:
                    host.kill()
                    host.wait()
                if host.stdout is not None:
                    host.stdout.close()
        if outcome is not None:
            self._clean_up(name, identity)
            pytest.fail(outcome, pytrace=False)

    def _await_end(self, name: str, host_pid: int, identity: dict[str, Any]) -> str | None:
        """Wait for (B) or (A); return None when one held, else a description of what was seen."""
        pid, started = identity.get("pid"), identity.get("start")
        local = bool(identity.get("pid_ns")) and identity.get("pid_ns") == _own_pid_namespace() and bool(started)
        names_host = re.compile(rf"\bof pid {host_pid}\b")
        deadline = time.monotonic() + self.orphan_limit
        seen: list[str] = []
        while True:
            if local and process_start_time(int(pid)) != started:  # type: ignore[arg-type]
                return None  # (B)
            seen = _gc(name, dry_run=True)
            if any(names_host.search(line) for line in seen):  # (A)
                removed = _gc(name, dry_run=False)
                again = _gc(name, dry_run=True)
                left = [line for line in again if names_host.search(line)]
                if left:
                    return (f"gc named the sandbox of the killed host (pid {host_pid}) and was run, but a "
                            f"second dry run still names it: {left}; gc said: {removed}")
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(self.orphan_poll)
        where = (f"its process {pid} (start time {started}) is still running in this pid namespace" if local
                 else f"it runs in another pid namespace ({identity.get('pid_ns')}), so only gc can show it ended")
        return (f"{self.orphan_limit:g}s after its host process (pid {host_pid}) was SIGKILLed, the sandbox of "
                f"backend {name!r} is neither gone nor named by 'sandboxkit gc --dry-run': {where}; the gc dry "
                f"run said: {seen or 'nothing'}")

    @staticmethod
    def _clean_up(name: str, identity: dict[str, Any]) -> None:
        """After a failure: kill the sandbox process if it is ours to see, and run gc."""
        pid, started = identity.get("pid"), identity.get("start")
        if pid and started and identity.get("pid_ns") == _own_pid_namespace() and process_start_time(int(pid)) == started:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        _gc(name, dry_run=False)
