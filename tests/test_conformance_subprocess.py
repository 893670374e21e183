"""The conformance kit against the built-in ``subprocess`` backend, plus its own start-up checks."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from sandboxkit.conformance import hostile, orphans, suite
from sandboxkit.errors import CodeInterpreterError, SandboxDiedError


class SubprocessSettings:
    backend = "subprocess"
    memory_limit_options = {"memory_mb": 512}


class TestLifecycle(SubprocessSettings, suite.LifecycleSuite):
    pass


class TestState(SubprocessSettings, suite.StateSuite):
    pass


class TestReturnValues(SubprocessSettings, suite.ReturnValueSuite):
    pass


class TestOutput(SubprocessSettings, suite.OutputSuite):
    pass


class TestOutputLimit(SubprocessSettings, suite.OutputLimitSuite):
    pass


class TestErrors(SubprocessSettings, suite.ErrorSuite):
    pass


class TestSubmit(SubprocessSettings, suite.SubmitSuite):
    pass


class TestTools(SubprocessSettings, suite.ToolSuite):
    pass


class TestVariables(SubprocessSettings, suite.VariableSuite):
    pass


class TestTimeouts(SubprocessSettings, suite.TimeoutSuite):
    pass


class TestRobustness(SubprocessSettings, suite.RobustnessSuite):
    pass


class TestDeath(SubprocessSettings, suite.DeathSuite):
    pass


class TestEnvironment(SubprocessSettings, suite.EnvironmentSuite):
    pass


class TestMemoryLimit(SubprocessSettings, suite.MemoryLimitSuite):
    pass


class TestForgedMessages(SubprocessSettings, hostile.ForgedMessageSuite):
    pass


class TestToolAbuse(SubprocessSettings, hostile.ToolAbuseSuite):
    pass


class TestUserCodeAbuse(SubprocessSettings, hostile.UserCodeAbuseSuite):
    pass


class TestOrphans(SubprocessSettings, orphans.OrphanSuite):
    pass


class TestSubprocessStartup(SubprocessSettings):
    """Start-up behaviour only the ``subprocess`` backend can be made to show on purpose."""

    @pytest.mark.skipif(os.name != "posix", reason="needs a POSIX shell script as the sandbox's Python")
    def test_death_at_start_carries_the_stderr_tail(self, make_interpreter, tmp_path):
        fake_python = tmp_path / "fake-python"
        fake_python.write_text("#!/bin/sh\necho 'fake interpreter: cannot run the driver' >&2\nexit 7\n")
        fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
        interp = make_interpreter(python=str(fake_python))
        with pytest.raises(SandboxDiedError) as info:
            interp.start()
        assert info.value.exit_code == 7
        assert "fake interpreter: cannot run the driver" in info.value.stderr_tail
        assert "exit code 7" in str(info.value)
        with pytest.raises(CodeInterpreterError, match="new interpreter"):
            interp.execute("1")

    def test_python_option_selects_the_interpreter(self, make_interpreter):
        interp = make_interpreter(python=sys.executable)
        assert interp.execute("import sys\nsys.executable") == sys.executable
