"""The ``modal`` backend beyond the conformance kit: what it asks Modal for, and clean-up.

Everything except the last test drives the real ``modal`` SDK against sandboxkit's local emulator
of Modal's API (fixtures from :mod:`sandboxkit_modal.emulator.testing`), which records each
sandbox's create request so the tests can check what the backend asked for. The last test is an
opt-in smoke test against real Modal.

Without the ``modal`` SDK the module is skipped, unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any, Iterator

import pytest

import sandboxkit
from sandboxkit.conformance.plugin import in_ci

if not in_ci():
    pytest.importorskip("modal", reason="the modal extra (modal SDK) is not installed")

import modal  # noqa: E402

from sandboxkit import ownership, plugins  # noqa: E402
from sandboxkit_modal import _owner_tags  # noqa: E402
from sandboxkit_modal.emulator.testing import (  # noqa: E402,F401
    RunningEmulator,
    modal_emulator,
    modal_emulator_server,
)

_CANARY = "SANDBOXKIT_MODAL_TEST_HOST_ONLY"
_MARKER_TAG = next(key for key in _owner_tags() if key.endswith(ownership.MARKER[len(ownership.LABEL_PREFIX):]))


def _sandbox_id(interp: Any) -> str:
    """The Modal object id of a started interpreter's sandbox."""
    return interp._session._process.sandbox.object_id


@pytest.fixture
def started(modal_emulator: RunningEmulator) -> Iterator[Any]:
    """A started ``modal`` interpreter with default options, shut down afterwards."""
    interp = sandboxkit.interpreter("modal", timeout=60)
    try:
        interp.start()
        yield interp
    finally:
        interp.shutdown()


def _start(**options: Any) -> Any:
    interp = sandboxkit.interpreter("modal", timeout=60, **options)
    try:
        interp.start()
    except BaseException:
        interp.shutdown()
        raise
    return interp


# -- what the backend asks for at create ------------------------------------------------------


def test_defaults_block_network_and_mount_no_secrets(started: Any, modal_emulator: RunningEmulator) -> None:
    record = modal_emulator.record(_sandbox_id(started))
    # The SDK (1.6) expresses block_network=True as network access type BLOCKED.
    assert record["network_access"] == "BLOCKED"
    assert record["allowed_cidrs"] == []
    assert record["secret_ids"] == []
    assert record["volume_mounts"] == []
    assert record["app_name"] == "sandboxkit"
    assert started.execute("6*7") == 42


def test_env_holds_only_what_sandboxkit_passes(modal_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_CANARY, "host-secret")
    interp = _start()
    try:
        record = modal_emulator.record(_sandbox_id(interp))
        # The host's environment (the canary, the Modal token, PATH, ...) never reaches the sandbox:
        # the only keys are sandboxkit's own driver settings.
        assert all(key.startswith("SANDBOXKIT_") for key in record["env_keys"]), record["env_keys"]
        assert _CANARY not in record["env_keys"]
        assert interp.execute(f"import os; os.environ.get({_CANARY!r}, 'absent')") == "absent"
        assert interp.execute("import os; os.environ.get('MODAL_TOKEN_SECRET', 'absent')") == "absent"
    finally:
        interp.shutdown()


def test_env_option_reaches_the_sandbox(modal_emulator: RunningEmulator) -> None:
    interp = _start(env={"ANSWER": "42"})
    try:
        record = modal_emulator.record(_sandbox_id(interp))
        assert "ANSWER" in record["env_keys"]
        assert interp.execute("import os; os.environ['ANSWER']") == "42"
    finally:
        interp.shutdown()


def test_cidr_allowlist_is_recorded(modal_emulator: RunningEmulator) -> None:
    interp = _start(cidr_allowlist=("10.0.0.0/8", "192.168.1.0/24"))
    try:
        record = modal_emulator.record(_sandbox_id(interp))
        assert sorted(record["allowed_cidrs"]) == ["10.0.0.0/8", "192.168.1.0/24"]
        # Modal takes an allow-list only with blocking off: everything else stays blocked.
        assert record["network_access"] == "ALLOWLIST"
    finally:
        interp.shutdown()


def test_resource_and_lifetime_options_are_recorded(modal_emulator: RunningEmulator) -> None:
    interp = _start(sandbox_timeout=600, idle_timeout=120, cpu=2.0, memory=1024, app_name="sandboxkit-tests")
    try:
        record = modal_emulator.record(_sandbox_id(interp))
        assert record["timeout_secs"] == 600
        assert record["idle_timeout_secs"] == 120
        assert record["milli_cpu"] == 2000
        assert record["memory_mb"] == 1024
        assert record["app_name"] == "sandboxkit-tests"
    finally:
        interp.shutdown()


# -- ownership tags and clean-up --------------------------------------------------------------


def test_owner_tags_are_set_and_listable(started: Any, modal_emulator: RunningEmulator) -> None:
    sandbox_id = _sandbox_id(started)
    listed = {sb.object_id: sb for sb in modal.Sandbox.list(tags={_MARKER_TAG: "true"})}
    assert sandbox_id in listed
    tags = listed[sandbox_id].get_tags()
    expected = _owner_tags()
    for key in expected:
        assert key in tags, f"tag {key} missing from {tags}"
    pid_tag = next(key for key in expected if key.endswith("pid"))
    assert tags[pid_tag] == str(os.getpid())


def test_extra_tags_option_is_added(modal_emulator: RunningEmulator) -> None:
    interp = _start(tags={"team": "research"})
    try:
        sandbox_id = _sandbox_id(interp)
        assert sandbox_id in {sb.object_id for sb in modal.Sandbox.list(tags={"team": "research"})}
        assert _MARKER_TAG in modal.Sandbox.from_id(sandbox_id).get_tags()
    finally:
        interp.shutdown()


def test_shutdown_terminates_the_sandbox(modal_emulator: RunningEmulator) -> None:
    interp = _start()
    sandbox_id = _sandbox_id(interp)
    assert modal.Sandbox.from_id(sandbox_id).poll() is None
    interp.shutdown()
    assert modal.Sandbox.from_id(sandbox_id).poll() is not None


_ORPHAN_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import sandboxkit
    interp = sandboxkit.interpreter("modal", timeout=60)
    interp.start()
    print(interp._session._process.sandbox.object_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_gc_terminates_sandboxes_of_a_killed_owner_only(modal_emulator: RunningEmulator) -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    child = subprocess.run(
        [sys.executable, "-c", _ORPHAN_CHILD], env=env, capture_output=True, text=True, timeout=180
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    orphan_id = child.stdout.strip().splitlines()[-1]
    assert orphan_id.startswith("sb-"), child.stdout
    orphan = modal.Sandbox.from_id(orphan_id)
    try:
        assert orphan.poll() is None, "the orphan sandbox should outlive its SIGKILLed owner"
        own = _start()
        try:
            own_id = _sandbox_id(own)
            results = plugins.collect_garbage(["modal"])
            removed = results["modal"]
            assert any(orphan_id in line for line in removed), removed
            assert not any(own_id in line for line in removed), removed
            assert modal.Sandbox.from_id(orphan_id).poll() is not None
            assert modal.Sandbox.from_id(own_id).poll() is None
            assert own.execute("1 + 1") == 2
        finally:
            own.shutdown()
    finally:
        if orphan.poll() is None:  # gc failed: do not leave the sandbox behind
            orphan.terminate()


def test_gc_dry_run_terminates_nothing(modal_emulator: RunningEmulator) -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    child = subprocess.run(
        [sys.executable, "-c", _ORPHAN_CHILD], env=env, capture_output=True, text=True, timeout=180
    )
    orphan_id = child.stdout.strip().splitlines()[-1]
    orphan = modal.Sandbox.from_id(orphan_id)
    try:
        removed = plugins.collect_garbage(["modal"], dry_run=True)["modal"]
        assert any(orphan_id in line for line in removed), removed
        assert orphan.poll() is None
    finally:
        orphan.terminate()


# -- availability ------------------------------------------------------------------------------


def _backends_json(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from sandboxkit.cli import main; sys.exit(main())", "backends", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return {row["name"]: row for row in json.loads(out.stdout)}


def test_backends_reports_missing_credentials(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_SERVER_URL")}
    env["MODAL_CONFIG_PATH"] = str(tmp_path / "missing.toml")
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    row = _backends_json(env)["modal"]
    assert row["usable"] is False
    assert "credentials" in row["reason"]
    assert "modal token new" in row["hint"]


def test_backends_reports_usable_with_the_emulator(modal_emulator: RunningEmulator, tmp_path: Any) -> None:
    env = {**os.environ, "MODAL_CONFIG_PATH": str(tmp_path / "missing.toml"), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    row = _backends_json(env)["modal"]
    assert row["usable"] is True, row


# -- real Modal (opt-in) ------------------------------------------------------------------------

_REAL_MODAL = bool(
    os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET") and not os.environ.get("MODAL_SERVER_URL")
)


@pytest.mark.skipif(
    not _REAL_MODAL,
    reason="runs against real Modal only when MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are set and "
    "MODAL_SERVER_URL is not set (i.e. not the emulator)",
)
def test_real_modal_round_trip() -> None:
    interp = sandboxkit.interpreter("modal")
    try:
        assert interp.execute("6*7") == 42
    finally:
        interp.shutdown()
