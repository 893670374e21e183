"""The conformance kit against the ``docker`` backend, on a real Docker engine.

The image comes from the backend's default (``$SANDBOXKIT_DOCKER_IMAGE``). With no engine
answering, the kit's fixtures skip every test with the reason, or fail it when ``CI`` is true.
Every test also checks that it left no container of this process behind.
"""

from __future__ import annotations

import pytest

from docker_support import engine_problem, in_ci, no_leaked_containers  # noqa: F401  (fixture)
from sandboxkit.conformance import dspy_suite_class, hostile, orphans, suite

pytestmark = [pytest.mark.usefixtures("no_leaked_containers")]
if engine_problem() is not None and not in_ci():
    # The kit's own fixtures only ask whether an engine answers; without the test image (see
    # scripts/test.sh) every test would fail for want of it, so skip with the reason instead.
    pytestmark.append(pytest.mark.skip(reason=str(engine_problem())))


class DockerSettings:
    backend = "docker"
    # Well below the kit's memory bomb (2 GiB): the container is OOM-killed and reported.
    memory_limit_options = {"memory": "256m"}


class TestLifecycle(DockerSettings, suite.LifecycleSuite):
    pass


class TestState(DockerSettings, suite.StateSuite):
    pass


class TestReturnValues(DockerSettings, suite.ReturnValueSuite):
    pass


class TestOutput(DockerSettings, suite.OutputSuite):
    pass


class TestOutputLimit(DockerSettings, suite.OutputLimitSuite):
    pass


class TestErrors(DockerSettings, suite.ErrorSuite):
    pass


class TestSubmit(DockerSettings, suite.SubmitSuite):
    pass


class TestTools(DockerSettings, suite.ToolSuite):
    pass


class TestVariables(DockerSettings, suite.VariableSuite):
    pass


class TestTimeouts(DockerSettings, suite.TimeoutSuite):
    pass


class TestRobustness(DockerSettings, suite.RobustnessSuite):
    pass


class TestDeath(DockerSettings, suite.DeathSuite):
    pass


class TestEnvironment(DockerSettings, suite.EnvironmentSuite):
    pass


class TestMemoryLimit(DockerSettings, suite.MemoryLimitSuite):
    pass


class TestForgedMessages(DockerSettings, hostile.ForgedMessageSuite):
    pass


class TestToolAbuse(DockerSettings, hostile.ToolAbuseSuite):
    pass


class TestUserCodeAbuse(DockerSettings, hostile.UserCodeAbuseSuite):
    pass


class TestOrphans(DockerSettings, orphans.OrphanSuite):
    pass


_DSPySuite = dspy_suite_class()

if _DSPySuite is not None:

    class TestDSPyModules(DockerSettings, _DSPySuite):  # type: ignore[misc, valid-type]
        pass


# -- the attach channel ----------------------------------------------------------------------------
# On this machine the default ("auto") carries the protocol over the socket channel. The engine's
# attach relay is what remote and virtualised engines use: the suites whose tests depend on how
# the bytes travel (framing, large values, tool traffic, interrupts, death, forged and flooding
# traffic) run over it too.
class AttachSettings(DockerSettings):
    options = {"channel": "attach"}


class TestAttachLifecycle(AttachSettings, suite.LifecycleSuite):
    pass


class TestAttachOutput(AttachSettings, suite.OutputSuite):
    pass


class TestAttachOutputLimit(AttachSettings, suite.OutputLimitSuite):
    pass


class TestAttachTools(AttachSettings, suite.ToolSuite):
    pass


class TestAttachVariables(AttachSettings, suite.VariableSuite):
    pass


class TestAttachTimeouts(AttachSettings, suite.TimeoutSuite):
    pass


class TestAttachRobustness(AttachSettings, suite.RobustnessSuite):
    pass


class TestAttachDeath(AttachSettings, suite.DeathSuite):
    pass


class TestAttachForgedMessages(AttachSettings, hostile.ForgedMessageSuite):
    pass


class TestAttachToolAbuse(AttachSettings, hostile.ToolAbuseSuite):
    pass


class TestAttachUserCodeAbuse(AttachSettings, hostile.UserCodeAbuseSuite):
    pass


class TestAttachOrphans(AttachSettings, orphans.OrphanSuite):
    pass
