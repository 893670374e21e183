"""The host treats every line from the sandbox as untrusted.

A rogue "driver" (a scripted process standing in for a compromised or broken sandbox) sends what
the protocol forbids; each case must end the session with a clear ``CodeInterpreterError`` rather
than be skipped over or guessed at, and must never hang.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap

import pytest

from sandboxkit.backend import Backend
from sandboxkit.errors import (
    BackendStartError,
    CodeInterpreterError,
    ProtocolError,
    SandboxDiedError,
    SessionEndedError,
)
from sandboxkit.stdio_interpreter import SandboxInterpreter
from sandboxkit.options import SessionOptions
from sandboxkit_subprocess import SubprocessProcess

ROGUE = textwrap.dedent(
    r"""
    import json, os, sys, time
    scenario = sys.argv[1]
    out = sys.stdout

    def send(obj):
        out.write(json.dumps(obj) + "\n"); out.flush()

    def next_execute():
        for line in sys.stdin:
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # the driver source the host sent first
            if isinstance(msg, dict) and msg.get("type") == "execute":
                return msg
        sys.exit(0)

    hello = {"type": "hello", "protocol": 1, "python": "3.11.0", "pid": os.getpid()}
    if scenario == "stray_line_first":
        out.write("Loading something...\n"); out.flush(); time.sleep(30)
    if scenario == "wrong_version":
        hello["protocol"] = 99
    if scenario == "silent":
        time.sleep(30)
    if scenario == "dies_at_start":
        sys.stderr.write("fatal: the sandbox image has no usable python\n"); sys.stderr.flush(); sys.exit(17)
    send(hello)
    msg = next_execute()
    ok = {"type": "result", "id": msg["id"], "status": "ok", "value": 1, "has_value": True,
          "output": "", "dropped": 0}
    if scenario == "wrong_id":
        ok["id"] = "0" * 32; send(ok)
    elif scenario == "oversized":
        out.write('{"type":"result","padding":"' + "x" * 100000 + '"}\n'); out.flush()
    elif scenario == "foreign_tool_call":
        send({"type": "tool_call", "id": "abc", "exec": "f" * 32, "name": "t", "args": [], "kwargs": {}})
        reply = json.loads(sys.stdin.readline())  # answered, not fatal: report what came back
        ok["value"] = [reply.get("id"), reply.get("ok"), reply.get("ename"), reply.get("evalue")]
        send(ok)
    elif scenario == "unknown_type":
        send({"type": "surprise"})
    elif scenario == "missing_field":
        del ok["output"]; send(ok)
    elif scenario == "bad_status":
        ok["status"] = "maybe"; send(ok)
    elif scenario == "stray_line_mid":
        out.write("[warning] something odd\n"); out.flush(); send(ok)
    elif scenario == "two_results":
        send(ok); send(ok); next_execute(); time.sleep(30)
    elif scenario == "dies_mid":
        sys.stderr.write("Segmentation fault in native code\n"); sys.stderr.flush(); os._exit(139)
    elif scenario == "well_behaved":
        send(ok); ok["id"] = next_execute()["id"]; ok["value"] = 2; send(ok)
    time.sleep(30)
    """
)


class RogueBackend(Backend):
    name = "rogue"

    def __init__(self, scenario: str) -> None:
        super().__init__(None)
        self.scenario = scenario
        self.processes: list[SubprocessProcess] = []

    def launch(self, argv, env):  # type: ignore[no-untyped-def]
        popen = subprocess.Popen(
            [sys.executable, "-c", ROGUE, self.scenario],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,  # SubprocessProcess.kill ends the process group
        )
        process = SubprocessProcess(popen, tempfile.mkdtemp(prefix="sandboxkit-rogue-"))
        self.processes.append(process)
        return process


def _interpreter(scenario: str, **options) -> tuple[SandboxInterpreter, RogueBackend]:
    backend = RogueBackend(scenario)
    settings = {"timeout": 20.0, "start_timeout": 20.0, **options}
    return SandboxInterpreter(backend, SessionOptions(**settings)), backend


def _assert_reaped(backend: RogueBackend) -> None:
    assert backend.processes, "the backend was never asked for a process"
    assert all(p.poll() is not None for p in backend.processes), "a rogue process was left running"


def test_well_behaved_rogue_script_works_so_the_harness_is_sound():
    interp, backend = _interpreter("well_behaved")
    try:
        assert interp.execute("anything") == 1
        assert interp.execute("anything") == 2
    finally:
        interp.shutdown()
    _assert_reaped(backend)


@pytest.mark.parametrize(
    "scenario, expected",
    [
        ("wrong_id", "answered a request that was not made"),
        ("unknown_type", "unknown message type"),
        ("missing_field", "'output'"),
        ("bad_status", "unknown status"),
        ("stray_line_mid", "not JSON"),
    ],
)
def test_protocol_violation_during_execute_ends_the_session(scenario, expected):
    interp, backend = _interpreter(scenario)
    with pytest.raises(ProtocolError, match=expected):
        interp.execute("x = 1")
    with pytest.raises(SessionEndedError, match="create a new interpreter"):
        interp.execute("x = 1")
    _assert_reaped(backend)


def test_a_tool_call_from_an_ended_execute_is_answered_with_an_error_not_fatal():
    interp, backend = _interpreter("foreign_tool_call")
    try:
        call_id, ok, ename, evalue = interp.execute("x = 1")
        assert (call_id, ok, ename) == ("abc", False, "RuntimeError")
        assert "only while an execute is running" in evalue
    finally:
        interp.shutdown()
    _assert_reaped(backend)


def test_oversized_message_is_refused_not_buffered():
    interp, backend = _interpreter("oversized", max_message_bytes=4096)
    with pytest.raises(ProtocolError, match="exceeded the 4096-byte limit"):
        interp.execute("x = 1")
    _assert_reaped(backend)


def test_a_second_unsolicited_result_is_not_taken_as_the_next_reply():
    interp, backend = _interpreter("two_results")
    assert interp.execute("first") == 1
    # The stale duplicate must not be mistaken for the answer to the next request.
    with pytest.raises(ProtocolError, match="answered a request that was not made"):
        interp.execute("second")
    _assert_reaped(backend)


def test_stray_output_before_the_handshake_fails_start():
    interp, backend = _interpreter("stray_line_first")
    with pytest.raises(ProtocolError, match="not JSON"):
        interp.start()
    _assert_reaped(backend)


def test_protocol_version_mismatch_says_what_to_upgrade():
    interp, backend = _interpreter("wrong_version")
    with pytest.raises(BackendStartError, match="protocol 99.*upgrade"):
        interp.start()
    _assert_reaped(backend)


def test_a_driver_that_never_answers_times_out_at_start():
    interp, backend = _interpreter("silent", start_timeout=1.0)
    with pytest.raises(BackendStartError, match="start_timeout"):
        interp.start()
    _assert_reaped(backend)


def test_death_at_start_carries_exit_code_and_stderr_tail():
    interp, backend = _interpreter("dies_at_start")
    with pytest.raises(SandboxDiedError) as info:
        interp.start()
    assert info.value.exit_code == 17
    assert "no usable python" in info.value.stderr_tail
    assert "no usable python" in str(info.value)
    _assert_reaped(backend)


def test_death_mid_execute_carries_exit_code_and_stderr_tail():
    interp, backend = _interpreter("dies_mid")
    with pytest.raises(SandboxDiedError) as info:
        interp.execute("x = 1")
    assert isinstance(info.value, CodeInterpreterError)
    assert info.value.exit_code == 139
    assert "Segmentation fault" in info.value.stderr_tail
    _assert_reaped(backend)
