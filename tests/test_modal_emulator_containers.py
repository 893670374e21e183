"""The Modal emulator's container mode, driven by the real ``modal`` SDK against a real Docker engine.

Each emulated sandbox is a container made with the docker backend's hardening, so what Modal
promises about isolation (a blocked network, cpu and memory limits, no host files or
environment) is observed from inside, as in a real Modal sandbox. Needs a Docker engine with the
test image (scripts/docker-engine.sh): without one these tests skip with the reason, except in CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from typing import Any, Iterator

import pytest

from docker_support import docker_required
from sandboxkit.conformance.plugin import in_ci
from sandboxkit.conformance.suite import bounded

if in_ci():
    import modal
else:
    modal = pytest.importorskip("modal", reason="the modal extra (modal SDK) is not installed")

from sandboxkit import plugins  # noqa: E402
from sandboxkit_modal.emulator.runtimes import SANDBOX_LABEL  # noqa: E402
from sandboxkit_modal.emulator.testing import (  # noqa: E402,F401  (fixtures)
    RunningEmulator,
    modal_emulator_isolated,
    modal_emulator_isolated_server,
    sdk_pointed_at,
    start_emulator,
)


def run(fn: Any, limit: float = 60.0) -> Any:
    return bounded(fn, limit)


def containers_of(sandbox_id: str) -> list[Any]:
    client = docker_required()
    return client.containers.list(all=True, ignore_removed=True, filters={"label": f"{SANDBOX_LABEL}={sandbox_id}"})


@pytest.fixture
def emulator(modal_emulator_isolated: RunningEmulator) -> RunningEmulator:
    docker_required()
    if modal_emulator_isolated.sandboxes != "container":
        message = f"the Modal emulator did not choose container mode; it said:\n{modal_emulator_isolated.log()}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return modal_emulator_isolated


@pytest.fixture
def create(emulator: RunningEmulator) -> Iterator[Any]:
    """``create(**kwargs)``: a sandbox in an app of the test's own; all terminated at the end, and
    the test fails if a container of theirs is left."""
    app = run(lambda: modal.App.lookup(f"containers-test-{uuid.uuid4().hex[:12]}", create_if_missing=True))
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        sandbox = run(lambda: modal.Sandbox.create(app=app, **kwargs))
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        run(sandbox.terminate)
        finish(sandbox)
    left = [c.name for sandbox in made for c in containers_of(sandbox.object_id)]
    assert left == [], f"containers left behind: {left}"


def finish(sandbox: Any) -> None:
    """Wait for the sandbox's end, whatever it was."""
    try:
        run(lambda: sandbox.wait(raise_on_termination=False))
    except modal.exception.SandboxTimeoutError:
        pass


def python(sandbox: Any, code: str, **kwargs: Any) -> tuple[str, str, int]:
    process = run(lambda: sandbox.exec("python3", "-c", textwrap.dedent(code), **kwargs))
    out, err = run(process.stdout.read), run(process.stderr.read)
    return out, err, run(process.wait)


# -- the command says where sandboxes run ----------------------------------------------------------
def test_auto_chooses_containers_and_says_so(emulator: RunningEmulator) -> None:
    assert "sandboxes run in hardened Docker containers of image" in emulator.log()


def test_process_mode_says_it_isolates_nothing() -> None:
    running = start_emulator("--sandboxes", "process")
    try:
        assert running.sandboxes == "process"
        assert "sandboxes run as local processes: no isolation" in running.log()
    finally:
        running.stop()


def test_container_mode_without_the_image_is_a_clear_error() -> None:
    docker_required()
    done = subprocess.run(
        [sys.executable, "-m", "sandboxkit_modal.emulator", "--sandboxes", "container",
         "--docker-image", "sandboxkit-test/no-such-image:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "container mode needs a Docker engine with the image 'sandboxkit-test/no-such-image:0'" in done.stderr
    assert done.stdout == ""


# -- processes in the container --------------------------------------------------------------------
def test_exec_output_exit_code_and_stdin(create: Any) -> None:
    sandbox = create()
    assert containers_of(sandbox.object_id), "the sandbox should be a container"
    out, err, code = python(sandbox, "import sys; print('out'); sys.stderr.write('err\\n'); sys.exit(3)")
    assert (out, err, code) == ("out\n", "err\n", 3)
    echo = run(lambda: sandbox.exec("python3", "-u", "-c", "import sys\nfor l in sys.stdin: print(l.upper(), end='')",
                                    bufsize=1))
    lines = iter(echo.stdout)
    for i in range(5):
        echo.stdin.write(f"line {i}\n")
        run(echo.stdin.drain)
        assert run(lambda: next(lines)) == f"LINE {i}\n"
    echo.stdin.write_eof()
    run(echo.stdin.drain)
    assert run(echo.wait) == 0


def test_code_runs_on_the_image_python_without_host_files_or_environment(tmp_path: Any) -> None:
    docker_required()
    marker = tmp_path / "host-only.txt"
    marker.write_text("host")
    # The emulator's own environment holds a host secret; the sandbox must not see it.
    running = start_emulator("--sandboxes", "container", env={**os.environ, "SANDBOXKIT_TEST_HOST_ONLY": "secret"})
    try:
        with sdk_pointed_at(running.env):
            app = run(lambda: modal.App.lookup("containers-env", create_if_missing=True))
            sandbox = run(lambda: modal.Sandbox.create(app=app, env={"SANDBOX_VAR": "sb"}))
            try:
                out, _, code = python(sandbox, f"""
                    import os, sys
                    print(sys.executable, os.getuid(), os.path.exists({str(marker)!r}))
                    print(sorted(os.environ))
                """, env={"EXEC_VAR": "e"})
            finally:
                run(sandbox.terminate)
    finally:
        assert running.stop() == 0
    assert code == 0
    first, names = out.splitlines()
    executable, uid, sees_marker = first.split()
    assert executable == "/usr/bin/python3" or executable.startswith("/usr/local/bin/python"), executable
    assert uid == "65534" and sees_marker == "False"
    assert eval(names) == sorted(["PATH", "HOSTNAME", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "SANDBOX_VAR", "EXEC_VAR"])


_INTERFACES = "import socket; print(sorted(name for _, name in socket.if_nameindex()))"


def test_a_blocked_network_leaves_only_loopback(create: Any) -> None:
    out, _, code = python(create(block_network=True), _INTERFACES)
    assert (out, code) == ("['lo']\n", 0)


def test_an_allowed_network_has_an_interface(create: Any) -> None:
    out, _, code = python(create(block_network=False), _INTERFACES)
    assert code == 0 and out.strip() != "['lo']", out


def test_the_memory_request_is_a_limit(create: Any) -> None:
    sandbox = create(memory=128)
    out, _, code = python(sandbox, "b = bytearray(400 << 20); b[::4096] = b'x' * len(b[::4096]); print('survived')")
    assert out == "" and code == 137  # killed by the kernel's OOM killer (SIGKILL)
    out, _, code = python(sandbox, "print('still here')")
    assert (out, code) == ("still here\n", 0)


def test_the_cpu_request_is_a_limit(create: Any) -> None:
    out, _, code = python(create(cpu=0.5), """
        import os
        for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"):
            if os.path.exists(path):
                print(open(path).read().split()[0])
                break
    """)
    assert code == 0
    assert out.strip() == "50000", out  # half of the default 100000 us period


# -- ends -------------------------------------------------------------------------------------------
def test_terminate_and_the_sandbox_timeout_remove_the_container(create: Any) -> None:
    terminated = create()
    run(lambda: terminated.exec("sleep", "300"))
    run(terminated.terminate)
    finish(terminated)
    assert containers_of(terminated.object_id) == []

    timed_out = create(timeout=1)
    run(lambda: timed_out.exec("sleep", "300"))
    with pytest.raises(modal.exception.SandboxTimeoutError):
        run(timed_out.wait)
    assert timed_out.returncode == 124
    assert containers_of(timed_out.object_id) == []


def test_the_exec_timeout_kills_the_exec(create: Any) -> None:
    sandbox = create()
    process = run(lambda: sandbox.exec("python3", "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(300)",
                                       timeout=1, bufsize=1))
    pid = int(run(lambda: next(iter(process.stdout))))
    assert run(process.wait) == -1
    out, _, _ = python(sandbox, f"""
        import os, time
        def running():
            try:
                with open('/proc/{pid}/stat') as f:
                    return f.read().rsplit(')', 1)[1].split()[0] != 'Z'  # a zombie has ended
            except OSError:
                return False
        for _ in range(100):
            if not running():
                break
            time.sleep(0.05)
        print(running())
    """)
    assert out == "False\n"


def test_containers_of_a_killed_emulator_are_removed_by_gc() -> None:
    docker_required()
    running = start_emulator("--sandboxes", "container")
    sandbox_id = None
    try:
        with sdk_pointed_at(running.env):
            app = run(lambda: modal.App.lookup("containers-gc", create_if_missing=True))
            sandbox_id = run(lambda: modal.Sandbox.create(app=app)).object_id
        assert len(containers_of(sandbox_id)) == 1
        running.process.send_signal(signal.SIGKILL)
        running.process.wait(30)
        assert len(containers_of(sandbox_id)) == 1, "a SIGKILLed emulator cannot clean up"
        removed = plugins.collect_garbage(["docker"])["docker"]
        assert any(str(running.process.pid) in line for line in removed), removed
        assert containers_of(sandbox_id) == []
    finally:
        running.stop()
        for container in containers_of(sandbox_id) if sandbox_id else []:
            container.remove(force=True)


def test_an_emulator_whose_starter_dies_stops_and_removes_its_containers(tmp_path: Any) -> None:
    docker_required()
    if not sys.platform.startswith("linux"):
        pytest.skip("the emulator follows its starter's death on Linux only")
    starter = textwrap.dedent("""
        import os, sys, modal
        from sandboxkit_modal.emulator.testing import forget_sdk_client, start_emulator
        running = start_emulator("--sandboxes", "container")
        os.environ.update(running.env)
        forget_sdk_client()
        app = modal.App.lookup("containers-orphan", create_if_missing=True)
        print(running.process.pid, modal.Sandbox.create(app=app).object_id, flush=True)
        os._exit(1)  # a crash: nothing is stopped or terminated
    """)
    done = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=120)
    emulator_pid, sandbox_id = done.stdout.split()
    assert wait_until_gone(int(emulator_pid)), "the emulator outlived the process that started it"
    assert containers_of(sandbox_id) == []


def wait_until_gone(pid: int, limit: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_create_cancelled_midway_leaves_no_container() -> None:
    import asyncio

    import docker
    from modal_proto import api_pb2

    from sandboxkit_docker import DockerOptions
    from sandboxkit_modal.emulator.runtimes import ContainerRuntime

    docker_required()
    sandbox_id = f"sb-cancel-{uuid.uuid4().hex[:12]}"
    client = docker.from_env(timeout=60)

    async def cancel_then_stop() -> None:
        runtime = ContainerRuntime(client, DockerOptions().image, sandbox_id, api_pb2.Sandbox(), {})
        starting = asyncio.ensure_future(runtime.start())
        await asyncio.sleep(0.005)  # the create is under way on a worker thread
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await runtime.stop()

    try:
        asyncio.run(cancel_then_stop())
        assert containers_of(sandbox_id) == []
    finally:
        for container in containers_of(sandbox_id):
            container.remove(force=True)
        client.close()
