"""A ``subprocess`` sandbox dies with its host, whatever its code does with signals.

Each test starts a real host process, has it launch a sandbox through the backend, and SIGKILLs
the host. The sandbox's command is not the driver but code that ignores every catchable signal,
spins, and starts children that leave its process group and session; a second process keeps
the sandbox's stdin open, so nothing it could notice on its own channel tells it the host is gone.
Only the backend's mechanism can end it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sandboxkit.conformance.suite import bounded
from sandboxkit_subprocess import SUPERVISOR, SubprocessBackend, SubprocessOptions

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="dying with the host is implemented with Linux's PR_SET_PDEATHSIG"
)

#: Ignores every catchable signal it can, starts a child in its process group and an orphan in a
#: session of its own (its parent exits at once), reports the three pids, then spins forever
#: swallowing every exception.
SANDBOX = textwrap.dedent("""
    import json, os, signal, time
    for number in set(range(1, signal.NSIG)) - {signal.SIGCHLD}:  # SIGCHLD: waitpid must work
        try:
            signal.signal(number, signal.SIG_IGN)
        except (OSError, ValueError, RuntimeError):
            pass

    def linger():
        while True:
            try:
                time.sleep(1)
            except BaseException:
                pass

    child = os.fork()
    if child == 0:
        linger()
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode() + b"\\n")
            linger()
        os._exit(0)
    os.waitpid(middle, 0)
    orphan = int(os.read(r, 64))
    os.write(1, (json.dumps([os.getpid(), child, orphan]) + "\\n").encode())
    while True:
        try:
            pass
        except BaseException:
            pass
""")

#: The host: launches SANDBOX from the main thread or from a thread that exits at once, hands
#: the sandbox's stdin to a keeper process that outlives the host, reports the sandbox's pids and
#: the keeper's, then waits to be killed.
HOST = textwrap.dedent("""
    import json, subprocess, sys, threading, time
    from sandboxkit_subprocess import SubprocessBackend, SubprocessOptions

    sandbox_code, where = sys.argv[1], sys.argv[2]
    backend = SubprocessBackend(SubprocessOptions())
    launched = []

    def launch():
        launched.append(backend.launch(["python3", "-I", "-c", sandbox_code], {}))

    if where == "thread":
        thread = threading.Thread(target=launch)
        thread.start()
        thread.join()
    else:
        launch()
    process = launched[0]
    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              pass_fds=[process.stdin.fileno()])
    pids = json.loads(process.stdout.readline())
    print(json.dumps({"sandbox": pids, "keeper": keeper.pid}), flush=True)
    time.sleep(600)
""")

HANG_LIMIT = 60.0


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat, or None when no such process is running (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def alive(processes: dict[int, str]) -> list[int]:
    """The pids in ``processes`` (pid -> start time) still running as the same process."""
    return [pid for pid, started in processes.items() if start_time(pid) == started]


def wait_until_gone(processes: dict[int, str]) -> list[int]:
    """Poll until none of ``processes`` runs; returns the ones still running at the bound."""
    def poll() -> list[int]:
        while alive(processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        return alive(processes)

    deadline = time.monotonic() + HANG_LIMIT / 2
    return bounded(poll, HANG_LIMIT)


def kill_all(processes: dict[int, str]) -> None:
    for pid in alive(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def host_report(host: subprocess.Popen[str]) -> dict:
    line = bounded(host.stdout.readline, HANG_LIMIT)
    assert line, f"the host process ended early: {host.stderr.read() if host.poll() is not None else ''}"
    return json.loads(line)


@pytest.mark.parametrize("where", ["main", "thread"])
def test_sandbox_ignoring_signals_dies_with_its_host(where):
    host = subprocess.Popen([sys.executable, "-c", HOST, SANDBOX, where],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched: dict[int, str] = {}
    try:
        report = host_report(host)
        keeper = report["keeper"]
        watched = {pid: start_time(pid) for pid in report["sandbox"]}
        assert all(watched.values()), f"a sandbox process was not running once reported: {watched}"
        if where == "thread":
            # The thread that launched the sandbox has exited: that alone must not end it.
            time.sleep(1.0)
            assert alive(watched) == list(watched), "the sandbox died when the thread that started it exited"
        host.kill()
        host.wait(HANG_LIMIT)
        left = wait_until_gone(watched)
        assert not left, f"still running {HANG_LIMIT / 2:g}s after the host was killed: {left} of {list(watched)}"
    finally:
        kill_all(watched)
        if host.poll() is None:
            host.kill()
        host.wait()
        try:
            os.kill(report["keeper"], signal.SIGKILL)
        except (NameError, UnboundLocalError, OSError):
            pass


def test_kill_stops_processes_that_left_the_process_group():
    process = SubprocessBackend(SubprocessOptions()).launch(["python3", "-I", "-c", SANDBOX], {})
    pids = json.loads(bounded(process.stdout.readline, HANG_LIMIT))
    watched = {pid: start_time(pid) for pid in pids}
    try:
        bounded(process.kill, HANG_LIMIT)
        assert process.poll() is not None
        assert not wait_until_gone(watched)
    finally:
        kill_all(watched)


def test_supervisor_whose_host_is_already_gone_starts_nothing(tmp_path):
    # The supervisor is told a host pid that is not its parent: as when the host died before the
    # supervisor could ask to be told of its death. It must exit without running the sandbox.
    marker = tmp_path / "ran"
    sandbox = f"open({str(marker)!r}, 'w').close()"
    done = subprocess.run([sys.executable, "-I", "-c", SUPERVISOR, "1", "-I", "-c", sandbox],
                          capture_output=True, timeout=HANG_LIMIT)
    assert done.returncode == 1
    assert not marker.exists()


@pytest.mark.parametrize("code, expected", [
    ("import os; os._exit(7)", 7),
    ("raise SystemExit(3)", 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ("import os, signal; os.kill(os.getpid(), signal.SIGXCPU)", -signal.SIGXCPU),
])
def test_exit_status_is_the_sandboxs(code, expected):
    process = SubprocessBackend(SubprocessOptions()).launch(["python3", "-I", "-c", code], {})
    try:
        assert bounded(lambda: process.wait(HANG_LIMIT), HANG_LIMIT + 5) == expected
    finally:
        process.kill()
