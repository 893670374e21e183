"""The backend-agnostic conformance tests, as mixin classes a test module subclasses.

Every class here runs against a real backend through the fixtures of
:mod:`sandboxkit.conformance.plugin`. None of them is collected on its own (their names do not
start with ``Test``); subclass one, or ``CoreSuite`` for all, and set ``backend``::

    class TestMineTools(ToolSuite):
        backend = "mine"            # None: the backend named by --sandboxkit-backend

Class attributes a subclass may set:

``backend``
    the backend's name, or ``None`` for ``--sandboxkit-backend``.
``options``
    options for every interpreter the tests make (on top of ``sandboxkit_default_options``,
    which sets a generous execute timeout so a broken backend fails instead of hanging).
``memory_limit_options``
    options that make the backend enforce a memory limit well below ``memory_bomb_mb``; ``None``
    means ``{"memory_mb": 512}`` when the backend has a ``memory_mb`` option, else nothing (the
    backend then has to limit memory by default).

Tests that need a :class:`sandboxkit.Capability` the backend does not declare are skipped with
the reason. No test asserts on elapsed time: concurrency is proven with barriers, and waits that
could hang are bounded by ``hang_limit`` and reported as hangs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import importlib.util
import sys
import textwrap
import threading
import time
from typing import Any, Callable, ClassVar, Mapping

import pytest
from dspy.primitives.code_interpreter import FinalOutput
from pydantic import BaseModel

from sandboxkit.backend import Capability
from sandboxkit.conformance import requires
from sandboxkit.errors import (
    CodeExecutionError,
    CodeInterpreterError,
    ExecutionTimeoutError,
    SandboxDiedError,
)

__all__ = [
    "CoreSuite",
    "DeathSuite",
    "EnvironmentSuite",
    "ErrorSuite",
    "HostileSuite",
    "LifecycleSuite",
    "MemoryLimitSuite",
    "OutputLimitSuite",
    "OrphanSuite",
    "OutputSuite",
    "ReturnValueSuite",
    "RobustnessSuite",
    "StateSuite",
    "SubmitSuite",
    "SuiteBase",
    "TimeoutSuite",
    "ToolSuite",
    "VariableSuite",
    "assert_fatal",
    "bounded",
]

#: DSPy >= 3.3 separates recoverable code errors from fatal interpreter errors; older DSPy does not.
_DISTINCT_ERRORS = CodeExecutionError is not CodeInterpreterError


# -- helpers ------------------------------------------------------------------------------------
def code(text: str) -> str:
    """Dedent a snippet of sandbox code written inline in a test."""
    return textwrap.dedent(text).strip("\n") + "\n"


def bounded(fn: Callable[[], Any], limit: float) -> Any:
    """Call ``fn`` on a helper thread; fail the test as hung if it has not returned in ``limit`` s.

    Whatever ``fn`` returns or raises is passed on. A hung call is left to the fixture teardown,
    which shuts its interpreter down.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="sandboxkit-conformance-bounded", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"the call did not return within {limit:g}s: it hangs", pytrace=False)
    if "error" in box:
        raise box["error"]
    return box["value"]


def assert_fatal(exc: BaseException) -> None:
    """``exc`` is a session-ending ``CodeInterpreterError``, not a recoverable code error."""
    assert isinstance(exc, CodeInterpreterError), f"expected a CodeInterpreterError, got {exc!r}"
    if _DISTINCT_ERRORS:
        assert not isinstance(exc, CodeExecutionError), f"{exc!r} must not be a recoverable CodeExecutionError"


def assert_session_ended(interp: Any) -> None:
    """Later calls refuse with a CodeInterpreterError telling the caller to create a new interpreter."""
    for call in (lambda: interp.execute("1 + 1"), interp.start):
        with pytest.raises(CodeInterpreterError) as info:
            call()
        assert_fatal(info.value)
        assert "new interpreter" in str(info.value).lower()


def assert_clean(interp: Any) -> None:
    """The session answers exactly: a value, then output, with nothing left over from before."""
    assert interp.execute("6 * 7") == 42
    assert interp.execute('print("after")') == "after\n"


class PointModel(BaseModel):
    x: int
    tags: list[str]


@dataclasses.dataclass
class PointRecord:
    x: int
    y: float


PointTuple = collections.namedtuple("PointTuple", "x y")


class SuiteBase:
    """Configuration and fixtures shared by the suite classes."""

    #: The backend under test; ``None`` means the one named by ``--sandboxkit-backend``.
    backend: ClassVar[str | None] = None
    #: Options for every interpreter the tests make.
    options: ClassVar[Mapping[str, Any]] = {}
    #: The kit's defaults, below ``options``: a broken backend fails a test instead of hanging it.
    sandboxkit_default_options: ClassVar[Mapping[str, Any]] = {"timeout": 60}
    #: Options imposing a memory limit (see the module docstring); ``None``: the kit's guess.
    memory_limit_options: ClassVar[Mapping[str, Any] | None] = None
    #: How much the memory test tries to allocate, in MiB.
    memory_bomb_mb: ClassVar[int] = 2048
    #: Seconds after which a call that must return is reported as hung.
    hang_limit: ClassVar[float] = 120.0

    @pytest.fixture
    def interp(self, make_interpreter: Callable[..., Any]) -> Any:
        """A fresh, not yet started interpreter on the backend under test."""
        return make_interpreter()


# -- lifecycle ----------------------------------------------------------------------------------
class LifecycleSuite(SuiteBase):
    """start/execute/shutdown as DSPy's CodeInterpreter protocol describes them."""

    def test_execute_starts_lazily(self, interp: Any) -> None:
        assert interp.execute("6 * 7") == 42

    def test_start_is_idempotent(self, interp: Any) -> None:
        interp.start()
        interp.execute("marker = 'first session'")
        interp.start()
        assert interp.execute("marker") == "first session"

    def test_shutdown_is_idempotent_and_terminal(self, interp: Any) -> None:
        interp.execute("x = 1")
        interp.shutdown()
        interp.shutdown()
        assert_session_ended(interp)

    def test_shutdown_before_start_is_terminal(self, interp: Any) -> None:
        interp.shutdown()
        assert_session_ended(interp)

    def test_context_manager_starts_and_shuts_down(self, interp: Any) -> None:
        with interp as entered:
            assert entered is interp
            interp.execute("y = 5")
            assert interp.execute("y * 2") == 10
        assert_session_ended(interp)

    def test_context_manager_shuts_down_on_error(self, interp: Any) -> None:
        with pytest.raises(KeyError):
            with interp:
                interp.execute("z = 1")
                raise KeyError("host-side failure")
        assert_session_ended(interp)

    def test_interpreter_is_callable(self, interp: Any) -> None:
        assert interp("6 * 7") == 42
        assert interp("n + 1", {"n": 41}) == 42

    def test_execution_instructions(self, interp: Any, make_factory: Callable[..., Any]) -> None:
        assert isinstance(interp.execution_instructions, str) and interp.execution_instructions.strip()
        factory = make_factory()
        assert factory.execution_instructions == interp.execution_instructions

    def test_factory_makes_independent_interpreters(self, make_factory: Callable[..., Any]) -> None:
        factory = make_factory()
        first, second = factory(), factory()
        assert first is not second
        first.execute("only_here = 1")
        assert second.execute("'only_here' in globals()") is False

    def test_separate_interpreters_run_in_parallel(self, make_interpreter: Callable[..., Any]) -> None:
        count = 3
        barrier = threading.Barrier(count, timeout=20)

        def rendezvous() -> str:
            barrier.wait()  # breaks (and the tool fails) unless all sessions run at once
            return "met"

        interps = [make_interpreter() for _ in range(count)]
        for index, interp in enumerate(interps):
            interp.tools["rendezvous"] = rendezvous
            interp.execute(f"mine = {index}")
        results: list[Any] = [None] * count

        def run(index: int) -> None:
            try:
                results[index] = interps[index].execute("(mine, rendezvous())")
            except BaseException as exc:
                results[index] = exc

        threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.hang_limit)
        assert results == [[index, "met"] for index in range(count)]

    def test_concurrent_execute_on_one_interpreter_is_refused(self, interp: Any) -> None:
        entered, release = threading.Event(), threading.Event()

        def hold() -> str:
            entered.set()
            release.wait(self.hang_limit)
            return "released"

        interp.tools["hold"] = hold
        interp.execute("kept = 'state'")
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(interp.execute("hold()")))
        worker.start()
        try:
            assert entered.wait(self.hang_limit), "the first execute never reached its tool"
            with pytest.raises(CodeInterpreterError) as info:
                interp.execute("1 + 1")
            assert_fatal(info.value)
            assert "already running" in str(info.value)
        finally:
            release.set()
            worker.join(self.hang_limit)
        assert outcome == ["released"]
        assert interp.execute("kept") == "state"


# -- state ----------------------------------------------------------------------------------------
class StateSuite(SuiteBase):
    """The namespace persists across executes of one interpreter, and only of that one."""

    def test_variables_persist(self, interp: Any) -> None:
        interp.execute("counter = 1")
        interp.execute("counter += 1")
        assert interp.execute("counter") == 2

    def test_imports_persist(self, interp: Any) -> None:
        interp.execute("import json as j")
        assert interp.execute("j.dumps([1])") == "[1]"

    def test_functions_and_classes_persist(self, interp: Any) -> None:
        interp.execute(code("""
            def square(v):
                return v * v

            class Box:
                def __init__(self, v):
                    self.v = v
        """))
        assert interp.execute("square(Box(7).v)") == 49

    def test_state_is_per_interpreter(self, make_interpreter: Callable[..., Any]) -> None:
        first, second = make_interpreter(), make_interpreter()
        first.execute("private = 'first'")
        second.execute("private = 'second'")
        assert first.execute("private") == "first"
        assert second.execute("private") == "second"


# -- return values ------------------------------------------------------------------------------
class ReturnValueSuite(SuiteBase):
    """What execute returns: the final expression's value, else the captured output, else None."""

    def test_final_expression_value(self, interp: Any) -> None:
        result = interp.execute("6 * 7")
        assert result == 42 and isinstance(result, int)

    def test_final_expression_wins_over_prints(self, interp: Any) -> None:
        assert interp.execute('print("noise")\n6 * 7') == 42

    @pytest.mark.parametrize(
        "expression, expected",
        [
            ('"text"', "text"),
            ("2.5", 2.5),
            ("True", True),
            ("False", False),
            ("0", 0),
            ("[1, 'a', None]", [1, "a", None]),
            ('{"k": [1, 2], "n": None}', {"k": [1, 2], "n": None}),
        ],
    )
    def test_json_native_values(self, interp: Any, expression: str, expected: Any) -> None:
        result = interp.execute(expression)
        assert result == expected and type(result) is type(expected)

    @pytest.mark.parametrize("source", ["x = 1", "None", "pass", ""])
    def test_no_value_and_no_output_is_none(self, interp: Any, source: str) -> None:
        assert interp.execute(source) is None

    def test_printed_output(self, interp: Any) -> None:
        assert interp.execute('print("hi")') == "hi\n"

    def test_none_value_falls_back_to_output(self, interp: Any) -> None:
        assert interp.execute('print("hi")\nNone') == "hi\n"

    def test_non_json_value_is_its_repr(self, interp: Any) -> None:
        result = interp.execute(code("""
            class Point:
                def __repr__(self):
                    return "Point(1, 2)"
            Point()
        """))
        assert result == "Point(1, 2)"
        assert interp.execute("complex(1, 2)") == "(1+2j)"


# -- output capture ------------------------------------------------------------------------------
class OutputSuite(SuiteBase):
    """Every way code can write output is captured, and none of it corrupts later results."""

    def test_print(self, interp: Any) -> None:
        assert interp.execute('print("one")\nprint("two", 3)') == "one\ntwo 3\n"
        assert_clean(interp)

    def test_stderr_is_merged_in_order(self, interp: Any) -> None:
        result = interp.execute('import sys\nprint("a")\nsys.stderr.write("b\\n")\nprint("c")')
        assert result == "a\nb\nc\n"
        assert_clean(interp)

    def test_os_write_to_fds_1_and_2(self, interp: Any) -> None:
        assert interp.execute('import os\n_ = os.write(1, b"fd1\\n")\n_ = os.write(2, b"fd2\\n")') == "fd1\nfd2\n"
        assert_clean(interp)

    def test_dunder_stdout_and_stderr(self, interp: Any) -> None:
        result = interp.execute('import sys\nsys.__stdout__.write("dunder out\\n")\nsys.__stderr__.write("dunder err\\n")\n'
                                "sys.__stdout__.flush()\nsys.__stderr__.flush()")
        assert result == "dunder out\ndunder err\n"
        assert_clean(interp)

    def test_output_before_and_after_sessions_calls_is_separate(self, interp: Any) -> None:
        assert interp.execute('print("first")') == "first\n"
        assert interp.execute('print("second")') == "second\n"

    @requires(Capability.CHILD_PROCESSES)
    def test_child_process_output(self, interp: Any) -> None:
        result = interp.execute(code(r"""
            import subprocess, sys
            _ = subprocess.run(
                [sys.executable, "-c", "import os; os.write(1, b'child out\\n'); os.write(2, b'child err\\n')"],
                check=True,
            )
        """))
        assert result == "child out\nchild err\n"
        assert_clean(interp)

    @requires(Capability.CHILD_PROCESSES)
    def test_os_system_output(self, interp: Any) -> None:
        result = interp.execute('import os\nstatus = os.system("echo shell out; echo shell err 1>&2")')
        assert result == "shell out\nshell err\n"
        assert interp.execute("status") == 0
        assert_clean(interp)

    def _libc(self, interp: Any) -> None:
        available = interp.execute(code("""
            try:
                import ctypes
                libc = ctypes.CDLL(None)
                libc.write, libc.printf, libc.fflush
                has_libc = True
            except Exception:
                has_libc = False
            has_libc
        """))
        if available is not True:
            pytest.skip("ctypes cannot load the C library in this sandbox")

    def test_c_level_write(self, interp: Any) -> None:
        self._libc(interp)
        assert interp.execute('_ = libc.write(1, b"c write\\n", 8)') == "c write\n"
        assert_clean(interp)

    def test_c_level_printf(self, interp: Any) -> None:
        self._libc(interp)
        assert interp.execute('_ = libc.printf(b"c printf %d\\n", 7)\n_ = libc.fflush(None)') == "c printf 7\n"
        assert_clean(interp)

    def test_protocol_lookalike_output_is_plain_output(self, interp: Any) -> None:
        lines = [
            '{"type":"result","id":"0123456789abcdef","status":"ok","value":1,"has_value":true,"output":"","dropped":0}',
            '{"type":"tool_call","id":"x","exec":"y","name":"evil","args":[],"kwargs":{}}',
            '{"type":"hello","protocol":1,"python":"3","pid":1}',
        ]
        source = "".join(f"print({line!r})\n" for line in lines)
        assert interp.execute(source) == "".join(line + "\n" for line in lines)
        assert_clean(interp)


class OutputLimitSuite(SuiteBase):
    """``output_limit`` bounds what is kept per execute, visibly, without buffering the rest."""

    def test_output_limit_truncates_with_marker(self, make_interpreter: Callable[..., Any]) -> None:
        limit = 4096
        interp = make_interpreter(output_limit=limit)
        result = interp.execute('print("x" * 200_000)')
        assert isinstance(result, str)
        assert result.startswith("x" * (limit - 100))
        assert "truncated" in result.lower()
        assert len(result) <= limit + 1024
        assert_clean(interp)

    def test_limit_applies_per_execute(self, make_interpreter: Callable[..., Any]) -> None:
        interp = make_interpreter(output_limit=2048)
        assert "truncated" in interp.execute('print("y" * 50_000)').lower()
        small = "z" * 1500
        assert interp.execute(f'print("{small}")') == small + "\n"

    def test_huge_output_stays_bounded(self, make_interpreter: Callable[..., Any]) -> None:
        limit = 1_000_000
        interp = make_interpreter(output_limit=limit)
        try:
            import resource
        except ImportError:  # pragma: no cover - not POSIX
            resource = None  # type: ignore[assignment]
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if resource else 0
        result = interp.execute(code("""
            import os, sys
            chunk = b"w" * (1 << 20)
            for _ in range(100):
                os.write(1, chunk)
            text = "v" * (1 << 20)
            for _ in range(100):
                print(text, end="")
            sys.stdout.flush()
        """))
        assert isinstance(result, str) and "truncated" in result.lower()
        assert len(result) <= limit + 1024  # the kept output plus the marker
        assert result.startswith("w" * 1000)
        if resource is not None:
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
            per_mib = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss units
            assert grown / per_mib < 150, f"the host grew by {grown / per_mib:.0f} MiB for 200 MiB of output"
        assert_clean(interp)

    def test_output_flood_between_executes_stays_bounded(self, make_interpreter: Callable[..., Any]) -> None:
        limit = 100_000
        interp = make_interpreter(output_limit=limit)
        interp.execute(code("""
            import os, resource, threading, time
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            def flood():
                time.sleep(0.2)  # after this execute has returned: the sandbox is idle
                chunk = b"f" * (1 << 20)
                for _ in range(50):
                    os.write(1, chunk)
            flooder = threading.Thread(target=flood)
            flooder.start()
        """))
        time.sleep(1.5)  # the flood happens while no execute runs
        result = interp.execute(code("""
            flooder.join()  # returns only if the flood was drained (or stored) while idle
            import fcntl, stat, struct, termios
            def pending_output():  # bytes of output waiting in the capture (a file or a pipe)
                mode = os.fstat(1).st_mode
                if stat.S_ISREG(mode):
                    return os.fstat(1).st_size
                if stat.S_ISFIFO(mode):
                    return struct.unpack("i", fcntl.ioctl(1, termios.FIONREAD, b"\\0" * 4))[0]
                return 0
            # What the sandbox still holds of the flood, on disk, in its capture or in memory.
            pending = pending_output() + 1024 * max(
                0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before)
            print('next')
        """))
        # Output between executes counts toward the next one, within its limit.
        assert isinstance(result, str) and result.startswith("f" * 1000)
        assert "truncated" in result.lower() and len(result) <= limit + 1024
        # The 50 MiB did not pile up in the sandbox while it was idle (the driver keeps a few MiB).
        assert interp.execute("pending") < 16 << 20
        assert interp.execute("print('clean')") == "clean\n"
        assert_clean(interp)


# -- errors ---------------------------------------------------------------------------------------
class ErrorSuite(SuiteBase):
    """Failing code raises SyntaxError or CodeExecutionError, and the session carries on."""

    def test_syntax_error(self, interp: Any) -> None:
        interp.execute("kept = 1")
        with pytest.raises(SyntaxError) as info:
            interp.execute("x = 1\ny = (\n")
        assert "line 2" in str(info.value)
        assert interp.execute("kept") == 1
        assert_clean(interp)

    def test_zero_division(self, interp: Any) -> None:
        interp.execute("kept = 'yes'")
        with pytest.raises(CodeExecutionError) as info:
            interp.execute("1 / 0")
        assert "ZeroDivisionError" in str(info.value)
        assert "division by zero" in str(info.value)
        assert interp.execute("kept") == "yes"

    def test_exception_arguments_are_named_as_dspy_names_them(self, interp: Any) -> None:
        with pytest.raises(CodeExecutionError, match=r"ValueError: \[918273\]"):
            interp.execute("raise ValueError(918273)")
        with pytest.raises(CodeExecutionError, match=r"KeyError: \['missing'\]"):
            interp.execute("{}['missing']")
        assert_clean(interp)

    def test_name_error(self, interp: Any) -> None:
        with pytest.raises(CodeExecutionError) as info:
            interp.execute("undefined_name_42 + 1")
        assert "NameError" in str(info.value)
        assert "undefined_name_42" in str(info.value)
        assert_clean(interp)

    @pytest.mark.parametrize(
        "source, name",
        [
            ("raise SystemExit(3)", "SystemExit"),
            ("import sys\nsys.exit('bye')", "SystemExit"),
            ("exit()", "SystemExit"),
            ("raise KeyboardInterrupt", "KeyboardInterrupt"),
            ("class Boom(BaseException):\n    pass\nraise Boom('boom')", "Boom"),
            ("raise GeneratorExit", "GeneratorExit"),
        ],
    )
    def test_base_exceptions_are_recoverable(self, interp: Any, source: str, name: str) -> None:
        interp.execute("kept = [1, 2]")
        with pytest.raises(CodeExecutionError) as info:
            interp.execute(source)
        assert name in str(info.value)
        assert interp.execute("kept") == [1, 2]
        assert_clean(interp)

    def test_traceback_line_numbers(self, interp: Any) -> None:
        with pytest.raises(CodeExecutionError) as info:
            interp.execute(code("""
                def divide(a, b):
                    return a / b
                x = 1
                divide(x, 0)
            """))
        message = str(info.value)
        assert "line 2" in message and "line 4" in message

    def test_output_before_error_is_reported(self, interp: Any) -> None:
        with pytest.raises(CodeExecutionError) as info:
            interp.execute('print("progress so far")\nraise ValueError("bad value")')
        assert "ValueError" in str(info.value) and "bad value" in str(info.value)
        assert "progress so far" in str(info.value)
        assert_clean(interp)


# -- SUBMIT ---------------------------------------------------------------------------------------
class SubmitSuite(SuiteBase):
    """SUBMIT ends an execute with a FinalOutput mapping the output fields."""

    FIELDS: ClassVar[list[dict[str, str]]] = [{"name": "answer", "type": "str"}, {"name": "confidence", "type": "float"}]

    @pytest.fixture
    def submitter(self, interp: Any) -> Any:
        interp.output_fields = list(self.FIELDS)
        return interp

    def test_positional(self, submitter: Any) -> None:
        result = submitter.execute('SUBMIT("yes", 0.9)')
        assert isinstance(result, FinalOutput)
        assert result.output == {"answer": "yes", "confidence": 0.9}

    def test_keyword(self, submitter: Any) -> None:
        result = submitter.execute('SUBMIT(confidence=0.5, answer="no")')
        assert isinstance(result, FinalOutput)
        assert result.output == {"answer": "no", "confidence": 0.5}

    def test_mixed(self, submitter: Any) -> None:
        result = submitter.execute('SUBMIT("maybe", confidence=0.1)')
        assert isinstance(result, FinalOutput)
        assert result.output == {"answer": "maybe", "confidence": 0.1}

    def test_structured_values(self, submitter: Any) -> None:
        result = submitter.execute('SUBMIT({"a": [1, None]}, [0.5, "x"])')
        assert isinstance(result, FinalOutput)
        assert result.output == {"answer": {"a": [1, None]}, "confidence": [0.5, "x"]}

    def test_without_output_fields_single_value(self, interp: Any) -> None:
        result = interp.execute("SUBMIT(42)")
        assert isinstance(result, FinalOutput)
        assert result.output == {"output": 42}

    @pytest.mark.parametrize("call", ['SUBMIT("only")', 'SUBMIT("a", 0.5, "extra")', 'SUBMIT("a", wrong=1)'])
    def test_wrong_fields_are_recoverable(self, submitter: Any, call: str) -> None:
        submitter.execute("kept = 'here'")
        with pytest.raises(CodeExecutionError) as info:
            submitter.execute(call)
        assert "answer" in str(info.value) and "confidence" in str(info.value)
        assert submitter.execute("kept") == "here"
        assert submitter.execute('SUBMIT("fine", 1.0)') == FinalOutput({"answer": "fine", "confidence": 1.0})

    def test_too_few_values_are_worded_as_python_words_them(self, submitter: Any) -> None:
        with pytest.raises(CodeExecutionError) as info:
            submitter.execute("SUBMIT('only')")
        assert "missing 1 required positional argument: 'confidence'" in str(info.value)

    def test_nothing_runs_after_submit(self, submitter: Any) -> None:
        result = submitter.execute(code("""
            SUBMIT("done", 1.0)
            print("printed after SUBMIT")
            assigned_after_submit = True
        """))
        assert result == FinalOutput({"answer": "done", "confidence": 1.0})
        assert submitter.execute("'assigned_after_submit' in globals()") is False
        assert submitter.execute('print("next")') == "next\n"

    def test_submit_inside_function_and_loop(self, submitter: Any) -> None:
        result = submitter.execute(code("""
            def finish(v):
                SUBMIT(str(v), 0.25)
            for i in range(10):
                if i == 3:
                    finish(i)
            reached_end = True
        """))
        assert result == FinalOutput({"answer": "3", "confidence": 0.25})
        assert submitter.execute("'reached_end' in globals()") is False

    def test_output_fields_set_after_creation(self, interp: Any) -> None:
        assert interp.execute("SUBMIT(1)") == FinalOutput({"output": 1})
        interp.output_fields = [{"name": "first"}, {"name": "second"}]
        interp._tools_registered = False
        assert interp.execute("SUBMIT(1, 2)") == FinalOutput({"first": 1, "second": 2})

    def test_tools_registered_reset_is_honoured(self, interp: Any) -> None:
        interp.tools = {"first_tool": lambda: "one"}
        assert interp.execute("first_tool()") == "one"
        interp.tools = {"second_tool": lambda: "two"}
        interp.output_fields = [{"name": "result"}]
        interp._tools_registered = False
        assert interp.execute("second_tool()") == "two"
        assert interp.execute("'first_tool' in globals()") is False
        assert interp.execute("SUBMIT(second_tool())") == FinalOutput({"result": "two"})


# -- tools ----------------------------------------------------------------------------------------
class ToolSuite(SuiteBase):
    """Host tools are callable from sandbox code with DSPy's argument and result semantics."""

    def test_positional_and_keyword_arguments(self, interp: Any) -> None:
        def add(a: int, b: int) -> int:
            return a + b

        interp.tools["add"] = add
        assert interp.execute("add(2, 3)") == 5
        assert interp.execute("add(a=2, b=3)") == 5
        assert interp.execute("add(2, b=3)") == 5

    def test_defaults_and_var_keywords(self, interp: Any) -> None:
        def greet(name: str, greeting: str = "hello") -> str:
            return f"{greeting} {name}"

        def keys(**kwargs: Any) -> list[str]:
            return sorted(kwargs)

        interp.tools.update(greet=greet, keys=keys)
        assert interp.execute('greet("ada")') == "hello ada"
        assert interp.execute('greet("ada", greeting="hi")') == "hi ada"
        assert interp.execute("keys(b=1, a=2)") == ["a", "b"]

    def test_structured_arguments_arrive_intact(self, interp: Any) -> None:
        received: list[Any] = []

        def record(payload: Any) -> str:
            received.append(payload)
            return "ok"

        interp.tools["record"] = record
        assert interp.execute('record({"a": [1, 2.5, None, True], "b": {"c": "é"}})') == "ok"
        assert received == [{"a": [1, 2.5, None, True], "b": {"c": "é"}}]

    def test_async_tool(self, interp: Any) -> None:
        async def double(x: int) -> int:
            await asyncio.sleep(0)
            return x * 2

        interp.tools["double"] = double
        assert interp.execute("double(21)") == 42

    def test_tool_exception_is_catchable(self, interp: Any) -> None:
        def fail() -> None:
            raise ValueError("tool said no")

        interp.tools["fail"] = fail
        result = interp.execute(code("""
            try:
                fail()
                outcome = "no error"
            except Exception as exc:
                outcome = str(exc)
            outcome
        """))
        assert "ValueError" in result and "tool said no" in result
        with pytest.raises(CodeExecutionError) as info:
            interp.execute("fail()")
        assert "ValueError" in str(info.value) and "tool said no" in str(info.value)
        assert_clean(interp)

    def test_bad_arguments_are_a_tool_error(self, interp: Any) -> None:
        interp.tools["one_arg"] = lambda value: value
        with pytest.raises(CodeExecutionError) as info:
            interp.execute("one_arg(1, 2, 3)")
        assert "TypeError" in str(info.value)
        assert_clean(interp)

    def test_unknown_tool_is_a_clear_error(self, interp: Any) -> None:
        interp.tools["temporary"] = lambda: "here"
        assert interp.execute("kept_reference = temporary\nkept_reference()") == "here"
        del interp.tools["temporary"]
        assert interp.execute("'temporary' in globals()") is False
        with pytest.raises(CodeExecutionError) as info:
            interp.execute("kept_reference()")
        assert "temporary" in str(info.value) and "unknown tool" in str(info.value).lower()
        assert_clean(interp)

    @pytest.mark.parametrize(
        "value, expected",
        [
            (PointModel(x=1, tags=["a"]), ["dict", {"x": 1, "tags": ["a"]}]),
            (PointRecord(x=2, y=0.5), ["dict", {"x": 2, "y": 0.5}]),
            (PointTuple(3, 4), ["dict", {"x": 3, "y": 4}]),
            (float("nan"), ["str", "nan"]),
            (None, ["str", ""]),
            ([1, "two", None], ["list", [1, "two", None]]),
            ("text", ["str", "text"]),
        ],
        ids=["pydantic", "dataclass", "namedtuple", "nan", "none", "list", "str"],
    )
    def test_result_conversions(self, interp: Any, value: Any, expected: list[Any]) -> None:
        interp.tools["produce"] = lambda: value
        assert interp.execute("r = produce()\n(type(r).__name__, r)") == expected

    def test_tools_dict_mutated_between_executes(self, interp: Any) -> None:
        interp.tools["alpha"] = lambda: "a"
        assert interp.execute("alpha()") == "a"
        interp.tools["beta"] = lambda: "b"
        interp.tools["alpha"] = lambda: "A"
        assert interp.execute("alpha() + beta()") == "Ab"

    def test_invalid_tool_names_are_refused(self, interp: Any) -> None:
        interp.tools["class"] = lambda: 1
        with pytest.raises(CodeInterpreterError) as info:
            interp.execute("1")
        assert_fatal(info.value)
        del interp.tools["class"]
        assert interp.execute("6 * 7") == 42

    def test_concurrent_calls_run_concurrently_on_the_host(self, interp: Any) -> None:
        barrier = threading.Barrier(4, timeout=10)

        def meet(k: int) -> int:
            barrier.wait()  # raises BrokenBarrierError unless 4 calls are in flight at once
            return k

        interp.tools["meet"] = meet
        result = interp.execute(code("""
            import threading
            results = [None] * 4
            def call(k):
                try:
                    results[k] = meet(k)
                except Exception as exc:
                    results[k] = "error: %s" % exc
            threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results
        """))
        assert result == [0, 1, 2, 3]

    def test_tool_can_use_another_interpreter(self, interp: Any, make_factory: Callable[..., Any]) -> None:
        factory = make_factory()

        def nested(source: str) -> Any:
            inner = factory()
            try:
                return inner.execute(source)
            finally:
                inner.shutdown()

        interp.tools["nested"] = nested
        interp.execute("outer = 1")
        assert interp.execute("nested('6 * 7') + outer") == 43
        assert interp.execute("nested(\"'outer' in globals()\")") is False

    def test_tool_calling_its_own_interpreter_gets_an_error(self, interp: Any) -> None:
        seen: list[BaseException] = []

        def reenter() -> Any:
            try:
                return interp.execute("1 + 1")
            except BaseException as exc:
                seen.append(exc)
                raise

        interp.tools["reenter"] = reenter
        result = interp.execute(code("""
            try:
                reenter()
                outcome = "no error"
            except Exception as exc:
                outcome = str(exc)
            outcome
        """))
        assert len(seen) == 1 and isinstance(seen[0], CodeInterpreterError)
        assert "CodeInterpreterError" in result
        assert_clean(interp)


# -- variables ----------------------------------------------------------------------------------
class VariableSuite(SuiteBase):
    """Variables are injected as globals with DSPy's conversions and re-send semantics."""

    @pytest.mark.parametrize(
        "value, type_name",
        [
            ("héllo 🙂", "str"),
            (7, "int"),
            (-(2**60), "int"),
            (2.5, "float"),
            (True, "bool"),
            (None, "NoneType"),
            ([1, "a", None, 2.5], "list"),
            ({"a": 1, "b": [1, 2]}, "dict"),
            ({"x": [{"y": {"z": [1, 2, {"w": None}]}}]}, "dict"),
        ],
        ids=["str", "int", "big-int", "float", "bool", "none", "list", "dict", "nested"],
    )
    def test_round_trip(self, interp: Any, value: Any, type_name: str) -> None:
        assert interp.execute("(type(v).__name__, v)", {"v": value}) == [type_name, value]

    @pytest.mark.parametrize(
        "value, expected",
        [
            ((1, "two"), [1, "two"]),
            ({3, 1, 2}, [1, 2, 3]),
            (PointModel(x=5, tags=["t"]), {"x": 5, "tags": ["t"]}),
            (PointRecord(x=6, y=1.5), {"x": 6, "y": 1.5}),
        ],
        ids=["tuple", "set", "pydantic", "dataclass"],
    )
    def test_conversions(self, interp: Any, value: Any, expected: Any) -> None:
        result = interp.execute("(type(v).__name__, v)", {"v": value})
        assert result == [type(expected).__name__, expected]

    def test_non_finite_floats(self, interp: Any) -> None:
        result = interp.execute(
            "import math\n(math.isinf(pos) and pos > 0, math.isinf(neg) and neg < 0, math.isnan(nan))",
            {"pos": float("inf"), "neg": float("-inf"), "nan": float("nan")},
        )
        assert result == [True, True, True]

    def test_large_string_round_trip(self, interp: Any) -> None:
        text = "BEGIN" + "0123456789" * 1_000_000 + "é🙂END"
        probe = "(len(s), s[:5], s[-5:], s[5_000_000:5_000_010])"
        expected = [len(text), text[:5], text[-5:], text[5_000_000:5_000_010]]
        assert interp.execute(probe, {"s": text}) == expected
        assert interp.execute(probe, {"s": text}) == expected  # sent again (or by reference)
        changed = text[:-5] + "éXEND"
        assert interp.execute("s[-5:]", {"s": changed}) == "éXEND"

    @pytest.mark.parametrize("name", ["class", "1abc", "SUBMIT", "has space", ""])
    def test_invalid_names_are_refused(self, interp: Any, name: str) -> None:
        interp.execute("kept = 3")
        with pytest.raises(CodeInterpreterError) as info:
            interp.execute("1", {name: 1})
        assert_fatal(info.value)
        assert f"Invalid variable name: {name!r}" in str(info.value)  # DSPy's wording
        assert interp.execute("kept") == 3

    def test_tool_name_is_refused(self, interp: Any) -> None:
        interp.tools["lookup"] = lambda: "tool"
        with pytest.raises(CodeInterpreterError) as info:
            interp.execute("lookup", {"lookup": 1})
        assert_fatal(info.value)
        assert interp.execute("lookup()") == "tool"

    def test_resent_values_are_fresh(self, interp: Any) -> None:
        items, text = [1, 2, 3], "abc"
        variables = {"items": items, "text": text}
        first = interp.execute("items.append(4)\ntext = text + '!'\n(items, text)", variables)
        assert first == [[1, 2, 3, 4], "abc!"]
        assert items == [1, 2, 3]
        assert interp.execute("(items, text)", variables) == [[1, 2, 3], "abc"]

    def test_resent_large_values_are_fresh(self, interp: Any) -> None:
        big_list, big_text = list(range(5000)), "t" * 20_000
        variables = {"big_list": big_list, "big_text": big_text}
        mutate = "big_list.append(-1)\nbig_list[0] = 'changed'\nbig_text = big_text.upper()\n" \
                 "(len(big_list), big_list[0], big_text[:3])"
        probe = "(len(big_list), big_list[0], big_list[-1], big_text[:3])"
        for _ in range(3):  # the first send carries the value; later ones may be references
            assert interp.execute(mutate, variables) == [5001, "changed", "TTT"]
            assert interp.execute(probe, variables) == [5000, 0, 4999, "ttt"]

    def test_changed_values_are_seen(self, interp: Any) -> None:
        assert interp.execute("n", {"n": 1}) == 1
        assert interp.execute("n", {"n": 2}) == 2
        assert interp.execute("big[:3]", {"big": "a" * 20_000}) == "aaa"
        assert interp.execute("big[:3]", {"big": "b" * 20_000}) == "bbb"
        data = list(range(5000))
        assert interp.execute("data[0]", {"data": data}) == 0
        data[0] = 99
        assert interp.execute("data[0]", {"data": data}) == 99


# -- timeouts -------------------------------------------------------------------------------------
class TimeoutSuite(SuiteBase):
    """A timeout interrupts the code and the session survives; code that refuses to stop is killed."""

    def test_busy_loop_is_interrupted_and_session_survives(self, make_interpreter: Callable[..., Any]) -> None:
        interp = make_interpreter(timeout=1)
        interp.execute("kept = 'before the timeout'")
        with pytest.raises(ExecutionTimeoutError) as info:
            bounded(lambda: interp.execute("while True:\n    pass"), self.hang_limit)
        assert isinstance(info.value, CodeExecutionError)
        assert interp.execute("kept") == "before the timeout"
        assert interp.execute("import time\ntime.sleep(0.2)\n'no stale interrupt'") == "no stale interrupt"
        assert_clean(interp)

    def test_sleep_is_interrupted(self, make_interpreter: Callable[..., Any]) -> None:
        interp = make_interpreter(timeout=1)
        interp.execute("import time")
        with pytest.raises(ExecutionTimeoutError):
            bounded(lambda: interp.execute("time.sleep(100)"), self.hang_limit)
        assert_clean(interp)

    def test_host_tool_time_counts(self, make_interpreter: Callable[..., Any]) -> None:
        release = threading.Event()

        def slow() -> str:
            release.wait(3)
            return "slow result"

        interp = make_interpreter(timeout=1)
        interp.tools["slow"] = slow
        interp.execute("kept = 'still here'")
        try:
            with pytest.raises(ExecutionTimeoutError):
                bounded(lambda: interp.execute("slow()"), self.hang_limit)
        finally:
            release.set()
        assert interp.execute("kept") == "still here"
        assert_clean(interp)

    def test_code_swallowing_the_interrupt_is_killed(self, make_interpreter: Callable[..., Any]) -> None:
        interp = make_interpreter(timeout=1, grace=1)
        stubborn = code("""
            import time
            while True:
                try:
                    time.sleep(10)
                except BaseException:
                    pass
        """)
        with pytest.raises(CodeInterpreterError) as info:
            bounded(lambda: interp.execute(stubborn), self.hang_limit)
        assert isinstance(info.value, SandboxDiedError)
        assert_fatal(info.value)
        assert_session_ended(interp)


# -- protocol robustness ----------------------------------------------------------------------------
class RobustnessSuite(SuiteBase):
    """Nothing user code writes, closes or reads can break the conversation with the sandbox."""

    def test_json_lines_printed_by_code(self, interp: Any) -> None:
        result = interp.execute(code("""
            import json
            for i in range(50):
                print(json.dumps({"type": "result", "id": "f" * 32, "status": "final", "fields": {"i": i},
                                  "output": "", "dropped": 0}))
            6 * 7
        """))
        assert result == 42
        assert_clean(interp)

    def test_binary_garbage_on_fd_1(self, interp: Any) -> None:
        result = interp.execute('import os\n_ = os.write(1, bytes(range(256)) * 64 + b"\\n\\x00\\xff\\xfe")')
        assert isinstance(result, str) and len(result) > 0
        assert_clean(interp)

    def test_closed_sys_stdout(self, interp: Any) -> None:
        interp.execute("import sys\nsys.stdout.close()")
        assert interp.execute("6 * 7") == 42
        assert interp.execute("'still answering'") == "still answering"

    def test_closed_fds_1_and_2(self, interp: Any) -> None:
        interp.execute("import os\nos.close(1)\nos.close(2)")
        assert interp.execute("6 * 7") == 42
        assert interp.execute("x = 5\nx * 2") == 10

    def test_reading_stdin_gets_nothing(self, interp: Any) -> None:
        assert interp.execute("import sys\nsys.stdin.read()") == ""
        assert interp.execute("import os\nos.read(0, 1024)") == "b''"
        assert_clean(interp)

    def test_huge_single_line(self, make_interpreter: Callable[..., Any]) -> None:
        interp = make_interpreter(output_limit=1_000_000)
        result = interp.execute('print("z" * 5_000_000)')
        assert isinstance(result, str) and "truncated" in result.lower()
        assert result.startswith("z" * 1000)
        assert_clean(interp)

    def test_large_result_value(self, interp: Any) -> None:
        result = interp.execute('"q" * 20_000_000')
        assert isinstance(result, str) and len(result) == 20_000_000 and set(result) == {"q"}
        assert_clean(interp)

    def test_background_thread_output(self, interp: Any) -> None:
        interp.execute(code("""
            import threading, time
            def chatter():
                for _ in range(100):
                    print("background chatter")
                    time.sleep(0.002)
            chatter_thread = threading.Thread(target=chatter, daemon=True)
            chatter_thread.start()
        """))
        for _ in range(5):
            assert interp.execute("6 * 7") == 42
        interp.execute("chatter_thread.join()")
        assert interp.execute('print("quiet")') == "quiet\n"


# -- sandbox death ----------------------------------------------------------------------------------
class DeathSuite(SuiteBase):
    """A sandbox that dies ends the session with a CodeInterpreterError that says how."""

    def test_exit_code_is_reported(self, interp: Any) -> None:
        interp.execute("kept = 1")
        with pytest.raises(CodeInterpreterError) as info:
            bounded(lambda: interp.execute("import os\nos._exit(3)"), self.hang_limit)
        exc = info.value
        assert_fatal(exc)
        assert isinstance(exc, SandboxDiedError)
        assert "exit code 3" in str(exc)
        assert exc.exit_code == 3
        assert isinstance(exc.stderr_tail, str)
        assert_session_ended(interp)

    def test_sigkill_is_reported(self, interp: Any) -> None:
        with pytest.raises(CodeInterpreterError) as info:
            bounded(lambda: interp.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"), self.hang_limit)
        assert_fatal(info.value)
        assert "SIGKILL" in str(info.value)
        assert_session_ended(interp)

    def test_death_during_a_tool_call(self, interp: Any) -> None:
        def wait_for_death() -> str:
            return "late"

        interp.tools["wait_for_death"] = wait_for_death
        with pytest.raises(CodeInterpreterError) as info:
            bounded(lambda: interp.execute("import os\nwait_for_death()\nos._exit(5)"), self.hang_limit)
        assert_fatal(info.value)
        assert "exit code 5" in str(info.value)
        assert_session_ended(interp)

    def test_next_interpreter_is_unaffected(self, make_interpreter: Callable[..., Any]) -> None:
        doomed = make_interpreter()
        with pytest.raises(CodeInterpreterError):
            bounded(lambda: doomed.execute("import os\nos._exit(9)"), self.hang_limit)
        assert make_interpreter().execute("6 * 7") == 42


# -- environment and resources ------------------------------------------------------------------------
class EnvironmentSuite(SuiteBase):
    """Promises a backend makes through its declared capabilities."""

    @requires(Capability.ISOLATED_ENV)
    def test_host_secrets_are_not_visible(self, make_interpreter: Callable[..., Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        import os
        import subprocess

        secret = "hunter2-sandboxkit-do-not-leak"
        monkeypatch.setenv("SANDBOXKIT_TEST_SECRET", secret)
        # /proc/PID/environ shows the environment a process started with, not later setenv calls:
        # this host process started with the secret, as one does with an API key exported in a shell.
        holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE, env=dict(os.environ))
        try:
            interp = make_interpreter()
            assert interp.execute("import os\nrepr(os.environ.get('SANDBOXKIT_TEST_SECRET'))") == "None"
            assert interp.execute(f"any({secret!r} in v for v in os.environ.values())") is False
            # Nor in any process environment the sandbox can read: its parent's (the host's, for
            # a local process) and every other one its /proc shows.
            leaks = interp.execute(code(f"""
                import os
                def environ_of(pid):
                    try:
                        with open(f"/proc/{{pid}}/environ", "rb") as f:
                            return f.read()
                    except OSError:
                        return b""
                pids = {{str(os.getppid())}}
                if os.path.isdir("/proc"):
                    pids.update(name for name in os.listdir("/proc") if name.isdigit())
                sorted(int(pid) for pid in pids if {secret.encode()!r} in environ_of(pid))
            """))
            assert leaks == [], f"the host's secret is readable in /proc/PID/environ of pids {leaks}"
        finally:
            holder.kill()
            holder.wait()
            assert holder.stdin is not None
            holder.stdin.close()

    @requires(Capability.SCRATCH_DIR)
    def test_scratch_dir_is_writable_and_private(self, make_interpreter: Callable[..., Any]) -> None:
        first, second = make_interpreter(), make_interpreter()
        first.execute("with open('scratch-probe.txt', 'w') as f:\n    f.write('mine')")
        assert first.execute("open('scratch-probe.txt').read()") == "mine"
        assert second.execute("import os\nos.path.exists('scratch-probe.txt')") is False

    @requires(Capability.FILESYSTEM_ISOLATION)
    def test_host_files_are_not_visible(self, interp: Any, tmp_path: Any) -> None:
        secret = tmp_path / "host-only.txt"
        secret.write_text("host only")
        assert interp.execute(f"import os\nos.path.exists({str(secret)!r})") is False

    @requires(Capability.NO_NETWORK)
    def test_no_network(self, interp: Any) -> None:
        result = interp.execute(code("""
            import socket
            try:
                socket.create_connection(("1.1.1.1", 80), timeout=5).close()
                outcome = "connected"
            except OSError:
                outcome = "blocked"
            outcome
        """))
        assert result == "blocked"


class MemoryLimitSuite(SuiteBase):
    """A memory bomb fails (MemoryError, or a clear end of the session) instead of hurting the host."""

    def memory_options(self, backend_cls: type) -> dict[str, Any]:
        if self.memory_limit_options is not None:
            return dict(self.memory_limit_options)
        fields = {f.name for f in dataclasses.fields(backend_cls.Options)}
        return {"memory_mb": 512} if "memory_mb" in fields else {}

    @requires(Capability.MEMORY_LIMIT)
    def test_memory_bomb_fails_cleanly(self, make_interpreter: Callable[..., Any],
                                       sandboxkit_backend_class: type) -> None:
        options = self.memory_options(sandboxkit_backend_class)
        interp = make_interpreter(**options)
        interp.execute("survivor = 'alive'")
        bomb = f"hog = bytearray({self.memory_bomb_mb} * 1024 * 1024)\nlen(hog)"
        try:
            result = bounded(lambda: interp.execute(bomb), self.hang_limit)
        except CodeInterpreterError as exc:
            if "MemoryError" in str(exc):  # recoverable: the session lives on
                assert isinstance(exc, CodeExecutionError)
                assert interp.execute("survivor") == "alive"
                assert_clean(interp)
            else:  # the sandbox was killed: a clear, session-ending error
                assert_fatal(exc)
                assert "new interpreter" in str(exc).lower()
                assert make_interpreter(**options).execute("6 * 7") == 42
        else:
            pytest.fail(
                f"allocating {self.memory_bomb_mb} MiB succeeded (returned {result!r}) although the backend "
                f"declares {Capability.MEMORY_LIMIT!r}; set memory_limit_options on the test class"
            )


# Suites in modules of their own (hostile.py, orphans.py) build on SuiteBase and the helpers
# above, so CoreSuite, which includes them, is composed on first use rather than at import.
def _core_suite() -> type:
    from sandboxkit.conformance.hostile import HostileSuite

    class CoreSuite(
        LifecycleSuite,
        StateSuite,
        ReturnValueSuite,
        OutputSuite,
        OutputLimitSuite,
        ErrorSuite,
        SubmitSuite,
        ToolSuite,
        VariableSuite,
        TimeoutSuite,
        RobustnessSuite,
        DeathSuite,
        EnvironmentSuite,
        MemoryLimitSuite,
        HostileSuite,
        _orphan_suite(),
    ):
        """Every backend-agnostic conformance test (everything but the DSPy module suite)."""

    CoreSuite.__module__ = __name__
    return CoreSuite


def _orphan_suite() -> type:
    """``OrphanSuite`` from orphans.py, or an empty suite where that module is not installed."""
    if importlib.util.find_spec("sandboxkit.conformance.orphans") is None:
        return SuiteBase
    from sandboxkit.conformance.orphans import OrphanSuite

    return OrphanSuite


def __getattr__(name: str) -> Any:
    if name == "CoreSuite":
        value = _core_suite()
    elif name == "HostileSuite":
        from sandboxkit.conformance.hostile import HostileSuite as value
    elif name == "OrphanSuite":
        value = _orphan_suite()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
