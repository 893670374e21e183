"""The emulated task command router: how the SDK runs and talks to processes in a sandbox.

Served: ``TaskExecStart``, ``TaskExecStdioRead`` (streamed, from any byte offset),
``TaskExecStdinWrite``, ``TaskExecStdinWriteStream``, ``TaskExecStdinStatus``, ``TaskExecWait``,
``TaskExecPoll``, and the V2 entrypoint's ``SandboxStdioReadV2`` and ``SandboxStdinWriteV2``. Every
other RPC fails with ``UNIMPLEMENTED`` naming it.

Each call carries ``authorization: Bearer <token>``; the token must be one the control plane
minted for the task the request names (``UNAUTHENTICATED`` otherwise, which makes the SDK fetch
a fresh one). Once a sandbox has finished, starting an exec or writing stdin fails with
``NOT_FOUND``, as Modal's router does for a task that is gone, and so does waiting for (or
polling) an exec the sandbox's end killed; an exec that exited on its own still reports its
status. Output stays readable, from any offset, for the life of the server.
"""

from __future__ import annotations

import asyncio
import logging

from grpclib import GRPCError, Status
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

from .outputs import OutputBuffer
from .sandboxes import Exec, Sandbox
from .state import EmulatorState
from .tokens import TokenError
from .unimplemented import complete

__all__ = ["CommandRouter", "SERVICE"]

log = logging.getLogger("sandboxkit_modal.emulator")

SERVICE = "TaskCommandRouter"

#: Longest a ``TaskExecWait`` holds before answering DEADLINE_EXCEEDED (the SDK asks again).
MAX_WAIT = 55.0

_STDOUT_PIPE = sr_pb2.TaskExecStdoutConfig.TASK_EXEC_STDOUT_CONFIG_PIPE
_STDERR_PIPE = sr_pb2.TaskExecStderrConfig.TASK_EXEC_STDERR_CONFIG_PIPE


class CommandRouter(TaskCommandRouterBase):
    """``TaskCommandRouter`` handlers over an :class:`~.state.EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # -- helpers --------------------------------------------------------------------------------

    def sandbox(self, stream, task_id: str, *, running: bool = True) -> Sandbox:
        """The sandbox of ``task_id``, after checking the caller's token is for that task."""
        header = stream.metadata.get("authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        try:
            claims = self.state.minter.verify(token)
        except TokenError as exc:
            raise GRPCError(Status.UNAUTHENTICATED, f"invalid task command router token: {exc}") from None
        if claims.get("task_id") != task_id:
            raise GRPCError(Status.UNAUTHENTICATED, f"the token is not for task {task_id}")
        sandbox = self.state.sandboxes.by_task(task_id)
        if running:
            sandbox.require_running()
        return sandbox

    def exec(self, stream, task_id: str, exec_id: str, *, running: bool = True) -> tuple[Sandbox, Exec]:
        sandbox = self.sandbox(stream, task_id, running=running)
        return sandbox, sandbox.get_exec(exec_id)

    @staticmethod
    def exit_status(sandbox: Sandbox, process: Exec, response_type):
        """The exit status as a wait/poll response; ``NOT_FOUND`` if the sandbox's end killed it."""
        if process.ended_with_sandbox:
            sandbox.require_running()
        status = process.status
        if status is None:
            return response_type()
        return response_type(code=status) if status >= 0 else response_type(signal=-status)

    # -- execs ----------------------------------------------------------------------------------

    async def TaskExecStart(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.sandbox(stream, request.task_id)
        if request.HasField("pty_info") and request.pty_info.enabled:
            raise GRPCError(Status.UNIMPLEMENTED, "sandboxkit's Modal emulator does not support PTY execs")
        if request.container_id:
            raise GRPCError(Status.UNIMPLEMENTED, "sandboxkit's Modal emulator does not support sidecar containers")
        if not request.command_args:
            raise GRPCError(Status.INVALID_ARGUMENT, "an exec needs a command")
        env: dict[str, str] = {}
        for secret_id in request.secret_ids:
            env.update(self.state.secret_values(secret_id))
        env.update(request.env)
        env.update(self.state.resolve_sources(list(request.secret_sources)))
        process = await sandbox.exec(
            request.exec_id,
            list(request.command_args),
            env=env,
            workdir=request.workdir if request.HasField("workdir") else "",
            timeout=request.timeout_secs if request.HasField("timeout_secs") and request.timeout_secs else None,
            stdout=request.stdout_config == _STDOUT_PIPE,
            stderr=request.stderr_config == _STDERR_PIPE,
        )
        log.debug("exec %s in %s: %s", process.id, sandbox.id, list(request.command_args))
        await stream.send_message(sr_pb2.TaskExecStartResponse())

    async def TaskExecStdioRead(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.sandbox(stream, request.task_id, running=False)
        process = sandbox.get_exec(request.exec_id)
        if request.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT:
            buffer = process.stdout
        elif request.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR:
            buffer = process.stderr
        else:
            raise GRPCError(Status.INVALID_ARGUMENT, f"unknown file descriptor {request.file_descriptor}")
        await _send_chunks(stream, buffer, request.offset, lambda data, _: sr_pb2.TaskExecStdioReadResponse(data=data))

    async def TaskExecStdinWrite(self, stream) -> None:
        request = await stream.recv_message()
        sandbox, process = self.exec(stream, request.task_id, request.exec_id)
        sandbox.touch()
        await _write(sandbox, process, request.offset, request.data, request.eof)
        await stream.send_message(sr_pb2.TaskExecStdinWriteResponse())

    async def TaskExecStdinWriteStream(self, stream) -> None:
        first = await stream.recv_message()
        if first is None or first.WhichOneof("message") != "start":
            raise GRPCError(Status.INVALID_ARGUMENT, "a stdin write stream begins with a start message")
        start = first.start
        sandbox, process = self.exec(stream, start.task_id, start.exec_id)
        offset = start.offset
        async for message in stream:
            kind = message.WhichOneof("message")
            sandbox.touch()
            if kind == "data":
                await _write(sandbox, process, offset, message.data, False)
                offset += len(message.data)
            elif kind == "end":
                await _write(sandbox, process, offset, b"", True)
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream) -> None:
        request = await stream.recv_message()
        _, process = self.exec(stream, request.task_id, request.exec_id)
        await stream.send_message(
            sr_pb2.TaskExecStdinStatusResponse(num_bytes_written=process.stdin_written, closed=process.stdin_closed)
        )

    async def TaskExecWait(self, stream) -> None:
        request = await stream.recv_message()
        sandbox, process = self.exec(stream, request.task_id, request.exec_id, running=False)
        try:
            await asyncio.wait_for(process.exited.wait(), MAX_WAIT)
        except asyncio.TimeoutError:
            raise GRPCError(Status.DEADLINE_EXCEEDED, f"exec {process.id} is still running") from None
        await stream.send_message(self.exit_status(sandbox, process, sr_pb2.TaskExecWaitResponse))

    async def TaskExecPoll(self, stream) -> None:
        request = await stream.recv_message()
        sandbox, process = self.exec(stream, request.task_id, request.exec_id, running=False)
        await stream.send_message(self.exit_status(sandbox, process, sr_pb2.TaskExecPollResponse))

    # -- the V2 entrypoint ----------------------------------------------------------------------

    async def SandboxStdioReadV2(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.sandbox(stream, request.task_id, running=False)
        fd = 1 if request.file_descriptor == sr_pb2.SANDBOX_STDIO_FILE_DESCRIPTOR_STDOUT else 2
        buffer = sandbox.entrypoint.output(fd)
        await _send_chunks(
            stream,
            buffer,
            request.offset,
            lambda data, offset: sr_pb2.SandboxStdioReadV2Response(data=data, starting_offset=offset),
        )

    async def SandboxStdinWriteV2(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.sandbox(stream, request.task_id)
        if not sandbox.definition.entrypoint_args and request.data:
            raise GRPCError(Status.FAILED_PRECONDITION, f"Sandbox {sandbox.id} has no entrypoint to read stdin")
        sandbox.touch()
        await _write(sandbox, sandbox.entrypoint, request.offset, request.data, request.eof)
        await stream.send_message(sr_pb2.SandboxStdinWriteV2Response())


async def _send_chunks(stream, buffer: OutputBuffer, offset: int, make) -> None:
    """Stream ``buffer`` from ``offset`` to its end, one message per chunk."""
    async for data in buffer.chunks(offset):
        await stream.send_message(make(data, offset))
        offset += len(data)


async def _write(sandbox: Sandbox, process: Exec, offset: int, data: bytes, eof: bool) -> None:
    """Write to ``process``'s stdin; a write cut short by the sandbox ending reports that."""
    try:
        await process.write_stdin(offset, data, eof)
    except GRPCError:
        sandbox.require_running()
        raise


complete(CommandRouter, SERVICE)
