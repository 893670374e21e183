"""``sandboxkit gc``: run as users run it, against the real backends.

The Docker tests leave a real orphan behind (a host process that starts a docker interpreter and
is SIGKILLed before it can clean up) and check that ``gc --dry-run`` lists it without removing
it, ``gc`` removes it, and a container whose owner is alive survives. They skip, with the reason,
when no Docker engine answers, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from sandboxkit import ownership, plugins
from sandboxkit.conformance.plugin import in_ci

#: Only a guard against a hung child; no test asserts anything about time.
HANG_GUARD_SECONDS = 300


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("SANDBOXKIT_DISABLE_PLUGINS", None)
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return subprocess.run(
        [sys.executable, "-m", "sandboxkit.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD_SECONDS,
    )


# -- without Docker ----------------------------------------------------------------------------
def test_gc_help_explains_provably_gone():
    result = run_cli("gc", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sandboxkit gc")
    text = " ".join(result.stdout.split())
    for phrase in ("--backend", "--dry-run", "provably gone", "same machine and boot", "start time",
                   "left alone"):
        assert phrase in text


def test_gc_is_listed_in_top_level_help():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "gc" in result.stdout.split()


def test_collect_garbage_copes_with_plugins_without_the_hook():
    assert plugins.collect_garbage(["subprocess"], dry_run=True) == {"subprocess": []}


def test_gc_subprocess_has_nothing_to_remove():
    result = run_cli("gc", "--backend", "subprocess")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "subprocess: nothing to remove\n"


def test_gc_unknown_backend_exits_2_and_lists_installed():
    result = run_cli("gc", "--backend", "subprocess", "--backend", "nope")
    assert result.returncode == 2
    assert "'nope'" in result.stderr
    assert "subprocess" in result.stderr.split("installed backends:", 1)[1]
    assert result.stdout == ""  # the known backend was not cleaned up either


# -- with a real Docker engine -----------------------------------------------------------------
def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def docker_client():
    """A Docker SDK client for an engine that answers and has the backend's image."""
    backend = plugins.load_backend("docker")
    availability = backend.check()
    if not availability.usable:
        _skip_or_fail(f"the docker backend is unusable: {availability.reason} ({availability.hint})")
    import docker

    client = docker.from_env(timeout=60)
    image = backend.Options().image
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        _skip_or_fail(f"the Docker image {image!r} is missing (set SANDBOXKIT_DOCKER_IMAGE or run "
                      "scripts/docker-engine.sh)")
    yield client
    client.close()


def _exists(client, container_id: str) -> bool:
    import docker

    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return False
    return True


def _remove(client, container_id: str) -> None:
    import docker

    try:
        client.containers.get(container_id).remove(force=True)
    except docker.errors.NotFound:
        pass


_ORPHAN_MAKER = textwrap.dedent(
    """
    import os, signal, sys
    import sandboxkit

    interp = sandboxkit.interpreter("docker")
    container_id = interp.execute("import socket; socket.gethostname()")
    print(container_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no shutdown, no atexit: the container is orphaned
    """
)


def _make_orphan(pids: list[int]) -> str:
    """Start a host process that opens a docker sandbox and is SIGKILLed; return the container's id.

    The process's pid is appended to ``pids`` first, so the caller can clean up after a failure.
    """
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    child = subprocess.Popen([sys.executable, "-c", _ORPHAN_MAKER], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    pids.append(child.pid)
    try:
        out, err = child.communicate(timeout=HANG_GUARD_SECONDS)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    container_id = out.strip()
    assert child.returncode == -signal.SIGKILL, f"exit {child.returncode}; stderr: {err}"
    assert container_id, f"the child printed no container id; stderr: {err}"
    return container_id


def test_gc_removes_orphan_of_killed_host_and_spares_live_owner(docker_client):
    import sandboxkit

    live = sandboxkit.interpreter("docker")
    orphan_id = ""
    pids: list[int] = []
    try:
        live_id = live.execute("import socket; socket.gethostname()")
        orphan_id = _make_orphan(pids)
        child_pid = pids[0]
        orphan = docker_client.containers.get(orphan_id)
        assert orphan.labels[ownership.PID] == str(child_pid)
        assert orphan.labels[ownership.MARKER] == "true"
        assert docker_client.containers.get(live_id).labels[ownership.PID] == str(os.getpid())

        # A bad name among good ones: nothing is removed at all.
        bad = run_cli("gc", "--backend", "docker", "--backend", "nope")
        assert bad.returncode == 2
        assert _exists(docker_client, orphan_id)

        dry = run_cli("gc", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        dry_lines = [line for line in dry.stdout.splitlines() if orphan_id[:12] in line]
        assert len(dry_lines) == 1 and dry_lines[0].strip().startswith("would remove"), dry.stdout
        assert f"of pid {child_pid} " in dry_lines[0]
        assert live_id[:12] not in dry.stdout
        assert "subprocess: nothing to remove" in dry.stdout.splitlines()
        assert _exists(docker_client, orphan_id), "--dry-run removed the container"

        real = run_cli("gc", "--backend", "docker")
        assert real.returncode == 0, real.stderr
        lines = real.stdout.splitlines()
        assert lines[0] == "docker:"
        removed = [line for line in lines if orphan_id[:12] in line]
        assert len(removed) == 1 and removed[0].strip().startswith("removed docker container"), real.stdout
        assert live_id[:12] not in real.stdout
        assert not _exists(docker_client, orphan_id)

        # The live owner's container survived and its session still works.
        assert _exists(docker_client, live_id)
        assert live.execute("6 * 7") == 42

        again = run_cli("gc", "--backend", "docker", "--dry-run")
        assert again.returncode == 0, again.stderr
        assert orphan_id[:12] not in again.stdout and live_id[:12] not in again.stdout
    finally:
        live.shutdown()
        if orphan_id:
            _remove(docker_client, orphan_id)
        here = ownership.owner_labels()[ownership.HOST]
        for pid in pids:  # whatever the killed child left, should the test have stopped early
            for container in docker_client.containers.list(all=True, ignore_removed=True, filters={"label": f"{ownership.PID}={pid}"}):
                if container.labels.get(ownership.HOST) == here:
                    container.remove(force=True)


def _labels_variants() -> dict[str, tuple[dict[str, str], bool]]:
    """Ownership labels, each with whether gc may remove the container: (labels, provably gone)."""
    mine = ownership.owner_labels()
    return {
        # This live process, with its true start time: the owner is alive.
        "alive": (dict(mine), False),
        # This process's pid, but recorded with another start time: the pid was reused.
        "reused-pid": ({**mine, ownership.STARTED: str(int(mine[ownership.STARTED] or "0") + 1)}, True),
        # A dead owner on another machine: cannot be checked from here.
        "other-host": ({**mine, ownership.HOST: f"elsewhere-{uuid.uuid4().hex[:8]}",
                        ownership.PID: "999999999"}, False),
        # An owner whose pid is not a number: unsure, so left alone.
        "bad-pid": ({**mine, ownership.PID: "not-a-pid"}, False),
        # Not marked as managed by sandboxkit at all.
        "unmarked": ({**{k: v for k, v in mine.items() if k != ownership.MARKER}, ownership.PID: "999999999"},
                     False),
    }


def test_gc_dry_run_judges_owners_by_labels(docker_client):
    """Containers made with crafted labels (created, never started): only the provably gone are listed."""
    image = plugins.load_backend("docker").Options().image
    tag = uuid.uuid4().hex[:8]
    created = {}
    try:
        for case, (labels, _) in _labels_variants().items():
            container = docker_client.containers.create(
                image, command=["true"], labels=labels, name=f"sandboxkit-gc-test-{case}-{tag}",
                network_mode="none",
            )
            created[case] = container.id
        result = run_cli("gc", "--backend", "docker", "--dry-run")
        assert result.returncode == 0, result.stderr
        for case, (_, gone) in _labels_variants().items():
            listed = f"sandboxkit-gc-test-{case}-{tag}" in result.stdout
            assert listed == gone, f"{case}: listed={listed}\n{result.stdout}"
            assert _exists(docker_client, created[case])
    finally:
        for container_id in created.values():
            _remove(docker_client, container_id)
