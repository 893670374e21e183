"""Conformance tests that attack the host through the sandbox, the way hostile code could.

Code in the sandbox shares its process with the driver: it can write any bytes on the protocol
channel, forge any message, flood, stop reading, ignore signals, close or rebind what the driver
uses. These suites check the host's promises under such attacks: it raises only DSPy's error
types, never waits past ``timeout + grace`` plus the backend's kill time, bounds what it decodes
and returns, and never loses output without saying so.

The attacks use no private name of the driver. Sandbox code finds the protocol channel as any
code in the process could, through its own file descriptors (:data:`HOSTILE_PRELUDE`), and finds
the running execute's id by looking through the frames that called it.

``HostileSuite`` combines ``ForgedMessageSuite`` (forged and malformed protocol traffic),
``ToolAbuseSuite`` (tool calls from threads, floods of them) and ``UserCodeAbuseSuite`` (ordinary
user code that swallows interrupts, ignores signals, closes or rebinds the driver's streams).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
import time
from typing import Any, Callable

import pytest

from sandboxkit.conformance.suite import SuiteBase, assert_fatal, bounded, code
from sandboxkit.errors import (
    CodeExecutionError,
    CodeInterpreterError,
    ExecutionTimeoutError,
    ProtocolError,
)

__all__ = [
    "HOSTILE_PRELUDE",
    "ForgedMessageSuite",
    "HostileSuite",
    "ToolAbuseSuite",
    "UserCodeAbuseSuite",
    "host_peak_growth_mib",
]

#: Sandbox code defining the attacker's tools (run once per interpreter by :func:`arm`):
#:
#: ``hostile_channel_fds()``
#:     every fd >= 3 that is a pipe or socket open for writing, one per underlying file: the
#:     protocol channel is among them (the others, such as a diagnostics pipe, take forged bytes
#:     harmlessly);
#: ``hostile_forge(data)``
#:     write ``data`` (bytes or str) whole to each of them;
#: ``hostile_execute_ids()``
#:     the 128-bit hex ids found in the locals of the frames that called the user's code (and in
#:     the attributes and items of those locals, two levels down): the running execute's id.
HOSTILE_PRELUDE = r'''
import fcntl as _hostile_fcntl, os as _hostile_os, re as _hostile_re, stat as _hostile_stat
import sys as _hostile_sys, types as _hostile_types


def hostile_channel_fds():
    found, seen = [], set()
    for name in sorted(_hostile_os.listdir("/proc/self/fd"), key=int):
        fd = int(name)
        if fd < 3:
            continue
        try:
            info = _hostile_os.fstat(fd)
            flags = _hostile_fcntl.fcntl(fd, _hostile_fcntl.F_GETFL)
        except OSError:
            continue
        if not (_hostile_stat.S_ISFIFO(info.st_mode) or _hostile_stat.S_ISSOCK(info.st_mode)):
            continue
        if (flags & _hostile_os.O_ACCMODE) not in (_hostile_os.O_WRONLY, _hostile_os.O_RDWR):
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        found.append(fd)
    return found


def hostile_forge(data):
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    for fd in hostile_channel_fds():
        view = memoryview(data)
        try:
            while view:
                view = view[_hostile_os.write(fd, view):]
        except OSError:
            pass


def hostile_execute_ids():
    pattern = _hostile_re.compile(r"[0-9a-f]{32}\Z")
    found = set()

    def consider(value, depth):
        if isinstance(value, str):
            if pattern.match(value):
                found.add(value)
        elif depth <= 0 or isinstance(value, (type, _hostile_types.ModuleType, _hostile_types.FunctionType)):
            return
        elif isinstance(value, dict):
            for item in list(value.values())[:1000]:
                consider(item, depth - 1)
        elif isinstance(value, (list, tuple)):
            for item in list(value)[:1000]:
                consider(item, depth - 1)
        else:
            try:
                attributes = vars(value)
            except TypeError:
                return
            for item in list(attributes.values())[:1000]:
                consider(item, depth - 1)

    frame = _hostile_sys._getframe(1)
    while frame is not None:
        if frame.f_globals is not globals():  # the user's own frames hold nothing of interest
            for value in list(frame.f_locals.values()):
                consider(value, 2)
        frame = frame.f_back
    return sorted(found)
'''

#: How much the host may grow while it rejects a forged message (MiB): the bug grew it by ~800.
HOST_GROWTH_LIMIT_MIB = 300
#: Bytes of a forged output the host may pass on beyond ``output_limit`` (marker, notes, stderr tail).
RETURN_SLACK = 100_000
_MARKER = re.compile(r"\n?\[sandboxkit: output truncated: (\d+) more bytes not shown[^\]]*\]\n?")


def arm(interp: Any) -> list[int]:
    """Define the attacker's tools in ``interp``'s sandbox; skip the test when no channel candidate
    exists there (the attack cannot be mounted). Returns the candidate fds."""
    interp.execute(HOSTILE_PRELUDE)
    fds = interp.execute("hostile_channel_fds()")
    if not fds:
        pytest.skip("sandbox code finds no pipe or socket open for writing among its file descriptors")
    return fds


def arm_with_execute_id(interp: Any) -> None:
    """:func:`arm`, and check that sandbox code can find the running execute's id (else skip)."""
    arm(interp)
    found = interp.execute("len(hostile_execute_ids())")
    if found != 1:
        pytest.skip(f"sandbox code found {found} candidate execute ids in its callers' frames, not exactly one, "
                    "so it cannot forge a message for the running execute here")


def _read_status(field: str) -> float | None:
    """A ``Vm*`` field of /proc/self/status in MiB, or ``None`` where there is no such file."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclasses.dataclass
class _PeakProbe:
    baseline_mib: float
    read_peak: Callable[[], float]

    def growth(self) -> float:
        return self.read_peak() - self.baseline_mib


def host_peak_growth_mib() -> _PeakProbe:
    """Start measuring this (host) process's peak memory; ``.growth()`` is the peak's rise in MiB.

    Resets the kernel's peak (``/proc/self/clear_refs``) where it can, so an earlier test's peak
    does not hide this one's; falls back to ``ru_maxrss`` (which only ever rises).
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        now = _read_status("VmRSS")
        if now is not None and _read_status("VmHWM") is not None:
            return _PeakProbe(now, lambda: _read_status("VmHWM") or 0.0)
    except OSError:
        pass
    import resource

    per_mib = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss units

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib

    return _PeakProbe(peak(), peak)


def assert_only_dspy_errors(call: Callable[[], Any], limit: float) -> tuple[Any, BaseException | None]:
    """Run ``call`` under a hang bound; it returns, or raises a CodeInterpreterError or SyntaxError.
    Returns (value, exception)."""
    try:
        return bounded(call, limit), None
    except (CodeInterpreterError, SyntaxError) as exc:
        return None, exc
    except pytest.fail.Exception:
        raise
    except BaseException as exc:  # anything else escaping to DSPy is the bug
        pytest.fail(f"the host let {type(exc).__name__} escape instead of a CodeInterpreterError: {exc!r}"[:2000],
                    pytrace=False)


def _forge_json(fields: str) -> str:
    """Sandbox code building one forged JSON line; ``EXEC`` in ``fields`` is the running execute's id."""
    return ("_hostile_ids = hostile_execute_ids()\n"
            "EXEC = _hostile_ids[0] if len(_hostile_ids) == 1 else '0' * 32\n"
            f"hostile_forge(json.dumps({fields}) + '\\n')\n")


# -- forged protocol traffic ------------------------------------------------------------------------
class ForgedMessageSuite(SuiteBase):
    """Forged and malformed messages on the protocol channel: a ProtocolError or a harmless answer,
    never another exception type, never a hang, never unbounded work or memory in the host."""

    #: The row-1 attack stops swallowing interrupts after this many seconds, so a host that fails
    #: the test still gets its sandbox back (well past the hang bound of that test).
    attack_lifetime: float = 90.0
    #: Hang bound for the tests whose promise is timeout + grace + kill time.
    deadline_bound: float = 60.0

    def test_flood_of_unread_tool_calls_then_spinning_is_killed_in_time(
            self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 1: replies pile up unread while the code swallows every interrupt."""
        interp = make_interpreter(timeout=2, grace=2)
        interp.tools["echo"] = lambda payload: payload
        arm_with_execute_id(interp)
        with pytest.raises(CodeInterpreterError) as info:
            bounded(lambda: interp.execute(self._flood_then_spin(40)), self.deadline_bound)
        assert_fatal(info.value)

    def test_shutdown_returns_while_flooded(self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 1: ``shutdown()`` from another thread while execute is stuck behind unread replies."""
        calls = threading.Semaphore(0)

        def echo(payload: Any) -> Any:
            calls.release()
            return payload

        interp = make_interpreter(timeout=self.attack_lifetime * 2, grace=5)
        interp.tools["echo"] = echo
        arm_with_execute_id(interp)
        outcome: list[BaseException | Any] = []

        def run() -> None:
            try:
                outcome.append(interp.execute(self._flood_then_spin(40)))
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for _ in range(8):  # 8 MiB of replies: far more than any pipe or socket buffer holds
            assert calls.acquire(timeout=self.deadline_bound), "the forged tool calls never reached the host"
        time.sleep(0.5)
        bounded(interp.shutdown, 30)
        worker.join(30)
        assert not worker.is_alive(), "execute() still blocked 30 s after shutdown() returned"
        assert outcome and isinstance(outcome[0], CodeInterpreterError), f"execute ended with {outcome!r}"

    def _flood_then_spin(self, count: int) -> str:
        # Interrupts are swallowed from the start: on a slow channel the timeout may come while
        # the calls are still being written, and the attack must not end there either.
        return code(f"""
            import json, os, time
            _ids = hostile_execute_ids()
            payload = "p" * (1 << 20)
            end = time.monotonic() + {self.attack_lifetime}
            sent = 0
            while time.monotonic() < end:
                try:
                    while sent < {count}:
                        sent += 1
                        hostile_forge(json.dumps({{"type": "tool_call", "id": os.urandom(12).hex(),
                                                  "exec": _ids[0], "name": "echo", "args": [payload],
                                                  "kwargs": {{}}}}) + "\\n")
                    while time.monotonic() < end:
                        pass
                except BaseException:
                    pass
        """)

    @pytest.mark.parametrize("shape", ["flat_dicts", "nested_dicts", "open_brackets"])
    def test_forged_line_costly_to_decode_is_refused_with_bounded_memory(
            self, make_interpreter: Callable[..., Any], shape: str) -> None:
        """Issue 9 rows 4 and 6: 30 MiB of ``{}``, deep nesting, 200,000 ``[``."""
        interp = make_interpreter()
        arm(interp)
        build = {
            # ~10 million empty objects in one list.
            "flat_dicts": "'{\"type\":\"result\",\"x\":[' + '{},' * 10_000_000 + '{}]}'",
            # One million objects, each inside the last.
            "nested_dicts": "'{\"type\":\"result\",\"x\":' + '{\"a\":' * 1_000_000 + '1' + '}' * 1_000_001",
            "open_brackets": "'[' * 200_000",
        }[shape]
        interp.execute(f"forged = {build} + '\\n'")  # built ahead, so only the host's cost is measured
        probe = host_peak_growth_mib()
        with pytest.raises(ProtocolError):
            bounded(lambda: interp.execute("hostile_forge(forged)\nimport time\ntime.sleep(5)"), self.hang_limit)
        grown = probe.growth()
        assert grown < HOST_GROWTH_LIMIT_MIB, f"the host grew by {grown:.0f} MiB to reject a forged {shape} line"

    def test_forged_result_cannot_exceed_output_limit(self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 5: a forged result claiming 50 MB of output, with ``output_limit=1024``."""
        limit = 1024
        interp = make_interpreter(output_limit=limit)
        arm_with_execute_id(interp)
        forged = _forge_json('{"type": "result", "id": EXEC, "status": "ok", "value": None, "has_value": False, '
                             '"output": "o" * 50_000_000, "dropped": 0}')
        value, error = assert_only_dspy_errors(lambda: interp.execute("import json\n" + forged), self.hang_limit)
        carried = str(error) if error is not None else value
        assert carried is None or isinstance(carried, str), f"execute returned {type(carried).__name__}"
        size = len(carried or "")
        assert size <= limit + RETURN_SLACK, f"the host passed on {size} characters with output_limit={limit}"

    def test_forged_timeout_without_a_timeout_is_a_dspy_error(self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 7: a forged ``timeout`` result when ``timeout=None``."""
        interp = make_interpreter(timeout=None)
        arm_with_execute_id(interp)
        forged = _forge_json('{"type": "result", "id": EXEC, "status": "timeout", "ename": "TimeoutError", '
                             '"evalue": "forged", "traceback": "", "output": "", "dropped": 0}')
        value, error = assert_only_dspy_errors(lambda: interp.execute("import json\n" + forged), self.hang_limit)
        assert error is not None, f"a forged timeout result was taken as success: {value!r}"

    @pytest.mark.parametrize(
        "forgery",
        [
            pytest.param("bytes(range(256)) * 4 + b'\\n'", id="random_bytes"),
            pytest.param("b'{\"type\": \"result\", \"id\": \"' + b'0' * 20", id="partial_line_then_more"),
            pytest.param("json.dumps({'type': 'result', 'id': '0' * 32, 'status': 'ok', 'value': 1, "
                         "'has_value': True, 'output': '', 'dropped': 0}) + '\\n'", id="result_for_unknown_id"),
            pytest.param("json.dumps({'type': 'hello', 'protocol': 1, 'python': '3.11.0', 'pid': 1}) + '\\n'",
                         id="second_hello"),
            pytest.param("json.dumps({'type': 'tool_call', 'id': 'x', 'exec': EXEC, 'name': 'count', "
                         "'args': 'not a list', 'kwargs': {}}) + '\\n'", id="tool_call_args_not_a_list"),
            pytest.param("json.dumps({'type': 'tool_call', 'id': 'x', 'exec': EXEC, 'args': [], "
                         "'kwargs': {}}) + '\\n'", id="tool_call_without_name"),
            pytest.param("json.dumps({'type': 'tool_call', 'id': 'x' * 100000, 'exec': EXEC, 'name': 'count', "
                         "'args': [], 'kwargs': {}}) + '\\n'", id="tool_call_huge_id"),
            pytest.param("json.dumps({'type': 'tool_call', 'id': 'x', 'exec': EXEC, 'name': 'count', "
                         "'args': [], 'kwargs': {'1': 2, '': [{}]}, 'extra': None}) + '\\n'",
                         id="tool_call_odd_kwargs"),
            pytest.param("json.dumps({'type': 'surprise'}) + '\\n'", id="unknown_type"),
            pytest.param("json.dumps([1, 2, 3]) + '\\n'", id="not_an_object"),
        ],
    )
    def test_forged_message_is_a_protocol_error_or_harmless(self, make_interpreter: Callable[..., Any],
                                                            forgery: str) -> None:
        """Malformed or out-of-order messages: ProtocolError, or answered with the session intact."""
        counted: list[Any] = []
        interp = make_interpreter()
        interp.tools["count"] = lambda *args, **kwargs: counted.append((args, kwargs)) or "counted"
        arm_with_execute_id(interp)
        interp.execute("kept = 'state'")
        attack = code(f"""
            import json, time
            _ids = hostile_execute_ids()
            EXEC = _ids[0]
            hostile_forge({forgery})
            time.sleep(3)  # the host reads the forgery before the real result
            "survived"
        """)
        value, error = assert_only_dspy_errors(lambda: interp.execute(attack), self.hang_limit)
        if error is None:
            # Answered harmlessly: the session is intact and answers exactly.
            assert value == "survived"
            assert interp.execute("kept") == "state"
            assert interp.execute("6 * 7") == 42
        else:
            assert isinstance(error, ProtocolError), f"expected a ProtocolError, got {error!r}"
            with pytest.raises(CodeInterpreterError):
                interp.execute("kept")

    def test_forged_tool_call_for_another_execute_is_refused_not_fatal(
            self, make_interpreter: Callable[..., Any]) -> None:
        """A tool call naming an execute that is not running is answered with an error; the session
        lives and the tool never runs."""
        counted: list[Any] = []
        interp = make_interpreter()
        interp.tools["count"] = lambda: counted.append(1) or "counted"
        arm(interp)
        interp.execute("kept = 'state'")
        attack = code("""
            import json, time
            hostile_forge(json.dumps({"type": "tool_call", "id": "f" * 24, "exec": "e" * 32, "name": "count",
                                      "args": [], "kwargs": {}}) + "\\n")
            time.sleep(2)
            "survived"
        """)
        assert bounded(lambda: interp.execute(attack), self.hang_limit) == "survived"
        assert counted == []
        assert interp.execute("kept") == "state"
        assert interp.execute("count()") == "counted"


# -- tool calls --------------------------------------------------------------------------------------
class ToolAbuseSuite(SuiteBase):
    """Tool calls from threads that outlive their execute, and floods of concurrent calls."""

    def test_background_thread_calling_a_tool_across_executes(self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 2: the thread's late calls fail in the thread; the session never ends."""
        interp = make_interpreter()
        interp.tools["ping"] = lambda: "pong"
        interp.execute(code("""
            import threading
            pinger_stop = threading.Event()
            pinger_log = {"ok": 0, "failed": 0, "errors": []}

            def pinger():
                while not pinger_stop.is_set():
                    try:
                        assert ping() == "pong"
                        pinger_log["ok"] += 1
                    except Exception as exc:
                        pinger_log["failed"] += 1
                        if len(pinger_log["errors"]) < 20:
                            pinger_log["errors"].append([isinstance(exc, RuntimeError), "%s: %s" % (type(exc).__name__, exc)])

            pinger_thread = threading.Thread(target=pinger, daemon=True)
            pinger_thread.start()
        """))
        for number in range(60):
            assert bounded(lambda: interp.execute(f"import time\ntime.sleep(0.01)\n{number}"), self.hang_limit) == number
        alive, ok, failed, errors = interp.execute(
            "pinger_stop.set()\npinger_thread.join(30)\n"
            "(pinger_thread.is_alive(), pinger_log['ok'], pinger_log['failed'], pinger_log['errors'])")
        assert not alive
        assert ok > 0, f"no call from the thread ever succeeded; errors: {errors}"
        assert failed > 0, "the thread never called between executes: the test proved nothing"
        # A refused call is a RuntimeError in the calling thread that says why (no execute running).
        assert all(is_runtime_error and "execute" in text for is_runtime_error, text in errors), errors
        assert interp.execute("6 * 7") == 42

    def test_concurrent_tool_calls_are_bounded_and_none_outlives_its_execute(
            self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 3: at most ``max_concurrent_tools`` run at once; queued calls of an execute
        that has ended never start."""
        limit, threads = 4, 60
        lock = threading.Lock()
        state = {"running": 0, "peak": 0, "started": 0, "late": 0}
        returned = threading.Event()

        def slow(number: int) -> int:
            with lock:
                state["started"] += 1
                state["late"] += returned.is_set()
                state["running"] += 1
                state["peak"] = max(state["peak"], state["running"])
            time.sleep(0.3)
            with lock:
                state["running"] -= 1
            return number

        interp = make_interpreter(max_concurrent_tools=limit)
        interp.tools["slow"] = slow
        bounded(lambda: interp.execute(code(f"""
            import threading, time
            calling = []

            def call(number):
                calling.append(number)
                try:
                    slow(number)
                except BaseException:
                    pass

            for number in range({threads}):
                threading.Thread(target=call, args=(number,), daemon=True).start()
            while len(calling) < {threads}:
                time.sleep(0.01)
            time.sleep(1.0)  # the host has every call by now; most must still wait their turn
        """)), self.hang_limit)
        returned.set()
        time.sleep(3.0)  # a host that runs the queue after the execute would start more calls here
        with lock:
            snapshot = dict(state)
        assert snapshot["peak"] <= limit, f"{snapshot['peak']} tool calls ran at once with max_concurrent_tools={limit}"
        assert snapshot["late"] == 0, f"{snapshot['late']} tool calls started after their execute had returned"
        assert snapshot["started"] < threads, "every call ran: the test proved nothing about queued calls"
        assert interp.execute("6 * 7") == 42


# -- ordinary user code --------------------------------------------------------------------------------
_SABOTAGE = {
    "builtins_len": "import builtins\nbuiltins.len = None",
    "builtins_isinstance": "import builtins\nbuiltins.isinstance = None",
    "json_dumps": "import json\njson.dumps = None",
    "json_loads": "import json\njson.loads = None",
    "os_write": "import os\nos.write = None",
    "os_read": "import os\nos.read = None",
    "sys_stdout_none": "import sys\nsys.stdout = None",
    "sys_stderr_none": "import sys\nsys.stderr = None",
}


class UserCodeAbuseSuite(SuiteBase):
    """Model-style code that swallows interrupts, ignores signals, floods output, closes or rebinds
    what the driver uses: it costs the user's code only; the session keeps answering."""

    def test_swallowed_interrupts_in_a_finite_loop_time_out_with_state_intact(
            self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 8: the interrupt is raised again during the grace period until the code stops."""
        interp = make_interpreter(timeout=1, grace=5)
        interp.execute("kept = 'before'")
        with pytest.raises(ExecutionTimeoutError):
            bounded(lambda: interp.execute(code("""
                import time
                for attempt in range(10):
                    try:
                        time.sleep(1)
                    except:
                        pass
            """)), self.hang_limit)
        assert interp.execute("kept") == "before"
        assert interp.execute("print('after')") == "after\n"

    @pytest.mark.parametrize("handler", ["signal.SIG_IGN", "lambda *args: None"], ids=["sig_ign", "no_op_handler"])
    def test_ignored_signals_do_not_cost_the_session(self, make_interpreter: Callable[..., Any], handler: str) -> None:
        """Issue 9 row 9: the driver restores its own signal handling on each execute."""
        interp = make_interpreter(timeout=1, grace=3)
        interp.execute(code(f"""
            import signal
            signal.signal(signal.SIGALRM, {handler})
            signal.signal(signal.SIGINT, {handler})
            kept = 'before'
        """))
        with pytest.raises(ExecutionTimeoutError):
            bounded(lambda: interp.execute("while True:\n    pass"), self.hang_limit)
        assert interp.execute("kept") == "before"
        assert interp.execute("print('after')") == "after\n"

    def test_background_writer_output_is_returned_or_counted(self, make_interpreter: Callable[..., Any]) -> None:
        """Issue 9 row 10: 300,000 lines from a thread across executes; none vanishes uncounted."""
        lines, width = 300_000, len(b"line 000000\n")
        interp = make_interpreter(output_limit=200_000)
        outputs: list[str] = []

        def run(source: str) -> None:
            result = bounded(lambda: interp.execute(source), self.hang_limit)
            assert result is None or isinstance(result, str), f"execute returned {result!r}"
            outputs.append(result or "")

        run(code(f"""
            import os, threading
            def write_lines():
                for number in range({lines}):
                    os.write(1, b"line %06d\\n" % number)
            writer = threading.Thread(target=write_lines, daemon=True)
            writer.start()
        """))
        for _ in range(40):
            run("import time\ntime.sleep(0.02)")
        run("writer.join()")
        run("pass")
        returned = dropped = 0
        for output in outputs:
            dropped += sum(int(count) for count in _MARKER.findall(output))
            returned += len(_MARKER.sub("", output).encode())
        assert returned + dropped == lines * width, (
            f"{lines * width} bytes written; {returned} returned and {dropped} counted as dropped: "
            f"{lines * width - returned - dropped} vanished without a marker")

    @pytest.mark.parametrize(
        "breakage",
        ["import os\nos.close(1)", "import os\nos.close(2)", "import os\nos.close(1)\nos.close(2)",
         "import sys\nsys.stdout.close()", "import sys\nsys.stderr.close()"],
        ids=["close_fd_1", "close_fd_2", "close_fds_1_2", "close_sys_stdout", "close_sys_stderr"],
    )
    def test_closed_output_streams_are_restored(self, interp: Any, breakage: str) -> None:
        """Issue 9 row 11: the driver restores fds 1 and 2 and sys.stdout/sys.stderr for each execute."""
        try:
            interp.execute(breakage)
        except CodeExecutionError:
            pass  # the user's own code may fail; later executes must not
        assert interp.execute("print('out')") == "out\n"
        assert interp.execute("import sys\n_ = sys.stderr.write('err\\n')") == "err\n"
        assert interp.execute("import os\n_ = os.write(1, b'fd\\n')") == "fd\n"
        assert interp.execute("6 * 7") == 42

    @pytest.mark.parametrize("sabotage", list(_SABOTAGE), ids=list(_SABOTAGE))
    def test_rebinding_what_the_driver_uses_costs_user_code_only(self, interp: Any, sabotage: str) -> None:
        """Issue 9 row 16: the driver depends on nothing user code can rebind."""
        interp.execute("kept = 'state'")
        try:
            bounded(lambda: interp.execute(_SABOTAGE[sabotage]), self.hang_limit)
        except CodeExecutionError:
            pass
        assert bounded(lambda: interp.execute("6 * 7"), self.hang_limit) == 42
        assert interp.execute("kept") == "state"
        assert interp.execute("print('still answering')") == "still answering\n"

    def test_output_capture_does_not_count_against_the_file_size_limit(
            self, make_interpreter: Callable[..., Any], sandboxkit_backend_class: type) -> None:
        """Issue 9 row 12: 3 MB of prints with ``max_file_mb=2`` is truncated output, not an OSError;
        the user's own files still obey the limit."""
        if "max_file_mb" not in {field.name for field in dataclasses.fields(sandboxkit_backend_class.Options)}:
            pytest.skip(f"backend {sandboxkit_backend_class.name!r} has no 'max_file_mb' option")
        interp = make_interpreter(max_file_mb=2, output_limit=1_000_000)
        for _ in range(2):  # twice: the capture must not fill up across executes either
            result = interp.execute('print("x" * 3_000_000)')
            assert isinstance(result, str) and result.startswith("x" * 1000)
            assert "truncated" in result.lower()
        outcome = interp.execute(code("""
            import os, tempfile
            path = os.path.join(tempfile.mkdtemp(), "big.bin")
            try:
                with open(path, "wb") as handle:
                    handle.write(b"y" * 3_000_000)
                outcome = "written"
            except OSError as exc:
                outcome = "refused"
            outcome
        """))
        assert outcome == "refused", "the user's own 3 MB file was written despite max_file_mb=2"
        assert interp.execute("print('after')") == "after\n"


class HostileSuite(ForgedMessageSuite, ToolAbuseSuite, UserCodeAbuseSuite):
    """Every attack on the host through the sandbox (issue 9's host and driver rows)."""
