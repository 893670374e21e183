"""The in-sandbox driver's own defences, through the real interpreter on the subprocess backend.

Each test names the row of issue 9 it covers. Where the host's handling could hide what the
driver does (error args, a reply to an unknown call, the host-death watcher), the test speaks the
protocol to a bare driver process instead.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

import sandboxkit
from sandboxkit.conformance.suite import bounded, code
from sandboxkit.errors import ExecutionTimeoutError
from sandboxkit.protocol import driver_argv
from sandboxkit_driver import driver_source

try:
    from dspy.primitives.code_interpreter import CodeInterpreterError
except ImportError:  # pragma: no cover
    CodeInterpreterError = Exception  # type: ignore[misc,assignment]

HANG = 60  # a generous bound: a test that takes longer has hung


@pytest.fixture
def make() -> Iterator[Any]:
    made: list[Any] = []

    def start(**options: Any) -> Any:
        interp = sandboxkit.interpreter("subprocess", **options)
        interp.start()
        made.append(interp)
        return interp

    yield start
    for interp in made:
        interp.shutdown()


# -- row 8: the interrupt repeats until the code stops, also while it waits for a tool ----------
# (plain swallowing loops: the kit's UserCodeAbuseSuite, run on this backend)
def test_swallowed_interrupts_during_tool_calls(make: Any) -> None:
    interp = make(timeout=1, grace=10)
    interp.tools = {"slow": lambda: time.sleep(0.3) or "done"}
    with pytest.raises(ExecutionTimeoutError):
        bounded(lambda: interp.execute(code("""
            for i in range(20):
                try:
                    slow()
                except BaseException:
                    pass
        """)), HANG)
    assert interp.execute("slow()") == "done"


# -- row 9: the driver restores its signal handling on each execute ------------------------------
@pytest.mark.parametrize("setup", [
    "signal.signal(signal.SIGALRM, signal.SIG_IGN)",
    "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGALRM, signal.SIG_IGN)",
    "signal.signal(signal.SIGALRM, lambda *a: None)",
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT})",
])
def test_signal_changes_do_not_cost_the_next_timeout(make: Any, setup: str) -> None:
    interp = make(timeout=1, grace=10)
    interp.execute("import signal\n" + setup + "\nkept = 1")
    with pytest.raises(ExecutionTimeoutError):
        bounded(lambda: interp.execute("while True:\n    pass"), HANG)
    assert interp.execute("kept") == 1


# -- row 10: output between executes is kept (or counted), never lost -----------------------------
def test_background_writer_output_is_all_delivered_across_executes(make: Any) -> None:
    lines = 300_000
    interp = make(output_limit=50_000_000)
    outputs = [interp.execute(code(f"""
        import os, threading
        def write():
            for n in range({lines}):
                os.write(1, b"%06d\\n" % n)
        writer = threading.Thread(target=write)
        writer.start()
        print("started")
    """))]
    while "done" not in outputs[-1]:
        outputs.append(interp.execute("print(' alive' if writer.is_alive() else ' done')"))
    outputs.append(interp.execute("writer.join()\nprint(' last')"))
    seen = [int(word) for text in outputs for word in text.split() if word.isdigit()]
    assert seen == list(range(lines))


def test_flood_between_executes_is_counted_with_the_marker(make: Any) -> None:
    interp = make(output_limit=10_000)
    interp.execute(code("""
        import os, threading
        def flood():
            for _ in range(200):
                os.write(1, b"f" * 65536)
        flooder = threading.Thread(target=flood)
        flooder.start()
    """))
    result = bounded(lambda: interp.execute("flooder.join()"), HANG)
    assert result.startswith("f" * 10_000)
    assert "truncated" in result.lower()
    assert interp.execute("print('clean')") == "clean\n"


# -- row 11: fds 1 and 2 and sys.stdout/stderr are restored for each execute ----------------------
@pytest.mark.parametrize("damage", [
    "os.close(1)",
    "os.close(1); os.close(2)",
    "sys.stdout.close()",
    "sys.stdout.close(); sys.stderr.close()",
    "sys.stdout = None; sys.__stdout__ = None; sys.stderr = None",
    "sys.stdout.detach()",
    "os.dup2(os.open(os.devnull, os.O_WRONLY), 1)",
    "os.set_blocking(1, False)",
])
def test_printing_works_again_after_streams_were_damaged(make: Any, damage: str) -> None:
    interp = make()
    try:
        interp.execute("import os, sys\n" + damage)
    except CodeInterpreterError:
        pass  # e.g. an error reported through the damaged stream: what counts is the next execute
    assert interp.execute("print('out')") == "out\n"
    assert interp.execute("import sys\nprint('err', file=sys.stderr)") == "err\n"
    assert interp.execute("import sys\nprint('orig', file=sys.__stdout__)") == "orig\n"
    assert interp.execute("import os\n_ = os.write(2, b'raw\\n')") == "raw\n"


# -- row 16: the driver does not depend on what user code can rebind ------------------------------
@pytest.mark.parametrize("rebind", [
    "import builtins; builtins.len = None; builtins.isinstance = None; builtins.str = None",
    "import builtins; builtins.__import__ = None; builtins.repr = None; builtins.dict = None",
    "import json; json.dumps = None; json.loads = None; json.JSONEncoder = None; json.JSONDecoder = None",
    "import json.decoder, json.encoder; json.decoder.JSONDecoder.decode = None; json.encoder.JSONEncoder.encode = None",
    "import os; os.write = None; os.read = None; os.readv = None; os.dup2 = None; os.fdopen = None",
    "import sys; sys.stdout = None; sys.stderr = None; sys.exc_info = None",
    "import threading; threading.Thread = None; threading.Condition = None; threading.Event = None; threading.get_ident = None",
    "import signal, time; signal.signal = None; signal.setitimer = None; signal.pthread_kill = None; time.sleep = None; time.perf_counter = None",
    "import select, traceback, linecache; select.poll = None; traceback.extract_tb = None; traceback.format_list = None; linecache.getline = None",
])
def test_rebinding_what_the_driver_uses_costs_only_user_code(make: Any, rebind: str) -> None:
    interp = make(timeout=2, grace=10)
    interp.tools = {"echo": lambda value: value}
    interp.execute("kept = [1, 2]")
    try:
        interp.execute(rebind)
    except CodeInterpreterError:
        pass
    assert interp.execute("echo({'a': [1, 2.5, None]})") == {"a": [1, 2.5, None]}
    assert interp.execute("print('printed')") == "printed\n"
    assert interp.execute("kept") == [1, 2]
    with pytest.raises(CodeInterpreterError) as info:
        interp.execute("def f():\n    raise KeyError('k')\nf()")
    assert "KeyError" in str(info.value)
    with pytest.raises(ExecutionTimeoutError):
        bounded(lambda: interp.execute("while True:\n    pass"), HANG)
    assert interp.execute("len('abc')") == 3  # user code gets fresh builtins on each execute


def test_user_builtins_are_a_private_copy(make: Any) -> None:
    interp = make()
    interp.execute("__builtins__['len'] = None")
    assert interp.execute("len([1])") == 1  # restored for the next execute
    assert interp.execute("import builtins\n__builtins__ is not vars(builtins)") is True


# -- SUBMIT and error wording (as DSPy's PythonInterpreter) ---------------------------------------
@pytest.mark.parametrize("call, wording", [
    ('SUBMIT("only")', "SUBMIT() missing 1 required positional argument: 'confidence'"),
    ("SUBMIT()", "SUBMIT() missing 2 required positional arguments: 'answer' and 'confidence'"),
    ('SUBMIT("a", 0.5, "extra")', "SUBMIT() takes 2 positional arguments but 3 were given"),
    ('SUBMIT("a", 0.5, wrong=1)', "SUBMIT() got an unexpected keyword argument 'wrong'"),
    ('SUBMIT("a", answer="b")', "SUBMIT() got multiple values for argument 'answer'"),
])
def test_submit_wording_with_fields(make: Any, call: str, wording: str) -> None:
    interp = make()
    interp.output_fields = [{"name": "answer"}, {"name": "confidence"}]
    with pytest.raises(CodeInterpreterError) as info:
        interp.execute(call)
    assert "TypeError" in str(info.value)
    assert f"{wording}; expected SUBMIT(answer, confidence)" in str(info.value)


def test_submit_wording_without_fields(make: Any) -> None:
    interp = make()
    with pytest.raises(CodeInterpreterError) as info:
        interp.execute("SUBMIT()")
    assert "SUBMIT() missing 1 required positional argument: 'output'" in str(info.value)
    with pytest.raises(CodeInterpreterError) as info:
        interp.execute("SUBMIT(1, 2)")
    assert "SUBMIT() takes 1 positional argument but 2 were given" in str(info.value)
    assert interp.execute("SUBMIT(output=3)").output == {"output": 3}
    assert interp.execute("SUBMIT(answer=1, parts=[2])").output == {"answer": 1, "parts": [2]}


# -- the bare driver: error args, unknown replies, the host-death watcher -------------------------
class BareDriver:
    """The driver in a subprocess, spoken to directly over its pipes."""

    def __init__(self) -> None:
        source = driver_source()
        self.process = subprocess.Popen(
            [sys.executable, *driver_argv()[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True)
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(source)
        self.process.stdin.flush()
        self.lines: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.read()["type"] == "hello"

    def _read(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def read(self) -> Any:
        return self.lines.get(timeout=HANG)

    def execute(self, source: str, exec_id: str = "e1", **fields: Any) -> None:
        self.send({"type": "execute", "id": exec_id, "code": source, "variables": {}, "tools": [],
                   "output_fields": None, "output_limit": 1000, "timeout": None, **fields})

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def bare() -> Iterator[BareDriver]:
    driver = BareDriver()
    yield driver
    driver.close()


def test_error_result_carries_bounded_args(bare: BareDriver) -> None:
    bare.execute("raise ValueError(123, 'x', None)")
    result = bare.read()
    assert (result["status"], result["ename"], result["args"]) == ("error", "ValueError", [123, "x", None])
    bare.execute("raise KeyError(object)", "e2")
    assert bare.read()["args"] == ["<class 'object'>"]
    bare.execute("raise RuntimeError('y' * 50_000)", "e3")  # output_limit is 1000
    args = bare.read()["args"]
    assert args == ["y" * 1000]


def test_reply_to_an_unknown_call_is_ignored(bare: BareDriver) -> None:
    bare.execute("f(2)", tools=[{"name": "f", "doc": ""}])
    call = bare.read()
    assert call["type"] == "tool_call"
    bare.send({"type": "tool_result", "id": "not-a-call", "ok": True, "value": 1})
    bare.send({"type": "tool_result", "id": call["id"], "ok": True, "value": 42})
    result = bare.read()
    assert (result["status"], result["value"]) == ("ok", 42)


def test_tool_call_from_a_thread_between_executes_raises_there(make: Any) -> None:
    interp = make()
    interp.tools = {"f": lambda: "ok"}
    interp.execute(code("""
        import threading, time
        errors = []
        def later():
            time.sleep(0.3)
            try:
                f()
            except RuntimeError as exc:
                errors.append(str(exc))
        t = threading.Thread(target=later)
        t.start()
    """))
    time.sleep(1.0)
    error = interp.execute("t.join()\nerrors[0] if errors else 'no error'")
    assert "execute" in error  # refused, because no execute runs (said by the driver or the host)
    assert interp.execute("f()") == "ok"


HOLD_MAIN_THREAD = code("""
    import signal
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)
    while True:
        try:
            sum(range(1000))
        except BaseException:
            pass
""")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_driver_exits_when_its_input_hangs_up_while_user_code_holds_the_main_thread(bare: BareDriver) -> None:
    bare.execute(HOLD_MAIN_THREAD)
    time.sleep(0.5)
    assert bare.process.poll() is None
    assert bare.process.stdin
    bare.process.stdin.close()  # what the host's death does to the pipe
    assert bounded(lambda: bare.process.wait(HANG), HANG + 5) is not None


def test_sandbox_dies_with_a_sigkilled_host(tmp_path: Any) -> None:
    host = subprocess.Popen([sys.executable, "-c", code(f"""
        import sandboxkit, sys
        interp = sandboxkit.interpreter("subprocess", timeout=None)
        interp.start()
        print(interp.execute("import os\\nos.getpid()"), flush=True)
        interp.execute({HOLD_MAIN_THREAD!r})
    """)], stdout=subprocess.PIPE, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    try:
        assert host.stdout
        pid = int(bounded(host.stdout.readline, HANG))
        time.sleep(0.5)
        assert not _gone(pid)
        host.kill()
        host.wait(HANG)
        assert _wait_gone(pid), "the sandbox outlived its host"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


# -- compiling the code: the quick split agrees with the syntax tree -------------------------------
def _driver_namespace() -> dict:
    from sandboxkit_driver import driver_source

    namespace = {"__name__": "sandboxkit_driver_under_test"}
    exec(compile(driver_source(), "sandboxkit_driver.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    "source",
    [
        "x = 1", "print(1)", "x += 1", "1 + 1", "a = 2\na * 3", "foo(\n 1\n)", "d = {\n 'a': 1,\n}\nd",
        "if x:\n    y = 1\nelse:\n    y = 2\ny", "if x:\n    y\n", "s = '''\nabc\n'''\ns", "s = '''\nabc\n'''",
        "x = [\n1]\nx", "def f():\n    return 1\nf()", "@dec\ndef g(): pass", "x = 1; x", "x = 1;", "a = 'b;c'",
        "try:\n  1/0\nexcept Exception:\n  pass", "# only a comment\n\n", "x = 1 \\\n + 2\nx",
        "print('a')\n# trailing\n\n", "for i in range(3):\n    pass\ni", "x = (1,\n2)", "lambda: 1",
        "class A:\n  pass\nA", "s = '''\nx\n'''; s", "x = 1\n  # indented comment\nx",
    ],
)
def test_the_quick_split_finds_the_same_final_expression_as_the_syntax_tree(source: str) -> None:
    import ast

    split = _driver_namespace()["_split_last_statement"]
    quick = split(source, source.splitlines(True), "<test>")
    if quick is None:
        return  # the driver parses this one to a tree, as before
    body, tail = quick
    tree = ast.parse(source)
    ends_in_expression = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    assert (tail is not None) == ends_in_expression
    if tail is not None:
        namespace = {"x": 5, "foo": lambda v: v, "print": lambda *a: None}
        exec(body, namespace)
        expected = {"x": 5, "foo": lambda v: v, "print": lambda *a: None}
        exec(compile(ast.Module(tree.body[:-1], []), "<t>", "exec"), expected)
        assert repr(eval(tail, namespace))[:40].split(" at ")[0] == \
            repr(eval(compile(ast.Expression(tree.body[-1].value), "<t>", "eval"), expected))[:40].split(" at ")[0]


def test_the_quick_split_keeps_line_numbers() -> None:
    split = _driver_namespace()["_split_last_statement"]
    source = "a = 1\nb = 2\n1 / 0"
    body, tail = split(source, source.splitlines(True), "<test>")
    try:
        eval(tail, {})
    except ZeroDivisionError as exc:
        assert exc.__traceback__.tb_next.tb_lineno == 3
    else:
        pytest.fail("the tail did not raise")
