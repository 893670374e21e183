"""The Modal emulator, driven end to end by the real, unmodified ``modal`` SDK (no mocks).

One emulator process (``python -m sandboxkit_modal.emulator``, what the
``sandboxkit-modal-emulator`` command runs) serves the session; each test points the SDK in this
process at it and works in an app of its own, so listings see only the test's sandboxes. Every
sandbox a test creates is terminated at its end, and the test fails if one is left running.
Calls that could hang run under a bound (``bounded``), so a hang fails the test instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import sys
import textwrap
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from sandboxkit.conformance.plugin import in_ci
from sandboxkit.conformance.suite import bounded

if in_ci():
    import modal  # in CI the modal extra is installed: a missing SDK is a failure, not a skip
else:
    modal = pytest.importorskip("modal", reason="the modal extra (modal SDK) is not installed")

from modal.exception import AuthError, NotFoundError, SandboxTimeoutError, UnimplementedError  # noqa: E402

from sandboxkit_modal.emulator.runtimes import DEFAULT_PATH  # noqa: E402
from sandboxkit_modal.emulator.testing import (  # noqa: E402,F401  (fixtures)
    RunningEmulator,
    modal_emulator,
    modal_emulator_server,
    sdk_pointed_at,
    start_emulator,
)

#: Longest any single step may take before the test is failed as hung (s).
LIMIT = 60.0

#: Echoes each stdin line back upper-cased, one write per line: how the sandboxkit driver talks.
UPPER_ECHO = textwrap.dedent(
    """
    import sys
    for line in sys.stdin:
        sys.stdout.write(line.upper())
        sys.stdout.flush()
    """
)


def run(fn: Callable[[], Any], limit: float = LIMIT) -> Any:
    """``fn()``, failing the test if it does not return within ``limit`` s."""
    return bounded(fn, limit)


def gone_or_zombie(pid: int) -> bool:
    """Whether ``pid`` no longer runs (it may linger as a zombie until its new parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``limit`` s pass; returns its last value."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc"), reason="inspects processes through /proc (Linux)")


class Sandboxes:
    """Creates sandboxes in one app of its own, and terminates all of them at the end."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.created: list[Any] = []

    def create(self, *args: str, **kwargs: Any) -> Any:
        sandbox = run(lambda: modal.Sandbox.create(*args, app=self.app, **kwargs))
        self.created.append(sandbox)
        return sandbox

    def running(self) -> list[str]:
        return sorted(s.object_id for s in run(lambda: list(modal.Sandbox.list(app_id=self.app.app_id))))

    def close(self) -> None:
        for sandbox in self.created:
            run(sandbox.terminate)


@pytest.fixture
def sandboxes(modal_emulator: RunningEmulator) -> Iterator[Sandboxes]:
    app = run(lambda: modal.App.lookup(f"emulator-test-{uuid.uuid4().hex[:12]}", create_if_missing=True))
    factory = Sandboxes(app)
    try:
        yield factory
    finally:
        factory.close()
    assert factory.running() == [], "a sandbox was left running"


# -- the command ---------------------------------------------------------------------------------


def test_command_prints_the_sdk_environment_then_an_empty_line() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    emulator = start_emulator(
        "--port", str(port), "--token-id", "ak-test", "--token-secret", "as-test", "--secret", "cli-secret=KEY=value"
    )  # fmt: skip
    try:
        names = [line.split("=", 1)[0] for line in emulator.lines]
        assert names == [
            "MODAL_SERVER_URL",
            "MODAL_TOKEN_ID",
            "MODAL_TOKEN_SECRET",
            "MODAL_CONFIG_PATH",
            "NO_PROXY",
            "MODAL_DISABLE_API_PROXY",
        ]
        assert emulator.env["MODAL_SERVER_URL"] == f"http://127.0.0.1:{port}"
        assert (emulator.token_id, emulator.token_secret) == ("ak-test", "as-test")
        assert not os.path.exists(emulator.env["MODAL_CONFIG_PATH"])
        assert "127.0.0.1" in emulator.env["NO_PROXY"].split(",")
        # The environment it printed is all the SDK needs; the secret given on the command line exists.
        with sdk_pointed_at(emulator.env):
            app = run(lambda: modal.App.lookup("emulator-test-command", create_if_missing=True))
            sandbox = run(lambda: modal.Sandbox.create(app=app, secrets=[modal.Secret.from_name("cli-secret")]))
            assert run(lambda: sandbox.exec("printenv", "KEY").stdout.read()) == "value\n"
            run(sandbox.terminate)
    finally:
        assert emulator.stop() == 0


def test_the_emulator_serves_every_rpc_of_the_sandbox_workflow() -> None:
    from sandboxkit_modal.emulator import served_rpcs

    served = served_rpcs()
    assert {
        "AppGetOrCreate", "SecretGetOrCreate", "EnvironmentGetOrCreate", "ImageGetOrCreate", "ImageJoinStreaming",
        "AuthTokenGet", "SandboxCreateV2", "SandboxTerminateV2", "SandboxWaitV2", "SandboxListV2",
        "SandboxCreate", "SandboxGetTaskId", "TaskGetCommandRouterAccess", "SandboxWait", "SandboxTerminate",
        "SandboxList", "SandboxTagsSet", "SandboxTagsSetV2",
    } <= set(served["ModalClient"])  # fmt: skip
    assert {"TaskExecStart", "TaskExecStdinWrite", "TaskExecStdioRead", "TaskExecWait"} <= set(
        served["TaskCommandRouter"]
    )


# -- credentials ---------------------------------------------------------------------------------


def test_a_wrong_token_is_rejected(modal_emulator: RunningEmulator) -> None:
    client = run(lambda: modal.Client.from_credentials(modal_emulator.token_id, "not-the-secret"))
    with pytest.raises(AuthError, match="token"):
        run(lambda: modal.App.lookup("emulator-test-auth", create_if_missing=True, client=client))
    right = run(lambda: modal.Client.from_credentials(modal_emulator.token_id, modal_emulator.token_secret))
    app = run(lambda: modal.App.lookup("emulator-test-auth", create_if_missing=True, client=right))
    assert app.app_id.startswith("ap-")


def test_the_command_router_accepts_only_tokens_minted_for_the_task(
    sandboxes: Sandboxes, modal_emulator: RunningEmulator
) -> None:
    from grpclib import GRPCError, Status
    from grpclib.client import Channel
    from modal_proto import api_pb2
    from modal_proto import task_command_router_pb2 as sr_pb2
    from modal_proto.api_grpc import ModalClientStub
    from modal_proto.task_command_router_grpc import TaskCommandRouterStub

    mine = sandboxes.create()
    other = sandboxes.create()
    credentials = {"x-modal-token-id": modal_emulator.token_id, "x-modal-token-secret": modal_emulator.token_secret}

    async def exec_start_statuses() -> list[Status]:
        channel = Channel("127.0.0.1", modal_emulator.port)
        control, router = ModalClientStub(channel), TaskCommandRouterStub(channel)

        async def token_for(sandbox: Any) -> str:
            request = api_pb2.SandboxGetCommandRouterAccessRequest(sandbox_id=sandbox.object_id)
            return (await control.SandboxGetCommandRouterAccess(request, metadata=credentials)).jwt

        async def start(task_id: str, token: str) -> Status:
            request = sr_pb2.TaskExecStartRequest(task_id=task_id, exec_id=str(uuid.uuid4()), command_args=["true"])
            try:
                await router.TaskExecStart(request, metadata={"authorization": f"Bearer {token}"})
                return Status.OK
            except GRPCError as exc:
                return exc.status

        try:
            task = await control.SandboxGetTaskIdV2(
                api_pb2.SandboxGetTaskIdRequest(sandbox_id=mine.object_id), metadata=credentials
            )
            return [
                await start(task.task_id, await token_for(mine)),
                await start(task.task_id, await token_for(other)),
                await start(task.task_id, "not.a.token"),
            ]
        finally:
            channel.close()

    assert run(lambda: asyncio.run(exec_start_statuses())) == [Status.OK, Status.UNAUTHENTICATED, Status.UNAUTHENTICATED]


# -- apps, images, execs -------------------------------------------------------------------------


def test_exec_prints_and_exits_zero(sandboxes: Sandboxes) -> None:
    image = modal.Image.debian_slim().pip_install("x")
    sandbox = sandboxes.create(image=image)
    assert sandbox.object_id.startswith("sb-")
    process = run(lambda: sandbox.exec("python3", "-c", "print('hi')"))
    assert run(process.stdout.read) == "hi\n"
    assert run(process.wait) == 0
    assert run(process.stderr.read) == ""


def test_python3_is_the_configured_python(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    process = run(lambda: sandbox.exec("python3", "-c", "import sys; print(sys.executable)"))
    assert os.path.realpath(run(process.stdout.read).strip()) == os.path.realpath(sys.executable)
    assert run(process.wait) == 0


def test_stdin_lines_get_replies_one_at_a_time(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    process = run(lambda: sandbox.exec("python3", "-u", "-c", UPPER_ECHO, bufsize=1))
    replies = iter(process.stdout)
    for i in range(20):
        process.stdin.write(f"request {i}\n")
        run(process.stdin.drain)
        assert run(lambda: next(replies)) == f"REQUEST {i}\n"
    process.stdin.write_eof()
    run(process.stdin.drain)
    assert run(lambda: list(replies)) == []
    assert run(process.wait) == 0


def test_stderr_and_a_nonzero_exit_code(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    code = "import sys; print('out'); sys.stderr.write('something failed\\n'); sys.exit(3)"
    process = run(lambda: sandbox.exec("python3", "-c", code))
    assert run(process.stderr.read) == "something failed\n"
    assert run(process.stdout.read) == "out\n"
    assert run(process.wait) == 3


def test_a_missing_program_exits_127_with_a_message(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    process = run(lambda: sandbox.exec("no-such-program-sandboxkit"))
    assert run(process.wait) == 127
    assert "no-such-program-sandboxkit" in run(process.stderr.read)


def test_execs_run_in_the_sandbox_directory(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    home = run(lambda: sandbox.exec("pwd")).stdout.read().strip()
    sub = run(lambda: sandbox.exec("pwd", workdir="/work/sub")).stdout.read().strip()
    assert os.path.basename(home) == sandbox.object_id
    assert sub == os.path.join(home, "work", "sub")
    above = run(lambda: sandbox.exec("pwd", workdir="/../up")).stdout.read().strip()
    assert above == os.path.join(home, "up")  # as in a container, "/.." is "/"
    writer = run(lambda: sandbox.exec("python3", "-c", "open('note.txt', 'w').write('kept')"))
    assert run(writer.wait) == 0
    assert run(lambda: sandbox.exec("cat", "note.txt")).stdout.read() == "kept"


def test_a_process_sees_only_the_environment_the_sdk_asked_for(sandboxes: Sandboxes) -> None:
    secret_name = f"emulator-test-{uuid.uuid4().hex[:8]}"
    run(lambda: modal.Secret.objects.create(secret_name, {"FROM_NAMED_SECRET": "n"}))
    sandbox = sandboxes.create(
        env={"SANDBOX_VAR": "sb"},
        secrets=[modal.Secret.from_dict({"FROM_SECRET": "s"}), modal.Secret.from_name(secret_name)],
    )
    process = run(lambda: sandbox.exec("env", env={"EXEC_VAR": "e"}))
    output = run(process.stdout.read)
    assert run(process.wait) == 0
    seen = dict(line.split("=", 1) for line in output.splitlines())
    # Nothing of this process's (or the emulator's) environment, e.g. its HOME or PATH, leaks in.
    assert seen == {
        "PATH": DEFAULT_PATH,
        "SANDBOX_VAR": "sb",
        "FROM_SECRET": "s",
        "FROM_NAMED_SECRET": "n",
        "EXEC_VAR": "e",
    }
    assert "HOME" in os.environ


def test_a_missing_named_secret_is_not_found(sandboxes: Sandboxes) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        sandboxes.create(secrets=[modal.Secret.from_name(f"emulator-test-missing-{uuid.uuid4().hex[:8]}")])


def test_the_entrypoint_reads_stdin_and_its_output_and_exit_code_are_kept(sandboxes: Sandboxes) -> None:
    code = "import sys; print(input().upper()); print('note', file=sys.stderr); sys.exit(5)"
    sandbox = sandboxes.create("python3", "-c", code)
    sandbox.stdin.write("hello\n")
    sandbox.stdin.write_eof()
    run(sandbox.stdin.drain)
    run(sandbox.wait)
    assert sandbox.returncode == 5
    assert run(sandbox.stdout.read) == "HELLO\n"
    assert run(sandbox.stderr.read) == "note\n"


# -- ending sandboxes and execs ------------------------------------------------------------------


@needs_proc
def test_terminate_kills_running_execs_and_what_they_started(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    code = (
        "import subprocess, time; child = subprocess.Popen(['sleep', '300']); "
        "print(child.pid, flush=True); time.sleep(300)"
    )
    process = run(lambda: sandbox.exec("python3", "-c", code, bufsize=1))
    child = int(run(lambda: next(iter(process.stdout))))
    assert not gone_or_zombie(child)
    run(sandbox.terminate)
    assert run(process.stdout.read) == ""  # the stream ends instead of hanging
    with pytest.raises(NotFoundError, match="finished"):
        run(process.wait)  # the task is gone, as Modal reports it
    run(lambda: sandbox.wait(raise_on_termination=False))
    assert sandbox.returncode == 137
    assert run(sandbox.poll) == 137
    assert wait_until(lambda: gone_or_zombie(child))
    with pytest.raises(NotFoundError):
        run(lambda: sandbox.exec("true"))


def test_wait_raises_on_termination_unless_told_not_to(sandboxes: Sandboxes) -> None:
    from modal.exception import SandboxTerminatedError

    sandbox = sandboxes.create()
    assert run(sandbox.poll) is None
    run(sandbox.terminate)
    with pytest.raises(SandboxTerminatedError):
        run(sandbox.wait)


def test_the_idle_timeout_ends_a_sandbox_nothing_runs_in(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create(idle_timeout=1)
    busy = run(lambda: sandbox.exec("sleep", "1.5"))
    assert run(busy.wait) == 0  # a running exec kept the sandbox busy past its idle timeout
    with pytest.raises(SandboxTimeoutError):
        run(sandbox.wait)  # then, with nothing running, it ends
    assert sandbox.returncode == 124


def test_the_sandbox_timeout_ends_it(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create(timeout=1)
    process = run(lambda: sandbox.exec("sleep", "300"))
    with pytest.raises(SandboxTimeoutError):
        run(sandbox.wait)
    assert sandbox.returncode == 124
    assert run(process.stdout.read) == ""


@needs_proc
def test_the_exec_timeout_kills_the_exec(sandboxes: Sandboxes) -> None:
    sandbox = sandboxes.create()
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(300)"
    process = run(lambda: sandbox.exec("python3", "-c", code, timeout=1, bufsize=1))
    pid = int(run(lambda: next(iter(process.stdout))))
    assert run(process.wait) == -1  # how the SDK reports an exec that outlived its timeout
    assert wait_until(lambda: gone_or_zombie(pid))
    assert run(sandbox.poll) is None  # the sandbox itself runs on
    assert run(lambda: sandbox.exec("true")).wait() == 0


# -- listing and concurrency ---------------------------------------------------------------------


def test_sandboxes_are_listed_by_tags(sandboxes: Sandboxes) -> None:
    run_tag = uuid.uuid4().hex
    first = sandboxes.create(tags={"run": run_tag, "role": "first"})
    second = sandboxes.create(tags={"run": run_tag, "role": "second"})
    app_id = sandboxes.app.app_id

    def listed(**tags: str) -> set[str]:
        return {s.object_id for s in run(lambda: list(modal.Sandbox.list(app_id=app_id, tags=tags)))}

    assert listed(run=run_tag) == {first.object_id, second.object_id}
    assert listed(run=run_tag, role="second") == {second.object_id}
    assert listed(run=uuid.uuid4().hex) == set()
    run(lambda: second.set_tags({"run": run_tag, "role": "renamed"}))
    assert run(second.get_tags) == {"run": run_tag, "role": "renamed"}
    assert listed(role="second") == set()
    run(first.terminate)
    assert listed(run=run_tag) == {second.object_id}


def test_concurrent_sandboxes_keep_their_processes_apart(sandboxes: Sandboxes) -> None:
    boxes = [sandboxes.create(env={"WHO": f"sandbox-{i}"}) for i in range(3)]
    code = "import os, time; time.sleep(0.3); print(os.environ['WHO'])"

    def work(sandbox: Any) -> list[str]:
        processes = [sandbox.exec("python3", "-c", code) for _ in range(2)]
        return [p.stdout.read().strip() for p in processes if p.wait() == 0]

    with concurrent.futures.ThreadPoolExecutor(len(boxes)) as pool:
        results = run(lambda: list(pool.map(work, boxes)))
    assert results == [[f"sandbox-{i}"] * 2 for i in range(3)]


# -- reads that resume ---------------------------------------------------------------------------


def test_reads_resume_at_their_offset_after_the_sdk_releases_an_idle_connection() -> None:
    from sandboxkit_modal.emulator import EmulatorThread

    with EmulatorThread() as emulator:
        # The SDK releases an idle router connection after this many seconds (30 by default), and
        # reopens the read stream at the offset it had reached.
        with sdk_pointed_at({**emulator.environment(), "MODAL_SANDBOX_CHANNEL_IDLE_TIMEOUT": "0.1"}):
            app = run(lambda: modal.App.lookup("emulator-test-resume", create_if_missing=True))
            sandbox = run(lambda: modal.Sandbox.create(app=app))
            code = "import sys, time\nfor i in range(5):\n    sys.stdout.write(f'line {i}\\n'); sys.stdout.flush()"
            process = run(lambda: sandbox.exec("python3", "-c", code, bufsize=1))
            lines = []
            for line in process.stdout:
                lines.append(line)
                time.sleep(0.3)  # hold the chunk: the connection goes idle and is released
            assert lines == [f"line {i}\n" for i in range(5)]
            assert run(process.wait) == 0
            run(sandbox.terminate)
            assert emulator.server.calls["TaskCommandRouter/TaskExecStdioRead"] > 1


def test_the_sdk_replaces_expired_tokens() -> None:
    from sandboxkit_modal.emulator import EmulatorConfig, EmulatorThread

    with EmulatorThread(EmulatorConfig(token_ttl=1.5)) as emulator:
        with sdk_pointed_at(emulator.environment()):
            app = run(lambda: modal.App.lookup("emulator-test-tokens", create_if_missing=True))
            sandbox = run(lambda: modal.Sandbox.create(app=app))
            process = run(lambda: sandbox.exec("python3", "-u", "-c", UPPER_ECHO, bufsize=1))
            replies = iter(process.stdout)
            for word in ("before\n", "after\n"):
                if word == "after\n":
                    time.sleep(2)  # the tokens the emulator handed out expire
                process.stdin.write(word)
                run(process.stdin.drain)
                assert run(lambda: next(replies)) == word.upper()
            assert run(lambda: sandbox.exec("echo", "fresh").stdout.read()) == "fresh\n"
            run(sandbox.terminate)
            # The router refused the stale token, and the SDK fetched a new one.
            assert emulator.server.calls["ModalClient/SandboxGetCommandRouterAccess"] >= 1


# -- the V1 sandbox API --------------------------------------------------------------------------


def test_the_v1_sandbox_api(sandboxes: Sandboxes, modal_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_SANDBOX_V2", "0")
    run_tag = uuid.uuid4().hex
    sandbox = sandboxes.create(tags={"run": run_tag}, env={"GREETING": "hi"})
    assert modal_emulator.record(sandbox.object_id)["version"] == 1
    process = run(lambda: sandbox.exec("python3", "-c", "import os; print(os.environ['GREETING'])"))
    assert run(process.stdout.read) == "hi\n"
    assert run(process.wait) == 0
    echo = run(lambda: sandbox.exec("python3", "-u", "-c", UPPER_ECHO, bufsize=1))
    replies = iter(echo.stdout)
    for i in range(3):
        echo.stdin.write(f"v1 {i}\n")
        run(echo.stdin.drain)
        assert run(lambda: next(replies)) == f"V1 {i}\n"
    listed = run(lambda: [s.object_id for s in modal.Sandbox.list(app_id=sandboxes.app.app_id, tags={"run": run_tag})])
    assert listed == [sandbox.object_id]
    run(sandbox.terminate)
    run(lambda: sandbox.wait(raise_on_termination=False))
    assert sandbox.returncode == 137
    assert run(lambda: list(replies)) == []

    entry = sandboxes.create("python3", "-c", "import sys; print('v1 out'); sys.exit(2)")
    assert modal_emulator.record(entry.object_id)["version"] == 1
    run(entry.wait)
    assert entry.returncode == 2
    assert run(entry.stdout.read) == "v1 out\n"


# -- what the emulator refuses, and what it records -----------------------------------------------


def test_unimplemented_rpcs_fail_naming_the_method(sandboxes: Sandboxes) -> None:
    with pytest.raises(UnimplementedError, match="does not implement ModalClient/VolumeGetOrCreate"):
        run(lambda: modal.Volume.from_name("emulator-test", create_if_missing=True).hydrate())
    sandbox = sandboxes.create()
    with pytest.raises(UnimplementedError, match="does not implement TaskCommandRouter/TaskSnapshotFilesystem"):
        run(sandbox.snapshot_filesystem)


def test_the_create_request_is_recorded(sandboxes: Sandboxes, modal_emulator: RunningEmulator) -> None:
    sandbox = sandboxes.create(
        block_network=True, cpu=0.5, memory=256, timeout=120, region="us-east", env={"VISIBLE_KEY": "hidden value"}
    )
    record = modal_emulator.record(sandbox.object_id)
    assert record["network_access"] == "BLOCKED"
    assert (record["milli_cpu"], record["memory_mb"], record["timeout_secs"]) == (500, 256, 120)
    assert record["regions"] == ["us-east"]
    assert record["env_keys"] == ["VISIBLE_KEY"]
    assert "hidden value" not in str(record)
    assert record["version"] == 2
