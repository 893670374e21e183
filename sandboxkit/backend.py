"""The contract a backend implements: a process transport plus what it can do.

A backend knows nothing about DSPy or the driver protocol. It starts one process running a
command it is given, with the environment it is given, hands back that process's standard
streams, reports its death and stops it. The core does everything else.

Plugin authors subclass :class:`Backend` and :class:`SandboxProcess` and register the backend
class from a ``sandboxkit_register_backends`` hook implementation (see ``docs/plugins.md``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import IO, Any, Callable, ClassVar, Mapping, Sequence

__all__ = ["Availability", "Backend", "Capability", "SandboxProcess"]


class Capability:
    """Names of the things a backend can promise, declared in ``Backend.capabilities``.

    The conformance kit skips (with the reason) every test that needs a capability the backend
    under test does not declare.
    """

    #: Host environment variables (API keys, tokens) are not visible inside the sandbox.
    ISOLATED_ENV = "isolated_env"
    #: Code in the sandbox can start child processes.
    CHILD_PROCESSES = "child_processes"
    #: Memory limits are enforced (a memory bomb fails instead of exhausting the host).
    MEMORY_LIMIT = "memory_limit"
    #: The sandbox has no network interface but loopback.
    NO_NETWORK = "no_network"
    #: The sandbox cannot read or write the host's files.
    FILESYSTEM_ISOLATION = "filesystem_isolation"
    #: A writable scratch working directory that is removed with the sandbox.
    SCRATCH_DIR = "scratch_dir"

    ALL = frozenset(
        {ISOLATED_ENV, CHILD_PROCESSES, MEMORY_LIMIT, NO_NETWORK, FILESYSTEM_ISOLATION, SCRATCH_DIR}
    )


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether a backend can be used right now, and if not, why and how to fix it."""

    usable: bool
    reason: str = ""
    hint: str = ""

    @classmethod
    def ok(cls) -> Availability:
        return cls(True)

    @classmethod
    def unusable(cls, reason: str, hint: str = "") -> Availability:
        return cls(False, reason, hint)


class SandboxProcess(ABC):
    """One running process inside a sandbox, as the core sees it.

    ``stdin`` is a writable binary stream, ``stdout`` and ``stderr`` are readable binary streams
    supporting ``readline(limit)`` and ``read(n)`` (wrap a raw stream in ``io.BufferedReader`` if
    needed). Reading ``stdout`` to EOF means the process is gone or has closed it.
    """

    stdin: IO[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]

    #: For a transport that carries stdout and stderr over one connection: given as ``stdout``,
    #: with this set to a callable that takes each raw chunk read from it and returns the stdout
    #: bytes in it (routing the rest to ``stderr`` itself), and is called with b"" at EOF.
    #: ``None``: ``stdout`` carries stdout alone.
    split_output: Callable[[bytes], bytes] | None = None

    @abstractmethod
    def poll(self) -> int | None:
        """Return the exit code if the process has ended, else ``None``. Never blocks for long."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the process to end; return its exit code or ``None``."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the process and everything it started, and release the sandbox. Idempotent."""

    def describe_exit(self, code: int | None) -> str:
        """A short human explanation of an exit code (backends may add e.g. "killed by OOM")."""
        if code is None:
            return "the process did not report an exit code"
        if code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}"
        return f"exit code {code}"


class Backend(ABC):
    """A named way to run the sandbox driver: subclass, declare the class attributes, implement
    :meth:`launch`.

    Options: declare a frozen dataclass in ``Options``; every field must have a default. The core
    converts string values (from the command line or environment) to each field's type and
    rejects unknown names with the list of valid ones.
    """

    #: The name users select the backend by; must equal the plugin's entry-point name.
    name: ClassVar[str]
    #: One line for ``sandboxkit backends``.
    description: ClassVar[str] = ""
    #: What this backend promises, as :class:`Capability` names.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: The backend's options: a dataclass whose fields all have defaults.
    Options: ClassVar[type] = dataclasses.make_dataclass("NoOptions", [], frozen=True)
    #: Describes the runtime to the model in RLM's prompt; stable and non-empty.
    execution_instructions: ClassVar[str] = (
        "Code runs as Python in a persistent sandboxed process. Variables, imports and functions persist "
        "across executions. Host tools and SUBMIT are available as global functions; tool arguments and "
        "results must be JSON-compatible."
    )

    #: Whether both ends should poll for a moment without sleeping before they block. It saves a
    #: wake-up per message on a direct pipe; leave it off where a relay (an engine, a network
    #: service, an SDK's thread) carries the stream, since the relay needs the CPU (and the
    #: host's interpreter lock) the polling would take.
    poll_before_sleep: ClassVar[bool] = True

    def __init__(self, options: Any) -> None:
        self.options = options

    @classmethod
    def check(cls) -> Availability:
        """Say whether the backend can run here now (SDK installed, engine reachable, credentials).

        Called by ``sandboxkit backends`` and before the first launch; must not start a sandbox.
        """
        return Availability.ok()

    def availability(self) -> Availability:
        """Like :meth:`check`, for this backend's options (e.g. the engine an option names).

        Called before every launch; the default asks :meth:`check`.
        """
        return type(self).check()

    @abstractmethod
    def launch(self, argv: Sequence[str], env: Mapping[str, str]) -> SandboxProcess:
        """Start one sandbox running ``argv`` (``argv[0]`` is ``python3``: use the sandbox's own
        Python interpreter) with exactly ``env`` added to a minimal environment, and return it.

        Raise :class:`sandboxkit.errors.BackendStartError` with what happened and what to do when
        the sandbox cannot be started.
        """
