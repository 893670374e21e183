"""The ``docker`` backend's containers over their life: labels, removal, engine problems, gc.

Containers are found through their labels (``sandboxkit.pid`` names the owning process, and
the tests add ``sandboxkit-test.case`` to pick out one interpreter's container). Engine problems
are simulated with an engine address nothing answers on, and a missing image with a name no
engine has; nothing is pulled.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

import sandboxkit
from docker_support import (  # noqa: F401  (fixtures)
    TEST_LABEL,
    bounded,
    container_of,
    docker_client,
    needs_linux_proc,
    no_leaked_containers,
    owned_containers,
    tagged_interpreter,
)
from sandboxkit import ownership, plugins
from sandboxkit.errors import BackendStartError, CodeInterpreterError, SandboxDiedError

pytestmark = pytest.mark.usefixtures("no_leaked_containers")

NO_ENGINE = "unix:///nonexistent-sandboxkit-test.sock"


def _gone(client, container_id: str) -> bool:
    import docker

    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return True
    return False


# -- labels and removal -------------------------------------------------------------------------
def test_container_is_labelled_and_removed_on_shutdown(docker_client):
    interp, tag = tagged_interpreter()
    try:
        interp.start()
        container = container_of(docker_client, tag)
        assert container is not None and container.status == "running"
        labels = container.labels
        assert labels[ownership.MARKER] == "true"
        assert labels[ownership.HOST] == socket.gethostname()
        assert labels[ownership.PID] == str(os.getpid())
        assert labels[ownership.SESSION]
        # Everything that names the owner (host, boot, pid, its start time, ...) is this process.
        expected = {k: v for k, v in ownership.owner_labels().items() if k != ownership.SESSION}
        assert {k: labels.get(k) for k in expected} == expected
        assert ownership.owner_is_gone(labels) is False
        assert interp.execute("6 * 7") == 42
    finally:
        interp.shutdown()
    assert _gone(docker_client, container.id)
    assert container_of(docker_client, tag) is None


def test_each_interpreter_has_its_own_container_and_none_remains(docker_client):
    tag = uuid.uuid4().hex
    make = sandboxkit.factory("docker", labels={TEST_LABEL: tag})
    first, second = make(), make()
    try:
        first.start()
        second.start()
        ours = owned_containers(docker_client, **{TEST_LABEL: tag})
        assert len(ours) == 2
        assert len({c.labels[ownership.SESSION] for c in ours}) == 2
    finally:
        first.shutdown()
        second.shutdown()
    assert all(_gone(docker_client, c.id) for c in ours)


def test_container_is_removed_when_the_driver_dies(docker_client):
    interp, tag = tagged_interpreter()
    try:
        interp.execute("kept = 1")
        container = container_of(docker_client, tag)
        assert container is not None
        with pytest.raises(SandboxDiedError) as info:
            bounded(lambda: interp.execute("import os\nos._exit(3)"))
        assert info.value.exit_code == 3
        # Removed by the error itself, before any shutdown().
        assert _gone(docker_client, container.id)
    finally:
        interp.shutdown()


def test_container_killed_from_outside_is_reported(docker_client):
    interp, tag = tagged_interpreter(timeout=120)
    sleeping = threading.Event()

    def about_to_sleep() -> str:
        sleeping.set()
        return "go"

    interp.tools["about_to_sleep"] = about_to_sleep
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = interp.execute("import time\nabout_to_sleep()\ntime.sleep(60)\n'slept'")
        except BaseException as exc:
            outcome["error"] = exc

    try:
        interp.start()
        container = container_of(docker_client, tag)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert sleeping.wait(60), "the sandbox code never reached its sleep"
        container.kill()  # SIGKILL, from outside sandboxkit
        thread.join(60)
        assert not thread.is_alive(), "execute() hangs after the container was killed"
        error = outcome.get("error")
        assert isinstance(error, SandboxDiedError), f"expected SandboxDiedError, got {outcome!r}"
        assert "killed" in str(error) and "from outside" in str(error)
        assert "new interpreter" in str(error).lower()
        assert _gone(docker_client, container.id)
    finally:
        interp.shutdown()


# -- start-up problems ----------------------------------------------------------------------------
def test_missing_image_is_a_clear_start_error(docker_client):
    image = f"sandboxkit-test/no-such-image-{uuid.uuid4().hex[:12]}:never"
    interp, _ = tagged_interpreter(image=image)
    try:
        with pytest.raises(BackendStartError) as info:
            interp.start()
    finally:
        interp.shutdown()
    message = str(info.value)
    assert image in message
    assert f"docker pull {image}" in message
    assert "build" in message and "SANDBOXKIT_DOCKER_IMAGE" in message
    with pytest.raises(CodeInterpreterError):
        interp.execute("1")


def test_unreachable_engine_is_a_clear_start_error():
    # Needs no engine: the address answers nothing. Refused when the interpreter is made or started.
    made = []
    try:
        with pytest.raises(BackendStartError) as info:
            made.append(sandboxkit.factory("docker", docker_host=NO_ENGINE)())
            made[-1].start()
    finally:
        for interp in made:
            interp.shutdown()
    message = str(info.value)
    assert "no Docker engine is answering" in message
    assert "start Docker" in message


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandboxkit.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )


def test_backends_reports_docker_unusable_without_an_engine():
    # Needs no engine: DOCKER_HOST points where nothing answers.
    table = _cli("backends", DOCKER_HOST=NO_ENGINE)
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if line.startswith("docker "))
    assert line.split()[3] == "no"
    assert "no Docker engine is answering" in line
    rows = json.loads(_cli("backends", "--json", DOCKER_HOST=NO_ENGINE).stdout)
    docker_row = next(row for row in rows if row["name"] == "docker")
    assert docker_row["usable"] is False
    assert "no Docker engine is answering" in docker_row["reason"]
    assert docker_row["hint"]


# -- host process exit and gc ---------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import sys
    import sandboxkit
    tag, mode = sys.argv[1], sys.argv[2]
    interp = sandboxkit.interpreter("docker", labels={%r: tag})
    assert interp.execute("6 * 7") == 42
    print("ready", flush=True)
    if mode == "wait":
        sys.stdin.read()  # until killed
""" % TEST_LABEL)


def _child(mode: str) -> tuple[subprocess.Popen, str]:
    """A host process holding one started docker interpreter (never shut down), and its tag."""
    tag = uuid.uuid4().hex
    child = subprocess.Popen([sys.executable, "-c", _CHILD, tag, mode], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = bounded(child.stdout.readline)
    assert line == "ready\n", f"the child did not start its sandbox: {line!r} {child.stderr.read() if child.poll() is not None else ''}"
    return child, tag


def test_container_is_removed_when_the_host_process_exits(docker_client):
    child, tag = _child("exit")
    assert bounded(child.wait) == 0, child.stderr.read()
    assert owned_containers(docker_client, pid=child.pid, **{TEST_LABEL: tag}) == []


@needs_linux_proc
def test_gc_removes_containers_of_a_killed_host_process_only(docker_client):
    child, tag = _child("wait")
    try:
        orphans = owned_containers(docker_client, pid=child.pid, **{TEST_LABEL: tag})
        assert len(orphans) == 1
        orphan = orphans[0]
    finally:
        child.kill()  # SIGKILL: no clean-up in the child
        child.wait()
        child.stdin.close()
        child.stdout.close()
        child.stderr.close()
    assert not _gone(docker_client, orphan.id), "the container of a SIGKILLed host process should stay"

    live, live_tag = tagged_interpreter()
    try:
        assert live.execute("kept = 'alive'\nkept") == "alive"
        live_container = container_of(docker_client, live_tag)

        # Dry run (through the CLI): listed, not removed.
        dry = _cli("gc", "--dry-run", "--backend", "docker")
        assert dry.returncode == 0, dry.stderr
        assert f"would remove docker container {orphan.name}" in dry.stdout
        assert live_container.name not in dry.stdout
        assert not _gone(docker_client, orphan.id)

        removed = plugins.collect_garbage(["docker"])["docker"]
        assert any(orphan.name in line and str(child.pid) in line for line in removed), removed
        assert not any(line.startswith("error:") for line in removed), removed
        assert _gone(docker_client, orphan.id)
        # The live process's container is left alone, and its session still works.
        assert not any(live_container.name in line for line in removed)
        assert not _gone(docker_client, live_container.id)
        assert live.execute("kept") == "alive"
    finally:
        live.shutdown()


@needs_linux_proc
def test_gc_leaves_foreign_containers_alone(docker_client):
    """Containers whose owner is not provably gone are kept: other host, unparseable pid, and
    containers sandboxkit did not make; a fabricated dead owner on this host is removed."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = uuid.uuid4().hex
    mine = ownership.owner_labels()
    variants = {
        "dead-owner": {**mine, ownership.PID: str(dead.pid)},
        "other-host": {**mine, ownership.HOST: "another-machine.invalid", ownership.PID: str(dead.pid)},
        "bad-pid": {**mine, ownership.PID: "not-a-pid"},
        "not-sandboxkit": {k: v for k, v in {**mine, ownership.PID: str(dead.pid)}.items() if k != ownership.MARKER},
    }
    made = {}
    image = sandboxkit.factory("docker").backend_options.image
    try:
        for name, labels in variants.items():
            # Created, never started: no process runs, no network is attached.
            made[name] = docker_client.containers.create(
                image, command=["true"], network_mode="none", labels={**labels, TEST_LABEL: tag})
        removed = plugins.collect_garbage(["docker"])["docker"]
        assert any(made["dead-owner"].name in line for line in removed), removed
        assert _gone(docker_client, made["dead-owner"].id)
        for name in ("other-host", "bad-pid", "not-sandboxkit"):
            assert not any(made[name].name in line for line in removed), (name, removed)
            assert not _gone(docker_client, made[name].id), name
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except Exception:
                pass


# -- ownership, with fabricated labels ------------------------------------------------------------
@needs_linux_proc
class TestOwnerIsGone:
    def test_this_process_is_not_gone(self):
        assert ownership.owner_is_gone(ownership.owner_labels()) is False

    def test_labels_name_this_process(self):
        labels = ownership.owner_labels(session="s-1")
        assert labels[ownership.MARKER] == "true"
        assert labels[ownership.PID] == str(os.getpid())
        assert labels[ownership.HOST] == socket.gethostname()
        assert labels[ownership.SESSION] == "s-1"
        assert labels[ownership.STARTED]
        assert ownership.owner_labels()[ownership.SESSION] != ownership.owner_labels()[ownership.SESSION]

    def test_dead_pid_is_gone(self):
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        assert ownership.owner_is_gone({**ownership.owner_labels(), ownership.PID: str(dead.pid)}) is True

    def test_live_pid_with_another_start_time_is_gone(self):
        labels = ownership.owner_labels()
        other_start = str(int(labels[ownership.STARTED]) + 12345)
        assert ownership.owner_is_gone({**labels, ownership.STARTED: other_start}) is True

    def test_live_child_process_is_not_gone(self):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                stat = f.read()
            started = stat[stat.rfind(")") + 2:].split()[19]
            labels = {**ownership.owner_labels(), ownership.PID: str(child.pid), ownership.STARTED: started}
            assert ownership.owner_is_gone(labels) is False
        finally:
            child.stdin.close()
            child.wait()
        assert ownership.owner_is_gone(labels) is True

    def test_other_host_is_not_gone(self):
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        labels = {**ownership.owner_labels(), ownership.HOST: "another-machine.invalid", ownership.PID: str(dead.pid)}
        assert ownership.owner_is_gone(labels) is False

    def test_not_sandboxkit_is_not_gone(self):
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        labels = {**ownership.owner_labels(), ownership.PID: str(dead.pid)}
        del labels[ownership.MARKER]
        assert ownership.owner_is_gone(labels) is False
        assert ownership.owner_is_gone({**labels, ownership.MARKER: "false"}) is False
        assert ownership.owner_is_gone({}) is False

    def test_unparseable_pid_is_not_gone(self):
        assert ownership.owner_is_gone({**ownership.owner_labels(), ownership.PID: "x"}) is False
        labels = ownership.owner_labels()
        del labels[ownership.PID]
        assert ownership.owner_is_gone(labels) is False

    def test_other_boot_or_pid_namespace_is_left_alone(self):
        # Unsure whether the owner lives (a label from another boot or pid namespace): kept.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        labels = {**ownership.owner_labels(), ownership.PID: str(dead.pid)}
        assert ownership.owner_is_gone(labels) is True  # the baseline: this boot and namespace
        assert ownership.owner_is_gone({**labels, ownership.BOOT: "0" * 32}) is False
        assert ownership.owner_is_gone({**labels, ownership.PID_NAMESPACE: "pid:[1]"}) is False
        assert ownership.owner_is_gone({k: v for k, v in labels.items() if k != ownership.BOOT}) is False
