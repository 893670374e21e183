"""The ``docker`` backend: one hardened container per interpreter on a local Docker engine.

Secure by default (every default can be changed by an option): no network, a read-only root
file system with small writable tmpfs mounts for ``/tmp`` and the working directory, all
capabilities dropped, ``no-new-privileges``, a non-root user, process, memory and CPU limits,
an init process that reaps zombies, no host mounts (but, on a local engine, the socket channel's
empty read-only directory: see :mod:`sandboxkit_docker.channel`) and never the Docker socket.

The Docker SDK is imported only when the backend is used.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from typing import Any, Mapping, Sequence

import sandboxkit
from sandboxkit import ownership
from sandboxkit.backend import Availability, Backend, Capability, SandboxProcess
from sandboxkit.errors import BackendStartError, OptionError
from sandboxkit_docker import channel
from sandboxkit_docker.channel import ChannelListener

__all__ = ["DockerBackend", "DockerOptions", "create_container"]

DEFAULT_IMAGE = "python:3.12-slim"
IMAGE_ENV = "SANDBOXKIT_DOCKER_IMAGE"
WORKDIR = "/work"
_SOCKET_PATHS = ("/var/run/docker.sock", "/run/docker.sock")
#: How long a started container may take to connect to (or fall back from) its socket channel.
_CONNECT_TIMEOUT = 60.0
_INSTALL_HINT = "install the SDK with: pip install 'sandboxkit[docker]'"


def _default_image() -> str:
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


@dataclasses.dataclass(frozen=True)
class DockerOptions:
    """Options of the ``docker`` backend (see docs/backends/docker.md)."""

    #: Image with a Python 3.8+ as ``python3``; default ``$SANDBOXKIT_DOCKER_IMAGE`` or python:3.12-slim.
    image: str = dataclasses.field(default_factory=_default_image)
    #: Memory limit (Docker syntax: 512m, 2g); swap is not allowed beyond it.
    memory: str = "512m"
    #: CPU limit, in CPUs.
    cpus: float = 1.0
    #: Most processes (and threads) the container may run.
    pids_limit: int = 128
    #: Docker network mode; "none" leaves only loopback.
    network: str = "none"
    #: Make the root file system read-only (writable tmpfs at /tmp and the working directory).
    read_only: bool = True
    #: Size of each tmpfs mount.
    tmpfs_size: str = "64m"
    #: User (uid:gid) the code runs as; 65534 is "nobody".
    user: str = "65534:65534"
    #: Drop every Linux capability.
    drop_capabilities: bool = True
    #: Forbid gaining privileges (setuid binaries and the like).
    no_new_privileges: bool = True
    #: Run Docker's init as PID 1, so child processes are reaped.
    init: bool = True
    #: Extra environment variables for the sandbox.
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Read-only host mounts, as HOST_PATH:CONTAINER_PATH.
    mounts: tuple[str, ...] = ()
    #: Read-write host mounts, as HOST_PATH:CONTAINER_PATH.
    rw_mounts: tuple[str, ...] = ()
    #: Extra container labels.
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Engine address (e.g. unix:///var/run/docker.sock); default: the environment (DOCKER_HOST).
    docker_host: str | None = None
    #: How the driver's messages travel: "socket" (a Unix socket in a private, read-only mount
    #: holding nothing else, removed once connected), "attach" (the engine's attach relay: no
    #: mount at all, slower) or "auto" (the socket when the engine runs on this machine, else attach).
    channel: str = "auto"

    def __post_init__(self) -> None:
        if self.channel not in _CHANNELS:
            raise OptionError(f"option 'channel' must be one of {', '.join(_CHANNELS)}, got {self.channel!r}")
        for name in ("memory", "tmpfs_size"):
            if not _SIZE.fullmatch(getattr(self, name)):
                raise OptionError(f"option {name!r} must be a size such as 512m or 2g, got {getattr(self, name)!r}")
        if self.cpus <= 0:
            raise OptionError("option 'cpus' must be a positive number of CPUs")
        if self.pids_limit < 8:
            raise OptionError("option 'pids_limit' must be at least 8 (the driver and its init need a few)")
        sockets = _docker_sockets(self.docker_host)
        for spec in (*self.mounts, *self.rw_mounts):
            host, sep, target = spec.partition(":")
            if not sep or not host or not target.startswith("/"):
                raise OptionError(f"mount {spec!r} must be HOST_PATH:/CONTAINER_PATH")
            real = os.path.realpath(host)
            for sock in sockets:
                if sock == real or sock.startswith(real.rstrip("/") + "/"):
                    raise OptionError(
                        f"mount {spec!r} would give the sandbox the Docker socket ({sock}), which is root on "
                        "the host; sandboxkit never mounts it or a directory that contains it"
                    )


_CHANNELS = ("auto", "socket", "attach")
_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?[bkmgBKMG]?")


def _docker_sockets(docker_host: str | None) -> set[str]:
    """Every path where this machine's Docker socket may be, resolved."""
    paths = set(_SOCKET_PATHS)
    for url in (docker_host, os.environ.get("DOCKER_HOST")):
        if url and url.startswith("unix://"):
            paths.add(url[len("unix://"):])
    return {os.path.realpath(p) for p in paths}


def _client(options: DockerOptions | None = None) -> Any:
    import docker

    if options is not None and options.docker_host:
        return docker.DockerClient(base_url=options.docker_host, timeout=60)
    return docker.from_env(timeout=60)


def _engine_availability(options: DockerOptions | None) -> Availability:
    """Whether the SDK is installed and the engine (the options', else the environment's) answers."""
    try:
        import docker  # noqa: F401
    except ImportError:
        return Availability.unusable("the Docker SDK for Python is not installed", _INSTALL_HINT)
    try:
        _client(options).ping()
    except Exception as exc:
        reason, hint = _engine_problem(exc)
        return Availability.unusable(reason, hint)
    return Availability.ok()


_local_engines: dict[str, bool] = {}
#: The SDK's base URL for every engine it reaches over a Unix socket (ssh and npipe differ).
_UNIX_SOCKET_URL = "http+docker://localhost"


def _engine_is_local(client: Any, docker_host: str | None) -> bool:
    """Whether the engine runs on this machine and is reached over a Unix socket, so that a
    directory bind-mounted from here is this machine's directory (not a VM's or another host's).
    Remembered per engine address (``docker_host``, else ``$DOCKER_HOST``)."""
    address = docker_host or os.environ.get("DOCKER_HOST") or ""
    if address not in _local_engines:
        if client.api.base_url != _UNIX_SOCKET_URL:
            _local_engines[address] = False
        else:
            try:
                _local_engines[address] = client.info().get("Name") == socket.gethostname()
            except Exception:
                return False  # not remembered: the engine may answer next time
    return _local_engines[address]


def _engine_problem(exc: Exception) -> tuple[str, str]:
    text = str(exc)
    if "Permission denied" in text or "PermissionError" in text:
        return (f"permission denied on the Docker socket ({text})",
                "add your user to the 'docker' group (then log in again), or run as a user that may use Docker")
    return (f"no Docker engine is answering ({text})",
            "start Docker (e.g. 'sudo systemctl start docker' or Docker Desktop), or point DOCKER_HOST at one")


def create_container(
    client: Any,
    options: DockerOptions,
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin_once: bool,
    extra_binds: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> Any:
    """Create (not start) a container running ``command`` with every hardening ``options`` asks
    for, sandboxkit's owner labels (plus ``labels``) and ``env`` added to the sandbox's minimal
    environment; return the SDK's container object. With ``stdin_once`` its stdin is open and
    ends the container when the attaching client goes. Raises the SDK's errors."""
    o = options
    tmpfs_opts = f"rw,nosuid,nodev,size={o.tmpfs_size},mode=1777"
    # Docker resets a working directory's mode to 755, so give it to the sandbox's user.
    uid, _, gid = o.user.partition(":")
    workdir_opts = tmpfs_opts
    if uid.isdigit() and (not gid or gid.isdigit()):
        workdir_opts = f"rw,nosuid,nodev,size={o.tmpfs_size},uid={uid},gid={gid or uid}"
    binds = [f"{os.path.realpath(h)}:{t}:ro" for h, _, t in (m.partition(":") for m in o.mounts)]
    binds += [f"{os.path.realpath(h)}:{t}:rw" for h, _, t in (m.partition(":") for m in o.rw_mounts)]
    binds += extra_binds
    host_config = client.api.create_host_config(
        network_mode=o.network,
        read_only=o.read_only,
        tmpfs={"/tmp": tmpfs_opts, WORKDIR: workdir_opts},
        pids_limit=o.pids_limit,
        mem_limit=o.memory,
        memswap_limit=o.memory,
        nano_cpus=int(o.cpus * 1e9),
        init=o.init,
        cap_drop=["ALL"] if o.drop_capabilities else None,
        security_opt=["no-new-privileges"] if o.no_new_privileges else None,
        binds=binds or None,
    )
    created = client.api.create_container(
        image=o.image,
        command=list(command),
        stdin_open=stdin_once,
        detach=not stdin_once,  # with stdin_open, detach=False sets StdinOnce (the SDK has no direct switch)
        tty=False,
        working_dir=WORKDIR,
        user=o.user,
        environment={"HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **o.env, **env},
        labels={**o.labels, **(labels or {}), **ownership.owner_labels()},
        host_config=host_config,
    )
    return client.containers.get(created["Id"])


class DockerBackend(Backend):
    name = "docker"
    description = "a hardened container on a local Docker engine (no network, read-only, non-root, limits)"
    capabilities = frozenset({
        Capability.ISOLATED_ENV, Capability.CHILD_PROCESSES, Capability.MEMORY_LIMIT,
        Capability.NO_NETWORK, Capability.FILESYSTEM_ISOLATION, Capability.SCRATCH_DIR,
    })
    Options = DockerOptions
    execution_instructions = (
        "Code runs as CPython in a persistent, isolated Linux container with the standard library and no "
        "network. Variables, imports and functions persist across executions. /tmp and the working directory "
        "are small writable scratch space. Host tools and SUBMIT are global functions; tool arguments and "
        "results must be JSON-compatible. Output of print is returned to you."
    )
    options: DockerOptions

    @classmethod
    def check(cls) -> Availability:
        return _engine_availability(None)

    def availability(self) -> Availability:
        return _engine_availability(self.options)

    def _create_container(
        self, client: Any, argv: Sequence[str], env: Mapping[str, str], listener: ChannelListener | None
    ) -> Any:
        """Create (not start) the driver's container. With ``stdin_once`` the container ends when
        the host's attach connection goes, even if the host process is killed."""
        command = ["python3", *argv[1:]]
        binds: list[str] = []
        if listener is None:
            # Over the attach relay the engine's processes need the CPU more than the driver's
            # polling before it sleeps saves (Backend.poll_before_sleep, decided here per
            # container; a sandbox that falls back from the socket turns it off itself).
            env = {**env, "SANDBOXKIT_SPIN_SECONDS": "0"}
        else:
            binds.append(f"{listener.host_dir}:{channel.CONTAINER_DIR}:ro")
            command = ["python3", "-I", "-c", channel.SHIM, *argv[1:]]
            env = {**env, channel.ENV_NAME: listener.container_path}
        return create_container(client, self.options, command, env, stdin_once=True, extra_binds=binds)

    def _wants_socket_channel(self, client: Any) -> bool:
        if self.options.channel == "auto":
            return _engine_is_local(client, self.options.docker_host)
        return self.options.channel == "socket"

    def launch(self, argv: Sequence[str], env: Mapping[str, str]) -> SandboxProcess:
        import docker.errors

        from sandboxkit_docker.process import ContainerProcess

        client = _client(self.options)
        listener = self._listener(client)
        try:
            try:
                container = self._create_container(client, argv, env, listener)
            except docker.errors.ImageNotFound as exc:
                raise BackendStartError(
                    f"the Docker image {self.options.image!r} is not available on this engine. Get it with "
                    f"'docker pull {self.options.image}', or build one that has python3 (see "
                    f"docs/backends/docker.md), and select it with the 'image' option or ${IMAGE_ENV}"
                ) from exc
            except docker.errors.APIError as exc:
                raise BackendStartError(
                    f"Docker refused to create the sandbox container: {exc.explanation or exc}"
                ) from exc
            except docker.errors.DockerException as exc:
                raise BackendStartError(f"the sandbox container could not be created: {exc}") from exc
            try:
                attached = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
                container.start()
                process = ContainerProcess(container, attached, self.options.memory)
            except Exception as exc:
                _remove(container)
                raise BackendStartError(f"Docker could not start the sandbox container: {exc}") from exc
            if listener is not None:
                self._connect_channel(process, listener)
            return process
        finally:
            if listener is not None:
                listener.close()

    def _listener(self, client: Any) -> ChannelListener | None:
        """A socket-channel listener if this launch should use one (``None``: attach)."""
        if not self._wants_socket_channel(client):
            return None
        try:
            return ChannelListener()
        except OSError as exc:  # e.g. a temporary directory whose path is too long for a socket
            if self.options.channel == "socket":
                raise BackendStartError(f"could not open the socket channel on the host: {exc}") from exc
            return None

    def _connect_channel(self, process: Any, listener: ChannelListener) -> None:
        """Switch ``process`` to the socket channel once its driver connects; if the sandbox
        falls back instead, keep the attach stream, unless the 'socket' channel was demanded. A
        sandbox that ended first keeps the attach stream too: the session then reports the death
        with its stderr."""
        try:
            outcome = listener.accept(process.attach_socket, process.split_output, _CONNECT_TIMEOUT)
        except BaseException as exc:
            process.kill()
            if isinstance(exc, (OSError, TimeoutError)):
                raise BackendStartError(f"the sandbox container did not start its driver: {exc}") from exc
            raise
        if isinstance(outcome, socket.socket):
            process.use_channel(outcome)
        elif outcome == "fallback" and self.options.channel == "socket":
            process.kill()
            raise BackendStartError(
                "the sandbox could not connect to its socket channel (the engine may run in a VM or on "
                "another machine, or the host's security policy denies the mount); use channel='auto' "
                "or channel='attach'"
            )


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


@sandboxkit.hookimpl
def sandboxkit_register_backends(register):  # type: ignore[no-untyped-def]
    register(DockerBackend)


@sandboxkit.hookimpl
def sandboxkit_gc(dry_run):  # type: ignore[no-untyped-def]
    """Remove sandboxkit containers on this engine whose host process is provably gone."""
    stale_dirs = channel.remove_stale_dirs(dry_run)
    availability = DockerBackend.check()
    if not availability.usable:
        return [*stale_dirs, f"skipped: {availability.reason}"]
    client = _client()
    removed = []
    for container in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{ownership.MARKER}=true"}):
        labels = container.labels or {}
        if not ownership.owner_is_gone(labels):
            continue
        line = (f"docker container {container.name} ({container.short_id}) of pid {labels.get(ownership.PID)} "
                f"on {labels.get(ownership.HOST)}")
        if not dry_run:
            try:
                container.remove(force=True)
            except Exception as exc:
                line += f": could not remove: {exc}"
        removed.append(line)
    return [*stale_dirs, *removed]
