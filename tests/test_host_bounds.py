"""The host's own bounds, tested on its parts: message decoding, the tool queue, the outbox.

End-to-end attacks on the same promises, from code inside a real sandbox, are in the
conformance kit's hostile area; these tests pin the mechanisms down directly.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from sandboxkit.decoding import MessageLimits, decode
from sandboxkit.outbox import Outbox
from sandboxkit.protocol import Violation
from sandboxkit.tool_queue import ToolQueue

LIMITS = MessageLimits(max_bytes=1 << 30, max_depth=50, max_items=10_000)


# -- decoding -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, option",
    [
        (b"[" * 5_000, "max_message_depth"),
        (b"[" * 200_000, "max_message_items"),
        (b'{"a":' * 60 + b"1" + b"}" * 60, "max_message_depth"),
        (b"[" + b"{}," * 20_000 + b"{}]", "max_message_items"),
        (b"[" + b"0," * 20_000 + b"0]", "max_message_items"),
    ],
    ids=["unclosed-brackets", "very-many-brackets", "deep-objects", "many-objects", "many-numbers"],
)
def test_structure_beyond_the_limits_is_a_violation_naming_the_option(line: bytes, option: str) -> None:
    with pytest.raises(Violation, match=option):
        decode(line, LIMITS)


@pytest.mark.parametrize(
    "value",
    [
        "," * 100_000 + "[{" * 100_000,  # brackets and commas inside a string cost nothing
        [[[[["nested", {"five": "levels"}]]]]],
        [{"row": i, "cells": "a,b,c"} for i in range(2000)],
    ],
    ids=["punctuation-in-a-string", "moderate-nesting", "a-table"],
)
def test_messages_within_the_limits_decode(value: object) -> None:
    import json

    assert decode(json.dumps(value).encode(), LIMITS) == value


def test_exactly_at_the_depth_limit_decodes_and_one_more_does_not() -> None:
    assert decode(b"[" * 50 + b"]" * 50, LIMITS) is not None
    with pytest.raises(Violation, match="max_message_depth"):
        decode(b"[" * 51 + b"]" * 51, LIMITS)


@pytest.mark.parametrize("line", [b"not json", b"\xff\xfe", b'{"a": 1', b""])
def test_malformed_lines_are_violations(line: bytes) -> None:
    with pytest.raises(Violation):
        decode(line, LIMITS)


# -- the tool queue --------------------------------------------------------------------------------
def test_the_queue_runs_at_most_its_concurrency_in_arrival_order() -> None:
    queue = ToolQueue(concurrency=3, capacity=100, name="test")
    lock, release = threading.Lock(), threading.Event()
    running, peak, started = [0], [0], []
    done = threading.Semaphore(0)

    def job(index: int) -> None:
        with lock:
            started.append(index)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        done.release()

    for index in range(20):
        assert queue.submit("exec", lambda index=index: job(index))
    deadline = time.monotonic() + 10
    while len(started) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for a fourth job to start, were the bound broken
    assert started == [0, 1, 2] and queue.running == 3
    release.set()
    for _ in range(20):
        assert done.acquire(timeout=10), "a queued tool call never ran"
    assert peak[0] == 3
    assert started[:3] == [0, 1, 2] and sorted(started) == list(range(20))


def test_a_full_queue_refuses_and_cancel_takes_back_only_that_execute() -> None:
    queue = ToolQueue(concurrency=1, capacity=2, name="test")
    gate = threading.Event()
    ran: list[str] = []
    assert queue.submit("a", lambda: gate.wait(10))
    deadline = time.monotonic() + 10
    while queue.running < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.submit("a", lambda: ran.append("a-queued"))
    assert queue.submit("b", lambda: ran.append("b-queued"))
    assert not queue.submit("b", lambda: ran.append("refused")), "the queue took more than its capacity"
    taken = queue.cancel("a")
    assert len(taken) == 1
    gate.set()
    deadline = time.monotonic() + 10
    while ran != ["b-queued"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["b-queued"]


def test_a_closed_queue_refuses_new_calls() -> None:
    queue = ToolQueue(concurrency=2, capacity=5, name="test")
    assert queue.close() == []
    assert not queue.submit("x", lambda: None)


# -- the outbox ------------------------------------------------------------------------------------
def test_sending_to_a_reader_that_never_reads_does_not_block() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "wb")
    outbox = Outbox(stream, "test")
    payload = b"x" * (8 << 20)  # far more than a pipe holds
    sent = threading.Event()
    threading.Thread(target=lambda: (outbox.send(payload, b"\n"), sent.set()), daemon=True).start()
    assert sent.wait(10), "send() blocked on a pipe nobody reads"
    assert outbox.backlog_bytes > 0
    closed = threading.Event()
    threading.Thread(target=lambda: (outbox.close(), closed.set()), daemon=True).start()
    assert closed.wait(10), "close() blocked on a pipe nobody reads"
    stream.close()
    os.close(read_end)


def test_messages_arrive_whole_and_in_order() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "wb")
    outbox = Outbox(stream, "test")
    messages = [(b"%06d:" % i) + b"y" * (i * 997 % 300_000) + b"\n" for i in range(200)]
    expected = b"".join(messages)
    received = bytearray()

    def read() -> None:
        while len(received) < len(expected):
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    senders = [threading.Thread(target=lambda part=part: [outbox.send(m) for m in part])
               for part in (messages[:100], messages[100:])]
    senders[0].start()
    senders[0].join(10)
    senders[1].start()
    senders[1].join(10)
    reader.join(30)
    assert bytes(received) == expected
    outbox.close()
    stream.close()
    os.close(read_end)


def test_a_reader_that_went_away_marks_the_outbox_broken() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "wb")
    outbox = Outbox(stream, "test")
    os.close(read_end)
    outbox.send(b"nobody listens\n")
    assert outbox.broken
    outbox.close()
    stream.close()


def test_an_unterminated_string_costs_linear_time() -> None:
    from sandboxkit.conformance.suite import bounded

    line = b"{" * 101 + b'"' + b'\\"' * 200_000  # quadratic scanning took minutes on this
    with pytest.raises(Violation):
        bounded(lambda: decode(line, MessageLimits()), 30)


def test_lines_that_are_not_utf8_are_refused_before_decoding() -> None:
    flood = '{"type":"result","s":"\\"","x":[' + "{}," * 20_000 + '{}],"y":""}'
    with pytest.raises(Violation, match="not JSON"):
        decode(flood.encode("utf-16-le"), LIMITS)  # json.loads alone would take UTF-16


def test_calls_arriving_before_an_idle_worker_wakes_still_run_at_once() -> None:
    queue = ToolQueue(concurrency=16, capacity=16, name="test")
    warm = threading.Event()
    assert queue.submit("x", warm.set)  # leaves one idle worker behind
    assert warm.wait(10)
    time.sleep(0.1)
    barrier = threading.Barrier(8, timeout=10)
    met: list[bool] = []

    def meet() -> None:
        try:
            barrier.wait()
            met.append(True)
        except threading.BrokenBarrierError:
            met.append(False)

    for _ in range(8):
        assert queue.submit("x", meet)
    deadline = time.monotonic() + 15
    while len(met) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert met == [True] * 8, "calls that wait for each other did not all run at once"


def test_no_waiting_room_still_runs_calls_on_free_workers() -> None:
    queue = ToolQueue(concurrency=2, capacity=0, name="test")
    done = threading.Event()
    assert queue.submit("x", done.set)
    assert done.wait(10)


def test_a_reader_without_a_descriptor_holds_a_bounded_number_of_messages() -> None:
    from sandboxkit.streams import ThreadedReader

    read_end, write_end = os.pipe()
    source = os.fdopen(read_end, "rb")

    class NoDescriptor:
        def readline(self, limit: int) -> bytes:
            return source.readline(limit)

    def flood() -> None:
        sink = os.fdopen(write_end, "wb")
        try:
            for _ in range(20_000):
                sink.write(b'{"type":"x","pad":"' + b"a" * 1000 + b'"}\n')
            sink.close()
        except (BrokenPipeError, ValueError):
            pass  # the test closed the reading end: done

    threading.Thread(target=flood, daemon=True).start()
    reader = ThreadedReader(NoDescriptor(), LIMITS)
    time.sleep(0.5)
    assert reader._events.qsize() <= ThreadedReader.DEPTH
    assert reader.next_event(time.monotonic() + 5)[0] == "message"
    reader.close()
    assert reader.next_event(None) == ("eof", None)
    source.close()


@pytest.mark.parametrize(
    "args, kwargs",
    [((1, 2, 3), {}), ((1,), {"c": 3, "b": 2}), ((), {"c": 3, "a": 1, "b": 2}), ((1, 2), {}), ((1, 2, 3, 4), {})],
)
def test_binding_tool_arguments_gives_what_signature_bind_gives(args: tuple, kwargs: dict) -> None:
    import inspect

    from sandboxkit.values import bind_tool_call

    def tool(a, b, c=30):  # type: ignore[no-untyped-def]
        return a, b, c

    try:
        expected = inspect.signature(tool).bind(*args, **kwargs).arguments
    except TypeError:
        with pytest.raises(TypeError):
            bind_tool_call(tool, list(args), dict(kwargs))
        return
    call_args, call_kwargs = bind_tool_call(tool, list(args), dict(kwargs))
    assert call_args == [] and list(call_kwargs.items()) == list(expected.items())


def test_a_large_reply_the_sandbox_is_reading_does_not_end_the_session() -> None:
    import sandboxkit

    interp = sandboxkit.interpreter("subprocess", max_message_bytes=1 << 20)
    interp.tools["fetch"] = lambda: "r" * 3_000_000
    try:
        assert interp.execute("len(fetch()) + len(fetch())") == 6_000_000
    finally:
        interp.shutdown()
