"""Emulated sandboxes: their life cycle, and the processes that run in them.

A sandbox lives until its entrypoint exits (when it was given one), it is terminated, its
``timeout`` passes, or it has been idle for its ``idle_timeout``. Then every process it started is
killed, its result is fixed (Modal's ``GenericResult``: success or failure with the entrypoint's
exit code, ``TERMINATED`` or ``TIMEOUT``), and its runtime is stopped (its directory or container removed).

Inside a sandbox, each exec and the entrypoint is an :class:`Exec`: one process whose stdout and
stderr are kept whole (reads resume from any offset) and whose stdin takes offset-addressed
writes, so a retried write is not applied twice.

Where the processes run is the sandbox's runtime (see :mod:`.runtimes`): local processes in a
private directory, or one Docker container. A process sees only the environment the SDK asked
for. Errors are raised as :class:`grpclib.GRPCError` with the status Modal's servers use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from grpclib import GRPCError, Status
from modal_proto import api_pb2

from .outputs import OutputBuffer, pump
from .processes import SpawnError

__all__ = ["Exec", "Sandbox", "SandboxRegistry"]

#: Seconds after an exec's timeout before the emulator kills it (see Exec._expire).
EXEC_KILL_DELAY = 0.5
log = logging.getLogger("sandboxkit_modal.emulator")

#: How long a killed sandbox's output pipes may take to drain before they are cut off (s).
SETTLE_GRACE = 2.0

GenericResult = api_pb2.GenericResult

_STATUS_WORDS = {
    GenericResult.GENERIC_STATUS_SUCCESS: "exited",
    GenericResult.GENERIC_STATUS_FAILURE: "exited",
    GenericResult.GENERIC_STATUS_TERMINATED: "was terminated",
    GenericResult.GENERIC_STATUS_TIMEOUT: "timed out",
}


class Exec:
    """One process of a sandbox, with buffered output and offset-addressed stdin."""

    def __init__(self, exec_id: str, on_exit: Callable[[], None] | None = None) -> None:
        self.id = exec_id
        self._on_exit = on_exit
        self.stdout = OutputBuffer()
        self.stderr = OutputBuffer()
        self.process: Any = None  # a runtime's process (see .runtimes)
        #: The exit status: a code, or ``-signal``; None while running.
        self.status: int | None = None
        self.exited = asyncio.Event()
        #: True when the process was still running as its sandbox ended (and was killed by that).
        self.ended_with_sandbox = False
        self.stdin_written = 0
        self.stdin_closed = False
        #: Index of the last V1 ``SandboxStdinWrite`` applied (V1 stdin writes are numbered).
        self.stdin_index = 0
        self._stdin_lock = asyncio.Lock()
        self._pumps: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return self.status is None

    async def start(
        self,
        runtime: Any,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        workdir: str,
        stdout: bool = True,
        stderr: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Start the process in ``runtime``. A program that cannot start exits 127 or 126 with a
        message on stderr."""
        try:
            self.process = await runtime.spawn(argv, env=env, workdir=workdir, stdout=stdout, stderr=stderr)
        except SpawnError as exc:
            self.stderr.append(f"sandboxkit's Modal emulator: {exc}\n".encode())
            self.stdout.close()
            self.stderr.close()
            self.stdin_closed = True
            self._set_status(exc.exit_code)
            return
        for reader, buffer in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            if reader is None:
                buffer.close()
            else:
                self._pumps.append(asyncio.ensure_future(pump(reader, buffer)))
        self._tasks.append(asyncio.ensure_future(self._watch()))
        if timeout:
            self._tasks.append(asyncio.ensure_future(self._expire(timeout)))

    def _set_status(self, status: int) -> None:
        if self.status is None:
            self.status = status
            self.exited.set()
            if self._on_exit is not None:
                self._on_exit()

    async def _watch(self) -> None:
        assert self.process is not None
        self._set_status(await self.process.wait())
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _expire(self, timeout: float) -> None:
        # The SDK enforces the exec deadline itself (its wait then reports -1); the kill comes a
        # moment later, as from a remote service, so the SDK's own verdict is the one users see.
        await asyncio.sleep(timeout + EXEC_KILL_DELAY)
        log.info("exec %s reached its timeout of %gs; killing it", self.id, timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the process and every process in its session."""
        if self.process is not None:
            self.process.kill()

    async def settle(self, grace: float = SETTLE_GRACE) -> None:
        """After a kill: wait for the exit and the output pipes (at most ``grace`` s), then end the output."""
        waits = [*self._pumps]
        if self.process is not None and self.status is None:
            waits.append(asyncio.ensure_future(self.exited.wait()))
        if waits:
            await asyncio.wait(waits, timeout=grace)
        for task in [*waits, *self._tasks]:
            task.cancel()
        self.stdout.close()
        self.stderr.close()
        if self.status is None:
            self._set_status(-9)

    async def write_stdin(self, offset: int, data: bytes, eof: bool) -> None:
        """Write ``data``, which starts at byte ``offset`` of the stdin stream, then close stdin if ``eof``.

        Bytes before :attr:`stdin_written` were written already (a retry) and are skipped. A gap
        fails with ``OUT_OF_RANGE``; writing to a closed stdin or to a process that has exited
        fails with ``FAILED_PRECONDITION``. Closing twice is harmless.
        """
        async with self._stdin_lock:
            if offset > self.stdin_written:
                raise GRPCError(
                    Status.OUT_OF_RANGE,
                    f"stdin write at offset {offset}, but only {self.stdin_written} bytes were written",
                )
            data = data[self.stdin_written - offset :]
            if data:
                if self.stdin_closed:
                    raise GRPCError(Status.FAILED_PRECONDITION, f"the stdin of exec {self.id} is closed")
                writer = self.process.stdin if self.process else None
                if writer is None or self.status is not None:
                    raise GRPCError(Status.FAILED_PRECONDITION, f"exec {self.id} has exited; it reads no more input")
                try:
                    writer.write(data)
                    await writer.drain()
                except (BrokenPipeError, ConnectionResetError) as exc:
                    raise GRPCError(
                        Status.FAILED_PRECONDITION, f"exec {self.id} closed its stdin or exited ({exc})"
                    ) from exc
                self.stdin_written += len(data)
            if eof and not self.stdin_closed:
                self.stdin_closed = True
                writer = self.process.stdin if self.process else None
                if writer is not None:
                    writer.close()

    def output(self, fd: int) -> OutputBuffer:
        """The buffer of file descriptor ``fd`` (1: stdout, 2: stderr)."""
        return self.stdout if fd == 1 else self.stderr


class Sandbox:
    """One emulated sandbox, made by the control plane and kept in a :class:`SandboxRegistry`."""

    def __init__(
        self,
        *,
        sandbox_id: str,
        task_id: str,
        version: int,
        app_id: str,
        definition: api_pb2.Sandbox,
        env: Mapping[str, str],
        tags: Mapping[str, str],
        runtime: Any,
        created_at: float,
    ) -> None:
        self.id = sandbox_id
        self.task_id = task_id
        self.version = version
        self.app_id = app_id
        self.definition = definition
        self.name = definition.name if definition.HasField("name") else ""
        self.env = dict(env)
        self.tags = dict(tags)
        #: Where the processes run (see .runtimes).
        self.runtime = runtime
        self.created_at = created_at
        self.execs: dict[str, Exec] = {}
        #: The entrypoint process, or a stand-in with empty output when the sandbox has none.
        self.entrypoint = Exec("entrypoint")
        self.result: api_pb2.GenericResult | None = None
        self.finished = asyncio.Event()
        self.last_activity = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: asyncio.Task[None] | None = None

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the runtime, the entrypoint (if any) and the timers."""
        await self.runtime.start()
        args = list(self.definition.entrypoint_args)
        if args:
            await self.entrypoint.start(self.runtime, args, env=self.env, workdir=self.default_workdir)
            self._tasks.append(asyncio.ensure_future(self._watch_entrypoint()))
        else:
            self.entrypoint.stdin_closed = True
        if self.definition.timeout_secs:
            self._tasks.append(asyncio.ensure_future(self._expire(self.definition.timeout_secs)))
        if self.definition.HasField("idle_timeout_secs") and self.definition.idle_timeout_secs:
            self._tasks.append(asyncio.ensure_future(self._watch_idle(self.definition.idle_timeout_secs)))

    async def _watch_entrypoint(self) -> None:
        await self.entrypoint.exited.wait()
        status = self.entrypoint.status or 0
        code = status if status >= 0 else 128 - status
        ok = GenericResult.GENERIC_STATUS_SUCCESS if code == 0 else GenericResult.GENERIC_STATUS_FAILURE
        self.finish(ok, exitcode=code)

    async def _expire(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        log.info("sandbox %s reached its timeout of %gs", self.id, timeout)
        self.finish(GenericResult.GENERIC_STATUS_TIMEOUT, message=f"Sandbox timed out after {timeout:g}s")

    async def _watch_idle(self, idle: float) -> None:
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            if any(e.running for e in self.execs.values()):
                self.touch()
            elif time.monotonic() - self.last_activity >= idle:
                log.info("sandbox %s was idle for %gs", self.id, idle)
                self.finish(GenericResult.GENERIC_STATUS_TIMEOUT, message=f"Sandbox was idle for {idle:g}s")
                return

    def touch(self) -> None:
        """Note activity (an exec started, running or ending; stdin written) for the idle timeout."""
        self.last_activity = time.monotonic()

    def finish(self, status: int, *, exitcode: int = 0, message: str = "") -> asyncio.Task[None]:
        """End the sandbox (once): fix its result, kill its processes, stop its runtime.

        The result is fixed at once, so new execs are refused; :attr:`finished` is set when every
        process is gone and the runtime is stopped (its directory or container removed). Returns
        the task doing the work; await it to wait for the end.
        """
        if self._finishing is None:
            if not message:
                message = f"Sandbox {_STATUS_WORDS.get(status, 'ended')}"
            self.result = GenericResult(status=status, exitcode=exitcode, exception=message)
            self._finishing = asyncio.ensure_future(self._finish())
        return self._finishing

    async def _finish(self) -> None:
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        everything = [self.entrypoint, *self.execs.values()]
        for process in everything:
            process.ended_with_sandbox = process.running
            process.kill()
        await self.runtime.kill_all()
        await asyncio.gather(*(process.settle() for process in everything))
        await self.runtime.stop()  # before it counts as finished: a finished sandbox leaves nothing
        self.finished.set()
        log.info("sandbox %s finished: %s", self.id, self.result.exception if self.result else "")

    async def wait(self, timeout: float | None) -> api_pb2.GenericResult | None:
        """The result once the sandbox has finished, waiting at most ``timeout`` s (None: no limit)."""
        if timeout is None or timeout > 0:
            try:
                await asyncio.wait_for(self.finished.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return self.result if self.finished.is_set() else None

    @property
    def running(self) -> bool:
        return self.result is None

    def require_running(self) -> None:
        """Fail with ``NOT_FOUND`` (how Modal reports a task that is gone) once the sandbox ended."""
        if self.result is not None:
            raise GRPCError(
                Status.NOT_FOUND,
                f"sandbox {self.id} has finished ({self.result.exception}); its task {self.task_id} is gone",
            )

    # -- processes ------------------------------------------------------------------------------

    @property
    def default_workdir(self) -> str:
        """The working directory the sandbox was created with ("" when none was given)."""
        return self.definition.workdir if self.definition.HasField("workdir") else ""

    async def exec(
        self,
        exec_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        workdir: str,
        timeout: float | None,
        stdout: bool,
        stderr: bool,
    ) -> Exec:
        """Start an exec (idempotent by ``exec_id``: a repeated start returns the first)."""
        self.require_running()
        if exec_id in self.execs:
            return self.execs[exec_id]
        self.touch()
        process = Exec(exec_id, on_exit=self.touch)
        self.execs[exec_id] = process
        await process.start(
            self.runtime,
            argv,
            env={**self.env, **env},
            workdir=workdir or self.default_workdir,
            stdout=stdout,
            stderr=stderr,
            timeout=timeout,
        )
        if not self.running:  # finished while the process was starting
            process.kill()
            await process.settle()
        return process

    def get_exec(self, exec_id: str) -> Exec:
        """The exec ``exec_id``, or ``NOT_FOUND``."""
        try:
            return self.execs[exec_id]
        except KeyError:
            raise GRPCError(Status.NOT_FOUND, f"no exec {exec_id} in sandbox {self.id}") from None


class SandboxRegistry:
    """Every sandbox of the emulator, by sandbox id and by task id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Sandbox] = {}
        self._by_task: dict[str, Sandbox] = {}
        self._last_created = 0.0

    def add(self, sandbox: Sandbox) -> None:
        self._by_id[sandbox.id] = sandbox
        self._by_task[sandbox.task_id] = sandbox

    def next_created_at(self) -> float:
        """A creation time later than every earlier one (sandbox lists page by creation time)."""
        self._last_created = max(time.time(), self._last_created + 1e-6)
        return self._last_created

    def get(self, sandbox_id: str) -> Sandbox:
        """The sandbox ``sandbox_id``, or ``NOT_FOUND``."""
        try:
            return self._by_id[sandbox_id]
        except KeyError:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found") from None

    def by_task(self, task_id: str) -> Sandbox:
        """The sandbox whose task is ``task_id``, or ``NOT_FOUND``."""
        try:
            return self._by_task[task_id]
        except KeyError:
            raise GRPCError(Status.NOT_FOUND, f"task {task_id} not found") from None

    def all(self) -> Iterable[Sandbox]:
        return list(self._by_id.values())

    async def shutdown(self) -> None:
        """Terminate every running sandbox and wait until their processes are gone."""
        await asyncio.gather(
            *(
                s.finish(GenericResult.GENERIC_STATUS_TERMINATED, message="the emulator shut down")
                for s in self.all()
            )
        )
