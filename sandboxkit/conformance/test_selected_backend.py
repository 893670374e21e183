"""The whole conformance kit, against the backend named by ``--sandboxkit-backend``.

``pytest --sandboxkit-backend NAME`` (no paths) runs this module, as do
``pytest --pyargs sandboxkit.conformance.test_selected_backend --sandboxkit-backend NAME`` and
``sandboxkit conformance --backend NAME``. Without the option every test is skipped with the
reason. One class per suite, so ``-k Tools`` selects a part.
"""

from __future__ import annotations

from sandboxkit.conformance import dspy_suite_class, hostile, suite

__all__: list[str] = []


class TestLifecycle(suite.LifecycleSuite):
    backend = None


class TestState(suite.StateSuite):
    backend = None


class TestReturnValues(suite.ReturnValueSuite):
    backend = None


class TestOutput(suite.OutputSuite):
    backend = None


class TestOutputLimit(suite.OutputLimitSuite):
    backend = None


class TestErrors(suite.ErrorSuite):
    backend = None


class TestSubmit(suite.SubmitSuite):
    backend = None


class TestTools(suite.ToolSuite):
    backend = None


class TestVariables(suite.VariableSuite):
    backend = None


class TestTimeouts(suite.TimeoutSuite):
    backend = None


class TestRobustness(suite.RobustnessSuite):
    backend = None


class TestDeath(suite.DeathSuite):
    backend = None


class TestEnvironment(suite.EnvironmentSuite):
    backend = None


class TestMemoryLimit(suite.MemoryLimitSuite):
    backend = None


class TestForgedMessages(hostile.ForgedMessageSuite):
    backend = None


class TestToolAbuse(hostile.ToolAbuseSuite):
    backend = None


class TestUserCodeAbuse(hostile.UserCodeAbuseSuite):
    backend = None


class TestOrphans(suite.OrphanSuite):
    backend = None


_DSPySuite = dspy_suite_class()

if _DSPySuite is not None:

    class TestDSPyModules(_DSPySuite):  # type: ignore[misc, valid-type]
        backend = None
