"""The conformance kit against the ``modal`` backend, driving the real ``modal`` SDK against
sandboxkit's local emulator of Modal's API (no account, no network).

The emulator runs each sandbox in a hardened Docker container when an engine with the test
image answers, so the network blocking and file-system isolation the backend declares are real
and tested. Without an engine it runs local processes, which cannot show them: those two tests
then skip, with that reason, except in CI (``CI=true``), where no engine fails the run.
"""

from __future__ import annotations

from typing import Any

import pytest

from sandboxkit.conformance import dspy_suite_class, hostile, orphans, suite
from sandboxkit.conformance.plugin import in_ci

if not in_ci():
    pytest.importorskip("modal", reason="the modal extra (modal SDK) is not installed")

from sandboxkit_modal.emulator.testing import (  # noqa: E402,F401  (fixtures)
    RunningEmulator,
    modal_emulator_isolated,
    modal_emulator_isolated_server,
)

pytestmark = pytest.mark.usefixtures("modal_emulator_isolated")


@pytest.fixture(autouse=True)
def _containers_in_ci(modal_emulator_isolated: RunningEmulator) -> None:
    if in_ci() and modal_emulator_isolated.sandboxes != "container":
        pytest.fail("CI is set, but the Modal emulator runs sandboxes as local processes (no Docker engine "
                    f"with the image?); it said:\n{modal_emulator_isolated.log()}", pytrace=False)


def _needs_containers(emulator: RunningEmulator) -> None:
    if emulator.sandboxes != "container":
        pytest.skip("the Modal emulator runs sandboxes as local processes here (no Docker engine with the "
                    "image), so Modal's isolation cannot be observed")


class ModalSettings:
    backend = "modal"


class TestLifecycle(ModalSettings, suite.LifecycleSuite):
    pass


class TestState(ModalSettings, suite.StateSuite):
    pass


class TestReturnValues(ModalSettings, suite.ReturnValueSuite):
    pass


class TestOutput(ModalSettings, suite.OutputSuite):
    pass


class TestOutputLimit(ModalSettings, suite.OutputLimitSuite):
    pass


class TestErrors(ModalSettings, suite.ErrorSuite):
    pass


class TestSubmit(ModalSettings, suite.SubmitSuite):
    pass


class TestTools(ModalSettings, suite.ToolSuite):
    pass


class TestVariables(ModalSettings, suite.VariableSuite):
    pass


class TestTimeouts(ModalSettings, suite.TimeoutSuite):
    pass


class TestRobustness(ModalSettings, suite.RobustnessSuite):
    pass


class TestDeath(ModalSettings, suite.DeathSuite):
    pass


class TestEnvironment(ModalSettings, suite.EnvironmentSuite):
    def test_no_network(self, interp: Any, modal_emulator_isolated: RunningEmulator) -> None:
        _needs_containers(modal_emulator_isolated)
        super().test_no_network(interp)

    def test_host_files_are_not_visible(self, interp: Any, tmp_path: Any, modal_emulator_isolated: RunningEmulator) -> None:
        _needs_containers(modal_emulator_isolated)
        super().test_host_files_are_not_visible(interp, tmp_path)


class TestForgedMessages(ModalSettings, hostile.ForgedMessageSuite):
    pass


class TestToolAbuse(ModalSettings, hostile.ToolAbuseSuite):
    pass


class TestUserCodeAbuse(ModalSettings, hostile.UserCodeAbuseSuite):
    pass


class TestOrphans(ModalSettings, orphans.OrphanSuite):
    pass


_DSPySuite = dspy_suite_class()
if _DSPySuite is not None:

    class TestDSPyModules(ModalSettings, _DSPySuite):  # type: ignore[misc, valid-type]
        pass
