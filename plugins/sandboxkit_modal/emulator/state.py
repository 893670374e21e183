"""The emulator's settings and the objects it keeps: apps, environments, secrets, images, sandboxes.

Everything lives in memory for the life of the server. Environments, apps and named secrets are
keyed by environment name; the SDK's default environment (an empty name) is called ``main``.
Images are recorded, never built: a sandbox's processes run on this host's Python (process mode) or
in the configured Docker image (container mode) whatever image the SDK describes, so layers such
as ``pip_install`` or ``env`` have no effect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import sys
from typing import Any, Mapping

from grpclib import GRPCError, Status
from modal_proto import api_pb2

from .runtimes import ContainerRuntime, LocalRuntime, resolve_mode
from .sandboxes import SandboxRegistry
from .tokens import TokenMinter, new_id

__all__ = ["DEFAULT_ENVIRONMENT", "EmulatorConfig", "EmulatorState"]

#: What the SDK's default (unnamed) environment is called.
DEFAULT_ENVIRONMENT = "main"

#: Image builder version the emulator reports; one the pinned ``modal`` SDK supports.
IMAGE_BUILDER_VERSION = "2025.06"


@dataclasses.dataclass
class EmulatorConfig:
    """Settings of one emulator server."""

    #: TCP port on 127.0.0.1; 0 picks a free one.
    port: int = 0
    #: The only credentials the control plane accepts (random when not given).
    token_id: str = dataclasses.field(default_factory=lambda: "ak-" + secrets.token_hex(10))
    token_secret: str = dataclasses.field(default_factory=lambda: "as-" + secrets.token_hex(16))
    #: The Python that ``python``/``python3`` mean inside a sandbox.
    python: str = sys.executable
    #: Directory for the sandboxes' private directories (a fresh temporary one when None).
    root: str | None = None
    #: Lifetime of the tokens the emulator mints, in seconds.
    token_ttl: float = 3600.0
    #: Named secrets to create at start: name -> {key: value}, in the default environment.
    secrets: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    #: Image builder version reported to the SDK.
    image_builder_version: str = IMAGE_BUILDER_VERSION
    #: Where sandboxes run: "process" (local processes), "container" (a Docker container each),
    #: or "auto" (containers when a Docker engine with ``docker_image`` answers, else processes).
    sandboxes: str = "process"
    #: The image of container mode; default: the docker backend's ($SANDBOXKIT_DOCKER_IMAGE, ...).
    docker_image: str | None = None


@dataclasses.dataclass
class _Secret:
    secret_id: str
    name: str
    environment: str
    values: dict[str, str]


def _docker_default_image(mode: str) -> str:
    if mode == "process":
        return ""
    try:
        from sandboxkit_docker import DockerOptions
    except ImportError:
        return ""
    return DockerOptions().image


def environment_name(name: str) -> str:
    return name or DEFAULT_ENVIRONMENT


class EmulatorState:
    """What the control plane and the task command router share."""

    def __init__(self, config: EmulatorConfig, root: str) -> None:
        self.config = config
        self.root = root
        self.minter = TokenMinter()
        #: ``http://127.0.0.1:PORT``; set when the server is listening.
        self.url = ""
        self.sandboxes = SandboxRegistry()
        self._environments: dict[str, str] = {}
        self._apps: dict[tuple[str, str], str] = {}
        self._app_envs: dict[str, str] = {}
        self._secrets_by_id: dict[str, _Secret] = {}
        self._secrets_by_name: dict[tuple[str, str], _Secret] = {}
        self._images: dict[str, api_pb2.Image] = {}
        for name, values in config.secrets.items():
            self.put_secret(name, DEFAULT_ENVIRONMENT, dict(values))
        self.docker_image = config.docker_image or _docker_default_image(config.sandboxes)
        #: "process" or "container", and a sentence saying what that means.
        self.sandbox_mode, self.sandbox_note = resolve_mode(config.sandboxes, self.docker_image)
        self._docker: Any = None

    # -- runtimes -------------------------------------------------------------------------------

    def runtime(self, sandbox_id: str, definition: api_pb2.Sandbox, env: Mapping[str, str]) -> Any:
        """Where the processes of a new sandbox run (see .runtimes)."""
        if self.sandbox_mode == "process":
            return LocalRuntime(os.path.join(self.root, sandbox_id), self.config.python)
        if self._docker is None:
            import docker

            self._docker = docker.from_env(timeout=120)
        return ContainerRuntime(self._docker, self.docker_image, sandbox_id, definition, env)

    # -- environments and apps ------------------------------------------------------------------

    def environment(self, name: str) -> tuple[str, str]:
        """``(id, name)`` of the environment ``name``, created on first use."""
        name = environment_name(name)
        if name not in self._environments:
            self._environments[name] = new_id("en")
        return self._environments[name], name

    def app(self, name: str, environment: str, create: bool) -> str:
        """The id of app ``name``, created when missing if ``create``, else ``NOT_FOUND``."""
        environment = environment_name(environment)
        key = (environment, name)
        if key not in self._apps:
            if not create:
                raise GRPCError(Status.NOT_FOUND, f"App '{name}' not found in environment '{environment}'")
            app_id = new_id("ap")
            self._apps[key] = app_id
            self._app_envs[app_id] = environment
        return self._apps[key]

    def app_name(self, app_id: str) -> str:
        for (_, name), known in self._apps.items():
            if known == app_id:
                return name
        return ""

    def app_id_by_name(self, name: str, environment: str) -> str | None:
        return self._apps.get((environment_name(environment), name))

    def require_app(self, app_id: str) -> None:
        if app_id not in self._app_envs:
            raise GRPCError(Status.NOT_FOUND, f"App {app_id} not found")

    # -- secrets --------------------------------------------------------------------------------

    def put_secret(self, name: str, environment: str, values: dict[str, str]) -> str:
        """Store a secret (named when ``name``, else anonymous) and return its id."""
        secret = _Secret(new_id("st"), name, environment_name(environment), dict(values))
        self._secrets_by_id[secret.secret_id] = secret
        if name:
            self._secrets_by_name[(secret.environment, name)] = secret
        return secret.secret_id

    def named_secret(self, name: str, environment: str) -> _Secret | None:
        return self._secrets_by_name.get((environment_name(environment), name))

    def secret_values(self, secret_id: str) -> dict[str, str]:
        """The variables of secret ``secret_id``, or ``NOT_FOUND``."""
        try:
            return dict(self._secrets_by_id[secret_id].values)
        except KeyError:
            raise GRPCError(Status.NOT_FOUND, f"Secret {secret_id} not found") from None

    def resolve_sources(self, sources: "list[api_pb2.SecretSource]") -> dict[str, str]:
        """The environment variables a list of ``SecretSource``s adds up to (later ones win)."""
        env: dict[str, str] = {}
        for source in sources:
            if source.WhichOneof("source") == "secret_id":
                env.update(self.secret_values(source.secret_id))
            else:
                env.update(source.env.contents)
        return env

    # -- images ---------------------------------------------------------------------------------

    def image(self, definition: api_pb2.Image, builder_version: str) -> str:
        """The id of an image definition (the same definition, the same id)."""
        digest = hashlib.sha256(definition.SerializeToString(deterministic=True) + builder_version.encode())
        image_id = "im-" + digest.hexdigest()[:22]
        self._images.setdefault(image_id, definition)
        return image_id

    def has_image(self, image_id: str) -> bool:
        return image_id in self._images
