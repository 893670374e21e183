"""The ``modal`` backend for sandboxkit: the driver runs in a Modal Sandbox.

Network is blocked by default and no secrets enter the sandbox unless passed explicitly:
``llm_query`` and every tool run on the host through the driver protocol, so the sandbox needs
no API key. The ``modal`` SDK is imported only when the backend is used.

This package also ships :mod:`sandboxkit_modal.emulator`, a local stand-in for the parts of
Modal's API the backend uses, so the unmodified ``modal`` SDK can be tested without an account.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Mapping, Sequence

import sandboxkit
from sandboxkit import ownership
from sandboxkit.backend import Availability, Backend, Capability, SandboxProcess
from sandboxkit.errors import BackendStartError, OptionError

__all__ = ["ModalBackend", "ModalOptions"]

_INSTALL_HINT = "install the SDK with: pip install 'sandboxkit[modal]'"
_CREDENTIALS_HINT = (
    "run 'modal token new' (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET); for offline tests start "
    "sandboxkit-modal-emulator and export the variables it prints"
)
#: Modal tags may not contain dots: ownership labels travel with '-' instead.
_TAG_PREFIX = "sandboxkit-"


@dataclasses.dataclass(frozen=True)
class ModalOptions:
    """Options of the ``modal`` backend (see docs/backends/modal.md)."""

    #: The Modal app the sandboxes belong to (created if missing).
    app_name: str = "sandboxkit"
    #: A ``modal.Image``; default: Debian slim with the Python version below.
    image: Any = None
    #: Python version of the default image.
    python_version: str = "3.12"
    #: pip packages to add to the image.
    pip: tuple[str, ...] = ()
    #: CPU cores and memory (MiB) requested for each sandbox.
    cpu: float | None = None
    memory: int | None = None
    #: Lifetime limit of a sandbox, and idle limit, in seconds (``timeout`` is the execute timeout).
    sandbox_timeout: int = 3600
    idle_timeout: int | None = None
    #: Region(s) to run in.
    region: str | None = None
    #: Block all network access (the default); ``cidr_allowlist`` opens only those ranges.
    block_network: bool = True
    cidr_allowlist: tuple[str, ...] = ()
    #: Extra environment variables for the sandbox.
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: ``modal.Secret`` objects to mount. Off by default: code in the sandbox can read them.
    secrets: tuple[Any, ...] = ()
    #: ``{path: modal.Volume}`` to mount.
    volumes: Any = None
    #: Extra tags for each sandbox.
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sandbox_timeout <= 0:
            raise OptionError("option 'sandbox_timeout' must be a positive number of seconds")
        if self.cidr_allowlist and self.block_network:
            object.__setattr__(self, "block_network", False)  # an allow-list implies network otherwise blocked


def _owner_tags() -> dict[str, str]:
    return {_TAG_PREFIX + key[len(ownership.LABEL_PREFIX):]: value
            for key, value in ownership.owner_labels().items()}


def _labels_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {ownership.LABEL_PREFIX + key[len(_TAG_PREFIX):]: value
            for key, value in tags.items() if key.startswith(_TAG_PREFIX)}


def _credentials_problem() -> str | None:
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return None
    config = os.environ.get("MODAL_CONFIG_PATH") or os.path.expanduser("~/.modal.toml")
    if os.path.exists(config):
        return None
    return "no Modal credentials (MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, or a token in ~/.modal.toml)"


class ModalBackend(Backend):
    name = "modal"
    description = "a Modal Sandbox in the cloud (network blocked, no secrets by default)"
    capabilities = frozenset({
        Capability.ISOLATED_ENV, Capability.CHILD_PROCESSES, Capability.NO_NETWORK,
        Capability.FILESYSTEM_ISOLATION, Capability.SCRATCH_DIR,
    })
    Options = ModalOptions
    # Messages cross the network to a remote sandbox: polling without sleep gains nothing.
    poll_before_sleep = False
    execution_instructions = (
        "Code runs as CPython in a persistent, isolated cloud container with no network access. Variables, "
        "imports and functions persist across executions. Host tools and SUBMIT are global functions; tool "
        "arguments and results must be JSON-compatible. Output of print is returned to you."
    )
    options: ModalOptions

    @classmethod
    def check(cls) -> Availability:
        try:
            import modal  # noqa: F401
        except ImportError:
            return Availability.unusable("the modal SDK is not installed", _INSTALL_HINT)
        problem = _credentials_problem()
        if problem:
            return Availability.unusable(problem, _CREDENTIALS_HINT)
        return Availability.ok()

    def _image(self) -> Any:
        import modal

        image = self.options.image or modal.Image.debian_slim(python_version=self.options.python_version)
        if self.options.pip:
            image = image.pip_install(*self.options.pip)
        return image

    def launch(self, argv: Sequence[str], env: Mapping[str, str]) -> SandboxProcess:
        import modal
        import modal.exception

        from sandboxkit_modal.process import ModalSandboxProcess

        o = self.options
        try:
            app = modal.App.lookup(o.app_name, create_if_missing=True)
            sandbox = modal.Sandbox.create(
                app=app,
                image=self._image(),
                env={**o.env, **env} or None,
                secrets=list(o.secrets) or None,
                timeout=o.sandbox_timeout,
                idle_timeout=o.idle_timeout,
                region=o.region,
                cpu=o.cpu,
                memory=o.memory,
                block_network=o.block_network,
                outbound_cidr_allowlist=list(o.cidr_allowlist) or None,
                tags={**o.tags, **_owner_tags()},
                volumes=o.volumes or {},
                workdir="/tmp",
            )
        except modal.exception.AuthError as exc:
            raise BackendStartError(f"Modal refused the credentials: {exc}; {_CREDENTIALS_HINT}") from exc
        except modal.exception.ResourceExhaustedError as exc:
            raise BackendStartError(f"Modal is out of quota for this workspace: {exc}") from exc
        except modal.exception.Error as exc:
            raise BackendStartError(f"Modal could not create the sandbox: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # connection problems surface as various transport errors
            raise BackendStartError(f"could not reach Modal to create a sandbox: {type(exc).__name__}: {exc}") from exc
        try:
            process = sandbox.exec(*argv, text=False)
        except Exception as exc:
            try:
                sandbox.terminate()
            except Exception:
                pass
            raise BackendStartError(f"Modal could not start the driver in the sandbox: {exc}") from exc
        return ModalSandboxProcess(sandbox, process)


@sandboxkit.hookimpl
def sandboxkit_register_backends(register):  # type: ignore[no-untyped-def]
    register(ModalBackend)


@sandboxkit.hookimpl
def sandboxkit_gc(dry_run):  # type: ignore[no-untyped-def]
    """Terminate sandboxkit's Modal sandboxes whose host process is provably gone."""
    availability = ModalBackend.check()
    if not availability.usable:
        return [f"skipped: {availability.reason}"]
    import modal

    removed = []
    marker = _TAG_PREFIX + ownership.MARKER[len(ownership.LABEL_PREFIX):]
    with warnings.catch_warnings():
        # gc must see every app's sandboxes (app_name is an option), so it scans the whole
        # environment, which the SDK marks as deprecated without an app id.
        warnings.simplefilter("ignore")
        found = list(modal.Sandbox.list(tags={marker: "true"}))
    for sandbox in found:
        labels = _labels_from_tags(sandbox.get_tags())
        if not ownership.owner_is_gone(labels):
            continue
        line = f"modal sandbox {sandbox.object_id} of pid {labels.get(ownership.PID)} on {labels.get(ownership.HOST)}"
        if not dry_run:
            try:
                sandbox.terminate()
            except Exception as exc:
                line += f": could not terminate: {exc}"
        removed.append(line)
    return removed
