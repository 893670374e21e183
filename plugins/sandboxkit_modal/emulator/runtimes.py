"""Where an emulated sandbox's processes run: local processes, or one hardened Docker container.

A runtime belongs to one sandbox. :meth:`start` prepares it, :meth:`spawn` starts one process in
it (the entrypoint or an exec), :meth:`kill_all` stops every process at once, and :meth:`stop`
removes what is left. Processes have the interface of :class:`processes.LocalProcess`: ``stdin``
(``write``/``drain``/``close``), ``stdout``/``stderr`` (asyncio stream readers, or None when
discarded), ``async wait()`` giving a code or ``-signal``, and ``kill()``.

:class:`LocalRuntime` (process mode) runs processes on this host in a private directory: no
isolation. :class:`ContainerRuntime` (container mode) makes one container per sandbox with the
``docker`` backend's :func:`sandboxkit_docker.create_container`, so its hardening applies and the
Modal isolation a sandbox asks for is real: a blocked network is Docker's ``none`` network, and
cpu and memory requests become the container's limits. Its processes are ``docker exec``\\ s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import posixpath
import shutil
import signal
import struct
from typing import Any, Callable, Mapping, Sequence, TypeVar

from grpclib import GRPCError, Status
from modal_proto import api_pb2

from .processes import LocalProcess, SpawnError, resolve_argv, spawn

__all__ = ["ContainerRuntime", "LocalRuntime", "SANDBOX_MODES", "docker_problem", "resolve_mode"]

log = logging.getLogger("sandboxkit_modal.emulator")
NetworkAccessType = api_pb2.NetworkAccess.NetworkAccessType
T = TypeVar("T")

#: ``PATH`` of a local process whose environment does not set one.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The container's main process: it only waits, so the sandbox lives until it is removed.
KEEPER = ["python3", "-I", "-c", "import signal\nwhile True:\n    signal.pause()"]
#: Label naming the emulated sandbox a container belongs to.
SANDBOX_LABEL = "sandboxkit.modal-emulator.sandbox"
_HEADER = struct.Struct(">BxxxI")


class LocalRuntime:
    """Process mode: local processes in the sandbox's private directory.

    The working directory of a process is that directory; an absolute ``workdir`` ``/a/b`` means
    ``<sandbox dir>/a/b``. A process gets ``PATH`` when its environment sets none, and
    ``python``/``python3`` mean ``python``.
    """

    def __init__(self, directory: str, python: str) -> None:
        self.directory = directory
        self.python = python

    async def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)

    def path(self, workdir: str) -> str:
        """The host directory for the sandbox path ``workdir`` (created); ``""`` means the sandbox's own."""
        inside = posixpath.normpath("/" + workdir).lstrip("/")  # as in a container, "/.." is "/"
        target = os.path.normpath(os.path.join(self.directory, inside))
        if os.path.commonpath([target, self.directory]) != self.directory:
            raise GRPCError(Status.INVALID_ARGUMENT, f"workdir {workdir!r} leaves the sandbox")
        os.makedirs(target, exist_ok=True)
        return target

    async def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], workdir: str, stdout: bool, stderr: bool
    ) -> LocalProcess:
        return await spawn(
            resolve_argv(argv, self.python),
            env={"PATH": DEFAULT_PATH, **env},
            cwd=self.path(workdir),
            stdout=stdout,
            stderr=stderr,
        )

    async def kill_all(self) -> None:
        """Nothing to do: each process is killed with its session."""

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, self.directory, True)


def docker_problem(image: str) -> str | None:
    """Why container mode cannot run here (no docker backend, no engine, no image), or None."""
    try:
        import docker

        from sandboxkit_docker import DockerBackend
    except ImportError:
        return "the docker backend is not installed (pip install 'sandboxkit[docker]')"
    availability = DockerBackend.check()
    if not availability.usable:
        return availability.reason
    try:
        client = docker.from_env(timeout=60)
        try:
            client.images.get(image)
        finally:
            client.close()
    except docker.errors.ImageNotFound:
        return f"the Docker image {image!r} is not on the engine"
    except Exception as exc:
        return f"the Docker engine could not be asked for the image {image!r}: {exc}"
    return None


#: The emulator's ``sandboxes`` settings: run sandboxes as local processes, in containers, or in
#: containers when a Docker engine (with the image) is available and as processes otherwise.
SANDBOX_MODES = ("process", "container", "auto")


def resolve_mode(mode: str, image: str) -> tuple[str, str]:
    """``(mode, note)``: the mode a ``sandboxes`` setting comes to here ("process" or "container")
    and one sentence for the operator. Raises ValueError for "container" when it cannot run."""
    if mode not in SANDBOX_MODES:
        raise ValueError(f"sandboxes must be one of {', '.join(SANDBOX_MODES)}, got {mode!r}")
    problem = None if mode == "process" else docker_problem(image)
    if mode == "container" and problem:
        raise ValueError(f"container mode needs a Docker engine with the image {image!r}: {problem}")
    if mode == "process" or problem:
        why = f" ({problem})" if problem else ""
        return "process", (f"sandboxes run as local processes{why}: no isolation; network blocking and "
                           "resource limits are not enforced")
    return "container", (f"sandboxes run in hardened Docker containers of image {image}: network blocking "
                         "and cpu/memory limits are enforced")


async def _off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking Docker SDK call on a worker thread."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


class ContainerRuntime:
    """Container mode: one container per sandbox, each process a ``docker exec`` in it.

    The container runs :data:`KEEPER` under Docker's init and carries sandboxkit's owner labels
    (so ``sandboxkit gc`` removes it if the emulator is killed) and :data:`SANDBOX_LABEL`. The
    working directory defaults to the image's scratch directory (``/work``); ``/tmp`` and
    ``/work`` are the only writable places.
    """

    def __init__(self, client: Any, image: str, sandbox_id: str, definition: api_pb2.Sandbox,
                 env: Mapping[str, str]) -> None:
        self._client = client
        #: The engine's low-level API (for execs).
        self.api = client.api
        self._sandbox_id = sandbox_id
        self._env = dict(env)
        self.options = container_options(image, definition)
        self.container: Any = None
        self._creating: asyncio.Future[Any] | None = None
        #: Set once the container has been told to die: its execs are dead with it (Docker may
        #: go on reporting them as running).
        self.killed = False

    async def start(self) -> None:
        from sandboxkit_docker import create_container

        # The create runs on a worker thread, which a cancelled request cannot stop: keep its
        # future, so that stop() can still find (and remove) a container made after all.
        self._creating = asyncio.ensure_future(_off_loop(
            create_container, self._client, self.options, KEEPER, self._env, stdin_once=False,
            labels={SANDBOX_LABEL: self._sandbox_id},
        ))
        try:
            self.container = await asyncio.shield(self._creating)
            await _off_loop(self.container.start)
        except Exception as exc:
            raise GRPCError(Status.INTERNAL, f"the emulator could not start a container for the sandbox: {exc}") from exc

    async def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str], workdir: str, stdout: bool, stderr: bool
    ) -> ContainerExec:
        if not argv:
            raise SpawnError("no command given", 127)
        api = self.api
        try:
            created = await _off_loop(
                api.exec_create, self.container.id, list(argv), stdin=True, stdout=stdout, stderr=stderr,
                environment=dict(env), workdir=workdir or None,
            )
            hijacked = await _off_loop(api.exec_start, created["Id"], socket=True)
        except Exception as exc:
            raise SpawnError(f"{argv[0]}: cannot run ({exc})", 126) from exc
        process = ContainerExec(self, created["Id"], hijacked, stdout, stderr)
        await process.open()
        return process

    async def kill_all(self) -> None:
        self.killed = True
        if self.container is not None:
            try:
                await _off_loop(self.container.kill)
            except Exception:
                pass  # not running any more

    async def stop(self) -> None:
        if self.container is None and self._creating is not None:
            try:
                self.container = await self._creating
            except Exception:
                pass  # nothing was made
        if self.container is not None:
            try:
                await _off_loop(self.container.remove, force=True)
            except Exception as exc:
                log.warning("could not remove container %s of sandbox %s: %s", self.container.short_id,
                            self._sandbox_id, exc)


def container_options(image: str, definition: api_pb2.Sandbox) -> Any:
    """The docker backend's options for a sandbox ``definition``: its hardening, plus the
    network and resources the sandbox asked for."""
    from sandboxkit_docker import DockerOptions

    options = DockerOptions(image=image)
    kind = definition.network_access.network_access_type
    if not (definition.block_network or kind in (NetworkAccessType.BLOCKED, NetworkAccessType.ALLOWLIST)):
        options = dataclasses.replace(options, network="bridge")
    elif kind == NetworkAccessType.ALLOWLIST:
        log.warning("a CIDR allow-list is enforced as a fully blocked network in container mode")
    resources = definition.resources
    if resources.memory_mb_max or resources.memory_mb:
        options = dataclasses.replace(options, memory=f"{resources.memory_mb_max or resources.memory_mb}m")
    if resources.milli_cpu_max or resources.milli_cpu:
        options = dataclasses.replace(options, cpus=(resources.milli_cpu_max or resources.milli_cpu) / 1000)
    return options


class _StdinWriter:
    """An exec's stdin over its hijacked connection; ``close`` half-closes it (EOF for the process)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        if self._writer.can_write_eof() and not self._writer.is_closing():
            try:
                self._writer.write_eof()
            except OSError:
                pass


class ContainerExec:
    """One ``docker exec`` process: Docker's multiplexed stream split into stdout and stderr."""

    def __init__(self, runtime: ContainerRuntime, exec_id: str, hijacked: Any, stdout: bool, stderr: bool) -> None:
        from sandboxkit_docker.process import _raw_socket

        self._runtime = runtime
        self._api = runtime.api
        self._container_id = runtime.container.id
        self._exec_id = exec_id
        self._hijacked = hijacked  # keeps the SDK's response (and so the socket) alive
        self._sock = _raw_socket(hijacked)
        self.stdout: asyncio.StreamReader | None = asyncio.StreamReader() if stdout else None
        self.stderr: asyncio.StreamReader | None = asyncio.StreamReader() if stderr else None
        self.stdin: _StdinWriter | None = None
        self._demux: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._status: int | None = None
        self._killing: asyncio.Task[None] | None = None

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self.stdin = _StdinWriter(self._writer)
        self._demux = asyncio.ensure_future(self._split(reader))

    async def _split(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(_HEADER.size)
                stream, size = _HEADER.unpack(header)
                payload = await reader.readexactly(size)
                target = self.stdout if stream == 1 else self.stderr if stream == 2 else None
                if target is not None:
                    target.feed_data(payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for target in (self.stdout, self.stderr):
                if target is not None:
                    target.feed_eof()

    async def wait(self) -> int:
        """The exit status once the process has exited (128+N from Docker becomes ``-N``)."""
        if self._status is None:
            assert self._demux is not None
            patience = 0.5
            while True:
                # The end of the output usually means the exit. A child that keeps the output
                # open does not hold the exit up for long: the engine is asked now and then.
                if not self._demux.done():
                    await asyncio.wait([self._demux], timeout=patience)
                    patience = min(patience * 2, 5.0)
                code = await self._exit_code()
                if code is not None:
                    break
                if self._demux.done():
                    await asyncio.sleep(0.01)
            self._status = -(code - 128) if code > 128 else code
            if self._writer is not None:
                self._writer.close()
        return self._status

    async def _exit_code(self) -> int | None:
        """The exec's exit code as Docker reports it, 137 (SIGKILL) if its container is dead or
        gone, or None while it runs. Docker may go on calling an exec of a dead container running."""
        killed = 128 + signal.SIGKILL
        output_ended = self._demux is not None and self._demux.done()
        if self._runtime.killed and output_ended:
            return killed
        try:
            state = await _off_loop(self._api.exec_inspect, self._exec_id)
            if not state.get("Running"):
                code = state.get("ExitCode")
                return killed if code is None else code
            if output_ended:
                container = await _off_loop(self._api.inspect_container, self._container_id)
                if not container.get("State", {}).get("Running"):
                    return killed  # e.g. killed from outside
        except Exception:  # the container is gone, and the exec with it
            return killed
        return None

    def kill(self) -> None:
        """SIGKILL the exec's process (the container and the exec's children live on); returns at
        once, the kill happens on the event loop."""
        if self._status is None and self._killing is None:
            self._killing = asyncio.ensure_future(self._kill())

    async def _kill(self) -> None:
        try:
            state = await _off_loop(self._api.exec_inspect, self._exec_id)
        except Exception:
            return  # the container is gone, and the process with it
        host_pid = state.get("Pid")
        if not state.get("Running") or not host_pid:
            return
        # Docker knows the host pid; the kill is sent from inside the container, as the sandbox's
        # user, which needs no rights on the host, after making sure the pid is this container's.
        pid = _pid_in_container(host_pid, self._container_id)
        if pid is None:
            log.warning("exec %s: its process is not visible from this host; it ends with its sandbox", self._exec_id)
            return
        try:
            killer = await _off_loop(
                self._api.exec_create, self._container_id, ["python3", "-c", f"import os; os.kill({pid}, 9)"]
            )
            await _off_loop(self._api.exec_start, killer["Id"])
        except Exception as exc:
            log.warning("exec %s could not be killed (%s); it ends with its sandbox", self._exec_id, exc)


def _pid_in_container(host_pid: int, container_id: str) -> int | None:
    """The pid, in its container's pid namespace, of host process ``host_pid`` if that process
    belongs to container ``container_id`` (Linux ``/proc``); else None."""
    try:
        with open(f"/proc/{host_pid}/cgroup", encoding="utf-8") as f:
            if container_id not in f.read():
                return None
        with open(f"/proc/{host_pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None
