"""The ``docker`` backend's socket channel and its fall-back to the engine's attach stream.

On this machine the engine is local, so the default ("auto") uses the socket channel; a sandbox
that cannot reach the socket is simulated by taking the socket's permissions away from the
container's user, so the real shim, the real engine and the real fall-back run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

import sandboxkit_docker
from docker_support import docker_required, no_leaked_containers, sandbox, tagged_interpreter  # noqa: F401  (fixtures)
from sandboxkit import plugins
from sandboxkit.conformance.plugin import in_ci
from sandboxkit.errors import BackendStartError, CodeInterpreterError
from sandboxkit_docker import channel

pytestmark = pytest.mark.usefixtures("no_leaked_containers")


@pytest.fixture
def local_engine():
    """Skips (outside CI) when the engine is not on this machine: then "auto" means attach."""
    client = docker_required()
    if not sandboxkit_docker._engine_is_local(client, None):
        if in_ci():
            pytest.fail("CI is set, but the Docker engine is not on this machine", pytrace=False)
        pytest.skip("the Docker engine is not on this machine, so the socket channel is not used")


@pytest.fixture
def started(sandbox):
    """``started(**options)``: a started docker interpreter (shut down at teardown)."""

    def make(**options):
        interp = sandbox(**options)
        interp.start()
        return interp

    return make


def channel_of(interp) -> str:
    return interp._session._process.channel


def channel_dirs_of_this_process() -> list[str]:
    prefix = f"sandboxkit-channel-{os.getpid()}-"
    return [name for name in os.listdir(tempfile.gettempdir()) if name.startswith(prefix)]


class UnreachableListener(channel.ChannelListener):
    """A listener the container's user may not connect to (as under a denying security policy)."""

    def __init__(self) -> None:
        super().__init__()
        os.chmod(self._path, 0o600)


_TOOL_ROUND_TRIP = "total = sum(double(i) for i in range(50))\ntotal"


def _double(x):
    return 2 * x


def test_local_engine_uses_the_socket_channel_and_leaves_nothing_on_the_host(started, local_engine):
    interp = started()
    interp.tools["double"] = _double
    assert channel_of(interp) == "socket"
    assert channel_dirs_of_this_process() == [], "the channel directory should go once the driver connects"
    assert interp.execute(_TOOL_ROUND_TRIP) == 2450
    big = "x" * (3 << 20)
    assert interp.execute("len(doc)", variables={"doc": big}) == len(big)


def test_the_channel_mount_is_empty_read_only_and_unlistable_inside(started, local_engine):
    seen = started().execute(textwrap.dedent(f"""
        import errno, os
        def outcome(action):
            try:
                action()
                return "allowed"
            except OSError as exc:
                return errno.errorcode.get(exc.errno, str(exc.errno))
        def create():
            with open({channel.CONTAINER_DIR!r} + "/probe", "w") as f:
                f.write("x")
        with open("/proc/self/mountinfo") as f:
            mount = [line.split()[5].split(",") for line in f if line.split()[4] == {channel.CONTAINER_DIR!r}]
        {{"list": outcome(lambda: os.listdir({channel.CONTAINER_DIR!r})),
         "create": outcome(create),
         "socket_left": os.path.exists({channel.CONTAINER_DIR!r} + "/driver.sock"),
         "mount_flags": mount,
         "env": sorted(k for k in os.environ if k.startswith("SANDBOXKIT"))}}
    """))
    assert seen["list"] == "EACCES"
    # ENOENT: the host has already removed the directory, so nothing can be created in it at all.
    assert seen["create"] in {"EROFS", "EACCES", "ENOENT"}
    assert seen["socket_left"] is False
    assert len(seen["mount_flags"]) == 1 and "ro" in seen["mount_flags"][0], seen["mount_flags"]
    assert seen["env"] == []


def test_attach_channel_mounts_nothing(started):
    interp = started(channel="attach")
    interp.tools["double"] = _double
    assert channel_of(interp) == "attach"
    assert interp.execute(f"import os\nos.path.exists({channel.CONTAINER_DIR!r})") is False
    assert interp.execute(_TOOL_ROUND_TRIP) == 2450


_SPIN_SETTING = ("open('/proc/self/environ', 'rb').read().split(b'\\0').count("
                 "b'SANDBOXKIT_SPIN_SECONDS=0') == 1")


def test_the_driver_polls_over_the_socket_but_not_over_attach(started, local_engine):
    # The driver's process started with the setting that turns its polling off, or without it.
    assert started(channel="attach").execute(_SPIN_SETTING) is True
    assert started().execute(_SPIN_SETTING) is False


def test_auto_uses_attach_when_the_engine_is_not_on_this_machine(started, monkeypatch):
    monkeypatch.setattr(sandboxkit_docker, "_engine_is_local", lambda client, docker_host: False)
    interp = started()
    assert channel_of(interp) == "attach"
    assert interp.execute(f"import os\nos.path.exists({channel.CONTAINER_DIR!r})") is False


def test_unreachable_socket_falls_back_to_attach_and_says_why(started, monkeypatch, local_engine):
    monkeypatch.setattr(sandboxkit_docker, "ChannelListener", UnreachableListener)
    interp = started()
    interp.tools["double"] = _double
    assert channel_of(interp) == "attach"
    assert interp.execute(_TOOL_ROUND_TRIP) == 2450
    assert interp.execute("print('still talking')") == "still talking\n"
    assert "no socket channel" in interp._session.stderr_tail()
    assert channel_dirs_of_this_process() == []


def test_demanded_socket_channel_that_cannot_connect_is_a_clear_start_error(monkeypatch, local_engine):
    monkeypatch.setattr(sandboxkit_docker, "ChannelListener", UnreachableListener)
    interp, _ = tagged_interpreter(channel="socket")
    with pytest.raises(BackendStartError, match="channel='attach'"):
        interp.start()
    assert channel_dirs_of_this_process() == []


def test_a_sandbox_that_dies_before_connecting_is_reported_with_its_stderr(monkeypatch, local_engine):
    monkeypatch.setattr(channel, "SHIM", "import sys\nsys.stderr.write('broke before connecting\\n')\nsys.exit(3)")
    interp, _ = tagged_interpreter(channel="socket")
    with pytest.raises(CodeInterpreterError) as failure:
        interp.start()
    assert "broke before connecting" in str(failure.value)
    assert "socket channel" not in str(failure.value)  # not blamed on the engine or the mount
    assert channel_dirs_of_this_process() == []


def test_unknown_channel_is_refused_with_the_choices():
    with pytest.raises(Exception, match="auto, socket, attach"):
        sandboxkit_docker.DockerOptions(channel="pipe")


def test_gc_removes_channel_directories_of_dead_processes_only():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = tempfile.gettempdir()
    dead_dir = tempfile.mkdtemp(prefix=f"sandboxkit-channel-{dead.pid}-", dir=base)
    live_dir = tempfile.mkdtemp(prefix=f"sandboxkit-channel-{os.getpid()}-", dir=base)
    try:
        removed = plugins.collect_garbage(["docker"])["docker"]
        assert any(dead_dir in line for line in removed), removed
        assert not os.path.exists(dead_dir)
        assert os.path.isdir(live_dir)
        assert not any(live_dir in line for line in removed)
    finally:
        for path in (dead_dir, live_dir):
            if os.path.isdir(path):
                os.rmdir(path)
